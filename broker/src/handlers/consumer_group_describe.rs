//! ConsumerGroupDescribe (key 69, KIP-848): epochs, assignor, members with their current and
//! target assignments. A classic group gets `GROUP_ID_NOT_FOUND` ("not a consumer group"), so
//! clients fall back to DescribeGroups as they do against Kafka.

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use runnel_protocol::kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use uuid::Uuid;

use super::metadata::AUTHORIZED_OPERATIONS_OMITTED;
use crate::group::consumer;
use crate::Broker;

fn assignment(a: &consumer::Assignment, names: &BTreeMap<Uuid, String>) -> Assignment {
    Assignment::default().with_topic_partitions(
        a.iter()
            .map(|(id, ps)| {
                TopicPartitions::default()
                    .with_topic_id(*id)
                    .with_topic_name(TopicName(StrBytes::from_string(
                        names.get(id).cloned().unwrap_or_default(),
                    )))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

pub fn handle(
    broker: &Arc<Broker>,
    request: ConsumerGroupDescribeRequest,
    _version: i16,
) -> ConsumerGroupDescribeResponse {
    let names: BTreeMap<Uuid, String> = broker
        .replication
        .metadata()
        .topics
        .values()
        .map(|t| (t.id, t.name.clone()))
        .collect();
    let groups = request
        .group_ids
        .iter()
        .map(|group_id| {
            let base = DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
            let described = broker.groups.with_groups(broker, &group_id.0, |groups, _| {
                let Some(g) = groups.get(group_id.0.as_str()) else {
                    return Err(format!("Group {} not found.", group_id.0));
                };
                let Some(c) = &g.consumer else {
                    return Err(format!("Group {} is not a consumer group.", group_id.0));
                };
                let members = c
                    .members
                    .values()
                    .map(|m| {
                        Member::default()
                            .with_member_id(StrBytes::from_string(m.member_id.clone()))
                            .with_instance_id(m.instance_id.clone().map(StrBytes::from_string))
                            .with_rack_id(m.rack_id.clone().map(StrBytes::from_string))
                            .with_member_epoch(m.member_epoch)
                            .with_client_id(StrBytes::from_string(m.client_id.clone()))
                            .with_client_host(StrBytes::from_string(m.client_host.clone()))
                            .with_subscribed_topic_names(
                                m.subscribed_topic_names
                                    .iter()
                                    .map(|t| TopicName(StrBytes::from_string(t.clone())))
                                    .collect(),
                            )
                            .with_subscribed_topic_regex(
                                m.subscribed_topic_regex.clone().map(StrBytes::from_string),
                            )
                            .with_assignment(assignment(&m.assigned, &names))
                            .with_target_assignment(assignment(
                                c.target
                                    .get(&m.member_id)
                                    .unwrap_or(&consumer::Assignment::new()),
                                &names,
                            ))
                    })
                    .collect();
                Ok(base
                    .clone()
                    .with_group_state(StrBytes::from_static_str(c.state()))
                    .with_group_epoch(c.group_epoch)
                    .with_assignment_epoch(c.assignment_epoch)
                    .with_assignor_name(StrBytes::from_string(c.assignor.clone()))
                    .with_members(members))
            });
            match described {
                Ok(Ok(g)) => g,
                Ok(Err(message)) => base
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(StrBytes::from_string(message))),
                Err(code) => base.with_error_code(code),
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
