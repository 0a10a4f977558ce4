//! LeaveGroup (key 13): one member (v0-2) or a batch of members by id or instance id (v3+,
//! KIP-345) leave; the group rebalances without them.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::leave_group_response::MemberResponse;
use runnel_protocol::kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::{begin_append, now_ms, run_stores};
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let outcome = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let g = groups.get_mut(&group_id)?;
        let now = now_ms();
        let mut stores = Vec::new();
        let codes: Vec<i16> = leaving
            .iter()
            .map(|(member, instance)| {
                if let Some(c) = g.consumer.as_mut() {
                    // Classic members of a consumer group; what they change is stored by the
                    // coordinator's timer.
                    let known = c.has_classic_member(member)
                        || instance
                            .as_ref()
                            .is_some_and(|i| c.static_members.contains_key(i));
                    if known {
                        let code = c.classic_leave(member, instance.as_deref());
                        let records = c.take_changes(&group_id);
                        if !records.is_empty() {
                            // Handed to the log under the lock; the leave is answered at once,
                            // as Kafka answers it once written (a lost write only delays the
                            // member's removal to its session timeout after a restart).
                            drop(begin_append(broker, p, records, false));
                        }
                        return code;
                    }
                }
                let (code, mut s) = g.leave(member, instance.as_deref(), now);
                stores.append(&mut s);
                code
            })
            .collect();
        Some((codes, stores))
    });
    let codes = match outcome {
        Ok(Some((codes, stores))) => {
            run_stores(broker, group_id, stores);
            codes
        }
        Ok(None) => vec![ResponseError::UnknownMemberId.code(); leaving.len()],
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0));
    }
    let members = leaving
        .into_iter()
        .zip(codes)
        .map(|((member, instance), code)| {
            MemberResponse::default()
                .with_member_id(member.into())
                .with_group_instance_id(instance.map(Into::into))
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}
