//! A transactional id's metadata and its transitions, as Kafka's `TransactionMetadata` and
//! `TransactionCoordinator` decide them. Pure: every function takes the current metadata and
//! `now`, and returns the metadata to write (or the error the client gets); the coordinator
//! writes it to `__transaction_state` and installs it once committed.

use std::collections::BTreeSet;

use runnel_protocol::kafka_protocol::ResponseError;

use super::records::{TxnLogValue, TxnState};

/// Epochs at or above this are exhausted: the next bump takes a new producer id (Kafka's
/// `isEpochExhausted`, `Short.MaxValue - 1`).
pub const MAX_EPOCH: i16 = i16::MAX - 1;

fn code(e: ResponseError) -> i16 {
    e.code()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last rotation (epoch exhaustion), or -1.
    pub previous_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retried InitProducerId is recognised (KIP-360).
    /// Not stored, as in Kafka.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    /// When the ongoing transaction started, or -1.
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// A change is being written: requests meanwhile get CONCURRENT_TRANSACTIONS.
    pub pending: bool,
}

impl TxnMetadata {
    /// A transactional id seen for the first time: a fresh producer id at "no epoch" (-1), so
    /// the first InitProducerId bumps it to 0.
    pub fn new(transactional_id: String, producer_id: i64, timeout_ms: i32, now: i64) -> Self {
        TxnMetadata {
            transactional_id,
            producer_id,
            previous_producer_id: -1,
            producer_epoch: -1,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now,
            pending: false,
        }
    }

    pub fn from_value(transactional_id: String, v: &TxnLogValue) -> Self {
        TxnMetadata {
            transactional_id,
            producer_id: v.producer_id,
            previous_producer_id: v.previous_producer_id,
            producer_epoch: v.producer_epoch,
            last_producer_epoch: -1,
            timeout_ms: v.timeout_ms,
            state: v.state,
            partitions: v
                .partitions
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .collect(),
            start_ms: v.start_ms,
            last_update_ms: v.last_update_ms,
            pending: false,
        }
    }

    pub fn to_value(&self) -> TxnLogValue {
        let mut partitions: Vec<(String, Vec<i32>)> = Vec::new();
        for (t, p) in &self.partitions {
            match partitions.last_mut() {
                Some((last, ps)) if last == t => ps.push(*p),
                _ => partitions.push((t.clone(), vec![*p])),
            }
        }
        TxnLogValue {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: -1,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            state: self.state,
            partitions,
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
            client_transaction_version: 0,
        }
    }

    /// Whether markers must still be written (a coordinator that loads such a transaction
    /// finishes it).
    pub fn is_preparing(&self) -> bool {
        matches!(
            self.state,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence
        )
    }

    /// Whether the transaction has timed out (Kafka only aborts Ongoing ones).
    pub fn timed_out(&self, now: i64) -> bool {
        self.state == TxnState::Ongoing
            && !self.pending
            && now > self.start_ms.saturating_add(i64::from(self.timeout_ms))
    }

    /// Whether the transactional id may be forgotten (`transactional.id.expiration.ms`).
    pub fn expired(&self, now: i64, expiration_ms: i64) -> bool {
        matches!(
            self.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        ) && !self.pending
            && now.saturating_sub(self.last_update_ms) >= expiration_ms
    }

    fn with(&self, state: TxnState, now: i64) -> TxnMetadata {
        TxnMetadata {
            state,
            last_update_ms: now,
            pending: false,
            ..self.clone()
        }
    }
}

/// The producer id and epoch a client sent (KIP-360), `(-1, -1)` when it sent none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl Expected {
    pub const NONE: Expected = Expected {
        producer_id: -1,
        producer_epoch: -1,
    };
}

/// What InitProducerId does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Write this metadata, then answer with its producer id and epoch.
    Write(TxnMetadata),
    /// The epoch is exhausted: call again with a fresh producer id.
    NeedProducerId,
    /// A transaction is open: write this (bumped epoch, PrepareAbort), abort it, and tell the
    /// client CONCURRENT_TRANSACTIONS so it retries once the abort is done.
    FenceOngoing(TxnMetadata),
}

/// Kafka's `isValidProducerId`: whether the producer id and epoch the client sent may bump
/// this transactional id's epoch.
fn valid_expected(m: &TxnMetadata, expected: Expected) -> bool {
    expected == Expected::NONE
        || m.producer_epoch == -1
        || expected.producer_id == m.producer_id
        || (expected.producer_id == m.previous_producer_id && expected.producer_epoch >= MAX_EPOCH)
}

/// InitProducerId with a transactional id (Kafka's `handleInitProducerId`).
pub fn init_producer_id(
    m: &TxnMetadata,
    timeout_ms: i32,
    expected: Expected,
    fresh_producer_id: Option<i64>,
    now: i64,
) -> Result<Init, i16> {
    if m.pending {
        return Err(code(ResponseError::ConcurrentTransactions));
    }
    if !valid_expected(m, expected) {
        return Err(code(ResponseError::ProducerFenced));
    }
    match m.state {
        TxnState::PrepareAbort
        | TxnState::PrepareCommit
        | TxnState::PrepareEpochFence
        | TxnState::Dead => Err(code(ResponseError::ConcurrentTransactions)),
        TxnState::Ongoing => {
            let mut target = fence(m, now);
            target.timeout_ms = m.timeout_ms;
            Ok(Init::FenceOngoing(target))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let mut target = m.with(TxnState::Empty, now);
            target.timeout_ms = timeout_ms;
            target.partitions.clear();
            target.start_ms = -1;
            if expected != Expected::NONE
                && expected.producer_id == m.previous_producer_id
                && expected.producer_epoch >= MAX_EPOCH
                && m.producer_epoch == 0
            {
                // A retry of a rotation that succeeded: answer with the new producer id.
                return Ok(Init::Write(target));
            }
            if m.producer_epoch >= MAX_EPOCH {
                // Rotate to a new producer id, epoch 0 (prepareProducerIdRotation), only for
                // the current producer.
                if expected != Expected::NONE && expected.producer_epoch != m.producer_epoch {
                    return Err(code(ResponseError::ProducerFenced));
                }
                let Some(id) = fresh_producer_id else {
                    return Ok(Init::NeedProducerId);
                };
                target.previous_producer_id = m.producer_id;
                target.producer_id = id;
                target.producer_epoch = 0;
                target.last_producer_epoch = -1;
                return Ok(Init::Write(target));
            }
            // prepareIncrementProducerEpoch.
            if expected == Expected::NONE {
                target.last_producer_epoch = -1;
                target.producer_epoch = m.producer_epoch + 1;
            } else if m.producer_epoch == -1 || expected.producer_epoch == m.producer_epoch {
                target.last_producer_epoch = m.producer_epoch;
                target.producer_epoch = m.producer_epoch + 1;
            } else if expected.producer_epoch == m.last_producer_epoch {
                // A retry of a bump that succeeded: answer with the current epoch.
            } else {
                return Err(code(ResponseError::ProducerFenced));
            }
            Ok(Init::Write(target))
        }
    }
}

/// Bumps the epoch (fencing the current producer) and prepares an abort: the coordinator's
/// own abort of a timed-out transaction, or of one a new incarnation found open.
pub fn fence(m: &TxnMetadata, now: i64) -> TxnMetadata {
    let mut target = m.with(TxnState::PrepareAbort, now);
    // Up to i16::MAX, as Kafka's prepareFenceProducerEpoch: the next InitProducerId then
    // rotates the producer id.
    if m.producer_epoch < i16::MAX {
        target.producer_epoch = m.producer_epoch + 1;
    }
    // Kafka's prepareFenceProducerEpoch: the fenced epoch is not a "retry" epoch, so the
    // zombie cannot come back with KIP-360.
    target.last_producer_epoch = -1;
    target
}

/// The checks every client request about an existing transaction starts with.
fn check_producer(m: &TxnMetadata, producer_id: i64, producer_epoch: i16) -> Result<(), i16> {
    if m.producer_id != producer_id {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    if m.producer_epoch != producer_epoch {
        return Err(code(ResponseError::ProducerFenced));
    }
    if m.pending {
        return Err(code(ResponseError::ConcurrentTransactions));
    }
    Ok(())
}

/// AddPartitionsToTxn and AddOffsetsToTxn: `None` when every partition is already in the
/// ongoing transaction (nothing to write).
pub fn add_partitions(
    m: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
    now: i64,
) -> Result<Option<TxnMetadata>, i16> {
    if m.state == TxnState::Dead {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    check_producer(m, producer_id, producer_epoch)?;
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
            Err(code(ResponseError::ConcurrentTransactions))
        }
        TxnState::Ongoing if partitions.iter().all(|p| m.partitions.contains(p)) => Ok(None),
        _ => {
            let mut target = m.with(TxnState::Ongoing, now);
            if m.state != TxnState::Ongoing {
                target.start_ms = now;
                target.partitions.clear();
            }
            target.partitions.extend(partitions.iter().cloned());
            Ok(Some(target))
        }
    }
}

/// What EndTxn does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Write PrepareCommit/PrepareAbort, answer, then write the markers.
    Prepare(TxnMetadata),
    /// A retry of an EndTxn that already completed: success, nothing to do.
    AlreadyDone,
}

/// EndTxn (Kafka's `endTransaction` from a client).
pub fn end_txn(
    m: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    now: i64,
) -> Result<End, i16> {
    if m.state == TxnState::Dead {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    check_producer(m, producer_id, producer_epoch)?;
    let invalid = Err(code(ResponseError::InvalidTxnState));
    match (m.state, commit) {
        (TxnState::Ongoing, _) => Ok(End::Prepare(m.with(
            if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            },
            now,
        ))),
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(End::AlreadyDone),
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(code(ResponseError::ConcurrentTransactions))
        }
        (TxnState::PrepareEpochFence, _) => Err(code(ResponseError::ConcurrentTransactions)),
        _ => invalid,
    }
}

/// After every marker is written: CompleteCommit or CompleteAbort, holding no partitions.
pub fn complete(m: &TxnMetadata, now: i64) -> TxnMetadata {
    let state = if m.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    let mut target = m.with(state, now);
    target.partitions.clear();
    target
}

/// KIP-890 verification: may this producer write transactional records to `partition` now?
/// Kafka 4's answers (`handleVerifyPartitionsInTransaction`); callers translate them for
/// older client versions.
pub fn verify(
    m: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    partition: &(String, i32),
) -> Result<(), i16> {
    if m.producer_id != producer_id {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    if m.producer_epoch != producer_epoch {
        return Err(code(ResponseError::ProducerFenced));
    }
    if matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
        return Err(code(ResponseError::ConcurrentTransactions));
    }
    if m.state != TxnState::Ongoing || !m.partitions.contains(partition) {
        return Err(code(ResponseError::TransactionAbortable));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initialised() -> TxnMetadata {
        let m = TxnMetadata::new("app".into(), 1000, 60_000, 0);
        match init_producer_id(&m, 60_000, Expected::NONE, None, 1) {
            Ok(Init::Write(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn first_init_gives_epoch_zero_and_each_init_bumps_it() {
        let m = initialised();
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (1000, 0, TxnState::Empty)
        );
        let Ok(Init::Write(again)) = init_producer_id(&m, 60_000, Expected::NONE, None, 2) else {
            panic!("second init");
        };
        assert_eq!(
            again.producer_epoch, 1,
            "a new incarnation fences the old one"
        );
    }

    #[test]
    fn a_transaction_goes_ongoing_prepare_complete() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0), tp("t", 1)], 5)
            .expect("add")
            .expect("write");
        assert_eq!(
            (on.state, on.start_ms, on.partitions.len()),
            (TxnState::Ongoing, 5, 2)
        );
        assert_eq!(
            add_partitions(&on, 1000, 0, &[tp("t", 1)], 6),
            Ok(None),
            "already included"
        );
        let End::Prepare(prep) = end_txn(&on, 1000, 0, true, 7).expect("end") else {
            panic!("prepare");
        };
        assert_eq!(prep.state, TxnState::PrepareCommit);
        assert_eq!(
            end_txn(&prep, 1000, 0, true, 8),
            Err(ResponseError::ConcurrentTransactions.code())
        );
        assert_eq!(
            end_txn(&prep, 1000, 0, false, 8),
            Err(ResponseError::InvalidTxnState.code())
        );
        assert_eq!(
            add_partitions(&prep, 1000, 0, &[tp("t", 2)], 8),
            Err(ResponseError::ConcurrentTransactions.code())
        );
        let done = complete(&prep, 9);
        assert_eq!(
            (done.state, done.partitions.len()),
            (TxnState::CompleteCommit, 0)
        );
        assert_eq!(end_txn(&done, 1000, 0, true, 10), Ok(End::AlreadyDone));
        assert_eq!(
            end_txn(&done, 1000, 0, false, 10),
            Err(ResponseError::InvalidTxnState.code())
        );
        let next = add_partitions(&done, 1000, 0, &[tp("u", 0)], 11)
            .expect("add")
            .expect("write");
        assert_eq!(next.partitions.len(), 1, "a new transaction starts empty");
        assert_eq!(next.start_ms, 11);
    }

    #[test]
    fn wrong_producers_and_states_get_kafkas_errors() {
        let m = initialised();
        assert_eq!(
            add_partitions(&m, 999, 0, &[tp("t", 0)], 1),
            Err(ResponseError::InvalidProducerIdMapping.code())
        );
        assert_eq!(
            add_partitions(&m, 1000, 5, &[tp("t", 0)], 1),
            Err(ResponseError::ProducerFenced.code())
        );
        assert_eq!(
            end_txn(&m, 1000, 0, true, 1),
            Err(ResponseError::InvalidTxnState.code()),
            "nothing to end"
        );
        let mut pending = m.clone();
        pending.pending = true;
        assert_eq!(
            add_partitions(&pending, 1000, 0, &[tp("t", 0)], 1),
            Err(ResponseError::ConcurrentTransactions.code())
        );
    }

    #[test]
    fn init_during_an_open_transaction_fences_and_aborts_it() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 5)
            .expect("add")
            .expect("write");
        let Ok(Init::FenceOngoing(f)) = init_producer_id(&on, 60_000, Expected::NONE, None, 6)
        else {
            panic!("fence");
        };
        assert_eq!((f.state, f.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(
            f.partitions, on.partitions,
            "the abort covers every partition"
        );
        assert_eq!(
            verify(&on, 1000, 0, &tp("t", 0)),
            Ok(()),
            "the old producer was allowed before the fence"
        );
        let aborted = complete(&f, 7);
        assert_eq!(
            add_partitions(&aborted, 1000, 0, &[tp("t", 0)], 8),
            Err(ResponseError::ProducerFenced.code()),
            "the zombie is fenced"
        );
        let Ok(Init::Write(next)) = init_producer_id(&aborted, 60_000, Expected::NONE, None, 9)
        else {
            panic!("init after abort");
        };
        assert_eq!(next.producer_epoch, 2);
    }

    #[test]
    fn exhausted_epochs_rotate_the_producer_id() {
        let mut m = initialised();
        m.producer_epoch = MAX_EPOCH;
        assert_eq!(
            init_producer_id(&m, 1000, Expected::NONE, None, 1),
            Ok(Init::NeedProducerId)
        );
        let Ok(Init::Write(r)) = init_producer_id(&m, 1000, Expected::NONE, Some(2000), 1) else {
            panic!("rotation");
        };
        assert_eq!(
            (r.producer_id, r.producer_epoch, r.previous_producer_id),
            (2000, 0, 1000)
        );
    }

    #[test]
    fn fencing_at_the_last_epoch_still_fences_and_the_next_init_rotates() {
        let mut m = initialised();
        m.producer_epoch = MAX_EPOCH;
        let on = add_partitions(&m, 1000, MAX_EPOCH, &[tp("t", 0)], 5)
            .expect("add")
            .expect("write");
        let f = fence(&on, 6);
        assert_eq!(f.producer_epoch, i16::MAX, "the zombie's epoch is passed");
        let done = complete(&f, 7);
        assert_eq!(
            add_partitions(&done, 1000, MAX_EPOCH, &[tp("t", 0)], 8),
            Err(ResponseError::ProducerFenced.code())
        );
        let Ok(Init::Write(r)) = init_producer_id(&done, 1000, Expected::NONE, Some(2000), 9)
        else {
            panic!("rotation");
        };
        assert_eq!((r.producer_id, r.producer_epoch), (2000, 0));
        let retry = Expected {
            producer_id: 1000,
            producer_epoch: MAX_EPOCH,
        };
        let Ok(Init::Write(again)) = init_producer_id(&r, 1000, retry, None, 10) else {
            panic!("retry of the rotation");
        };
        assert_eq!(
            (again.producer_id, again.producer_epoch),
            (2000, 0),
            "a retried rotation gets the new producer id"
        );
    }

    #[test]
    fn kip360_bumps_only_for_the_current_producer() {
        let m = initialised();
        let current = Expected {
            producer_id: 1000,
            producer_epoch: 0,
        };
        let Ok(Init::Write(b)) = init_producer_id(&m, 1000, current, None, 1) else {
            panic!("bump");
        };
        assert_eq!(b.producer_epoch, 1);
        let Ok(Init::Write(retry)) = init_producer_id(&b, 1000, current, None, 2) else {
            panic!("retry");
        };
        assert_eq!(
            retry.producer_epoch, 1,
            "a retried bump returns the same epoch"
        );
        let stranger = Expected {
            producer_id: 77,
            producer_epoch: 0,
        };
        assert_eq!(
            init_producer_id(&b, 1000, stranger, None, 3),
            Err(ResponseError::ProducerFenced.code())
        );
    }

    #[test]
    fn verification_needs_an_ongoing_transaction_holding_the_partition() {
        let m = initialised();
        assert_eq!(
            verify(&m, 1000, 0, &tp("t", 0)),
            Err(ResponseError::TransactionAbortable.code())
        );
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 5)
            .expect("add")
            .expect("write");
        assert_eq!(verify(&on, 1000, 0, &tp("t", 0)), Ok(()));
        assert_eq!(
            verify(&on, 1000, 0, &tp("t", 1)),
            Err(ResponseError::TransactionAbortable.code())
        );
        let f = fence(&on, 6);
        assert_eq!(
            verify(&f, 1000, 0, &tp("t", 0)),
            Err(ResponseError::ProducerFenced.code())
        );
    }

    #[test]
    fn timeouts_and_expiry() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 5)
            .expect("add")
            .expect("write");
        assert!(!on.timed_out(5 + 60_000));
        assert!(on.timed_out(5 + 60_001));
        assert!(!on.expired(i64::MAX, 1), "open transactions never expire");
        assert!(m.expired(1 + 100, 100));
        assert!(!m.expired(1 + 99, 100));
    }
}
