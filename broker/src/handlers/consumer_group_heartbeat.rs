//! ConsumerGroupHeartbeat (key 68, KIP-848): joins, heartbeats and leaves of consumer-protocol
//! members; the answer carries the member's epoch and, when it changed, its assignment.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment, TopicPartitions,
};
use runnel_protocol::kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::ClientInfo;
use crate::group::classic::ClassicGroup;
use crate::group::consumer::{self, ConsumerGroup, HeartbeatRequest, TopicInfo, Topics};
use crate::group::{append, forget_if_unused, now_ms};
use crate::Broker;

fn failed(code: i16, message: String) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(code)
        .with_error_message(Some(StrBytes::from_string(message)))
        .with_member_epoch(-1)
}

/// Every topic of the cluster as the assignors see it.
pub fn topics_view(broker: &Broker) -> Topics {
    broker
        .replication
        .metadata()
        .topics
        .values()
        .filter(|t| t.name != crate::group::OFFSETS_TOPIC)
        .map(|t| {
            (
                t.name.clone(),
                TopicInfo {
                    id: t.id,
                    partitions: t.partitions.len() as i32,
                },
            )
        })
        .collect()
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
    client: &ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return failed(
            ResponseError::InvalidRequest.code(),
            "GroupId can't be empty.".into(),
        );
    }
    let owned = request.topic_partitions.as_ref().map(|tps| {
        let mut a = consumer::Assignment::new();
        for tp in tps {
            a.entry(tp.topic_id)
                .or_default()
                .extend(tp.partitions.iter().copied());
        }
        a.retain(|_, ps| !ps.is_empty());
        a
    });
    let req = HeartbeatRequest {
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: request.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
        subscribed_topic_regex: request
            .subscribed_topic_regex
            .as_ref()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty()),
        server_assignor: request.server_assignor.as_ref().map(|s| s.to_string()),
        owned,
        client_id: client.client_id.clone(),
        client_host: client.client_host.clone(),
    };
    let topics = topics_view(broker);
    let config = broker.groups.config();
    let (classic, consumer_settings) = (config.groups.clone(), config.consumer.clone());
    let outcome = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let now = now_ms();
        let g = groups
            .entry(group_id.clone())
            .or_insert_with(|| ClassicGroup::new(group_id.clone(), classic, now));
        if g.consumer.is_none() {
            if !g.members.is_empty() || !g.pending_members.is_empty() {
                return Err((
                    ResponseError::GroupIdNotFound.code(),
                    format!("Group {group_id} is not a consumer group."),
                ));
            }
            g.consumer = Some(ConsumerGroup::new(consumer_settings));
        }
        let result = match &mut g.consumer {
            Some(c) => c
                .heartbeat(req, &topics, version, now)
                .map(|r| (r, c.take_changes(&group_id))),
            None => Err((ResponseError::UnknownServerError.code(), String::new())),
        };
        forget_if_unused(groups, &group_id);
        result.map(|(r, records)| (r, records, p))
    });
    let (r, records, p) = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err((code, message))) => return failed(code, message),
        Err(code) => return failed(code, String::new()),
    };
    // The member hears of its new epoch and assignment once they are in the log.
    if !records.is_empty() {
        if let Err(code) = append(broker, p, records, false).await {
            let _ = broker.groups.with_groups(broker, &group_id, |groups, _| {
                if let Some(c) = groups.get_mut(&group_id).and_then(|g| g.consumer.as_mut()) {
                    c.forget_persisted();
                }
            });
            return failed(code, "could not store the group's state".into());
        }
    }
    ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(StrBytes::from_string(r.member_id)))
        .with_member_epoch(r.member_epoch)
        .with_heartbeat_interval_ms(r.heartbeat_interval_ms)
        .with_assignment(r.assignment.map(|a| {
            Assignment::default().with_topic_partitions(
                a.into_iter()
                    .map(|(id, ps)| {
                        TopicPartitions::default()
                            .with_topic_id(id)
                            .with_partitions(ps.into_iter().collect())
                    })
                    .collect(),
            )
        }))
}
