//! DeleteTopics (key 20): by name, or by topic id (v6+); one `DeleteTopic` record through
//! the metadata Raft group, answered once this broker removed its replicas.

use std::collections::HashSet;
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
    let mut seen = HashSet::new();
    let duplicates: HashSet<(Option<String>, Uuid)> = wanted
        .iter()
        .filter(|w| !seen.insert(*w))
        .cloned()
        .collect();
    for (name, id) in wanted {
        let invalid = match (&name, id.is_nil()) {
            (None, true) => Some("Neither topic name nor id were specified."),
            (Some(_), false) => Some("You may not specify both topic name and topic id."),
            _ if duplicates.contains(&(name.clone(), id)) => Some(if name.is_some() {
                "Duplicate topic name."
            } else {
                "Duplicate topic id."
            }),
            _ => None,
        };
        if let Some(message) = invalid {
            let mut r = DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                .with_error_code(ResponseError::InvalidRequest.code());
            if version >= 5 {
                r = r.with_error_message(Some(StrBytes::from_static_str(message)));
            }
            if version >= 6 {
                r = r.with_topic_id(id);
            }
            responses.push(r);
            continue;
        }
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
