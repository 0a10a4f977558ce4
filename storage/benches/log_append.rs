//! Storage benchmark: append throughput of `Log` next to the raw sequential write speed of the
//! same disk measured in the same run, and recovery time of a large log.
//!
//! `cargo bench -p runnel-storage --bench log_append` (sizes: `RUNNEL_BENCH_MB`, default
//! 1024 MiB per no-fsync run; `RUNNEL_BENCH_FSYNC_OPS`, default 2000; `RUNNEL_BENCH_RECOVERY_MB`,
//! default 2048; data under `RUNNEL_BENCH_DIR`, default `target/bench-data`).
//! It prints numbers; it does not pass or fail.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_storage::batch::{self, BatchOptions, NewRecord};
use runnel_storage::{Log, LogConfig, SystemClock};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid v2 batch of exactly `size` bytes (one record).
fn batch_of_size(size: usize) -> Bytes {
    let mut value_len = size.saturating_sub(batch::HEADER_SIZE + 8);
    loop {
        let record = NewRecord {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![b'x'; value_len])),
            headers: Vec::new(),
        };
        let b = batch::build_batch(&[record], &BatchOptions::default()).expect("batch");
        if b.len() == size || value_len == 0 {
            return b;
        }
        value_len = if b.len() > size {
            value_len - (b.len() - size)
        } else {
            value_len + (size - b.len())
        };
    }
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

struct Rate {
    bytes: u64,
    ops: u64,
    elapsed: Duration,
}

impl Rate {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn raw_write(dir: &Path, chunk: usize, ops: u64, fsync_each: bool) -> Rate {
    let path = dir.join("raw.bin");
    let mut f = File::create(&path).expect("create raw file");
    let buf = vec![b'x'; chunk];
    let start = Instant::now();
    for _ in 0..ops {
        f.write_all(&buf).expect("raw write");
        if fsync_each {
            f.sync_data().expect("fsync");
        }
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Rate {
        bytes: chunk as u64 * ops,
        ops,
        elapsed,
    }
}

fn log_append(dir: &Path, chunk: usize, ops: u64, fsync_each: bool) -> Rate {
    let mut log = Log::open(dir, LogConfig::default(), Arc::new(SystemClock)).expect("open log");
    let b = batch_of_size(chunk);
    let start = Instant::now();
    for _ in 0..ops {
        log.append(&b, 1).expect("append");
        if fsync_each {
            log.flush().expect("flush");
        }
    }
    let elapsed = start.elapsed();
    log.close().expect("close");
    Rate {
        bytes: chunk as u64 * ops,
        ops,
        elapsed,
    }
}

fn drop_caches_hint() {
    // Writes of earlier runs must not be in flight while the next run is timed.
    let _ = std::process::Command::new("sync").status();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let root = std::env::var("RUNNEL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/bench-data"));
    std::fs::create_dir_all(&root).expect("bench dir");
    let mb = env_u64("RUNNEL_BENCH_MB", 1024);
    let fsync_ops = env_u64("RUNNEL_BENCH_FSYNC_OPS", 2000);
    let recovery_mb = env_u64("RUNNEL_BENCH_RECOVERY_MB", 2048);
    println!("# runnel-storage append benchmark");
    println!(
        "data dir: {} ({} cores)",
        root.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| batch | mode | raw file writes MB/s | Log::append MB/s | Log::append batches/s | append / raw |");
    println!("|---|---|---|---|---|---|");
    for chunk in [1024usize, 16 * 1024] {
        let ops = mb * 1024 * 1024 / chunk as u64;
        // Best of three, alternating, so page-cache writeback of one run hurts neither side.
        let mut raw = Rate {
            bytes: 0,
            ops: 0,
            elapsed: Duration::MAX,
        };
        let mut log = Rate {
            bytes: 0,
            ops: 0,
            elapsed: Duration::MAX,
        };
        for _ in 0..3 {
            drop_caches_hint();
            let r = raw_write(&fresh_dir(&root, "raw"), chunk, ops, false);
            if r.elapsed < raw.elapsed {
                raw = r;
            }
            drop_caches_hint();
            let l = log_append(&fresh_dir(&root, "log"), chunk, ops, false);
            if l.elapsed < log.elapsed {
                log = l;
            }
        }
        println!(
            "| {} KiB | no fsync ({} MiB, best of 3) | {:.0} | {:.0} | {:.0} | {:.0}% |",
            chunk / 1024,
            mb,
            raw.mb_s(),
            log.mb_s(),
            log.ops_s(),
            100.0 * log.mb_s() / raw.mb_s()
        );
        drop_caches_hint();
        let raw = raw_write(&fresh_dir(&root, "raw"), chunk, fsync_ops, true);
        let log = log_append(&fresh_dir(&root, "log"), chunk, fsync_ops, true);
        println!(
            "| {} KiB | fsync every append ({} ops) | {:.1} ({:.0} ops/s) | {:.1} | {:.0} | {:.0}% |",
            chunk / 1024,
            fsync_ops,
            raw.mb_s(),
            raw.ops_s(),
            log.mb_s(),
            log.ops_s(),
            100.0 * log.mb_s() / raw.mb_s()
        );
    }
    let _ = std::fs::remove_dir_all(root.join("raw"));
    let _ = std::fs::remove_dir_all(root.join("log"));

    // Recovery: a cleanly closed log of `recovery_mb`, then the same log after a crash that
    // left a 64 MiB unflushed tail (no checkpoint since the last roll).
    println!();
    let dir = fresh_dir(&root, "recovery");
    let config = LogConfig::default();
    let b = batch_of_size(16 * 1024);
    let mut log = Log::open(&dir, config.clone(), Arc::new(SystemClock)).expect("open");
    let build = Instant::now();
    for _ in 0..recovery_mb * 64 {
        log.append(&b, 1).expect("append");
    }
    log.close().expect("close");
    drop_caches_hint();
    println!(
        "built a {} MiB log in {:.1} s",
        recovery_mb,
        build.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let log = Log::open(&dir, config.clone(), Arc::new(SystemClock)).expect("reopen");
    let clean = start.elapsed();
    println!(
        "open of the cleanly closed {} MiB log ({} segments): {:.2} ms",
        recovery_mb,
        log.segment_count(),
        clean.as_secs_f64() * 1000.0
    );
    drop(log);
    let mut log = Log::open(&dir, config.clone(), Arc::new(SystemClock)).expect("reopen");
    log.roll().expect("roll");
    for _ in 0..64 * 64 {
        log.append(&b, 1).expect("append");
    }
    drop(log); // crash: no checkpoint, 64 MiB after the recovery point
    drop_caches_hint();
    let start = Instant::now();
    let log = Log::open(&dir, config, Arc::new(SystemClock)).expect("recover");
    let crashed = start.elapsed();
    println!(
        "open after a crash with a 64 MiB unflushed tail ({} MiB log): {:.2} ms (recovery scans only the tail)",
        log.size_in_bytes() / (1024 * 1024),
        crashed.as_secs_f64() * 1000.0
    );
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}
