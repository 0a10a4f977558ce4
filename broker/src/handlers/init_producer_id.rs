//! InitProducerId (key 22): producer ids for idempotent producers, unique across the cluster
//! and across restarts (blocks granted through the metadata log); for transactional
//! producers, the transaction coordinator's id and a bumped epoch that fences every older
//! incarnation, after aborting any transaction left open.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::error::replication_error_code;
use crate::group::now_ms;
use crate::txn::state::{self, Expected, Init, TxnMetadata};
use crate::txn::{spawn_complete, start_write};
use crate::Broker;

fn error(code: i16) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// PRODUCER_FENCED exists from v4 (KIP-588); older clients know INVALID_PRODUCER_EPOCH.
fn versioned(code: i16, version: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() && version < 4 {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let Some(transactional_id) = request.transactional_id.as_ref().map(|t| t.0.to_string()) else {
        return match broker.replication.allocate_producer_id().await {
            // Idempotent producers bump their epoch themselves (KIP-360); a fresh id always
            // starts at epoch 0.
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => error(replication_error_code(&e)),
        };
    };
    if transactional_id.is_empty() {
        return error(ResponseError::InvalidRequest.code());
    }
    let timeout = request.transaction_timeout_ms;
    if timeout <= 0 || timeout > broker.txns.config().max_timeout_ms {
        return error(ResponseError::InvalidTransactionTimeout.code());
    }
    // Kafka: a producer id without an epoch (or the reverse) is malformed.
    if version >= 3 && ((request.producer_id.0 == -1) != (request.producer_epoch == -1)) {
        return error(ResponseError::InvalidRequest.code());
    }
    let expected = if version >= 3 {
        Expected {
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
        }
    } else {
        Expected::NONE
    };
    match init_transactional(broker, &transactional_id, timeout, expected).await {
        Ok(m) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(m.producer_id))
            .with_producer_epoch(m.producer_epoch),
        Err(code) => error(versioned(code, version)),
    }
}

enum Step {
    NeedProducerId,
    Write(crate::txn::Write),
    Fence(crate::txn::Write),
}

async fn init_transactional(
    broker: &Arc<Broker>,
    transactional_id: &str,
    timeout: i32,
    expected: Expected,
) -> Result<TxnMetadata, i16> {
    let mut fresh: Option<i64> = None;
    // At most two rounds: one to allocate a producer id (a new transactional id, or an
    // exhausted epoch), one to use it.
    for _ in 0..3 {
        let now = now_ms();
        let step = broker.txns.with_txns(broker, transactional_id, |mut t| {
            if !t.txns.contains_key(transactional_id) {
                let Some(id) = fresh else {
                    return Ok(Step::NeedProducerId);
                };
                t.txns.insert(
                    transactional_id.to_string(),
                    TxnMetadata::new(transactional_id.to_string(), id, timeout, now),
                );
                fresh = None;
            }
            let Some(m) = t.txns.get(transactional_id) else {
                return Err(ResponseError::UnknownServerError.code());
            };
            match state::init_producer_id(
                m,
                timeout,
                expected,
                fresh,
                broker.txns.config().transaction_version,
                now,
            )? {
                Init::NeedProducerId => Ok(Step::NeedProducerId),
                Init::Write(target) => Ok(Step::Write(start_write(broker, &mut t, target))),
                Init::FenceOngoing(target) => Ok(Step::Fence(start_write(broker, &mut t, target))),
            }
        })??;
        match step {
            Step::NeedProducerId => {
                fresh = Some(
                    broker
                        .replication
                        .allocate_producer_id()
                        .await
                        .map_err(|e| replication_error_code(&e))?,
                );
            }
            Step::Write(w) => return w.finish(broker).await,
            Step::Fence(w) => {
                let epoch = w.coordinator_epoch();
                let prepared = w.finish(broker).await?;
                tracing::info!(
                    transactional_id,
                    "a new producer incarnation aborts the open transaction of the old one"
                );
                drop(spawn_complete(broker, prepared, epoch));
                return Err(ResponseError::ConcurrentTransactions.code());
            }
        }
    }
    Err(ResponseError::ConcurrentTransactions.code())
}
