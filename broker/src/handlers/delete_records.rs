//! DeleteRecords (key 21): moves partitions' log start offsets forward (`-1` means the high
//! watermark) on every replica, through the partition's Raft group; whole segments below the
//! new start are deleted.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::error::replication_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let result = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            partitions.push(
                match delete(broker, &name, p.partition_index, p.offset).await {
                    Ok(low) => result.with_low_watermark(low as i64),
                    Err(code) => result.with_error_code(code),
                },
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// One partition: the new low watermark, or the error code.
async fn delete(broker: &Broker, topic: &str, partition: i32, offset: i64) -> Result<u64, i16> {
    let Some(replica) = broker.replication.replica(topic, partition) else {
        let exists = broker
            .replication
            .metadata()
            .topics
            .get(topic)
            .is_some_and(|t| partition >= 0 && (partition as usize) < t.partitions.len());
        return Err(if exists {
            ResponseError::NotLeaderOrFollower.code()
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        });
    };
    if replica.leader_id() != broker.config.node_id {
        return Err(ResponseError::NotLeaderOrFollower.code());
    }
    // -1: up to the high watermark.
    let offset = if offset == -1 {
        replica.high_watermark() as i64
    } else {
        offset
    };
    if offset < 0 {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    broker
        .replication
        .delete_records(topic, partition, offset as u64)
        .await
        .map_err(|e| replication_error_code(&e))
}
