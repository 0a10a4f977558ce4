//! DescribeProducers (key 61): the idempotent and transactional producers a partition leader
//! tracks: id, epoch, last sequence, when it last wrote, the coordinator epoch of its last
//! marker and where its open transaction starts (`kafka-transactions describe-producers`,
//! the tool that finds hanging transactions).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use runnel_protocol::kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::Broker;

fn partition(broker: &Broker, topic: &str, index: i32) -> PartitionResponse {
    let failed = |e: ResponseError, message: String| {
        PartitionResponse::default()
            .with_partition_index(index)
            .with_error_code(e.code())
            .with_error_message(Some(StrBytes::from_string(message)))
    };
    let Some(replica) = broker.replication.replica(topic, index) else {
        return failed(
            ResponseError::UnknownTopicOrPartition,
            format!("{topic}-{index} does not exist here"),
        );
    };
    if replica.leader_id() != broker.config.node_id {
        return failed(
            ResponseError::NotLeaderOrFollower,
            format!("this broker does not lead {topic}-{index}"),
        );
    }
    let log = replica.log();
    let mut producers: Vec<ProducerState> = log
        .producer_state()
        .producers()
        .values()
        .map(|p| {
            ProducerState::default()
                .with_producer_id(ProducerId(p.producer_id))
                .with_producer_epoch(i32::from(p.epoch))
                .with_last_sequence(p.last_seq().unwrap_or(-1))
                .with_last_timestamp(p.last_timestamp)
                .with_coordinator_epoch(p.coordinator_epoch)
                .with_current_txn_start_offset(p.current_txn_first_offset.map_or(-1, |o| o as i64))
        })
        .collect();
    producers.sort_by_key(|p| p.producer_id.0);
    PartitionResponse::default()
        .with_partition_index(index)
        .with_active_producers(producers)
}

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeProducersRequest,
    _version: i16,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .iter()
        .map(|t| {
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|p| partition(broker, &t.name.0, *p))
                        .collect(),
                )
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
