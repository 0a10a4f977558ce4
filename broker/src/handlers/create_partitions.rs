//! CreatePartitions (key 37): grows a topic to `count` partitions (never shrinks), with
//! explicit assignments or placed round-robin over the registered brokers.

use std::sync::Arc;

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

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let outcome: Result<(), (i16, String)> = async {
            let (topic, brokers) = {
                let md = broker.replication.metadata();
                let topic = md.topics.get(&name).cloned().ok_or((ResponseError::UnknownTopicOrPartition.code(), format!("The topic '{name}' does not exist.")))?;
                (topic, md.brokers.keys().copied().collect::<Vec<i32>>())
            };
            let current = topic.partitions.len() as i32;
            if t.count <= current {
                return Err((
                    ResponseError::InvalidPartitions.code(),
                    format!("Topic currently has {current} partitions, which is higher than the requested {}.", t.count),
                ));
            }
            let added = (t.count - current) as usize;
            let rf = topic.partitions.first().map_or(1, Vec::len);
            let assignments: Vec<Vec<i32>> = match t.assignments.as_ref().filter(|a| !a.is_empty()) {
                Some(a) => {
                    if a.len() != added {
                        return Err((ResponseError::InvalidReplicaAssignment.code(), format!("Increasing the number of partitions by {added} but {} assignments provided.", a.len())));
                    }
                    let a: Vec<Vec<i32>> = a.iter().map(|x| x.broker_ids.iter().map(|b| b.0).collect()).collect();
                    if a.iter().any(|r| r.is_empty() || r.iter().any(|b| !brokers.contains(b))) {
                        return Err((ResponseError::InvalidReplicaAssignment.code(), "Replica assignment names an unknown broker.".into()));
                    }
                    a
                }
                None => (0..added).map(|p| (0..rf).map(|r| brokers[(current as usize + p + r) % brokers.len().max(1)]).collect()).collect(),
            };
            if request.validate_only {
                return Ok(());
            }
            let record = MetadataRecord {
                record: Some(Record::CreatePartitions(proto::CreatePartitions {
                    topic_id: topic.id.as_bytes().to_vec(),
                    partitions: assignments.into_iter().map(|replicas| proto::PartitionAssignment { replicas }).collect(),
                })),
            };
            broker.replication.propose_metadata(record).await.map_err(|e| (replication_error_code(&e), e.to_string()))
        }
        .await;
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err((code, message)) = outcome {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}
