//! InitProducerId (key 22): producer ids for idempotent producers, unique across the cluster
//! and across restarts (blocks granted through the metadata log). Transactional ids arrive
//! with the transaction coordinator.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::error::replication_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        tracing::info!(
            "InitProducerId with a transactional id: transactions are not supported yet"
        );
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match broker.replication.allocate_producer_id().await {
        // Idempotent producers bump their epoch themselves (KIP-360); a fresh id always starts
        // at epoch 0.
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(replication_error_code(&e))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
