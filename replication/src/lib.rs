//! Raft groups over Runnel's storage logs.
//!
//! Every partition is a Raft group (tikv's `raft` crate) whose log is the partition's storage
//! `Log`; cluster metadata is one more group, `__cluster_metadata`, whose committed records
//! every broker applies to its [`ClusterMetadata`]. A single broker is a cluster of one: the
//! same code path with one voter.
//!
//! All groups of a broker are driven by one thread ([`driver`]) in the order raft-rs
//! requires; request handlers talk to it through [`Replication`] and read replicas directly.
//!
//! Raft ids are Kafka broker ids plus one (Kafka ids start at 0, Raft's at 1).

pub mod driver;
pub mod metadata;
pub mod placement;
mod probe;
pub mod proto;
pub mod raft_log;
pub mod tcp;
pub mod topic_config;
pub mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use runnel_storage::{CleanerConfig, StorageError};
use tokio::sync::{oneshot, Notify};

pub use driver::{Driver, GroupState};
pub use metadata::{
    BrokerEndpoint, BrokerInfo, ClusterMetadata, PartitionLeaderState, TopicMetadata,
};
pub use proto::MetadataRecord;
pub use raft_log::Replica;
pub use transport::{Envelope, GroupId, NoopTransport, Transport};

/// The name of the cluster metadata log (as in KRaft).
pub const METADATA_TOPIC: &str = "__cluster_metadata";

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("corrupt replication state: {0}")]
    Corrupt(String),
    #[error("this broker does not lead the partition")]
    NotLeaderOrFollower,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("out of order sequence number: expected {expected}")]
    OutOfOrderSequence { expected: i32 },
    #[error("producer epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch { epoch: i16, current: i16 },
    #[error("a retry of a batch that is still being replicated")]
    DuplicateInFlight,
    #[error("could not allocate producer ids: {0}")]
    ProducerIds(String),
    #[error("the transaction coordinator epoch {epoch} is older than {current}")]
    CoordinatorFenced { epoch: i32, current: i32 },
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
}

/// Ticks (of 100 ms) a follower waits without hearing from a leader before it campaigns:
/// drawn from [5, 10), so a dead leader is replaced within about a second. Leaders send
/// heartbeats every tick, so a follower misses five in a row before it acts.
pub const DEFAULT_ELECTION_TICK: usize = 5;

/// How the broker is started, as far as replication cares.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// fsync the log once per Raft Ready cycle (group commit) before acknowledging. Off trades
    /// power-loss durability for speed (page cache only), for development.
    pub fsync: bool,
    pub tick: Duration,
    pub retention_check_interval: Duration,
    pub checkpoint_interval: Duration,
    pub cleaner_interval: Duration,
    pub cleaner: CleanerConfig,
    /// `producer.id.expiration.ms`: an idempotent producer's state is forgotten after it has
    /// written nothing to a partition for this long.
    pub producer_id_expiration_ms: i64,
    /// The voters of the cluster metadata group (Kafka's `controller.quorum.voters`), by
    /// broker id; empty for this broker alone. Read when the group is first created.
    pub metadata_voters: Vec<i32>,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Draw each election timeout at random from `[election_tick, 2 * election_tick)` (raft-rs
    /// uses the thread's RNG). Deterministic simulations turn it off and tick nodes unevenly.
    pub randomized_election_timeout: bool,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with its leader for this
    /// long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `auto.leader.rebalance.enable`: preferred leaders take their partitions back.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`.
    pub leader_imbalance_check_interval: Duration,
    /// `leader.imbalance.per.broker.percentage`: the share of a broker's preferred
    /// partitions that may be led elsewhere before it asks for them back.
    pub leader_imbalance_per_broker_percentage: u32,
    /// `broker.session.timeout.ms`: the metadata leader fences a broker it has not heard
    /// from for this long, and its replicas are reported offline.
    pub broker_session_timeout_ms: i64,
}

impl ReplicationConfig {
    pub fn new(node_id: i32, data_dir: PathBuf) -> ReplicationConfig {
        ReplicationConfig {
            node_id,
            data_dir,
            fsync: true,
            tick: Duration::from_millis(100),
            retention_check_interval: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(60),
            cleaner_interval: Duration::from_secs(15),
            cleaner: CleanerConfig::default(),
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            metadata_voters: Vec::new(),
            election_tick: DEFAULT_ELECTION_TICK,
            randomized_election_timeout: true,
            replica_lag_time_max_ms: 30_000,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval: Duration::from_secs(300),
            leader_imbalance_per_broker_percentage: 10,
            broker_session_timeout_ms: 9_000,
        }
    }
}

/// What an acknowledged produce wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub base_offset: u64,
    pub log_start_offset: u64,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ReplicationError>>;

/// Who wrote a batch: clients' batches go through Kafka's idempotence checks; coordinators'
/// (transaction markers, transactional offset commits) only through epoch checks, as Kafka's
/// `AppendOrigin.COORDINATOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Coordinator,
}

pub(crate) enum Command {
    Produce {
        topic: String,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
        origin: Origin,
        /// The KIP-890 verification guard the handler obtained, if it verified.
        guard: Option<u64>,
        reply: Option<Reply<ProduceAck>>,
    },
    Metadata {
        record: MetadataRecord,
        reply: Reply<()>,
    },
    /// `DeleteRecords` on a partition this broker leads: the new log start offset goes
    /// through the partition's Raft group, so every replica moves it.
    DeleteRecords {
        topic: String,
        partition: i32,
        offset: u64,
        reply: Reply<ProduceAck>,
    },
    /// Raft messages from broker `from` (a Raft id).
    Raft {
        from: u64,
        envelopes: Vec<Envelope>,
    },
    Shutdown,
}

/// State shared between the driver thread and request handlers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) replicas: RwLock<HashMap<(String, i32), Arc<Replica>>>,
    pub(crate) metadata: RwLock<ClusterMetadata>,
    pub(crate) data_changed: Notify,
    pub(crate) quorum: RwLock<QuorumState>,
}

/// The cluster metadata group as this broker sees it (Kafka's DescribeQuorum). Offsets are
/// Raft indexes of the metadata log; the replicas' progress is known only on the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumState {
    /// Kafka broker id of the leader, -1 for none known.
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    /// Whether this broker leads the metadata group (and `voters`/`observers` are filled).
    pub is_leader: bool,
    pub voters: Vec<QuorumReplica>,
    /// Learners: brokers that follow the metadata log without voting.
    pub observers: Vec<QuorumReplica>,
}

/// One replica of the metadata group, as its leader last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumReplica {
    pub node_id: i32,
    pub log_end_offset: i64,
    /// Clock ms when it was last heard from (-1: not yet).
    pub last_fetch_ms: i64,
    /// Clock ms when it last held the leader's whole log (-1: not yet).
    pub last_caught_up_ms: i64,
}

impl Shared {
    pub(crate) fn all_replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Delivers Raft messages from other brokers to the driver (see [`Replication::raft_inbox`]).
#[derive(Debug, Clone)]
pub struct RaftInbox(std::sync::mpsc::Sender<Command>);

impl RaftInbox {
    pub fn deliver(&self, from: u64, envelopes: Vec<Envelope>) {
        let _ = self.0.send(Command::Raft { from, envelopes });
    }
}

/// The broker's handle on replication.
#[derive(Debug)]
pub struct Replication {
    node_id: i32,
    /// This broker's current block of producer ids: [next, end).
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    tx: std::sync::mpsc::Sender<Command>,
    shared: Arc<Shared>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Replication {
    /// Opens the metadata log and every local replica (recovering their logs), then starts
    /// the driver thread.
    pub fn start(config: ReplicationConfig) -> Result<Replication, ReplicationError> {
        Replication::start_with_transport(config, Box::new(NoopTransport))
    }

    /// Like [`Replication::start`], with messages to other brokers going through `transport`;
    /// messages from them enter through [`Replication::step_raft`].
    pub fn start_with_transport(
        config: ReplicationConfig,
        transport: Box<dyn Transport>,
    ) -> Result<Replication, ReplicationError> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let node_id = config.node_id;
        let threads = driver::start(config, shared.clone(), rx, transport)?;
        Ok(Replication {
            node_id,
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            tx,
            shared,
            threads: std::sync::Mutex::new(threads),
        })
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn replica(&self, topic: &str, partition: i32) -> Option<Arc<Replica>> {
        self.shared
            .replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// The current metadata. Do not hold the guard across an `.await`.
    pub fn metadata(&self) -> RwLockReadGuard<'_, ClusterMetadata> {
        self.shared
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The metadata quorum as this broker last saw it (refreshed every 200 ms).
    pub fn quorum(&self) -> QuorumState {
        self.shared
            .quorum
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notified whenever any local partition's high watermark moves (long-polling fetches).
    pub fn data_changed(&self) -> &Notify {
        &self.shared.data_changed
    }

    /// Proposes validated batches (each one complete v2 batch) to a partition this broker
    /// leads. `acks`: 0 returns at once with `None`; 1 after the leader's append; -1 after
    /// commit.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
    ) -> Result<Option<ProduceAck>, ReplicationError> {
        match self.begin_produce(topic, partition, batches, acks)? {
            None => Ok(None),
            Some(rx) => rx
                .await
                .map_err(|_| ReplicationError::ShuttingDown)?
                .map(Some),
        }
    }

    /// Like [`Replication::produce`], but only sends the proposal; the returned receiver
    /// answers later. Lets a handler start every partition's write before waiting for any.
    pub fn begin_produce(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
    ) -> Result<Option<oneshot::Receiver<Result<ProduceAck, ReplicationError>>>, ReplicationError>
    {
        self.begin_append(topic, partition, batches, acks, Origin::Client, None)
    }

    /// [`Replication::begin_produce`] for batches of a transactional producer, with the
    /// verification guard (see [`Replica::verification_guard`]) when the handler verified the
    /// producer's transaction with the coordinator.
    pub fn begin_transactional_produce(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
        guard: Option<u64>,
    ) -> Result<Option<oneshot::Receiver<Result<ProduceAck, ReplicationError>>>, ReplicationError>
    {
        self.begin_append(topic, partition, batches, acks, Origin::Client, guard)
    }

    /// A coordinator's write (a transaction marker, transactional offset commits): no
    /// sequence checks, and an end-transaction marker is checked against the producer's epoch
    /// and the coordinator epoch the partition last saw. Answers once committed.
    pub fn begin_coordinator_append(
        &self,
        topic: &str,
        partition: i32,
        batch: Bytes,
    ) -> Result<oneshot::Receiver<Result<ProduceAck, ReplicationError>>, ReplicationError> {
        self.begin_append(topic, partition, vec![batch], -1, Origin::Coordinator, None)?
            .ok_or(ReplicationError::ShuttingDown)
    }

    fn begin_append(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
        origin: Origin,
        guard: Option<u64>,
    ) -> Result<Option<oneshot::Receiver<Result<ProduceAck, ReplicationError>>>, ReplicationError>
    {
        if acks == 0 {
            self.send(Command::Produce {
                topic: topic.to_string(),
                partition,
                batches,
                acks,
                origin,
                guard,
                reply: None,
            })?;
            return Ok(None);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Produce {
            topic: topic.to_string(),
            partition,
            batches,
            acks,
            origin,
            guard,
            reply: Some(reply),
        })?;
        Ok(Some(rx))
    }

    /// `DeleteRecords`: moves the partition's log start offset to `offset` (at most its high
    /// watermark) on every replica, through Raft. Returns the leader's new log start offset
    /// once the change is committed and applied here.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: i32,
        offset: u64,
    ) -> Result<u64, ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DeleteRecords {
            topic: topic.to_string(),
            partition,
            offset,
            reply,
        })?;
        let ack = rx.await.map_err(|_| ReplicationError::ShuttingDown)??;
        Ok(ack.log_start_offset)
    }

    /// Proposes a metadata change and waits until it is committed and applied here.
    pub async fn propose_metadata(&self, record: MetadataRecord) -> Result<(), ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Metadata { record, reply })?;
        rx.await.map_err(|_| ReplicationError::ShuttingDown)?
    }

    /// A producer id never handed out before by any broker: taken from this broker's block,
    /// which is refilled through the metadata log a thousand ids at a time (as KRaft does).
    pub async fn allocate_producer_id(&self) -> Result<i64, ReplicationError> {
        const BLOCK: i32 = 1000;
        let mut block = self.producer_ids.lock().await;
        for _ in 0..20 {
            if block.0 < block.1 {
                let id = block.0;
                block.0 += 1;
                return Ok(id);
            }
            let first = self.metadata().next_producer_id;
            let record = MetadataRecord {
                record: Some(proto::metadata_record::Record::ProducerIdsBlock(
                    proto::ProducerIdsBlock {
                        node_id: self.node_id,
                        first,
                        size: BLOCK,
                    },
                )),
            };
            self.propose_metadata(record).await?;
            if self.metadata().producer_id_blocks.get(&self.node_id) == Some(&(first, BLOCK)) {
                *block = (first, first + i64::from(BLOCK));
            }
        }
        Err(ReplicationError::ProducerIds(
            "lost the race for a block 20 times".into(),
        ))
    }

    /// Hands Raft messages received from broker `from` (a Raft id) to the driver.
    pub fn step_raft(&self, from: u64, envelopes: Vec<Envelope>) -> Result<(), ReplicationError> {
        self.send(Command::Raft { from, envelopes })
    }

    /// A handle that feeds other brokers' Raft messages to this broker's driver (what the
    /// TCP listener calls), usable from any thread.
    pub fn raft_inbox(&self) -> RaftInbox {
        RaftInbox(self.tx.clone())
    }

    fn send(&self, cmd: Command) -> Result<(), ReplicationError> {
        self.tx
            .send(cmd)
            .map_err(|_| ReplicationError::ShuttingDown)
    }

    /// Stops the driver: every log checkpointed, so the next start scans nothing.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.shutdown();
    }
}
