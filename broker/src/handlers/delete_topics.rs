//! DeleteTopics (key 20): by name, or by topic id (v6+); one `DeleteTopic` record through
//! the metadata Raft group, answered once this broker removed its replicas.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use runnel_protocol::kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::proto::{metadata_record::Record, DeleteTopic};
use runnel_replication::MetadataRecord;
use uuid::Uuid;

use crate::error::replication_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let found = {
            let md = broker.replication.metadata();
            match &name {
                Some(n) => md.topics.get(n).cloned(),
                None => md.topic_by_id(&id).cloned(),
            }
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))));
        if version >= 6 {
            result = result.with_topic_id(found.as_ref().map_or(id, |t| t.id));
        }
        let Some(topic) = found else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                ResponseError::UnknownTopicId.code()
            };
            responses.push(result.with_error_code(code));
            continue;
        };
        if version >= 6 && result.name.is_none() {
            result = result.with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))));
        }
        let record = MetadataRecord {
            record: Some(Record::DeleteTopic(DeleteTopic {
                topic_id: topic.id.as_bytes().to_vec(),
            })),
        };
        match broker.replication.propose_metadata(record).await {
            Ok(()) => responses.push(result),
            Err(e) => {
                let mut r = result.with_error_code(replication_error_code(&e));
                if version >= 5 {
                    r = r.with_error_message(Some(StrBytes::from_string(e.to_string())));
                }
                responses.push(r);
            }
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
