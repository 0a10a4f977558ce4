use std::path::PathBuf;

/// Everything the storage crate can fail with. Variants are precise enough for the broker to
/// map each one to a Kafka error code in one place (`CORRUPT_MESSAGE`, `MESSAGE_TOO_LARGE`,
/// `OFFSET_OUT_OF_RANGE`, `KAFKA_STORAGE_ERROR`, ...).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Input ends inside a batch: the header or the body is incomplete.
    #[error("record batch truncated: needs {needed} bytes, {available} available")]
    TruncatedBatch { needed: usize, available: usize },

    /// The batch length field is impossible (below the v2 header size or negative).
    #[error("record batch length {0} is invalid")]
    InvalidBatchLength(i64),

    /// The batch is larger than the configured maximum (`max.message.bytes`).
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    /// Only record format v2 (magic 2) is stored.
    #[error("unsupported record batch magic {0}: only magic 2 is supported")]
    UnsupportedMagic(i8),

    /// CRC-32C over attributes..end does not match the stored checksum.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },

    /// The header is self-inconsistent (record count, offset delta, codec).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),

    /// An append carried no batch at all.
    #[error("append carried no record batch")]
    EmptyAppend,

    /// The record payload could not be decoded (records inside a batch, compression).
    #[error("invalid records: {0}")]
    InvalidRecords(String),

    /// The leader epoch passed to an append is lower than one already in the log.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch { epoch: i32, latest: i32 },

    /// A read or lookup for an offset outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        log_end_offset: u64,
    },

    /// An entry (Raft index) that is not in the log, or whose position was given up by
    /// compaction or retention.
    #[error("entry {index} is unavailable (first available {first}, next {next})")]
    EntryUnavailable { index: u64, first: u64, next: u64 },

    /// An append of entry `index` when the log expects `expected`.
    #[error("entry index {index} does not follow the log's next entry index {expected}")]
    EntryIndexGap { index: u64, expected: u64 },

    /// Data on disk is damaged somewhere other than the unflushed tail. Never silently
    /// repaired: an operator must look.
    #[error("corrupt log {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// A configuration value outside its valid range.
    #[error("invalid log config {name}={value}: {reason}")]
    InvalidConfig {
        name: &'static str,
        value: String,
        reason: &'static str,
    },

    /// An I/O failure, with the file it concerned.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches a path to `std::io::Error`s so every I/O failure says which file it was.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
