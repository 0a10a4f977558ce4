//! Metadata (key 3): brokers, topics with ids, partitions with leaders, epochs, replicas and
//! ISR. Creates missing topics when both the client and `auto.create.topics.enable` allow it.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::{ClusterMetadata, TopicMetadata};
use uuid::Uuid;

use super::create_topics::{create_topic, validate_topic_name, NewTopic};
use crate::Broker;

/// `authorized_operations` when the client did not ask for it.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    version: i16,
    listener: &str,
) -> MetadataResponse {
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested: Option<Vec<(Option<String>, Uuid)>> = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let auto_create =
        broker.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    if let (Some(list), true) = (&requested, auto_create) {
        let missing: Vec<String> = {
            let md = broker.replication.metadata();
            list.iter()
                .filter_map(|(n, _)| n.clone())
                .filter(|n| !md.topics.contains_key(n) && validate_topic_name(n).is_ok())
                .collect()
        };
        for name in missing {
            let new = NewTopic::defaults(broker, name.clone());
            if let Err((code, msg)) = create_topic(broker, new, false).await {
                if code != ResponseError::TopicAlreadyExists.code() {
                    tracing::warn!(topic = name, code, msg, "auto-creating topic failed");
                }
            }
        }
    }
    let md = broker.replication.metadata();
    let mut topics = Vec::new();
    match requested {
        None => {
            for t in md.topics.values() {
                topics.push(topic_response(broker, &md, t, version));
            }
        }
        Some(list) => {
            for (name, id) in list {
                let found = match &name {
                    Some(n) => md.topics.get(n),
                    None => md.topic_by_id(&id),
                };
                match found {
                    Some(t) => topics.push(topic_response(broker, &md, t, version)),
                    None => {
                        let code = match &name {
                            Some(n) if validate_topic_name(n).is_err() => {
                                ResponseError::InvalidTopicException.code()
                            }
                            Some(_) => ResponseError::UnknownTopicOrPartition.code(),
                            None => ResponseError::UnknownTopicId.code(),
                        };
                        topics.push(
                            MetadataResponseTopic::default()
                                .with_error_code(code)
                                .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                                .with_topic_id(if version >= 10 { id } else { Uuid::nil() })
                                .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
                        );
                    }
                }
            }
        }
    }
    // Brokers at their endpoints on the listener this request came in on; brokers without
    // that listener are left out, as Kafka does.
    let brokers: Vec<MetadataResponseBroker> = md
        .brokers
        .values()
        .filter_map(|b| {
            let (host, port) = b.endpoint(listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port)
                    .with_rack(if version >= 1 {
                        b.rack.clone().map(StrBytes::from_string)
                    } else {
                        None
                    }),
            )
        })
        .collect();
    hide_unreachable_leaders(&mut topics, &brokers, version);
    // Fields a version does not have must stay at their defaults or the encoder refuses.
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(if version >= 2 {
            Some(StrBytes::from_string(broker.cluster_id.clone()))
        } else {
            None
        })
        .with_controller_id(BrokerId(if version >= 1 {
            broker.config.node_id
        } else {
            -1
        }))
        .with_topics(topics)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn topic_response(
    broker: &Broker,
    md: &ClusterMetadata,
    t: &TopicMetadata,
    version: i16,
) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(p, replicas)| {
            let view = broker.leader_view(md, &t.name, p as i32);
            let error = if view.leader < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            let offline: Vec<BrokerId> = replicas
                .iter()
                .filter(|r| md.is_fenced(**r))
                .map(|&r| BrokerId(r))
                .collect();
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(if version >= 7 { view.leader_epoch } else { -1 })
                .with_replica_nodes(replicas.iter().map(|&r| BrokerId(r)).collect())
                .with_isr_nodes(view.isr.into_iter().map(BrokerId).collect())
                .with_offline_replicas(if version >= 5 { offline } else { Vec::new() })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(if version >= 10 { t.id } else { Uuid::nil() })
        .with_is_internal(crate::is_internal_topic(&t.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

/// A partition whose leader has no endpoint on this listener has no leader this client can
/// reach: Kafka answers LISTENER_NOT_FOUND (v6+) or LEADER_NOT_AVAILABLE, leader -1.
fn hide_unreachable_leaders(
    topics: &mut [MetadataResponseTopic],
    brokers: &[MetadataResponseBroker],
    version: i16,
) {
    let code = if version >= 6 {
        ResponseError::ListenerNotFound.code()
    } else {
        ResponseError::LeaderNotAvailable.code()
    };
    for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        let leader = p.leader_id;
        if leader.0 >= 0 && !brokers.iter().any(|b| b.node_id == leader) {
            p.leader_id = BrokerId(-1);
            p.error_code = code;
        }
    }
}
