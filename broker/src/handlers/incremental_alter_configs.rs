//! IncrementalAlterConfigs (key 44): SET, DELETE, APPEND and SUBTRACT on individual configs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use runnel_protocol::kafka_protocol::messages::{
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::configs;
use crate::Broker;

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

/// The items of a list config: its dynamic value, or else its default, as Kafka starts
/// APPEND and SUBTRACT from the default when the config is not set.
fn list_items(resource_type: i8, current: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    current
        .get(key)
        .map(String::as_str)
        .or_else(|| configs::default_value(resource_type, key))
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .collect()
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let outcome = async {
            let (topic, mut current) = configs::current(broker, resource.resource_type, &name)?;
            let mut seen = HashSet::new();
            if !resource.configs.iter().all(|c| seen.insert(&c.name)) {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    "Error due to duplicate config keys".to_string(),
                ));
            }
            for c in &resource.configs {
                let key = c.name.to_string();
                let value = c.value.as_ref().map(|v| v.to_string());
                let list_op = matches!(c.config_operation, APPEND | SUBTRACT);
                if list_op && !configs::is_list(resource.resource_type, &key) {
                    return Err((
                        ResponseError::InvalidConfig.code(),
                        format!("Config {key} is not a list; APPEND and SUBTRACT need one"),
                    ));
                }
                match (c.config_operation, value) {
                    (SET, Some(v)) => {
                        current.insert(key, v);
                    }
                    (DELETE, _) => {
                        current.remove(&key);
                    }
                    (APPEND, Some(v)) => {
                        let mut items = list_items(resource.resource_type, &current, &key);
                        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                            if !items.iter().any(|i| i == item) {
                                items.push(item.to_string());
                            }
                        }
                        current.insert(key, items.join(","));
                    }
                    (SUBTRACT, Some(v)) => {
                        let remove: Vec<&str> = v.split(',').map(str::trim).collect();
                        let mut items = list_items(resource.resource_type, &current, &key);
                        items.retain(|i| !remove.contains(&i.as_str()));
                        current.insert(key, items.join(","));
                    }
                    (op, _) => {
                        return Err((
                            ResponseError::InvalidRequest.code(),
                            format!("Invalid config operation {op} for {key}"),
                        ))
                    }
                }
            }
            configs::validate(resource.resource_type, &current)?;
            if request.validate_only {
                return Ok(());
            }
            configs::replace(broker, resource.resource_type, topic.as_ref(), current).await
        }
        .await;
        let mut r = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err((code, message)) = outcome {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        responses.push(r);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
