//! ListGroups (key 16): the groups this broker coordinates, filtered by state (v4+) and type
//! (v5+).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::list_groups_response::ListedGroup;
use runnel_protocol::kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use runnel_protocol::kafka_protocol::protocol::StrBytes;

use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let (error, groups) = broker.groups.list(broker);
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let listed = groups
        .into_iter()
        .filter(|g| {
            version < 4 || states.is_empty() || states.contains(&g.state.to_ascii_lowercase())
        })
        .filter(|g| version < 5 || types.is_empty() || types.iter().any(|t| t == g.group_type))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type))
                .with_group_state(if version >= 4 {
                    StrBytes::from_static_str(g.state)
                } else {
                    StrBytes::default()
                })
                .with_group_type(if version >= 5 {
                    StrBytes::from_static_str(g.group_type)
                } else {
                    StrBytes::default()
                })
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error)
        .with_groups(listed)
}
