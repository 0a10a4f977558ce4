//! Per-log configuration, named and defaulted as Kafka's topic configs are.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::error::{Result, StorageError};

/// `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    pub fn parse(value: &str) -> Result<CleanupPolicy> {
        let mut parts: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        parts.sort_unstable();
        parts.dedup();
        match parts.as_slice() {
            ["delete"] => Ok(CleanupPolicy::Delete),
            ["compact"] => Ok(CleanupPolicy::Compact),
            ["compact", "delete"] => Ok(CleanupPolicy::CompactDelete),
            _ => Err(StorageError::InvalidConfig {
                name: "cleanup.policy",
                value: value.to_string(),
                reason: "expected delete, compact, or compact,delete",
            }),
        }
    }

    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        })
    }
}

/// The topic-level settings the log obeys. Defaults are Kafka's.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this old.
    pub segment_ms: i64,
    /// `segment.index.bytes`: roll when an index of the active segment reaches this size.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: spacing of sparse offset and time index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`; `-1` keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes`; `-1` means no size limit.
    pub retention_bytes: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long tombstones outlive the cleaning that first kept them.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are never compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.message.bytes`: the largest batch the log accepts.
    pub max_message_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_message_bytes: 1024 * 1024 + 12,
        }
    }
}

impl LogConfig {
    /// Checks ranges Kafka enforces (positions in a segment and its indexes are 32-bit).
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason| {
            Err(StorageError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if self.segment_bytes < 14 || self.segment_bytes > i32::MAX as u64 {
            return bad(
                "segment.bytes",
                self.segment_bytes.to_string(),
                "must be in [14, 2147483647]",
            );
        }
        if self.segment_ms < 1 {
            return bad(
                "segment.ms",
                self.segment_ms.to_string(),
                "must be at least 1",
            );
        }
        if self.segment_index_bytes < 12 || self.segment_index_bytes > i32::MAX as u64 {
            return bad(
                "segment.index.bytes",
                self.segment_index_bytes.to_string(),
                "must be in [12, 2147483647]",
            );
        }
        if self.retention_ms < -1 {
            return bad(
                "retention.ms",
                self.retention_ms.to_string(),
                "must be -1 or at least 0",
            );
        }
        if self.delete_retention_ms < 0 {
            return bad(
                "delete.retention.ms",
                self.delete_retention_ms.to_string(),
                "must be at least 0",
            );
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return bad(
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio.to_string(),
                "must be in [0, 1]",
            );
        }
        if self.max_message_bytes < crate::batch::HEADER_SIZE {
            return bad(
                "max.message.bytes",
                self.max_message_bytes.to_string(),
                "must hold a batch header",
            );
        }
        Ok(())
    }

    /// Most entries any one index of the active segment may hold before the segment rolls.
    pub(crate) fn max_index_entries(&self) -> usize {
        (self.segment_index_bytes / 12) as usize
    }
}

/// Wall-clock milliseconds, injectable so tests and simulations drive time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policy_parses_kafka_spellings() {
        assert_eq!(
            CleanupPolicy::parse("delete").expect("ok"),
            CleanupPolicy::Delete
        );
        assert_eq!(
            CleanupPolicy::parse("compact").expect("ok"),
            CleanupPolicy::Compact
        );
        assert_eq!(
            CleanupPolicy::parse("delete,compact").expect("ok"),
            CleanupPolicy::CompactDelete
        );
        assert_eq!(
            CleanupPolicy::parse("compact, delete").expect("ok"),
            CleanupPolicy::CompactDelete
        );
        assert!(CleanupPolicy::parse("shred").is_err());
        assert!(CleanupPolicy::parse("").is_err());
    }

    #[test]
    fn defaults_are_kafkas_and_valid() {
        let c = LogConfig::default();
        c.validate().expect("valid");
        assert_eq!(c.segment_bytes, 1_073_741_824);
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.max_message_bytes, 1_048_588);
        let bad = LogConfig {
            segment_bytes: 1 << 40,
            ..LogConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
