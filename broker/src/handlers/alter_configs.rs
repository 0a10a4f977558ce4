//! AlterConfigs (key 33): replaces the whole set of dynamic configs of a topic or of the
//! cluster-wide broker defaults.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use runnel_protocol::kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::configs;
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let wanted: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let outcome = async {
            let (topic, _) = configs::current(broker, resource.resource_type, &name)?;
            let mut seen = HashSet::new();
            if !resource.configs.iter().all(|c| seen.insert(&c.name)) {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    "Error due to duplicate config keys".to_string(),
                ));
            }
            configs::validate(resource.resource_type, &wanted)?;
            if request.validate_only {
                return Ok(());
            }
            configs::replace(broker, resource.resource_type, topic.as_ref(), wanted).await
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
    AlterConfigsResponse::default().with_responses(responses)
}
