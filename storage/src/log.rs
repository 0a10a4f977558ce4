//! A partition's log (Kafka's `UnifiedLog`/`LocalLog`): a directory of segments, the log
//! start offset, the leader epoch cache, and the recovery point.
//!
//! ## Durability: what is on disk when
//! - `append` writes each batch to the OS at once (one `writev`): it survives a process crash,
//!   not a power loss.
//! - `flush` fsyncs the active segment: everything appended before it survives a power loss.
//!   Callers group many appends into one `flush` (group commit).
//! - `roll` fsyncs the segment it seals and its indexes before starting a new one.
//! - `truncate_to`, `advance_log_start_offset`, retention and `reset` are durable on return.
//! - `checkpoint` (and `close`) also fsync the indexes and record a recovery point, so the next
//!   open scans nothing before it. Recovery time is bounded by the data written since the last
//!   checkpoint or roll, never by the size of the log.
//!
//! ## Transactions
//! Producer state tracks each transactional producer's ongoing transaction (see
//! [`crate::producer_state`]), which gives the first unstable and last stable offsets. Aborted
//! transactions are indexed per segment in Kafka's `.txnindex` files (see the `txn_index`
//! module), in the segment holding the ABORT marker: they go with their segment (retention,
//! truncation, reset), entries of transactions whose marker is below the log start are never
//! returned, and entries from the producer-state replay start on are regenerated whenever
//! producer state is rebuilt (open, truncation).
//!
//! ## Entries
//! Every batch appended is one *entry*, numbered consecutively from the log's first entry index
//! (1 for a new log, as Raft numbers its entries). The Raft layer uses entry indexes as Raft
//! indexes and the batch's `partitionLeaderEpoch` as the entry's term.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, EndTxnMarker};
use crate::checkpoint::{self, RecoveryPoint, LOG_START_OFFSET_FILE};
use crate::config::{Clock, LogConfig};
use crate::epoch::LeaderEpochCache;
use crate::error::{IoContext, Result, StorageError};
use crate::producer_state::{AbortedTxn, MarkerCheck, ProducerStateManager};
use crate::segment::{self, LogSegment};

/// Decompression bound for timestamp lookups and the cleaner.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 256 * 1024 * 1024;

/// What an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: u64,
    pub last_offset: u64,
    pub first_entry_index: u64,
    pub last_entry_index: u64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: u64,
}

/// One entry (one batch) read back for Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    /// The batch's `partitionLeaderEpoch`: the Raft term it was written in.
    pub epoch: i32,
    pub data: Bytes,
}

/// A record found by timestamp (`ListOffsets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampAndOffset {
    pub timestamp: i64,
    pub offset: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) segments: Vec<LogSegment>,
    pub(crate) log_start_offset: u64,
    pub(crate) epochs: LeaderEpochCache,
    epochs_dirty: bool,
    recovery_point: Option<RecoveryPoint>,
    producer_state: ProducerStateManager,
    producer_snapshot_offset: Option<u64>,
    /// (index, leader epoch) of the last entry before the first one held: what Raft needs to
    /// know of the entries retention, `DeleteRecords` or a snapshot removed.
    prev_entry: Option<(u64, i32)>,
}

fn parse_base_offset(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn assign_recovered(epochs: &mut LeaderEpochCache, dirty: &mut bool, h: &BatchHeader) {
    let base = h.base_offset as u64;
    if epochs
        .entries()
        .last()
        .is_some_and(|e| e.start_offset >= base)
    {
        epochs.truncate_from_end(base);
        *dirty = true;
    }
    match epochs.assign(h.partition_leader_epoch, base) {
        Ok(true) => *dirty = true,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, offset = base, "batch epoch older than an earlier batch's")
        }
    }
}

/// The end-transaction marker of the batch at `pos` of `seg`, read back only for transactional
/// control batches and only up to [`batch::MAX_END_TXN_MARKER_BATCH_BYTES`].
fn end_txn_marker_at(seg: &LogSegment, pos: u64, h: &BatchHeader) -> Result<Option<EndTxnMarker>> {
    if !h.is_control() || !h.is_transactional() || !h.has_producer_id() || h.is_zero_width() {
        return Ok(None);
    }
    let size = h.size();
    if size > batch::MAX_END_TXN_MARKER_BATCH_BYTES || pos + size as u64 > seg.size() {
        tracing::warn!(segment = %seg.log_path().display(), pos, size, "transactional control batch too large (or too long for its segment) to be an end-transaction marker");
        return Ok(None);
    }
    let raw = seg.read_at(pos, size)?;
    Ok(batch::parse_end_txn_marker(&raw))
}

/// Drops Raft-internal zero-width batches from bytes about to be served to a client. They are
/// rare (one per leader change), so the common case returns the bytes untouched.
fn without_zero_width(bytes: Bytes) -> Bytes {
    if !batch::BatchIter::new(&bytes).any(|(_, h)| h.is_zero_width()) {
        return bytes;
    }
    let mut out = BytesMut::with_capacity(bytes.len());
    for (at, h) in batch::BatchIter::new(&bytes) {
        if !h.is_zero_width() {
            out.extend_from_slice(&bytes[at..at + h.size()]);
        }
    }
    out.freeze()
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering the unflushed tail: every batch after the
    /// recovery point is checked, a torn or partial final write is cut off, missing or broken
    /// indexes are rebuilt. Damage anywhere else is an error, never silently repaired.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig, clock: Arc<dyn Clock>) -> Result<Log> {
        config.validate()?;
        let dir = dir.into();
        std::fs::create_dir_all(&dir).at(&dir)?;
        let now = clock.now_ms();
        let mut bases = Vec::new();
        let mut swaps = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".cleaned") {
                std::fs::remove_file(entry.path()).at(&entry.path())?;
            } else if let Some(base) = parse_base_offset(&name, ".log.swap") {
                swaps.push(base);
            } else if let Some(base) = parse_base_offset(&name, segment::LOG_SUFFIX) {
                bases.push(base);
            }
        }
        // A cleaner swap that was renamed into place but not finished: the swap file is
        // complete (it was fsynced before being renamed to .swap); finish it.
        for base in swaps {
            let swap = dir.join(format!(
                "{}.swap",
                segment::file_name(base, segment::LOG_SUFFIX)
            ));
            let target = dir.join(segment::file_name(base, segment::LOG_SUFFIX));
            LogSegment::mark_entry_index_file_unavailable(&dir, base)?;
            std::fs::rename(&swap, &target).at(&target)?;
            for suffix in [segment::INDEX_SUFFIX, segment::TIME_INDEX_SUFFIX] {
                let _ = std::fs::remove_file(dir.join(segment::file_name(base, suffix)));
            }
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        // Index files whose log file is gone are leftovers of an interrupted deletion.
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            for suffix in [
                segment::INDEX_SUFFIX,
                segment::TIME_INDEX_SUFFIX,
                segment::ENTRY_INDEX_SUFFIX,
                segment::TXN_INDEX_SUFFIX,
            ] {
                if let Some(base) = parse_base_offset(&name, suffix) {
                    if bases.binary_search(&base).is_err() {
                        std::fs::remove_file(entry.path()).at(&entry.path())?;
                    }
                }
            }
        }

        let recovery_point = RecoveryPoint::load(&dir)?;
        let mut epochs = LeaderEpochCache::load(&dir)?;
        let mut epochs_dirty = false;
        let stored_log_start = checkpoint::read_offset(&dir, LOG_START_OFFSET_FILE)?;

        let mut segments = Vec::with_capacity(bases.len().max(1));
        if bases.is_empty() {
            let base = stored_log_start.unwrap_or(0);
            segments.push(LogSegment::create(
                &dir,
                base,
                1,
                config.index_interval_bytes,
                now,
            )?);
        } else {
            let mut rebuild = Vec::with_capacity(bases.len());
            for &base in &bases {
                let (seg, needs_rebuild) =
                    LogSegment::open(&dir, base, config.index_interval_bytes, now)?;
                segments.push(seg);
                rebuild.push(needs_rebuild);
            }
            let last = segments.len() - 1;
            let rp_index = recovery_point.and_then(|rp| {
                segments
                    .iter()
                    .position(|s| s.base_offset() == rp.segment_base && rp.position <= s.size())
            });
            for i in 0..segments.len() {
                let from = match rp_index {
                    Some(r) if i == r => Some(recovery_point.map_or(0, |rp| rp.position)),
                    Some(r) if i > r => Some(0),
                    None if i == last => Some(0),
                    _ => None,
                };
                let seg = &mut segments[i];
                let end = match from {
                    Some(from) => seg.recover_from(from, &mut |h| {
                        assign_recovered(&mut epochs, &mut epochs_dirty, h)
                    })?,
                    None if rebuild[i] => {
                        tracing::warn!(segment = %seg.log_path().display(), "rebuilding missing or inconsistent indexes");
                        seg.recover_from(0, &mut |_| {})?
                    }
                    None => continue,
                };
                if let Some(problem) = end.problem {
                    if i == last {
                        tracing::warn!(
                            segment = %seg.log_path().display(),
                            cut_bytes = end.file_len - end.valid_end,
                            %problem,
                            "cutting torn tail of the log"
                        );
                        seg.cut_torn_tail(end.valid_end)?;
                    } else {
                        tracing::error!(segment = %seg.log_path().display(), %problem, "corrupt segment");
                        return Err(StorageError::Corrupt {
                            path: seg.log_path().to_path_buf(),
                            reason: problem,
                        });
                    }
                }
                if i != last && from.is_some() {
                    seg.seal()?;
                }
            }
            Self::resolve_entry_indexes(&mut segments)?;
        }

        let log_end = segments.last().map_or(0, |s| s.next_offset());
        epochs.truncate_from_end(log_end);
        let first_base = segments.first().map_or(0, |s| s.base_offset());
        let log_start_offset = stored_log_start.unwrap_or(0).max(first_base).min(log_end);
        let prev_entry = checkpoint::read_entry(&dir, checkpoint::PREV_ENTRY_FILE)?;
        let mut log = Log {
            dir,
            config,
            clock,
            segments,
            log_start_offset,
            epochs,
            epochs_dirty,
            recovery_point,
            producer_state: ProducerStateManager::default(),
            producer_snapshot_offset: None,
            prev_entry,
        };
        if stored_log_start.is_some_and(|stored| stored != log_start_offset) {
            checkpoint::write_offset(&log.dir, LOG_START_OFFSET_FILE, log_start_offset)?;
        }
        log.epochs.truncate_from_start(log_start_offset);
        log.delete_segments_below_log_start()?;
        match log.txn_index_problem() {
            None => log.load_producer_state()?,
            Some(problem) => {
                tracing::warn!(dir = %log.dir.display(), %problem, "rebuilding the transaction indexes from the log start");
                log.rebuild_producer_state(true)?;
            }
        }
        let active = log.active();
        let clean = recovery_point
            == Some(RecoveryPoint {
                segment_base: active.base_offset(),
                position: active.size(),
            });
        if !clean || log.epochs_dirty {
            log.checkpoint()?;
        }
        Ok(log)
    }

    /// Fills in first entry indexes whose headers were lost, from the neighbouring segments.
    fn resolve_entry_indexes(segments: &mut [LogSegment]) -> Result<()> {
        for i in 0..segments.len() {
            if segments[i].first_entry_index() != u64::MAX {
                continue;
            }
            let first = if i > 0 {
                segments[i - 1].first_entry_index() + segments[i - 1].entry_count() as u64
            } else if segments.len() > 1 && segments[1].first_entry_index() != u64::MAX {
                segments[1]
                    .first_entry_index()
                    .saturating_sub(segments[0].entry_count() as u64)
            } else {
                tracing::error!(
                    "entry index header lost for the only segment; numbering entries from 1"
                );
                1
            };
            segments[i].set_first_entry_index(first)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Applies a new configuration (an `AlterConfigs`); takes effect at the next append,
    /// roll or retention pass.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    pub(crate) fn active(&self) -> &LogSegment {
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut LogSegment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// The offset the next record will get (Kafka's log end offset, LEO).
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset()
    }

    /// The first entry from which every entry's position is known: entries of deleted
    /// segments and of segments the cleaner rewrote are gone.
    pub fn first_entry_index(&self) -> u64 {
        match self.segments.iter().rposition(|s| !s.entries_available()) {
            None => self.segments[0].first_entry_index(),
            Some(i) if i + 1 < self.segments.len() => self.segments[i + 1].first_entry_index(),
            Some(_) => self.next_entry_index(),
        }
    }

    /// The leader epoch of entry `first_entry_index() - 1`, the last one removed from the
    /// front, when it is known (recorded as segments went, or by a snapshot).
    pub fn prev_entry_epoch(&self) -> Option<i32> {
        let first = self.first_entry_index();
        self.prev_entry
            .filter(|(index, _)| index + 1 == first)
            .map(|(_, epoch)| epoch)
    }

    /// Records the epoch of the last entry of the first `count` segments before they go.
    fn remember_prev_entry(&mut self, count: usize) -> Result<()> {
        let Some(next) = self.segments.get(count) else {
            return Ok(());
        };
        let Some(last) = next.first_entry_index().checked_sub(1).filter(|&i| i > 0) else {
            return Ok(());
        };
        let epoch = match self.entry_epoch(last) {
            Ok(e) => Some(e),
            // Cleaned segments lost their entry positions; the epoch of the offset before
            // the next segment is that entry's.
            Err(_) => next
                .base_offset()
                .checked_sub(1)
                .and_then(|o| self.epochs.epoch_for_offset(o)),
        };
        if let Some(epoch) = epoch {
            if self.prev_entry != Some((last, epoch)) {
                checkpoint::write_entry(&self.dir, checkpoint::PREV_ENTRY_FILE, last, epoch)?;
                self.prev_entry = Some((last, epoch));
            }
        }
        Ok(())
    }

    pub fn next_entry_index(&self) -> u64 {
        let a = self.active();
        a.first_entry_index() + a.entry_count() as u64
    }

    pub fn size_in_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base_offset()).collect()
    }

    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// OffsetForLeaderEpoch: the largest epoch `<= requested` and the offset where it ends.
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        self.epochs.end_offset_for(requested, self.log_end_offset())
    }

    /// Appends one or more v2 batches. Each is validated (size, magic, CRC), given the next
    /// offsets, stamped with `leader_epoch`, and becomes one entry. Nothing is written unless
    /// every batch is valid. On an I/O error, the batches before the failing one stay appended.
    pub fn append(&mut self, records: &[u8], leader_epoch: i32) -> Result<AppendInfo> {
        let batches = batch::validate_batches(records, self.config.max_message_bytes)?;
        if batches.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        if let Some(latest) = self.epochs.latest_epoch() {
            if leader_epoch >= 0 && leader_epoch < latest {
                return Err(StorageError::StaleLeaderEpoch {
                    epoch: leader_epoch,
                    latest,
                });
            }
        }
        let now = self.clock.now_ms();
        let mut info: Option<AppendInfo> = None;
        for (pos, header) in batches {
            let raw = &records[pos..pos + header.size()];
            let base = self.log_end_offset();
            // A zero-width control batch ends "before" its base: it takes no offset.
            let last = (base as i64 + i64::from(header.last_offset_delta)).max(0) as u64;
            self.maybe_roll(header.size(), last, header.max_timestamp, now)?;
            let entry_index = self.next_entry_index();
            let mut stamped = header;
            stamped.base_offset = base as i64;
            stamped.partition_leader_epoch = leader_epoch;
            self.active_mut().append(raw, &stamped)?;
            let marker = if header.is_control() {
                batch::parse_end_txn_marker(raw)
            } else {
                None
            };
            if let Some(aborted) = self.producer_state.update(&stamped, marker) {
                self.active_mut().append_aborted_txn(aborted);
            }
            if self.epochs.assign(leader_epoch, base)? {
                self.epochs_dirty = true;
            }
            let this = AppendInfo {
                first_offset: base,
                last_offset: last,
                first_entry_index: entry_index,
                last_entry_index: entry_index,
                max_timestamp: header.max_timestamp,
                offset_of_max_timestamp: base,
            };
            info = Some(match info {
                None => this,
                Some(mut acc) => {
                    acc.last_offset = last;
                    acc.last_entry_index = entry_index;
                    if this.max_timestamp > acc.max_timestamp {
                        acc.max_timestamp = this.max_timestamp;
                        acc.offset_of_max_timestamp = base;
                    }
                    acc
                }
            });
        }
        info.ok_or(StorageError::EmptyAppend)
    }

    fn maybe_roll(
        &mut self,
        size: usize,
        last_offset: u64,
        max_timestamp: i64,
        now: i64,
    ) -> Result<()> {
        let seg = self.active();
        if seg.size() == 0 {
            return Ok(());
        }
        let reason = if seg.size() + size as u64 > self.config.segment_bytes {
            "segment.bytes"
        } else if seg.time_waited_for_roll(now, max_timestamp) >= self.config.segment_ms {
            "segment.ms"
        } else if seg.index_entry_count() >= self.config.max_index_entries() {
            "segment.index.bytes"
        } else if !seg.can_index(last_offset) {
            "relative offset overflow"
        } else {
            return Ok(());
        };
        tracing::debug!(dir = %self.dir.display(), reason, "rolling segment");

        self.roll()
    }

    /// Seals the active segment (fsynced) and starts a new one at the log end offset. A no-op
    /// when the active segment holds no offset yet.
    pub fn roll(&mut self) -> Result<()> {
        // Segments are named by base offset: a segment holding only zero-width batches has no
        // offset of its own yet, and a new one would take the same name.
        if self.active().size() == 0 || self.log_end_offset() == self.active().base_offset() {
            return Ok(());
        }
        let next_offset = self.log_end_offset();
        let next_entry = self.next_entry_index();
        self.active_mut().seal()?;
        let now = self.clock.now_ms();
        let seg = LogSegment::create(
            &self.dir,
            next_offset,
            next_entry,
            self.config.index_interval_bytes,
            now,
        )?;
        self.segments.push(seg);
        self.store_epochs_if_dirty()?;
        self.snapshot_producer_state()?;
        self.store_recovery_point(RecoveryPoint {
            segment_base: next_offset,
            position: 0,
        })
    }

    /// Producer state: sequences and offsets of each producer's last batches, and its ongoing
    /// transaction.
    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producer_state
    }

    /// The first offset of the oldest transaction that is ongoing, or completed with its marker
    /// not yet below the high watermark (Kafka's `firstUnstableOffset`), never below the log
    /// start offset. `None` when there is none.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.producer_state
            .first_unstable_offset()
            .map(|offset| offset.max(self.log_start_offset))
    }

    /// Kafka's last stable offset: `min(high_watermark, first unstable offset)`. Below it every
    /// transaction is decided and replicated; `read_committed` consumers read up to it.
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        self.first_unstable_offset()
            .map_or(high_watermark, |offset| offset.min(high_watermark))
    }

    /// The high watermark moved (Kafka's `onHighWatermarkUpdated`): completed transactions
    /// whose marker is below it stop holding the last stable offset back. Producer state does
    /// not know the high watermark after an open; until this is called, transactions completed
    /// since the last replicated point still count as unstable.
    pub fn on_high_watermark(&mut self, high_watermark: u64) {
        self.producer_state.on_high_watermark(high_watermark);
    }

    /// Kafka's `collectAbortedTransactions`: every aborted transaction with its ABORT marker
    /// at or after `fetch_offset` (and the log start) and its first offset below
    /// `upper_bound_offset`, in marker order, as Fetch returns them to `read_committed`
    /// consumers. Like Kafka, it starts at the segment holding `fetch_offset` and stops at the
    /// first entry whose last stable offset reaches `upper_bound_offset`: no later transaction
    /// can start below it.
    pub fn aborted_transactions(
        &self,
        fetch_offset: u64,
        upper_bound_offset: u64,
    ) -> Vec<AbortedTxn> {
        let from = fetch_offset.max(self.log_start_offset);
        let mut out = Vec::new();
        for seg in &self.segments[self.segment_index_for_offset(from)..] {
            for txn in seg.aborted_txns() {
                if txn.last_offset >= from && txn.first_offset < upper_bound_offset {
                    out.push(*txn);
                }
                if txn.last_stable_offset >= upper_bound_offset {
                    return out;
                }
            }
        }
        out
    }

    /// Whether the transaction coordinator may append an end-transaction marker for
    /// `producer_id` (see [`ProducerStateManager::check_marker`]): an older producer epoch is
    /// `INVALID_PRODUCER_EPOCH`, an older coordinator epoch `TRANSACTION_COORDINATOR_FENCED`.
    pub fn check_end_txn_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), MarkerCheck> {
        self.producer_state
            .check_marker(producer_id, producer_epoch, coordinator_epoch)
    }

    /// Forgets producers idle for longer than `expiration_ms` (`producer.id.expiration.ms`).
    pub fn expire_producers(&mut self, expiration_ms: i64) -> usize {
        let now = self.clock.now_ms();
        self.producer_state.remove_expired(now, expiration_ms)
    }

    /// Writes a producer snapshot if the state moved since the last one, so the next open
    /// replays only what follows (an empty snapshot proves there is nothing to replay).
    fn snapshot_producer_state(&mut self) -> Result<()> {
        let end = self.producer_state.map_end_offset();
        if self.producer_snapshot_offset == Some(end) {
            return Ok(());
        }
        self.producer_state.write_snapshot(&self.dir)?;
        self.producer_snapshot_offset = Some(end);
        Ok(())
    }

    /// Rebuilds producer state: the newest snapshot at or below the log end, then every batch
    /// after it. Aborted-transaction index entries from the replay start on are dropped first
    /// and regenerated by the replay, so none appears twice and none outlives its marker.
    fn load_producer_state(&mut self) -> Result<()> {
        self.rebuild_producer_state(false)
    }

    /// [`Log::load_producer_state`]; with `from_log_start`, every aborted-transaction index is
    /// rebuilt by replaying the whole log (one was damaged). The snapshots go first, so a crash
    /// during the rebuild makes the next open replay the whole log again; a new one is written
    /// once the indexes are durable.
    fn rebuild_producer_state(&mut self, from_log_start: bool) -> Result<()> {
        let end = self.log_end_offset();
        let snapshot = if from_log_start {
            ProducerStateManager::delete_snapshots(&self.dir)?;
            checkpoint::sync_dir(&self.dir)?;
            None
        } else {
            ProducerStateManager::load_snapshot(&self.dir, end)?
        };
        let from = match snapshot {
            Some(s) if s.map_end_offset() >= self.log_start_offset => {
                let from = s.map_end_offset();
                self.producer_snapshot_offset = Some(from);
                self.producer_state = s;
                from
            }
            _ => {
                self.producer_state.reset(self.log_start_offset);
                self.producer_snapshot_offset = None;
                self.log_start_offset
            }
        };
        let cut = if from_log_start { 0 } else { from };
        for seg in &mut self.segments {
            seg.truncate_aborted_txns_from(cut)?;
        }
        let mut state = std::mem::take(&mut self.producer_state);
        let first = self.segment_index_for_offset(from);
        let replayed =
            (first..self.segments.len()).try_for_each(|i| self.replay_segment(i, from, &mut state));
        self.producer_state = state;
        replayed?;
        for seg in &mut self.segments {
            seg.sync_txn_index()?;
        }
        if from_log_start {
            self.snapshot_producer_state()?;
        }
        Ok(())
    }

    /// Applies the batches of segment `i` that end after `from` to `state`, indexing the
    /// transactions their ABORT markers abort in the segment.
    fn replay_segment(
        &mut self,
        i: usize,
        from: u64,
        state: &mut ProducerStateManager,
    ) -> Result<()> {
        let seg = &self.segments[i];
        let mut aborted = Vec::new();
        let mut failure = None;
        if let Some((pos, _)) = seg.locate(from)? {
            seg.walk_headers(pos, |at, h| {
                if h.next_offset() <= from as i64 {
                    return true;
                }
                match end_txn_marker_at(seg, at, h) {
                    Ok(marker) => {
                        aborted.extend(state.update(h, marker));
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for txn in aborted {
            self.segments[i].append_aborted_txn(txn);
        }
        Ok(())
    }

    /// The first reason found not to trust a segment's transaction index.
    fn txn_index_problem(&self) -> Option<String> {
        let last = self.segments.len() - 1;
        self.segments
            .iter()
            .enumerate()
            .find_map(|(i, seg)| seg.txn_index_problem(i == last))
    }

    fn store_epochs_if_dirty(&mut self) -> Result<()> {
        if self.epochs_dirty {
            self.epochs.store(&self.dir)?;
            self.epochs_dirty = false;
        }
        Ok(())
    }

    fn store_recovery_point(&mut self, rp: RecoveryPoint) -> Result<()> {
        rp.store(&self.dir)?;
        self.recovery_point = Some(rp);
        Ok(())
    }

    /// fsyncs everything appended so far (group commit: one call for many appends).
    pub fn flush(&mut self) -> Result<()> {
        self.active_mut().flush()
    }

    /// Makes everything durable, indexes included, and records a recovery point at the log
    /// end so the next open scans nothing. The broker calls this periodically and on shutdown.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.active_mut().sync_all()?;
        self.store_epochs_if_dirty()?;
        self.snapshot_producer_state()?;
        let a = self.active();
        let rp = RecoveryPoint {
            segment_base: a.base_offset(),
            position: a.size(),
        };
        if self.recovery_point != Some(rp) {
            self.store_recovery_point(rp)?;
        }
        Ok(())
    }

    /// Checkpoints and closes the log.
    pub fn close(mut self) -> Result<()> {
        self.checkpoint()
    }

    fn segment_index_for_offset(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1)
    }

    /// Reads whole batches starting with the one containing `offset`, up to `max_bytes` (the
    /// first batch is returned whole even if larger) and only batches that end before
    /// `max_offset` (the high watermark or last stable offset). Bytes are as stored.
    pub fn read(&self, offset: u64, max_bytes: usize, max_offset: u64) -> Result<Bytes> {
        self.read_with(offset, max_bytes, max_offset, true)
    }

    /// [`Log::read`] where `min_one` says whether a first batch larger than `max_bytes` is
    /// returned anyway (Kafka's `minOneMessage`: only for the first partition of a response
    /// that has no data yet).
    pub fn read_with(
        &self,
        offset: u64,
        max_bytes: usize,
        max_offset: u64,
        min_one: bool,
    ) -> Result<Bytes> {
        let log_end = self.log_end_offset();
        if offset < self.log_start_offset || offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: log_end,
            });
        }
        let max_offset = max_offset.min(log_end);
        let mut parts: Vec<Bytes> = Vec::new();
        let mut budget = max_bytes;
        let mut cursor = offset;
        let mut i = self.segment_index_for_offset(offset);
        while i < self.segments.len() && cursor < max_offset {
            let seg = &self.segments[i];
            let Some((pos, _)) = seg.locate_data(cursor)? else {
                i += 1;
                continue;
            };
            let (data, next) =
                seg.read_batches(pos, budget, min_one && parts.is_empty(), max_offset)?;
            let Some(next) = next else { break };
            let reached_segment_end = pos + data.len() as u64 == seg.size();
            budget = budget.saturating_sub(data.len());
            parts.push(data);
            cursor = next;
            if !reached_segment_end || budget == 0 {
                break;
            }
            i += 1;
        }
        let joined = match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in parts {
                    out.extend_from_slice(&p);
                }
                out.freeze()
            }
        };
        Ok(without_zero_width(joined))
    }

    /// The first record with timestamp `>= timestamp` at or after the log start offset
    /// (`ListOffsets` by time), or `None` when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<TimestampAndOffset>> {
        for seg in &self.segments {
            if seg.max_timestamp() < timestamp || seg.size() == 0 {
                continue;
            }
            if seg.next_offset() <= self.log_start_offset
                && seg.base_offset() != self.active().base_offset()
            {
                continue;
            }
            let start = seg.time_lookup_start(timestamp)?;
            let mut candidate = None;
            seg.walk_headers(start, |pos, h| {
                if h.is_zero_width()
                    || h.last_offset() < self.log_start_offset as i64
                    || h.max_timestamp < timestamp
                {
                    return true;
                }
                candidate = Some((pos, *h));
                false
            })?;
            if let Some((pos, h)) = candidate {
                return self
                    .record_at_or_after(seg, pos, &h, |ts| ts >= timestamp)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (`ListOffsets` MAX_TIMESTAMP, KIP-734); the
    /// earliest such record when several share it.
    pub fn max_timestamp_and_offset(&self) -> Result<Option<TimestampAndOffset>> {
        let mut best: Option<&LogSegment> = None;
        for seg in &self.segments {
            if seg.max_timestamp() >= 0
                && best.is_none_or(|b| seg.max_timestamp() > b.max_timestamp())
            {
                best = Some(seg);
            }
        }
        let Some(seg) = best else { return Ok(None) };
        let target = seg.max_timestamp();
        let Some((pos, h)) = seg.locate(seg.offset_of_max_timestamp())? else {
            return Ok(None);
        };
        self.record_at_or_after(seg, pos, &h, |ts| ts >= target)
            .map(Some)
    }

    /// The first record of the batch at `pos` whose timestamp satisfies `matches` and whose
    /// offset is at or after the log start. Falls back to the batch itself if its records
    /// cannot be decoded.
    fn record_at_or_after(
        &self,
        seg: &LogSegment,
        pos: u64,
        h: &BatchHeader,
        matches: impl Fn(i64) -> bool,
    ) -> Result<TimestampAndOffset> {
        let floor = self.log_start_offset.max(h.base_offset as u64);
        if h.is_log_append_time() {
            return Ok(TimestampAndOffset {
                timestamp: h.max_timestamp,
                offset: floor,
            });
        }
        let raw = seg.read_at(pos, h.size())?;
        let records = batch::records_body(&raw, h, MAX_DECOMPRESSED_BATCH_BYTES).and_then(|body| {
            let parsed = batch::parse_records(&body, h.records_count)?;
            Ok(parsed
                .iter()
                .map(|r| {
                    (
                        h.base_offset as u64 + r.offset_delta as u64,
                        h.base_timestamp + r.timestamp_delta,
                    )
                })
                .find(|&(offset, ts)| offset >= floor && matches(ts)))
        });
        match records {
            Ok(Some((offset, timestamp))) => Ok(TimestampAndOffset { timestamp, offset }),
            Ok(None) | Err(_) => Ok(TimestampAndOffset {
                timestamp: h.max_timestamp,
                offset: floor,
            }),
        }
    }

    /// Removes every record at `offset` and after (a batch containing `offset` goes whole).
    /// Durable on return. Raft uses this to drop a diverging uncommitted suffix.
    pub fn truncate_to(&mut self, offset: u64) -> Result<()> {
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset < self.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset(),
            });
        }
        let i = self.segment_index_for_offset(offset);
        let cut = self.segments[i].locate(offset)?;
        let position = cut.map_or(self.segments[i].size(), |(p, _)| p);
        self.truncate_at(i, position)
    }

    /// Removes entry `index` and every later entry.
    pub fn truncate_entries_from(&mut self, index: u64) -> Result<()> {
        if index >= self.next_entry_index() {
            return Ok(());
        }
        let (seg, k) = self.locate_entry(index)?;
        let (span, _) = self.segments[seg].entry_span(k)?;
        self.truncate_at(seg, u64::from(span.position))
    }

    /// Cuts segment `i` at `position` (a batch boundary) and deletes every later segment.
    fn truncate_at(&mut self, i: usize, position: u64) -> Result<()> {
        if !self.segments[i].entries_available() {
            return Err(StorageError::EntryUnavailable {
                index: self.segments[i].first_entry_index(),
                first: self.first_entry_index(),
                next: self.next_entry_index(),
            });
        }
        // Recovery must never start past the cut: move the recovery point back first.
        let base = self.segments[i].base_offset();
        let beyond = match self.recovery_point {
            Some(rp) => {
                rp.segment_base > base || (rp.segment_base == base && rp.position > position)
            }
            None => true,
        };
        if beyond {
            let durable = match self.recovery_point {
                Some(rp) if rp.segment_base > base => position,
                Some(rp) if rp.segment_base == base => rp.position.min(position),
                _ => 0,
            };
            self.store_recovery_point(RecoveryPoint {
                segment_base: base,
                position: durable,
            })?;
        }
        while self.segments.len() > i + 1 {
            if let Some(seg) = self.segments.pop() {
                LogSegment::delete_files(&self.dir, seg.base_offset())?;
            }
        }
        self.segments[i].truncate_to_position(position)?;
        checkpoint::sync_dir(&self.dir)?;
        let end = self.log_end_offset();
        if end < self.log_start_offset {
            // The batch holding the cut began before the log start and went whole.
            checkpoint::write_offset(&self.dir, LOG_START_OFFSET_FILE, end)?;
            self.log_start_offset = end;
        }
        self.epochs.truncate_from_end(end);
        self.epochs.store(&self.dir)?;
        self.epochs_dirty = false;
        self.load_producer_state()
    }

    fn entry_unavailable(&self, index: u64) -> StorageError {
        StorageError::EntryUnavailable {
            index,
            first: self.first_entry_index(),
            next: self.next_entry_index(),
        }
    }

    /// The segment holding entry `index` and its position within the segment.
    fn locate_entry(&self, index: u64) -> Result<(usize, usize)> {
        if index < self.first_entry_index() || index >= self.next_entry_index() {
            return Err(self.entry_unavailable(index));
        }
        let i = self
            .segments
            .partition_point(|s| s.first_entry_index() <= index)
            .saturating_sub(1);
        let seg = &self.segments[i];
        let k = (index - seg.first_entry_index()) as usize;
        if !seg.entries_available() || k >= seg.entry_count() {
            return Err(self.entry_unavailable(index));
        }
        Ok((i, k))
    }

    /// Entries `[lo, hi)`, stopping once `max_bytes` is reached (at least one entry is
    /// returned), as Raft's `Storage::entries` needs.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<LogEntry>> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if hi > self.next_entry_index() {
            return Err(self.entry_unavailable(hi - 1));
        }
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut index = lo;
        while index < hi {
            let (i, k) = self.locate_entry(index)?;
            let seg = &self.segments[i];
            let available = (seg.entry_count() - k).min((hi - index) as usize);
            let (first, _) = seg.entry_span(k)?;
            let start = u64::from(first.position);
            let mut end = start;
            let mut count = 0;
            while count < available {
                let (_, entry_end) = seg.entry_span(k + count)?;
                let size = (entry_end - start) as usize;
                if (total + size > max_bytes) && !(out.is_empty() && count == 0) {
                    break;
                }
                end = entry_end;
                count += 1;
            }
            if count == 0 {
                break;
            }
            let data = seg.read_at(start, (end - start) as usize)?;
            for (j, (at, h)) in batch::BatchIter::new(&data).enumerate().take(count) {
                out.push(LogEntry {
                    index: index + j as u64,
                    epoch: h.partition_leader_epoch,
                    data: data.slice(at..at + h.size()),
                });
            }
            total += data.len();
            index += count as u64;
            if count < available {
                break;
            }
        }
        Ok(out)
    }

    /// The epoch (Raft term) entry `index` was written in, from its batch header: offsets alone
    /// cannot tell, since a zero-width batch shares its offset with the batch after it.
    pub fn entry_epoch(&self, index: u64) -> Result<i32> {
        let (i, k) = self.locate_entry(index)?;
        let seg = &self.segments[i];
        let (span, _) = seg.entry_span(k)?;
        let raw = seg.read_at(
            u64::from(span.position) + batch::PARTITION_LEADER_EPOCH as u64,
            4,
        )?;
        Ok(i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    /// The first offset of entry `index`.
    pub fn entry_offset(&self, index: u64) -> Result<u64> {
        let (i, k) = self.locate_entry(index)?;
        let seg = &self.segments[i];
        Ok(seg.base_offset() + u64::from(seg.entry_span(k)?.0.relative_offset))
    }

    /// Moves the log start offset forward (`DeleteRecords`, or retention). Whole segments
    /// below it are deleted; records below it in the first segment become unreadable.
    /// Durable on return. Returns whether it moved.
    pub fn advance_log_start_offset(&mut self, offset: u64) -> Result<bool> {
        if offset <= self.log_start_offset {
            return Ok(false);
        }
        let log_end = self.log_end_offset();
        if offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: log_end,
            });
        }
        checkpoint::write_offset(&self.dir, LOG_START_OFFSET_FILE, offset)?;
        self.log_start_offset = offset;
        self.epochs.truncate_from_start(offset);
        self.epochs_dirty = true;
        self.producer_state.on_log_start_offset(offset);
        self.delete_segments_below_log_start()?;
        self.store_epochs_if_dirty()?;
        Ok(true)
    }

    fn delete_segments_below_log_start(&mut self) -> Result<()> {
        let count = (0..self.segments.len().saturating_sub(1))
            .take_while(|&i| self.segments[i + 1].base_offset() <= self.log_start_offset)
            .count();
        self.delete_prefix(count).map(|_| ())
    }

    /// Deletes the first `count` segments (never the active one). The new log start is
    /// recorded before any file goes.
    fn delete_prefix(&mut self, count: usize) -> Result<RetentionOutcome> {
        let count = count.min(self.segments.len() - 1);
        if count == 0 {
            return Ok(RetentionOutcome::default());
        }
        self.remember_prev_entry(count)?;
        let new_start = self.segments[count]
            .base_offset()
            .max(self.log_start_offset);
        if new_start != self.log_start_offset {
            checkpoint::write_offset(&self.dir, LOG_START_OFFSET_FILE, new_start)?;
            self.log_start_offset = new_start;
            self.epochs.truncate_from_start(new_start);
            self.epochs_dirty = true;
            self.producer_state.on_log_start_offset(new_start);
        }
        let mut outcome = RetentionOutcome::default();
        for seg in self.segments.drain(..count) {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += seg.size();
            LogSegment::delete_files(&self.dir, seg.base_offset())?;
        }
        checkpoint::sync_dir(&self.dir)?;
        self.store_epochs_if_dirty()?;
        Ok(outcome)
    }

    /// Applies retention: deletes whole sealed segments (never the active one) that lie wholly
    /// below `high_watermark` and are older than `retention.ms`, beyond `retention.bytes`, or
    /// below the log start offset. `-1` retention keeps data forever. Time and size retention
    /// apply only when `cleanup.policy` includes `delete`.
    pub fn delete_old_segments(&mut self, high_watermark: u64) -> Result<RetentionOutcome> {
        let now = self.clock.now_ms();
        let limit = high_watermark.min(self.log_end_offset());
        let n = self.segments.len();
        let candidates = (0..n.saturating_sub(1))
            .take_while(|&i| self.segments[i + 1].base_offset() <= limit)
            .count();
        let mut count = (0..candidates)
            .take_while(|&i| self.segments[i + 1].base_offset() <= self.log_start_offset)
            .count();
        if self.config.cleanup_policy.deletes() {
            if self.config.retention_ms >= 0 {
                let by_time = (0..candidates)
                    .take_while(|&i| {
                        now - self.segments[i].largest_timestamp() > self.config.retention_ms
                    })
                    .count();
                count = count.max(by_time);
            }
            if self.config.retention_bytes >= 0 {
                let mut excess = self.size_in_bytes() as i64 - self.config.retention_bytes;
                let mut by_size = 0;
                for i in 0..candidates {
                    let size = self.segments[i].size() as i64;
                    if excess - size < 0 {
                        break;
                    }
                    excess -= size;
                    by_size += 1;
                }
                count = count.max(by_size);
            }
        }
        self.delete_prefix(count)
    }

    /// Empties the log and restarts it at `next_offset`, numbering entries from
    /// `next_entry_index` (installing a Raft snapshot whose last entry, `next_entry_index - 1`,
    /// had `prev_epoch`). Producer state, transactions and the aborted-transaction indexes go
    /// too (Kafka's `truncateFullyAndStartAt`). Durable on return.
    pub fn reset(
        &mut self,
        next_offset: u64,
        next_entry_index: u64,
        prev_epoch: i32,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        if let Some(prev) = next_entry_index.checked_sub(1).filter(|&i| i > 0) {
            checkpoint::write_entry(&self.dir, checkpoint::PREV_ENTRY_FILE, prev, prev_epoch)?;
            self.prev_entry = Some((prev, prev_epoch));
        }
        checkpoint::write_offset(&self.dir, LOG_START_OFFSET_FILE, next_offset)?;
        for seg in self.segments.drain(..) {
            LogSegment::delete_files(&self.dir, seg.base_offset())?;
        }
        ProducerStateManager::delete_snapshots(&self.dir)?;
        self.producer_state.reset(next_offset);
        self.producer_snapshot_offset = None;
        self.segments.push(LogSegment::create(
            &self.dir,
            next_offset,
            next_entry_index,
            self.config.index_interval_bytes,
            now,
        )?);
        self.log_start_offset = next_offset;
        self.epochs = LeaderEpochCache::default();
        self.epochs.store(&self.dir)?;
        self.epochs_dirty = false;
        self.store_recovery_point(RecoveryPoint {
            segment_base: next_offset,
            position: 0,
        })
    }

    /// Deletes the log's directory and everything in it (`DeleteTopics`).
    pub fn delete(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).at(&self.dir)
    }
}
