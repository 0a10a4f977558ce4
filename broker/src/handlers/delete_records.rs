//! DeleteRecords (key 21): moves partitions' log start offsets forward (`-1` means the high
//! watermark); whole segments below the new start are deleted.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::error::storage_error_code;
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let result = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let Some(replica) = broker.replication.replica(&name, p.partition_index) else {
                    return result.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                };
                if replica.leader_id() != broker.config.node_id {
                    return result.with_error_code(ResponseError::NotLeaderOrFollower.code());
                }
                let offset = if p.offset == -1 {
                    replica.high_watermark() as i64
                } else {
                    p.offset
                };
                if offset < 0 {
                    return result.with_error_code(ResponseError::OffsetOutOfRange.code());
                }
                match replica.delete_records_before(offset as u64) {
                    Ok(low) => result.with_low_watermark(low as i64),
                    Err(e) => result.with_error_code(storage_error_code(&e)),
                }
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
