//! Runnel's storage: the segmented, append-only partition log.
//!
//! Every Runnel partition, and every Raft group, lives in a [`Log`]: a directory of segments
//! holding Kafka v2 record batches byte for byte as producers sent them, with Kafka's on-disk
//! layout (`<topic>-<partition>/00000000000000000000.log`, `.index`, `.timeindex`, `.txnindex`).
//! The log is also the Raft log: each batch is one entry, indexed densely by `.entryindex`, with
//! its leader epoch as the Raft term, so replication writes each record once.
//!
//! This crate knows nothing of sockets, Raft or Kafka requests. Time comes from a [`Clock`].

pub mod batch;
mod checkpoint;
pub mod cleaner;
pub mod compression;
mod config;
mod epoch;
mod error;
mod index;
mod log;
pub mod producer_state;
mod segment;
mod txn_index;

pub use checkpoint::{HardState, HardStateFile};
pub use cleaner::{CleanStats, CleanerConfig};
pub use config::{CleanupPolicy, Clock, LogConfig, ManualClock, SystemClock};
pub use epoch::{EpochEntry, LeaderEpochCache, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
pub use error::{Result, StorageError};
pub use log::{
    AppendInfo, Log, LogEntry, RetentionOutcome, TimestampAndOffset, MAX_DECOMPRESSED_BATCH_BYTES,
};
pub use producer_state::{AbortedTxn, MarkerCheck, ProducerStateManager, SequenceCheck};

/// The directory name Kafka gives a partition's log: `<topic>-<partition>`.
pub fn partition_dir_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}
