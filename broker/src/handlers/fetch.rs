//! Fetch (key 1): whole stored batches up to the high watermark (the last stable offset for
//! `read_committed`, with the aborted transactions the batches overlap), long-polling until
//! `min_bytes` or `max_wait_ms`, with per-partition and total byte limits, incremental fetch
//! sessions (KIP-227) and topic ids (v13+).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_protocol::kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_storage::StorageError;

use crate::error::storage_error_code;
use crate::fetch_session::{PartitionKey, SessionError, SessionPartition};
use crate::{probe, Broker};

const READ_COMMITTED: i8 = 1;

struct Read {
    key: PartitionKey,
    data: PartitionData,
    bytes: usize,
    /// Sent elsewhere (a preferred read replica): answer at once.
    redirect: bool,
}

fn error_partition(partition: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(Bytes::new()))
}

/// Who is fetching, as far as choosing a replica goes.
struct Fetcher {
    /// A consumer speaking Fetch v11+ (KIP-392): followers serve it too.
    may_read_follower: bool,
    /// Its `client.rack`, if it sent one.
    rack: Option<String>,
}

/// KIP-392 on the leader (Kafka's `RackAwareReplicaSelector`): an in-sync follower in the
/// consumer's AZ, unless the leader is in that AZ itself.
fn preferred_read_replica(
    broker: &Broker,
    replica: &runnel_replication::Replica,
    rack: &str,
) -> Option<i32> {
    if !broker.config.rack_aware_replica_selector || broker.config.rack.as_deref() == Some(rack) {
        return None;
    }
    let md = broker.replication.metadata();
    replica
        .isr()
        .into_iter()
        .filter(|&r| r != broker.config.node_id && !md.is_fenced(r))
        .find(|r| md.brokers.get(r).and_then(|b| b.rack.as_deref()) == Some(rack))
}

/// Reads one partition within `budget` bytes.
fn read_partition(
    broker: &Broker,
    key: &PartitionKey,
    p: &SessionPartition,
    budget: usize,
    min_one: bool,
    isolation: i8,
    fetcher: &Fetcher,
) -> Read {
    let (topic, topic_id, partition) = key;
    let done = |data: PartitionData, bytes: usize| Read {
        key: key.clone(),
        data,
        bytes,
        redirect: false,
    };
    let known = {
        let md = broker.replication.metadata();
        if topic.is_empty() {
            md.topic_by_id(topic_id).map(|t| t.name.clone())
        } else {
            md.topics.get(topic).map(|t| t.name.clone())
        }
    };
    let Some(name) = known else {
        let code = if topic.is_empty() {
            ResponseError::UnknownTopicId.code()
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        };
        return done(error_partition(*partition, code), 0);
    };
    let Some(replica) = broker.replication.replica(&name, *partition) else {
        // A partition that exists but lives on other brokers (Kafka's
        // `getPartitionOrError`): the client should ask its leader.
        let exists = broker
            .replication
            .metadata()
            .topics
            .get(&name)
            .is_some_and(|t| (*partition as usize) < t.partitions.len() && *partition >= 0);
        let code = if exists {
            ResponseError::NotLeaderOrFollower.code()
        } else {
            ResponseError::UnknownTopicOrPartition.code()
        };
        return done(error_partition(*partition, code), 0);
    };
    let epoch = replica.leader_epoch();
    if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch {
        return done(
            error_partition(*partition, ResponseError::FencedLeaderEpoch.code()),
            0,
        );
    }
    if p.current_leader_epoch > epoch {
        return done(
            error_partition(*partition, ResponseError::UnknownLeaderEpoch.code()),
            0,
        );
    }
    let leads = replica.leader_id() == broker.config.node_id;
    if !leads && !fetcher.may_read_follower {
        return done(
            error_partition(*partition, ResponseError::NotLeaderOrFollower.code()),
            0,
        );
    }
    let high_watermark = replica.high_watermark();
    let log = replica.log();
    let log_start = log.log_start_offset();
    let last_stable = log.last_stable_offset(high_watermark);
    // read_committed consumers read only decided transactions.
    let visible_end = if isolation == READ_COMMITTED {
        last_stable
    } else {
        high_watermark
    };
    let base = PartitionData::default()
        .with_partition_index(*partition)
        .with_high_watermark(high_watermark as i64)
        .with_last_stable_offset(last_stable as i64)
        .with_log_start_offset(log_start as i64)
        .with_aborted_transactions(if isolation == READ_COMMITTED {
            Some(Vec::new())
        } else {
            None
        })
        .with_preferred_read_replica(BrokerId(-1));
    if let Some(preferred) = fetcher
        .rack
        .as_deref()
        .filter(|_| leads)
        .and_then(|rack| preferred_read_replica(broker, &replica, rack))
    {
        // No records: the consumer moves to the replica in its AZ.
        return Read {
            key: key.clone(),
            data: base
                .with_preferred_read_replica(BrokerId(preferred))
                .with_records(Some(Bytes::new())),
            bytes: 0,
            redirect: true,
        };
    }
    if p.fetch_offset < 0 {
        return done(
            base.with_error_code(ResponseError::OffsetOutOfRange.code())
                .with_records(Some(Bytes::new())),
            0,
        );
    }
    let limit = budget.min(p.max_bytes.max(0) as usize);
    let result = if limit == 0 && !min_one {
        if (p.fetch_offset as u64) < log_start || p.fetch_offset as u64 > log.log_end_offset() {
            Err(StorageError::OffsetOutOfRange {
                offset: p.fetch_offset as u64,
                log_start_offset: log_start,
                log_end_offset: log.log_end_offset(),
            })
        } else {
            Ok(Bytes::new())
        }
    } else {
        log.read_with(p.fetch_offset as u64, limit, visible_end, min_one)
    };
    match result {
        Ok(records) => {
            let n = records.len();
            if n > 0 {
                probe::bytes_out(&name, n);
            }
            let base = if isolation == READ_COMMITTED && n > 0 {
                base.with_aborted_transactions(Some(aborted_in(
                    &log,
                    p.fetch_offset as u64,
                    &records,
                )))
            } else {
                base
            };
            done(base.with_records(Some(records)), n)
        }
        Err(e) => done(
            base.with_error_code(storage_error_code(&e))
                .with_records(Some(Bytes::new())),
            0,
        ),
    }
}

/// The aborted transactions overlapping the fetched batches, so a `read_committed` client
/// drops their records (Kafka's `collectAbortedTransactions`).
fn aborted_in(
    log: &runnel_storage::Log,
    fetch_offset: u64,
    records: &Bytes,
) -> Vec<AbortedTransaction> {
    let end = runnel_storage::batch::BatchIter::new(records)
        .map(|(_, h)| h.next_offset().max(0) as u64)
        .max()
        .unwrap_or(fetch_offset);
    log.aborted_transactions(fetch_offset, end)
        .into_iter()
        .map(|a| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(a.producer_id))
                .with_first_offset(a.first_offset as i64)
        })
        .collect()
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: FetchRequest,
    version: i16,
    listener: &str,
) -> FetchResponse {
    let use_ids = version >= 13;
    let key_of = |name: &TopicName, id: uuid::Uuid, partition: i32| -> PartitionKey {
        if use_ids {
            (String::new(), id, partition)
        } else {
            (name.0.to_string(), uuid::Uuid::nil(), partition)
        }
    };
    let mut requested: Vec<(PartitionKey, SessionPartition)> = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            requested.push((
                key_of(&t.topic, t.topic_id, p.partition),
                SessionPartition {
                    fetch_offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes,
                    current_leader_epoch: p.current_leader_epoch,
                    last_high_watermark: -1,
                    last_log_start_offset: -1,
                },
            ));
        }
    }
    let forgotten: Vec<PartitionKey> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |&p| (t, p)))
        .map(|(t, p)| key_of(&t.topic, t.topic_id, p))
        .collect();

    // Sessions: epoch -1 is sessionless (closing any session named); epoch 0 starts one.
    let (session_id, incremental, partitions): (i32, bool, Vec<(PartitionKey, SessionPartition)>) =
        if version < 7 || request.session_epoch == -1 {
            if request.session_id != 0 {
                broker.fetch_sessions.remove(request.session_id);
            }
            (0, false, requested)
        } else if request.session_epoch == 0 {
            if request.session_id != 0 {
                broker.fetch_sessions.remove(request.session_id);
            }
            let map: BTreeMap<_, _> = requested.iter().cloned().collect();
            let id = broker.fetch_sessions.create(map);
            (id, false, requested)
        } else {
            match broker.fetch_sessions.update(
                request.session_id,
                request.session_epoch,
                requested,
                &forgotten,
            ) {
                Ok(all) => (request.session_id, true, all.into_iter().collect()),
                Err(e) => {
                    let code = match e {
                        SessionError::NotFound => ResponseError::FetchSessionIdNotFound.code(),
                        SessionError::InvalidEpoch => {
                            ResponseError::InvalidFetchSessionEpoch.code()
                        }
                    };
                    return FetchResponse::default()
                        .with_error_code(code)
                        .with_session_id(0);
                }
            }
        };

    let replica_id = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let fetcher = Fetcher {
        may_read_follower: version >= 11 && replica_id < 0,
        rack: if version >= 11 {
            Some(request.rack_id.to_string()).filter(|r| !r.is_empty())
        } else {
            None
        },
    };
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let reads = loop {
        let notified = broker.replication.data_changed().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut reads = Vec::with_capacity(partitions.len());
        let mut total = 0usize;
        let mut any_error = false;
        for (key, p) in &partitions {
            let budget = max_bytes.saturating_sub(total);
            let read = read_partition(
                broker,
                key,
                p,
                budget,
                total == 0,
                request.isolation_level,
                &fetcher,
            );
            total += read.bytes;
            any_error |= read.data.error_code != 0 || read.redirect;
            reads.push(read);
        }
        let now = Instant::now();
        if total >= min_bytes || any_error || now >= deadline {
            break reads;
        }
        if tokio::time::timeout(deadline - now, notified)
            .await
            .is_err()
        {
            // Timed out: one last look so data that arrived just now is not missed.
            continue;
        }
    };

    broker.count_fetch_bytes(&request.rack_id, reads.iter().map(|r| r.bytes).sum());
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for read in reads {
        let (name, id, _) = &read.key;
        if incremental {
            let previous = partitions
                .iter()
                .find(|(k, _)| k == &read.key)
                .map(|(_, p)| p);
            let unchanged = previous.is_some_and(|p| {
                p.last_high_watermark == read.data.high_watermark
                    && p.last_log_start_offset == read.data.log_start_offset
            });
            if read.bytes == 0 && read.data.error_code == 0 && unchanged {
                continue;
            }
        }
        if session_id != 0 {
            broker.fetch_sessions.sent(
                session_id,
                &read.key,
                read.data.high_watermark,
                read.data.log_start_offset,
            );
        }
        let same_topic = topics.last().is_some_and(|t| {
            if use_ids {
                t.topic_id == *id
            } else {
                t.topic.0.as_str() == name
            }
        });
        if !same_topic {
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(name.clone())))
                    .with_topic_id(*id),
            );
        }
        if let Some(t) = topics.last_mut() {
            t.partitions.push(read.data);
        }
    }
    let node_endpoints = if version >= 12 {
        leader_hints(broker, &mut topics, version, listener)
    } else {
        Vec::new()
    };
    FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(topics)
        .with_node_endpoints(node_endpoints)
}

/// KIP-951: partitions answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH carry the
/// leader this broker knows of, and (v16+) the response carries those leaders' endpoints.
fn leader_hints(
    broker: &Broker,
    topics: &mut [FetchableTopicResponse],
    version: i16,
    listener: &str,
) -> Vec<NodeEndpoint> {
    let not_leader = ResponseError::NotLeaderOrFollower.code();
    let fenced = ResponseError::FencedLeaderEpoch.code();
    let md = broker.replication.metadata();
    let mut leaders = Vec::new();
    for t in topics.iter_mut() {
        let name = if t.topic.0.is_empty() {
            md.topic_by_id(&t.topic_id).map(|t| t.name.clone())
        } else {
            Some(t.topic.0.to_string())
        };
        let Some(name) = name else { continue };
        for p in &mut t.partitions {
            if p.error_code != not_leader && p.error_code != fenced {
                continue;
            }
            let view = broker.leader_view(&md, &name, p.partition_index);
            p.current_leader = LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(view.leader_epoch);
            if view.leader >= 0 && !leaders.contains(&view.leader) {
                leaders.push(view.leader);
            }
        }
    }
    if version < 16 {
        return Vec::new();
    }
    leaders
        .iter()
        .filter_map(|id| md.brokers.get(id))
        .filter_map(|b| {
            let (host, port) = b.endpoint(listener)?;
            Some(
                NodeEndpoint::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port)
                    .with_rack(b.rack.clone().map(StrBytes::from_string)),
            )
        })
        .collect()
}
