//! FindCoordinator (key 10): the broker leading the `__consumer_offsets` partition of a group,
//! or the `__transaction_state` partition of a transactional id (each topic created on first
//! use, as Kafka does), one key (v0-3) or a batch of keys (v4+).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::find_coordinator_response::Coordinator;
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::create_topics::{create_topic, NewTopic};
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::txn::{ensure_state_topic, TRANSACTION_STATE_TOPIC};
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

struct Found {
    error: i16,
    message: Option<String>,
    node_id: i32,
    host: String,
    port: i32,
}

impl Found {
    fn error(error: i16, message: impl Into<String>) -> Found {
        Found {
            error,
            message: Some(message.into()),
            node_id: -1,
            host: String::new(),
            port: -1,
        }
    }
}

/// Creates `__consumer_offsets` if it does not exist yet: compacted, Kafka's partition count,
/// replication factor capped at the brokers there are.
pub async fn ensure_offsets_topic(broker: &Arc<Broker>) -> Result<(), (i16, String)> {
    let brokers = {
        let md = broker.replication.metadata();
        if md.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        md.brokers.len().max(1)
    };
    let c = broker.groups.config();
    let mut topic = NewTopic::defaults(broker, OFFSETS_TOPIC.to_string());
    topic.partitions = c.offsets_topic_num_partitions;
    topic.replication_factor = c
        .offsets_topic_replication_factor
        .min(brokers as i16)
        .max(1);
    topic
        .configs
        .insert("cleanup.policy".into(), "compact".into());
    topic.configs.insert(
        "segment.bytes".into(),
        c.offsets_topic_segment_bytes.to_string(),
    );
    topic
        .configs
        .insert("compression.type".into(), "producer".into());
    match create_topic(broker, topic, false).await {
        Ok(_) => Ok(()),
        Err((code, _)) if code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn find(broker: &Arc<Broker>, key: &str, key_type: i8, listener: &str) -> Found {
    let (topic, partition) = match key_type {
        KEY_TYPE_GROUP => {
            if key.is_empty() {
                return Found::error(
                    ResponseError::InvalidRequest.code(),
                    "The group id must not be empty",
                );
            }
            if let Err((code, message)) = ensure_offsets_topic(broker).await {
                tracing::warn!(code, message, "cannot create {OFFSETS_TOPIC}");
                return Found::error(ResponseError::CoordinatorNotAvailable.code(), message);
            }
            (
                OFFSETS_TOPIC,
                partition_for(key, broker.groups.offsets_partitions(broker)),
            )
        }
        KEY_TYPE_TRANSACTION => {
            if key.is_empty() {
                return Found::error(
                    ResponseError::InvalidRequest.code(),
                    "The transactional id must not be empty",
                );
            }
            if let Err((code, message)) = ensure_state_topic(broker).await {
                tracing::warn!(code, message, "cannot create {TRANSACTION_STATE_TOPIC}");
                return Found::error(ResponseError::CoordinatorNotAvailable.code(), message);
            }
            (
                TRANSACTION_STATE_TOPIC,
                broker.txns.partition_of(broker, key),
            )
        }
        other => {
            return Found::error(
                ResponseError::InvalidRequest.code(),
                format!("Unsupported key type {other}"),
            )
        }
    };
    let md = broker.replication.metadata();
    let leader = broker.leader_view(&md, topic, partition).leader;
    // The coordinator's endpoint on the listener the request came in on; a coordinator
    // without that listener is not available to this client (Kafka's answer too).
    match md
        .brokers
        .get(&leader)
        .and_then(|b| b.endpoint(listener).map(|e| (b.node_id, e)))
    {
        Some((node_id, (host, port))) => Found {
            error: 0,
            message: None,
            node_id,
            host: host.to_string(),
            port,
        },
        None => Found::error(
            ResponseError::CoordinatorNotAvailable.code(),
            "The coordinator is not available.",
        ),
    }
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
    listener: &str,
) -> FindCoordinatorResponse {
    if version < 4 {
        let f = find(broker, &request.key, request.key_type, listener).await;
        return FindCoordinatorResponse::default()
            .with_error_code(f.error)
            .with_error_message(if version >= 1 {
                f.message.map(StrBytes::from_string)
            } else {
                None
            })
            .with_node_id(BrokerId(f.node_id))
            .with_host(StrBytes::from_string(f.host))
            .with_port(f.port);
    }
    let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
    for key in &request.coordinator_keys {
        let f = find(broker, key, request.key_type, listener).await;
        coordinators.push(
            Coordinator::default()
                .with_key(key.clone())
                .with_error_code(f.error)
                .with_error_message(f.message.map(StrBytes::from_string))
                .with_node_id(BrokerId(f.node_id))
                .with_host(StrBytes::from_string(f.host))
                .with_port(f.port),
        );
    }
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
