//! JoinGroup (key 11): a member joins (or rejoins) a classic group and waits until the join
//! phase ends; the leader's answer carries every member's subscription.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use runnel_protocol::kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::ClientInfo;
use crate::group::classic::{ClassicGroup, JoinRequest, JoinResult};
use crate::group::{forget_if_unused, now_ms, run_stores};
use crate::Broker;

fn response(r: JoinResult, version: i16) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation_id)
        .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(r.protocol_name.map(StrBytes::from_string))
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
    let joined = broker.groups.with_groups(broker, &group_id, |groups, _| {
        let now = now_ms();
        let out = groups
            .entry(group_id.clone())
            .or_insert_with(|| ClassicGroup::new(group_id.clone(), settings, now))
            .join(req, now);
        forget_if_unused(groups, &group_id);
        out
    });
    let (rx, stores) = match joined {
        Ok(j) => j,
        Err(code) => return response(JoinResult::error(code, member_id), version),
    };
    run_stores(broker, group_id, stores);
    let result = rx.await.unwrap_or_else(|_| {
        JoinResult::error(ResponseError::NotCoordinator.code(), member_id.clone())
    });
    response(result, version)
}
