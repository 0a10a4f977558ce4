//! The group coordinator. Coordinators are the leaders of `__consumer_offsets` partitions, the
//! partition of a group chosen by Kafka's hash of its id; group metadata and committed offsets
//! are records of that partition in Kafka's own schemas ([`records`]). A coordinator that
//! gains a partition rebuilds its groups by replaying it and answers
//! `COORDINATOR_LOAD_IN_PROGRESS` until done.
//!
//! Each group's state machine ([`classic`]) is pure; this module owns the locking, the writes
//! to `__consumer_offsets`, the loads and the timer.

pub mod classic;
pub mod consumer;
pub mod records;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::ReplicationError;
use runnel_storage::batch::{self, BatchHeader, BatchOptions, NewRecord};

use crate::Broker;
use classic::{ClassicGroup, CommittedOffset, GroupSettings, GroupState, Store};
use records::{GroupMetadataValue, OffsetCommitValue, RecordKey};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's group coordinator settings, under Kafka's names.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.topic.replication.factor` (capped at the number of brokers).
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i64,
    /// `offsets.retention.minutes`.
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// `group.min.session.timeout.ms`, `group.max.session.timeout.ms`,
    /// `group.initial.rebalance.delay.ms`, `group.max.size`.
    pub groups: GroupSettings,
    /// `group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`,
    /// `group.consumer.max.size` (KIP-848 groups).
    pub consumer: consumer::ConsumerSettings,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 104_857_600,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            groups: GroupSettings::default(),
            consumer: consumer::ConsumerSettings::default(),
        }
    }
}

/// Java's `String.hashCode`, over UTF-16 code units.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The `__consumer_offsets` partition of a group: `Utils.abs(groupId.hashCode) % partitions`.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let h = java_hash(group_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One line of ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    /// `classic` or `consumer` (KIP-848).
    pub group_type: &'static str,
}

/// The groups of one `__consumer_offsets` partition this broker leads.
#[derive(Debug)]
pub struct PartitionGroups {
    /// The leader epoch the groups were loaded in.
    pub epoch: i32,
    pub loaded: bool,
    pub groups: HashMap<String, ClassicGroup>,
    /// Transaction decisions (producer id, commit, marker offset) that arrived while loading.
    pub deferred: Vec<(i64, bool, u64)>,
    /// The last decision per producer (commit, marker offset), for transactional offsets whose
    /// write completes after the marker that decides them was already applied.
    pub decided: HashMap<i64, (bool, u64)>,
}

#[derive(Debug, Default)]
pub struct GroupCoordinator {
    config: GroupConfig,
    partitions: Mutex<HashMap<i32, PartitionGroups>>,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// What a failed `__consumer_offsets` append tells the client (Kafka's mapping in
/// `GroupMetadataManager`).
fn append_error_code(e: &ReplicationError, for_commit: bool) -> i16 {
    match e {
        ReplicationError::NotLeaderOrFollower | ReplicationError::ShuttingDown => {
            code(ResponseError::NotCoordinator)
        }
        ReplicationError::UnknownTopicOrPartition => code(ResponseError::CoordinatorNotAvailable),
        ReplicationError::Storage(runnel_storage::StorageError::BatchTooLarge { .. }) => {
            if for_commit {
                code(ResponseError::InvalidCommitOffsetSize)
            } else {
                code(ResponseError::UnknownServerError)
            }
        }
        ReplicationError::Storage(_) | ReplicationError::Io(_) => {
            code(ResponseError::NotCoordinator)
        }
        ReplicationError::InvalidProducerEpoch { .. } => code(ResponseError::InvalidProducerEpoch),
        _ => code(ResponseError::UnknownServerError),
    }
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            partitions: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, PartitionGroups>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of partitions `__consumer_offsets` has (its config until it exists).
    pub fn offsets_partitions(&self, broker: &Broker) -> i32 {
        broker
            .replication
            .metadata()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(self.config.offsets_topic_num_partitions, |t| {
                t.partitions.len() as i32
            })
    }

    pub fn partition_of(&self, broker: &Broker, group_id: &str) -> i32 {
        partition_for(group_id, self.offsets_partitions(broker))
    }

    /// Runs `f` on the groups of `group_id`'s partition if this broker coordinates it and has
    /// loaded it; else the error the client must see.
    pub fn with_groups<R>(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        f: impl FnOnce(&mut HashMap<String, ClassicGroup>, i32) -> R,
    ) -> Result<R, i16> {
        // Record keys hold the id as an int16-length string.
        if group_id.len() > i16::MAX as usize {
            return Err(code(ResponseError::InvalidGroupId));
        }
        let p = self.partition_of(broker, group_id);
        self.with_partition(broker, p, |groups| f(groups, p))
    }

    fn with_partition<R>(
        &self,
        broker: &Arc<Broker>,
        p: i32,
        f: impl FnOnce(&mut HashMap<String, ClassicGroup>) -> R,
    ) -> Result<R, i16> {
        let replica = broker
            .replication
            .replica(OFFSETS_TOPIC, p)
            .ok_or(code(ResponseError::NotCoordinator))?;
        if replica.leader_id() != broker.config.node_id {
            return Err(code(ResponseError::NotCoordinator));
        }
        let epoch = replica.leader_epoch();
        let mut partitions = self.lock();
        match partitions.get_mut(&p) {
            Some(pg) if pg.epoch == epoch && pg.loaded => Ok(f(&mut pg.groups)),
            Some(pg) if pg.epoch == epoch => Err(code(ResponseError::CoordinatorLoadInProgress)),
            _ => {
                start_load(broker, &mut partitions, p, epoch);
                Err(code(ResponseError::CoordinatorLoadInProgress))
            }
        }
    }

    /// A transaction marker of `producer_id` was committed at `marker_offset` of partition
    /// `p`: the offsets the transaction committed there become visible, or are dropped. While
    /// the partition loads, the decision waits and is applied once loaded (the replay may not
    /// have reached the marker).
    pub fn complete_transaction(
        &self,
        broker: &Arc<Broker>,
        p: i32,
        producer_id: i64,
        commit: bool,
        marker_offset: u64,
    ) {
        let epoch = broker
            .replication
            .replica(OFFSETS_TOPIC, p)
            .map_or(-1, |r| r.leader_epoch());
        let mut partitions = self.lock();
        let Some(pg) = partitions.get_mut(&p).filter(|pg| pg.epoch == epoch) else {
            return;
        };
        if !pg.loaded {
            pg.deferred.push((producer_id, commit, marker_offset));
            return;
        }
        pg.decided.insert(producer_id, (commit, marker_offset));
        for g in pg.groups.values_mut() {
            g.complete_transaction(producer_id, commit, marker_offset);
        }
    }

    /// Installs offsets a TxnOffsetCommit wrote (starting at record offset `first`) as
    /// pending for `producer_id`, or, when the marker deciding them was applied already (a
    /// coordinator abort can race the commit's answer), decides them at once.
    pub fn install_txn_offsets(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        producer_id: i64,
        offsets: Vec<((String, i32), CommittedOffset)>,
    ) -> Result<(), i16> {
        let p = self.partition_of(broker, group_id);
        let settings = self.config.groups.clone();
        let decided = self
            .lock()
            .get(&p)
            .and_then(|pg| pg.decided.get(&producer_id).copied());
        self.with_partition(broker, p, |groups| {
            let g = groups
                .entry(group_id.to_string())
                .or_insert_with(|| ClassicGroup::new(group_id.to_string(), settings, now_ms()));
            let pending = g.pending_txn_offsets.entry(producer_id).or_default();
            for (key, offset) in offsets {
                pending.insert(key, offset);
            }
            if let Some((commit, marker_offset)) = decided {
                g.complete_transaction(producer_id, commit, marker_offset);
            }
        })
    }

    /// A write of a consumer group's changes failed: its next changes rewrite everything.
    pub fn consumer_write_failed(&self, broker: &Arc<Broker>, group_id: &str) {
        let _ = self.with_groups(broker, group_id, |groups, _| {
            if let Some(c) = groups.get_mut(group_id).and_then(|g| g.consumer.as_mut()) {
                c.forget_persisted();
            }
        });
    }

    /// Every loaded group's (id, state, protocol type, group type), for ListGroups. The error
    /// is set when some partition this broker leads is still loading.
    pub fn list(&self, broker: &Arc<Broker>) -> (i16, Vec<ListedGroup>) {
        let mut error = 0;
        let mut out = Vec::new();
        let n = self.offsets_partitions(broker);
        let led: Vec<i32> = (0..n)
            .filter(|p| {
                broker
                    .replication
                    .replica(OFFSETS_TOPIC, *p)
                    .is_some_and(|r| r.leader_id() == broker.config.node_id)
            })
            .collect();
        for p in led {
            match self.with_partition(broker, p, |groups| {
                groups
                    .values()
                    .map(|g| match &g.consumer {
                        Some(c) => ListedGroup {
                            group_id: g.group_id.clone(),
                            state: c.state(),
                            protocol_type: "consumer".to_string(),
                            group_type: "consumer",
                        },
                        None => ListedGroup {
                            group_id: g.group_id.clone(),
                            state: g.state.name(),
                            protocol_type: g.protocol_type.clone().unwrap_or_default(),
                            group_type: "classic",
                        },
                    })
                    .collect::<Vec<_>>()
            }) {
                Ok(mut v) => out.append(&mut v),
                Err(e) => error = e,
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        (error, out)
    }
}

/// Marks partition `p` loading in `epoch` and replays it on a blocking thread.
fn start_load(
    broker: &Arc<Broker>,
    partitions: &mut HashMap<i32, PartitionGroups>,
    p: i32,
    epoch: i32,
) {
    if let Some(mut old) = partitions.remove(&p) {
        for g in old.groups.values_mut() {
            g.close(code(ResponseError::NotCoordinator));
        }
    }
    partitions.insert(
        p,
        PartitionGroups {
            epoch,
            loaded: false,
            groups: HashMap::new(),
            deferred: Vec::new(),
            decided: HashMap::new(),
        },
    );
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let loaded = load_groups(&broker, p);
        let mut partitions = broker.groups.lock();
        let Some(pg) = partitions.get_mut(&p).filter(|pg| pg.epoch == epoch) else {
            return;
        };
        match loaded {
            Ok(groups) => {
                tracing::info!(
                    partition = p,
                    epoch,
                    groups = groups.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "loaded group coordinator state"
                );
                pg.groups = groups;
                for (producer_id, commit, marker_offset) in std::mem::take(&mut pg.deferred) {
                    pg.decided.insert(producer_id, (commit, marker_offset));
                    for g in pg.groups.values_mut() {
                        g.complete_transaction(producer_id, commit, marker_offset);
                    }
                }
                pg.loaded = true;
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "loading groups failed; will retry");
                partitions.remove(&p);
            }
        }
    });
}

/// Replays one `__consumer_offsets` partition into groups.
fn load_groups(
    broker: &Arc<Broker>,
    p: i32,
) -> Result<HashMap<String, ClassicGroup>, ReplicationError> {
    let replica = broker
        .replication
        .replica(OFFSETS_TOPIC, p)
        .ok_or(ReplicationError::UnknownTopicOrPartition)?;
    // Everything in a leader's log is committed once its own term's first entry is: wait
    // for that, so no record written in an earlier term is missed.
    let waited = std::time::Instant::now();
    while replica.high_watermark() < replica.log().log_end_offset() {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err(ReplicationError::NotLeaderOrFollower);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut offsets: HashMap<String, BTreeMap<(String, i32), CommittedOffset>> = HashMap::new();
    let mut metadata: HashMap<String, Option<GroupMetadataValue>> = HashMap::new();
    let mut consumers: HashMap<String, consumer::Replayed> = HashMap::new();
    // Offsets of undecided transactions: producer id -> group -> offsets.
    type GroupOffsets = HashMap<String, BTreeMap<(String, i32), CommittedOffset>>;
    let mut txn_offsets: HashMap<i64, GroupOffsets> = HashMap::new();
    // Which protocol wrote a group's state last (a group changes type when emptied).
    let mut last_classic: HashMap<String, u64> = HashMap::new();
    let mut last_consumer: HashMap<String, u64> = HashMap::new();
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
            let Ok(h) = BatchHeader::parse(&e.data) else {
                continue;
            };
            if h.is_control() {
                // A transaction decided: its offsets become committed, or are dropped.
                if let Some(marker) = batch::parse_end_txn_marker(&e.data) {
                    for (group, pending) in txn_offsets.remove(&h.producer_id).unwrap_or_default() {
                        if !marker.commit {
                            continue;
                        }
                        let slot = offsets.entry(group).or_default();
                        for (key, offset) in pending {
                            if slot
                                .get(&key)
                                .is_none_or(|c| c.record_offset < offset.record_offset)
                            {
                                slot.insert(key, offset);
                            }
                        }
                    }
                }
                continue;
            }
            let transactional = h.is_transactional().then_some(h.producer_id);
            for_each_record(&e.data, |record_offset, key, value| {
                let Ok(key) = RecordKey::decode(key) else {
                    tracing::warn!(partition = p, record_offset, "undecodable record key");
                    return;
                };
                match key {
                    RecordKey::OffsetCommit {
                        group,
                        topic,
                        partition,
                    } => {
                        let slot = match transactional {
                            Some(pid) => txn_offsets
                                .entry(pid)
                                .or_default()
                                .entry(group)
                                .or_default(),
                            None => offsets.entry(group).or_default(),
                        };
                        match value.map(OffsetCommitValue::decode) {
                            None => {
                                slot.remove(&(topic, partition));
                            }
                            Some(Ok(value)) => {
                                slot.insert(
                                    (topic, partition),
                                    CommittedOffset {
                                        value,
                                        record_offset,
                                    },
                                );
                            }
                            Some(Err(e)) => {
                                tracing::warn!(partition = p, record_offset, error = %e, "skipping offset record")
                            }
                        }
                    }
                    RecordKey::GroupMetadata { group } => {
                        last_classic.insert(group.clone(), record_offset);
                        match value.map(GroupMetadataValue::decode) {
                            None => {
                                metadata.insert(group, None);
                            }
                            Some(Ok(v)) => {
                                metadata.insert(group, Some(v));
                            }
                            Some(Err(e)) => {
                                tracing::warn!(partition = p, record_offset, error = %e, "skipping group record")
                            }
                        }
                    }
                    RecordKey::Other(_) => {}
                    other => {
                        let Some(group) = other.group().map(str::to_string) else {
                            return;
                        };
                        last_consumer.insert(group.clone(), record_offset);
                        if !consumers.entry(group).or_default().apply(&other, value) {
                            tracing::warn!(
                                partition = p,
                                record_offset,
                                "skipping consumer group record"
                            );
                        }
                    }
                }
            });
        }
    }
    let now = now_ms();
    let settings = broker.groups.config.groups.clone();
    let mut groups = HashMap::new();
    for (id, value) in metadata {
        if let Some(v) = value {
            groups.insert(
                id.clone(),
                ClassicGroup::from_record(id, &v, settings.clone(), now),
            );
        }
    }
    let topics = crate::handlers::consumer_group_heartbeat::topics_view(broker);
    for (id, replayed) in consumers {
        if last_classic.get(&id) > last_consumer.get(&id) {
            continue;
        }
        let Some(c) = replayed.build(&id, broker.groups.config.consumer.clone(), &topics, now)
        else {
            continue;
        };
        // The consumer records were written last: the group is a consumer group now (an
        // upgraded classic group's members live on in it).
        let g = groups
            .entry(id.clone())
            .or_insert_with(|| ClassicGroup::new(id.clone(), settings.clone(), now));
        g.members.clear();
        g.static_members.clear();
        g.leader_id = None;
        g.state = GroupState::Empty;
        g.consumer = Some(c);
    }
    for (id, committed) in offsets {
        if committed.is_empty() {
            continue;
        }
        groups
            .entry(id.clone())
            .or_insert_with(|| ClassicGroup::new(id, settings.clone(), now))
            .offsets = committed;
    }
    for (producer_id, by_group) in txn_offsets {
        for (id, pending) in by_group {
            groups
                .entry(id.clone())
                .or_insert_with(|| ClassicGroup::new(id, settings.clone(), now))
                .pending_txn_offsets
                .insert(producer_id, pending);
        }
    }
    Ok(groups)
}

/// Calls `f(offset, key, value)` for each record of a stored batch (control batches skipped).
pub(crate) fn for_each_record(data: &[u8], mut f: impl FnMut(u64, &[u8], Option<&[u8]>)) {
    let Ok(h) = BatchHeader::parse(data) else {
        return;
    };
    if h.is_control() || h.records_count == 0 {
        return;
    }
    let Ok(body) = batch::records_body(data, &h, 64 * 1024 * 1024) else {
        return;
    };
    let Ok(records) = batch::parse_records(&body, h.records_count) else {
        return;
    };
    for r in records {
        if let Some(key) = r.key {
            let offset = (h.base_offset + i64::from(r.offset_delta)).max(0) as u64;
            f(offset, key, r.value);
        }
    }
}

/// A `__consumer_offsets` record: key and value (`None`: a tombstone).
pub type Record = (Bytes, Option<Bytes>);

/// Tombstones for a group's committed offsets of `partitions`.
pub fn offset_tombstones<'a>(
    group_id: &str,
    partitions: impl IntoIterator<Item = &'a (String, i32)>,
) -> Vec<Record> {
    partitions
        .into_iter()
        .map(|(topic, partition)| {
            (
                RecordKey::OffsetCommit {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                }
                .encode(),
                None,
            )
        })
        .collect()
}

/// Offset commit records of a group's commits: key and value, in the order given.
pub fn offset_records(
    group_id: &str,
    commits: &[((String, i32), OffsetCommitValue)],
) -> Vec<Record> {
    commits
        .iter()
        .map(|((topic, partition), value)| {
            (
                RecordKey::OffsetCommit {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                }
                .encode(),
                Some(value.encode()),
            )
        })
        .collect()
}

/// The tombstone of a group's metadata record.
pub fn group_tombstone(group_id: &str) -> Record {
    (
        RecordKey::GroupMetadata {
            group: group_id.to_string(),
        }
        .encode(),
        None,
    )
}

/// The answer replication gives a produce.
type ProduceReply =
    tokio::sync::oneshot::Receiver<Result<runnel_replication::ProduceAck, ReplicationError>>;

/// An append to `__consumer_offsets` that has been handed to replication.
#[derive(Debug)]
pub struct Appending {
    rx: Option<ProduceReply>,
    error: i16,
    for_commit: bool,
}

/// Hands records to a `__consumer_offsets` partition's Raft group at once. Called while the
/// coordinator's lock is held, it puts records in the log in the order the groups changed,
/// so replay never disagrees with memory.
pub fn begin_append(broker: &Broker, p: i32, records: Vec<Record>, for_commit: bool) -> Appending {
    begin_append_to(broker, OFFSETS_TOPIC, p, records, for_commit, None)
}

/// Hands records to partition `p` of a coordinator's topic (`__consumer_offsets`,
/// `__transaction_state`). With `transactional` (producer id, epoch) they form a transactional
/// batch of that producer, as TxnOffsetCommit writes them, decided later by a marker.
pub fn begin_append_to(
    broker: &Broker,
    topic: &str,
    p: i32,
    records: Vec<Record>,
    for_commit: bool,
    transactional: Option<(i64, i16)>,
) -> Appending {
    let now = now_ms();
    let records: Vec<NewRecord> = records
        .into_iter()
        .map(|(key, value)| NewRecord {
            timestamp: now,
            key: Some(key),
            value,
            headers: Vec::new(),
        })
        .collect();
    let failed = |error| Appending {
        rx: None,
        error,
        for_commit,
    };
    let options = match transactional {
        Some((producer_id, producer_epoch)) => BatchOptions {
            producer_id,
            producer_epoch,
            transactional: true,
            ..BatchOptions::default()
        },
        None => BatchOptions::default(),
    };
    let Ok(data) = batch::build_batch(&records, &options) else {
        return failed(code(ResponseError::UnknownServerError));
    };
    let begun = match transactional {
        Some(_) => broker
            .replication
            .begin_coordinator_append(topic, p, data)
            .map(Some),
        None => broker.replication.begin_produce(topic, p, vec![data], -1),
    };
    match begun {
        Ok(rx) => Appending {
            rx,
            error: 0,
            for_commit,
        },
        Err(e) => failed(append_error_code(&e, for_commit)),
    }
}

impl Appending {
    /// Waits for the records to commit; the offset of the first.
    pub async fn done(self) -> Result<u64, i16> {
        let Some(rx) = self.rx else {
            return Err(if self.error != 0 {
                self.error
            } else {
                code(ResponseError::UnknownServerError)
            });
        };
        match rx.await {
            Ok(Ok(ack)) => Ok(ack.base_offset),
            Ok(Err(e)) => Err(append_error_code(&e, self.for_commit)),
            Err(_) => Err(code(ResponseError::NotCoordinator)),
        }
    }
}

/// Appends records to a `__consumer_offsets` partition and waits for them to commit. Returns
/// the offset of the first record.
pub async fn append(
    broker: &Broker,
    p: i32,
    records: Vec<Record>,
    for_commit: bool,
) -> Result<u64, i16> {
    begin_append(broker, p, records, for_commit).done().await
}

/// Writes the group metadata records `stores` asks for, one after another, feeding each
/// outcome back to the group.
pub fn run_stores(broker: &Arc<Broker>, group_id: String, stores: Vec<Store>) {
    if stores.is_empty() {
        return;
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        let mut queue = stores;
        while let Some(store) = queue.pop() {
            let key = RecordKey::GroupMetadata {
                group: group_id.clone(),
            }
            .encode();
            let begun = broker.groups.with_groups(&broker, &group_id, |groups, p| {
                groups.get(&group_id).map(|g| {
                    begin_append(&broker, p, vec![(key, Some(g.to_record().encode()))], false)
                })
            });
            let Ok(Some(appending)) = begun else { return };
            let error = match appending.done().await {
                Ok(_) => 0,
                Err(e) => e,
            };
            if error != 0 {
                tracing::warn!(group = group_id, error, "storing group metadata failed");
            }
            let more = broker.groups.with_groups(&broker, &group_id, |groups, _| {
                groups
                    .get_mut(&group_id)
                    .map(|g| g.stored(store, error, now_ms()))
                    .unwrap_or_default()
            });
            queue.extend(more.unwrap_or_default());
        }
    });
}

/// Removes a group that holds nothing (created by a request that then failed).
pub fn forget_if_unused(groups: &mut HashMap<String, ClassicGroup>, group_id: &str) {
    let unused = groups.get(group_id).is_some_and(|g| {
        g.state == GroupState::Empty
            && g.is_empty()
            && g.offsets.is_empty()
            && g.pending_txn_offsets.is_empty()
            && g.generation_id == 0
    });
    if unused {
        groups.remove(group_id);
    }
}

/// Partitions by topic name, as the classic `consumer` protocol carries them.
pub type NamedPartitions = Vec<(String, Vec<i32>)>;

/// A `consumer` protocol member's `ConsumerProtocolSubscription`: (version, topics, owned
/// partitions).
pub fn decode_subscription(metadata: &[u8]) -> (i16, Vec<String>, NamedPartitions) {
    use runnel_protocol::kafka_protocol::messages::ConsumerProtocolSubscription;
    use runnel_protocol::kafka_protocol::protocol::Decodable;
    if metadata.len() < 2 {
        return (0, Vec::new(), Vec::new());
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&metadata[2..]);
    match ConsumerProtocolSubscription::decode(&mut buf, version) {
        Ok(s) => (
            version,
            s.topics.iter().map(|t| t.to_string()).collect(),
            s.owned_partitions
                .iter()
                .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
                .collect(),
        ),
        Err(_) => (version, Vec::new(), Vec::new()),
    }
}

/// The topics a `consumer` protocol member subscribes to (`ConsumerProtocolSubscription`).
pub fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    decode_subscription(metadata).1
}

/// The partitions of a `ConsumerProtocolAssignment`, by topic name.
pub fn decode_assignment(assignment: &[u8]) -> NamedPartitions {
    use runnel_protocol::kafka_protocol::messages::ConsumerProtocolAssignment;
    use runnel_protocol::kafka_protocol::protocol::Decodable;
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([assignment[0], assignment[1]]).clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&assignment[2..]);
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A `ConsumerProtocolAssignment` in `version`, with its version prefix.
pub fn encode_assignment(version: i16, partitions: &[(String, Vec<i32>)]) -> Bytes {
    use bytes::BufMut;
    use runnel_protocol::kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use runnel_protocol::kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
    use runnel_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
    let version = version.clamp(0, 3);
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .map(|(t, ps)| {
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    buf.put_i16(version);
    if a.encode(&mut buf, version).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

/// Partitions by topic name to partitions by topic id (unknown topics dropped), and back.
pub fn by_id(parts: &[(String, Vec<i32>)], topics: &consumer::Topics) -> consumer::Assignment {
    let mut a = consumer::Assignment::new();
    for (t, ps) in parts {
        if let Some(info) = topics.get(t) {
            a.entry(info.id).or_default().extend(ps.iter().copied());
        }
    }
    a.retain(|_, ps| !ps.is_empty());
    a
}

pub fn by_name(a: &consumer::Assignment, topics: &consumer::Topics) -> NamedPartitions {
    topics
        .iter()
        .filter_map(|(name, info)| {
            a.get(&info.id)
                .map(|ps| (name.clone(), ps.iter().copied().collect()))
        })
        .collect()
}

/// The timer: session, rebalance and sync timeouts, loads of partitions this broker comes to
/// lead, unloads of those it lost, and offset expiry.
pub async fn run_timer(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check_every = broker.groups.config.offsets_retention_check_interval_ms as i64;
    let mut next_expiry = now_ms() + check_every;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = interval.tick() => {}
        }
        let now = now_ms();
        track_leadership(&broker);
        let mut work: Vec<(String, Vec<Store>)> = Vec::new();
        let mut consumer_writes: Vec<(i32, String, Appending)> = Vec::new();
        {
            let mut partitions = broker.groups.lock();
            for (p, pg) in partitions.iter_mut().filter(|(_, pg)| pg.loaded) {
                for g in pg.groups.values_mut() {
                    let consumer_changed = g.consumer.as_mut().is_some_and(|c| c.tick(now));
                    let stores = g.tick(now);
                    if !stores.is_empty() {
                        work.push((g.group_id.clone(), stores));
                    }
                    // Only expiries change a consumer group here; the rest is stored by the
                    // request that changed it.
                    if let Some(c) = g.consumer.as_mut().filter(|_| consumer_changed) {
                        let records = c.take_changes(&g.group_id);
                        if !records.is_empty() {
                            let appending = begin_append(&broker, *p, records, false);
                            consumer_writes.push((*p, g.group_id.clone(), appending));
                        }
                    }
                }
            }
        }
        for (group_id, stores) in work {
            run_stores(&broker, group_id, stores);
        }
        for (p, group_id, appending) in consumer_writes {
            let broker = broker.clone();
            tokio::spawn(async move {
                if let Err(code) = appending.done().await {
                    tracing::warn!(partition = p, code, "storing consumer group changes failed");
                    let _ = broker.groups.with_partition(&broker, p, |groups| {
                        if let Some(c) = groups.get_mut(&group_id).and_then(|g| g.consumer.as_mut())
                        {
                            c.forget_persisted();
                        }
                    });
                }
            });
        }
        if now >= next_expiry {
            next_expiry = now + check_every;
            expire_offsets(&broker, now).await;
        }
    }
}

/// Starts loading partitions this broker now leads; drops those it no longer leads.
fn track_leadership(broker: &Arc<Broker>) {
    let n = broker.groups.offsets_partitions(broker);
    let mut partitions = broker.groups.lock();
    for p in 0..n {
        let Some(replica) = broker.replication.replica(OFFSETS_TOPIC, p) else {
            continue;
        };
        let leads = replica.leader_id() == broker.config.node_id;
        let epoch = replica.leader_epoch();
        match partitions.get(&p) {
            Some(pg) if leads && pg.epoch == epoch => {}
            _ if leads => start_load(broker, &mut partitions, p, epoch),
            Some(_) => {
                if let Some(mut old) = partitions.remove(&p) {
                    for g in old.groups.values_mut() {
                        g.close(code(ResponseError::NotCoordinator));
                    }
                }
            }
            None => {}
        }
    }
}

/// `offsets.retention.minutes`: offsets of groups empty that long (and of simple groups,
/// commit by commit) are removed with tombstones; a group left with nothing is deleted.
async fn expire_offsets(broker: &Arc<Broker>, now: i64) {
    let retention = broker.groups.config.offsets_retention_minutes * 60_000;
    let topics = crate::handlers::consumer_group_heartbeat::topics_view(broker);
    // (partition, group, expired offsets, whether the group goes too, its KIP-848 records)
    type Expiry = (i32, String, Vec<(String, i32)>, bool, Vec<Record>);
    let mut work: Vec<Expiry> = Vec::new();
    {
        let mut partitions = broker.groups.lock();
        for (p, pg) in partitions.iter_mut().filter(|(_, pg)| pg.loaded) {
            for g in pg.groups.values_mut() {
                // KIP-496: a live consumer group keeps the offsets of the topics it subscribes
                // to; those of other topics expire a retention period after their commit.
                let subscribed: Option<HashSet<String>> = match &g.consumer {
                    Some(c) if !c.is_empty() => Some(c.subscribed_topics_in(&topics)),
                    Some(_) => None,
                    None if g.state == GroupState::Empty => None,
                    // Kafka expires a live classic group's unsubscribed offsets only while
                    // it is Stable (its subscriptions are settled).
                    None if g.protocol_type.as_deref() == Some("consumer")
                        && g.state == GroupState::Stable =>
                    {
                        Some(g.subscribed_topics())
                    }
                    // Other protocols (Connect, Streams' own): nothing expires while live.
                    None => continue,
                };
                let expired: Vec<(String, i32)> = g
                    .offsets
                    .iter()
                    .filter(|((topic, _), c)| {
                        if c.value.expire_timestamp >= 0 {
                            return now >= c.value.expire_timestamp;
                        }
                        // Consumer groups (KIP-848) and simple groups count from each commit;
                        // classic groups from when they became empty (KIP-211).
                        let since = match &subscribed {
                            Some(topics) if topics.contains(topic) => return false,
                            Some(_) => c.value.commit_timestamp,
                            None if g.consumer.is_none() && g.protocol_type.is_some() => {
                                g.current_state_timestamp
                            }
                            None => c.value.commit_timestamp,
                        };
                        now >= since.saturating_add(retention)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let delete_group =
                    subscribed.is_none() && expired.len() == g.offsets.len() && g.is_empty();
                // An empty group with nothing left to expire is deleted too, as Kafka does.
                if !expired.is_empty() || delete_group {
                    let group_id = g.group_id.clone();
                    let consumer_records = match (&mut g.consumer, delete_group) {
                        (Some(c), true) => c.tombstones(&group_id),
                        _ => Vec::new(),
                    };
                    work.push((*p, group_id, expired, delete_group, consumer_records));
                }
            }
        }
    }
    for (p, group_id, expired, delete_group, consumer_records) in work {
        let mut records = offset_tombstones(&group_id, &expired);
        if delete_group {
            records.push(group_tombstone(&group_id));
            records.extend(consumer_records);
        }
        let Ok(first) = append(broker, p, records, false).await else {
            continue;
        };
        tracing::info!(group = group_id, offsets = expired.len(), "expired offsets");
        let _ = broker.groups.with_partition(broker, p, |groups| {
            if let Some(g) = groups.get_mut(&group_id) {
                // A commit that landed after the tombstone stays.
                for k in &expired {
                    if g.offsets.get(k).is_some_and(|c| c.record_offset < first) {
                        g.offsets.remove(k);
                    }
                }
                if delete_group
                    && g.offsets.is_empty()
                    && g.pending_txn_offsets.is_empty()
                    && g.is_empty()
                {
                    g.close(code(ResponseError::CoordinatorNotAvailable));
                    groups.remove(&group_id);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_matches_kafkas_hash() {
        // "hello".hashCode() == 99162322 in Java.
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        // Negative hashes use Math.abs, not a mask: "polygenelubricants".hashCode() is
        // Integer.MIN_VALUE, which Kafka's Utils.abs maps to 0.
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        let h = java_hash("my-group");
        assert_eq!(partition_for("my-group", 50), h.abs() % 50);
    }
}
