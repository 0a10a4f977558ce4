//! EndTxn (key 26): commit or abort. The decision (PrepareCommit or PrepareAbort) is stored
//! first; the markers to every partition of the transaction, and the final CompleteCommit or
//! CompleteAbort, follow in the background, and the answer waits for them up to two seconds.
//! Until they are done the transactional id answers CONCURRENT_TRANSACTIONS, which clients
//! retry.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};
use runnel_protocol::kafka_protocol::ResponseError;

use super::add_partitions_to_txn::versioned;
use crate::group::now_ms;
use crate::txn::state::{self, End};
use crate::txn::{spawn_complete, start_write};
use crate::Broker;

/// How long EndTxn waits for the markers before answering anyway.
const COMPLETION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn handle(broker: &Arc<Broker>, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let producer_id = request.producer_id.0;
    let producer_epoch = request.producer_epoch;
    let respond = |code: i16| {
        EndTxnResponse::default()
            .with_error_code(versioned(code, version, 2))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if id.is_empty() {
        return respond(ResponseError::InvalidRequest.code());
    }
    let now = now_ms();
    let step = broker.txns.with_txns(broker, &id, |mut t| {
        let Some(m) = t.txns.get(&id) else {
            return Err(ResponseError::InvalidProducerIdMapping.code());
        };
        match state::end_txn(m, producer_id, producer_epoch, request.committed, now)? {
            End::AlreadyDone => Ok(None),
            End::Prepare(target) => Ok(Some(start_write(broker, &mut t, target))),
        }
    });
    let write = match step {
        Ok(Ok(w)) => w,
        Ok(Err(code)) | Err(code) => return respond(code),
    };
    let Some(w) = write else {
        return respond(0);
    };
    let epoch = w.coordinator_epoch();
    match w.finish(broker).await {
        Ok(prepared) => {
            // The decision is durable: success. Kafka answers now, and a client that begins
            // its next transaction at once then gets CONCURRENT_TRANSACTIONS and backs off
            // (librdkafka: retry.backoff.ms, 100 ms). Waiting briefly for the markers, a few
            // milliseconds here, saves that round.
            let completed = spawn_complete(broker, prepared, epoch);
            let _ = tokio::time::timeout(COMPLETION_WAIT, completed).await;
            respond(0)
        }
        Err(code) => respond(code),
    }
}
