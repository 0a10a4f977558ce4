//! Produce (key 0): validate each partition's batches (size, CRC, keys on compacted topics,
//! timestamps), propose them to the partition's Raft group, answer per `acks`. From v12
//! (Transactions V2) a producer's first transactional batch to a partition adds the partition
//! to its transaction before it is proposed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use runnel_protocol::kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::{ProduceAck, ReplicationError, TopicMetadata};
use runnel_storage::batch::{self, BatchHeader};
use runnel_storage::{LogConfig, StorageError};
use tokio::sync::oneshot;

use crate::error::{replication_error_code, storage_error_code};
use crate::{probe, Broker};

type Pending = oneshot::Receiver<Result<ProduceAck, ReplicationError>>;

#[derive(Debug)]
enum Outcome {
    Done(PartitionProduceResponse),
    Waiting {
        index: i32,
        log_append_time: i64,
        rx: Option<Pending>,
    },
    /// Transactions V2: the partition joins the producer's transaction first (see
    /// [`resolve_adds`]), then its batches are proposed with the verification guard taken.
    Adding {
        index: i32,
        log_append_time: i64,
        topic: String,
        batches: Vec<Bytes>,
        guard: u64,
    },
}

/// The first Produce version of Transactions V2 (Kafka's
/// `produceRequestVersionToTransactionSupportedOperation`: `ADD_PARTITION` above 11).
const FIRST_V2_VERSION: i16 = 12;

/// What a partition's transactional batches need before they are proposed.
#[derive(Debug)]
enum TxnCheck {
    /// Propose now, with the verification guard when the coordinator verified them.
    Propose(Option<u64>),
    /// Produce v12+ and the producer's transaction is not open here yet: the partition must
    /// be added to it first (guard taken, as for verification).
    Add {
        guard: u64,
        producer_id: i64,
        producer_epoch: i16,
    },
}

fn failed(
    index: i32,
    code: i16,
    message: Option<String>,
    version: i16,
) -> PartitionProduceResponse {
    // error_message exists from v8.
    let message = if version >= 8 { message } else { None };
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Topic settings the produce path needs, resolved once per request.
struct TopicRules {
    log_append_time: bool,
    before_max_ms: i64,
    after_max_ms: i64,
    /// `min.insync.replicas`: acks=all writes need at least this many in-sync replicas.
    min_insync_replicas: usize,
}

fn rules(broker: &Broker, t: &TopicMetadata) -> TopicRules {
    let md = broker.replication.metadata();
    let c = md.effective_topic_config(t);
    let long = |n: &str| {
        c.get(n)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    };
    TopicRules {
        log_append_time: c
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime"),
        before_max_ms: long("message.timestamp.before.max.ms"),
        after_max_ms: long("message.timestamp.after.max.ms"),
        min_insync_replicas: long("min.insync.replicas").clamp(1, i64::from(i16::MAX)) as usize,
    }
}

/// Splits and checks one partition's records; returns the batches to propose.
fn validate(
    records: &Bytes,
    config: &LogConfig,
    rules: &TopicRules,
    now: i64,
) -> Result<Vec<Bytes>, (i16, String)> {
    if records.len() as u64 > config.segment_bytes {
        return Err((
            ResponseError::RecordListTooLarge.code(),
            format!(
                "Records of {} bytes exceed segment.bytes {}",
                records.len(),
                config.segment_bytes
            ),
        ));
    }
    let batches = batch::validate_batches(records, config.max_message_bytes)
        .map_err(|e| (storage_error_code(&e), e.to_string()))?;
    if batches.is_empty() {
        return Err((
            ResponseError::CorruptMessage.code(),
            "no record batch in produce request".into(),
        ));
    }
    let mut out = Vec::with_capacity(batches.len());
    for (pos, h) in batches {
        if h.records_count == 0 {
            return Err((
                ResponseError::InvalidRecord.code(),
                "record batch has no records".into(),
            ));
        }
        if h.is_control() {
            return Err((
                ResponseError::InvalidRecord.code(),
                "clients may not write control batches".into(),
            ));
        }
        let raw = records.slice(pos..pos + h.size());
        if config.cleanup_policy.compacts() {
            check_keys(&raw, &h)?;
        }
        if rules.log_append_time {
            let mut stamped = BytesMut::from(&raw[..]);
            batch::set_log_append_time(&mut stamped, now);
            out.push(stamped.freeze());
            continue;
        }
        for ts in [h.base_timestamp, h.max_timestamp] {
            if ts >= 0
                && (now.saturating_sub(ts) > rules.before_max_ms
                    || ts.saturating_sub(now) > rules.after_max_ms)
            {
                return Err((
                    ResponseError::InvalidTimestamp.code(),
                    format!(
                        "Timestamp {ts} of message is out of range; the broker's time is {now}"
                    ),
                ));
            }
        }
        out.push(raw);
    }
    Ok(out)
}

/// Kafka refuses keyless records on compacted topics.
fn check_keys(raw: &[u8], h: &BatchHeader) -> Result<(), (i16, String)> {
    let invalid = |e: StorageError| (ResponseError::CorruptMessage.code(), e.to_string());
    let body = batch::records_body(raw, h, runnel_storage::MAX_DECOMPRESSED_BATCH_BYTES)
        .map_err(invalid)?;
    let records = batch::parse_records(&body, h.records_count).map_err(invalid)?;
    if records.iter().any(|r| r.key.is_none()) {
        return Err((
            ResponseError::InvalidRecord.code(),
            "Compacted topic cannot accept message without key".into(),
        ));
    }
    Ok(())
}

/// A failed verification as the produce path reports it (Kafka's `AddPartitionsToTxnManager`):
/// a fenced epoch is INVALID_PRODUCER_EPOCH, and TRANSACTION_ABORTABLE only reaches clients
/// of Produce v11+, older ones get INVALID_TXN_STATE.
fn verification_code(code: i16, version: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() {
        ResponseError::InvalidProducerEpoch.code()
    } else if code == ResponseError::TransactionAbortable.code() && version <= 10 {
        ResponseError::InvalidTxnState.code()
    } else {
        code
    }
}

/// Transactional batches need the request's transactional id, and a producer's first batch
/// to a partition in a transaction is verified with the transaction coordinator (KIP-890), so
/// a write arriving after its transaction ended cannot leave a transaction open forever. The
/// guard is taken before asking the coordinator: a marker proposed meanwhile clears it, and
/// the Raft driver then refuses the batch. Returns the guard when it verified.
fn check_transactional(
    broker: &Arc<Broker>,
    replica: &runnel_replication::Replica,
    transactional_id: Option<&str>,
    batches: &[Bytes],
    (topic, partition): (&str, i32),
    version: i16,
) -> Result<TxnCheck, (i16, String)> {
    let mut verified = None;
    let mut add = None;
    for b in batches {
        let Ok(h) = BatchHeader::parse(b) else {
            continue;
        };
        if !h.is_transactional() {
            // Kafka refuses a non-transactional write from a producer whose transaction on
            // this partition is still open.
            let open = h.has_producer_id()
                && replica
                    .log()
                    .producer_state()
                    .get(h.producer_id)
                    .is_some_and(|e| {
                        e.epoch == h.producer_epoch && e.current_txn_first_offset.is_some()
                    });
            if open {
                return Err((
                    ResponseError::InvalidTxnState.code(),
                    format!(
                        "producer {} has an open transaction on {topic}-{partition}: expected a transactional write",
                        h.producer_id
                    ),
                ));
            }
            continue;
        }
        let Some(id) = transactional_id else {
            // Kafka: TRANSACTIONAL_ID_AUTHORIZATION_FAILED for transactional records without a
            // transactional id.
            return Err((
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                "transactional records need the request's transactional id".into(),
            ));
        };
        let open = replica
            .log()
            .producer_state()
            .get(h.producer_id)
            .is_some_and(|e| e.epoch == h.producer_epoch && e.current_txn_first_offset.is_some());
        if open {
            continue;
        }
        if version >= FIRST_V2_VERSION {
            // A batch older than the epoch this partition knows (a zombie, or a late write of
            // a transaction a V2 marker ended) is refused before asking the coordinator
            // (KAFKA-18042).
            let current = replica
                .log()
                .producer_state()
                .get(h.producer_id)
                .map(|e| e.epoch);
            if let Some(current) = current.filter(|c| *c > h.producer_epoch) {
                return Err((
                    ResponseError::InvalidProducerEpoch.code(),
                    format!(
                        "producer {} epoch {} is older than {current} on {topic}-{partition}",
                        h.producer_id, h.producer_epoch
                    ),
                ));
            }
            // KIP-890 part 2: the client sent no AddPartitionsToTxn; this write adds the
            // partition (Kafka's addPartitionsToTxn with verifyOnly = false).
            add = Some(TxnCheck::Add {
                guard: replica.verification_guard(h.producer_id, h.producer_epoch),
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
            });
            continue;
        }
        let guard = replica.verification_guard(h.producer_id, h.producer_epoch);
        broker
            .txns
            .verify(
                broker,
                id,
                h.producer_id,
                h.producer_epoch,
                &(topic.to_string(), partition),
            )
            .map_err(|code| {
                (
                    verification_code(code, version),
                    format!("{topic}-{partition} is not part of an ongoing transaction of {id}"),
                )
            })?;
        verified = Some(guard);
    }
    Ok(add.unwrap_or(TxnCheck::Propose(verified)))
}

/// A produce request whose batches have been proposed, waiting for its answers.
#[derive(Debug)]
pub struct Begun {
    broker: Arc<Broker>,
    /// The listener the request came in on: leader endpoints (KIP-951) are given on it.
    listener: String,
    acks: i16,
    version: i16,
    topics: Vec<(TopicName, uuid::Uuid, Vec<Outcome>)>,
    /// The transactional id, producer id and epoch whose transaction partitions of this
    /// request join first (Transactions V2).
    adding: Option<(String, i64, i16)>,
}

/// Validates and proposes every partition's batches. Not async on purpose: the connection
/// calls it in request order, so pipelined requests of one producer reach each partition's
/// Raft log in the order they were sent (Kafka's per-connection ordering).
pub fn begin(broker: &Arc<Broker>, request: ProduceRequest, version: i16, listener: &str) -> Begun {
    let acks = request.acks;
    let now = now_ms();
    let transactional_id = request
        .transactional_id
        .as_ref()
        .map(|t| t.0.to_string())
        .filter(|t| !t.is_empty());
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut adding: Option<(String, i64, i16)> = None;
    for t in request.topic_data {
        let topic = {
            let md = broker.replication.metadata();
            if version >= 13 {
                md.topic_by_id(&t.topic_id).cloned()
            } else {
                md.topics.get(t.name.0.as_str()).cloned()
            }
        };
        let rules = topic.as_ref().map(|t| rules(broker, t));
        let mut partitions = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let index = p.index;
            let (Some(topic), Some(rules)) = (&topic, &rules) else {
                let code = if version >= 13 {
                    ResponseError::UnknownTopicId.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                };
                partitions.push(Outcome::Done(failed(index, code, None, version)));
                continue;
            };
            if crate::is_internal_topic(&topic.name) {
                // Only the group coordinator writes there (Kafka: "Cannot append to internal
                // topic").
                partitions.push(Outcome::Done(failed(
                    index,
                    ResponseError::InvalidTopicException.code(),
                    Some(format!("Cannot append to internal topic {}", topic.name)),
                    version,
                )));
                continue;
            }
            if !matches!(acks, -1..=1) {
                partitions.push(Outcome::Done(failed(
                    index,
                    ResponseError::InvalidRequiredAcks.code(),
                    None,
                    version,
                )));
                continue;
            }
            let Some(replica) = broker.replication.replica(&topic.name, index) else {
                let code = if (index as usize) < topic.partitions.len() {
                    ResponseError::NotLeaderOrFollower.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                };
                partitions.push(Outcome::Done(failed(index, code, None, version)));
                continue;
            };
            if acks == -1 && replica.leader_id() == broker.config.node_id {
                let isr = replica.isr().len();
                if isr > 0 && isr < rules.min_insync_replicas {
                    partitions.push(Outcome::Done(failed(
                        index,
                        ResponseError::NotEnoughReplicas.code(),
                        Some(format!(
                            "The in-sync replicas ({isr}) are fewer than min.insync.replicas ({})",
                            rules.min_insync_replicas
                        )),
                        version,
                    )));
                    continue;
                }
            }
            let config = replica.log().config().clone();
            let records = p.records.unwrap_or_default();
            let batches = match validate(&records, &config, rules, now) {
                Ok(b) => b,
                Err((code, message)) => {
                    probe::error("Produce", code);
                    partitions.push(Outcome::Done(failed(index, code, Some(message), version)));
                    continue;
                }
            };
            let check = match check_transactional(
                broker,
                &replica,
                transactional_id.as_deref(),
                &batches,
                (&topic.name, index),
                version,
            ) {
                Ok(check) => check,
                Err((code, message)) => {
                    probe::error("Produce", code);
                    partitions.push(Outcome::Done(failed(index, code, Some(message), version)));
                    continue;
                }
            };
            let messages: u64 = batches
                .iter()
                .filter_map(|b| BatchHeader::parse(b).ok())
                .map(|h| h.records_count.max(0) as u64)
                .sum();
            probe::bytes_in(&topic.name, records.len(), messages);
            let log_append_time = if rules.log_append_time { now } else { -1 };
            let guard = match check {
                TxnCheck::Propose(guard) => guard,
                TxnCheck::Add {
                    guard,
                    producer_id,
                    producer_epoch,
                } => {
                    let id = transactional_id.clone().unwrap_or_default();
                    let same = adding.as_ref().is_none_or(|(i, p, e)| {
                        *i == id && *p == producer_id && *e == producer_epoch
                    });
                    if !same {
                        // Kafka: "Transactional records contained more than one producer ID".
                        let code = ResponseError::InvalidProducerIdMapping.code();
                        probe::error("Produce", code);
                        partitions.push(Outcome::Done(failed(
                            index,
                            code,
                            Some("transactional records of more than one producer".into()),
                            version,
                        )));
                        continue;
                    }
                    adding = Some((id, producer_id, producer_epoch));
                    partitions.push(Outcome::Adding {
                        index,
                        log_append_time,
                        topic: topic.name.clone(),
                        batches,
                        guard,
                    });
                    continue;
                }
            };
            match broker.replication.begin_transactional_produce(
                &topic.name,
                index,
                batches,
                acks,
                guard,
            ) {
                Ok(rx) => partitions.push(Outcome::Waiting {
                    index,
                    log_append_time,
                    rx,
                }),
                Err(e) => partitions.push(Outcome::Done(failed(
                    index,
                    replication_error_code(&e),
                    Some(e.to_string()),
                    version,
                ))),
            }
        }
        topics.push((t.name, t.topic_id, partitions));
    }
    Begun {
        broker: broker.clone(),
        listener: listener.to_string(),
        acks,
        version,
        topics,
        adding,
    }
}

/// Adds the partitions waiting in [`Outcome::Adding`] to the producer's transaction (one call
/// for all of them), then proposes the batches of those that joined.
async fn resolve_adds(
    broker: &Arc<Broker>,
    (transactional_id, producer_id, producer_epoch): (String, i64, i16),
    acks: i16,
    version: i16,
    topics: &mut [(TopicName, uuid::Uuid, Vec<Outcome>)],
) {
    let wanted: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|(_, _, ps)| ps)
        .filter_map(|o| match o {
            Outcome::Adding { index, topic, .. } => Some((topic.clone(), *index)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let results = crate::txn::add_partitions_manager::add_partitions(
        broker,
        &transactional_id,
        producer_id,
        producer_epoch,
        &wanted,
    )
    .await;
    for (_, _, partitions) in topics.iter_mut() {
        for outcome in partitions.iter_mut() {
            let Outcome::Adding {
                index,
                log_append_time,
                topic,
                batches,
                guard,
            } = outcome
            else {
                continue;
            };
            let index = *index;
            let code = results
                .iter()
                .find(|((t, p), _)| t == topic && *p == index)
                .map_or(ResponseError::UnknownServerError.code(), |(_, c)| *c);
            *outcome = if code != 0 {
                let code = crate::txn::add_partitions_manager::for_produce(code);
                probe::error("Produce", code);
                Outcome::Done(failed(
                    index,
                    code,
                    Some(format!(
                        "{topic}-{index} could not be added to the transaction of {transactional_id}"
                    )),
                    version,
                ))
            } else {
                match broker.replication.begin_transactional_produce(
                    topic,
                    index,
                    std::mem::take(batches),
                    acks,
                    Some(*guard),
                ) {
                    Ok(rx) => Outcome::Waiting {
                        index,
                        log_append_time: *log_append_time,
                        rx,
                    },
                    Err(e) => Outcome::Done(failed(
                        index,
                        replication_error_code(&e),
                        Some(e.to_string()),
                        version,
                    )),
                }
            };
        }
    }
}

/// Waits for the proposals of [`begin`]; `None` for acks=0 (no response at all).
pub async fn finish(begun: Begun) -> Option<ProduceResponse> {
    let Begun {
        broker,
        listener,
        acks,
        version,
        mut topics,
        adding,
    } = begun;
    if let Some(producer) = adding {
        if acks == 0 {
            // No answer is sent; the partitions still join and the batches are still written.
            tokio::spawn(async move {
                resolve_adds(&broker, producer, acks, version, &mut topics).await;
            });
            return None;
        }
        resolve_adds(&broker, producer, acks, version, &mut topics).await;
    }
    if acks == 0 {
        return None;
    }
    let mut responses = Vec::with_capacity(topics.len());
    let mut leaders: Vec<i32> = Vec::new();
    for (name, topic_id, partitions) in topics {
        let mut out = Vec::with_capacity(partitions.len());
        for outcome in partitions {
            out.push(match outcome {
                Outcome::Done(r) => r,
                Outcome::Adding { index, .. } => failed(
                    index,
                    ResponseError::UnknownServerError.code(),
                    None,
                    version,
                ),
                Outcome::Waiting {
                    index,
                    log_append_time,
                    rx,
                } => {
                    let result = match rx {
                        Some(rx) => rx.await.unwrap_or(Err(ReplicationError::ShuttingDown)),
                        None => Err(ReplicationError::ShuttingDown),
                    };
                    match result {
                        Ok(ack) => PartitionProduceResponse::default()
                            .with_index(index)
                            .with_base_offset(ack.base_offset as i64)
                            .with_log_append_time_ms(log_append_time)
                            .with_log_start_offset(if version >= 5 {
                                ack.log_start_offset as i64
                            } else {
                                -1
                            }),
                        Err(e) => {
                            let code = replication_error_code(&e);
                            probe::error("Produce", code);
                            failed(index, code, Some(e.to_string()), version)
                        }
                    }
                }
            });
        }
        if version >= 10 {
            // KIP-951: a client sent to the wrong broker learns the leader at once.
            for r in &mut out {
                if r.error_code == ResponseError::NotLeaderOrFollower.code() {
                    let view = broker.partition_leader(name.0.as_str(), r.index);
                    r.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(view.leader))
                        .with_leader_epoch(view.leader_epoch);
                    if view.leader >= 0 && !leaders.contains(&view.leader) {
                        leaders.push(view.leader);
                    }
                }
            }
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_topic_id(topic_id)
                .with_partition_responses(out),
        );
    }
    let node_endpoints = {
        let md = broker.replication.metadata();
        leaders
            .iter()
            .filter_map(|id| md.brokers.get(id))
            .filter_map(|b| {
                let (host, port) = b.endpoint(&listener)?;
                Some(
                    NodeEndpoint::default()
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(port)
                        .with_rack(b.rack.clone().map(StrBytes::from_string)),
                )
            })
            .collect()
    };
    Some(
        ProduceResponse::default()
            .with_responses(responses)
            .with_node_endpoints(node_endpoints),
    )
}
