//! DescribeConfigs (key 32): every topic or broker config with its value, source, type,
//! synonyms and documentation. Kafka Connect and admin tools depend on these being real.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use runnel_protocol::kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::configs::{self, ConfigValue, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::Broker;

fn entry(
    c: ConfigValue,
    version: i16,
    synonyms: bool,
    docs: bool,
) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(c.name))
        .with_value(c.value.map(StrBytes::from_string))
        .with_read_only(c.read_only)
        .with_config_source(c.source)
        .with_is_sensitive(false);
    if synonyms {
        r = r.with_synonyms(
            c.synonyms
                .into_iter()
                .map(|(n, v, s)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(n))
                        .with_value(v.map(StrBytes::from_string))
                        .with_source(s)
                })
                .collect(),
        );
    }
    if version >= 3 {
        // Null unless asked for, as Kafka sends it (the field's default is an empty string).
        r = r
            .with_config_type(c.config_type as i8)
            .with_documentation(docs.then(|| StrBytes::from_static_str(c.doc)));
    }
    r
}

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let all = match resource.resource_type {
            RESOURCE_TOPIC => {
                let topic = broker.replication.metadata().topics.get(&name).cloned();
                match topic {
                    Some(t) => Ok(configs::topic_configs(broker, &t)),
                    None => Err((
                        ResponseError::UnknownTopicOrPartition.code(),
                        format!("Topic {name} does not exist"),
                    )),
                }
            }
            RESOURCE_BROKER => configs::check_broker_resource(broker, &name)
                .map(|()| configs::broker_configs(broker)),
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!("Unsupported resource type {other}"),
            )),
        };
        match all {
            Ok(all) => {
                // Null or empty both mean every config, as in Kafka's ConfigHelper.
                let keys: Option<Vec<String>> = resource
                    .configuration_keys
                    .filter(|k| !k.is_empty())
                    .map(|k| k.iter().map(|s| s.to_string()).collect());
                let configs = all
                    .into_iter()
                    .filter(|c| keys.as_ref().is_none_or(|k| k.contains(&c.name)))
                    .map(|c| {
                        entry(
                            c,
                            version,
                            request.include_synonyms,
                            request.include_documentation,
                        )
                    })
                    .collect();
                results.push(result.with_configs(configs));
            }
            Err((code, message)) => {
                results.push(
                    result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message))),
                );
            }
        }
    }
    DescribeConfigsResponse::default().with_results(results)
}
