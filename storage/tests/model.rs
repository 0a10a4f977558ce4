//! Property test: random sequences of append / transactional append / end-transaction marker /
//! read / truncate / advance start / roll / compact / close+reopen / crash (the unflushed tail
//! cut at a random byte) against a simple in-memory model. After every step the log must agree
//! with the model, transactions included: the first unstable offset and the aborted
//! transactions are recomputed from the model's batches by replaying them in order.
//!
//! Reproduce a failure with the case proptest prints (it also records it under
//! `proptest-regressions/`). `PROPTEST_CASES` raises the number of cases.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use common::*;
use proptest::prelude::*;
use runnel_storage::batch::{self, BatchOptions};
use runnel_storage::compression::Compression;
use runnel_storage::{
    AbortedTxn, CleanerConfig, CleanupPolicy, Log, LogConfig, ManualClock, StorageError,
};

#[derive(Debug, Clone)]
enum Op {
    /// A new Raft leader's no-op: a zero-width control batch with a new epoch.
    Noop,
    Append {
        records: Vec<(u8, Option<u8>)>,
        bump_epoch: bool,
        codec: u8,
    },
    /// A transactional batch of producer `producer` (starts its transaction if none is open).
    TxnAppend {
        producer: u8,
        records: Vec<(u8, Option<u8>)>,
        codec: u8,
    },
    /// The coordinator's end-transaction marker for `producer`.
    TxnEnd {
        producer: u8,
        commit: bool,
    },
    Read {
        at: u16,
        max_bytes: u16,
    },
    Truncate {
        at: u16,
    },
    AdvanceStart {
        at: u16,
    },
    Roll,
    Flush,
    Compact {
        bound: u16,
    },
    Reopen,
    Crash {
        cut: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop::collection::vec((0u8..12, prop::option::weighted(0.9, any::<u8>())), 1..6), prop::bool::weighted(0.1), 0u8..5)
            .prop_map(|(records, bump_epoch, codec)| Op::Append { records, bump_epoch, codec }),
        3 => (0u8..2, prop::collection::vec((0u8..12, prop::option::weighted(0.9, any::<u8>())), 1..4), 0u8..5)
            .prop_map(|(producer, records, codec)| Op::TxnAppend { producer, records, codec }),
        2 => (0u8..2, any::<bool>()).prop_map(|(producer, commit)| Op::TxnEnd { producer, commit }),
        3 => (any::<u16>(), any::<u16>()).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u16>().prop_map(|at| Op::AdvanceStart { at }),
        1 => Just(Op::Roll),
        2 => Just(Op::Flush),
        1 => any::<u16>().prop_map(|bound| Op::Compact { bound }),
        1 => Just(Op::Reopen),
        1 => any::<u16>().prop_map(|cut| Op::Crash { cut }),
        1 => Just(Op::Noop),
    ]
}

/// What a model batch is, for producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// A Raft no-op: a zero-width control batch.
    ZeroWidth,
    /// A transactional data batch of a producer id.
    Txn(i64),
    /// An end-transaction marker of a producer id (`true`: COMMIT).
    Marker(i64, bool),
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base: u64,
    /// Last offset; `base - 1` for a zero-width Raft control batch.
    last: i64,
    epoch: i32,
    entry: u64,
    kind: Kind,
    /// (offset, key, value, removable: superseded by a later record of its key and below a
    /// compaction bound, so the cleaner may have dropped it)
    records: Vec<(u64, u8, Option<u8>, bool)>,
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start: u64,
    leo: u64,
    next_entry: u64,
    epoch: i32,
    /// Truncation never goes below what the cleaner may have touched (Raft never truncates
    /// committed entries, and the cleaner only works below the commit point).
    min_truncate: u64,
    /// (active segment base, leo) at the last durability point.
    durable: (u64, u64),
    /// Next base sequence per transactional producer.
    next_seq: HashMap<i64, i32>,
}

/// Transactions as a replay of the model's batches finds them.
#[derive(Debug, Default)]
struct TxnState {
    /// Ongoing transactions: first offset -> producer id.
    ongoing: BTreeMap<u64, i64>,
    /// Every aborted transaction, in marker order.
    aborted: Vec<AbortedTxn>,
    /// Completed transactions' ranges `[first, marker]`.
    completed: Vec<(u64, u64)>,
}

impl TxnState {
    /// Whether a transactional batch of `pid` at `offset` belongs to an aborted transaction.
    fn is_aborted(&self, pid: i64, offset: u64) -> bool {
        self.aborted
            .iter()
            .any(|t| t.producer_id == pid && t.first_offset <= offset && offset <= t.last_offset)
    }

    /// `offset` moved down until it is inside no transaction.
    fn outside_transactions(&self, mut offset: u64) -> u64 {
        loop {
            let inside = self
                .ongoing
                .keys()
                .map(|&first| (first, u64::MAX))
                .chain(self.completed.iter().copied())
                .filter(|&(first, last)| first < offset && offset <= last)
                .map(|(first, _)| first)
                .min();
            match inside {
                Some(first) => offset = first,
                None => return offset,
            }
        }
    }
}

impl Model {
    /// Drops every batch at or after `new_leo` (a batch boundary), as truncation and crash
    /// recovery do.
    /// Kafka's producer-state rules, replayed over the batches in log order.
    fn txn_state(&self) -> TxnState {
        let mut state = TxnState::default();
        let mut current: HashMap<i64, u64> = HashMap::new();
        for b in &self.batches {
            match b.kind {
                Kind::Txn(pid) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = current.entry(pid) {
                        e.insert(b.base);
                        state.ongoing.insert(b.base, pid);
                    }
                }
                Kind::Marker(pid, commit) => {
                    let Some(first) = current.remove(&pid) else {
                        continue;
                    };
                    state.ongoing.remove(&first);
                    state.completed.push((first, b.base));
                    if !commit {
                        let lso = state.ongoing.keys().next().copied().unwrap_or(b.base + 1);
                        state.aborted.push(AbortedTxn {
                            producer_id: pid,
                            first_offset: first,
                            last_offset: b.base,
                            last_stable_offset: lso,
                        });
                    }
                }
                Kind::Plain | Kind::ZeroWidth => {}
            }
        }
        state
    }

    fn truncate(&mut self, new_leo: u64) {
        if let Some(first_removed) = self.batches.iter().find(|b| b.last >= new_leo as i64) {
            self.next_entry = first_removed.entry;
        }
        self.batches.retain(|b| b.last < new_leo as i64);
        self.leo = new_leo;
        self.log_start = self.log_start.min(new_leo);
    }
}

fn codec(c: u8) -> Compression {
    [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ][c as usize % 5]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 64,
        cleanup_policy: CleanupPolicy::CompactDelete,
        min_cleanable_dirty_ratio: 0.0,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    log: Option<Log>,
    model: Model,
}

impl Harness {
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("log open")
    }

    fn active_path(&self) -> PathBuf {
        let base = *self
            .log
            .as_ref()
            .expect("open")
            .segment_base_offsets()
            .last()
            .expect("segment");
        self.dir.path().join(format!("{base:020}.log"))
    }

    fn mark_durable(&mut self) {
        let log = self.log.as_ref().expect("open");
        let base = *log.segment_base_offsets().last().expect("segment");
        self.model.durable = (base, log.log_end_offset());
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append {
                records,
                bump_epoch,
                codec: c,
            } => {
                if *bump_epoch {
                    self.model.epoch += 1;
                }
                let recs: Vec<_> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        record(
                            T0 + i as i64,
                            Some(&format!("k{k}")),
                            v.map(|v| format!("v{v}")).as_deref(),
                        )
                    })
                    .collect();
                let b = batch::build_batch(
                    &recs,
                    &BatchOptions {
                        compression: codec(*c),
                        ..Default::default()
                    },
                )
                .expect("batch");
                let epoch = self.model.epoch;
                let info = self.log().append(&b, epoch).expect("append");
                let m = &mut self.model;
                prop_assert_eq!(info.first_offset, m.leo);
                prop_assert_eq!(info.first_entry_index, m.next_entry);
                let recs = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| (m.leo + i as u64, *k, *v, false))
                    .collect();
                m.batches.push(ModelBatch {
                    base: m.leo,
                    last: (m.leo + records.len() as u64) as i64 - 1,
                    epoch,
                    entry: m.next_entry,
                    kind: Kind::Plain,
                    records: recs,
                });
                m.leo += records.len() as u64;
                m.next_entry += 1;
            }
            Op::TxnAppend {
                producer,
                records,
                codec: c,
            } => {
                let pid = 100 + i64::from(*producer);
                let seq = *self.model.next_seq.get(&pid).unwrap_or(&0);
                self.model.next_seq.insert(pid, seq + records.len() as i32);
                let recs: Vec<_> = records
                    .iter()
                    .map(|(k, v)| {
                        record(
                            T0,
                            Some(&format!("k{k}")),
                            v.map(|v| format!("v{v}")).as_deref(),
                        )
                    })
                    .collect();
                let b = batch::build_batch(
                    &recs,
                    &BatchOptions {
                        compression: codec(*c),
                        producer_id: pid,
                        producer_epoch: 0,
                        base_sequence: seq,
                        transactional: true,
                        ..Default::default()
                    },
                )
                .expect("transactional batch");
                let epoch = self.model.epoch;
                let info = self.log().append(&b, epoch).expect("append txn");
                let m = &mut self.model;
                prop_assert_eq!(info.first_offset, m.leo);
                let recs = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| (m.leo + i as u64, *k, *v, false))
                    .collect();
                m.batches.push(ModelBatch {
                    base: m.leo,
                    last: (m.leo + records.len() as u64) as i64 - 1,
                    epoch,
                    entry: m.next_entry,
                    kind: Kind::Txn(pid),
                    records: recs,
                });
                m.leo += records.len() as u64;
                m.next_entry += 1;
            }
            Op::TxnEnd { producer, commit } => {
                let pid = 100 + i64::from(*producer);
                let check = self.log().check_end_txn_marker(pid, 0, 0);
                prop_assert_eq!(check, Ok(()));
                let marker = batch::build_end_txn_marker(*commit, pid, 0, 0, T0).expect("marker");
                let epoch = self.model.epoch;
                let info = self.log().append(&marker, epoch).expect("append marker");
                let m = &mut self.model;
                prop_assert_eq!(info.first_offset, m.leo);
                m.batches.push(ModelBatch {
                    base: m.leo,
                    last: m.leo as i64,
                    epoch,
                    entry: m.next_entry,
                    kind: Kind::Marker(pid, *commit),
                    records: Vec::new(),
                });
                m.leo += 1;
                m.next_entry += 1;
            }
            Op::Noop => {
                self.model.epoch += 1;
                let noop =
                    batch::build_raft_control_batch(batch::control_type::LEADER_CHANGE, None, T0)
                        .expect("noop");
                let epoch = self.model.epoch;
                let info = self.log().append(&noop, epoch).expect("append noop");
                let m = &mut self.model;
                prop_assert_eq!(info.first_offset, m.leo);
                prop_assert_eq!(info.first_entry_index, m.next_entry);
                m.batches.push(ModelBatch {
                    base: m.leo,
                    last: m.leo as i64 - 1,
                    epoch,
                    entry: m.next_entry,
                    kind: Kind::ZeroWidth,
                    records: Vec::new(),
                });
                m.next_entry += 1;
            }
            Op::Read { at, max_bytes } => {
                let span = self.model.leo - self.model.log_start + 1;
                let offset = self.model.log_start + u64::from(*at) % span;
                let max_bytes = usize::from(*max_bytes % 2048);
                let bytes = self.log().read(offset, max_bytes, u64::MAX).expect("read");
                let got = batches(&bytes);
                if offset < self.model.leo {
                    prop_assert!(!got.is_empty(), "read at {} returned nothing", offset);
                    prop_assert!(
                        got[0].last_offset() as u64 >= offset,
                        "first batch ends before {}",
                        offset
                    );
                    if got.len() > 1 {
                        prop_assert!(
                            bytes.len() <= max_bytes,
                            "{} bytes for max {}",
                            bytes.len(),
                            max_bytes
                        );
                    }
                } else {
                    prop_assert!(got.is_empty());
                }
                self.check_records(&bytes)?;
                if self.model.log_start > 0 {
                    let start = self.model.log_start;
                    let below = self.log().read(start - 1, 100, u64::MAX);
                    let out_of_range = matches!(below, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(out_of_range, "read below the log start must fail");
                }
            }
            Op::Truncate { at } => {
                let low = self.model.log_start.max(self.model.min_truncate);
                if low > self.model.leo {
                    return Ok(());
                }
                let to = low + u64::from(*at) % (self.model.leo - low + 1);
                self.log().truncate_to(to).expect("truncate");
                let new_leo = self
                    .model
                    .batches
                    .iter()
                    .find(|b| b.last >= to as i64)
                    .map_or(self.model.leo, |b| b.base);
                self.model.truncate(new_leo);
                self.mark_durable();
            }
            Op::AdvanceStart { at } => {
                let span = self.model.leo - self.model.log_start + 1;
                // Never into a transaction: a log replaying from its start (no snapshot at or
                // above it) cannot see where such a transaction began, as in Kafka.
                let to = self.model.log_start + u64::from(*at) % span;
                let to = self
                    .model
                    .txn_state()
                    .outside_transactions(to)
                    .max(self.model.log_start);
                self.log().advance_log_start_offset(to).expect("advance");
                self.model.log_start = to;
                self.model.min_truncate = self.model.min_truncate.max(to);
            }
            Op::Roll => {
                self.log().roll().expect("roll");
                self.mark_durable();
            }
            Op::Flush => {
                self.log().flush().expect("flush");
                self.mark_durable();
            }
            Op::Compact { bound } => {
                let span = self.model.leo - self.model.log_start + 1;
                let bound = self.model.log_start + u64::from(*bound) % span;
                self.log()
                    .compact(&CleanerConfig::default(), bound)
                    .expect("compact");
                self.model.min_truncate = self.model.min_truncate.max(bound);
                // The cleaner never passes an open transaction.
                let txns = self.model.txn_state();
                let bound = txns.ongoing.keys().next().map_or(bound, |&f| bound.min(f));
                let aborted = |b: &ModelBatch| match b.kind {
                    Kind::Txn(pid) => txns.is_aborted(pid, b.base),
                    _ => false,
                };
                // Aborted records below the bound may be gone, and so may any record with a
                // later committed (or non-transactional) record of the same key below it.
                let mut latest: HashMap<u8, u64> = HashMap::new();
                for b in self.model.batches.iter().filter(|b| !aborted(b)) {
                    for r in &b.records {
                        if r.0 < bound {
                            latest.insert(r.1, r.0);
                        }
                    }
                }
                for b in &mut self.model.batches {
                    let is_aborted = aborted(b);
                    for r in &mut b.records {
                        if r.0 < bound && (is_aborted || latest.get(&r.1).is_some_and(|&l| l > r.0))
                        {
                            r.3 = true;
                        }
                    }
                }
            }
            Op::Reopen => {
                self.log.take().expect("open").close().expect("close");
                self.log = Some(open(self.dir.path(), config(), &self.clock));
                self.mark_durable();
            }
            Op::Crash { cut } => {
                let path = self.active_path();
                let len = std::fs::metadata(&path).expect("stat").len();
                let active_base = *self
                    .log
                    .as_ref()
                    .expect("open")
                    .segment_base_offsets()
                    .last()
                    .expect("seg");
                let (durable_base, durable_leo) = self.model.durable;
                drop(self.log.take());
                // Only bytes written since the last durability point may be lost.
                let floor = if durable_base == active_base {
                    let log_positions = read_batch_ends(&path);
                    log_positions
                        .iter()
                        .filter(|(_, next)| *next <= durable_leo)
                        .map(|(end, _)| *end)
                        .max()
                        .unwrap_or(0)
                } else {
                    0
                };
                let cut_at = floor + u64::from(*cut) % (len - floor + 1);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open")
                    .set_len(cut_at)
                    .expect("cut");
                self.log = Some(open(self.dir.path(), config(), &self.clock));
                let leo = self.log().log_end_offset();
                let expected_min = if durable_base == active_base {
                    durable_leo
                } else {
                    active_base
                };
                prop_assert!(
                    leo >= expected_min.min(self.model.leo),
                    "crash lost durable data: leo {} < {}",
                    leo,
                    expected_min
                );
                prop_assert!(leo <= self.model.leo);
                prop_assert!(
                    self.model.batches.iter().any(|b| b.base == leo) || leo == self.model.leo,
                    "crash recovery ended inside a batch at {}",
                    leo
                );
                self.model.truncate(leo);
                // A zero-width batch at the new end may or may not have survived the cut.
                let entries = self.log().next_entry_index();
                while self.model.next_entry > entries
                    && self
                        .model
                        .batches
                        .last()
                        .is_some_and(|b| b.kind == Kind::ZeroWidth)
                {
                    self.model.batches.pop();
                    self.model.next_entry -= 1;
                }
                self.mark_durable();
            }
        }
        self.check_all()
    }

    fn check_records(&self, bytes: &[u8]) -> Result<(), TestCaseError> {
        let got = records(bytes);
        let model: HashMap<u64, (u8, Option<u8>)> = self
            .model
            .batches
            .iter()
            .flat_map(|b| b.records.iter().map(|r| (r.0, (r.1, r.2))))
            .collect();
        for (offset, key, value) in &got {
            let Some((k, v)) = model.get(offset) else {
                return Err(TestCaseError::fail(format!(
                    "record at {offset} not in the model"
                )));
            };
            prop_assert_eq!(key.clone(), Some(format!("k{k}").into_bytes()));
            prop_assert_eq!(value.clone(), v.map(|v| format!("v{v}").into_bytes()));
        }
        Ok(())
    }

    /// The log's transactions agree with a replay of the model's batches, once the high
    /// watermark is at the log end (so only open transactions are unstable).
    fn check_transactions(&mut self) -> Result<(), TestCaseError> {
        let model_leo = self.model.leo;
        let model_start = self.model.log_start;
        let txns = self.model.txn_state();
        let log = self.log();
        log.on_high_watermark(model_leo);
        let unstable = txns.ongoing.keys().next().map(|&f| f.max(model_start));
        prop_assert_eq!(log.first_unstable_offset(), unstable);
        prop_assert_eq!(
            log.last_stable_offset(model_leo),
            unstable.map_or(model_leo, |u| u.min(model_leo))
        );
        let expected: Vec<AbortedTxn> = txns
            .aborted
            .iter()
            .filter(|t| t.last_offset >= model_start)
            .copied()
            .collect();
        prop_assert_eq!(log.aborted_transactions(model_start, u64::MAX), expected);
        Ok(())
    }

    fn check_all(&mut self) -> Result<(), TestCaseError> {
        self.check_transactions()?;
        let model_leo = self.model.leo;
        let model_start = self.model.log_start;
        let log = self.log.as_ref().expect("open");
        prop_assert_eq!(log.log_end_offset(), model_leo);
        prop_assert_eq!(log.log_start_offset(), model_start);
        prop_assert_eq!(log.next_entry_index(), self.model.next_entry);
        let bytes = log
            .read(model_start, usize::MAX, u64::MAX)
            .expect("read all");
        self.check_records(&bytes)?;
        let got: std::collections::HashSet<u64> =
            records(&bytes).into_iter().map(|r| r.0).collect();
        for b in &self.model.batches {
            for r in &b.records {
                if r.0 >= model_start && !r.3 {
                    prop_assert!(
                        got.contains(&r.0),
                        "record at {} (key {}) is missing",
                        r.0,
                        r.1
                    );
                }
            }
        }
        let log = self.log.as_ref().expect("open");
        let first = log.first_entry_index();
        let next = log.next_entry_index();
        let entries = log.entries(first, next, usize::MAX).unwrap_or_else(|e| {
            panic!(
                "entries {first}..{next}: {e}; segments {:?}; ops so far",
                log.segment_base_offsets()
            )
        });
        prop_assert_eq!(entries.len() as u64, next - first);
        let by_entry: HashMap<u64, &ModelBatch> =
            self.model.batches.iter().map(|b| (b.entry, b)).collect();
        for e in &entries {
            let Some(b) = by_entry.get(&e.index) else {
                return Err(TestCaseError::fail(format!(
                    "entry {} not in the model",
                    e.index
                )));
            };
            let h = batch::BatchHeader::parse(&e.data).expect("entry header");
            prop_assert_eq!(h.base_offset as u64, b.base);
            prop_assert_eq!(e.epoch, b.epoch);
            prop_assert_eq!(log.entry_epoch(e.index).expect("term"), b.epoch);
        }
        if let Some(latest) = log.latest_epoch() {
            prop_assert_eq!(log.end_offset_for_epoch(latest), (latest, model_leo as i64));
        }
        Ok(())
    }
}

/// `(end position, next offset)` of every complete batch in a segment file.
fn read_batch_ends(path: &std::path::Path) -> Vec<(u64, u64)> {
    let raw = std::fs::read(path).expect("read segment");
    batch::BatchIter::new(&raw)
        .map(|(at, h)| ((at + h.size()) as u64, h.next_offset() as u64))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_agrees_with_model(ops in prop::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let log = open(dir.path(), config(), &clock);
        let mut h = Harness { dir, clock, log: Some(log), model: Model { next_entry: 1, ..Model::default() } };
        for op in &ops {
            h.apply(op)?;
        }
    }
}
