//! CreateTopics (key 19): validated, then one `CreateTopic` record through the metadata Raft
//! group; answered once this broker has applied it (its replicas exist).

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::placement::{place, Placeable};
use runnel_replication::proto::{self, metadata_record::Record};
use runnel_replication::topic_config::{validate_topic_config, TOPIC_CONFIGS};
use runnel_replication::{MetadataRecord, ReplicationError, TopicMetadata};

use crate::error::replication_error_code;
use crate::Broker;

/// Kafka's `ConfigSource` codes.
pub mod config_source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// Kafka's rules for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "Topic name is illegal, it can't be longer than 249 characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A topic to create, after defaults are filled in.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Explicit assignments (partition -> brokers), if the client gave them.
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    pub fn defaults(broker: &Broker, name: String) -> NewTopic {
        NewTopic {
            name,
            partitions: broker.config.num_partitions,
            replication_factor: broker.config.default_replication_factor,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
        }
    }
}

type Failure = (i16, String);

/// The registered brokers with their AZs, for placement. Fenced brokers (not heard from for
/// `broker.session.timeout.ms`) get no new replicas, as Kafka's controller places only on
/// unfenced ones.
pub fn placeable_brokers(md: &runnel_replication::ClusterMetadata) -> Vec<Placeable> {
    md.brokers
        .values()
        .filter(|b| !md.is_fenced(b.node_id))
        .map(|b| Placeable {
            node_id: b.node_id,
            az: b.rack.clone(),
        })
        .collect()
}

/// Validates and (unless `validate_only`) creates a topic. Returns its metadata.
pub async fn create_topic(
    broker: &Arc<Broker>,
    topic: NewTopic,
    validate_only: bool,
) -> Result<TopicMetadata, Failure> {
    validate_topic_name(&topic.name)
        .map_err(|m| (ResponseError::InvalidTopicException.code(), m))?;
    let (brokers, placeable): (Vec<i32>, Vec<Placeable>) = {
        let md = broker.replication.metadata();
        if md.topics.contains_key(&topic.name) {
            return Err((
                ResponseError::TopicAlreadyExists.code(),
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        (md.brokers.keys().copied().collect(), placeable_brokers(&md))
    };
    let assignments = if topic.assignments.is_empty() {
        if topic.partitions < 1 {
            return Err((
                ResponseError::InvalidPartitions.code(),
                "Number of partitions must be larger than 0.".into(),
            ));
        }
        if topic.replication_factor < 1 {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                "Replication factor must be larger than 0.".into(),
            ));
        }
        if topic.replication_factor as usize > brokers.len() {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "Unable to replicate the partition {} time(s): The target replication factor of {} cannot be reached because only {} broker(s) are registered.",
                    topic.replication_factor,
                    topic.replication_factor,
                    brokers.len()
                ),
            ));
        }
        // Each topic's first leader is chosen by its name, so topics' leaders spread too.
        let first = crate::group::partition_for(&topic.name, brokers.len() as i32) as usize;
        place(
            &placeable,
            topic.partitions as usize,
            topic.replication_factor as usize,
            first,
        )
        .ok_or((
            ResponseError::InvalidReplicationFactor.code(),
            "Replication factor exceeds the brokers registered.".to_string(),
        ))?
    } else {
        for replicas in &topic.assignments {
            if replicas.is_empty() || replicas.iter().any(|r| !brokers.contains(r)) {
                return Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    "Replica assignment names an unknown broker.".into(),
                ));
            }
        }
        topic.assignments.clone()
    };
    for (name, value) in &topic.configs {
        validate_topic_config(name, value).map_err(|m| (ResponseError::InvalidConfig.code(), m))?;
    }
    let id = uuid::Uuid::new_v4();
    let metadata = TopicMetadata {
        name: topic.name.clone(),
        id,
        partitions: assignments.clone(),
        configs: topic.configs.clone(),
    };
    if validate_only {
        return Ok(metadata);
    }
    let record = MetadataRecord {
        record: Some(Record::CreateTopic(proto::CreateTopic {
            name: topic.name.clone(),
            topic_id: id.as_bytes().to_vec(),
            partitions: assignments
                .into_iter()
                .map(|replicas| proto::PartitionAssignment { replicas })
                .collect(),
            configs: topic
                .configs
                .iter()
                .map(|(n, v)| proto::ConfigEntry {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
        })),
    };
    broker
        .replication
        .propose_metadata(record)
        .await
        .map_err(|e: ReplicationError| {
            (
                replication_error_code(&e),
                format!("creating topic {} failed: {e}", topic.name),
            )
        })?;
    let md = broker.replication.metadata();
    match md.topics.get(&topic.name) {
        Some(t) if t.id == id => Ok(t.clone()),
        _ => Err((
            ResponseError::TopicAlreadyExists.code(),
            format!("Topic '{}' already exists.", topic.name),
        )),
    }
}

/// Waits (at most `timeout_ms`, capped at 10 s) until every broker's metadata can name a
/// leader for each of these new partitions: in KRaft the records that create a topic carry
/// its leaders, so clients that produce right after CreateTopics find them at once. Here the
/// preferred leader is elected and reported moments later; without this wait the first
/// Metadata answers LEADER_NOT_AVAILABLE and clients back off for up to a second.
pub(crate) async fn await_leaders(
    broker: &Broker,
    created: &[(String, std::ops::Range<usize>)],
    timeout_ms: i32,
) {
    if created.is_empty() {
        return;
    }
    let limit = std::time::Duration::from_millis(timeout_ms.clamp(0, 10_000) as u64);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let led = {
            let md = broker.replication.metadata();
            created.iter().all(|(topic, partitions)| {
                partitions.clone().all(|p| {
                    md.partition_leaders
                        .get(&(topic.clone(), p as i32))
                        .is_some_and(|l| l.leader >= 0 && !md.is_fenced(l.leader))
                })
            })
        };
        if led || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The topic's configs as CreateTopics v5+ reports them.
fn describe(broker: &Broker, t: &TopicMetadata) -> Vec<CreatableTopicConfigs> {
    let md = broker.replication.metadata();
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = if let Some(v) = t.configs.get(def.name) {
                (v.clone(), config_source::DYNAMIC_TOPIC_CONFIG)
            } else if let Some(v) = def.broker_name.and_then(|b| md.broker_configs.get(b)) {
                (v.clone(), config_source::DYNAMIC_DEFAULT_BROKER_CONFIG)
            } else {
                (def.default.to_string(), config_source::DEFAULT_CONFIG)
            };
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(def.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_read_only(false)
                .with_config_source(source)
                .with_is_sensitive(false)
        })
        .collect()
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    let mut seen = std::collections::HashSet::new();
    let mut created_topics = Vec::new();
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        if !seen.insert(name.clone()) {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "Duplicate topic name {name} in request"
                    )))),
            );
            continue;
        }
        let mut configs = BTreeMap::new();
        for c in &t.configs {
            if let Some(v) = &c.value {
                configs.insert(c.name.to_string(), v.to_string());
            }
        }
        let mut assignments: Vec<(i32, Vec<i32>)> = t
            .assignments
            .iter()
            .map(|a| {
                (
                    a.partition_index,
                    a.broker_ids.iter().map(|b| b.0).collect(),
                )
            })
            .collect();
        assignments.sort_by_key(|a| a.0);
        let assignments_valid = assignments.iter().enumerate().all(|(i, a)| a.0 == i as i32);
        if !assignments.is_empty()
            && (!assignments_valid || t.num_partitions != -1 || t.replication_factor != -1)
        {
            results.push(result.with_error_code(ResponseError::InvalidRequest.code()).with_error_message(Some(
                StrBytes::from_static_str("Both numPartitions or replicationFactor and replicasAssignments were set, or assignments are not numbered 0..n"),
            )));
            continue;
        }
        let new = NewTopic {
            name: name.clone(),
            partitions: if t.num_partitions == -1 {
                broker.config.num_partitions
            } else {
                t.num_partitions
            },
            replication_factor: if t.replication_factor == -1 {
                broker.config.default_replication_factor
            } else {
                t.replication_factor
            },
            assignments: assignments.into_iter().map(|a| a.1).collect(),
            configs,
        };
        match create_topic(broker, new, request.validate_only).await {
            Ok(created) => {
                if !request.validate_only {
                    created_topics.push((created.name.clone(), 0..created.partitions.len()));
                }
                result = result
                    .with_topic_id(if request.validate_only {
                        uuid::Uuid::nil()
                    } else {
                        created.id
                    })
                    .with_num_partitions(created.partitions.len() as i32)
                    .with_replication_factor(
                        created.partitions.first().map_or(0, |p| p.len() as i16),
                    );
                if version >= 5 {
                    result = result.with_configs(Some(describe(broker, &created)));
                }
                results.push(result);
            }
            Err((code, message)) => {
                results.push(
                    result
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message)))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1),
                );
            }
        }
    }
    await_leaders(broker, &created_topics, request.timeout_ms).await;
    CreateTopicsResponse::default().with_topics(results)
}
