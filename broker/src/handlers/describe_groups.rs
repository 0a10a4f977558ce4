//! DescribeGroups (key 15): state, protocol and members of classic groups; subscriptions and
//! assignments only while Stable, as Kafka reports them.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_groups_response::{
    DescribedGroup, DescribedGroupMember,
};
use runnel_protocol::kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::metadata::AUTHORIZED_OPERATIONS_OMITTED;
use crate::group::classic::GroupState;
use crate::Broker;

fn dead(group_id: &GroupId, version: i16) -> DescribedGroup {
    let group = DescribedGroup::default()
        .with_group_id(group_id.clone())
        .with_group_state(StrBytes::from_static_str(GroupState::Dead.name()))
        .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    if version >= 6 {
        group
            .with_error_code(ResponseError::GroupIdNotFound.code())
            .with_error_message(Some(StrBytes::from_string(format!(
                "Group {} not found.",
                group_id.0
            ))))
    } else {
        group
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .iter()
        .map(|group_id| {
            let described = broker.groups.with_groups(broker, &group_id.0, |groups, _| {
                // A consumer-protocol group is not a classic group (Kafka: not found here;
                // ConsumerGroupDescribe describes it).
                let g = groups
                    .get(group_id.0.as_str())
                    .filter(|g| g.consumer.is_none())?;
                let stable = g.state == GroupState::Stable;
                let protocol = if stable {
                    g.protocol_name.clone().unwrap_or_default()
                } else {
                    String::new()
                };
                let members = g
                    .members
                    .values()
                    .map(|m| {
                        let (metadata, assignment) = if stable {
                            (
                                m.protocols
                                    .iter()
                                    .find(|(n, _)| *n == protocol)
                                    .map(|(_, b)| b.clone())
                                    .unwrap_or_default(),
                                m.assignment.clone(),
                            )
                        } else {
                            Default::default()
                        };
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id.clone()))
                            .with_group_instance_id(if version >= 4 {
                                m.group_instance_id.clone().map(StrBytes::from_string)
                            } else {
                                None
                            })
                            .with_client_id(StrBytes::from_string(m.client_id.clone()))
                            .with_client_host(StrBytes::from_string(m.client_host.clone()))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                Some(
                    DescribedGroup::default()
                        .with_group_id(group_id.clone())
                        .with_group_state(StrBytes::from_static_str(g.state.name()))
                        .with_protocol_type(StrBytes::from_string(
                            g.protocol_type.clone().unwrap_or_default(),
                        ))
                        .with_protocol_data(StrBytes::from_string(protocol))
                        .with_members(members)
                        .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
                )
            });
            match described {
                Ok(Some(g)) => g,
                Ok(None) => dead(group_id, version),
                Err(code) => DescribedGroup::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(code)
                    .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
