//! ListOffsets (key 2): earliest, latest, by timestamp, max timestamp, honouring the
//! isolation level and the leader epoch the client knows.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use runnel_protocol::kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::error::storage_error_code;
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

fn partition_error(partition: i32, code: i16) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse::default()
        .with_partition_index(partition)
        .with_error_code(code)
        .with_timestamp(-1)
        .with_offset(-1)
        .with_leader_epoch(-1)
}

pub fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let isolation = request.isolation_level;
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let Some(replica) = broker.replication.replica(&name, p.partition_index) else {
                partitions.push(partition_error(
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition.code(),
                ));
                continue;
            };
            let epoch = replica.leader_epoch();
            if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch {
                partitions.push(partition_error(
                    p.partition_index,
                    ResponseError::FencedLeaderEpoch.code(),
                ));
                continue;
            }
            if p.current_leader_epoch > epoch {
                partitions.push(partition_error(
                    p.partition_index,
                    ResponseError::UnknownLeaderEpoch.code(),
                ));
                continue;
            }
            if replica.leader_id() != broker.config.node_id {
                partitions.push(partition_error(
                    p.partition_index,
                    ResponseError::NotLeaderOrFollower.code(),
                ));
                continue;
            }
            let log = replica.log();
            // read_committed clients see only up to the last stable offset.
            let visible_end = if isolation == 1 {
                log.last_stable_offset(replica.high_watermark())
            } else {
                replica.high_watermark()
            };
            let epoch_of = |offset: u64| {
                log.leader_epochs()
                    .epoch_for_offset(offset)
                    .unwrap_or(epoch)
            };
            let found: Result<Option<(i64, u64)>, _> = match p.timestamp {
                LATEST => Ok(Some((-1, visible_end))),
                EARLIEST | EARLIEST_LOCAL => Ok(Some((-1, log.log_start_offset()))),
                MAX_TIMESTAMP => log.max_timestamp_and_offset().map(|r| {
                    r.filter(|r| r.offset < visible_end)
                        .map(|r| (r.timestamp, r.offset))
                }),
                LATEST_TIERED => Ok(None),
                ts if ts >= 0 => log.offset_for_timestamp(ts).map(|r| {
                    r.filter(|r| r.offset < visible_end)
                        .map(|r| (r.timestamp, r.offset))
                }),
                _ => {
                    partitions.push(partition_error(
                        p.partition_index,
                        ResponseError::InvalidRequest.code(),
                    ));
                    continue;
                }
            };
            partitions.push(match found {
                Ok(Some((timestamp, offset))) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(timestamp)
                    .with_offset(offset as i64)
                    .with_leader_epoch(if p.timestamp == LATEST {
                        epoch
                    } else {
                        epoch_of(offset)
                    }),
                Ok(None) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1),
                Err(e) => partition_error(p.partition_index, storage_error_code(&e)),
            });
        }
        if version < 4 {
            // leader_epoch exists from v4.
            for p in &mut partitions {
                p.leader_epoch = -1;
            }
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
