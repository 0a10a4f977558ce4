//! Topic and broker configs as the config APIs see them: effective values with their Kafka
//! `ConfigSource`, and changes applied through the metadata Raft group.

use std::collections::BTreeMap;

use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::proto::{self, metadata_record::Record};
use runnel_replication::topic_config::{
    topic_config, topic_config_for_broker_name, validate_topic_config, ConfigType, TopicConfigDef,
    TOPIC_CONFIGS,
};
use runnel_replication::{MetadataRecord, TopicMetadata};

use crate::error::replication_error_code;
use crate::handlers::create_topics::config_source;
use crate::Broker;

/// Kafka's `ConfigResource.Type` codes.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone)]
pub struct ConfigValue {
    pub name: String,
    pub value: Option<String>,
    pub source: i8,
    pub config_type: ConfigType,
    pub doc: &'static str,
    pub read_only: bool,
    /// (name, value, source), most specific first.
    pub synonyms: Vec<(String, Option<String>, i8)>,
}

pub type Failure = (i16, String);

pub fn topic_configs(broker: &Broker, t: &TopicMetadata) -> Vec<ConfigValue> {
    let md = broker.replication.metadata();
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let mut synonyms = Vec::new();
            if let Some(v) = t.configs.get(def.name) {
                synonyms.push((
                    def.name.to_string(),
                    Some(v.clone()),
                    config_source::DYNAMIC_TOPIC_CONFIG,
                ));
            }
            if let Some((b, v)) = def
                .broker_name
                .and_then(|b| md.broker_configs.get(b).map(|v| (b, v)))
            {
                synonyms.push((
                    b.to_string(),
                    Some(v.clone()),
                    config_source::DYNAMIC_DEFAULT_BROKER_CONFIG,
                ));
            }
            synonyms.push((
                def.broker_name.unwrap_or(def.name).to_string(),
                Some(def.default.to_string()),
                config_source::DEFAULT_CONFIG,
            ));
            let (_, value, source) = synonyms[0].clone();
            ConfigValue {
                name: def.name.to_string(),
                value,
                source,
                config_type: def.config_type,
                doc: def.doc,
                read_only: false,
                synonyms,
            }
        })
        .collect()
}

pub fn broker_configs(broker: &Broker) -> Vec<ConfigValue> {
    let md = broker.replication.metadata();
    let c = &broker.config;
    let all = c.listeners();
    let advertised = all
        .iter()
        .filter_map(|l| {
            l.advertised
                .as_ref()
                .map(|(host, port)| format!("{}://{host}:{port}", l.name))
        })
        .collect::<Vec<_>>()
        .join(",");
    let listeners = all
        .iter()
        .map(|l| format!("{}://{}", l.name, l.listen))
        .collect::<Vec<_>>()
        .join(",");
    let fixed: Vec<(&str, Option<String>, ConfigType, &'static str)> = vec![
        (
            "node.id",
            Some(c.node_id.to_string()),
            ConfigType::Int,
            "this broker's id",
        ),
        (
            "broker.id",
            Some(c.node_id.to_string()),
            ConfigType::Int,
            "this broker's id",
        ),
        (
            "broker.rack",
            c.rack.clone(),
            ConfigType::String,
            "the availability zone",
        ),
        (
            "listeners",
            Some(listeners),
            ConfigType::List,
            "addresses the broker listens on",
        ),
        (
            "advertised.listeners",
            Some(advertised),
            ConfigType::List,
            "addresses clients are told to use",
        ),
        (
            "log.dirs",
            Some(c.data_dir.display().to_string()),
            ConfigType::String,
            "where logs are stored",
        ),
        (
            "num.partitions",
            Some(c.num_partitions.to_string()),
            ConfigType::Int,
            "default partitions of new topics",
        ),
        (
            "default.replication.factor",
            Some(c.default_replication_factor.to_string()),
            ConfigType::Int,
            "default replication factor",
        ),
        (
            "auto.create.topics.enable",
            Some(c.auto_create_topics.to_string()),
            ConfigType::Boolean,
            "create topics on first use",
        ),
        (
            "socket.request.max.bytes",
            Some(c.max_request_size.to_string()),
            ConfigType::Int,
            "largest request accepted",
        ),
    ];
    let mut out: Vec<ConfigValue> = fixed
        .into_iter()
        .map(|(name, value, config_type, doc)| {
            // Unset (no rack): Kafka reports a null default.
            let source = if value.is_some() {
                config_source::STATIC_BROKER_CONFIG
            } else {
                config_source::DEFAULT_CONFIG
            };
            ConfigValue {
                name: name.to_string(),
                value: value.clone(),
                source,
                config_type,
                doc,
                read_only: true,
                synonyms: vec![(name.to_string(), value, source)],
            }
        })
        .collect();
    for def in TOPIC_CONFIGS {
        let Some(name) = def.broker_name else {
            continue;
        };
        if out.iter().any(|c| c.name == name) {
            continue;
        }
        let mut synonyms = Vec::with_capacity(2);
        if let Some(v) = md.broker_configs.get(name) {
            synonyms.push((
                name.to_string(),
                Some(v.clone()),
                config_source::DYNAMIC_DEFAULT_BROKER_CONFIG,
            ));
        }
        synonyms.push((
            name.to_string(),
            Some(def.default.to_string()),
            config_source::DEFAULT_CONFIG,
        ));
        let (_, value, source) = synonyms[0].clone();
        out.push(ConfigValue {
            name: name.to_string(),
            value,
            source,
            config_type: def.config_type,
            doc: def.doc,
            read_only: false,
            synonyms,
        });
    }
    out
}

/// Checks a broker resource name: the cluster default (empty) or this broker's id.
pub fn check_broker_resource(broker: &Broker, name: &str) -> Result<(), Failure> {
    if name.is_empty() || name == broker.config.node_id.to_string() {
        Ok(())
    } else {
        Err((
            ResponseError::InvalidRequest.code(),
            format!(
                "Unexpected broker id, expected {} or empty string, but received {name}",
                broker.config.node_id
            ),
        ))
    }
}

/// Validates a full set of configs for a resource.
pub fn validate(resource_type: i8, configs: &BTreeMap<String, String>) -> Result<(), Failure> {
    for (name, value) in configs {
        let topic_name = match resource_type {
            RESOURCE_TOPIC => name.as_str(),
            _ => match topic_config_for_broker_name(name) {
                Some(def) => def.name,
                None => {
                    return Err((
                        ResponseError::InvalidRequest.code(),
                        format!("Cannot update these configs dynamically: {name}"),
                    ))
                }
            },
        };
        validate_topic_config(topic_name, value)
            .map_err(|m| (ResponseError::InvalidConfig.code(), m))?;
    }
    Ok(())
}

fn definition(resource_type: i8, name: &str) -> Option<&'static TopicConfigDef> {
    if resource_type == RESOURCE_TOPIC {
        topic_config(name)
    } else {
        topic_config_for_broker_name(name)
    }
}

/// Whether a config holds a list (APPEND and SUBTRACT apply to lists only).
pub fn is_list(resource_type: i8, name: &str) -> bool {
    definition(resource_type, name).is_some_and(|d| d.config_type == ConfigType::List)
}

/// The built-in default of a config, which APPEND and SUBTRACT start from when it is unset.
pub fn default_value(resource_type: i8, name: &str) -> Option<&'static str> {
    definition(resource_type, name).map(|d| d.default)
}

/// Replaces the dynamic configs of a topic or of the cluster-wide broker defaults.
pub async fn replace(
    broker: &Broker,
    resource_type: i8,
    topic: Option<&TopicMetadata>,
    configs: BTreeMap<String, String>,
) -> Result<(), Failure> {
    let entries = configs
        .into_iter()
        .map(|(name, value)| proto::ConfigEntry { name, value })
        .collect();
    let record = match (resource_type, topic) {
        (RESOURCE_TOPIC, Some(t)) => Record::AlterTopicConfig(proto::AlterTopicConfig {
            topic_id: t.id.as_bytes().to_vec(),
            configs: entries,
        }),
        _ => Record::AlterBrokerConfig(proto::AlterBrokerConfig { configs: entries }),
    };
    broker
        .replication
        .propose_metadata(MetadataRecord {
            record: Some(record),
        })
        .await
        .map_err(|e| (replication_error_code(&e), e.to_string()))
}

/// The current dynamic configs of a resource.
pub fn current(
    broker: &Broker,
    resource_type: i8,
    name: &str,
) -> Result<(Option<TopicMetadata>, BTreeMap<String, String>), Failure> {
    let md = broker.replication.metadata();
    match resource_type {
        RESOURCE_TOPIC => match md.topics.get(name) {
            Some(t) => Ok((Some(t.clone()), t.configs.clone())),
            None => Err((
                ResponseError::UnknownTopicOrPartition.code(),
                format!("Topic {name} does not exist"),
            )),
        },
        RESOURCE_BROKER => {
            drop(md);
            check_broker_resource(broker, name)?;
            Ok((None, broker.replication.metadata().broker_configs.clone()))
        }
        other => Err((
            ResponseError::InvalidRequest.code(),
            format!("Unsupported resource type {other}"),
        )),
    }
}
