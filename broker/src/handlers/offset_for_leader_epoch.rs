//! OffsetForLeaderEpoch (key 23): where a leader epoch ends, so consumers and followers
//! detect log truncation (KIP-101, KIP-320).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::Broker;

fn error(partition: i32, code: i16) -> EpochEndOffset {
    EpochEndOffset::default()
        .with_partition(partition)
        .with_error_code(code)
        .with_leader_epoch(-1)
        .with_end_offset(-1)
}

pub fn handle(
    broker: &Arc<Broker>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.topic.0.to_string();
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let Some(replica) = broker.replication.replica(&name, p.partition) else {
                    return error(p.partition, ResponseError::UnknownTopicOrPartition.code());
                };
                let epoch = replica.leader_epoch();
                if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch {
                    return error(p.partition, ResponseError::FencedLeaderEpoch.code());
                }
                if p.current_leader_epoch > epoch {
                    return error(p.partition, ResponseError::UnknownLeaderEpoch.code());
                }
                if replica.leader_id() != broker.config.node_id {
                    return error(p.partition, ResponseError::NotLeaderOrFollower.code());
                }
                let (leader_epoch, end_offset) = replica.log().end_offset_for_epoch(p.leader_epoch);
                // Only committed data counts: the end is never past the high watermark.
                let end_offset = if end_offset >= 0 {
                    end_offset.min(replica.high_watermark() as i64)
                } else {
                    end_offset
                };
                EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(leader_epoch)
                    .with_end_offset(end_offset)
            })
            .collect();
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
