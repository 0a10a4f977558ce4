//! The cluster metadata state machine: what the controller log says the cluster is. Every
//! broker rebuilds it by applying the committed records of `__cluster_metadata` in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// Its Raft listener, `host:port` (empty: not given; a controller voter is also found
    /// by `controller.quorum.voters`).
    pub raft_address: String,
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

/// A partition's leader and in-sync replicas, as its leader last reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLeaderState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// A change to apply to local replicas after a metadata record was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataEffect {
    None,
    PartitionsAdded {
        topic: String,
        from: usize,
    },
    TopicDeleted(TopicMetadata),
    TopicConfigChanged {
        topic: String,
    },
    BrokerConfigChanged,
    /// A broker registered or changed its endpoints: its Raft address may be new.
    BrokerRegistered {
        node_id: i32,
    },
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
    /// Leaders and ISRs reported by partition leaders, by (topic, partition).
    pub partition_leaders: HashMap<(String, i32), PartitionLeaderState>,
    /// Brokers the metadata leader has not heard from for `broker.session.timeout.ms`.
    pub fenced_brokers: BTreeSet<i32>,
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
    pub fn is_fenced(&self, node_id: i32) -> bool {
        self.fenced_brokers.contains(&node_id)
    }

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
                        raft_address: b.raft_address.clone(),
                    },
                );
                MetadataEffect::BrokerRegistered { node_id: b.node_id }
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
                self.partition_leaders
                    .retain(|(topic, _), _| *topic != name);
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
            Record::PartitionLeaders(l) => {
                for p in &l.partitions {
                    let Some(t) = uuid_of(&p.topic_id).and_then(|id| self.topic_by_id(&id)) else {
                        continue;
                    };
                    if p.partition < 0 || p.partition as usize >= t.partitions.len() {
                        continue;
                    }
                    let key = (t.name.clone(), p.partition);
                    let newer = match self.partition_leaders.get(&key) {
                        None => true,
                        Some(cur) => {
                            p.leader_epoch > cur.leader_epoch
                                || (p.leader_epoch == cur.leader_epoch && p.leader == cur.leader)
                        }
                    };
                    if newer {
                        self.partition_leaders.insert(
                            key,
                            PartitionLeaderState {
                                leader: p.leader,
                                leader_epoch: p.leader_epoch,
                                isr: p.isr.clone(),
                            },
                        );
                    }
                }
                MetadataEffect::None
            }
            Record::FenceBroker(f) => {
                if f.fenced {
                    self.fenced_brokers.insert(f.node_id);
                } else {
                    self.fenced_brokers.remove(&f.node_id);
                }
                MetadataEffect::None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        CreateTopic, FenceBroker, PartitionAssignment, PartitionLeader, PartitionLeaders,
    };

    fn record(r: Record) -> MetadataRecord {
        MetadataRecord { record: Some(r) }
    }

    fn with_topic(id: Uuid) -> ClusterMetadata {
        let mut md = ClusterMetadata::default();
        md.apply(&record(Record::CreateTopic(CreateTopic {
            name: "t".into(),
            topic_id: id.as_bytes().to_vec(),
            partitions: vec![PartitionAssignment {
                replicas: vec![1, 2, 3],
            }],
            configs: Vec::new(),
        })));
        md
    }

    fn report(id: Uuid, partition: i32, leader: i32, epoch: i32, isr: &[i32]) -> MetadataRecord {
        record(Record::PartitionLeaders(PartitionLeaders {
            partitions: vec![PartitionLeader {
                topic_id: id.as_bytes().to_vec(),
                partition,
                leader,
                leader_epoch: epoch,
                isr: isr.to_vec(),
            }],
        }))
    }

    #[test]
    fn leader_reports_with_an_older_epoch_or_a_rival_at_the_same_epoch_are_ignored() {
        let id = Uuid::from_u128(7);
        let mut md = with_topic(id);
        let key = ("t".to_string(), 0);
        md.apply(&report(id, 0, 2, 5, &[2, 1, 3]));
        assert_eq!(md.partition_leaders[&key].leader, 2);
        // The same leader shrinks its ISR.
        md.apply(&report(id, 0, 2, 5, &[2, 3]));
        assert_eq!(md.partition_leaders[&key].isr, [2, 3]);
        // A stale report from the previous leader, and another claim at the same epoch.
        md.apply(&report(id, 0, 1, 4, &[1]));
        md.apply(&report(id, 0, 3, 5, &[3]));
        assert_eq!(md.partition_leaders[&key].leader, 2);
        md.apply(&report(id, 0, 3, 6, &[3, 2]));
        assert_eq!(md.partition_leaders[&key].leader, 3);
        // Partitions that do not exist, and unknown topics, are ignored.
        md.apply(&report(id, 1, 1, 9, &[1]));
        md.apply(&report(Uuid::from_u128(8), 0, 1, 9, &[1]));
        assert_eq!(md.partition_leaders.len(), 1);
    }

    #[test]
    fn deleting_a_topic_forgets_its_leaders_and_fencing_is_undone() {
        let id = Uuid::from_u128(7);
        let mut md = with_topic(id);
        md.apply(&report(id, 0, 2, 5, &[2]));
        md.apply(&record(Record::DeleteTopic(crate::proto::DeleteTopic {
            topic_id: id.as_bytes().to_vec(),
        })));
        assert!(md.partition_leaders.is_empty());
        md.apply(&record(Record::FenceBroker(FenceBroker {
            node_id: 2,
            fenced: true,
        })));
        assert!(md.is_fenced(2) && !md.is_fenced(1));
        md.apply(&record(Record::FenceBroker(FenceBroker {
            node_id: 2,
            fenced: false,
        })));
        assert!(!md.is_fenced(2));
    }
}
