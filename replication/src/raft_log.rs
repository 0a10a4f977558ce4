//! The Raft log of a group is its storage `Log`: `raft::Storage` served straight from the
//! segments (one write per record), hard state and membership in small files beside it.
//!
//! Entry mapping: a normal entry carries one Kafka record batch and is stored as that batch; a
//! new leader's empty entry is stored as a `LeaderChange` control batch, a membership change as
//! a `KRaftVoters` control batch whose value is the encoded change. Clients skip both.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState as RaftHardState, Snapshot};
use raft::{GetEntriesContext, RaftState};
use runnel_storage::batch::{self, control_type, BatchHeader};
use runnel_storage::{Clock, HardState, HardStateFile, Log, StorageError};

use crate::proto::{GroupMembership, PartitionSnapshot};
use crate::ReplicationError;

const MEMBERSHIP_FILE: &str = "raft-membership";
const CONF_CHANGE_V1: u8 = 1;
const CONF_CHANGE_V2: u8 = 2;

/// A replica's state shared between the Raft driver (writer) and request handlers (readers).
#[derive(Debug)]
pub struct Replica {
    pub topic: String,
    pub partition: i32,
    pub topic_id: uuid::Uuid,
    log: RwLock<Log>,
    high_watermark: AtomicU64,
    /// The Raft term this replica last saw as leader, or -1.
    leader_epoch: AtomicI32,
    /// Broker id of the current leader, or -1.
    leader_id: AtomicI32,
    /// KIP-890 verification guards: producer id -> (epoch, guard). Set when the transaction
    /// coordinator confirms a producer may start a transaction here, cleared when a marker
    /// for the producer is proposed; a producer's first transactional batch is appended only
    /// with the guard still in place (Kafka's `VerificationGuard`).
    verification_guards: std::sync::Mutex<std::collections::HashMap<i64, (i16, u64)>>,
    next_guard: AtomicU64,
    /// While this replica leads: the in-sync replicas (broker ids, leader first), the
    /// followers that caught up with the leader within `replica.lag.time.max.ms`.
    isr: std::sync::Mutex<Vec<i32>>,
}

impl Replica {
    pub fn new(topic: String, partition: i32, topic_id: uuid::Uuid, log: Log) -> Replica {
        Replica {
            topic,
            partition,
            topic_id,
            log: RwLock::new(log),
            high_watermark: AtomicU64::new(0),
            leader_epoch: AtomicI32::new(-1),
            leader_id: AtomicI32::new(-1),
            verification_guards: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_guard: AtomicU64::new(1),
            isr: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Read access to the log (fetch, list offsets). Poisoning is impossible to recover from
    /// meaningfully, so a poisoned lock is used as is.
    pub fn log(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a committed `DeleteRecords`: moves the log start offset forward to `offset`
    /// (the leader checked it against its high watermark before proposing it).
    pub(crate) fn delete_records_before(&self, offset: u64) -> Result<u64, StorageError> {
        let mut log = self.log_mut();
        let offset = offset.min(log.log_end_offset());
        log.advance_log_start_offset(offset)?;
        Ok(log.log_start_offset())
    }

    pub(crate) fn log_mut(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Offsets below this are committed and visible to consumers.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub(crate) fn set_high_watermark(&self, hw: u64) {
        self.high_watermark.fetch_max(hw, Ordering::AcqRel);
    }

    /// The last stable offset: below it every transaction is decided, so `read_committed`
    /// consumers read up to here (the high watermark when no transaction is open).
    pub fn last_stable_offset(&self) -> u64 {
        let hw = self.high_watermark();
        self.log().last_stable_offset(hw)
    }

    pub(crate) fn reset_high_watermark(&self, hw: u64) {
        self.high_watermark.store(hw, Ordering::Release);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn leader_id(&self) -> i32 {
        self.leader_id.load(Ordering::Acquire)
    }

    fn guards(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, (i16, u64)>> {
        self.verification_guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The guard of a verified producer: the existing one for this epoch (pipelined batches of
    /// one transaction share it), or a new one.
    pub fn verification_guard(&self, producer_id: i64, epoch: i16) -> u64 {
        let mut guards = self.guards();
        match guards.get(&producer_id) {
            Some(&(e, guard)) if e == epoch => guard,
            _ => {
                let guard = self.next_guard.fetch_add(1, Ordering::Relaxed);
                guards.insert(producer_id, (epoch, guard));
                guard
            }
        }
    }

    pub(crate) fn has_verification_guard(&self, producer_id: i64, epoch: i16, guard: u64) -> bool {
        self.guards().get(&producer_id) == Some(&(epoch, guard))
    }

    pub(crate) fn clear_verification_guard(&self, producer_id: i64) {
        self.guards().remove(&producer_id);
    }

    /// The in-sync replicas while this replica leads (empty otherwise).
    pub fn isr(&self) -> Vec<i32> {
        self.isr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_isr(&self, isr: Vec<i32>) {
        *self.isr.lock().unwrap_or_else(|e| e.into_inner()) = isr;
    }

    pub(crate) fn set_leader(&self, leader_id: i32, epoch: i32) {
        self.leader_epoch.store(epoch, Ordering::Release);
        self.leader_id.store(leader_id, Ordering::Release);
    }
}

fn storage_err(e: StorageError) -> raft::Error {
    match e {
        StorageError::EntryUnavailable { index, first, .. } if index < first => {
            raft::Error::Store(raft::StorageError::Compacted)
        }
        StorageError::EntryUnavailable { .. } => {
            raft::Error::Store(raft::StorageError::Unavailable)
        }
        other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
    }
}

/// `raft::Storage` over a replica's log.
#[derive(Debug)]
pub struct RaftLog {
    replica: Arc<Replica>,
    dir: PathBuf,
    hard_state: HardStateFile,
    conf_state: ConfState,
    /// fsync after every persisted batch of entries (group commit per Ready).
    fsync: bool,
    /// Timestamps of the control batches Raft's own entries are stored as.
    clock: Arc<dyn Clock>,
}

impl RaftLog {
    /// Opens the Raft state beside `replica`'s log. `voters` seeds the membership of a new group.
    pub fn open(
        replica: Arc<Replica>,
        dir: &Path,
        voters: &[u64],
        fsync: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<RaftLog, ReplicationError> {
        let hard_state = HardStateFile::open(dir)?;
        let path = dir.join(MEMBERSHIP_FILE);
        let membership = match std::fs::read(&path) {
            Ok(raw) => GroupMembership::decode(raw.as_slice())
                .map_err(|e| ReplicationError::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = GroupMembership {
                    voters: voters.to_vec(),
                    learners: Vec::new(),
                };
                write_file_atomic(dir, MEMBERSHIP_FILE, &m.encode_to_vec())?;
                m
            }
            Err(e) => return Err(ReplicationError::Io(format!("{}: {e}", path.display()))),
        };
        let conf_state = ConfState {
            voters: membership.voters,
            learners: membership.learners,
            ..Default::default()
        };
        Ok(RaftLog {
            replica,
            dir: dir.to_path_buf(),
            hard_state,
            conf_state,
            fsync,
            clock,
        })
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state.get()
    }

    /// Persists entries from a Ready: drops any conflicting suffix, appends, fsyncs once.
    pub fn append_entries(&mut self, entries: &[Entry]) -> Result<(), ReplicationError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut log = self.replica.log_mut();
        if first.index < log.next_entry_index() {
            log.truncate_entries_from(first.index)?;
        }
        for e in entries {
            if e.index != log.next_entry_index() {
                return Err(ReplicationError::Corrupt(format!(
                    "entry {} does not follow the log's next entry {}",
                    e.index,
                    log.next_entry_index()
                )));
            }
            let epoch = i32::try_from(e.term).map_err(|_| {
                ReplicationError::Corrupt(format!("term {} overflows a leader epoch", e.term))
            })?;
            let data = entry_to_batch(e, self.clock.now_ms())?;
            log.append(&data, epoch)?;
        }
        if self.fsync {
            log.flush()?;
        }
        Ok(())
    }

    /// Stores term and vote. The commit index stored stays the one [`RaftLog::set_commit`]
    /// last stored: only what has been applied, so that entries committed but not yet
    /// applied (a DeleteRecords control batch, say) are applied again after a restart
    /// rather than skipped.
    pub fn set_hard_state(&mut self, hs: &RaftHardState) -> Result<(), ReplicationError> {
        let state = HardState {
            term: hs.term,
            vote: hs.vote,
            commit: self.hard_state.get().commit,
        };
        if state != self.hard_state.get() {
            self.hard_state.store(state)?;
        }
        Ok(())
    }

    /// Stores `commit`, the index of the last entry applied (Raft's `applied`), if higher.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), ReplicationError> {
        let mut state = self.hard_state.get();
        if commit > state.commit {
            state.commit = commit;
            self.hard_state.store(state)?;
        }
        Ok(())
    }

    /// Installs a snapshot from the leader: the log restarts empty at the snapshot's next
    /// offset, numbering entries after the snapshot's index. Returns that offset (the new
    /// high watermark: everything up to the snapshot is committed).
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<u64, ReplicationError> {
        let meta = snapshot.get_metadata();
        let data = PartitionSnapshot::decode(snapshot.data.as_ref())
            .map_err(|e| ReplicationError::Corrupt(format!("snapshot data: {e}")))?;
        let epoch = i32::try_from(meta.term)
            .map_err(|_| ReplicationError::Corrupt(format!("snapshot term {}", meta.term)))?;
        self.replica
            .log_mut()
            .reset(data.next_offset, meta.index + 1, epoch)?;
        self.set_membership(meta.get_conf_state())?;
        let mut state = self.hard_state.get();
        state.commit = state.commit.max(meta.index);
        self.hard_state.store(state)?;
        Ok(data.next_offset)
    }

    pub fn set_membership(&mut self, cs: &ConfState) -> Result<(), ReplicationError> {
        let m = GroupMembership {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
        };
        write_file_atomic(&self.dir, MEMBERSHIP_FILE, &m.encode_to_vec())?;
        self.conf_state = cs.clone();
        Ok(())
    }
}

fn write_file_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), ReplicationError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let io = |e: std::io::Error| ReplicationError::Io(format!("{}: {e}", path.display()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(contents).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// The stored form of a Raft entry.
fn entry_to_batch(e: &Entry, now_ms: i64) -> Result<Bytes, ReplicationError> {
    match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => Ok(batch::build_raft_control_batch(
            control_type::LEADER_CHANGE,
            None,
            now_ms,
        )?),
        EntryType::EntryNormal => Ok(e.data.clone()),
        kind => {
            let mut value = BytesMut::with_capacity(e.data.len() + 1);
            value.put_u8(if kind == EntryType::EntryConfChange {
                CONF_CHANGE_V1
            } else {
                CONF_CHANGE_V2
            });
            value.extend_from_slice(&e.data);
            Ok(batch::build_raft_control_batch(
                control_type::KRAFT_VOTERS,
                Some(value.freeze()),
                now_ms,
            )?)
        }
    }
}

/// The Raft entry a stored batch stands for.
fn batch_to_entry(index: u64, term: u64, data: Bytes) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    let header = BatchHeader::parse(&data).ok();
    if header.is_some_and(|h| h.is_control()) {
        match batch::control_type_of(&data) {
            Some(control_type::KRAFT_VOTERS) => {
                let value = control_value(&data).unwrap_or_default();
                let kind = value.first().copied().unwrap_or(CONF_CHANGE_V2);
                e.set_entry_type(if kind == CONF_CHANGE_V1 {
                    EntryType::EntryConfChange
                } else {
                    EntryType::EntryConfChangeV2
                });
                e.data = value.slice(1.min(value.len())..);
            }
            // Replicated state changes keep their batch: every replica applies it.
            Some(control_type::LOG_START_OFFSET) => e.data = data,
            _ => e.data = Bytes::new(),
        }
        return e;
    }
    e.data = data;
    e
}

fn control_value(data: &[u8]) -> Option<Bytes> {
    let header = BatchHeader::parse(data).ok()?;
    let body = batch::records_body(data, &header, 1 << 20).ok()?;
    let records = batch::parse_records(&body, header.records_count).ok()?;
    records.first()?.value.map(Bytes::copy_from_slice)
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hs = self.hard_state.get();
        let last = self.replica.log().next_entry_index().saturating_sub(1);
        // A commit index past the log (its tail was lost before an fsync in page-cache mode)
        // must not be trusted.
        let hard_state = RaftHardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit.min(last),
            ..Default::default()
        };
        Ok(RaftState {
            hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max = max_size
            .into()
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let log = self.replica.log();
        let entries = log.entries(low, high, max).map_err(storage_err)?;
        Ok(entries
            .into_iter()
            .map(|e| batch_to_entry(e.index, e.epoch.max(0) as u64, e.data))
            .collect())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let log = self.replica.log();
        let first = log.first_entry_index();
        if idx + 1 == first {
            // The entry before the first available one: recorded when it went (retention,
            // a snapshot), else the epoch cache's oldest (0 for an empty log).
            if idx == 0 {
                return Ok(0);
            }
            if let Some(epoch) = log.prev_entry_epoch() {
                return Ok(epoch.max(0) as u64);
            }
            return Ok(log
                .leader_epochs()
                .entries()
                .first()
                .map_or(0, |e| e.epoch.max(0) as u64));
        }
        if idx < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        log.entry_epoch(idx)
            .map(|e| e.max(0) as u64)
            .map_err(storage_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.replica.log().first_entry_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.replica.log().next_entry_index().saturating_sub(1))
    }

    /// A snapshot at the entry before the first one held: its term, the membership and
    /// where the leader's entries start (see [`PartitionSnapshot`]).
    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || {
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ))
        };
        let log = self.replica.log();
        let first = log.first_entry_index();
        let Some(prev_epoch) = log.prev_entry_epoch() else {
            return unavailable();
        };
        let next_offset = if first < log.next_entry_index() {
            log.entry_offset(first).map_err(storage_err)?
        } else {
            log.log_end_offset()
        };
        if log.log_start_offset() < next_offset {
            // Records before the first entry that survive only in compacted segments: a
            // snapshot without them would lose them on the follower.
            tracing::warn!(
                topic = self.replica.topic,
                partition = self.replica.partition,
                follower = to,
                "a follower is behind the compacted part of the log; it cannot catch up until snapshots carry records"
            );
            return unavailable();
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = first - 1;
        meta.term = prev_epoch.max(0) as u64;
        meta.set_conf_state(self.conf_state.clone());
        snapshot.data = PartitionSnapshot {
            next_offset,
            log_start_offset: log.log_start_offset(),
        }
        .encode_to_vec()
        .into();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_storage::{LogConfig, ManualClock};

    fn open(dir: &Path) -> RaftLog {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
        let log = Log::open(dir, LogConfig::default(), clock.clone()).expect("log");
        let replica = Arc::new(Replica::new("t".into(), 0, uuid::Uuid::nil(), log));
        RaftLog::open(replica, dir, &[1, 2, 3], false, clock).expect("raft log")
    }

    /// A term change persists term and vote but not a commit index beyond what was applied:
    /// entries committed but not applied before a crash are applied after the restart.
    #[test]
    fn the_stored_commit_index_never_passes_what_was_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raft_log = open(dir.path());
        let entries: Vec<Entry> = (1..=10)
            .map(|index| Entry {
                index,
                term: 2,
                data: batch::build_raft_control_batch(control_type::LEADER_CHANGE, None, 0)
                    .expect("batch"),
                ..Default::default()
            })
            .collect();
        raft_log.append_entries(&entries).expect("append");
        raft_log.set_commit(4).expect("applied up to 4");
        let hs = RaftHardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..Default::default()
        };
        raft_log.set_hard_state(&hs).expect("hard state");
        drop(raft_log);
        let reopened = open(dir.path());
        let state = raft::Storage::initial_state(&reopened).expect("state");
        assert_eq!((state.hard_state.term, state.hard_state.vote), (3, 2));
        assert_eq!(
            state.hard_state.commit, 4,
            "only the applied index is stored"
        );
    }
}
