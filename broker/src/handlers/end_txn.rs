//! EndTxn (key 26): commit or abort. The decision (PrepareCommit or PrepareAbort) is stored
//! before the answer; the markers to every partition of the transaction, and the final
//! CompleteCommit or CompleteAbort, follow in the background. Until then the transactional id
//! answers CONCURRENT_TRANSACTIONS, which clients retry.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};
use runnel_protocol::kafka_protocol::ResponseError;

use super::add_partitions_to_txn::versioned;
use crate::group::now_ms;
use crate::txn::state::{self, End};
use crate::txn::{spawn_complete, start_write};
use crate::Broker;

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
            spawn_complete(broker, prepared, epoch);
            respond(0)
        }
        Err(code) => respond(code),
    }
}
