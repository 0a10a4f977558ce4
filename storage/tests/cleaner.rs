//! Log compaction: latest record per key, offsets kept, tombstones, bounds, crash safety.

mod common;

use std::collections::HashMap;

use common::*;
use runnel_storage::batch::{self, control_type, BatchOptions};
use runnel_storage::compression::Compression;
use runnel_storage::{CleanerConfig, CleanupPolicy, LogConfig, ManualClock};

fn compacted() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        ..small_segments()
    }
}

/// The latest value per key among `(offset, key, value)` records.
fn latest(records: &[Rec]) -> HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> {
    let mut m = HashMap::new();
    for (o, k, v) in records {
        if let Some(k) = k {
            m.insert(k.clone(), (*o, v.clone()));
        }
    }
    m
}

#[test]
fn compaction_keeps_the_latest_record_per_key_at_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    for round in 0..30 {
        let v0 = format!("v{round}");
        let pairs: Vec<(String, Option<&str>)> = (0..4)
            .map(|k| (format!("key{k}"), Some(v0.as_str())))
            .collect();
        let pairs: Vec<(&str, Option<&str>)> =
            pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        log.append(&keyed_batch(&pairs, T0 + round, Compression::None), 1)
            .expect("append");
    }
    let marker = batch::build_control_batch(control_type::COMMIT, None, T0).expect("marker");
    log.append(&marker, 1).expect("marker");
    let before = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    let active_base = *log.segment_base_offsets().last().expect("segments");
    let size_before = log.size_in_bytes();

    let stats = log
        .compact(&CleanerConfig::default(), u64::MAX)
        .expect("compact");
    assert!(stats.records_removed > 50, "{stats:?}");
    assert!(log.size_in_bytes() < size_before);

    let after = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    // The latest value of every key survives at its original offset.
    let expected = latest(&before);
    for (k, (o, v)) in &expected {
        assert!(
            after
                .iter()
                .any(|(ao, ak, av)| ao == o && ak.as_ref() == Some(k) && av == v),
            "key {k:?} at {o}"
        );
    }
    // Nothing below the active segment has two records for one key.
    let below: Vec<_> = after.iter().filter(|r| r.0 < active_base).collect();
    let mut seen = std::collections::HashSet::new();
    for (_, k, _) in &below {
        assert!(
            seen.insert(k.clone()),
            "duplicate key {k:?} in cleaned section"
        );
    }
    // Offsets only grow; the active segment is untouched.
    assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
    let active_before: Vec<_> = before.iter().filter(|r| r.0 >= active_base).collect();
    let active_after: Vec<_> = after.iter().filter(|r| r.0 >= active_base).collect();
    assert_eq!(active_before, active_after);
    assert_eq!(log.log_end_offset(), 121);
    // The control batch is still there.
    let raw = log.read(0, 1 << 24, u64::MAX).expect("read");
    assert!(batches(&raw).iter().any(|h| h.is_control()));
    // Cleaned segments' Raft entries are gone; later ones remain readable.
    let first = log.first_entry_index();
    assert!(first > 1);
    assert!(log
        .entries(first, log.next_entry_index(), usize::MAX)
        .is_ok());
    assert!(log.entries(1, 2, usize::MAX).is_err());

    // Everything survives a restart.
    let end = log.log_end_offset();
    drop(log);
    let log = open(dir.path(), compacted(), &clock);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(
        records(&log.read(0, 1 << 24, u64::MAX).expect("read")),
        after
    );
}

#[test]
fn tombstones_survive_one_cleaning_then_expire_after_delete_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        delete_retention_ms: 1000,
        ..compacted()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append(
        &keyed_batch(
            &[("gone", Some("v1")), ("kept", Some("k1"))],
            T0,
            Compression::None,
        ),
        0,
    )
    .expect("append");
    log.append(&keyed_batch(&[("gone", None)], T0, Compression::None), 0)
        .expect("tombstone");
    for i in 0..40 {
        log.append(
            &keyed_batch(&[("filler", Some(&format!("f{i}")))], T0, Compression::None),
            0,
        )
        .expect("append");
    }
    log.compact(&CleanerConfig::default(), u64::MAX)
        .expect("compact");
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    assert!(
        recs.iter()
            .any(|r| r.1.as_deref() == Some(&b"gone"[..]) && r.2.is_none()),
        "tombstone kept at first"
    );
    assert!(
        !recs
            .iter()
            .any(|r| r.1.as_deref() == Some(&b"gone"[..]) && r.2.is_some()),
        "old value removed"
    );

    clock.advance(5000);
    for i in 0..40 {
        log.append(
            &keyed_batch(
                &[("filler", Some(&format!("g{i}")))],
                T0 + 5000,
                Compression::None,
            ),
            0,
        )
        .expect("append");
    }
    let stats = log
        .compact(&CleanerConfig::default(), u64::MAX)
        .expect("compact");
    assert_eq!(stats.tombstones_removed, 1, "{stats:?}");
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    assert!(!recs.iter().any(|r| r.1.as_deref() == Some(&b"gone"[..])));
    assert!(recs.iter().any(|r| r.1.as_deref() == Some(&b"kept"[..])));
}

#[test]
fn compressed_batches_are_compacted_and_stay_compressed() {
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let mut log = open(dir.path(), compacted(), &clock);
        for round in 0..30 {
            let v = format!("value-{round}");
            log.append(
                &keyed_batch(
                    &[
                        ("a", Some(&v)),
                        ("b", Some(&v)),
                        (&format!("u{round}"), Some(&v)),
                    ],
                    T0,
                    codec,
                ),
                0,
            )
            .expect("append");
        }
        let before = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
        let stats = log
            .compact(&CleanerConfig::default(), u64::MAX)
            .expect("compact");
        assert!(stats.records_removed > 0, "{codec:?}: {stats:?}");
        let raw = log.read(0, 1 << 24, u64::MAX).expect("read");
        assert!(
            batches(&raw)
                .iter()
                .all(|h| h.compression().expect("codec") == codec),
            "{codec:?}"
        );
        let after = records(&raw);
        for (k, (o, v)) in latest(&before) {
            assert!(
                after
                    .iter()
                    .any(|r| r.0 == o && r.1.as_ref() == Some(&k) && r.2 == v),
                "{codec:?} {k:?}"
            );
        }
    }
}

#[test]
fn cleaning_stops_at_the_upper_bound_and_never_touches_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    for i in 0..60 {
        log.append(
            &keyed_batch(&[("same", Some(&format!("v{i}")))], T0, Compression::None),
            0,
        )
        .expect("append");
    }
    // With nothing committed, nothing is cleanable.
    assert_eq!(
        log.compact(&CleanerConfig::default(), 0)
            .expect("compact")
            .records_removed,
        0
    );
    let bound = log.segment_base_offsets()[2];
    let stats = log
        .compact(&CleanerConfig::default(), bound)
        .expect("compact");
    assert!(stats.records_removed > 0);
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    // Everything at or above the bound is still there.
    assert_eq!(
        recs.iter().filter(|r| r.0 >= bound).count() as u64,
        60 - bound
    );
    assert_eq!(
        recs.iter().filter(|r| r.0 < bound).count(),
        1,
        "one survivor below the bound"
    );
}

#[test]
fn a_small_dedupe_buffer_cleans_in_several_passes_without_losing_latest_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    for round in 0..5 {
        for k in 0..40 {
            log.append(
                &keyed_batch(
                    &[(&format!("key-{k:03}"), Some(&format!("r{round}")))],
                    T0,
                    Compression::None,
                ),
                0,
            )
            .expect("append");
        }
    }
    let before = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    let tiny = CleanerConfig {
        dedupe_buffer_bytes: 10 * 72,
        ..CleanerConfig::default()
    };
    let mut passes = 0;
    loop {
        let stats = log.compact(&tiny, u64::MAX).expect("compact");
        passes += 1;
        if stats.cleaned_up_to == 0 || !log.needs_cleaning(u64::MAX) || passes > 50 {
            break;
        }
    }
    assert!(passes > 1, "a tiny map needs several passes");
    let after = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    for (k, (o, v)) in latest(&before) {
        assert!(
            after
                .iter()
                .any(|r| r.0 == o && r.1.as_ref() == Some(&k) && r.2 == v),
            "{k:?}"
        );
    }
}

#[test]
fn idempotent_batches_that_lose_every_record_stay_as_empty_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    let options = BatchOptions {
        producer_id: 42,
        producer_epoch: 0,
        base_sequence: 0,
        ..Default::default()
    };
    let b = batch::build_batch(&[record(T0, Some("k"), Some("old"))], &options).expect("batch");
    log.append(&b, 0).expect("append");
    for i in 0..40 {
        log.append(
            &keyed_batch(&[("k", Some(&format!("new{i}")))], T0, Compression::None),
            0,
        )
        .expect("append");
    }
    log.compact(&CleanerConfig::default(), u64::MAX)
        .expect("compact");
    let raw = log.read(0, 1 << 24, u64::MAX).expect("read");
    let first = &batches(&raw)[0];
    assert_eq!(
        (first.base_offset, first.producer_id, first.records_count),
        (0, 42, 0)
    );
}

#[test]
fn delete_only_logs_are_never_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..40 {
        log.append(
            &keyed_batch(&[("k", Some(&format!("v{i}")))], T0, Compression::None),
            0,
        )
        .expect("append");
    }
    assert_eq!(
        log.compact(&CleanerConfig::default(), u64::MAX)
            .expect("compact")
            .records_removed,
        0
    );
    assert_eq!(
        records(&log.read(0, 1 << 24, u64::MAX).expect("read")).len(),
        40
    );
}

#[test]
fn an_interrupted_swap_is_finished_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    for i in 0..40 {
        log.append(
            &keyed_batch(&[("k", Some(&format!("v{i}")))], T0, Compression::None),
            0,
        )
        .expect("append");
    }
    let plan = log
        .clean_plan(u64::MAX)
        .expect("plan")
        .expect("something to clean");
    let output = plan.build(&CleanerConfig::default()).expect("build");
    let expected_end = log.log_end_offset();
    drop(log);
    // Crash after the cleaned copy was written but before it was swapped in: a stray
    // `.cleaned` is discarded on open.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let cleaned = names
        .iter()
        .find(|n| n.ends_with(".cleaned"))
        .expect("cleaned file")
        .clone();
    // Simulate the crash one step later instead: the copy already renamed to `.swap`.
    let swap = cleaned.replace(".cleaned", ".swap");
    std::fs::rename(dir.path().join(&cleaned), dir.path().join(&swap)).expect("rename");
    drop(output);
    let log = open(dir.path(), compacted(), &clock);
    assert_eq!(log.log_end_offset(), expected_end);
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    assert!(recs.len() < 40, "the swap was completed");
    assert!(recs.iter().any(|r| r.2.as_deref() == Some(&b"v39"[..])));
    assert!(!std::fs::read_dir(dir.path()).expect("ls").any(|e| {
        let n = e.expect("entry").file_name().to_string_lossy().into_owned();
        n.ends_with(".swap") || n.ends_with(".cleaned")
    }));
}
