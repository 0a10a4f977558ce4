//! OffsetFetch (key 9): committed offsets of one group (v1-7) or several (v8+), for the
//! partitions asked or, with no topics, all the group has. With `require_stable` (v7+,
//! KIP-447), partitions an undecided transaction committed get UNSTABLE_OFFSET_COMMIT, which
//! clients retry.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use runnel_protocol::kafka_protocol::messages::{
    GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::Broker;

/// One partition's answer: (offset, leader epoch, metadata, error).
type Fetched = (i64, i32, Option<String>, i16);
/// Per topic, the answers for its partitions.
type TopicAnswers = Vec<(String, Vec<(i32, Fetched)>)>;

/// (topic, [(partition, answer)]) for one group, plus the group-level error.
fn fetch_group(
    broker: &Arc<Broker>,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> (i16, TopicAnswers) {
    let unstable = ResponseError::UnstableOffsetCommit.code();
    let result = broker.groups.with_groups(broker, group_id, |groups, _| {
        let group = groups.get(group_id);
        match &topics {
            Some(list) => list
                .iter()
                .map(|(topic, partitions)| {
                    let parts = partitions
                        .iter()
                        .map(|p| {
                            let key = (topic.clone(), *p);
                            if require_stable
                                && group.is_some_and(|g| g.has_pending_txn_offset(&key))
                            {
                                return (*p, (-1, -1, None, unstable));
                            }
                            let found = group.and_then(|g| g.offsets.get(&key));
                            let answer = match found {
                                Some(c) => (
                                    c.value.offset,
                                    c.value.leader_epoch,
                                    Some(c.value.metadata.clone()),
                                    0,
                                ),
                                None => (-1, -1, Some(String::new()), 0),
                            };
                            (*p, answer)
                        })
                        .collect();
                    (topic.clone(), parts)
                })
                .collect(),
            None => {
                let mut out: TopicAnswers = Vec::new();
                if let Some(g) = group {
                    for ((topic, p), c) in &g.offsets {
                        let answer =
                            if require_stable && g.has_pending_txn_offset(&(topic.clone(), *p)) {
                                (-1, -1, None, unstable)
                            } else {
                                (
                                    c.value.offset,
                                    c.value.leader_epoch,
                                    Some(c.value.metadata.clone()),
                                    0,
                                )
                            };
                        match out.last_mut() {
                            Some((t, parts)) if t == topic => parts.push((*p, answer)),
                            _ => out.push((topic.clone(), vec![(*p, answer)])),
                        }
                    }
                }
                out
            }
        }
    });
    match result {
        Ok(v) => (0, v),
        Err(code) => {
            // The partitions asked for carry the error too (v1 has no group-level code).
            let v = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps.into_iter().map(|p| (p, (-1, -1, None, code))).collect();
                    (t, parts)
                })
                .collect();
            (code, v)
        }
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let name = |s: String| TopicName(StrBytes::from_string(s));
    let metadata = |m: Option<String>| m.map(StrBytes::from_string);
    if version < 8 {
        let topics = request.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let require_stable = version >= 7 && request.require_stable;
        let (error, found) = fetch_group(broker, &request.group_id.0, topics, require_stable);
        let topics = found
            .into_iter()
            .map(|(t, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(name(t))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, (offset, epoch, meta, code))| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(if version >= 5 {
                                        epoch
                                    } else {
                                        -1
                                    })
                                    .with_metadata(metadata(meta))
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(if version >= 2 { error } else { 0 });
    }
    let groups = request
        .groups
        .iter()
        .map(|g| {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            // v9+: a consumer-protocol member names itself; a stale epoch is refused.
            let member_check = if version >= 9 && g.member_epoch >= 0 {
                broker
                    .groups
                    .with_groups(broker, &g.group_id.0, |groups, _| {
                        match groups
                            .get(g.group_id.0.as_str())
                            .and_then(|x| x.consumer.as_ref())
                        {
                            Some(c) => c
                                .validate_offset_commit(
                                    &g.member_id.clone().unwrap_or_default(),
                                    g.member_epoch,
                                )
                                .err()
                                .unwrap_or(0),
                            None => 0,
                        }
                    })
                    .unwrap_or(0)
            } else {
                0
            };
            let (error, found) = if member_check != 0 {
                (member_check, Vec::new())
            } else {
                fetch_group(broker, &g.group_id.0, topics, request.require_stable)
            };
            OffsetFetchResponseGroup::default()
                .with_group_id(GroupId(g.group_id.0.clone()))
                .with_error_code(error)
                .with_topics(
                    found
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(name(t))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, (offset, epoch, meta, code))| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(metadata(meta))
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_groups(groups)
}
