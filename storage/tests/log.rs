//! Behaviour of `Log`: append, read, roll, recovery, truncation, retention, entries.

mod common;

use common::*;
use runnel_storage::batch::{self, control_type};
use runnel_storage::compression::Compression;
use runnel_storage::{LogConfig, ManualClock, StorageError, TimestampAndOffset};

#[test]
fn append_assigns_consecutive_offsets_and_reads_back_bytes_as_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let a = log.append(&batch_of(3, "a", T0), 1).expect("append a");
    let b = log.append(&batch_of(2, "b", T0), 1).expect("append b");
    assert_eq!(
        (a.first_offset, a.last_offset, a.first_entry_index),
        (0, 2, 1)
    );
    assert_eq!(
        (b.first_offset, b.last_offset, b.first_entry_index),
        (3, 4, 2)
    );
    assert_eq!(log.log_end_offset(), 5);

    let bytes = log.read(0, 1 << 20, u64::MAX).expect("read");
    let hs = batches(&bytes);
    assert_eq!(hs.len(), 2);
    assert_eq!((hs[0].base_offset, hs[1].base_offset), (0, 3));
    assert!(hs.iter().all(|h| h.partition_leader_epoch == 1));
    let recs = records(&bytes);
    assert_eq!(
        recs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(recs[3].2.as_deref(), Some(&b"b-0"[..]));
    // Everything after the offset/epoch prefix is byte-for-byte what the producer sent.
    let original = batch_of(2, "b", T0);
    let second = &bytes[hs[0].size()..];
    assert_eq!(&second[16..], &original[16..]);
}

#[test]
fn read_from_inside_a_batch_returns_that_whole_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append(&batch_of(10, "a", T0), 0).expect("append");
    log.append(&batch_of(10, "b", T0), 0).expect("append");
    let bytes = log.read(15, 1 << 20, u64::MAX).expect("read");
    let hs = batches(&bytes);
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].base_offset, 10);
}

#[test]
fn read_honours_max_bytes_but_always_returns_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for i in 0..5 {
        log.append(&batch_of(4, &format!("x{i}"), T0), 0)
            .expect("append");
    }
    let one = batch_of(4, "x0", T0).len();
    assert_eq!(
        batches(&log.read(0, 1, u64::MAX).expect("read")).len(),
        1,
        "first batch even if larger"
    );
    assert_eq!(
        batches(&log.read(0, one * 2 + 1, u64::MAX).expect("read")).len(),
        2
    );
    // max_offset (the high watermark) excludes batches not wholly below it.
    assert_eq!(batches(&log.read(0, 1 << 20, 8).expect("read")).len(), 2);
    assert!(log.read(8, 1 << 20, 8).expect("read at hw").is_empty());
    assert!(log
        .read(20, 1 << 20, u64::MAX)
        .expect("read at end")
        .is_empty());
    assert!(matches!(
        log.read(21, 100, u64::MAX),
        Err(StorageError::OffsetOutOfRange { offset: 21, .. })
    ));
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..100 {
        log.append(&batch_of(3, &format!("r{i}"), T0 + i), 2)
            .expect("append");
    }
    assert!(
        log.segment_count() > 5,
        "rolled {} segments",
        log.segment_count()
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"00000000000000000000.log".to_string()));
    assert!(names.contains(&"00000000000000000000.index".to_string()));
    assert!(names.contains(&"00000000000000000000.timeindex".to_string()));
    let all = log.read(0, 1 << 24, u64::MAX).expect("read all");
    assert_eq!(records(&all).len(), 300);
    for offset in [0u64, 1, 44, 150, 299] {
        let r = records(&log.read(offset, 1, u64::MAX).expect("read"));
        assert!(
            r.iter().any(|(o, _, _)| *o == offset),
            "offset {offset} readable"
        );
    }
}

#[test]
fn segments_roll_by_segment_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        segment_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append(&batch_of(1, "a", T0), 0).expect("append");
    log.append(&batch_of(1, "b", T0 + 500), 0).expect("append");
    assert_eq!(log.segment_count(), 1);
    log.append(&batch_of(1, "c", T0 + 1000), 0).expect("append");
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
}

#[test]
fn clean_reopen_restores_everything_without_scanning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..50 {
        log.append(&batch_of(2, &format!("r{i}"), T0 + i), (i / 10) as i32)
            .expect("append");
    }
    let before = log.read(0, 1 << 24, u64::MAX).expect("read");
    let (end, next_entry, epochs) = (
        log.log_end_offset(),
        log.next_entry_index(),
        log.leader_epochs().clone(),
    );
    log.close().expect("close");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.next_entry_index(), next_entry);
    assert_eq!(log.leader_epochs(), &epochs);
    assert_eq!(log.read(0, 1 << 24, u64::MAX).expect("read"), before);
    assert_eq!(log.end_offset_for_epoch(2), (2, 60));
}

#[test]
fn torn_write_at_every_byte_of_the_last_batch_is_cut_and_nothing_else_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for i in 0..5 {
        log.append(&batch_of(3, &format!("r{i}"), T0), 1)
            .expect("append");
    }
    log.checkpoint().expect("checkpoint");
    let last = batch_of(3, "last", T0);
    log.append(&last, 1).expect("append last");
    log.flush().expect("flush");
    drop(log); // a crash: no checkpoint after the last append
    let seg = dir.path().join("00000000000000000000.log");
    let full = std::fs::read(&seg).expect("read segment");
    let good = full.len() - last.len();
    let snapshot = tempfile::tempdir().expect("tempdir");
    for name in std::fs::read_dir(dir.path()).expect("ls") {
        let name = name.expect("entry").file_name();
        std::fs::copy(dir.path().join(&name), snapshot.path().join(&name)).expect("copy");
    }
    for cut in good..full.len() {
        for name in std::fs::read_dir(snapshot.path()).expect("ls") {
            let name = name.expect("entry").file_name();
            std::fs::copy(snapshot.path().join(&name), dir.path().join(&name)).expect("restore");
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(cut as u64)
            .expect("cut");
        let mut log = open(dir.path(), LogConfig::default(), &clock);
        assert_eq!(log.log_end_offset(), 15, "cut at {cut}");
        assert_eq!(
            records(&log.read(0, 1 << 20, u64::MAX).expect("read")).len(),
            15,
            "cut at {cut}"
        );
        assert_eq!(
            std::fs::metadata(&seg).expect("stat").len(),
            good as u64,
            "torn bytes removed (cut at {cut})"
        );
        let info = log
            .append(&batch_of(1, "after", T0), 1)
            .expect("append after recovery");
        assert_eq!((info.first_offset, info.first_entry_index), (15, 6));
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append(&batch_of(2, "a", T0), 0).expect("append");
    drop(log);
    let seg = dir.path().join("00000000000000000000.log");
    let mut raw = std::fs::read(&seg).expect("read");
    let len = raw.len();
    raw.extend_from_slice(&[0xAB; 200]);
    std::fs::write(&seg, &raw).expect("write");
    let log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len as u64);
}

#[test]
fn corruption_in_a_sealed_segment_is_reported_not_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..40 {
        log.append(&batch_of(3, &format!("r{i}"), T0), 0)
            .expect("append");
    }
    log.close().expect("close");
    let seg = dir.path().join("00000000000000000000.log");
    let mut raw = std::fs::read(&seg).expect("read");
    raw[100] ^= 0xff;
    std::fs::write(&seg, &raw).expect("write");
    // Its indexes are gone too, so recovery must scan it and find the damage.
    std::fs::remove_file(dir.path().join("00000000000000000000.index")).expect("rm index");
    let err = runnel_storage::Log::open(
        dir.path(),
        small_segments(),
        std::sync::Arc::new(clock.clone()),
    )
    .expect_err("corruption must be an error");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[test]
fn missing_indexes_are_rebuilt_from_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..60 {
        log.append(&batch_of(3, &format!("r{i}"), T0 + i * 10), 0)
            .expect("append");
    }
    let expected = log.read(0, 1 << 24, u64::MAX).expect("read");
    let by_time = log.offset_for_timestamp(T0 + 305).expect("by time");
    log.close().expect("close");
    for suffix in ["index", "timeindex", "entryindex"] {
        std::fs::remove_file(dir.path().join(format!("00000000000000000000.{suffix}")))
            .expect("rm");
    }
    std::fs::write(dir.path().join("00000000000000000018.index"), [1u8; 5]).expect("corrupt index");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(log.read(0, 1 << 24, u64::MAX).expect("read"), expected);
    assert_eq!(
        log.offset_for_timestamp(T0 + 305).expect("by time"),
        by_time
    );
    assert_eq!(log.entries(1, 61, usize::MAX).expect("entries").len(), 60);
}

#[test]
fn invalid_batches_are_refused_with_typed_errors_and_harm_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        max_message_bytes: 2000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    log.append(&batch_of(2, "ok", T0), 0).expect("append");
    let good = batch_of(2, "x", T0);
    let mut bad_crc = good.to_vec();
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 1;
    assert!(matches!(
        log.append(&bad_crc, 0),
        Err(StorageError::CrcMismatch { .. })
    ));
    assert!(matches!(
        log.append(&good[..good.len() - 3], 0),
        Err(StorageError::TruncatedBatch { .. })
    ));
    assert!(matches!(
        log.append(&good[..20], 0),
        Err(StorageError::TruncatedBatch { .. })
    ));
    assert!(matches!(log.append(&[], 0), Err(StorageError::EmptyAppend)));
    let big = batch_of(100, &"y".repeat(50), T0);
    assert!(matches!(
        log.append(&big, 0),
        Err(StorageError::BatchTooLarge { .. })
    ));
    // A valid batch followed by a bad one: nothing of the request is written.
    let mut mixed = good.to_vec();
    mixed.extend_from_slice(&bad_crc);
    assert!(log.append(&mixed, 0).is_err());
    assert!(matches!(log.append(&good, -1).map(|_| ()), Ok(())));
    assert!(log.append(&good, 5).is_ok());
    assert!(matches!(
        log.append(&good, 4),
        Err(StorageError::StaleLeaderEpoch {
            epoch: 4,
            latest: 5
        })
    ));
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(
        records(&log.read(0, 1 << 20, u64::MAX).expect("read")).len(),
        6
    );
    drop(log);
    let log = open(dir.path(), config, &clock);
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn truncate_to_removes_suffix_durably_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..60 {
        log.append(&batch_of(2, &format!("r{i}"), T0 + i), (i / 20 + 1) as i32)
            .expect("append");
    }
    assert!(log.segment_count() > 3);
    log.truncate_to(51).expect("truncate");
    assert_eq!(
        log.log_end_offset(),
        50,
        "the batch holding offset 51 goes whole"
    );
    assert_eq!(log.next_entry_index(), 26);
    assert_eq!(log.latest_epoch(), Some(2));
    let info = log
        .append(&batch_of(1, "new", T0), 7)
        .expect("append after truncate");
    assert_eq!((info.first_offset, info.first_entry_index), (50, 26));
    drop(log); // crash right after
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(log.log_end_offset(), 51);
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    assert_eq!(recs.len(), 51);
    assert_eq!(recs[50].2.as_deref(), Some(&b"new-0"[..]));
    assert_eq!(log.end_offset_for_epoch(2), (2, 50));
    assert_eq!(log.end_offset_for_epoch(3), (2, 50));
}

#[test]
fn raft_entries_and_terms_without_scanning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    let noop = batch::build_control_batch(control_type::LEADER_CHANGE, None, T0).expect("control");
    log.append(&noop, 1).expect("noop");
    for i in 0..30 {
        log.append(
            &batch_of(2, &format!("r{i}"), T0),
            if i < 15 { 1 } else { 2 },
        )
        .expect("append");
    }
    assert_eq!(log.first_entry_index(), 1);
    assert_eq!(log.next_entry_index(), 32);
    let entries = log.entries(1, 32, usize::MAX).expect("entries");
    assert_eq!(entries.len(), 31);
    assert_eq!(
        batch::control_type_of(&entries[0].data),
        Some(control_type::LEADER_CHANGE)
    );
    assert!(entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.index == i as u64 + 1));
    assert_eq!(entries[15].epoch, 1);
    assert_eq!(entries[16].epoch, 2);
    assert_eq!(log.entry_epoch(16).expect("term"), 1);
    assert_eq!(log.entry_epoch(17).expect("term"), 2);
    assert_eq!(log.entry_offset(2).expect("offset"), 1);
    let limited = log.entries(5, 32, 1).expect("entries");
    assert_eq!(limited.len(), 1, "max_bytes still returns one entry");
    let some = log
        .entries(5, 32, entries[4].data.len() * 3)
        .expect("entries");
    assert_eq!(some.len(), 3);
    assert!(matches!(
        log.entries(0, 3, 100),
        Err(StorageError::EntryUnavailable { .. })
    ));
    assert!(matches!(
        log.entries(30, 33, 100),
        Err(StorageError::EntryUnavailable { .. })
    ));
    // Control batches are skipped by record readers but keep their offset.
    let recs = records(&log.read(0, 1 << 24, u64::MAX).expect("read"));
    assert_eq!(recs[0].0, 1);
    log.truncate_entries_from(20).expect("truncate entries");
    assert_eq!(log.next_entry_index(), 20);
    assert_eq!(log.log_end_offset(), 1 + 18 * 2);
}

#[test]
fn time_index_lookups_find_the_first_record_at_or_after_a_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..100i64 {
        // Records i*10 .. i*10+4 at timestamps T0 + 100*i + j.
        let recs: Vec<_> = (0..5)
            .map(|j| record(T0 + 100 * i + j, Some("k"), Some("v")))
            .collect();
        let b = batch::build_batch(&recs, &batch::BatchOptions::default()).expect("batch");
        log.append(&b, 0).expect("append");
    }
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        Some(TimestampAndOffset {
            timestamp: T0,
            offset: 0
        })
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 4203).expect("lookup"),
        Some(TimestampAndOffset {
            timestamp: T0 + 4203,
            offset: 42 * 5 + 3
        })
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 4250).expect("lookup"),
        Some(TimestampAndOffset {
            timestamp: T0 + 4300,
            offset: 43 * 5
        })
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 100_000).expect("lookup"),
        None
    );
    assert_eq!(
        log.max_timestamp_and_offset().expect("max"),
        Some(TimestampAndOffset {
            timestamp: T0 + 9904,
            offset: 499
        })
    );
    log.advance_log_start_offset(300).expect("advance");
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        Some(TimestampAndOffset {
            timestamp: T0 + 6000,
            offset: 300
        })
    );
}

#[test]
fn compressed_batches_are_stored_compressed_and_searchable_by_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for (i, codec) in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let recs: Vec<_> = (0..10)
            .map(|j| {
                record(
                    T0 + (i as i64) * 100 + j,
                    Some("k"),
                    Some("vvvvvvvvvvvvvvvv"),
                )
            })
            .collect();
        let b = batch::build_batch(
            &recs,
            &batch::BatchOptions {
                compression: codec,
                ..Default::default()
            },
        )
        .expect("batch");
        log.append(&b, 0).expect("append");
    }
    let bytes = log.read(0, 1 << 20, u64::MAX).expect("read");
    let codecs: Vec<_> = batches(&bytes)
        .iter()
        .map(|h| h.compression().expect("codec"))
        .collect();
    assert_eq!(
        codecs,
        vec![
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd
        ]
    );
    assert_eq!(records(&bytes).len(), 40);
    assert_eq!(
        log.offset_for_timestamp(T0 + 205)
            .expect("lookup")
            .map(|t| t.offset),
        Some(25)
    );
}

#[test]
fn retention_deletes_whole_old_segments_only_below_the_high_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        retention_ms: 60_000,
        ..small_segments()
    };
    let mut log = open(dir.path(), config, &clock);
    for i in 0..60 {
        log.append(&batch_of(2, &format!("r{i}"), T0 + i * 1000), 0)
            .expect("append");
    }
    let segments = log.segment_count();
    clock.set(T0 + 75_000);
    // Nothing is committed yet: nothing may go.
    assert_eq!(
        log.delete_old_segments(0)
            .expect("retention")
            .segments_deleted,
        0
    );
    let outcome = log.delete_old_segments(u64::MAX).expect("retention");
    assert!(
        outcome.segments_deleted > 0 && outcome.segments_deleted < segments,
        "{outcome:?} of {segments}: {:?}",
        log.segment_base_offsets()
    );
    // Every record left is younger than retention, or shares a segment with one.
    assert_eq!(log.log_start_offset(), log.segment_base_offsets()[0]);
    clock.set(T0 + 10_000_000);
    log.delete_old_segments(u64::MAX).expect("retention");
    assert_eq!(log.segment_count(), 1, "the active segment always stays");
    assert!(log.log_end_offset() == 120);
    let start = log.log_start_offset();
    drop(log);
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 60_000,
            ..small_segments()
        },
        &clock,
    );
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn retention_forever_keeps_everything_and_size_retention_trims_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(
        dir.path(),
        LogConfig {
            retention_ms: -1,
            ..small_segments()
        },
        &clock,
    );
    for i in 0..60 {
        log.append(&batch_of(2, &format!("r{i}"), T0), 0)
            .expect("append");
    }
    clock.set(i64::MAX / 2);
    assert_eq!(
        log.delete_old_segments(u64::MAX)
            .expect("retention")
            .segments_deleted,
        0
    );
    log.set_config(LogConfig {
        retention_ms: -1,
        retention_bytes: 2048,
        ..small_segments()
    })
    .expect("config");
    let before = log.size_in_bytes();
    assert!(before > 4096);
    log.delete_old_segments(u64::MAX).expect("retention");
    assert!(
        log.size_in_bytes() <= 2048 + 1024,
        "size {} after retention.bytes",
        log.size_in_bytes()
    );
    assert!(log.size_in_bytes() >= 2048, "never below retention.bytes");
}

#[test]
fn advancing_log_start_hides_records_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..60 {
        log.append(&batch_of(2, &format!("r{i}"), T0), 0)
            .expect("append");
    }
    assert!(log.advance_log_start_offset(75).expect("advance"));
    assert!(!log.advance_log_start_offset(10).expect("never backwards"));
    assert!(matches!(
        log.read(74, 100, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let first = batches(&log.read(75, 1, u64::MAX).expect("read"));
    assert_eq!(
        first[0].base_offset, 74,
        "the batch holding the start offset is returned whole"
    );
    assert!(log.segment_base_offsets()[0] <= 75);
    assert!(matches!(
        log.advance_log_start_offset(1000),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(log.log_start_offset(), 75);
}

#[test]
fn reset_restarts_an_empty_log_at_an_offset_and_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for i in 0..20 {
        log.append(&batch_of(2, &format!("r{i}"), T0), 0)
            .expect("append");
    }
    log.reset(1000, 500, 2).expect("reset");
    assert_eq!(
        log.prev_entry_epoch(),
        Some(2),
        "the snapshot's last entry epoch"
    );
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.next_entry_index()
        ),
        (1000, 1000, 500)
    );
    let info = log.append(&batch_of(1, "x", T0), 3).expect("append");
    assert_eq!((info.first_offset, info.first_entry_index), (1000, 500));
    drop(log);
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.next_entry_index()
        ),
        (1000, 1001, 501)
    );
    assert_eq!(log.prev_entry_epoch(), Some(2), "kept across a restart");
}

/// Raft asks for the term of the entry just before the first one held; once retention has
/// deleted segments that entry is gone, so its epoch is recorded before they go.
#[test]
fn the_epoch_of_the_last_entry_deleted_from_the_front_is_remembered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    let mut epoch_of = Vec::new();
    for i in 0..40 {
        let epoch = i / 10 + 1;
        let info = log
            .append(&batch_of(2, &format!("r{i}"), T0), epoch)
            .expect("append");
        epoch_of.push((info.first_entry_index, epoch));
    }
    assert!(log.segment_count() > 2, "small segments roll");
    assert_eq!(log.prev_entry_epoch(), None, "nothing deleted yet");
    let second = log.segment_base_offsets()[2];
    log.advance_log_start_offset(second).expect("advance");
    let first = log.first_entry_index();
    let want = epoch_of
        .iter()
        .find(|(index, _)| *index + 1 == first)
        .map(|(_, e)| *e);
    assert!(want.is_some(), "entries were deleted from the front");
    assert_eq!(log.prev_entry_epoch(), want);
    drop(log);
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(log.first_entry_index(), first);
    assert_eq!(log.prev_entry_epoch(), want, "kept across a restart");
}

#[test]
fn raft_control_batches_take_no_offset_and_are_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    let noop =
        batch::build_raft_control_batch(control_type::LEADER_CHANGE, None, T0).expect("noop");
    let a = log.append(&noop, 1).expect("noop");
    assert_eq!((a.first_offset, a.first_entry_index), (0, 1));
    let d = log.append(&batch_of(2, "d", T0), 1).expect("data");
    assert_eq!(
        (d.first_offset, d.first_entry_index),
        (0, 2),
        "the first record of a new log is offset 0"
    );
    log.append(&noop, 2).expect("second leader");
    let e = log.append(&batch_of(1, "e", T0), 2).expect("data");
    assert_eq!(e.first_offset, 2);
    assert_eq!(log.log_end_offset(), 3);
    let bytes = log.read(0, 1 << 20, u64::MAX).expect("read");
    let hs = batches(&bytes);
    assert_eq!(hs.len(), 2, "clients never see zero-width batches");
    assert!(hs.iter().all(|h| !h.is_control()));
    assert_eq!(
        log.end_offset_for_epoch(1),
        (1, 2),
        "epoch 2 starts at the offset of its first record"
    );
    assert_eq!(log.entries(1, 5, usize::MAX).expect("entries").len(), 4);
    // Raft drops entry 3 (the second no-op) and what follows.
    log.truncate_entries_from(3).expect("truncate");
    assert_eq!((log.next_entry_index(), log.log_end_offset()), (3, 2));
    assert_eq!(log.latest_epoch(), Some(1));
    drop(log);
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!((log.next_entry_index(), log.log_end_offset()), (3, 2));
    assert_eq!(
        records(&log.read(0, 1 << 20, u64::MAX).expect("read")).len(),
        2
    );
}

#[test]
fn producer_state_survives_restart_crash_and_truncation() {
    use runnel_storage::SequenceCheck;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    let idempotent = |seq: i32, n: usize| {
        let recs: Vec<_> = (0..n)
            .map(|i| record(T0 + i as i64, Some("k"), Some("v")))
            .collect();
        let options = batch::BatchOptions {
            producer_id: 9,
            producer_epoch: 0,
            base_sequence: seq,
            ..Default::default()
        };
        batch::build_batch(&recs, &options).expect("batch")
    };
    for i in 0..20 {
        log.append(&idempotent(i * 3, 3), 1).expect("append");
    }
    let expect_duplicate = |log: &runnel_storage::Log, seq: i32, offset: u64| match log
        .producer_state()
        .check(9, 0, seq, seq + 2)
    {
        SequenceCheck::Duplicate(m) => assert_eq!(m.first_offset, offset),
        other => panic!("expected a duplicate of seq {seq}, got {other:?}"),
    };
    expect_duplicate(&log, 57, 57);
    assert_eq!(
        log.producer_state().check(9, 0, 61, 63),
        SequenceCheck::OutOfOrder { expected: 60 }
    );
    log.close().expect("close");
    let mut log = open(dir.path(), small_segments(), &clock);
    expect_duplicate(&log, 57, 57);
    // A crash after more appends: state is rebuilt from the snapshot plus the log tail.
    log.append(&idempotent(60, 3), 1).expect("append");
    drop(log);
    let mut log = open(dir.path(), small_segments(), &clock);
    expect_duplicate(&log, 60, 60);
    // Truncation forgets the truncated batches.
    log.truncate_to(57).expect("truncate");
    assert_eq!(
        log.producer_state().check(9, 0, 57, 59),
        SequenceCheck::Accept
    );
    expect_duplicate(&log, 54, 54);
}

#[test]
fn zero_width_first_then_data_with_a_new_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 64,
        cleanup_policy: runnel_storage::CleanupPolicy::CompactDelete,
        min_cleanable_dirty_ratio: 0.0,
        retention_ms: -1,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    let noop =
        batch::build_raft_control_batch(control_type::LEADER_CHANGE, None, T0).expect("noop");
    log.append(&noop, 1).expect("noop");
    assert!(log.read(0, usize::MAX, u64::MAX).expect("read").is_empty());
    assert_eq!(log.entries(1, 2, usize::MAX).expect("entries").len(), 1);
    assert_eq!(log.entry_epoch(1).expect("epoch"), 1);
    let tombstone = batch::build_batch(
        &[record(T0, Some("k0"), None)],
        &batch::BatchOptions::default(),
    )
    .expect("batch");
    log.append(&tombstone, 2).expect("data");
    assert_eq!(
        records(&log.read(0, usize::MAX, u64::MAX).expect("read")).len(),
        1
    );
    let entries = log
        .entries(log.first_entry_index(), log.next_entry_index(), usize::MAX)
        .expect("entries");
    assert_eq!(entries.len(), 2);
}

#[test]
fn raft_no_ops_do_not_count_as_record_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    // The no-op carries the broker's clock, far after the records' own timestamps.
    let noop = batch::build_raft_control_batch(control_type::LEADER_CHANGE, None, T0 + 10_000_000)
        .expect("noop");
    log.append(&noop, 1).expect("noop");
    log.append(&batch_of(3, "r", T0), 1).expect("data");
    assert_eq!(
        log.max_timestamp_and_offset().expect("max"),
        Some(TimestampAndOffset {
            timestamp: T0 + 2,
            offset: 2
        })
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 5_000_000).expect("lookup"),
        None
    );
}
