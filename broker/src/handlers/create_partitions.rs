//! CreatePartitions (key 37): grows a topic to `count` partitions (never shrinks), with
//! explicit assignments or placed over the registered brokers' AZs (`placement`).

use std::collections::HashSet;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use runnel_protocol::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use runnel_protocol::kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::proto::{self, metadata_record::Record};
use runnel_replication::MetadataRecord;

use crate::error::replication_error_code;
use crate::Broker;

type Failure = (i16, String);

fn invalid_assignment(message: String) -> Failure {
    (ResponseError::InvalidReplicaAssignment.code(), message)
}

/// The replicas of the new partitions, checked against the topic and the live brokers.
fn new_assignments(
    t: &CreatePartitionsTopic,
    current: i32,
    replication_factor: usize,
    brokers: &[i32],
    placeable: &[runnel_replication::placement::Placeable],
) -> Result<Vec<Vec<i32>>, Failure> {
    let added = (t.count - current) as usize;
    let explicit = t.assignments.as_ref().filter(|a| !a.is_empty());
    let Some(explicit) = explicit else {
        if replication_factor > brokers.len() {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "Unable to replicate the partition {replication_factor} time(s): only {} broker(s) are registered.",
                    brokers.len()
                ),
            ));
        }
        // Continue where the existing partitions left off, so leaders spread.
        return runnel_replication::placement::place(
            placeable,
            added,
            replication_factor,
            current as usize,
        )
        .ok_or((
            ResponseError::InvalidReplicationFactor.code(),
            "Replication factor exceeds the brokers registered.".into(),
        ));
    };
    if explicit.len() != added {
        return Err(invalid_assignment(format!(
            "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
            explicit.len()
        )));
    }
    let mut out = Vec::with_capacity(added);
    for a in explicit {
        let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        if replicas.len() != replication_factor {
            return Err(invalid_assignment(format!(
                "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {replication_factor} replica(s).",
                replicas.len()
            )));
        }
        let mut seen = HashSet::new();
        for b in &replicas {
            if !seen.insert(*b) {
                return Err(invalid_assignment(format!(
                    "The manual partition assignment includes the broker {b} more than once."
                )));
            }
            if !brokers.contains(b) {
                return Err(invalid_assignment(format!(
                    "The manual partition assignment includes broker {b}, but no such broker is registered."
                )));
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

async fn create_partitions(
    broker: &Arc<Broker>,
    t: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Failure> {
    let name = t.name.0.to_string();
    let (topic, brokers, placeable) = {
        let md = broker.replication.metadata();
        let topic = md.topics.get(&name).cloned().ok_or_else(|| {
            (
                ResponseError::UnknownTopicOrPartition.code(),
                format!("The topic '{name}' does not exist."),
            )
        })?;
        (
            topic,
            md.brokers.keys().copied().collect::<Vec<i32>>(),
            super::create_topics::placeable_brokers(&md),
        )
    };
    let current = topic.partitions.len() as i32;
    if t.count == current {
        return Err((
            ResponseError::InvalidPartitions.code(),
            format!("Topic already has {current} partition(s)."),
        ));
    }
    if t.count < current {
        return Err((
            ResponseError::InvalidPartitions.code(),
            format!(
                "Topic currently has {current} partitions, which is higher than the requested {}.",
                t.count
            ),
        ));
    }
    let replication_factor = topic.partitions.first().map_or(1, Vec::len);
    let assignments = new_assignments(t, current, replication_factor, &brokers, &placeable)?;
    if validate_only {
        return Ok(());
    }
    let record = MetadataRecord {
        record: Some(Record::CreatePartitions(proto::CreatePartitions {
            topic_id: topic.id.as_bytes().to_vec(),
            partitions: assignments
                .into_iter()
                .map(|replicas| proto::PartitionAssignment { replicas })
                .collect(),
        })),
    };
    broker
        .replication
        .propose_metadata(record)
        .await
        .map_err(|e| (replication_error_code(&e), e.to_string()))
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    // As in Kafka, a topic named twice is not changed at all.
    let mut seen = HashSet::new();
    let duplicates: HashSet<_> = request
        .topics
        .iter()
        .filter(|t| !seen.insert(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let mut added = Vec::new();
    for t in &request.topics {
        let name = t.name.0.to_string();
        let before = broker
            .replication
            .metadata()
            .topics
            .get(&name)
            .map_or(0, |m| m.partitions.len());
        let outcome = if !duplicates.contains(&t.name) {
            create_partitions(broker, t, request.validate_only).await
        } else {
            Err((
                ResponseError::InvalidRequest.code(),
                "Duplicate topic name.".to_string(),
            ))
        };
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if outcome.is_ok() && !request.validate_only && t.count as usize > before {
            added.push((name, before..t.count as usize));
        }
        if let Err((code, message)) = outcome {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        results.push(r);
    }
    super::create_topics::await_leaders(broker, &added, request.timeout_ms).await;
    CreatePartitionsResponse::default().with_results(results)
}
