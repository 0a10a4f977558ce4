//! The transaction coordinator. Coordinators are the leaders of `__transaction_state`
//! partitions (a transactional id's partition is Kafka's hash of it, as for groups); each
//! transactional id's metadata is a record of that partition in Kafka's schema ([`records`]).
//! A coordinator that gains a partition rebuilds its transactions by replaying it, answers
//! `COORDINATOR_LOAD_IN_PROGRESS` until done, and finishes the transactions it finds half
//! decided.
//!
//! The transitions are pure ([`state`]); this module owns the locking, the writes (a
//! transactional id being written is `pending`, so concurrent requests get
//! `CONCURRENT_TRANSACTIONS`), the end-transaction markers, and the timer that aborts
//! transactions past their timeout and forgets idle transactional ids.
//!
//! Transactions V2 (KIP-890 part 2): EndTxn v5 bumps the producer epoch of every transaction
//! (rotating to a new producer id once it is exhausted), and partition leaders and group
//! coordinators add partitions to a V2 producer's transaction themselves
//! ([`add_partitions_manager`]). Each transaction records the version of the requests that
//! made it (`client_transaction_version`), which decides how EndTxn tells retries apart.

pub mod add_partitions_manager;
pub mod records;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runnel_protocol::kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::ReplicationError;
use runnel_storage::batch;

use crate::group::{begin_append_to, now_ms, partition_for, Appending, OFFSETS_TOPIC};
use crate::Broker;
use records::{TxnLogValue, TxnState};
use state::TxnMetadata;

pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// Kafka's transaction coordinator settings, under Kafka's names.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`.
    pub state_log_num_partitions: i32,
    /// `transaction.state.log.replication.factor` (capped at the number of brokers).
    pub state_log_replication_factor: i16,
    /// `transaction.state.log.segment.bytes`.
    pub state_log_segment_bytes: i64,
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_timed_out_interval_ms: u64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub remove_expired_interval_ms: u64,
    /// The finalized level of the `transaction.version` feature (0..=2), which ApiVersions
    /// advertises. Kafka finalizes it cluster-wide at format time or with
    /// `kafka-features.sh upgrade --feature transaction.version=N`; here it is a setting.
    /// Clients use Transactions V2 (KIP-890 part 2) only when it is 2; requests of either
    /// version are answered with that version's semantics whatever the level, as Kafka does.
    /// The coordinator's own aborts (timeouts, fencing) follow it.
    pub transaction_version: i16,
}

/// The highest `transaction.version` this broker supports.
pub const MAX_TRANSACTION_VERSION: i16 = 2;

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            state_log_num_partitions: 50,
            state_log_replication_factor: 3,
            state_log_segment_bytes: 104_857_600,
            max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            abort_timed_out_interval_ms: 10_000,
            remove_expired_interval_ms: 3_600_000,
            transaction_version: MAX_TRANSACTION_VERSION,
        }
    }
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// The transactions of one `__transaction_state` partition this broker leads.
#[derive(Debug)]
struct PartitionTxns {
    /// The leader epoch they were loaded in: the coordinator epoch markers carry.
    epoch: i32,
    loaded: bool,
    txns: HashMap<String, TxnMetadata>,
}

/// What a transaction coordinator request sees of its partition.
#[derive(Debug)]
pub struct Txns<'a> {
    pub txns: &'a mut HashMap<String, TxnMetadata>,
    pub partition: i32,
    pub coordinator_epoch: i32,
}

#[derive(Debug, Default)]
pub struct TransactionCoordinator {
    config: TxnConfig,
    partitions: Mutex<HashMap<i32, PartitionTxns>>,
    /// ApiVersions' `finalized_features_epoch`. Kafka gives the metadata offset of the last
    /// feature change; the level here is a setting read at startup, so the startup time
    /// (ms) stands in: it grows whenever the level can have changed, and clients keep the
    /// features of the highest epoch they saw.
    features_epoch: i64,
}

/// A metadata change handed to replication: install it with [`Write::finish`].
#[must_use]
#[derive(Debug)]
pub struct Write {
    transactional_id: String,
    partition: i32,
    coordinator_epoch: i32,
    target: TxnMetadata,
    appending: Appending,
}

impl TransactionCoordinator {
    pub fn new(config: TxnConfig) -> TransactionCoordinator {
        TransactionCoordinator {
            config,
            partitions: Mutex::new(HashMap::new()),
            features_epoch: now_ms(),
        }
    }

    pub fn features_epoch(&self) -> i64 {
        self.features_epoch
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, PartitionTxns>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of partitions `__transaction_state` has (its config until it exists).
    pub fn state_partitions(&self, broker: &Broker) -> i32 {
        broker
            .replication
            .metadata()
            .topics
            .get(TRANSACTION_STATE_TOPIC)
            .map_or(self.config.state_log_num_partitions, |t| {
                t.partitions.len() as i32
            })
    }

    pub fn partition_of(&self, broker: &Broker, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.state_partitions(broker))
    }

    /// Runs `f` on the transactions of `transactional_id`'s partition if this broker
    /// coordinates it and has loaded it; else the error the client must see.
    pub fn with_txns<R>(
        &self,
        broker: &Arc<Broker>,
        transactional_id: &str,
        f: impl FnOnce(Txns<'_>) -> R,
    ) -> Result<R, i16> {
        if transactional_id.len() > i16::MAX as usize {
            return Err(code(ResponseError::InvalidRequest));
        }
        let p = self.partition_of(broker, transactional_id);
        self.with_partition(broker, p, f)
    }

    fn with_partition<R>(
        &self,
        broker: &Arc<Broker>,
        p: i32,
        f: impl FnOnce(Txns<'_>) -> R,
    ) -> Result<R, i16> {
        let replica = broker
            .replication
            .replica(TRANSACTION_STATE_TOPIC, p)
            .ok_or(code(ResponseError::NotCoordinator))?;
        if replica.leader_id() != broker.config.node_id {
            return Err(code(ResponseError::NotCoordinator));
        }
        let epoch = replica.leader_epoch();
        let mut partitions = self.lock();
        match partitions.get_mut(&p) {
            Some(pt) if pt.epoch == epoch && pt.loaded => Ok(f(Txns {
                txns: &mut pt.txns,
                partition: p,
                coordinator_epoch: epoch,
            })),
            Some(pt) if pt.epoch == epoch => Err(code(ResponseError::CoordinatorLoadInProgress)),
            _ => {
                start_load(broker, &mut partitions, p, epoch);
                Err(code(ResponseError::CoordinatorLoadInProgress))
            }
        }
    }

    /// KIP-890 part 1: before a producer's first transactional batch reaches a partition, the
    /// leader asks the coordinator whether the partition is in the producer's ongoing
    /// transaction, so a late write can never open a transaction nobody will close.
    /// Coordinators on other brokers are not asked (yet): their producers are trusted. The
    /// error is Kafka 4's verification answer; a busy coordinator is NOT_ENOUGH_REPLICAS
    /// (retriable), as Kafka answers.
    pub fn verify(
        &self,
        broker: &Arc<Broker>,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partition: &(String, i32),
    ) -> Result<(), i16> {
        let p = self.partition_of(broker, transactional_id);
        let local = broker
            .replication
            .replica(TRANSACTION_STATE_TOPIC, p)
            .is_some_and(|r| r.leader_id() == broker.config.node_id);
        if !local {
            return Ok(());
        }
        let checked = self.with_partition(broker, p, |t| match t.txns.get(transactional_id) {
            Some(m) => state::verify(m, producer_id, producer_epoch, partition),
            None => Err(code(ResponseError::InvalidProducerIdMapping)),
        });
        match checked {
            Ok(result) => result,
            // The coordinator is busy: a retriable error, as Kafka answers.
            Err(_) => Err(code(ResponseError::NotEnoughReplicas)),
        }
    }

    /// Every loaded transaction of the partitions this broker coordinates. The error is set
    /// when some partition is still loading.
    pub fn snapshot(&self, broker: &Arc<Broker>) -> (i16, Vec<TxnMetadata>) {
        let mut error = 0;
        let mut out = Vec::new();
        for p in led_partitions(broker) {
            match self.with_partition(broker, p, |t| t.txns.values().cloned().collect::<Vec<_>>()) {
                Ok(mut v) => out.append(&mut v),
                Err(e) => error = e,
            }
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        (error, out)
    }
}

fn led_partitions(broker: &Broker) -> Vec<i32> {
    (0..broker.txns.state_partitions(broker))
        .filter(|p| {
            broker
                .replication
                .replica(TRANSACTION_STATE_TOPIC, *p)
                .is_some_and(|r| r.leader_id() == broker.config.node_id)
        })
        .collect()
}

/// Marks `m` pending and hands `target` to replication. Call while holding the coordinator's
/// lock (inside [`TransactionCoordinator::with_txns`]), so writes reach the log in the order
/// the metadata changed.
pub fn start_write(broker: &Broker, t: &mut Txns<'_>, target: TxnMetadata) -> Write {
    let id = target.transactional_id.clone();
    if let Some(m) = t.txns.get_mut(&id) {
        m.pending = true;
    }
    let record = (records::encode_key(&id), Some(target.to_value().encode()));
    let appending = begin_append_to(
        broker,
        TRANSACTION_STATE_TOPIC,
        t.partition,
        vec![record],
        false,
        None,
    );
    Write {
        transactional_id: id,
        partition: t.partition,
        coordinator_epoch: t.coordinator_epoch,
        target,
        appending,
    }
}

impl Write {
    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// Waits for the write and installs the new metadata; on failure the metadata stays as it
    /// was (no longer pending) and the client gets the error.
    pub async fn finish(self, broker: &Arc<Broker>) -> Result<TxnMetadata, i16> {
        let Write {
            transactional_id,
            partition,
            coordinator_epoch,
            target,
            appending,
        } = self;
        let written = appending.done().await;
        let installed = broker.txns.with_partition(broker, partition, |t| {
            if t.coordinator_epoch != coordinator_epoch {
                return Err(code(ResponseError::NotCoordinator));
            }
            let m = t.txns.get_mut(&transactional_id);
            match (written, m) {
                (Ok(_), Some(m)) => {
                    *m = target.clone();
                    Ok(target)
                }
                (Ok(_), None) => {
                    t.txns.insert(transactional_id.clone(), target.clone());
                    Ok(target)
                }
                (Err(e), Some(m)) => {
                    m.pending = false;
                    Err(e)
                }
                (Err(e), None) => Err(e),
            }
        });
        installed.and_then(|r| r)
    }
}

/// After PrepareCommit/PrepareAbort is stored: writes the markers to every partition of the
/// transaction, then CompleteCommit/CompleteAbort. Runs in the background; a coordinator that
/// loses the partition stops, and its successor finishes the job after loading.
/// The receiver fires once the transaction is complete (it is dropped if this broker stops
/// coordinating first).
pub fn spawn_complete(
    broker: &Arc<Broker>,
    prepared: TxnMetadata,
    coordinator_epoch: i32,
) -> tokio::sync::oneshot::Receiver<()> {
    let broker = broker.clone();
    let (done, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if complete_transaction(&broker, prepared, coordinator_epoch).await {
            let _ = done.send(());
        }
    });
    rx
}

/// Writes the markers and the completion; true once the transaction is complete.
async fn complete_transaction(
    broker: &Arc<Broker>,
    prepared: TxnMetadata,
    coordinator_epoch: i32,
) -> bool {
    let commit = prepared.state == TxnState::PrepareCommit;
    let id = prepared.transactional_id.clone();
    let started = Instant::now();
    let mut remaining: Vec<(String, i32)> = prepared.partitions.iter().cloned().collect();
    let mut backoff = Duration::from_millis(20);
    while !remaining.is_empty() {
        let still_coordinator = broker
            .txns
            .with_txns(broker, &id, |t| t.coordinator_epoch == coordinator_epoch)
            .unwrap_or(false);
        if !still_coordinator {
            tracing::info!(
                transactional_id = id,
                "no longer the coordinator; the next one completes the transaction"
            );
            return false;
        }
        // Partitions led elsewhere get their markers through WriteTxnMarkers to the leader.
        let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        remaining.retain(|tp| {
            let here = broker
                .replication
                .replica(&tp.0, tp.1)
                .is_some_and(|r| r.leader_id() == broker.config.node_id);
            let leader = broker.partition_leader(&tp.0, tp.1).leader;
            if here
                || leader < 0
                || leader == broker.config.node_id
                || !partition_exists(broker, tp)
            {
                return true;
            }
            remote.entry(leader).or_default().push(tp.clone());
            false
        });
        let mut failed = Vec::new();
        for (leader, partitions) in remote {
            let request = marker_request(&prepared, commit, coordinator_epoch, &partitions);
            match crate::inter_broker::write_txn_markers(broker, leader, request).await {
                Ok(response) => {
                    for (tp, code) in marker_results(&response, &partitions) {
                        match remote_marker_error(broker, &tp, code) {
                            None => {}
                            Some(MarkerError::Retry(_)) => failed.push(tp),
                            Some(e) => {
                                tracing::warn!(transactional_id = id, topic = tp.0, partition = tp.1, leader, error = ?e, "marker not written")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(
                        transactional_id = id,
                        leader,
                        error = e,
                        "WriteTxnMarkers failed; retrying"
                    );
                    failed.extend(partitions);
                }
            }
        }
        let begun: Vec<_> = remaining
            .iter()
            .map(|(topic, p)| {
                let marker = begin_marker(
                    broker,
                    topic,
                    *p,
                    prepared.producer_id,
                    prepared.producer_epoch,
                    commit,
                    coordinator_epoch,
                );
                ((topic.clone(), *p), marker)
            })
            .collect();
        for (tp, marker) in begun {
            match finish_marker(broker, &tp, prepared.producer_id, commit, marker).await {
                Ok(()) => {}
                Err(MarkerError::Retry(e)) => {
                    tracing::debug!(transactional_id = id, topic = tp.0, partition = tp.1, error = %e, "marker write failed; retrying");
                    failed.push(tp);
                }
                Err(MarkerError::Unknown) => {
                    tracing::info!(
                        transactional_id = id,
                        topic = tp.0,
                        partition = tp.1,
                        "no marker for a deleted partition"
                    );
                }
                Err(MarkerError::Fenced(e)) => {
                    tracing::warn!(transactional_id = id, topic = tp.0, partition = tp.1, error = %e, "skipping a marker a newer epoch decided");
                }
            }
        }
        remaining = failed;
        if !remaining.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
    // Store CompleteCommit/CompleteAbort; retried while this broker stays the coordinator,
    // since nothing else would move the transaction on.
    let mut backoff = Duration::from_millis(20);
    loop {
        let now = now_ms();
        let write = broker.txns.with_txns(broker, &id, |mut t| {
            if t.coordinator_epoch != coordinator_epoch {
                return None;
            }
            let m = t.txns.get(&id)?;
            if m.state != prepared.state || m.producer_epoch != prepared.producer_epoch || m.pending
            {
                return None;
            }
            let target = state::complete(m, now);
            Some(start_write(broker, &mut t, target))
        });
        let Ok(Some(w)) = write else { return false };
        match w.finish(broker).await {
            Ok(m) => {
                tracing::debug!(
                    transactional_id = id,
                    state = m.state.name(),
                    ms = started.elapsed().as_millis() as u64,
                    "transaction completed"
                );
                return true;
            }
            Err(e) if e == code(ResponseError::NotCoordinator) => {
                tracing::info!(
                    transactional_id = id,
                    "no longer the coordinator; the next one completes the transaction"
                );
                return false;
            }
            Err(e) => {
                tracing::warn!(
                    transactional_id = id,
                    error = e,
                    "could not store the completed transaction; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Partitions grouped by topic, topics in order, as requests list them.
pub(crate) fn by_topic(partitions: &[(String, i32)]) -> BTreeMap<&str, Vec<i32>> {
    let mut grouped: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        grouped.entry(t.as_str()).or_default().push(*p);
    }
    grouped
}

/// WriteTxnMarkers v1 for one transaction's partitions on one leader.
fn marker_request(
    prepared: &TxnMetadata,
    commit: bool,
    coordinator_epoch: i32,
    partitions: &[(String, i32)],
) -> WriteTxnMarkersRequest {
    let topics = by_topic(partitions)
        .into_iter()
        .map(|(t, ps)| {
            WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_string(t.to_string())))
                .with_partition_indexes(ps)
        })
        .collect();
    WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(prepared.producer_id))
        .with_producer_epoch(prepared.producer_epoch)
        .with_transaction_result(commit)
        .with_topics(topics)
        .with_coordinator_epoch(coordinator_epoch)])
}

/// Each asked partition's error code in a WriteTxnMarkers response; a partition the leader
/// did not answer for counts as NOT_LEADER_OR_FOLLOWER (retried).
fn marker_results(
    response: &WriteTxnMarkersResponse,
    asked: &[(String, i32)],
) -> Vec<((String, i32), i16)> {
    asked
        .iter()
        .map(|(t, p)| {
            let code = response
                .markers
                .iter()
                .flat_map(|m| &m.topics)
                .filter(|r| r.name.0.as_str() == t)
                .flat_map(|r| &r.partitions)
                .find(|r| r.partition_index == *p)
                .map_or(ResponseError::NotLeaderOrFollower.code(), |r| r.error_code);
            ((t.clone(), *p), code)
        })
        .collect()
}

/// What a leader's error code for one marker means to the coordinator.
fn remote_marker_error(broker: &Broker, tp: &(String, i32), code: i16) -> Option<MarkerError> {
    if code == 0 {
        None
    } else if code == ResponseError::InvalidProducerEpoch.code()
        || code == ResponseError::TransactionCoordinatorFenced.code()
    {
        Some(MarkerError::Fenced(ReplicationError::InvalidTxnState(
            format!("the leader answered error code {code}"),
        )))
    } else if code == ResponseError::UnknownTopicOrPartition.code() && !partition_exists(broker, tp)
    {
        Some(MarkerError::Unknown)
    } else {
        Some(MarkerError::Retry(ReplicationError::NotLeaderOrFollower))
    }
}

/// Why a marker was not written.
#[derive(Debug)]
pub enum MarkerError {
    /// Try again (no leader yet, leader moved, shutting down).
    Retry(ReplicationError),
    /// The partition does not exist (any more): nothing to decide there.
    Unknown,
    /// A newer producer epoch or coordinator has already decided this partition.
    Fenced(ReplicationError),
}

fn partition_exists(broker: &Broker, (topic, partition): &(String, i32)) -> bool {
    broker
        .replication
        .metadata()
        .topics
        .get(topic)
        .is_some_and(|t| (*partition as usize) < t.partitions.len() && *partition >= 0)
}

/// The newest coordinator epoch any `__transaction_state` partition this broker leads has:
/// markers claiming a newer one cannot come from a real coordinator.
pub fn max_coordinator_epoch(broker: &Broker) -> i32 {
    let local = led_partitions(broker)
        .into_iter()
        .filter_map(|p| broker.replication.replica(TRANSACTION_STATE_TOPIC, p))
        .map(|r| r.leader_epoch())
        .max()
        .unwrap_or(-1);
    // Coordinators on other brokers: the leader epochs their partitions reported.
    let md = broker.replication.metadata();
    md.partition_leaders
        .iter()
        .filter(|((t, _), _)| t == TRANSACTION_STATE_TOPIC)
        .map(|(_, l)| l.leader_epoch)
        .max()
        .unwrap_or(-1)
        .max(local)
}

type MarkerReply =
    tokio::sync::oneshot::Receiver<Result<runnel_replication::ProduceAck, ReplicationError>>;

/// Hands an end-transaction marker to a partition this broker leads.
pub fn begin_marker(
    broker: &Broker,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> Result<MarkerReply, MarkerError> {
    if !partition_exists(broker, &(topic.to_string(), partition)) {
        return Err(MarkerError::Unknown);
    }
    let marker = batch::build_end_txn_marker(
        commit,
        producer_id,
        producer_epoch,
        coordinator_epoch,
        now_ms(),
    )
    .map_err(|e| MarkerError::Retry(e.into()))?;
    broker
        .replication
        .begin_coordinator_append(topic, partition, marker)
        .map_err(MarkerError::Retry)
}

/// Waits for a marker to commit; on `__consumer_offsets` the group coordinator then makes
/// the transaction's offsets visible (or drops them).
pub async fn finish_marker(
    broker: &Arc<Broker>,
    tp: &(String, i32),
    producer_id: i64,
    commit: bool,
    begun: Result<MarkerReply, MarkerError>,
) -> Result<(), MarkerError> {
    let rx = begun?;
    match rx.await {
        Ok(Ok(ack)) => {
            if tp.0 == OFFSETS_TOPIC {
                broker.groups.complete_transaction(
                    broker,
                    tp.1,
                    producer_id,
                    commit,
                    ack.base_offset,
                );
            }
            Ok(())
        }
        Ok(Err(ReplicationError::UnknownTopicOrPartition)) => {
            // Deleted, or simply not hosted here (yet): only the first is final.
            if partition_exists(broker, tp) {
                Err(MarkerError::Retry(
                    ReplicationError::UnknownTopicOrPartition,
                ))
            } else {
                Err(MarkerError::Unknown)
            }
        }
        Ok(Err(e @ ReplicationError::InvalidProducerEpoch { .. }))
        | Ok(Err(e @ ReplicationError::CoordinatorFenced { .. })) => Err(MarkerError::Fenced(e)),
        Ok(Err(e)) => Err(MarkerError::Retry(e)),
        Err(_) => Err(MarkerError::Retry(ReplicationError::ShuttingDown)),
    }
}

/// Marks partition `p` loading in `epoch` and replays it on a blocking thread.
fn start_load(
    broker: &Arc<Broker>,
    partitions: &mut HashMap<i32, PartitionTxns>,
    p: i32,
    epoch: i32,
) {
    partitions.insert(
        p,
        PartitionTxns {
            epoch,
            loaded: false,
            txns: HashMap::new(),
        },
    );
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let loaded = load_txns(&broker, p);
        let mut partitions = broker.txns.lock();
        let Some(pt) = partitions.get_mut(&p).filter(|pt| pt.epoch == epoch) else {
            return;
        };
        match loaded {
            Ok(txns) => {
                tracing::info!(
                    partition = p,
                    epoch,
                    transactions = txns.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "loaded transaction coordinator state"
                );
                let unfinished: Vec<TxnMetadata> = txns
                    .values()
                    .filter(|m| m.is_preparing())
                    .cloned()
                    .collect();
                pt.txns = txns;
                pt.loaded = true;
                drop(partitions);
                for mut m in unfinished {
                    if m.state == TxnState::PrepareEpochFence {
                        m.state = TxnState::PrepareAbort;
                    }
                    drop(spawn_complete(&broker, m, epoch));
                }
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "loading transactions failed; will retry");
                partitions.remove(&p);
            }
        }
    });
}

/// Replays one `__transaction_state` partition.
fn load_txns(
    broker: &Arc<Broker>,
    p: i32,
) -> Result<HashMap<String, TxnMetadata>, ReplicationError> {
    let replica = broker
        .replication
        .replica(TRANSACTION_STATE_TOPIC, p)
        .ok_or(ReplicationError::UnknownTopicOrPartition)?;
    let waited = Instant::now();
    while replica.high_watermark() < replica.log().log_end_offset() {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err(ReplicationError::NotLeaderOrFollower);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut txns = HashMap::new();
    // The log's read guard is taken per chunk, so the Raft driver can append meanwhile.
    let (mut index, end) = {
        let log = replica.log();
        (log.first_entry_index(), log.next_entry_index())
    };
    while index < end {
        let entries = replica.log().entries(index, end, 4 * 1024 * 1024)?;
        let Some(last) = entries.last() else { break };
        index = last.index + 1;
        for e in &entries {
            crate::group::for_each_record(&e.data, |record_offset, key, value| {
                let id = match records::decode_key(key) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(partition = p, record_offset, error = %e, "undecodable transaction key");
                        return;
                    }
                };
                match value.map(TxnLogValue::decode) {
                    None => {
                        txns.remove(&id);
                    }
                    Some(Ok(v)) => {
                        txns.insert(id.clone(), TxnMetadata::from_value(id, &v));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition = p, record_offset, error = %e, "skipping transaction record")
                    }
                }
            });
        }
    }
    Ok(txns)
}

/// Creates `__transaction_state` if it does not exist yet: compacted, Kafka's partition
/// count, replication factor capped at the brokers there are.
pub async fn ensure_state_topic(broker: &Arc<Broker>) -> Result<(), (i16, String)> {
    use crate::handlers::create_topics::{create_topic, NewTopic};
    let brokers = {
        let md = broker.replication.metadata();
        if md.topics.contains_key(TRANSACTION_STATE_TOPIC) {
            return Ok(());
        }
        md.brokers.len().max(1)
    };
    let c = broker.txns.config();
    let mut topic = NewTopic::defaults(broker, TRANSACTION_STATE_TOPIC.to_string());
    topic.partitions = c.state_log_num_partitions;
    topic.replication_factor = c.state_log_replication_factor.min(brokers as i16).max(1);
    topic
        .configs
        .insert("cleanup.policy".into(), "compact".into());
    topic.configs.insert(
        "segment.bytes".into(),
        c.state_log_segment_bytes.to_string(),
    );
    topic
        .configs
        .insert("compression.type".into(), "uncompressed".into());
    match create_topic(broker, topic, false).await {
        Ok(_) => Ok(()),
        Err((code, _)) if code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Aborts a transaction the coordinator itself decided to end (timeout): bump the epoch to
/// fence the producer, store PrepareAbort, then write the markers.
async fn abort_timed_out(broker: &Arc<Broker>, transactional_id: String) {
    let now = now_ms();
    let write = broker.txns.with_txns(broker, &transactional_id, |mut t| {
        let m = t.txns.get(&transactional_id)?;
        if !m.timed_out(now) {
            return None;
        }
        let target = state::fence(m, broker.txns.config.transaction_version, now);
        Some(start_write(broker, &mut t, target))
    });
    let Ok(Some(w)) = write else { return };
    let epoch = w.coordinator_epoch();
    match w.finish(broker).await {
        Ok(prepared) => {
            tracing::info!(
                transactional_id,
                producer_id = prepared.producer_id,
                epoch = prepared.producer_epoch,
                "aborting a transaction past its timeout"
            );
            drop(spawn_complete(broker, prepared, epoch));
        }
        Err(e) => tracing::warn!(
            transactional_id,
            error = e,
            "could not abort a timed-out transaction"
        ),
    }
}

/// Forgets an idle transactional id: a tombstone, then gone (Kafka's Dead).
async fn expire(broker: &Arc<Broker>, transactional_id: String) {
    let now = now_ms();
    let expiration = broker.txns.config.transactional_id_expiration_ms;
    let begun = broker.txns.with_txns(broker, &transactional_id, |t| {
        let m = t.txns.get_mut(&transactional_id)?;
        if !m.expired(now, expiration) {
            return None;
        }
        m.pending = true;
        Some((
            t.coordinator_epoch,
            begin_append_to(
                broker,
                TRANSACTION_STATE_TOPIC,
                t.partition,
                vec![(records::encode_key(&transactional_id), None)],
                false,
                None,
            ),
        ))
    });
    let Ok(Some((epoch, appending))) = begun else {
        return;
    };
    let written = appending.done().await;
    let _ = broker.txns.with_txns(broker, &transactional_id, |t| {
        if t.coordinator_epoch != epoch {
            return;
        }
        if written.is_ok() {
            t.txns.remove(&transactional_id);
            tracing::info!(transactional_id, "transactional id expired");
        } else if let Some(m) = t.txns.get_mut(&transactional_id) {
            m.pending = false;
        }
    });
}

/// Loads partitions this broker comes to lead (so half-decided transactions complete even if
/// no client asks), aborts timed-out transactions and expires idle transactional ids.
pub async fn run_timer(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let tick = Duration::from_millis(200);
    let abort_every = Duration::from_millis(broker.txns.config.abort_timed_out_interval_ms.max(10));
    let expire_every = Duration::from_millis(broker.txns.config.remove_expired_interval_ms.max(10));
    let mut next_abort = Instant::now() + abort_every;
    let mut next_expire = Instant::now() + expire_every;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if !broker
            .replication
            .metadata()
            .topics
            .contains_key(TRANSACTION_STATE_TOPIC)
        {
            continue;
        }
        for p in led_partitions(&broker) {
            // Starts a load if this broker leads the partition in a new epoch.
            let _ = broker.txns.with_partition(&broker, p, |_| ());
        }
        let now = Instant::now();
        if now >= next_abort {
            next_abort = now + abort_every;
            let (_, txns) = broker.txns.snapshot(&broker);
            let ms = now_ms();
            for m in txns.into_iter().filter(|m| m.timed_out(ms)) {
                abort_timed_out(&broker, m.transactional_id).await;
            }
        }
        if now >= next_expire {
            next_expire = now + expire_every;
            let (_, txns) = broker.txns.snapshot(&broker);
            let ms = now_ms();
            let expiration = broker.txns.config.transactional_id_expiration_ms;
            for m in txns.into_iter().filter(|m| m.expired(ms, expiration)) {
                expire(&broker, m.transactional_id).await;
            }
        }
    }
}
