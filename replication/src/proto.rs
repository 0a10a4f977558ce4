//! Runnel's own messages, defined with `prost` derives (no protoc): the cluster metadata
//! records written to the controller log, and small per-group state files.

/// One change to the cluster metadata, the value of one record in `__cluster_metadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRecord {
    #[prost(oneof = "metadata_record::Record", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub record: Option<metadata_record::Record>,
}

pub mod metadata_record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Record {
        #[prost(message, tag = "1")]
        RegisterBroker(super::RegisterBroker),
        #[prost(message, tag = "2")]
        CreateTopic(super::CreateTopic),
        #[prost(message, tag = "3")]
        DeleteTopic(super::DeleteTopic),
        #[prost(message, tag = "4")]
        AlterTopicConfig(super::AlterTopicConfig),
        #[prost(message, tag = "5")]
        CreatePartitions(super::CreatePartitions),
        #[prost(message, tag = "6")]
        AlterBrokerConfig(super::AlterBrokerConfig),
        #[prost(message, tag = "7")]
        ProducerIdsBlock(super::ProducerIdsBlock),
        #[prost(message, tag = "8")]
        PartitionLeaders(super::PartitionLeaders),
        #[prost(message, tag = "9")]
        FenceBroker(super::FenceBroker),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterBroker {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(int32, tag = "3")]
    pub port: i32,
    #[prost(string, optional, tag = "4")]
    pub rack: Option<String>,
    /// Every advertised listener (Kafka's `advertised.listeners`). Records written before
    /// named listeners existed have none: then `host` and `port` serve every listener.
    /// `host`/`port` stay filled with the first endpoint, for readers of those records.
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<Endpoint>,
    /// Where other brokers reach this one's Raft listener (`host:port`). Brokers that are
    /// not controller voters are found only by it; empty in records of older brokers and
    /// in the simulation's filler records.
    #[prost(string, tag = "6")]
    pub raft_address: String,
}

/// One advertised listener of a broker: a client that connected on listener `name` is told
/// to reach this broker at `host:port`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Endpoint {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(int32, tag = "3")]
    pub port: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionAssignment {
    #[prost(int32, repeated, tag = "1")]
    pub replicas: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigEntry {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTopic {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The topic id, 16 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub topic_id: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub partitions: Vec<PartitionAssignment>,
    #[prost(message, repeated, tag = "4")]
    pub configs: Vec<ConfigEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteTopic {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
}

/// Replaces a topic's whole set of explicitly set configs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlterTopicConfig {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub configs: Vec<ConfigEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreatePartitions {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    /// Assignments of the new partitions, in partition order after the existing ones.
    #[prost(message, repeated, tag = "2")]
    pub partitions: Vec<PartitionAssignment>,
}

/// Replaces the dynamic broker-level configs (cluster-wide defaults for topics).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlterBrokerConfig {
    #[prost(message, repeated, tag = "1")]
    pub configs: Vec<ConfigEntry>,
}

/// A Raft group's membership, persisted beside its log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupMembership {
    #[prost(uint64, repeated, tag = "1")]
    pub voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub learners: Vec<u64>,
}

/// Grants `size` producer ids starting at `first` to broker `node_id`, if `first` is the next
/// unallocated id (otherwise the record lost a race and grants nothing).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProducerIdsBlock {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(int64, tag = "2")]
    pub first: i64,
    #[prost(int32, tag = "3")]
    pub size: i32,
}

/// Partition leaders report who leads and which replicas are in sync (Kafka's
/// `PartitionChangeRecord`, written by the leader instead of the controller because every
/// partition elects its own leader), so every broker can answer Metadata for partitions it
/// does not host. Reports with an older leader epoch than the one recorded are ignored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionLeaders {
    #[prost(message, repeated, tag = "1")]
    pub partitions: Vec<PartitionLeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionLeader {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int32, tag = "3")]
    pub leader: i32,
    #[prost(int32, tag = "4")]
    pub leader_epoch: i32,
    /// The in-sync replicas (broker ids), leader included.
    #[prost(int32, repeated, tag = "5")]
    pub isr: Vec<i32>,
}

/// The metadata leader fences a broker it has not heard from for `broker.session.timeout.ms`
/// (Kafka's `FenceBrokerRecord`) and unfences it when it is heard again: its replicas are
/// reported offline meanwhile.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FenceBroker {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(bool, tag = "2")]
    pub fenced: bool,
}

/// The data of a partition's Raft snapshot. Runnel's partition snapshots carry no records:
/// a follower whose next entry the leader no longer holds (retention or `DeleteRecords`
/// removed it) empties its log and restarts it where the leader's entries begin, as Kafka's
/// follower does when it falls below the leader's log start (`truncateFullyAndStartAt`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionSnapshot {
    /// The offset of the leader's first entry after the snapshot.
    #[prost(uint64, tag = "1")]
    pub next_offset: u64,
    /// The leader's log start offset.
    #[prost(uint64, tag = "2")]
    pub log_start_offset: u64,
}

/// Raft messages from one broker to another, sent together (one Ready cycle's worth for one
/// destination). `eraftpb::Message` carries no group id, so each is wrapped in an envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftMessageBatch {
    /// Raft id of the sender (Kafka broker id + 1).
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(message, repeated, tag = "2")]
    pub envelopes: Vec<RaftEnvelope>,
}

/// One Raft message of one group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftEnvelope {
    /// The partition's topic; absent for the cluster metadata group.
    #[prost(string, optional, tag = "1")]
    pub topic: Option<String>,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// The `eraftpb::Message`, in raft-rs's own (rust-protobuf) encoding.
    #[prost(bytes = "bytes", tag = "3")]
    pub message: bytes::Bytes,
}
