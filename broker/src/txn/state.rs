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
    /// Transactions V2: the producer id the transaction being ended rotates to once its
    /// markers are written (its epoch was exhausted), or -1.
    pub next_producer_id: i64,
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
    /// The transaction version (`transaction.version`) of the request behind the last
    /// transition: 2 when the client uses Transactions V2 (KIP-890 part 2), whose EndTxn bumps
    /// the epoch and whose retries are recognised by it (Kafka's `clientTransactionVersion`).
    pub client_transaction_version: i16,
}

impl TxnMetadata {
    /// A transactional id seen for the first time: a fresh producer id at "no epoch" (-1), so
    /// the first InitProducerId bumps it to 0.
    pub fn new(transactional_id: String, producer_id: i64, timeout_ms: i32, now: i64) -> Self {
        TxnMetadata {
            transactional_id,
            producer_id,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: -1,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now,
            pending: false,
            client_transaction_version: 0,
        }
    }

    pub fn from_value(transactional_id: String, v: &TxnLogValue) -> Self {
        TxnMetadata {
            transactional_id,
            producer_id: v.producer_id,
            previous_producer_id: v.previous_producer_id,
            next_producer_id: v.next_producer_id,
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
            client_transaction_version: v.client_transaction_version,
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
            next_producer_id: self.next_producer_id,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            state: self.state,
            partitions,
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
            client_transaction_version: self.client_transaction_version,
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

    /// Whether the last transition came from a Transactions V2 client (Kafka's
    /// `clientTransactionVersion.supportsEpochBump`).
    pub fn is_v2(&self) -> bool {
        self.client_transaction_version >= 2
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
///
/// `server_tv` is this broker's finalized `transaction.version`: the abort of a transaction
/// this fences is the coordinator's own, so it follows the server's version, as in Kafka.
pub fn init_producer_id(
    m: &TxnMetadata,
    timeout_ms: i32,
    expected: Expected,
    fresh_producer_id: Option<i64>,
    server_tv: i16,
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
            let mut target = fence(m, server_tv, now);
            target.timeout_ms = m.timeout_ms;
            Ok(Init::FenceOngoing(target))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let mut target = m.with(TxnState::Empty, now);
            target.timeout_ms = timeout_ms;
            target.partitions.clear();
            target.start_ms = -1;
            target.next_producer_id = -1;
            // Kafka's InitProducerId transition carries TV_0: the next EndTxn's version decides.
            target.client_transaction_version = 0;
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
/// own abort of a timed-out transaction, or of one a new incarnation found open. Kafka's
/// `prepareFenceProducerEpoch` followed by `prepareAbortOrCommit` with the server's
/// transaction version: at `transaction.version` 2 the abort bumps the epoch once more, as
/// every V2 end of a transaction does, so a V2 producer retrying its EndTxn with the epoch it
/// had is fenced rather than taken for a retry.
pub fn fence(m: &TxnMetadata, server_tv: i16, now: i64) -> TxnMetadata {
    let mut target = m.with(TxnState::PrepareAbort, now);
    // Up to i16::MAX, as Kafka's prepareFenceProducerEpoch: the next InitProducerId then
    // rotates the producer id.
    if m.producer_epoch < i16::MAX {
        target.producer_epoch = m.producer_epoch + 1;
    }
    // Kafka's prepareFenceProducerEpoch: the fenced epoch is not a "retry" epoch, so the
    // zombie cannot come back with KIP-360.
    target.last_producer_epoch = -1;
    target.next_producer_id = -1;
    target.client_transaction_version = server_tv;
    if server_tv >= 2 && target.producer_epoch < i16::MAX {
        target.last_producer_epoch = target.producer_epoch;
        target.producer_epoch += 1;
    }
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

/// AddPartitionsToTxn and AddOffsetsToTxn, and under Transactions V2 the partition leaders'
/// and group coordinators' implicit adds (`tv` 2): `None` when every partition is already in
/// the ongoing transaction (nothing to write).
pub fn add_partitions(
    m: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
    tv: i16,
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
            target.client_transaction_version = tv;
            Ok(Some(target))
        }
    }
}

/// What EndTxn does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Write PrepareCommit/PrepareAbort, answer, then write the markers.
    Prepare(TxnMetadata),
    /// A retry of an EndTxn that already completed: success, with the producer id and epoch
    /// the transactional id has now (EndTxn v5 returns them).
    AlreadyDone {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// A V2 end of a transaction whose epoch is exhausted: call again with a fresh producer
    /// id for it to rotate to.
    NeedProducerId,
}

impl TxnMetadata {
    /// The producer id and epoch a V2 client continues with once this prepared transaction
    /// completes (EndTxn v5's answer): the next producer id at epoch 0 after a rotation.
    pub fn continues_as(&self) -> (i64, i16) {
        if self.is_v2() && self.next_producer_id >= 0 {
            (self.next_producer_id, 0)
        } else {
            (self.producer_id, self.producer_epoch)
        }
    }
}

/// EndTxn from a client (Kafka 4's `endTransaction`). `tv` is the client's transaction
/// version: 2 for EndTxn v5+, whose commit or abort bumps the producer epoch (KIP-890 part 2),
/// else 0. Retries are told apart as Kafka does: under V2 the epoch alone separates a retry
/// (the client's epoch is one behind the stored one, or it overflowed into a new producer id)
/// from the next transaction's end (the same epoch).
pub fn end_txn(
    m: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    tv: i16,
    fresh_producer_id: Option<i64>,
    now: i64,
) -> Result<End, i16> {
    if m.state == TxnState::Dead {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    let v2 = m.is_v2();
    let retry_on_overflow = v2
        && m.previous_producer_id == producer_id
        && producer_epoch == MAX_EPOCH
        && m.producer_epoch == 0;
    let retry_on_bump = v2 && i32::from(m.producer_epoch) == i32::from(producer_epoch) + 1;
    if m.producer_id != producer_id && !retry_on_overflow {
        return Err(code(ResponseError::InvalidProducerIdMapping));
    }
    let same_epoch = m.producer_epoch == producer_epoch && m.producer_id == producer_id;
    let valid_epoch = if v2 {
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => retry_on_bump,
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                retry_on_bump || retry_on_overflow || same_epoch
            }
            _ => same_epoch,
        }
    } else {
        same_epoch
    };
    if !valid_epoch {
        return Err(code(ResponseError::ProducerFenced));
    }
    if m.pending {
        return Err(code(ResponseError::ConcurrentTransactions));
    }
    // Under V1 the same epoch is the only retry there is.
    let retry = !v2 || retry_on_bump || retry_on_overflow;
    let invalid = Err(code(ResponseError::InvalidTxnState));
    let done = Ok(End::AlreadyDone {
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
    });
    match (m.state, commit) {
        (TxnState::Ongoing, _) => prepare_end(m, commit, tv, fresh_producer_id, now),
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) if retry => done,
        // A V2 client aborts a transaction the coordinator never saw a partition of (its first
        // produce failed before reaching it): an abort without markers, with the epoch bump
        // the client expects.
        (TxnState::Empty, false) if tv >= 2 => prepare_end(m, false, tv, fresh_producer_id, now),
        (TxnState::CompleteCommit | TxnState::CompleteAbort, false)
            if tv >= 2 && !retry_on_bump && !retry_on_overflow =>
        {
            prepare_end(m, false, tv, fresh_producer_id, now)
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(code(ResponseError::ConcurrentTransactions))
        }
        (TxnState::PrepareEpochFence, _) => Err(code(ResponseError::ConcurrentTransactions)),
        _ => invalid,
    }
}

/// PrepareCommit or PrepareAbort (Kafka's `prepareAbortOrCommit`); V2 bumps the epoch and, when
/// it is exhausted, names the producer id to rotate to after the markers.
fn prepare_end(
    m: &TxnMetadata,
    commit: bool,
    tv: i16,
    fresh_producer_id: Option<i64>,
    now: i64,
) -> Result<End, i16> {
    let state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    let mut target = m.with(state, now);
    target.client_transaction_version = tv;
    target.next_producer_id = -1;
    if m.state != TxnState::Ongoing {
        // An empty V2 abort: Kafka starts (and at once ends) a transaction with no partitions.
        target.partitions.clear();
        target.start_ms = now;
    }
    if tv >= 2 {
        if m.producer_epoch >= MAX_EPOCH {
            let Some(id) = fresh_producer_id else {
                return Ok(End::NeedProducerId);
            };
            target.next_producer_id = id;
        }
        let Some(bumped) = m.producer_epoch.checked_add(1) else {
            return Err(code(ResponseError::ProducerFenced));
        };
        target.last_producer_epoch = m.producer_epoch;
        target.producer_epoch = bumped;
    }
    Ok(End::Prepare(target))
}

/// After every marker is written: CompleteCommit or CompleteAbort, holding no partitions. A V2
/// transaction whose epoch was exhausted moves to its next producer id at epoch 0 (Kafka's
/// `prepareComplete`).
pub fn complete(m: &TxnMetadata, now: i64) -> TxnMetadata {
    let state = if m.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    let mut target = m.with(state, now);
    target.partitions.clear();
    if m.is_v2() {
        target.last_producer_epoch = m.producer_epoch;
        if m.next_producer_id >= 0 {
            target.previous_producer_id = m.producer_id;
            target.producer_id = m.next_producer_id;
            target.producer_epoch = 0;
        }
    }
    target.next_producer_id = -1;
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
        match init_producer_id(&m, 60_000, Expected::NONE, None, 0, 1) {
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
        let Ok(Init::Write(again)) = init_producer_id(&m, 60_000, Expected::NONE, None, 0, 2)
        else {
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
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0), tp("t", 1)], 0, 5)
            .expect("add")
            .expect("write");
        assert_eq!(
            (on.state, on.start_ms, on.partitions.len()),
            (TxnState::Ongoing, 5, 2)
        );
        assert_eq!(
            add_partitions(&on, 1000, 0, &[tp("t", 1)], 0, 6),
            Ok(None),
            "already included"
        );
        let End::Prepare(prep) = end_txn(&on, 1000, 0, true, 0, None, 7).expect("end") else {
            panic!("prepare");
        };
        assert_eq!(prep.state, TxnState::PrepareCommit);
        assert_eq!(
            end_txn(&prep, 1000, 0, true, 0, None, 8),
            Err(ResponseError::ConcurrentTransactions.code())
        );
        assert_eq!(
            end_txn(&prep, 1000, 0, false, 0, None, 8),
            Err(ResponseError::InvalidTxnState.code())
        );
        assert_eq!(
            add_partitions(&prep, 1000, 0, &[tp("t", 2)], 0, 8),
            Err(ResponseError::ConcurrentTransactions.code())
        );
        let done = complete(&prep, 9);
        assert_eq!(
            (done.state, done.partitions.len()),
            (TxnState::CompleteCommit, 0)
        );
        assert_eq!(
            end_txn(&done, 1000, 0, true, 0, None, 10),
            Ok(End::AlreadyDone {
                producer_id: 1000,
                producer_epoch: 0
            })
        );
        assert_eq!(
            end_txn(&done, 1000, 0, false, 0, None, 10),
            Err(ResponseError::InvalidTxnState.code())
        );
        let next = add_partitions(&done, 1000, 0, &[tp("u", 0)], 0, 11)
            .expect("add")
            .expect("write");
        assert_eq!(next.partitions.len(), 1, "a new transaction starts empty");
        assert_eq!(next.start_ms, 11);
    }

    #[test]
    fn wrong_producers_and_states_get_kafkas_errors() {
        let m = initialised();
        assert_eq!(
            add_partitions(&m, 999, 0, &[tp("t", 0)], 0, 1),
            Err(ResponseError::InvalidProducerIdMapping.code())
        );
        assert_eq!(
            add_partitions(&m, 1000, 5, &[tp("t", 0)], 0, 1),
            Err(ResponseError::ProducerFenced.code())
        );
        assert_eq!(
            end_txn(&m, 1000, 0, true, 0, None, 1),
            Err(ResponseError::InvalidTxnState.code()),
            "nothing to end"
        );
        let mut pending = m.clone();
        pending.pending = true;
        assert_eq!(
            add_partitions(&pending, 1000, 0, &[tp("t", 0)], 0, 1),
            Err(ResponseError::ConcurrentTransactions.code())
        );
    }

    #[test]
    fn init_during_an_open_transaction_fences_and_aborts_it() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 0, 5)
            .expect("add")
            .expect("write");
        let Ok(Init::FenceOngoing(f)) = init_producer_id(&on, 60_000, Expected::NONE, None, 0, 6)
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
            add_partitions(&aborted, 1000, 0, &[tp("t", 0)], 0, 8),
            Err(ResponseError::ProducerFenced.code()),
            "the zombie is fenced"
        );
        let Ok(Init::Write(next)) = init_producer_id(&aborted, 60_000, Expected::NONE, None, 0, 9)
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
            init_producer_id(&m, 1000, Expected::NONE, None, 0, 1),
            Ok(Init::NeedProducerId)
        );
        let Ok(Init::Write(r)) = init_producer_id(&m, 1000, Expected::NONE, Some(2000), 0, 1)
        else {
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
        let on = add_partitions(&m, 1000, MAX_EPOCH, &[tp("t", 0)], 0, 5)
            .expect("add")
            .expect("write");
        let f = fence(&on, 0, 6);
        assert_eq!(f.producer_epoch, i16::MAX, "the zombie's epoch is passed");
        let done = complete(&f, 7);
        assert_eq!(
            add_partitions(&done, 1000, MAX_EPOCH, &[tp("t", 0)], 0, 8),
            Err(ResponseError::ProducerFenced.code())
        );
        let Ok(Init::Write(r)) = init_producer_id(&done, 1000, Expected::NONE, Some(2000), 0, 9)
        else {
            panic!("rotation");
        };
        assert_eq!((r.producer_id, r.producer_epoch), (2000, 0));
        let retry = Expected {
            producer_id: 1000,
            producer_epoch: MAX_EPOCH,
        };
        let Ok(Init::Write(again)) = init_producer_id(&r, 1000, retry, None, 0, 10) else {
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
        let Ok(Init::Write(b)) = init_producer_id(&m, 1000, current, None, 0, 1) else {
            panic!("bump");
        };
        assert_eq!(b.producer_epoch, 1);
        let Ok(Init::Write(retry)) = init_producer_id(&b, 1000, current, None, 0, 2) else {
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
            init_producer_id(&b, 1000, stranger, None, 0, 3),
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
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 0, 5)
            .expect("add")
            .expect("write");
        assert_eq!(verify(&on, 1000, 0, &tp("t", 0)), Ok(()));
        assert_eq!(
            verify(&on, 1000, 0, &tp("t", 1)),
            Err(ResponseError::TransactionAbortable.code())
        );
        let f = fence(&on, 0, 6);
        assert_eq!(
            verify(&f, 1000, 0, &tp("t", 0)),
            Err(ResponseError::ProducerFenced.code())
        );
    }

    #[test]
    fn timeouts_and_expiry() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 0, 5)
            .expect("add")
            .expect("write");
        assert!(!on.timed_out(5 + 60_000));
        assert!(on.timed_out(5 + 60_001));
        assert!(!on.expired(i64::MAX, 1), "open transactions never expire");
        assert!(m.expired(1 + 100, 100));
        assert!(!m.expired(1 + 99, 100));
    }

    /// A V2 transaction on `partitions` at the producer's current epoch.
    fn ongoing_v2(m: &TxnMetadata, partitions: &[(String, i32)], now: i64) -> TxnMetadata {
        add_partitions(m, m.producer_id, m.producer_epoch, partitions, 2, now)
            .expect("add")
            .expect("write")
    }

    #[test]
    fn v2_ends_bump_the_epoch_and_retries_with_the_old_epoch_are_recognised() {
        let m = initialised();
        let on = ongoing_v2(&m, &[tp("t", 0), tp("t", 1)], 5);
        assert_eq!(on.client_transaction_version, 2);
        let Ok(End::Prepare(prep)) = end_txn(&on, 1000, 0, true, 2, None, 6) else {
            panic!("prepare");
        };
        assert_eq!(
            (prep.state, prep.producer_epoch, prep.last_producer_epoch),
            (TxnState::PrepareCommit, 1, 0),
            "the markers are written with the bumped epoch"
        );
        assert_eq!(prep.continues_as(), (1000, 1));
        assert_eq!(prep.partitions.len(), 2);
        assert_eq!(
            end_txn(&prep, 1000, 0, true, 2, None, 7),
            Err(ResponseError::ConcurrentTransactions.code()),
            "a retry while the markers are written"
        );
        assert_eq!(
            end_txn(&prep, 1000, 1, true, 2, None, 7),
            Err(ResponseError::ProducerFenced.code()),
            "the bumped epoch cannot end a transaction that is not its own"
        );
        let done = complete(&prep, 8);
        assert_eq!(
            (done.state, done.producer_epoch, done.partitions.len()),
            (TxnState::CompleteCommit, 1, 0)
        );
        assert_eq!(
            end_txn(&done, 1000, 0, true, 2, None, 9),
            Ok(End::AlreadyDone {
                producer_id: 1000,
                producer_epoch: 1
            }),
            "a retry after completion answers with the new epoch"
        );
        assert_eq!(
            end_txn(&done, 1000, 0, false, 2, None, 9),
            Err(ResponseError::InvalidTxnState.code())
        );
        assert_eq!(
            add_partitions(&done, 1000, 0, &[tp("t", 0)], 2, 9),
            Err(ResponseError::ProducerFenced.code()),
            "the old epoch is fenced"
        );
        assert_eq!(
            verify(&done, 1000, 0, &tp("t", 0)),
            Err(ResponseError::ProducerFenced.code())
        );
        let next = ongoing_v2(&done, &[tp("t", 1)], 10);
        assert_eq!(
            (next.state, next.start_ms, next.partitions.len()),
            (TxnState::Ongoing, 10, 1)
        );
        let Ok(End::Prepare(abort)) = end_txn(&next, 1000, 1, false, 2, None, 11) else {
            panic!("abort");
        };
        assert_eq!(
            (abort.state, abort.producer_epoch),
            (TxnState::PrepareAbort, 2)
        );
    }

    #[test]
    fn v1_ends_keep_the_epoch_on_a_v2_broker() {
        let m = initialised();
        let on = add_partitions(&m, 1000, 0, &[tp("t", 0)], 0, 5)
            .expect("add")
            .expect("write");
        let Ok(End::Prepare(prep)) = end_txn(&on, 1000, 0, true, 0, None, 6) else {
            panic!("prepare");
        };
        assert_eq!(
            (prep.producer_epoch, prep.client_transaction_version),
            (0, 0)
        );
        let done = complete(&prep, 7);
        assert_eq!(done.producer_epoch, 0);
        assert_eq!(
            end_txn(&done, 1000, 0, true, 0, None, 8),
            Ok(End::AlreadyDone {
                producer_id: 1000,
                producer_epoch: 0
            })
        );
        assert_eq!(
            end_txn(&m, 1000, 0, false, 0, None, 8),
            Err(ResponseError::InvalidTxnState.code()),
            "V1 cannot abort what never started"
        );
    }

    #[test]
    fn v2_exhausted_epochs_rotate_the_producer_id_after_the_markers() {
        let mut m = initialised();
        m.producer_epoch = MAX_EPOCH;
        let on = ongoing_v2(&m, &[tp("t", 0)], 5);
        assert_eq!(
            end_txn(&on, 1000, MAX_EPOCH, true, 2, None, 6),
            Ok(End::NeedProducerId)
        );
        let Ok(End::Prepare(prep)) = end_txn(&on, 1000, MAX_EPOCH, true, 2, Some(2000), 6) else {
            panic!("prepare");
        };
        assert_eq!(
            (prep.producer_id, prep.producer_epoch, prep.next_producer_id),
            (1000, i16::MAX, 2000),
            "markers still go out under the old producer id"
        );
        assert_eq!(prep.continues_as(), (2000, 0));
        let stored = TxnMetadata::from_value(prep.transactional_id.clone(), &prep.to_value());
        assert_eq!(
            (stored.next_producer_id, stored.client_transaction_version),
            (2000, 2),
            "a coordinator that loads it rotates too"
        );
        let done = complete(&prep, 7);
        assert_eq!(
            (
                done.producer_id,
                done.producer_epoch,
                done.previous_producer_id,
                done.next_producer_id
            ),
            (2000, 0, 1000, -1)
        );
        assert_eq!(
            end_txn(&done, 1000, MAX_EPOCH, true, 2, None, 8),
            Ok(End::AlreadyDone {
                producer_id: 2000,
                producer_epoch: 0
            }),
            "a retry of the overflowing end gets the new producer id"
        );
        assert_eq!(
            add_partitions(&done, 1000, MAX_EPOCH, &[tp("t", 0)], 2, 9),
            Err(ResponseError::InvalidProducerIdMapping.code())
        );
        let next = ongoing_v2(&done, &[tp("t", 0)], 9);
        assert_eq!(next.producer_id, 2000);
    }

    #[test]
    fn v2_may_abort_a_transaction_the_coordinator_never_saw() {
        let m = initialised();
        let Ok(End::Prepare(prep)) = end_txn(&m, 1000, 0, false, 2, None, 5) else {
            panic!("abort of an empty transaction");
        };
        assert_eq!(
            (
                prep.state,
                prep.producer_epoch,
                prep.partitions.len(),
                prep.start_ms
            ),
            (TxnState::PrepareAbort, 1, 0, 5)
        );
        let done = complete(&prep, 6);
        let Ok(End::Prepare(again)) = end_txn(&done, 1000, 1, false, 2, None, 7) else {
            panic!("an empty abort after an abort");
        };
        assert_eq!(again.producer_epoch, 2);
        assert_eq!(
            end_txn(&done, 1000, 1, true, 2, None, 7),
            Err(ResponseError::InvalidTxnState.code()),
            "nothing to commit"
        );
    }

    #[test]
    fn coordinator_aborts_at_transaction_version_2_bump_twice_and_fence_v2_retries() {
        let m = initialised();
        let on = ongoing_v2(&m, &[tp("t", 0)], 5);
        let f = fence(&on, 2, 6);
        assert_eq!(
            (f.state, f.producer_epoch, f.client_transaction_version),
            (TxnState::PrepareAbort, 2, 2)
        );
        let aborted = complete(&f, 7);
        assert_eq!(
            end_txn(&aborted, 1000, 0, false, 2, None, 8),
            Err(ResponseError::ProducerFenced.code()),
            "the timed-out producer's own end is no retry"
        );
        assert_eq!(
            fence(&on, 0, 6).producer_epoch,
            1,
            "at level 0 and 1 the fence is the only bump"
        );
    }
}
