//! JoinGroup (key 11): a member joins (or rejoins) a classic group and waits until the join
//! phase ends; the leader's answer carries every member's subscription.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use runnel_protocol::kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::ClientInfo;
use tokio::sync::oneshot;

use crate::group::classic::{ClassicGroup, JoinRequest, JoinResult, Store};
use crate::group::consumer::{ClassicJoin, ClassicJoined, ConsumerGroup, Topics};
use crate::group::{
    begin_append, by_id, decode_subscription, forget_if_unused, now_ms, run_stores, Appending,
    Record,
};
use crate::Broker;

fn response(r: JoinResult, version: i16) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation_id)
        .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
        // Not nullable before v7: Kafka answers "" there.
        .with_protocol_name(match r.protocol_name {
            Some(p) => Some(StrBytes::from_string(p)),
            None if version < 7 => Some(StrBytes::default()),
            None => None,
        })
        .with_leader(StrBytes::from_string(r.leader))
        .with_skip_assignment(version >= 9 && r.skip_assignment)
        .with_member_id(StrBytes::from_string(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            m.group_instance_id.map(StrBytes::from_string)
                        } else {
                            None
                        })
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: JoinGroupRequest,
    version: i16,
    client: &ClientInfo,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    if group_id.is_empty() {
        return response(
            JoinResult::error(ResponseError::InvalidGroupId.code(), member_id),
            version,
        );
    }
    let req = JoinRequest {
        member_id: member_id.clone(),
        group_instance_id: request
            .group_instance_id
            .as_ref()
            .map(|s| s.to_string())
            .filter(|_| version >= 5),
        client_id: client.client_id.clone(),
        client_host: client.client_host.clone(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    let settings = broker.groups.config().groups.clone();
    let topics = super::consumer_group_heartbeat::topics_view(broker);
    let joined = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let now = now_ms();
        let g = groups
            .entry(group_id.clone())
            .or_insert_with(|| ClassicGroup::new(group_id.clone(), settings, now));
        let out = match g.consumer.as_mut().filter(|c| !c.is_empty()) {
            // A classic member joining a consumer group with members (Kafka lets the two
            // protocols mix): the server-side assignor decides for it too.
            Some(c) => {
                let (result, records) = join_consumer_group(c, &group_id, req, &topics, now);
                let appending =
                    (!records.is_empty()).then(|| begin_append(broker, p, records, false));
                Joined::Now(result, appending)
            }
            None => {
                let (rx, stores) = g.join(req, now);
                Joined::Wait(rx, stores)
            }
        };
        forget_if_unused(groups, &group_id);
        out
    });
    let result = match joined {
        Ok(Joined::Wait(rx, stores)) => {
            run_stores(broker, group_id, stores);
            rx.await.unwrap_or_else(|_| {
                JoinResult::error(ResponseError::NotCoordinator.code(), member_id.clone())
            })
        }
        Ok(Joined::Now(result, appending)) => {
            if let Some(appending) = appending {
                if let Err(code) = appending.done().await {
                    broker.groups.consumer_write_failed(broker, &group_id);
                    return response(JoinResult::error(code, member_id), version);
                }
            }
            result
        }
        Err(code) => JoinResult::error(code, member_id),
    };
    response(result, version)
}

enum Joined {
    Wait(oneshot::Receiver<JoinResult>, Vec<Store>),
    Now(JoinResult, Option<Appending>),
}

fn join_consumer_group(
    c: &mut ConsumerGroup,
    group_id: &str,
    req: JoinRequest,
    topics: &Topics,
    now: i64,
) -> (JoinResult, Vec<Record>) {
    if req.protocol_type != "consumer" {
        return (
            JoinResult::error(
                ResponseError::InconsistentGroupProtocol.code(),
                req.member_id,
            ),
            Vec::new(),
        );
    }
    let (_, subscribed, owned) = req
        .protocols
        .first()
        .map(|(_, m)| decode_subscription(m))
        .unwrap_or_default();
    let member_id = req.member_id.clone();
    let join = ClassicJoin {
        member_id: req.member_id,
        instance_id: req.group_instance_id,
        client_id: req.client_id,
        client_host: req.client_host,
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        protocols: req.protocols,
        require_known_member_id: req.require_known_member_id,
        topics: subscribed,
        owned: by_id(&owned, topics),
    };
    match c.classic_join(join, topics, now) {
        Ok(ClassicJoined::MemberIdRequired(id)) => (
            JoinResult::error(ResponseError::MemberIdRequired.code(), id),
            Vec::new(),
        ),
        Ok(ClassicJoined::Joined {
            member_id,
            generation,
            protocol_name,
        }) => (
            JoinResult {
                error: 0,
                generation_id: generation,
                protocol_type: Some("consumer".to_string()),
                protocol_name: Some(protocol_name),
                leader: String::new(),
                skip_assignment: false,
                member_id,
                members: Vec::new(),
            },
            c.take_changes(group_id),
        ),
        Err((code, _)) => (JoinResult::error(code, member_id), Vec::new()),
    }
}
