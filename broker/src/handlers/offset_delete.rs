//! OffsetDelete (key 47): removes a group's committed offsets for some partitions, except
//! those of topics a live `consumer` group still subscribes to (`GROUP_SUBSCRIBED_TO_TOPIC`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use runnel_protocol::kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::{append, offset_tombstones};
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::InvalidGroupId.code());
    }
    let wanted: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let topics = super::consumer_group_heartbeat::topics_view(broker);
    let planned = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let g = groups
            .get(&group_id)
            .ok_or(ResponseError::GroupIdNotFound.code())?;
        let subscribed: HashSet<String> = if let Some(c) = &g.consumer {
            c.subscribed_topics_in(&topics)
        } else if g.protocol_type.as_deref() == Some("consumer") && !g.members.is_empty() {
            g.subscribed_topics()
        } else {
            HashSet::new()
        };
        let mut codes = BTreeMap::new();
        let mut delete = Vec::new();
        for key in &wanted {
            if subscribed.contains(&key.0) {
                codes.insert(key.clone(), ResponseError::GroupSubscribedToTopic.code());
            } else {
                codes.insert(key.clone(), 0);
                if g.offsets.contains_key(key) {
                    delete.push(key.clone());
                }
            }
        }
        Ok((p, codes, delete))
    });
    let (p, mut codes, delete) = match planned {
        Ok(Ok(v)) => v,
        Ok(Err(code)) | Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    if !delete.is_empty() {
        let records = offset_tombstones(&group_id, &delete);
        match append(broker, p, records, false).await {
            Ok(first) => {
                let _ = broker.groups.with_groups(broker, &group_id, |groups, _| {
                    if let Some(g) = groups.get_mut(&group_id) {
                        // A commit that landed after the tombstone stays.
                        for k in &delete {
                            if g.offsets.get(k).is_some_and(|c| c.record_offset < first) {
                                g.offsets.remove(k);
                            }
                        }
                    }
                });
            }
            Err(code) => {
                for k in &delete {
                    codes.insert(k.clone(), code);
                }
            }
        }
    }
    let topics = request
        .topics
        .iter()
        .map(|t| {
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(
                                    codes
                                        .get(&(t.name.0.to_string(), p.partition_index))
                                        .copied()
                                        .unwrap_or(0),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
