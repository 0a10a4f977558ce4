//! Heartbeat (key 12): keeps a member's session alive and tells it when to rejoin.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::now_ms;
use crate::Broker;

pub fn handle(broker: &Arc<Broker>, request: HeartbeatRequest, version: i16) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return HeartbeatResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|s| s.to_string())
        .filter(|_| version >= 3);
    let code = broker
        .groups
        .with_groups(broker, &group_id, |groups, _| {
            match groups.get_mut(&group_id) {
                Some(g)
                    if g.consumer
                        .as_ref()
                        .is_some_and(|c| c.has_classic_member(&request.member_id)) =>
                {
                    match &mut g.consumer {
                        Some(c) => c.classic_heartbeat(
                            &request.member_id,
                            instance.as_deref(),
                            request.generation_id,
                            now_ms(),
                        ),
                        None => ResponseError::UnknownMemberId.code(),
                    }
                }
                Some(g) => g.heartbeat(
                    &request.member_id,
                    instance.as_deref(),
                    request.generation_id,
                    now_ms(),
                ),
                None => ResponseError::UnknownMemberId.code(),
            }
        })
        .unwrap_or_else(|e| e);
    HeartbeatResponse::default().with_error_code(code)
}
