//! Static broker configuration (what `runnel serve` is started with), named after Kafka's
//! broker configs.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `log.dirs`.
    pub data_dir: PathBuf,
    /// The address to bind.
    pub listen: SocketAddr,
    /// `advertised.listeners`: the host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `broker.rack`: the availability zone.
    pub rack: Option<String>,
    /// `socket.request.max.bytes`.
    pub max_request_size: usize,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// fsync once per Raft cycle before acknowledging (default). Off: page cache only.
    pub fsync: bool,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    pub max_connections: usize,
    /// `offsets.topic.*`, `offsets.retention.*`, `group.*`: the group coordinator.
    pub group: crate::group::GroupConfig,
    /// `transaction.*`, `transactional.id.expiration.ms`: the transaction coordinator.
    pub txn: crate::txn::TxnConfig,
    /// `producer.id.expiration.ms`.
    pub producer_id_expiration_ms: i64,
    /// `controller.quorum.voters`: the brokers (id and Raft address) of the cluster metadata
    /// group. Empty: this broker alone.
    pub controller_voters: Vec<(i32, SocketAddr)>,
    /// Where this broker listens for other brokers' Raft traffic (its own entry of
    /// `controller_voters` by default).
    pub raft_listen: Option<SocketAddr>,
    /// `auto.leader.rebalance.enable`.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_per_broker_percentage: u32,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: i64,
    /// `broker.session.timeout.ms`.
    pub broker_session_timeout_ms: i64,
    /// `replica.selector.class` is `RackAwareReplicaSelector` (KIP-392): consumers that send
    /// `client.rack` are sent to an in-sync replica in their AZ. Runnel's default, since
    /// cross-AZ traffic is what it costs on AWS; Kafka's default is leader-only.
    pub rack_aware_replica_selector: bool,
}

impl BrokerConfig {
    pub fn new(node_id: i32, data_dir: PathBuf, listen: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            node_id,
            data_dir,
            listen,
            advertised_host: listen.ip().to_string(),
            advertised_port: listen.port(),
            rack: None,
            max_request_size: runnel_protocol::DEFAULT_MAX_REQUEST_SIZE,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            fsync: true,
            retention_check_interval_ms: 300_000,
            max_connections: 10_000,
            group: crate::group::GroupConfig::default(),
            txn: crate::txn::TxnConfig::default(),
            producer_id_expiration_ms: 86_400_000,
            controller_voters: Vec::new(),
            raft_listen: None,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            replica_lag_time_max_ms: 30_000,
            broker_session_timeout_ms: 9_000,
            rack_aware_replica_selector: true,
        }
    }
}
