//! Idempotent producer state (Kafka's `ProducerStateManager`): for each producer id the epoch
//! and the last five batches' sequence ranges and offsets, so retries are recognised as
//! duplicates and gaps as out-of-order. Rebuilt from the log on open, starting from the latest
//! snapshot (`<offset>.snapshot`, written at every roll and checkpoint) so startup scans only
//! the tail.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::BatchHeader;
use crate::checkpoint::write_atomic;
use crate::error::{IoContext, Result, StorageError};

/// Batches remembered per producer (Kafka's `NUM_BATCHES_TO_RETAIN`).
pub const BATCHES_TO_RETAIN: usize = 5;
const SNAPSHOT_SUFFIX: &str = ".snapshot";
const SNAPSHOTS_TO_KEEP: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: u64,
    pub last_offset: u64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub batches: VecDeque<BatchMetadata>,
    /// Max timestamp of the producer's last batch (for `producer.id.expiration.ms`).
    pub last_timestamp: i64,
}

impl ProducerEntry {
    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
    /// Offset up to which batches have been applied.
    map_end_offset: u64,
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

    /// Records a batch as it lands in the log (every replica does this, in log order).
    pub fn update(&mut self, h: &BatchHeader) {
        let next = h.next_offset().max(0) as u64;
        self.map_end_offset = self.map_end_offset.max(next);
        if !h.has_producer_id() || h.is_control() {
            return;
        }
        let meta = BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h),
            first_offset: h.base_offset as u64,
            last_offset: h.last_offset().max(0) as u64,
            timestamp: h.max_timestamp,
        };
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: h.max_timestamp,
            });
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if h.base_sequence >= 0 {
            entry.batches.push_back(meta);
            while entry.batches.len() > BATCHES_TO_RETAIN {
                entry.batches.pop_front();
            }
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
    }

    /// Forgets producers idle longer than `producer.id.expiration.ms`.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) <= expiration_ms);
        before - self.producers.len()
    }

    pub(crate) fn reset(&mut self, map_end_offset: u64) {
        self.producers.clear();
        self.map_end_offset = map_end_offset;
    }

    // --- snapshots -------------------------------------------------------------------------

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.producers.len() * 64);
        b.push(1u8);
        b.extend_from_slice(&self.map_end_offset.to_be_bytes());
        b.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[id];
            b.extend_from_slice(&e.producer_id.to_be_bytes());
            b.extend_from_slice(&e.epoch.to_be_bytes());
            b.extend_from_slice(&e.last_timestamp.to_be_bytes());
            b.push(e.batches.len() as u8);
            for m in &e.batches {
                b.extend_from_slice(&m.first_seq.to_be_bytes());
                b.extend_from_slice(&m.last_seq.to_be_bytes());
                b.extend_from_slice(&m.first_offset.to_be_bytes());
                b.extend_from_slice(&m.last_offset.to_be_bytes());
                b.extend_from_slice(&m.timestamp.to_be_bytes());
            }
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
        if crc32c::crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]])
            || body[0] != 1
        {
            return Err(bad());
        }
        let mut r = Reader { buf: body, pos: 1 };
        let map_end_offset = r.u64().ok_or_else(bad)?;
        let count = r.u32().ok_or_else(bad)? as usize;
        let mut producers = HashMap::with_capacity(count.min(body.len() / 19));
        for _ in 0..count {
            let producer_id = r.u64().ok_or_else(bad)? as i64;
            let epoch = r.u16().ok_or_else(bad)? as i16;
            let last_timestamp = r.u64().ok_or_else(bad)? as i64;
            let n = r.u8().ok_or_else(bad)? as usize;
            let mut batches = VecDeque::with_capacity(n.min(BATCHES_TO_RETAIN));
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_seq: r.u32().ok_or_else(bad)? as i32,
                    last_seq: r.u32().ok_or_else(bad)? as i32,
                    first_offset: r.u64().ok_or_else(bad)?,
                    last_offset: r.u64().ok_or_else(bad)?,
                    timestamp: r.u64().ok_or_else(bad)? as i64,
                });
            }
            producers.insert(
                producer_id,
                ProducerEntry {
                    producer_id,
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        Ok(ProducerStateManager {
            producers,
            map_end_offset,
        })
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
        let s = self.buf.get(self.pos..self.pos + N)?;
        self.pos += N;
        s.try_into().ok()
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

    #[test]
    fn sequences_follow_kafkas_rules() {
        let mut s = ProducerStateManager::default();
        assert_eq!(
            s.check(7, 0, 42, 45),
            SequenceCheck::Accept,
            "unknown producers are accepted with any sequence"
        );
        s.update(&header(7, 0, 0, 5, 100));
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
        s.update(&header(7, 0, 5, 5, 105));
        assert_eq!(
            s.check(7, 1, 10, 10),
            SequenceCheck::OutOfOrder { expected: 0 },
            "a new epoch starts at 0"
        );
        assert_eq!(s.check(7, 1, 0, 3), SequenceCheck::Accept);
        s.update(&header(7, 1, 0, 4, 110));
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
            s.update(&header(1, 0, i * 2, 2, i64::from(i) * 2));
        }
        assert_eq!(s.get(1).map(|e| e.batches.len()), Some(BATCHES_TO_RETAIN));
        assert_eq!(
            s.check(1, 0, 0, 1),
            SequenceCheck::OutOfOrder { expected: 14 }
        );
        let mut s = ProducerStateManager::default();
        s.update(&header(2, 0, i32::MAX - 1, 2, 0));
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
        s.update(&header(3, 2, 0, 3, 10));
        s.write_snapshot(dir.path()).expect("write");
        s.update(&header(3, 2, 3, 3, 13));
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
