#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use bytes::Bytes;
use runnel_storage::batch::{self, BatchHeader, BatchOptions, NewRecord};
use runnel_storage::compression::Compression;
use runnel_storage::{Log, LogConfig, ManualClock};

pub const T0: i64 = 1_700_000_000_000;

pub fn record(ts: i64, key: Option<&str>, value: Option<&str>) -> NewRecord {
    NewRecord {
        timestamp: ts,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: Vec::new(),
    }
}

/// A batch of `n` records with values `"{tag}-{i}"` and timestamps `ts + i`.
pub fn batch_of(n: usize, tag: &str, ts: i64) -> Bytes {
    let records: Vec<_> = (0..n)
        .map(|i| {
            record(
                ts + i as i64,
                Some(&format!("k{i}")),
                Some(&format!("{tag}-{i}")),
            )
        })
        .collect();
    batch::build_batch(&records, &BatchOptions::default()).expect("build batch")
}

pub fn keyed_batch(pairs: &[(&str, Option<&str>)], ts: i64, compression: Compression) -> Bytes {
    let records: Vec<_> = pairs.iter().map(|(k, v)| record(ts, Some(k), *v)).collect();
    batch::build_batch(
        &records,
        &BatchOptions {
            compression,
            ..Default::default()
        },
    )
    .expect("build batch")
}

pub fn open(dir: &std::path::Path, config: LogConfig, clock: &ManualClock) -> Log {
    Log::open(dir, config, Arc::new(clock.clone())).expect("open log")
}

/// Every batch in `bytes` as (base offset, last offset, header).
pub fn batches(bytes: &[u8]) -> Vec<BatchHeader> {
    batch::BatchIter::new(bytes).map(|(_, h)| h).collect()
}

/// `(offset, key, value)` of every record in `bytes` (control batches skipped).
/// `(offset, key, value)` of one record.
pub type Rec = (u64, Option<Vec<u8>>, Option<Vec<u8>>);

pub fn records(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    for (at, h) in batch::BatchIter::new(bytes) {
        if h.is_control() {
            continue;
        }
        let raw = &bytes[at..at + h.size()];
        batch::verify_crc(raw, &h).expect("crc of batch read back");
        let body = batch::records_body(raw, &h, 1 << 26).expect("body");
        for r in batch::parse_records(&body, h.records_count).expect("records") {
            out.push((
                h.base_offset as u64 + r.offset_delta as u64,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

pub fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}
