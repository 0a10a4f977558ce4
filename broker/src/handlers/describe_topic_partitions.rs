//! DescribeTopicPartitions (key 75, KIP-966): topics and their partitions, paged with a cursor
//! and `response_partition_limit`. An empty topic list describes every topic.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::metadata::AUTHORIZED_OPERATIONS_OMITTED;
use crate::Broker;

const MAX_PARTITIONS_PER_RESPONSE: usize = 2000;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeTopicPartitionsRequest,
    _version: i16,
) -> DescribeTopicPartitionsResponse {
    let md = broker.replication.metadata();
    let mut names: Vec<String> = if request.topics.is_empty() {
        md.topics.keys().cloned().collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .collect()
    };
    names.sort();
    names.dedup();
    let (start_topic, start_partition) = match &request.cursor {
        Some(c) => (
            c.topic_name.0.to_string(),
            c.partition_index.max(0) as usize,
        ),
        None => (String::new(), 0),
    };
    // Kafka caps the limit at its `max.request.partition.size.limit` (2000).
    let mut budget = if request.response_partition_limit > 0 {
        (request.response_partition_limit as usize).min(MAX_PARTITIONS_PER_RESPONSE)
    } else {
        MAX_PARTITIONS_PER_RESPONSE
    };
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names.into_iter().filter(|n| *n >= start_topic) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        if budget == 0 {
            // The previous topics filled the page: the next one starts the next page, as in
            // Kafka (the cursor names it even if it does not exist).
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name)
                    .with_partition_index(0),
            );
            break;
        }
        let Some(t) = md.topics.get(&name) else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_name(Some(topic_name))
                    .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
            );
            continue;
        };
        let first = if name == start_topic {
            start_partition
        } else {
            0
        };
        let mut partitions = Vec::new();
        for (p, replicas) in t.partitions.iter().enumerate().skip(first) {
            if budget == 0 {
                next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(topic_name.clone())
                        .with_partition_index(p as i32),
                );
                break;
            }
            budget -= 1;
            let view = broker.leader_view(&md, &name, p as i32);
            let nodes: Vec<BrokerId> = replicas.iter().map(|&r| BrokerId(r)).collect();
            let offline: Vec<BrokerId> = replicas
                .iter()
                .filter(|r| md.is_fenced(**r))
                .map(|&r| BrokerId(r))
                .collect();
            partitions.push(
                DescribeTopicPartitionsResponsePartition::default()
                    .with_partition_index(p as i32)
                    .with_error_code(if view.leader < 0 {
                        ResponseError::LeaderNotAvailable.code()
                    } else {
                        0
                    })
                    .with_leader_id(BrokerId(view.leader))
                    .with_leader_epoch(view.leader_epoch)
                    .with_isr_nodes(view.isr.into_iter().map(BrokerId).collect())
                    .with_offline_replicas(offline)
                    .with_replica_nodes(nodes)
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new())),
            );
        }
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name))
                .with_topic_id(t.id)
                .with_partitions(partitions)
                .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}
