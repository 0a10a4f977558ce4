//! SyncGroup (key 14): the leader hands in the assignment (stored in `__consumer_offsets`
//! before anyone gets it); every member receives its own.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::classic::SyncResult;
use crate::group::{by_name, decode_subscription, encode_assignment, now_ms, run_stores};
use crate::Broker;

fn response(r: SyncResult) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(r.protocol_name.map(StrBytes::from_string))
        .with_assignment(r.assignment)
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return response(SyncResult::error(ResponseError::InvalidGroupId.code()));
    }
    let member_id = request.member_id.to_string();
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|s| s.to_string())
        .filter(|_| version >= 3);
    let ptype = request.protocol_type.as_ref().map(|s| s.to_string());
    let pname = request.protocol_name.as_ref().map(|s| s.to_string());
    let assignments: Vec<(String, bytes::Bytes)> = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let topics = super::consumer_group_heartbeat::topics_view(broker);
    let synced = broker.groups.with_groups(broker, &group_id, |groups, _| {
        groups.get_mut(&group_id).map(|g| {
            if let Some(c) = g
                .consumer
                .as_mut()
                .filter(|c| c.has_classic_member(&member_id))
            {
                // A classic member of a consumer group: its assignment as the coordinator
                // reconciled it.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let version = c
                    .members
                    .get(&member_id)
                    .and_then(|m| m.classic.as_ref())
                    .and_then(|cm| cm.protocols.first())
                    .map_or(0, |(_, meta)| decode_subscription(meta).0);
                let _ = tx.send(
                    match c.classic_sync(
                        &member_id,
                        instance.as_deref(),
                        request.generation_id,
                        now_ms(),
                    ) {
                        Ok((protocol_name, assigned)) => SyncResult {
                            error: 0,
                            protocol_type: Some("consumer".to_string()),
                            protocol_name: Some(protocol_name),
                            assignment: encode_assignment(version, &by_name(&assigned, &topics)),
                        },
                        Err(code) => SyncResult::error(code),
                    },
                );
                return (rx, Vec::new());
            }
            g.sync(
                &member_id,
                instance.as_deref(),
                request.generation_id,
                (ptype.as_deref(), pname.as_deref()),
                assignments,
                now_ms(),
            )
        })
    });
    let (rx, stores) = match synced {
        Ok(Some(s)) => s,
        Ok(None) => return response(SyncResult::error(ResponseError::UnknownMemberId.code())),
        Err(code) => return response(SyncResult::error(code)),
    };
    run_stores(broker, group_id, stores);
    response(
        rx.await
            .unwrap_or_else(|_| SyncResult::error(ResponseError::NotCoordinator.code())),
    )
}
