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
use crate::group::classic::{ClassicGroup, GroupState};
use crate::group::consumer::{self, ConsumerGroup, HeartbeatRequest, TopicInfo, Topics};
use crate::group::{
    begin_append, by_id, decode_assignment, forget_if_unused, now_ms, subscribed_topics,
};
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

/// Turns a stable classic group's members into classic members of a consumer group.
fn upgrade(
    g: &mut ClassicGroup,
    settings: consumer::ConsumerSettings,
    topics: &Topics,
    now: i64,
) -> ConsumerGroup {
    let protocol = g.protocol_name.clone().unwrap_or_default();
    let generation = g.generation_id;
    let members = std::mem::take(&mut g.members)
        .into_values()
        .map(|m| {
            let metadata = m
                .protocols
                .iter()
                .find(|(n, _)| *n == protocol)
                .map(|(_, meta)| meta.clone())
                .unwrap_or_default();
            let assigned = by_id(&decode_assignment(&m.assignment), topics);
            let member = consumer::ConsumerMember::from_classic(
                m.member_id.clone(),
                m.group_instance_id.clone(),
                (m.client_id.clone(), m.client_host.clone()),
                (m.session_timeout_ms, m.rebalance_timeout_ms),
                m.protocols.clone(),
                protocol.clone(),
                subscribed_topics(&metadata),
                assigned.clone(),
                generation,
                now,
            );
            (member, assigned)
        })
        .collect();
    g.static_members.clear();
    g.leader_id = None;
    g.state = GroupState::Empty;
    tracing::info!(
        group = g.group_id,
        "classic group upgraded to a consumer group"
    );
    ConsumerGroup::upgrade_from(members, generation, settings, topics)
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
                // Kafka's online upgrade: a stable classic group of `consumer` members
                // becomes a consumer group; its members stay, speaking the classic protocol.
                let upgradable = g.protocol_type.as_deref() == Some("consumer")
                    && g.state == GroupState::Stable
                    && g.pending_members.is_empty();
                if !upgradable {
                    return Err((
                        ResponseError::GroupIdNotFound.code(),
                        format!("Group {group_id} is not a consumer group."),
                    ));
                }
                let c = upgrade(g, consumer_settings, &topics, now);
                g.consumer = Some(c);
            } else {
                g.consumer = Some(ConsumerGroup::new(consumer_settings));
            }
        }
        let result = match &mut g.consumer {
            Some(c) => c
                .heartbeat(req, &topics, version, now)
                .map(|r| (r, c.take_changes(&group_id))),
            None => Err((ResponseError::UnknownServerError.code(), String::new())),
        };
        forget_if_unused(groups, &group_id);
        result.map(|(r, records)| {
            let appending = (!records.is_empty()).then(|| begin_append(broker, p, records, false));
            (r, appending)
        })
    });
    let (r, appending) = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err((code, message))) => return failed(code, message),
        Err(code) => return failed(code, String::new()),
    };
    // The member hears of its new epoch and assignment once they are in the log.
    if let Some(appending) = appending {
        if let Err(code) = appending.done().await {
            broker.groups.consumer_write_failed(broker, &group_id);
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
