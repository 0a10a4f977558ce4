//! EndTxn (key 26): commit or abort. The decision (PrepareCommit or PrepareAbort) is stored
//! first; the markers to every partition of the transaction, and the final CompleteCommit or
//! CompleteAbort, follow in the background, and the answer waits for them up to two seconds.
//! Until they are done the transactional id answers CONCURRENT_TRANSACTIONS, which clients
//! retry.
//!
//! v5 is Transactions V2 (KIP-890 part 2): every commit or abort bumps the producer epoch, the
//! markers carry the bumped epoch (so a late write of the ended transaction is fenced), and
//! the answer tells the client the producer id and epoch to continue with, a new producer id
//! at epoch 0 once the epoch is exhausted.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};
use runnel_protocol::kafka_protocol::ResponseError;

use super::add_partitions_to_txn::versioned;
use crate::error::replication_error_code;
use crate::group::now_ms;
use crate::txn::state::{self, End};
use crate::txn::{spawn_complete, start_write, Write};
use crate::Broker;

/// How long EndTxn waits for the markers before answering anyway.
const COMPLETION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The first EndTxn version of Transactions V2 (Kafka's `EndTxnRequest`: "Version 5 enables
/// bumping epoch on every transaction").
const FIRST_V2_VERSION: i16 = 5;

enum Step {
    Done(i64, i16),
    NeedProducerId,
    Write(Write),
}

pub async fn handle(broker: &Arc<Broker>, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let producer_id = request.producer_id.0;
    let producer_epoch = request.producer_epoch;
    let respond = |code: i16, (pid, epoch): (i64, i16)| {
        // ProducerId and ProducerEpoch exist from v5.
        let (pid, epoch) = if version >= FIRST_V2_VERSION {
            (pid, epoch)
        } else {
            (-1, -1)
        };
        EndTxnResponse::default()
            .with_error_code(versioned(code, version, 2))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
    };
    let failed = |code: i16| respond(code, (-1, -1));
    if id.is_empty() {
        return failed(ResponseError::InvalidRequest.code());
    }
    // Kafka: `if (endTxnRequest.version() > 4) TV_2 else TV_0`.
    let tv = if version >= FIRST_V2_VERSION { 2 } else { 0 };
    let mut fresh: Option<i64> = None;
    // At most two rounds: one to allocate the producer id an exhausted epoch rotates to.
    let mut write = None;
    for _ in 0..2 {
        let now = now_ms();
        let step = broker.txns.with_txns(broker, &id, |mut t| {
            let Some(m) = t.txns.get(&id) else {
                return Err(ResponseError::InvalidProducerIdMapping.code());
            };
            match state::end_txn(
                m,
                producer_id,
                producer_epoch,
                request.committed,
                tv,
                fresh,
                now,
            )? {
                End::AlreadyDone {
                    producer_id,
                    producer_epoch,
                } => Ok(Step::Done(producer_id, producer_epoch)),
                End::NeedProducerId => Ok(Step::NeedProducerId),
                End::Prepare(target) => Ok(Step::Write(start_write(broker, &mut t, target))),
            }
        });
        match step {
            Ok(Ok(Step::Done(pid, epoch))) => return respond(0, (pid, epoch)),
            Ok(Ok(Step::NeedProducerId)) => match broker.replication.allocate_producer_id().await {
                Ok(new_id) => fresh = Some(new_id),
                Err(e) => return failed(replication_error_code(&e)),
            },
            Ok(Ok(Step::Write(w))) => {
                write = Some(w);
                break;
            }
            Ok(Err(code)) | Err(code) => return failed(code),
        }
    }
    let Some(w) = write else {
        return failed(ResponseError::ConcurrentTransactions.code());
    };
    let epoch = w.coordinator_epoch();
    match w.finish(broker).await {
        Ok(prepared) => {
            // The decision is durable: success. Kafka answers now, and a client that begins
            // its next transaction at once then gets CONCURRENT_TRANSACTIONS and backs off
            // (librdkafka: retry.backoff.ms, 100 ms). Waiting briefly for the markers, a few
            // milliseconds here, saves that round.
            let continues_as = prepared.continues_as();
            let completed = spawn_complete(broker, prepared, epoch);
            let _ = tokio::time::timeout(COMPLETION_WAIT, completed).await;
            respond(0, continues_as)
        }
        Err(code) => failed(code),
    }
}
