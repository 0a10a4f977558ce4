//! OffsetCommit (key 8): offsets (with metadata and leader epoch) written to the group's
//! `__consumer_offsets` partition; answered once committed. Group members are checked
//! (generation, member id, static instance); generation -1 from outside any group is a
//! "simple" commit, as Kafka allows.

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use runnel_protocol::kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::classic::{ClassicGroup, CommittedOffset};
use crate::group::records::OffsetCommitValue;
use crate::group::{append, forget_if_unused, now_ms, offset_records};
use crate::Broker;

fn respond(
    request: &OffsetCommitRequest,
    code_of: impl Fn(&str, i32) -> i16,
) -> OffsetCommitResponse {
    OffsetCommitResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code_of(&t.name.0, p.partition_index))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    if group_id.is_empty() {
        return respond(&request, |_, _| ResponseError::InvalidGroupId.code());
    }
    let generation = request.generation_id_or_member_epoch;
    let member_id = request.member_id.to_string();
    let instance = request
        .group_instance_id
        .as_ref()
        .map(|s| s.to_string())
        .filter(|_| version >= 7);
    let settings = broker.groups.config().groups.clone();
    let validated = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let now = now_ms();
        if !groups.contains_key(&group_id) {
            if generation >= 0 {
                return Err(if version >= 9 {
                    ResponseError::GroupIdNotFound.code()
                } else {
                    ResponseError::IllegalGeneration.code()
                });
            }
            groups.insert(
                group_id.clone(),
                ClassicGroup::new(group_id.clone(), settings, now),
            );
        }
        let result = groups.get_mut(&group_id).map_or(Ok(()), |g| {
            // Consumer-protocol members commit with v9+ (member epochs); Kafka refuses older
            // versions from them.
            let consumer_member = g.consumer.as_ref().is_some_and(|c| {
                c.members
                    .get(&member_id)
                    .is_some_and(|m| m.classic.is_none())
            });
            if consumer_member && version < 9 {
                return Err(ResponseError::UnsupportedVersion.code());
            }
            g.validate_offset_commit(&member_id, instance.as_deref(), generation, now)
        });
        if result.is_err() {
            forget_if_unused(groups, &group_id);
        }
        result.map(|()| p)
    });
    let p = match validated {
        Ok(Ok(p)) => p,
        Ok(Err(code)) | Err(code) => return respond(&request, |_, _| code),
    };
    let now = now_ms();
    // v2-v4 carry a retention time; Kafka keeps it as an explicit expire timestamp.
    let expire_timestamp = if (2..=4).contains(&version) && request.retention_time_ms >= 0 {
        now.saturating_add(request.retention_time_ms)
    } else {
        -1
    };
    let max_metadata = broker.groups.config().offset_metadata_max_bytes;
    let mut errors: BTreeMap<(String, i32), i16> = BTreeMap::new();
    let mut commits: Vec<((String, i32), OffsetCommitValue)> = Vec::new();
    {
        let md = broker.replication.metadata();
        for t in &request.topics {
            let topic = t.name.0.to_string();
            let partitions = md.topics.get(&topic).map(|m| m.partitions.len() as i32);
            for part in &t.partitions {
                let key = (topic.clone(), part.partition_index);
                let metadata = part
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let code = if !partitions.is_some_and(|n| (0..n).contains(&part.partition_index)) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else if metadata.len() > max_metadata {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    commits.push((
                        key.clone(),
                        OffsetCommitValue {
                            offset: part.committed_offset,
                            leader_epoch: if version >= 6 {
                                part.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata,
                            commit_timestamp: now,
                            expire_timestamp,
                        },
                    ));
                    0
                };
                errors.insert(key, code);
            }
        }
    }
    if !commits.is_empty() {
        let records = offset_records(&group_id, &commits);
        match append(broker, p, records, true).await {
            Ok(first) => {
                let settings = broker.groups.config().groups.clone();
                let applied = broker.groups.with_groups(broker, &group_id, |groups, _| {
                    // The offsets are in the log: a group deleted meanwhile comes back holding
                    // them, as a replay would rebuild it.
                    let g = groups
                        .entry(group_id.clone())
                        .or_insert_with(|| ClassicGroup::new(group_id.clone(), settings, now_ms()));
                    for (i, (key, value)) in commits.iter().enumerate() {
                        let record_offset = first + i as u64;
                        // Concurrent commits may finish out of order: the later record wins.
                        let newer = g
                            .offsets
                            .get(key)
                            .is_none_or(|c| c.record_offset < record_offset);
                        if newer {
                            g.offsets.insert(
                                key.clone(),
                                CommittedOffset {
                                    value: value.clone(),
                                    record_offset,
                                },
                            );
                        }
                    }
                });
                if let Err(code) = applied {
                    for (key, _) in &commits {
                        errors.insert(key.clone(), code);
                    }
                }
            }
            Err(code) => {
                for (key, _) in &commits {
                    errors.insert(key.clone(), code);
                }
            }
        }
    }
    respond(&request, |topic, partition| {
        errors
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    })
}
