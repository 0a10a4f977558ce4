//! The leader epoch cache (Kafka's `LeaderEpochFileCache`): for each leader epoch (Raft term)
//! the first offset written in it. It answers OffsetForLeaderEpoch, lets followers find where
//! their log diverges, and gives the Raft term of any entry without reading the log.
//! Persisted in Kafka's `leader-epoch-checkpoint` text format.

use std::path::Path;

use crate::checkpoint::{write_atomic, LEADER_EPOCH_FILE};
use crate::error::{Result, StorageError};

/// Kafka's "no epoch" / "no offset" answers.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `offset`, if it is newer than the latest epoch.
    pub fn assign(&mut self, epoch: i32, offset: u64) -> Result<bool> {
        if epoch < 0 {
            return Ok(false);
        }
        match self.entries.last() {
            Some(last) if last.epoch == epoch => Ok(false),
            Some(last) if last.epoch > epoch => Err(StorageError::StaleLeaderEpoch {
                epoch,
                latest: last.epoch,
            }),
            _ => {
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset: offset,
                });
                Ok(true)
            }
        }
    }

    /// The epoch of the record at `offset`, if any epoch covers it.
    pub fn epoch_for_offset(&self, offset: u64) -> Option<i32> {
        let i = self.entries.partition_point(|e| e.start_offset <= offset);
        i.checked_sub(1).map(|i| self.entries[i].epoch)
    }

    /// Kafka's `endOffsetFor`: the largest epoch `<= requested` and the offset where the next
    /// epoch starts (the log end for the latest epoch).
    pub fn end_offset_for(&self, requested: i32, log_end_offset: u64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end_offset as i64);
        }
        let higher = self.entries.iter().find(|e| e.epoch > requested);
        let Some(higher) = higher else {
            return (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        };
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            None => (requested, higher.start_offset as i64),
            Some(floor) => (floor.epoch, higher.start_offset as i64),
        }
    }

    /// Drops epochs starting at or after `end_offset` (the log was truncated to it).
    pub fn truncate_from_end(&mut self, end_offset: u64) {
        self.entries.retain(|e| e.start_offset < end_offset);
    }

    /// Drops epochs wholly before `start_offset`, keeping the one covering it (moved up to
    /// `start_offset`), as Kafka does when the log start advances.
    pub fn truncate_from_start(&mut self, start_offset: u64) {
        let covering = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if covering > 0 {
            self.entries.drain(..covering - 1);
            self.entries[0].start_offset = self.entries[0].start_offset.max(start_offset);
        }
    }

    pub fn store(&self, dir: &Path) -> Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        write_atomic(dir, LEADER_EPOCH_FILE, text.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<LeaderEpochCache> {
        let path = dir.join(LEADER_EPOCH_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaderEpochCache::default())
            }
            Err(e) => return Err(StorageError::Io { path, source: e }),
        };
        let corrupt = |reason: &str| StorageError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(corrupt("unknown leader epoch checkpoint version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| corrupt("missing count"))?;
        let mut cache = LeaderEpochCache::default();
        for _ in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| corrupt("fewer entries than its count"))?;
            let mut parts = line.split_whitespace();
            let epoch = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| corrupt("bad epoch"))?;
            let offset = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| corrupt("bad offset"))?;
            if cache.assign(epoch, offset).is_err() {
                return Err(corrupt("epochs out of order"));
            }
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, u64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for &(e, o) in pairs {
            c.assign(e, o).expect("assign");
        }
        c
    }

    #[test]
    fn end_offset_for_matches_kafka() {
        let c = cache(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(
            c.end_offset_for(6, 40),
            (6, 40),
            "latest epoch ends at the log end"
        );
        assert_eq!(c.end_offset_for(3, 40), (3, 25));
        assert_eq!(
            c.end_offset_for(4, 40),
            (3, 25),
            "unknown epoch answers the floor epoch"
        );
        assert_eq!(
            c.end_offset_for(0, 40),
            (0, 0),
            "older than all: requested epoch, first start"
        );
        assert_eq!(
            c.end_offset_for(7, 40),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
        assert_eq!(
            c.end_offset_for(UNDEFINED_EPOCH, 40),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
    }

    #[test]
    fn epochs_never_go_backwards() {
        let mut c = cache(&[(2, 0)]);
        assert!(matches!(
            c.assign(1, 5),
            Err(StorageError::StaleLeaderEpoch {
                epoch: 1,
                latest: 2
            })
        ));
        assert!(!c.assign(2, 5).expect("same"));
    }

    #[test]
    fn truncation_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(c.epoch_for_offset(24), Some(3));
        c.truncate_from_end(25);
        assert_eq!(c.latest_epoch(), Some(3));
        c.truncate_from_start(12);
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 12
            }]
        );
    }

    #[test]
    fn checkpoint_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cache(&[(1, 0), (3, 10)]);
        c.store(dir.path()).expect("store");
        assert_eq!(LeaderEpochCache::load(dir.path()).expect("load"), c);
        let raw = std::fs::read_to_string(dir.path().join(LEADER_EPOCH_FILE)).expect("read");
        assert_eq!(raw, "0\n2\n1 0\n3 10\n", "Kafka's checkpoint format");
    }
}
