//! Transactions in the log: last stable offset, aborted-transaction index, end-transaction
//! markers, recovery, truncation, retention and compaction, as Kafka's `UnifiedLog`,
//! `ProducerStateManager`, `TransactionIndex` and `LogCleaner` behave.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use runnel_storage::batch::{self, BatchOptions};
use runnel_storage::compression::Compression;
use runnel_storage::{
    AbortedTxn, CleanerConfig, CleanupPolicy, Log, LogConfig, ManualClock, MarkerCheck,
};

const P1: i64 = 1000;
const P2: i64 = 2000;

/// Sequence numbers per producer, so batches look like a real transactional producer's.
#[derive(Default)]
struct Producers {
    next_seq: HashMap<i64, i32>,
}

impl Producers {
    /// A transactional batch of `pairs` from `pid` (epoch 0).
    fn txn(&mut self, pid: i64, pairs: &[(&str, Option<&str>)]) -> Bytes {
        let seq = self.next_seq.entry(pid).or_insert(0);
        let records: Vec<_> = pairs.iter().map(|(k, v)| record(T0, Some(k), *v)).collect();
        let b = batch::build_batch(
            &records,
            &BatchOptions {
                producer_id: pid,
                producer_epoch: 0,
                base_sequence: *seq,
                transactional: true,
                ..Default::default()
            },
        )
        .expect("transactional batch");
        *seq += pairs.len() as i32;
        b
    }
}

fn commit(pid: i64) -> Bytes {
    batch::build_end_txn_marker(true, pid, 0, 0, T0).expect("commit marker")
}

fn abort(pid: i64) -> Bytes {
    batch::build_end_txn_marker(false, pid, 0, 0, T0).expect("abort marker")
}

fn append(log: &mut Log, bytes: &Bytes) -> u64 {
    log.append(bytes, 0).expect("append").first_offset
}

fn plain(log: &mut Log, n: usize) -> u64 {
    append(log, &batch_of(n, "plain", T0))
}

fn aborted(pid: i64, first: u64, last: u64, lso: u64) -> AbortedTxn {
    AbortedTxn {
        producer_id: pid,
        first_offset: first,
        last_offset: last,
        last_stable_offset: lso,
    }
}

fn all_aborted(log: &Log) -> Vec<AbortedTxn> {
    log.aborted_transactions(0, u64::MAX)
}

#[test]
fn an_ongoing_transaction_holds_the_last_stable_offset_below_the_high_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    plain(&mut log, 3);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(
        log.last_stable_offset(3),
        3,
        "no transaction: the LSO is the HW"
    );
    let first = append(&mut log, &p.txn(P1, &[("a", Some("1")), ("b", Some("2"))]));
    plain(&mut log, 2);
    append(&mut log, &p.txn(P1, &[("c", Some("3"))]));
    log.on_high_watermark(log.log_end_offset());
    assert_eq!(first, 3);
    assert_eq!(log.first_unstable_offset(), Some(3));
    assert_eq!(log.last_stable_offset(log.log_end_offset()), 3);
    assert_eq!(
        log.last_stable_offset(2),
        2,
        "never above the high watermark"
    );
    let entry = log.producer_state().get(P1).expect("producer");
    assert_eq!(entry.current_txn_first_offset, Some(3));
}

#[test]
fn a_commit_releases_the_lso_once_the_high_watermark_passes_its_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    append(&mut log, &p.txn(P1, &[("a", Some("1"))]));
    let marker = append(&mut log, &commit(P1));
    assert_eq!(marker, 1);
    assert_eq!(
        log.producer_state()
            .get(P1)
            .and_then(|e| e.current_txn_first_offset),
        None
    );
    log.on_high_watermark(1);
    assert_eq!(
        log.last_stable_offset(1),
        0,
        "the marker is not replicated yet: the transaction still holds the LSO"
    );
    log.on_high_watermark(2);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(2), 2);
    assert!(all_aborted(&log).is_empty(), "a commit is not an abort");
}

#[test]
fn an_abort_is_returned_for_fetch_ranges_that_overlap_it_and_not_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    plain(&mut log, 5); // 0..5
    append(&mut log, &p.txn(P1, &[("a", Some("1")), ("b", Some("2"))])); // 5, 6
    plain(&mut log, 3); // 7..10
    let marker = append(&mut log, &abort(P1)); // 10
    plain(&mut log, 5); // 11..16
    assert_eq!(marker, 10);
    let txn = aborted(P1, 5, 10, 11);
    assert_eq!(all_aborted(&log), vec![txn]);
    assert_eq!(
        log.aborted_transactions(0, 5),
        vec![],
        "ends before the transaction starts"
    );
    assert_eq!(log.aborted_transactions(0, 6), vec![txn]);
    assert_eq!(
        log.aborted_transactions(7, 9),
        vec![txn],
        "inside the transaction"
    );
    assert_eq!(
        log.aborted_transactions(10, 16),
        vec![txn],
        "from the marker"
    );
    assert_eq!(log.aborted_transactions(11, 16), vec![], "after the marker");
    log.on_high_watermark(16);
    assert_eq!(log.last_stable_offset(16), 16);
}

#[test]
fn interleaved_transactions_of_two_producers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    append(&mut log, &p.txn(P1, &[("a", Some("1"))])); // 0
    append(&mut log, &p.txn(P2, &[("b", Some("1"))])); // 1
    append(&mut log, &p.txn(P1, &[("c", Some("1"))])); // 2
    append(&mut log, &p.txn(P2, &[("d", Some("1"))])); // 3
    log.on_high_watermark(4);
    assert_eq!(log.last_stable_offset(4), 0);
    append(&mut log, &abort(P1)); // 4
    log.on_high_watermark(5);
    assert_eq!(
        log.last_stable_offset(5),
        1,
        "P2's transaction is still open"
    );
    append(&mut log, &p.txn(P1, &[("e", Some("2"))])); // 5: P1's next transaction
    append(&mut log, &commit(P2)); // 6
    log.on_high_watermark(7);
    assert_eq!(
        log.last_stable_offset(7),
        5,
        "P1's second transaction is open"
    );
    append(&mut log, &abort(P1)); // 7
    log.on_high_watermark(8);
    assert_eq!(log.last_stable_offset(8), 8);
    // P1's first abort: P2 (from 1) was still open, so the LSO right after it was 1.
    assert_eq!(
        all_aborted(&log),
        vec![aborted(P1, 0, 4, 1), aborted(P1, 5, 7, 8)]
    );
    // A read_committed fetch below the old LSO of 1 needs only P1's first abort.
    assert_eq!(log.aborted_transactions(0, 1), vec![aborted(P1, 0, 4, 1)]);
    assert_eq!(log.aborted_transactions(1, 6), all_aborted(&log));
    assert_eq!(log.aborted_transactions(5, 8), vec![aborted(P1, 5, 7, 8)]);
}

#[test]
fn markers_with_an_older_producer_or_coordinator_epoch_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(
        log.check_end_txn_marker(P1, 0, 0),
        Ok(()),
        "unknown producer"
    );
    let data = batch::build_batch(
        &[record(T0, Some("k"), Some("v"))],
        &BatchOptions {
            producer_id: P1,
            producer_epoch: 2,
            base_sequence: 0,
            transactional: true,
            ..Default::default()
        },
    )
    .expect("batch");
    log.append(&data, 0).expect("append");
    let marker = batch::build_end_txn_marker(true, P1, 2, 5, T0).expect("marker");
    log.append(&marker, 0).expect("append marker");
    assert_eq!(
        log.check_end_txn_marker(P1, 1, 5),
        Err(MarkerCheck::InvalidProducerEpoch { current: 2 })
    );
    assert_eq!(
        log.check_end_txn_marker(P1, 2, 4),
        Err(MarkerCheck::CoordinatorFenced { current: 5 })
    );
    assert_eq!(log.check_end_txn_marker(P1, 2, 5), Ok(()));
    assert_eq!(log.check_end_txn_marker(P1, 3, 6), Ok(()));
}

#[test]
fn expiry_keeps_producers_with_ongoing_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    append(&mut log, &p.txn(P1, &[("a", Some("1"))]));
    append(&mut log, &p.txn(P2, &[("b", Some("1"))]));
    append(&mut log, &commit(P2));
    clock.advance(10_000_000);
    assert_eq!(
        log.expire_producers(1000),
        1,
        "only the idle producer without a transaction"
    );
    assert!(log.producer_state().get(P1).is_some());
    assert!(log.producer_state().get(P2).is_none());
    log.on_high_watermark(log.log_end_offset());
    assert_eq!(log.first_unstable_offset(), Some(0));
}

/// A log with: an aborted transaction of P1 before a segment roll (and snapshot), an aborted
/// transaction of P2 after it, and P1's open transaction. Returns the expected aborted list.
fn write_history(log: &mut Log, p: &mut Producers) -> Vec<AbortedTxn> {
    append(log, &p.txn(P1, &[("a", Some("1"))])); // 0
    plain(log, 2); // 1, 2
    append(log, &abort(P1)); // 3
    log.roll().expect("roll"); // snapshot at 4
    append(log, &p.txn(P2, &[("b", Some("1"))])); // 4
    append(log, &abort(P2)); // 5
    append(log, &p.txn(P1, &[("c", Some("1"))])); // 6
    plain(log, 1); // 7
    vec![aborted(P1, 0, 3, 4), aborted(P2, 4, 5, 6)]
}

fn assert_history(log: &mut Log, expected: &[AbortedTxn]) {
    assert_eq!(
        all_aborted(log),
        expected,
        "aborted transactions, no duplicates"
    );
    assert_eq!(
        log.producer_state()
            .get(P1)
            .and_then(|e| e.current_txn_first_offset),
        Some(6)
    );
    log.on_high_watermark(log.log_end_offset());
    assert_eq!(log.first_unstable_offset(), Some(6));
    assert_eq!(log.last_stable_offset(8), 6);
}

#[test]
fn reopen_after_a_crash_restores_transactions_and_the_aborted_index_without_duplicates() {
    for flush_first in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let mut log = open(dir.path(), LogConfig::default(), &clock);
        let mut p = Producers::default();
        let expected = write_history(&mut log, &mut p);
        if flush_first {
            // The aborted index reaches its file, but the snapshot stays at 4: the replay
            // after the crash must not index P2's abort a second time.
            log.flush().expect("flush");
        }
        drop(log); // crash: no checkpoint
        let mut log = open(dir.path(), LogConfig::default(), &clock);
        assert_history(&mut log, &expected);
        // And again, now that the open checkpointed.
        drop(log);
        let mut log = open(dir.path(), LogConfig::default(), &clock);
        assert_history(&mut log, &expected);
    }
}

#[test]
fn reopen_after_a_clean_close_restores_transactions_and_the_aborted_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    let expected = write_history(&mut log, &mut p);
    log.close().expect("close");
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_history(&mut log, &expected);
    // The open transaction still ends normally after the restart.
    append(&mut log, &abort(P1)); // 8
    let mut expected = expected;
    expected.push(aborted(P1, 6, 8, 9));
    assert_eq!(all_aborted(&log), expected);
    log.close().expect("close");
    let log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(all_aborted(&log), expected);
}

#[test]
fn completed_transactions_stay_unstable_across_a_restart_until_the_high_watermark_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    append(&mut log, &p.txn(P1, &[("a", Some("1"))]));
    append(&mut log, &commit(P1));
    log.close().expect("close");
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(
        log.first_unstable_offset(),
        Some(0),
        "the snapshot keeps it unreplicated"
    );
    log.on_high_watermark(2);
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn a_torn_aborted_index_entry_is_cut_and_regenerated_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    let expected = write_history(&mut log, &mut p);
    log.flush().expect("flush");
    let base = *log.segment_base_offsets().last().expect("segment");
    drop(log);
    let path = dir.path().join(format!("{base:020}.txnindex"));
    let raw = std::fs::read(&path).expect("read txnindex");
    assert_eq!(raw.len(), 34, "one Kafka-format entry for P2's abort");
    std::fs::write(&path, &raw[..20]).expect("tear");
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_history(&mut log, &expected);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 34);
}

#[test]
fn a_damaged_aborted_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    let expected = write_history(&mut log, &mut p);
    log.close().expect("close");
    // Garbage in the sealed first segment's index: an entry of an unknown version.
    let path = dir.path().join(format!("{:020}.txnindex", 0));
    let mut raw = std::fs::read(&path).expect("read txnindex");
    raw[1] = 7;
    std::fs::write(&path, &raw).expect("damage");
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_history(&mut log, &expected);
    drop(log);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_history(&mut log, &expected);
}

#[test]
fn truncation_below_a_marker_resurrects_the_transaction_and_removes_its_aborted_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    let expected = write_history(&mut log, &mut p);
    log.checkpoint().expect("checkpoint"); // snapshot at 8, past the truncation point
    log.truncate_to(5).expect("truncate"); // drops P2's abort marker and everything after
    assert_eq!(all_aborted(&log), expected[..1]);
    assert_eq!(
        log.producer_state()
            .get(P2)
            .and_then(|e| e.current_txn_first_offset),
        Some(4)
    );
    assert_eq!(
        log.producer_state()
            .get(P1)
            .and_then(|e| e.current_txn_first_offset),
        None
    );
    log.on_high_watermark(5);
    assert_eq!(log.first_unstable_offset(), Some(4));
    // Into the first segment: P1's abort goes too, its transaction is open again.
    log.truncate_entries_from(3).expect("truncate entries"); // entry 3 is the marker at 3
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(
        log.producer_state()
            .get(P1)
            .and_then(|e| e.current_txn_first_offset),
        Some(0)
    );
    log.on_high_watermark(3);
    assert_eq!(log.first_unstable_offset(), Some(0));
    // Durable: a crash now still shows the truncated state.
    drop(log);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(all_aborted(&log), vec![]);
    log.on_high_watermark(3);
    assert_eq!(log.first_unstable_offset(), Some(0));
    // The transaction can end differently this time.
    append(&mut log, &abort(P1));
    assert_eq!(all_aborted(&log), vec![aborted(P1, 0, 3, 4)]);
}

#[test]
fn reset_forgets_transactions_and_the_aborted_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    write_history(&mut log, &mut p);
    log.reset(100, 50, 0).expect("reset");
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(log.first_unstable_offset(), None);
    assert!(log.producer_state().producers().is_empty());
    log.close().expect("close");
    let log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn retention_and_delete_records_past_an_aborted_transaction_prune_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        retention_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    let mut p = Producers::default();
    let expected = write_history(&mut log, &mut p);
    append(&mut log, &abort(P1)); // 8
    log.roll().expect("roll");
    plain(&mut log, 1);
    let p1_second = aborted(P1, 6, 8, 9);
    // DeleteRecords past P1's first abort: it is no longer returned.
    log.advance_log_start_offset(4).expect("advance");
    assert_eq!(all_aborted(&log), vec![expected[1], p1_second]);
    // Retention deletes the segments holding the other markers, index files included.
    clock.advance(10_000);
    let outcome = log
        .delete_old_segments(log.log_end_offset())
        .expect("retention");
    assert_eq!(outcome.segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 9);
    assert_eq!(all_aborted(&log), vec![]);
    assert!(!dir.path().join(format!("{:020}.txnindex", 4)).exists());
    log.close().expect("close");
    let log = open(dir.path(), config, &clock);
    assert_eq!(all_aborted(&log), vec![]);
}

#[test]
fn raft_control_batches_do_not_disturb_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut p = Producers::default();
    append(&mut log, &p.txn(P1, &[("a", Some("1"))]));
    let noop = batch::build_raft_control_batch(batch::control_type::LEADER_CHANGE, None, T0)
        .expect("noop");
    log.append(&noop, 1).expect("noop");
    log.append(&abort(P1), 1).expect("abort");
    assert_eq!(all_aborted(&log), vec![aborted(P1, 0, 1, 2)]);
    drop(log);
    let log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(all_aborted(&log), vec![aborted(P1, 0, 1, 2)]);
}

fn compacted() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

fn values_by_key(log: &Log) -> HashMap<String, Vec<(u64, Option<String>)>> {
    let bytes = log
        .read(log.log_start_offset(), usize::MAX, u64::MAX)
        .expect("read");
    let mut out: HashMap<String, Vec<(u64, Option<String>)>> = HashMap::new();
    for (offset, key, value) in records(&bytes) {
        let key = String::from_utf8(key.expect("key")).expect("utf8");
        let value = value.map(|v| String::from_utf8(v).expect("utf8"));
        out.entry(key).or_default().push((offset, value));
    }
    out
}

#[test]
fn the_cleaner_drops_aborted_records_and_keeps_committed_ones_and_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    let mut p = Producers::default();
    let plain_batch = keyed_batch(&[("k", Some("committed"))], T0, Compression::None);
    append(&mut log, &plain_batch); // 0: k = committed
    append(
        &mut log,
        &p.txn(P1, &[("k", Some("aborted")), ("x", Some("aborted"))]),
    ); // 1, 2
    append(&mut log, &p.txn(P2, &[("y", Some("from-p2"))])); // 3
    append(&mut log, &abort(P1)); // 4
    append(&mut log, &commit(P2)); // 5
    append(&mut log, &p.txn(P2, &[("z", Some("old"))])); // 6
    append(&mut log, &p.txn(P2, &[("z", Some("new"))])); // 7
    append(&mut log, &commit(P2)); // 8
    log.roll().expect("roll");
    plain(&mut log, 1); // keep the cleaned part sealed
    let end = log.log_end_offset();
    log.on_high_watermark(end);
    let stats = log
        .compact(&CleanerConfig::default(), log.last_stable_offset(end))
        .expect("compact");
    assert_eq!(stats.aborted_records_removed, 2);
    let values = values_by_key(&log);
    assert_eq!(
        values.get("k"),
        Some(&vec![(0, Some("committed".to_string()))]),
        "the aborted write neither survives nor shadows the committed value"
    );
    assert!(!values.contains_key("x"));
    assert_eq!(
        values.get("y"),
        Some(&vec![(3, Some("from-p2".to_string()))])
    );
    assert_eq!(values.get("z"), Some(&vec![(7, Some("new".to_string()))]));
    // Markers stay, and the emptied aborted batch keeps its place.
    let bytes = log.read(0, usize::MAX, u64::MAX).expect("read");
    let headers = batches(&bytes);
    let markers: Vec<_> = headers
        .iter()
        .filter(|h| h.is_control())
        .map(|h| h.base_offset)
        .collect();
    assert_eq!(markers, vec![4, 5, 8]);
    let emptied = headers
        .iter()
        .find(|h| h.base_offset == 1)
        .expect("aborted batch");
    assert_eq!((emptied.records_count, emptied.last_offset()), (0, 2));
    // The index still knows the abort, and replaying the cleaned log agrees with it.
    assert_eq!(all_aborted(&log), vec![aborted(P1, 1, 4, 3)]);
    log.close().expect("close");
    for snapshot in std::fs::read_dir(dir.path()).expect("ls") {
        let path = snapshot.expect("entry").path();
        if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(path).expect("remove snapshot");
        }
    }
    let mut log = open(dir.path(), compacted(), &clock);
    assert_eq!(all_aborted(&log), vec![aborted(P1, 1, 4, 3)]);
    log.on_high_watermark(log.log_end_offset());
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn the_cleaner_never_passes_the_first_unstable_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), compacted(), &clock);
    let mut p = Producers::default();
    append(
        &mut log,
        &keyed_batch(&[("k", Some("v1"))], T0, Compression::None),
    ); // 0
    append(&mut log, &p.txn(P1, &[("k", Some("open"))])); // 1
    log.roll().expect("roll");
    append(
        &mut log,
        &keyed_batch(&[("k", Some("v2"))], T0, Compression::None),
    ); // 2
    log.roll().expect("roll");
    plain(&mut log, 1);
    let end = log.log_end_offset();
    log.on_high_watermark(end);
    // The caller passes the high watermark; the open transaction still bounds the pass.
    let stats = log
        .compact(&CleanerConfig::default(), end)
        .expect("compact");
    assert_eq!(stats.records_removed, 0);
    assert_eq!(values_by_key(&log).get("k").map(Vec::len), Some(3));
}

#[test]
fn logs_written_before_transactions_open_without_txnindex_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_segments(), &clock);
    for _ in 0..30 {
        plain(&mut log, 3);
    }
    assert!(log.segment_count() > 1);
    log.close().expect("close");
    for entry in std::fs::read_dir(dir.path()).expect("ls") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "txnindex") {
            std::fs::remove_file(path).expect("remove");
        }
    }
    let mut log = open(dir.path(), small_segments(), &clock);
    assert_eq!(all_aborted(&log), vec![]);
    let mut p = Producers::default();
    let first = append(&mut log, &p.txn(P1, &[("a", Some("1"))]));
    let marker = append(&mut log, &abort(P1));
    assert_eq!(
        all_aborted(&log),
        vec![aborted(P1, first, marker, marker + 1)]
    );
    log.close().expect("close");
    let log = open(dir.path(), small_segments(), &clock);
    assert_eq!(
        all_aborted(&log),
        vec![aborted(P1, first, marker, marker + 1)]
    );
}
