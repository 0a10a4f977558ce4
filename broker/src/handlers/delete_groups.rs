//! DeleteGroups (key 42): empty groups are removed with tombstones for their metadata and
//! every committed offset; groups with members get `NON_EMPTY_GROUP`.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use runnel_protocol::kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::classic::GroupState;
use crate::group::{append, group_tombstone, offset_tombstones};
use crate::Broker;

async fn delete(broker: &Arc<Broker>, group_id: &str) -> i16 {
    if group_id.is_empty() {
        return ResponseError::InvalidGroupId.code();
    }
    let taken = broker.groups.with_groups(broker, group_id, |groups, p| {
        let Some(g) = groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        if !matches!(g.state, GroupState::Empty | GroupState::Dead) || !g.is_empty() {
            return Err(ResponseError::NonEmptyGroup.code());
        }
        let mut records = offset_tombstones(group_id, g.offsets.keys());
        records.push(group_tombstone(group_id));
        if let Some(c) = &mut g.consumer {
            records.extend(c.tombstones(group_id));
        }
        g.close(ResponseError::CoordinatorNotAvailable.code());
        groups.remove(group_id);
        Ok((p, records))
    });
    match taken {
        Ok(Ok((p, records))) => match append(broker, p, records, false).await {
            Ok(_) => 0,
            Err(code) => code,
        },
        Ok(Err(code)) | Err(code) => code,
    }
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in &request.groups_names {
        let code = delete(broker, &group_id.0).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id.clone())
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
