//! Producer state (Kafka's `ProducerStateManager`): for each producer id the epoch, the last
//! five batches' sequence ranges and offsets (so retries are recognised as duplicates and gaps
//! as out-of-order), and the producer's transaction on this partition.
//!
//! ## Transactions
//! A transactional producer's first transactional batch on the partition starts its
//! transaction (`current_txn_first_offset`); the end-transaction marker the coordinator appends
//! ends it. Until the high watermark passes its marker, a completed transaction still counts as
//! unstable (Kafka's `unreplicatedTxns`): a new leader may not have the marker yet. The first
//! unstable offset is the smallest first offset of an ongoing or unreplicated transaction; the
//! log's last stable offset is `min(high watermark, first unstable offset)`. An ABORT marker of
//! a transaction with data yields an [`AbortedTxn`] for the log's aborted-transaction index.
//!
//! State is rebuilt from the log on open, starting from the latest snapshot (`<offset>.snapshot`,
//! written at every roll and checkpoint) so startup scans only the tail.
//!
//! ## Snapshot format (big-endian, CRC-32C of everything before it at the end)
//! ```text
//! version: u8 (2; version 1 is still read)   mapEndOffset: u64   producerCount: u32
//! producer: producerId i64, epoch i16, lastTimestamp i64,
//!           [v2: coordinatorEpoch i32, currentTxnFirstOffset i64 (-1 = none)],
//!           batchCount u8, batchCount x (firstSeq i32, lastSeq i32, firstOffset u64,
//!           lastOffset u64, timestamp i64)
//! [v2: unreplicatedCount u32, unreplicatedCount x (producerId i64, firstOffset u64,
//!      lastOffset u64)]   completed transactions whose marker the high watermark had not passed
//! crc: u32
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::{BatchHeader, EndTxnMarker};
use crate::checkpoint::write_atomic;
use crate::error::{IoContext, Result, StorageError};

/// Batches remembered per producer (Kafka's `NUM_BATCHES_TO_RETAIN`).
pub const BATCHES_TO_RETAIN: usize = 5;
/// Coordinator epoch of a producer no end-transaction marker has been seen for.
pub const NO_COORDINATOR_EPOCH: i32 = -1;
const SNAPSHOT_SUFFIX: &str = ".snapshot";
const SNAPSHOTS_TO_KEEP: usize = 2;
const SNAPSHOT_VERSION: u8 = 2;
/// Encoded sizes in a snapshot, to bound counts by the input length.
const BATCH_METADATA_LEN: usize = 32;
const UNREPLICATED_TXN_LEN: usize = 24;

/// One remembered batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: u64,
    pub last_offset: u64,
    pub timestamp: i64,
}

/// What the partition knows of one producer id (Kafka's `ProducerStateEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub batches: VecDeque<BatchMetadata>,
    /// Max timestamp of the producer's last batch (for `producer.id.expiration.ms`).
    pub last_timestamp: i64,
    /// Offset of the first batch of the producer's ongoing transaction on this partition.
    pub current_txn_first_offset: Option<u64>,
    /// Epoch of the coordinator that wrote the producer's last end-transaction marker
    /// ([`NO_COORDINATOR_EPOCH`] before any).
    pub coordinator_epoch: i32,
}

impl ProducerEntry {
    fn new(producer_id: i64, epoch: i16, last_timestamp: i64) -> ProducerEntry {
        ProducerEntry {
            producer_id,
            epoch,
            batches: VecDeque::new(),
            last_timestamp,
            current_txn_first_offset: None,
            coordinator_epoch: NO_COORDINATOR_EPOCH,
        }
    }

    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    /// A newer epoch fences the old one: its sequence history no longer applies.
    fn maybe_bump_epoch(&mut self, epoch: i16) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
    }
}

/// The answer to "may this batch be appended?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    Accept,
    /// A retry of a batch already in the log: answer with its original offsets.
    Duplicate(BatchMetadata),
    /// `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    OutOfOrder {
        expected: i32,
    },
    /// `INVALID_PRODUCER_EPOCH`: a zombie with an older epoch.
    InvalidEpoch {
        current: i16,
    },
}

/// Why an end-transaction marker may not be appended (Kafka's checks in
/// `ProducerAppendInfo.appendEndTxnMarker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerCheck {
    /// `INVALID_PRODUCER_EPOCH`: the marker's producer epoch is older than the producer's.
    InvalidProducerEpoch { current: i16 },
    /// `TRANSACTION_COORDINATOR_FENCED`: the marker comes from an older coordinator than the
    /// producer's last marker did.
    CoordinatorFenced { current: i32 },
}

/// An aborted transaction, as Kafka's transaction index (`.txnindex`) records it and as Fetch
/// returns it to `read_committed` consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// Offset of the transaction's first batch on this partition.
    pub first_offset: u64,
    /// Offset of its ABORT marker.
    pub last_offset: u64,
    /// The last stable offset right after the marker: the first offset of the oldest other
    /// transaction still ongoing then, or `last_offset + 1`.
    pub last_stable_offset: u64,
}

/// A transaction whose marker is in the log but not yet below the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompletedTxn {
    producer_id: i64,
    first_offset: u64,
    last_offset: u64,
}

/// `lastSeq + 1` with Kafka's wrap-around from `i32::MAX` to 0.
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// The last sequence of a batch, wrapping as producers do.
pub fn last_sequence(h: &BatchHeader) -> i32 {
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

/// Producer state of one partition, kept in log order by every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
    /// Offset up to which batches have been applied.
    map_end_offset: u64,
    /// Ongoing transactions: first offset -> producer id (Kafka's `ongoingTxns`).
    ongoing: BTreeMap<u64, i64>,
    /// Completed transactions the high watermark has not passed, by first offset.
    unreplicated: BTreeMap<u64, CompletedTxn>,
}

impl ProducerStateManager {
    pub fn producers(&self) -> &HashMap<i64, ProducerEntry> {
        &self.producers
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn map_end_offset(&self) -> u64 {
        self.map_end_offset
    }

    /// Kafka's `checkSequence`: unknown producers (new, or expired while idle) are accepted
    /// with any sequence, so idleness never causes spurious errors.
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> SequenceCheck {
        let Some(entry) = self.producers.get(&producer_id) else {
            return SequenceCheck::Accept;
        };
        if epoch < entry.epoch {
            return SequenceCheck::InvalidEpoch {
                current: entry.epoch,
            };
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return SequenceCheck::Duplicate(*b);
        }
        match entry.last_seq() {
            None if first_seq == 0 => SequenceCheck::Accept,
            None => SequenceCheck::OutOfOrder { expected: 0 },
            Some(last) if next_seq(last) == first_seq => SequenceCheck::Accept,
            Some(last) => SequenceCheck::OutOfOrder {
                expected: next_seq(last),
            },
        }
    }

    /// Whether the coordinator may append an end-transaction marker for `producer_id`: Kafka's
    /// `checkProducerEpoch` (an older producer epoch is `INVALID_PRODUCER_EPOCH`), then its
    /// coordinator epoch check (`TRANSACTION_COORDINATOR_FENCED`). Unknown producers are
    /// accepted.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), MarkerCheck> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < entry.epoch {
            return Err(MarkerCheck::InvalidProducerEpoch {
                current: entry.epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerCheck::CoordinatorFenced {
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a batch as it lands in the log (every replica does this, in log order).
    /// `marker` is the batch's end-transaction marker when it is one (see
    /// [`crate::batch::parse_end_txn_marker`]). Returns the transaction an ABORT marker
    /// aborted, for the aborted-transaction index. Batches without a producer id (Raft control
    /// batches among them) and other control batches only move the map end offset.
    pub fn update(&mut self, h: &BatchHeader, marker: Option<EndTxnMarker>) -> Option<AbortedTxn> {
        let next = h.next_offset().max(0) as u64;
        self.map_end_offset = self.map_end_offset.max(next);
        if !h.has_producer_id() {
            return None;
        }
        if h.is_control() {
            return marker.and_then(|m| self.append_end_txn_marker(h, m));
        }
        self.append_data_batch(h);
        None
    }

    /// Kafka's `appendDataBatch`: sequence bookkeeping, and a transactional batch starts the
    /// producer's transaction unless one is ongoing.
    fn append_data_batch(&mut self, h: &BatchHeader) {
        let base = h.base_offset.max(0) as u64;
        let meta = BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h),
            first_offset: base,
            last_offset: h.last_offset().max(0) as u64,
            timestamp: h.max_timestamp,
        };
        let entry = self.producers.entry(h.producer_id).or_insert_with(|| {
            ProducerEntry::new(h.producer_id, h.producer_epoch, h.max_timestamp)
        });
        entry.maybe_bump_epoch(h.producer_epoch);
        if h.base_sequence >= 0 {
            entry.batches.push_back(meta);
            while entry.batches.len() > BATCHES_TO_RETAIN {
                entry.batches.pop_front();
            }
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
        if h.is_transactional() && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(base);
            self.ongoing.insert(base, h.producer_id);
        }
    }

    /// Kafka's `appendEndTxnMarker` followed by `completeTxn`: ends the producer's ongoing
    /// transaction, if any, which stays unstable until the high watermark passes the marker.
    fn append_end_txn_marker(
        &mut self,
        h: &BatchHeader,
        marker: EndTxnMarker,
    ) -> Option<AbortedTxn> {
        let offset = h.base_offset.max(0) as u64;
        let entry = self.producers.entry(h.producer_id).or_insert_with(|| {
            ProducerEntry::new(h.producer_id, h.producer_epoch, h.max_timestamp)
        });
        entry.maybe_bump_epoch(h.producer_epoch);
        entry.coordinator_epoch = marker.coordinator_epoch;
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
        // A marker without data on this partition changes neither the LSO nor the index.
        let first_offset = entry.current_txn_first_offset.take()?;
        self.ongoing.remove(&first_offset);
        self.unreplicated.insert(
            first_offset,
            CompletedTxn {
                producer_id: h.producer_id,
                first_offset,
                last_offset: offset,
            },
        );
        if marker.commit {
            return None;
        }
        Some(AbortedTxn {
            producer_id: h.producer_id,
            first_offset,
            last_offset: offset,
            last_stable_offset: self.ongoing.keys().next().copied().unwrap_or(offset + 1),
        })
    }

    /// The smallest first offset of a transaction that is ongoing, or completed with its
    /// marker not yet below the high watermark (Kafka's `firstUnstableOffset`).
    pub fn first_unstable_offset(&self) -> Option<u64> {
        let ongoing = self.ongoing.keys().next().copied();
        let unreplicated = self.unreplicated.keys().next().copied();
        match (ongoing, unreplicated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The high watermark moved: completed transactions whose marker is below it are stable.
    pub fn on_high_watermark(&mut self, high_watermark: u64) {
        self.unreplicated
            .retain(|_, txn| txn.last_offset >= high_watermark);
    }

    /// The log start moved: completed transactions whose marker is gone no longer matter.
    pub(crate) fn on_log_start_offset(&mut self, log_start_offset: u64) {
        self.on_high_watermark(log_start_offset);
    }

    /// Forgets producers idle longer than `producer.id.expiration.ms`, never one with an
    /// ongoing transaction (Kafka's `isProducerExpired`).
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp) <= expiration_ms
        });
        before - self.producers.len()
    }

    /// Forgets everything (Kafka's `truncateFullyAndStartAt`).
    pub(crate) fn reset(&mut self, map_end_offset: u64) {
        self.producers.clear();
        self.ongoing.clear();
        self.unreplicated.clear();
        self.map_end_offset = map_end_offset;
    }

    // --- snapshots -------------------------------------------------------------------------

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            21 + self.producers.len() * 64 + self.unreplicated.len() * UNREPLICATED_TXN_LEN,
        );
        b.push(SNAPSHOT_VERSION);
        b.extend_from_slice(&self.map_end_offset.to_be_bytes());
        b.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[id];
            b.extend_from_slice(&e.producer_id.to_be_bytes());
            b.extend_from_slice(&e.epoch.to_be_bytes());
            b.extend_from_slice(&e.last_timestamp.to_be_bytes());
            b.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
            let txn_first = e.current_txn_first_offset.map_or(-1, |o| o as i64);
            b.extend_from_slice(&txn_first.to_be_bytes());
            b.push(e.batches.len() as u8);
            for m in &e.batches {
                b.extend_from_slice(&m.first_seq.to_be_bytes());
                b.extend_from_slice(&m.last_seq.to_be_bytes());
                b.extend_from_slice(&m.first_offset.to_be_bytes());
                b.extend_from_slice(&m.last_offset.to_be_bytes());
                b.extend_from_slice(&m.timestamp.to_be_bytes());
            }
        }
        b.extend_from_slice(&(self.unreplicated.len() as u32).to_be_bytes());
        for txn in self.unreplicated.values() {
            b.extend_from_slice(&txn.producer_id.to_be_bytes());
            b.extend_from_slice(&txn.first_offset.to_be_bytes());
            b.extend_from_slice(&txn.last_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(path: &Path, raw: &[u8]) -> Result<ProducerStateManager> {
        let bad = || StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: "malformed producer snapshot".into(),
        };
        if raw.len() < 17 {
            return Err(bad());
        }
        let (body, crc) = raw.split_at(raw.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad());
        }
        let version = body[0];
        if version != 1 && version != 2 {
            return Err(bad());
        }
        let mut r = Reader { buf: body, pos: 1 };
        let map_end_offset = r.u64().ok_or_else(bad)?;
        let producer_len = if version == 1 { 19 } else { 31 };
        let count = r.count(producer_len).ok_or_else(bad)?;
        let mut state = ProducerStateManager {
            map_end_offset,
            ..ProducerStateManager::default()
        };
        state.producers.reserve(count);
        for _ in 0..count {
            let entry = Self::decode_producer(&mut r, version).ok_or_else(bad)?;
            if let Some(first) = entry.current_txn_first_offset {
                if state.ongoing.insert(first, entry.producer_id).is_some() {
                    return Err(bad());
                }
            }
            if state.producers.insert(entry.producer_id, entry).is_some() {
                return Err(bad());
            }
        }
        if version >= 2 {
            let count = r.count(UNREPLICATED_TXN_LEN).ok_or_else(bad)?;
            for _ in 0..count {
                let txn = CompletedTxn {
                    producer_id: r.u64().ok_or_else(bad)? as i64,
                    first_offset: r.u64().ok_or_else(bad)?,
                    last_offset: r.u64().ok_or_else(bad)?,
                };
                if txn.first_offset > txn.last_offset
                    || state.unreplicated.insert(txn.first_offset, txn).is_some()
                {
                    return Err(bad());
                }
            }
        }
        if r.pos != body.len() {
            return Err(bad());
        }
        Ok(state)
    }

    /// One producer entry of a version 1 or 2 snapshot; `None` when malformed.
    fn decode_producer(r: &mut Reader<'_>, version: u8) -> Option<ProducerEntry> {
        let producer_id = r.u64()? as i64;
        let epoch = r.u16()? as i16;
        let last_timestamp = r.u64()? as i64;
        let mut entry = ProducerEntry::new(producer_id, epoch, last_timestamp);
        if version >= 2 {
            entry.coordinator_epoch = r.u32()? as i32;
            entry.current_txn_first_offset = match r.u64()? as i64 {
                -1 => None,
                o if o >= 0 => Some(o as u64),
                _ => return None,
            };
        }
        let n = usize::from(r.u8()?);
        if n * BATCH_METADATA_LEN > r.remaining() {
            return None;
        }
        entry.batches.reserve(n);
        for _ in 0..n {
            entry.batches.push_back(BatchMetadata {
                first_seq: r.u32()? as i32,
                last_seq: r.u32()? as i32,
                first_offset: r.u64()?,
                last_offset: r.u64()?,
                timestamp: r.u64()? as i64,
            });
        }
        Some(entry)
    }

    /// Writes `<map_end_offset>.snapshot` and keeps only the newest few.
    pub(crate) fn write_snapshot(&self, dir: &Path) -> Result<()> {
        write_atomic(dir, &snapshot_name(self.map_end_offset), &self.encode())?;
        let snapshots = list_snapshots(dir)?;
        if snapshots.len() > SNAPSHOTS_TO_KEEP {
            for (_, path) in snapshots.iter().take(snapshots.len() - SNAPSHOTS_TO_KEEP) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Deletes every snapshot (the log was emptied).
    pub(crate) fn delete_snapshots(dir: &Path) -> Result<()> {
        for (_, path) in list_snapshots(dir)? {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StorageError::Io { path, source: e })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The newest readable snapshot at or below `max_offset`; snapshots above it (the log was
    /// truncated) are deleted.
    pub(crate) fn load_snapshot(
        dir: &Path,
        max_offset: u64,
    ) -> Result<Option<ProducerStateManager>> {
        let snapshots = list_snapshots(dir)?;
        for (offset, path) in snapshots.iter().rev() {
            if *offset > max_offset {
                let _ = std::fs::remove_file(path);
                continue;
            }
            let raw = std::fs::read(path).at(path)?;
            match ProducerStateManager::decode(path, &raw) {
                Ok(state) => return Ok(Some(state)),
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable producer snapshot"),
            }
        }
        Ok(None)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        s.try_into().ok()
    }
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }
    /// A `u32` count of items of at least `min_len` bytes each, refused when the rest of the
    /// input cannot hold that many.
    fn count(&mut self, min_len: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min_len)? <= self.remaining()).then_some(n)
    }
}

fn snapshot_name(offset: u64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(SNAPSHOT_SUFFIX) {
            if let Ok(offset) = stem.parse::<u64>() {
                out.insert(offset, entry.path());
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch;

    fn header(pid: i64, epoch: i16, base_seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 1000,
            max_timestamp: 1000,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: base_seq,
            records_count: count,
        }
    }

    /// A real transactional data batch of `count` records, at `base_offset`.
    fn txn_batch(
        pid: i64,
        epoch: i16,
        base_seq: i32,
        count: usize,
        base_offset: i64,
    ) -> BatchHeader {
        let records: Vec<_> = (0..count)
            .map(|i| batch::NewRecord {
                timestamp: 1000 + i as i64,
                key: Some(bytes::Bytes::from_static(b"k")),
                value: Some(bytes::Bytes::from_static(b"v")),
                headers: Vec::new(),
            })
            .collect();
        let raw = batch::build_batch(
            &records,
            &batch::BatchOptions {
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: base_seq,
                transactional: true,
                ..Default::default()
            },
        )
        .expect("batch");
        let mut h = BatchHeader::parse(&raw).expect("header");
        h.base_offset = base_offset;
        h
    }

    /// A real end-transaction marker at `offset`, with its parsed value.
    fn marker(
        commit: bool,
        pid: i64,
        epoch: i16,
        coordinator_epoch: i32,
        offset: i64,
    ) -> (BatchHeader, Option<EndTxnMarker>) {
        let raw = batch::build_end_txn_marker(commit, pid, epoch, coordinator_epoch, 2000)
            .expect("marker");
        let mut h = BatchHeader::parse(&raw).expect("header");
        h.base_offset = offset;
        (h, batch::parse_end_txn_marker(&raw))
    }

    fn end(
        s: &mut ProducerStateManager,
        commit: bool,
        pid: i64,
        epoch: i16,
        offset: i64,
    ) -> Option<AbortedTxn> {
        let (h, m) = marker(commit, pid, epoch, 0, offset);
        s.update(&h, m)
    }

    #[test]
    fn an_ongoing_transaction_is_unstable_until_its_marker_is_below_the_high_watermark() {
        let mut s = ProducerStateManager::default();
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(s.update(&txn_batch(1, 0, 0, 3, 10), None), None);
        assert_eq!(s.get(1).and_then(|e| e.current_txn_first_offset), Some(10));
        let _ = s.update(&txn_batch(1, 0, 3, 2, 13), None);
        assert_eq!(
            s.first_unstable_offset(),
            Some(10),
            "the first batch starts it"
        );
        assert_eq!(end(&mut s, true, 1, 0, 15), None, "a commit aborts nothing");
        assert_eq!(s.get(1).and_then(|e| e.current_txn_first_offset), None);
        s.on_high_watermark(15);
        assert_eq!(
            s.first_unstable_offset(),
            Some(10),
            "completed, but the marker at 15 is not below the high watermark yet"
        );
        s.on_high_watermark(16);
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(s.map_end_offset(), 16);
    }

    #[test]
    fn an_abort_marker_yields_the_aborted_transaction_with_its_last_stable_offset() {
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(1, 0, 0, 2, 0), None);
        let _ = s.update(&txn_batch(2, 0, 0, 2, 2), None);
        let _ = s.update(&txn_batch(1, 0, 2, 2, 4), None);
        // Producer 2's transaction is still open: the LSO after 1's abort stops at its start.
        assert_eq!(
            end(&mut s, false, 1, 0, 6),
            Some(AbortedTxn {
                producer_id: 1,
                first_offset: 0,
                last_offset: 6,
                last_stable_offset: 2
            })
        );
        assert_eq!(s.first_unstable_offset(), Some(0));
        s.on_high_watermark(7);
        assert_eq!(
            s.first_unstable_offset(),
            Some(2),
            "producer 2 is still open"
        );
        assert_eq!(
            end(&mut s, false, 2, 0, 7),
            Some(AbortedTxn {
                producer_id: 2,
                first_offset: 2,
                last_offset: 7,
                last_stable_offset: 8
            })
        );
        s.on_high_watermark(8);
        assert_eq!(s.first_unstable_offset(), None);
        // A marker with no data on this partition ends nothing.
        assert_eq!(end(&mut s, false, 1, 0, 8), None);
        assert_eq!(s.first_unstable_offset(), None);
        // The next transactional batch starts a new transaction.
        let _ = s.update(&txn_batch(1, 0, 4, 1, 9), None);
        assert_eq!(s.first_unstable_offset(), Some(9));
    }

    #[test]
    fn markers_from_older_producer_or_coordinator_epochs_are_refused() {
        let mut s = ProducerStateManager::default();
        assert_eq!(
            s.check_marker(5, 0, 0),
            Ok(()),
            "unknown producers are accepted"
        );
        let _ = s.update(&txn_batch(5, 3, 0, 1, 0), None);
        let (h, m) = marker(true, 5, 3, 4, 1);
        let _ = s.update(&h, m);
        assert_eq!(s.get(5).map(|e| e.coordinator_epoch), Some(4));
        assert_eq!(
            s.check_marker(5, 2, 9),
            Err(MarkerCheck::InvalidProducerEpoch { current: 3 })
        );
        assert_eq!(
            s.check_marker(5, 3, 3),
            Err(MarkerCheck::CoordinatorFenced { current: 4 })
        );
        assert_eq!(s.check_marker(5, 3, 4), Ok(()));
        assert_eq!(s.check_marker(5, 4, 5), Ok(()));
    }

    #[test]
    fn a_marker_with_a_newer_epoch_bumps_the_producer_epoch_and_forgets_its_batches() {
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(5, 0, 0, 2, 0), None);
        assert!(
            end(&mut s, false, 5, 1, 2).is_some(),
            "the coordinator aborts with epoch 1"
        );
        let e = s.get(5).expect("entry");
        assert_eq!((e.epoch, e.batches.len()), (1, 0));
        assert_eq!(s.check(5, 1, 0, 0), SequenceCheck::Accept);
        assert_eq!(
            s.check(5, 0, 2, 2),
            SequenceCheck::InvalidEpoch { current: 1 }
        );
    }

    #[test]
    fn expiry_never_drops_a_producer_with_an_ongoing_transaction() {
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(1, 0, 0, 1, 0), None);
        let _ = s.update(&header(2, 0, 0, 1, 1), None);
        let _ = s.update(&txn_batch(3, 0, 0, 1, 2), None);
        let _ = end(&mut s, true, 3, 0, 3);
        assert_eq!(
            s.remove_expired(1_000_000, 10),
            2,
            "idle producers 2 and 3 go"
        );
        assert!(s.get(1).is_some(), "producer 1's transaction is open");
        assert_eq!(s.first_unstable_offset(), Some(0));
    }

    #[test]
    fn raft_control_batches_and_other_control_types_leave_transactions_alone() {
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(1, 0, 0, 1, 0), None);
        let raft = batch::build_raft_control_batch(batch::control_type::LEADER_CHANGE, None, 1)
            .expect("raft");
        let mut h = BatchHeader::parse(&raft).expect("header");
        h.base_offset = 1;
        assert!(h.is_zero_width());
        assert_eq!(s.update(&h, batch::parse_end_txn_marker(&raft)), None);
        // A transactional control batch without a parsable marker.
        let (h, _) = marker(false, 1, 0, 0, 1);
        assert_eq!(s.update(&h, None), None);
        assert_eq!(s.first_unstable_offset(), Some(0));
        assert_eq!(s.get(1).and_then(|e| e.current_txn_first_offset), Some(0));
        assert_eq!(s.map_end_offset(), 2);
    }

    #[test]
    fn snapshots_keep_transactions_and_unreplicated_completions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(1, 0, 0, 2, 0), None);
        let _ = s.update(&txn_batch(2, 0, 0, 2, 2), None);
        let (h, m) = marker(false, 1, 0, 6, 4);
        let _ = s.update(&h, m);
        s.write_snapshot(dir.path()).expect("write");
        let loaded = ProducerStateManager::load_snapshot(dir.path(), u64::MAX)
            .expect("load")
            .expect("some");
        assert_eq!(loaded, s);
        assert_eq!(loaded.first_unstable_offset(), Some(0));
        assert_eq!(loaded.get(1).map(|e| e.coordinator_epoch), Some(6));
        assert_eq!(
            loaded.get(2).and_then(|e| e.current_txn_first_offset),
            Some(2)
        );
        let mut loaded = loaded;
        loaded.on_high_watermark(5);
        assert_eq!(loaded.first_unstable_offset(), Some(2));
    }

    /// A version 1 snapshot, as Runnel wrote them before transactions.
    fn v1_snapshot(map_end: u64, pid: i64, epoch: i16, batches: &[BatchMetadata]) -> Vec<u8> {
        let mut b = vec![1u8];
        b.extend_from_slice(&map_end.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&1000i64.to_be_bytes());
        b.push(batches.len() as u8);
        for m in batches {
            b.extend_from_slice(&m.first_seq.to_be_bytes());
            b.extend_from_slice(&m.last_seq.to_be_bytes());
            b.extend_from_slice(&m.first_offset.to_be_bytes());
            b.extend_from_slice(&m.last_offset.to_be_bytes());
            b.extend_from_slice(&m.timestamp.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn version_1_snapshots_still_decode() {
        let meta = BatchMetadata {
            first_seq: 0,
            last_seq: 2,
            first_offset: 10,
            last_offset: 12,
            timestamp: 1000,
        };
        let raw = v1_snapshot(13, 3, 2, &[meta]);
        let s = ProducerStateManager::decode(Path::new("x"), &raw).expect("decode v1");
        assert_eq!(s.map_end_offset(), 13);
        let e = s.get(3).expect("producer");
        assert_eq!((e.epoch, e.last_timestamp), (2, 1000));
        assert_eq!(e.batches, VecDeque::from(vec![meta]));
        assert_eq!(e.current_txn_first_offset, None);
        assert_eq!(e.coordinator_epoch, NO_COORDINATOR_EPOCH);
        assert_eq!(s.first_unstable_offset(), None);
    }

    #[test]
    fn snapshot_counts_beyond_the_input_are_refused() {
        let mut raw = v1_snapshot(13, 3, 2, &[]);
        raw.truncate(raw.len() - 4);
        raw[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&raw);
        raw.extend_from_slice(&crc.to_be_bytes());
        assert!(ProducerStateManager::decode(Path::new("x"), &raw).is_err());
        let mut s = ProducerStateManager::default();
        let _ = s.update(&txn_batch(1, 0, 0, 2, 0), None);
        let mut raw = s.encode();
        raw.truncate(raw.len() - 4);
        let at = raw.len() - 4; // the unreplicated count
        raw[at..].copy_from_slice(&1000u32.to_be_bytes());
        let crc = crc32c::crc32c(&raw);
        raw.extend_from_slice(&crc.to_be_bytes());
        assert!(ProducerStateManager::decode(Path::new("x"), &raw).is_err());
    }

    #[test]
    fn sequences_follow_kafkas_rules() {
        let mut s = ProducerStateManager::default();
        assert_eq!(
            s.check(7, 0, 42, 45),
            SequenceCheck::Accept,
            "unknown producers are accepted with any sequence"
        );
        let _ = s.update(&header(7, 0, 0, 5, 100), None);
        assert_eq!(s.check(7, 0, 5, 9), SequenceCheck::Accept);
        assert_eq!(
            s.check(7, 0, 6, 9),
            SequenceCheck::OutOfOrder { expected: 5 }
        );
        assert!(matches!(
            s.check(7, 0, 0, 4),
            SequenceCheck::Duplicate(BatchMetadata {
                first_offset: 100,
                last_offset: 104,
                ..
            })
        ));
        let _ = s.update(&header(7, 0, 5, 5, 105), None);
        assert_eq!(
            s.check(7, 1, 10, 10),
            SequenceCheck::OutOfOrder { expected: 0 },
            "a new epoch starts at 0"
        );
        assert_eq!(s.check(7, 1, 0, 3), SequenceCheck::Accept);
        let _ = s.update(&header(7, 1, 0, 4, 110), None);
        assert_eq!(
            s.check(7, 0, 10, 12),
            SequenceCheck::InvalidEpoch { current: 1 },
            "zombies are fenced"
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStateManager::default();
        for i in 0..7 {
            let _ = s.update(&header(1, 0, i * 2, 2, i64::from(i) * 2), None);
        }
        assert_eq!(s.get(1).map(|e| e.batches.len()), Some(BATCHES_TO_RETAIN));
        assert_eq!(
            s.check(1, 0, 0, 1),
            SequenceCheck::OutOfOrder { expected: 14 }
        );
        let mut s = ProducerStateManager::default();
        let _ = s.update(&header(2, 0, i32::MAX - 1, 2, 0), None);
        assert_eq!(
            s.check(2, 0, 0, 0),
            SequenceCheck::Accept,
            "sequence wraps to 0 after i32::MAX"
        );
    }

    #[test]
    fn snapshots_round_trip_and_truncation_drops_newer_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ProducerStateManager::default();
        let _ = s.update(&header(3, 2, 0, 3, 10), None);
        s.write_snapshot(dir.path()).expect("write");
        let _ = s.update(&header(3, 2, 3, 3, 13), None);
        s.write_snapshot(dir.path()).expect("write");
        let loaded = ProducerStateManager::load_snapshot(dir.path(), u64::MAX)
            .expect("load")
            .expect("some");
        assert_eq!(loaded, s);
        let older = ProducerStateManager::load_snapshot(dir.path(), 14)
            .expect("load")
            .expect("older");
        assert_eq!(older.map_end_offset(), 13);
        assert!(ProducerStateManager::load_snapshot(dir.path(), 5)
            .expect("load")
            .is_none());
        assert_eq!(s.remove_expired(1000 + 10, 5), 1);
    }
}
