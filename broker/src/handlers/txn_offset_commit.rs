//! TxnOffsetCommit (key 28): offsets committed inside a transaction
//! (`sendOffsetsToTransaction`), sent to the group coordinator. They are written to the group's
//! `__consumer_offsets` partition as a transactional batch of the producer and stay pending,
//! invisible to OffsetFetch, until the transaction's marker decides them.

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use runnel_protocol::kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::classic::{ClassicGroup, CommittedOffset};
use crate::group::records::OffsetCommitValue;
use crate::group::{begin_append_to, forget_if_unused, now_ms, offset_records, OFFSETS_TOPIC};
use crate::Broker;

/// The first TxnOffsetCommit version of Transactions V2.
const FIRST_V2_VERSION: i16 = 5;

fn respond(
    request: &TxnOffsetCommitRequest,
    code_of: impl Fn(&str, i32) -> i16,
) -> TxnOffsetCommitResponse {
    TxnOffsetCommitResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|t| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
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
    request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let transactional_id = request.transactional_id.0.to_string();
    if group_id.is_empty() {
        return respond(&request, |_, _| ResponseError::InvalidGroupId.code());
    }
    if transactional_id.is_empty() {
        return respond(&request, |_, _| ResponseError::InvalidRequest.code());
    }
    let producer_id = request.producer_id.0;
    let producer_epoch = request.producer_epoch;
    let (member_id, instance, generation) = if version >= 3 {
        (
            request.member_id.to_string(),
            request.group_instance_id.as_ref().map(|s| s.to_string()),
            request.generation_id,
        )
    } else {
        (String::new(), None, -1)
    };
    // KIP-890: the group's partition must be in the producer's ongoing transaction, or the
    // offsets could never be decided. V1 clients put it there with AddOffsetsToTxn first and
    // it is verified; from v5 (Transactions V2) the client sends no AddOffsetsToTxn and the
    // partition joins the transaction here (Kafka's
    // `txnOffsetCommitRequestVersionToTransactionSupportedOperation`: ADD_PARTITION above 4).
    let p = broker.groups.partition_of(broker, &group_id);
    let offsets_partition = (OFFSETS_TOPIC.to_string(), p);
    let checked = if version >= FIRST_V2_VERSION {
        let added = crate::txn::add_partitions_manager::add_partitions(
            broker,
            &transactional_id,
            producer_id,
            producer_epoch,
            std::slice::from_ref(&offsets_partition),
        )
        .await;
        match added.first().map_or(0, |(_, c)| *c) {
            0 => Ok(()),
            // Kafka's AddPartitionsToTxnManager: "Producers expect to handle
            // INVALID_PRODUCER_EPOCH in this scenario".
            c if c == ResponseError::ProducerFenced.code() => {
                Err(ResponseError::InvalidProducerEpoch.code())
            }
            c => Err(c),
        }
    } else {
        broker
            .txns
            .verify(
                broker,
                &transactional_id,
                producer_id,
                producer_epoch,
                &offsets_partition,
            )
            .map_err(|code| {
                // TRANSACTION_ABORTABLE from v4 (KAFKA-16314), PRODUCER_FENCED from v3.
                if code == ResponseError::TransactionAbortable.code() && version < 4 {
                    ResponseError::InvalidTxnState.code()
                } else if code == ResponseError::ProducerFenced.code() && version < 3 {
                    ResponseError::InvalidProducerEpoch.code()
                } else {
                    code
                }
            })
    };
    if let Err(code) = checked {
        return respond(&request, |_, _| code);
    }
    let settings = broker.groups.config().groups.clone();
    let validated = broker.groups.with_groups(broker, &group_id, |groups, p| {
        let now = now_ms();
        if !groups.contains_key(&group_id) {
            if generation >= 0 {
                return Err(ResponseError::IllegalGeneration.code());
            }
            groups.insert(
                group_id.clone(),
                ClassicGroup::new(group_id.clone(), settings, now),
            );
        }
        let result = groups.get_mut(&group_id).map_or(Ok(()), |g| {
            g.validate_txn_offset_commit(&member_id, instance.as_deref(), generation, now)
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
                            leader_epoch: if version >= 2 {
                                part.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata,
                            commit_timestamp: now,
                            expire_timestamp: -1,
                        },
                    ));
                    0
                };
                errors.insert(key, code);
            }
        }
    }
    if commits.is_empty() {
        return respond(&request, |topic, partition| {
            errors
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(0)
        });
    }
    let records = offset_records(&group_id, &commits);
    let appended = begin_append_to(
        broker,
        OFFSETS_TOPIC,
        p,
        records,
        true,
        Some((producer_id, producer_epoch)),
    )
    .done()
    .await;
    let outcome = match appended {
        Ok(first) => broker.groups.install_txn_offsets(
            broker,
            &group_id,
            producer_id,
            commits
                .iter()
                .enumerate()
                .map(|(i, (key, value))| {
                    (
                        key.clone(),
                        CommittedOffset {
                            value: value.clone(),
                            record_offset: first + i as u64,
                        },
                    )
                })
                .collect(),
        ),
        Err(code) => Err(
            if code == ResponseError::InvalidProducerEpoch.code() && version >= 3 {
                ResponseError::ProducerFenced.code()
            } else {
                code
            },
        ),
    };
    if let Err(code) = outcome {
        for (key, _) in &commits {
            errors.insert(key.clone(), code);
        }
    }
    respond(&request, |topic, partition| {
        errors
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    })
}
