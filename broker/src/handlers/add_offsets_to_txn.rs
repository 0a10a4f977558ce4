//! AddOffsetsToTxn (key 25): a transactional producer is about to commit a group's offsets in
//! its transaction (`sendOffsetsToTransaction`): the group's `__consumer_offsets` partition
//! joins the transaction, so the commit marker reaches it.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use super::add_partitions_to_txn::{add, versioned};
use super::find_coordinator::ensure_offsets_topic;
use crate::group::OFFSETS_TOPIC;
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    // Kafka does not check the group id here; TxnOffsetCommit refuses an empty one.
    let group_id = request.group_id.0.to_string();
    if let Err((code, message)) = ensure_offsets_topic(broker).await {
        tracing::warn!(code, message, "cannot create {OFFSETS_TOPIC}");
        return AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    }
    let partition = broker.groups.partition_of(broker, &group_id);
    let code = match add(
        broker,
        &request.transactional_id.0,
        request.producer_id.0,
        request.producer_epoch,
        &[(OFFSETS_TOPIC.to_string(), partition)],
        0,
    )
    .await
    {
        Ok(()) => 0,
        Err(code) => versioned(code, version, 2),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}
