//! The cluster metadata state machine: what the controller log says the cluster is. Every
//! broker rebuilds it by applying the committed records of `__cluster_metadata` in order.

use std::collections::{BTreeMap, HashMap};

use runnel_storage::{CleanupPolicy, LogConfig};
use uuid::Uuid;

use crate::proto::{metadata_record::Record, ConfigEntry, MetadataRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Advertised endpoints by listener name; empty for a broker registered before named
    /// listeners existed (then `host` and `port` serve every listener).
    pub endpoints: Vec<BrokerEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub name: String,
    pub host: String,
    pub port: i32,
}

impl BrokerInfo {
    /// Where a client connected on `listener` reaches this broker, if it has that listener
    /// (Kafka leaves brokers without it out of the answer).
    pub fn endpoint(&self, listener: &str) -> Option<(&str, i32)> {
        if self.endpoints.is_empty() {
            return Some((&self.host, self.port));
        }
        self.endpoints
            .iter()
            .find(|e| e.name == listener)
            .map(|e| (e.host.as_str(), e.port))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub id: Uuid,
    /// Replicas (broker ids) of each partition, preferred leader first.
    pub partitions: Vec<Vec<i32>>,
    /// Explicitly set topic configs (Kafka's `DYNAMIC_TOPIC_CONFIG`).
    pub configs: BTreeMap<String, String>,
}

/// A change to apply to local replicas after a metadata record was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataEffect {
    None,
    PartitionsAdded { topic: String, from: usize },
    TopicDeleted(TopicMetadata),
    TopicConfigChanged { topic: String },
    BrokerConfigChanged,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicMetadata>,
    pub topic_names: HashMap<Uuid, String>,
    pub broker_configs: BTreeMap<String, String>,
    /// The next producer id no broker has been granted.
    pub next_producer_id: i64,
    /// The last block of producer ids granted to each broker: (first, size).
    pub producer_id_blocks: BTreeMap<i32, (i64, i32)>,
    /// Index of the last metadata entry applied.
    pub applied_index: u64,
}

fn configs_map(entries: &[ConfigEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|c| (c.name.clone(), c.value.clone()))
        .collect()
}

fn uuid_of(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

impl ClusterMetadata {
    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMetadata> {
        self.topic_names
            .get(id)
            .and_then(|name| self.topics.get(name))
    }

    /// Applies one committed record. Records that refer to unknown topics are ignored (they
    /// lost a race with a deletion).
    pub fn apply(&mut self, record: &MetadataRecord) -> MetadataEffect {
        let Some(record) = &record.record else {
            return MetadataEffect::None;
        };
        match record {
            Record::RegisterBroker(b) => {
                self.brokers.insert(
                    b.node_id,
                    BrokerInfo {
                        node_id: b.node_id,
                        host: b.host.clone(),
                        port: b.port,
                        rack: b.rack.clone(),
                        endpoints: b
                            .endpoints
                            .iter()
                            .map(|e| BrokerEndpoint {
                                name: e.name.clone(),
                                host: e.host.clone(),
                                port: e.port,
                            })
                            .collect(),
                    },
                );
                MetadataEffect::None
            }
            Record::CreateTopic(t) => {
                let Some(id) = uuid_of(&t.topic_id) else {
                    return MetadataEffect::None;
                };
                if self.topics.contains_key(&t.name) {
                    return MetadataEffect::None;
                }
                self.topic_names.insert(id, t.name.clone());
                self.topics.insert(
                    t.name.clone(),
                    TopicMetadata {
                        name: t.name.clone(),
                        id,
                        partitions: t.partitions.iter().map(|p| p.replicas.clone()).collect(),
                        configs: configs_map(&t.configs),
                    },
                );
                MetadataEffect::PartitionsAdded {
                    topic: t.name.clone(),
                    from: 0,
                }
            }
            Record::DeleteTopic(d) => {
                let Some(id) = uuid_of(&d.topic_id) else {
                    return MetadataEffect::None;
                };
                let Some(name) = self.topic_names.remove(&id) else {
                    return MetadataEffect::None;
                };
                match self.topics.remove(&name) {
                    Some(t) => MetadataEffect::TopicDeleted(t),
                    None => MetadataEffect::None,
                }
            }
            Record::AlterTopicConfig(a) => {
                let Some(name) =
                    uuid_of(&a.topic_id).and_then(|id| self.topic_names.get(&id).cloned())
                else {
                    return MetadataEffect::None;
                };
                if let Some(t) = self.topics.get_mut(&name) {
                    t.configs = configs_map(&a.configs);
                }
                MetadataEffect::TopicConfigChanged { topic: name }
            }
            Record::CreatePartitions(c) => {
                let Some(name) =
                    uuid_of(&c.topic_id).and_then(|id| self.topic_names.get(&id).cloned())
                else {
                    return MetadataEffect::None;
                };
                let Some(t) = self.topics.get_mut(&name) else {
                    return MetadataEffect::None;
                };
                let from = t.partitions.len();
                t.partitions
                    .extend(c.partitions.iter().map(|p| p.replicas.clone()));
                MetadataEffect::PartitionsAdded { topic: name, from }
            }
            Record::AlterBrokerConfig(b) => {
                self.broker_configs = configs_map(&b.configs);
                MetadataEffect::BrokerConfigChanged
            }
            Record::ProducerIdsBlock(b) => {
                if b.first == self.next_producer_id && b.size > 0 {
                    self.next_producer_id = b.first.saturating_add(i64::from(b.size));
                    self.producer_id_blocks.insert(b.node_id, (b.first, b.size));
                }
                MetadataEffect::None
            }
        }
    }

    /// The effective value of a topic config: the topic's own, else the cluster-wide broker
    /// default (`log.*` names), else Kafka's default.
    pub fn effective_topic_config(&self, topic: &TopicMetadata) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for def in crate::topic_config::TOPIC_CONFIGS {
            let value = topic
                .configs
                .get(def.name)
                .or_else(|| def.broker_name.and_then(|b| self.broker_configs.get(b)))
                .cloned()
                .unwrap_or_else(|| def.default.to_string());
            out.insert(def.name.to_string(), value);
        }
        out
    }

    /// The storage configuration of a topic's partitions.
    pub fn log_config(&self, topic: &TopicMetadata) -> LogConfig {
        log_config_from(&self.effective_topic_config(topic))
    }
}

/// Builds a [`LogConfig`] from effective topic config values (already validated when set).
pub fn log_config_from(values: &BTreeMap<String, String>) -> LogConfig {
    let mut c = LogConfig::default();
    let int = |name: &str| values.get(name).and_then(|v| v.trim().parse::<i64>().ok());
    if let Some(v) = int("segment.bytes") {
        c.segment_bytes = v.max(14) as u64;
    }
    if let Some(v) = int("segment.ms") {
        c.segment_ms = v.max(1);
    }
    if let Some(v) = int("segment.index.bytes") {
        c.segment_index_bytes = v.max(12) as u64;
    }
    if let Some(v) = int("index.interval.bytes") {
        c.index_interval_bytes = v.max(0) as u64;
    }
    if let Some(v) = int("retention.ms") {
        c.retention_ms = v;
    }
    if let Some(v) = int("retention.bytes") {
        c.retention_bytes = v;
    }
    if let Some(v) = int("delete.retention.ms") {
        c.delete_retention_ms = v.max(0);
    }
    if let Some(v) = int("min.compaction.lag.ms") {
        c.min_compaction_lag_ms = v.max(0);
    }
    if let Some(v) = int("max.message.bytes") {
        c.max_message_bytes = (v.max(0) as usize).max(runnel_storage::batch::HEADER_SIZE);
    }
    if let Some(v) = values
        .get("min.cleanable.dirty.ratio")
        .and_then(|v| v.parse::<f64>().ok())
    {
        c.min_cleanable_dirty_ratio = v.clamp(0.0, 1.0);
    }
    if let Some(p) = values
        .get("cleanup.policy")
        .and_then(|v| CleanupPolicy::parse(v).ok())
    {
        c.cleanup_policy = p;
    }
    c
}
