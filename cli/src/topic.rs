//! `runnel topic create|list|describe|delete|alter-config`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use runnel_protocol::kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig,
};
use runnel_protocol::kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use runnel_protocol::kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use runnel_protocol::kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, RequestKind, ResponseKind,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;

use crate::client::{error_text, json_string, topic_name, Client};
use crate::Output;

#[derive(Debug, Args)]
pub(crate) struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i16,
        /// A topic config, `name=value` (repeatable), e.g. --config retention.ms=-1
        #[arg(long = "config", value_name = "NAME=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Partitions, leaders, replicas and configs of a topic.
    Describe { name: String },
    /// Delete a topic and all its data.
    Delete { name: String },
    /// Change topic configs.
    AlterConfig {
        name: String,
        /// `name=value` to set (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// A config to return to its default (repeatable).
        #[arg(long = "delete", value_name = "NAME")]
        delete: Vec<String>,
    },
}

fn split_config(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s}: expected name=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

pub(crate) async fn run(args: TopicArgs, bootstrap: &str, output: Output) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut config_list = Vec::new();
            for c in &configs {
                let (k, v) = split_config(c)?;
                config_list.push(
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k))
                        .with_value(Some(StrBytes::from_string(v))),
                );
            }
            let request = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(&name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(config_list)]);
            let ResponseKind::CreateTopics(r) = client
                .call(ApiKey::CreateTopics, RequestKind::CreateTopics(request))
                .await?
            else {
                bail!("unexpected answer to CreateTopics");
            };
            let t = r.topics.first().context("no result")?;
            if t.error_code != 0 {
                bail!(
                    "{}{}",
                    error_text(t.error_code),
                    t.error_message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
            match output {
                Output::Json => println!(
                    "{{\"topic\":{},\"topic_id\":\"{}\",\"partitions\":{}}}",
                    json_string(&name),
                    t.topic_id,
                    partitions
                ),
                Output::Text => println!(
                    "created topic {name} ({partitions} partitions, id {})",
                    t.topic_id
                ),
            }
        }
        TopicCommand::List => {
            let md = client.metadata(None).await?;
            let mut names: Vec<String> = md
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            names.sort();
            match output {
                Output::Json => println!(
                    "[{}]",
                    names
                        .iter()
                        .map(|n| json_string(n))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Output::Text => names.iter().for_each(|n| println!("{n}")),
            }
        }
        TopicCommand::Describe { name } => {
            let md = client.metadata(Some(std::slice::from_ref(&name))).await?;
            let t = md.topics.first().context("no topic in the answer")?;
            if t.error_code != 0 {
                bail!("topic {name}: {}", error_text(t.error_code));
            }
            let request = DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(name.clone()))
                    .with_configuration_keys(None),
            ]);
            let configs = match client
                .call(
                    ApiKey::DescribeConfigs,
                    RequestKind::DescribeConfigs(request),
                )
                .await?
            {
                ResponseKind::DescribeConfigs(r) => r
                    .results
                    .into_iter()
                    .flat_map(|r| r.configs)
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.value.map(|v| v.to_string()).unwrap_or_default(),
                            c.config_source,
                        )
                    })
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            match output {
                Output::Json => {
                    let parts: Vec<String> = t
                        .partitions
                        .iter()
                        .map(|p| {
                            format!(
                                "{{\"partition\":{},\"leader\":{},\"leader_epoch\":{},\"replicas\":{:?},\"isr\":{:?}}}",
                                p.partition_index,
                                p.leader_id.0,
                                p.leader_epoch,
                                p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
                                p.isr_nodes.iter().map(|b| b.0).collect::<Vec<_>>()
                            )
                        })
                        .collect();
                    let cfg: Vec<String> = configs
                        .iter()
                        .map(|(k, v, _)| format!("{}:{}", json_string(k), json_string(v)))
                        .collect();
                    println!(
                        "{{\"topic\":{},\"topic_id\":\"{}\",\"partitions\":[{}],\"configs\":{{{}}}}}",
                        json_string(&name),
                        t.topic_id,
                        parts.join(","),
                        cfg.join(",")
                    );
                }
                Output::Text => {
                    println!(
                        "topic {name}  id {}  partitions {}",
                        t.topic_id,
                        t.partitions.len()
                    );
                    println!(
                        "  {:<10} {:<7} {:<7} {:<12} isr",
                        "partition", "leader", "epoch", "replicas"
                    );
                    for p in &t.partitions {
                        let replicas: Vec<String> =
                            p.replica_nodes.iter().map(|b| b.0.to_string()).collect();
                        let isr: Vec<String> =
                            p.isr_nodes.iter().map(|b| b.0.to_string()).collect();
                        println!(
                            "  {:<10} {:<7} {:<7} {:<12} {}",
                            p.partition_index,
                            p.leader_id.0,
                            p.leader_epoch,
                            replicas.join(","),
                            isr.join(",")
                        );
                    }
                    println!("  configs (* = set on this topic):");
                    for (k, v, source) in &configs {
                        println!("    {}{k} = {v}", if *source == 1 { "*" } else { " " });
                    }
                }
            }
        }
        TopicCommand::Delete { name } => {
            let request = DeleteTopicsRequest::default().with_timeout_ms(30_000);
            let request = if client.version(ApiKey::DeleteTopics).await? >= 6 {
                request.with_topics(vec![
                    DeleteTopicState::default().with_name(Some(topic_name(&name)))
                ])
            } else {
                request.with_topic_names(vec![topic_name(&name)])
            };
            let ResponseKind::DeleteTopics(r) = client
                .call(ApiKey::DeleteTopics, RequestKind::DeleteTopics(request))
                .await?
            else {
                bail!("unexpected answer to DeleteTopics");
            };
            let t = r.responses.first().context("no result")?;
            if t.error_code != 0 {
                bail!("topic {name}: {}", error_text(t.error_code));
            }
            match output {
                Output::Json => println!("{{\"deleted\":{}}}", json_string(&name)),
                Output::Text => println!("deleted topic {name}"),
            }
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --set name=value or --delete name");
            }
            let mut configs = Vec::new();
            for s in &set {
                let (k, v) = split_config(s)?;
                configs.push(
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_string(v))),
                );
            }
            for d in &delete {
                configs.push(
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(d.clone()))
                        .with_config_operation(1)
                        .with_value(None),
                );
            }
            let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(name.clone()))
                    .with_configs(configs),
            ]);
            let ResponseKind::IncrementalAlterConfigs(r) = client
                .call(
                    ApiKey::IncrementalAlterConfigs,
                    RequestKind::IncrementalAlterConfigs(request),
                )
                .await?
            else {
                bail!("unexpected answer to IncrementalAlterConfigs");
            };
            let res = r.responses.first().context("no result")?;
            if res.error_code != 0 {
                bail!(
                    "{}{}",
                    error_text(res.error_code),
                    res.error_message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
            match output {
                Output::Json => println!("{{\"altered\":{}}}", json_string(&name)),
                Output::Text => println!("updated configs of topic {name}"),
            }
        }
    }
    Ok(())
}
