//! The transaction coordinator and the transactional data path over the raw protocol, against
//! Kafka's error codes and state machine: FindCoordinator for transactional ids, InitProducerId
//! (KIP-360 epoch bumps and fencing), AddPartitionsToTxn (and KIP-890 verification),
//! transactional Produce, EndTxn, read_committed Fetch and ListOffsets, transactional offset
//! commits, DescribeTransactions, ListTransactions, DescribeProducers and the coordinator's
//! abort of timed-out transactions.
//!
//! Markers are written in the background after EndTxn answers, so whatever depends on them is
//! polled with a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{start_with, Client};
use runnel_broker::{Broker, BrokerConfig};
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_storage::batch::{build_batch, BatchHeader, BatchIter, BatchOptions, NewRecord};

// ---- codes ----

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// TRANSACTION_ABORTABLE (KIP-890, Kafka 3.8+).
const TRANSACTION_ABORTABLE: i16 = 120;

// ---- names ----

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic(name: &str) -> TopicName {
    TopicName(s(name))
}

fn tid(id: &str) -> TransactionalId {
    TransactionalId(s(id))
}

fn group(id: &str) -> GroupId {
    GroupId(s(id))
}

// ---- the broker ----

/// A broker with few coordinator partitions, so they are created and loaded quickly.
fn small(c: &mut BrokerConfig) {
    c.txn.state_log_num_partitions = 3;
    c.group.offsets_topic_num_partitions = 1;
    c.group.groups.initial_rebalance_delay_ms = 0;
}

async fn start() -> (Arc<Broker>, Client, tempfile::TempDir) {
    start_with(small).await
}

async fn create(client: &mut Client, name: &str, partitions: i32) {
    let r = client
        .call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic(name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            ])),
        )
        .await;
    let ResponseKind::CreateTopics(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(r.topics[0].error_code, NONE, "{r:?}");
}

/// Polls `$body` (an `Option`, may `.await`) until it is `Some`, for at most 20 seconds.
macro_rules! eventually {
    ($what:expr, $body:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = $body {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {}",
                $what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

/// Errors a client retries while the coordinator is being created or loaded, or is busy.
fn retriable(code_: i16) -> bool {
    [
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::NotCoordinator,
        ResponseError::ConcurrentTransactions,
    ]
    .iter()
    .any(|e| e.code() == code_)
}

// ---- coordinator requests ----

async fn find_txn_coordinator(client: &mut Client, id: &str) -> FindCoordinatorResponse {
    let r = client
        .call(
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_key(s(id)),
            ),
        )
        .await;
    let ResponseKind::FindCoordinator(r) = r else {
        panic!("{r:?}")
    };
    r
}

async fn init_raw(
    client: &mut Client,
    version: i16,
    id: &str,
    timeout_ms: i32,
    current: (i64, i16),
) -> InitProducerIdResponse {
    let r = client
        .call(
            ApiKey::InitProducerId,
            version,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(tid(id)))
                    .with_transaction_timeout_ms(timeout_ms)
                    .with_producer_id(ProducerId(current.0))
                    .with_producer_epoch(current.1),
            ),
        )
        .await;
    let ResponseKind::InitProducerId(r) = r else {
        panic!("{r:?}")
    };
    r
}

/// What a transactional producer holds after InitProducerId.
#[derive(Debug, Clone)]
struct Producer {
    id: String,
    pid: i64,
    epoch: i16,
}

/// FindCoordinator and InitProducerId (v4, no KIP-360 ids), retried while the coordinator
/// loads or finishes an earlier transaction.
async fn init_with(client: &mut Client, id: &str, timeout_ms: i32) -> Producer {
    let (pid, epoch) = eventually!(format!("InitProducerId({id}) succeeds"), {
        let f = find_txn_coordinator(client, id).await;
        if f.error_code != NONE {
            assert!(retriable(f.error_code), "{f:?}");
            None
        } else {
            let r = init_raw(client, 4, id, timeout_ms, (-1, -1)).await;
            if r.error_code == NONE {
                Some((r.producer_id.0, r.producer_epoch))
            } else {
                assert!(retriable(r.error_code), "{id}: {r:?}");
                None
            }
        }
    });
    coordinator_loaded(client).await;
    Producer {
        id: id.to_string(),
        pid,
        epoch,
    }
}

/// Waits until every `__transaction_state` partition is loaded (ListTransactions answers
/// COORDINATOR_LOAD_IN_PROGRESS until then), so requests for any transactional id are
/// answered on their merits.
async fn coordinator_loaded(client: &mut Client) {
    eventually!("the transaction coordinator has loaded every partition", {
        let r = client
            .call(
                ApiKey::ListTransactions,
                0,
                RequestKind::ListTransactions(ListTransactionsRequest::default()),
            )
            .await;
        let ResponseKind::ListTransactions(r) = r else {
            panic!("{r:?}")
        };
        assert!(r.error_code == NONE || retriable(r.error_code), "{r:?}");
        (r.error_code == NONE).then_some(())
    });
}

async fn init(client: &mut Client, id: &str) -> Producer {
    init_with(client, id, 60_000).await
}

fn txn_topics(
    parts: &[(&str, i32)],
) -> Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> {
    let mut topics: Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> = Vec::new();
    for (t, p) in parts {
        match topics.iter_mut().find(|x| x.name.0.as_str() == *t) {
            Some(x) => x.partitions.push(*p),
            None => topics.push(
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(topic(t))
                    .with_partitions(vec![*p]),
            ),
        }
    }
    topics
}

fn partition_codes(
    results: &[add_partitions_to_txn_response::AddPartitionsToTxnTopicResult],
) -> BTreeMap<(String, i32), i16> {
    results
        .iter()
        .flat_map(|t| {
            t.results_by_partition.iter().map(move |p| {
                (
                    (t.name.0.to_string(), p.partition_index),
                    p.partition_error_code,
                )
            })
        })
        .collect()
}

/// AddPartitionsToTxn in the clients' form (v0-3): the code of each partition.
async fn add_partitions_raw(
    client: &mut Client,
    version: i16,
    id: &str,
    pid: i64,
    epoch: i16,
    parts: &[(&str, i32)],
) -> BTreeMap<(String, i32), i16> {
    let r = client
        .call(
            ApiKey::AddPartitionsToTxn,
            version,
            RequestKind::AddPartitionsToTxn(
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(tid(id))
                    .with_v3_and_below_producer_id(ProducerId(pid))
                    .with_v3_and_below_producer_epoch(epoch)
                    .with_v3_and_below_topics(txn_topics(parts)),
            ),
        )
        .await;
    let ResponseKind::AddPartitionsToTxn(r) = r else {
        panic!("{r:?}")
    };
    let codes = partition_codes(&r.results_by_topic_v3_and_below);
    assert_eq!(codes.len(), parts.len(), "one result per partition: {r:?}");
    codes
}

/// The one code every partition got (they always agree when all partitions exist).
async fn add_partitions_code(
    client: &mut Client,
    version: i16,
    id: &str,
    pid: i64,
    epoch: i16,
    parts: &[(&str, i32)],
) -> i16 {
    let codes = add_partitions_raw(client, version, id, pid, epoch, parts).await;
    let distinct: BTreeSet<i16> = codes.values().copied().collect();
    assert_eq!(distinct.len(), 1, "{codes:?}");
    distinct.into_iter().next().unwrap_or(-1)
}

async fn add_partitions(client: &mut Client, p: &Producer, parts: &[(&str, i32)]) {
    let c = add_partitions_code(client, 3, &p.id, p.pid, p.epoch, parts).await;
    assert_eq!(c, NONE, "AddPartitionsToTxn({}, {parts:?})", p.id);
}

/// One transaction of a batched AddPartitionsToTxn: the producer, `verify_only`, partitions.
type TxnPartitions<'a> = (&'a Producer, bool, &'a [(&'a str, i32)]);

/// AddPartitionsToTxn in the brokers' batched form (v4+): the codes per transaction.
async fn add_partitions_batched(
    client: &mut Client,
    version: i16,
    txns: &[TxnPartitions<'_>],
) -> (i16, BTreeMap<String, BTreeMap<(String, i32), i16>>) {
    let transactions = txns
        .iter()
        .map(|(p, verify_only, parts)| {
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(tid(&p.id))
                .with_producer_id(ProducerId(p.pid))
                .with_producer_epoch(p.epoch)
                .with_verify_only(*verify_only)
                .with_topics(txn_topics(parts))
        })
        .collect();
    let r = client
        .call(
            ApiKey::AddPartitionsToTxn,
            version,
            RequestKind::AddPartitionsToTxn(
                AddPartitionsToTxnRequest::default().with_transactions(transactions),
            ),
        )
        .await;
    let ResponseKind::AddPartitionsToTxn(r) = r else {
        panic!("{r:?}")
    };
    let by_txn = r
        .results_by_transaction
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                partition_codes(&t.topic_results),
            )
        })
        .collect();
    (r.error_code, by_txn)
}

async fn end_txn_raw(
    client: &mut Client,
    version: i16,
    id: &str,
    pid: i64,
    epoch: i16,
    commit: bool,
) -> i16 {
    let r = client
        .call(
            ApiKey::EndTxn,
            version,
            RequestKind::EndTxn(
                EndTxnRequest::default()
                    .with_transactional_id(tid(id))
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_committed(commit),
            ),
        )
        .await;
    let ResponseKind::EndTxn(r) = r else {
        panic!("{r:?}")
    };
    r.error_code
}

async fn end_txn(client: &mut Client, p: &Producer, commit: bool) -> i16 {
    end_txn_raw(client, 3, &p.id, p.pid, p.epoch, commit).await
}

async fn describe(
    client: &mut Client,
    id: &str,
) -> describe_transactions_response::TransactionState {
    let r = client
        .call(
            ApiKey::DescribeTransactions,
            0,
            RequestKind::DescribeTransactions(
                DescribeTransactionsRequest::default().with_transactional_ids(vec![tid(id)]),
            ),
        )
        .await;
    let ResponseKind::DescribeTransactions(mut r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(r.transaction_states.len(), 1, "{r:?}");
    r.transaction_states.remove(0)
}

/// The partitions DescribeTransactions shows, flattened.
fn described_partitions(
    t: &describe_transactions_response::TransactionState,
) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = t
        .topics
        .iter()
        .flat_map(|d| {
            d.partitions
                .iter()
                .map(move |p| (d.topic.0.to_string(), *p))
        })
        .collect();
    out.sort();
    out
}

/// Polls DescribeTransactions until the transaction is in `state`.
async fn wait_for_state(
    client: &mut Client,
    id: &str,
    state: &str,
) -> describe_transactions_response::TransactionState {
    eventually!(format!("{id} is {state}"), {
        let t = describe(client, id).await;
        assert_eq!(t.error_code, NONE, "{t:?}");
        (t.transaction_state.as_str() == state).then_some(t)
    })
}

async fn add_offsets(client: &mut Client, version: i16, p: &Producer, group_id: &str) -> i16 {
    let r = client
        .call(
            ApiKey::AddOffsetsToTxn,
            version,
            RequestKind::AddOffsetsToTxn(
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(tid(&p.id))
                    .with_producer_id(ProducerId(p.pid))
                    .with_producer_epoch(p.epoch)
                    .with_group_id(group(group_id)),
            ),
        )
        .await;
    let ResponseKind::AddOffsetsToTxn(r) = r else {
        panic!("{r:?}")
    };
    r.error_code
}

/// TxnOffsetCommit of one offset per partition (a simple, member-less commit): the codes.
async fn txn_commit(
    client: &mut Client,
    version: i16,
    p: &Producer,
    group_id: &str,
    offsets: &[(&str, i32, i64)],
) -> Vec<i16> {
    let mut topics: Vec<txn_offset_commit_request::TxnOffsetCommitRequestTopic> = Vec::new();
    for (t, partition, offset) in offsets {
        let part = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(-1)
            .with_committed_metadata(Some(s("txn")));
        match topics.iter_mut().find(|x| x.name.0.as_str() == *t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(
                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(topic(t))
                    .with_partitions(vec![part]),
            ),
        }
    }
    let r = client
        .call(
            ApiKey::TxnOffsetCommit,
            version,
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(tid(&p.id))
                    .with_group_id(group(group_id))
                    .with_producer_id(ProducerId(p.pid))
                    .with_producer_epoch(p.epoch)
                    .with_generation_id(-1)
                    .with_topics(topics),
            ),
        )
        .await;
    let ResponseKind::TxnOffsetCommit(r) = r else {
        panic!("{r:?}")
    };
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// OffsetFetch v7 of one partition: (group error, partition error, committed offset).
async fn offset_fetch(
    client: &mut Client,
    group_id: &str,
    t: &str,
    partition: i32,
    require_stable: bool,
) -> (i16, i16, i64) {
    let r = client
        .call(
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(group(group_id))
                    .with_require_stable(require_stable)
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(topic(t))
                            .with_partition_indexes(vec![partition]),
                    ])),
            ),
        )
        .await;
    let ResponseKind::OffsetFetch(r) = r else {
        panic!("{r:?}")
    };
    let p = &r.topics[0].partitions[0];
    (r.error_code, p.error_code, p.committed_offset)
}

/// OffsetFetch v8 (the batched groups form) of one partition: (group error, partition error,
/// committed offset).
async fn offset_fetch_v8(
    client: &mut Client,
    group_id: &str,
    t: &str,
    partition: i32,
    require_stable: bool,
) -> (i16, i16, i64) {
    let r = client
        .call(
            ApiKey::OffsetFetch,
            8,
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_require_stable(require_stable)
                    .with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(group(group_id))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(topic(t))
                                    .with_partition_indexes(vec![partition]),
                            ])),
                    ]),
            ),
        )
        .await;
    let ResponseKind::OffsetFetch(r) = r else {
        panic!("{r:?}")
    };
    let g = &r.groups[0];
    let p = &g.topics[0].partitions[0];
    (g.error_code, p.error_code, p.committed_offset)
}

/// Waits until the group coordinator of `group_id` has loaded.
async fn group_ready(client: &mut Client, group_id: &str) {
    let r = client
        .call(
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s(group_id))),
        )
        .await;
    let ResponseKind::FindCoordinator(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(r.error_code, NONE, "{r:?}");
    eventually!(format!("the coordinator of {group_id} loads"), {
        let (e, _, _) = offset_fetch(client, group_id, "none", 0, false).await;
        (e != code(ResponseError::CoordinatorLoadInProgress)).then_some(())
    });
}

async fn list_txns(
    client: &mut Client,
    version: i16,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let r = client
        .call(
            ApiKey::ListTransactions,
            version,
            RequestKind::ListTransactions(request),
        )
        .await;
    let ResponseKind::ListTransactions(r) = r else {
        panic!("{r:?}")
    };
    r
}

/// The (transactional id, state) pairs listed.
fn listed(r: &ListTransactionsResponse) -> BTreeSet<(String, String)> {
    r.transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                t.transaction_state.to_string(),
            )
        })
        .collect()
}

// ---- data requests ----

fn records(n: usize, tag: &str) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord {
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: Vec::new(),
        })
        .collect()
}

fn txn_batch(p: &Producer, seq: i32, n: usize) -> Bytes {
    build_batch(
        &records(n, "txn"),
        &BatchOptions {
            producer_id: p.pid,
            producer_epoch: p.epoch,
            base_sequence: seq,
            transactional: true,
            ..Default::default()
        },
    )
    .expect("batch")
}

fn plain_batch(n: usize) -> Bytes {
    build_batch(&records(n, "plain"), &BatchOptions::default()).expect("batch")
}

/// Produce v`version` of one batch: (error, base offset).
async fn produce_v(
    client: &mut Client,
    version: i16,
    t: &str,
    partition: i32,
    transactional_id: Option<&str>,
    batch: Bytes,
) -> (i16, i64) {
    let r = client
        .call(
            ApiKey::Produce,
            version,
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_transactional_id(transactional_id.map(tid))
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![produce_request::TopicProduceData::default()
                        .with_name(topic(t))
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(batch)),
                        ])]),
            ),
        )
        .await;
    let ResponseKind::Produce(r) = r else {
        panic!("{r:?}")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn produce(
    client: &mut Client,
    t: &str,
    partition: i32,
    transactional_id: Option<&str>,
    batch: Bytes,
) -> (i16, i64) {
    produce_v(client, 9, t, partition, transactional_id, batch).await
}

const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;

/// Fetch v11 of one partition from `offset`.
async fn fetch(
    client: &mut Client,
    t: &str,
    partition: i32,
    offset: i64,
    isolation: i8,
) -> fetch_response::PartitionData {
    let r = client
        .call(
            ApiKey::Fetch,
            11,
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_isolation_level(isolation)
                    .with_topics(vec![fetch_request::FetchTopic::default()
                        .with_topic(topic(t))
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 20)])]),
            ),
        )
        .await;
    let ResponseKind::Fetch(mut r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(r.error_code, NONE, "{r:?}");
    let mut t = r.responses.remove(0);
    let p = t.partitions.remove(0);
    assert_eq!(p.error_code, NONE, "{p:?}");
    p
}

/// The headers of the batches a fetch returned.
fn batches(p: &fetch_response::PartitionData) -> Vec<BatchHeader> {
    p.records
        .as_ref()
        .map(|r| BatchIter::new(r).map(|(_, h)| h).collect())
        .unwrap_or_default()
}

/// The (first offset, last offset) of the data (non-control) batches a fetch returned.
fn data_ranges(p: &fetch_response::PartitionData) -> Vec<(i64, i64)> {
    batches(p)
        .iter()
        .filter(|h| !h.is_control())
        .map(|h| (h.base_offset, h.last_offset()))
        .collect()
}

fn aborted(p: &fetch_response::PartitionData) -> Vec<(i64, i64)> {
    p.aborted_transactions
        .as_ref()
        .map(|a| {
            a.iter()
                .map(|t| (t.producer_id.0, t.first_offset))
                .collect()
        })
        .unwrap_or_default()
}

/// ListOffsets v7 of one partition: (error, offset).
async fn list_offset(
    client: &mut Client,
    t: &str,
    partition: i32,
    timestamp: i64,
    isolation: i8,
) -> (i16, i64) {
    let r = client
        .call(
            ApiKey::ListOffsets,
            7,
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_isolation_level(isolation)
                    .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                        .with_name(topic(t))
                        .with_partitions(vec![
                            list_offsets_request::ListOffsetsPartition::default()
                                .with_partition_index(partition)
                                .with_timestamp(timestamp),
                        ])]),
            ),
        )
        .await;
    let ResponseKind::ListOffsets(r) = r else {
        panic!("{r:?}")
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

async fn describe_producers(
    client: &mut Client,
    t: &str,
    partition: i32,
) -> Vec<describe_producers_response::ProducerState> {
    let r = client
        .call(
            ApiKey::DescribeProducers,
            0,
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(topic(t))
                    .with_partition_indexes(vec![partition]),
            ])),
        )
        .await;
    let ResponseKind::DescribeProducers(r) = r else {
        panic!("{r:?}")
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, NONE, "{p:?}");
    p.active_producers.clone()
}

/// Waits until every marker of the partition is written: the last stable offset has caught
/// up with the high watermark.
async fn wait_stable(
    client: &mut Client,
    t: &str,
    partition: i32,
) -> fetch_response::PartitionData {
    eventually!(format!("{t}-{partition} has no undecided transaction"), {
        let p = fetch(client, t, partition, 0, READ_COMMITTED).await;
        (p.last_stable_offset == p.high_watermark).then_some(p)
    })
}

// ---- FindCoordinator ----

#[tokio::test]
async fn find_coordinator_for_a_transactional_id_returns_this_broker_and_creates_the_state_topic() {
    let (broker, mut client, _dir) = start().await;
    let exists = |b: &Broker| {
        b.replication
            .metadata()
            .topics
            .contains_key("__transaction_state")
    };
    assert!(!exists(&broker), "created on first use only");

    let f = eventually!("FindCoordinator(key_type=1) answers", {
        let f = find_txn_coordinator(&mut client, "app").await;
        if f.error_code == NONE {
            Some(f)
        } else {
            assert!(retriable(f.error_code), "{f:?}");
            None
        }
    });
    let ResponseKind::Metadata(md) = client
        .call(
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(topic("__transaction_state"))),
            ]))),
        )
        .await
    else {
        panic!("Metadata")
    };
    assert_eq!(md.brokers.len(), 1);
    let me = &md.brokers[0];
    assert_eq!(
        (f.node_id, f.host.as_str(), f.port),
        (me.node_id, me.host.as_str(), me.port),
        "the coordinator is this broker"
    );
    assert!(exists(&broker));
    assert_eq!(md.topics[0].error_code, NONE);
    assert!(md.topics[0].is_internal, "__transaction_state is internal");
    assert_eq!(
        md.topics[0].partitions.len(),
        3,
        "transaction.state.log.num.partitions"
    );

    // The batched form (v4+): one answer per key; an empty transactional id is invalid.
    let ResponseKind::FindCoordinator(r) = client
        .call(
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_coordinator_keys(vec![s("app"), s("")]),
            ),
        )
        .await
    else {
        panic!("FindCoordinator")
    };
    assert_eq!(r.coordinators.len(), 2);
    assert_eq!(
        (r.coordinators[0].error_code, r.coordinators[0].node_id.0),
        (NONE, me.node_id.0)
    );
    assert_eq!(
        r.coordinators[1].error_code,
        code(ResponseError::InvalidRequest)
    );
    let empty = find_txn_coordinator(&mut client, "").await;
    assert_eq!(empty.error_code, code(ResponseError::InvalidRequest));

    // Clients may not write to it.
    let (e, _) = produce(&mut client, "__transaction_state", 0, None, plain_batch(1)).await;
    assert_eq!(e, code(ResponseError::InvalidTopicException));
    broker.replication.shutdown();
}

// ---- InitProducerId ----

#[tokio::test]
async fn init_producer_id_validates_the_id_and_timeout_and_bumps_the_epoch_per_incarnation() {
    let (broker, mut client, _dir) = start().await;
    let first = init(&mut client, "app").await;
    assert_eq!(first.epoch, 0, "the first incarnation gets epoch 0");
    assert!(first.pid >= 0);

    for version in [1, 4] {
        let r = init_raw(&mut client, version, "", 60_000, (-1, -1)).await;
        assert_eq!(
            (r.error_code, r.producer_id.0, r.producer_epoch),
            (code(ResponseError::InvalidRequest), -1, -1),
            "v{version}: an empty transactional id"
        );
    }
    for timeout in [0, -1, 900_001] {
        let r = init_raw(&mut client, 4, "app", timeout, (-1, -1)).await;
        assert_eq!(
            r.error_code,
            code(ResponseError::InvalidTransactionTimeout),
            "timeout {timeout}"
        );
    }
    // The maximum itself (transaction.max.timeout.ms) is allowed; each incarnation fences the
    // one before with a higher epoch of the same producer id.
    let r = init_raw(&mut client, 2, "app", 900_000, (-1, -1)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, first.pid, 1)
    );
    let r = init_raw(&mut client, 0, "app", 60_000, (-1, -1)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, first.pid, 2)
    );
    let described = describe(&mut client, "app").await;
    assert_eq!(
        (
            described.transaction_state.as_str(),
            described.producer_id.0,
            described.producer_epoch,
            described.transaction_timeout_ms
        ),
        ("Empty", first.pid, 2, 60_000)
    );
    // Another transactional id gets another producer id.
    let other = init(&mut client, "other-app").await;
    assert_ne!(other.pid, first.pid);
    assert_eq!(other.epoch, 0);
    broker.replication.shutdown();
}

#[tokio::test]
async fn init_producer_id_kip360_bumps_the_current_producer_and_fences_strangers() {
    let (broker, mut client, _dir) = start().await;
    let p = init(&mut client, "app").await;
    assert_eq!(p.epoch, 0);

    // The current producer id and epoch: bumped.
    let r = init_raw(&mut client, 4, "app", 60_000, (p.pid, 0)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, p.pid, 1)
    );
    // A retry of that call (the answer was lost): the same epoch, not another bump.
    let r = init_raw(&mut client, 4, "app", 60_000, (p.pid, 0)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, p.pid, 1)
    );
    let r = init_raw(&mut client, 3, "app", 60_000, (p.pid, 1)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, p.pid, 2)
    );

    // Another producer id: PRODUCER_FENCED from v4, INVALID_PRODUCER_EPOCH before (KIP-588).
    let stranger = (p.pid + 1000, 0);
    let r = init_raw(&mut client, 4, "app", 60_000, stranger).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (code(ResponseError::ProducerFenced), -1, -1)
    );
    let r = init_raw(&mut client, 3, "app", 60_000, stranger).await;
    assert_eq!(r.error_code, code(ResponseError::InvalidProducerEpoch));
    // An epoch older than the last bump's: fenced too.
    let r = init_raw(&mut client, 4, "app", 60_000, (p.pid, 0)).await;
    assert_eq!(r.error_code, code(ResponseError::ProducerFenced));
    let r = init_raw(&mut client, 3, "app", 60_000, (p.pid, 0)).await;
    assert_eq!(r.error_code, code(ResponseError::InvalidProducerEpoch));
    assert_eq!(
        describe(&mut client, "app").await.producer_epoch,
        2,
        "refusals changed nothing"
    );

    // A transactional id the coordinator does not know yet: any ids are accepted (the
    // producer recovers from UNKNOWN_PRODUCER_ID), and it gets epoch 0.
    let r = init_raw(&mut client, 4, "fresh", 60_000, (12_345, 7)).await;
    assert_eq!((r.error_code, r.producer_epoch), (NONE, 0), "{r:?}");
    broker.replication.shutdown();
}

#[tokio::test]
async fn init_producer_id_with_only_one_of_producer_id_and_epoch_is_invalid() {
    let (broker, mut client, _dir) = start().await;
    let p = init(&mut client, "app").await;
    let mut answers = Vec::new();
    for current in [(p.pid, -1), (-1, 0)] {
        let r = init_raw(&mut client, 4, "app", 60_000, current).await;
        answers.push((current, r.error_code, r.producer_id.0, r.producer_epoch));
    }
    let invalid = code(ResponseError::InvalidRequest);
    assert_eq!(
        answers,
        vec![((p.pid, -1), invalid, -1, -1), ((-1, 0), invalid, -1, -1)],
        "(sent (pid, epoch), error, pid, epoch)"
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn init_producer_id_during_an_open_transaction_aborts_it_and_fences_the_old_producer() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let old = init(&mut client, "app").await;
    add_partitions(&mut client, &old, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("app"), txn_batch(&old, 0, 2)).await,
        (NONE, 0)
    );

    // The first answer is CONCURRENT_TRANSACTIONS while the coordinator aborts; the client's
    // retries then get an epoch bumped three times: once to fence, once more by the abort
    // (the coordinator's own end follows `transaction.version`, 2 by default, as in Kafka 4),
    // once for the new incarnation.
    let r = init_raw(&mut client, 4, "app", 60_000, (-1, -1)).await;
    assert_eq!(
        r.error_code,
        code(ResponseError::ConcurrentTransactions),
        "{r:?}"
    );
    let new = init(&mut client, "app").await;
    assert_eq!((new.pid, new.epoch), (old.pid, 3));
    let t = describe(&mut client, "app").await;
    assert_eq!(t.transaction_state.as_str(), "Empty");

    let p = wait_stable(&mut client, "t", 0).await;
    assert_eq!(
        aborted(&p),
        vec![(old.pid, 0)],
        "the open transaction was aborted"
    );
    assert_eq!(
        add_partitions_code(&mut client, 3, "app", old.pid, old.epoch, &[("t", 0)]).await,
        code(ResponseError::ProducerFenced)
    );
    assert_eq!(
        end_txn_raw(&mut client, 3, "app", old.pid, old.epoch, true).await,
        code(ResponseError::ProducerFenced)
    );
    broker.replication.shutdown();
}

// ---- AddPartitionsToTxn ----

#[tokio::test]
async fn add_partitions_to_txn_answers_kafkas_errors_for_producers_and_partitions() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 2).await;
    init(&mut client, "adder").await;
    let p = init(&mut client, "adder").await;
    assert_eq!(p.epoch, 1, "so that both an older and a newer epoch exist");

    // No such transactional id, or another producer id: INVALID_PRODUCER_ID_MAPPING.
    for version in 0..=3 {
        assert_eq!(
            add_partitions_code(&mut client, version, "nobody", p.pid, 0, &[("t", 0)]).await,
            code(ResponseError::InvalidProducerIdMapping),
            "v{version}: unknown transactional id"
        );
        assert_eq!(
            add_partitions_code(&mut client, version, "adder", p.pid + 1, 0, &[("t", 0)]).await,
            code(ResponseError::InvalidProducerIdMapping),
            "v{version}: another producer id"
        );
    }
    // Another epoch: PRODUCER_FENCED from v2, INVALID_PRODUCER_EPOCH for v0 and v1.
    for (version, expected) in [
        (0, ResponseError::InvalidProducerEpoch),
        (1, ResponseError::InvalidProducerEpoch),
        (2, ResponseError::ProducerFenced),
        (3, ResponseError::ProducerFenced),
    ] {
        for epoch in [p.epoch + 1, p.epoch - 1] {
            assert_eq!(
                add_partitions_code(&mut client, version, "adder", p.pid, epoch, &[("t", 0)]).await,
                code(expected),
                "v{version}: epoch {epoch}"
            );
        }
    }
    assert_eq!(
        add_partitions_code(&mut client, 3, "", p.pid, p.epoch, &[("t", 0)]).await,
        code(ResponseError::InvalidRequest),
        "an empty transactional id"
    );

    // An unknown topic or partition fails the request: the others are not attempted.
    let codes = add_partitions_raw(
        &mut client,
        3,
        "adder",
        p.pid,
        p.epoch,
        &[("t", 0), ("t", 9), ("nope", 0)],
    )
    .await;
    let expected: BTreeMap<(String, i32), i16> = [
        (
            ("t".to_string(), 0),
            code(ResponseError::OperationNotAttempted),
        ),
        (
            ("t".to_string(), 9),
            code(ResponseError::UnknownTopicOrPartition),
        ),
        (
            ("nope".to_string(), 0),
            code(ResponseError::UnknownTopicOrPartition),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(codes, expected);
    let t = describe(&mut client, "adder").await;
    assert_eq!(
        (t.transaction_state.as_str(), described_partitions(&t)),
        ("Empty", vec![]),
        "nothing was added"
    );

    // Success: the transaction is Ongoing with the partition; adding it again is a no-op.
    let before = t.transaction_start_time_ms;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    let t = describe(&mut client, "adder").await;
    assert_eq!(
        (t.transaction_state.as_str(), described_partitions(&t)),
        ("Ongoing", vec![("t".to_string(), 0)])
    );
    assert!(t.transaction_start_time_ms > before, "{t:?}");
    assert_eq!((t.producer_id.0, t.producer_epoch), (p.pid, p.epoch));

    // v4 (the brokers' form): verify_only reports without adding; several transactions in
    // one request each get their own result.
    let second = init(&mut client, "adder-2").await;
    for version in [4, 5] {
        let (top, by_txn) = add_partitions_batched(
            &mut client,
            version,
            &[(&p, true, &[("t", 0)]), (&second, false, &[("t", 1)])],
        )
        .await;
        assert_eq!(top, NONE);
        assert_eq!(by_txn.len(), 2, "{by_txn:?}");
        assert_eq!(
            by_txn["adder"],
            [(("t".to_string(), 0), NONE)].into_iter().collect(),
            "v{version}: t-0 is in adder's transaction"
        );
        assert_eq!(
            by_txn["adder-2"],
            [(("t".to_string(), 1), NONE)].into_iter().collect(),
            "v{version}: added to adder-2's transaction"
        );
        let (_, by_txn) =
            add_partitions_batched(&mut client, version, &[(&p, true, &[("t", 1)])]).await;
        let c = by_txn["adder"][&("t".to_string(), 1)];
        assert!(
            c == code(ResponseError::InvalidTxnState) || c == TRANSACTION_ABORTABLE,
            "v{version}: t-1 is not in adder's transaction: {c}"
        );
    }
    let t = describe(&mut client, "adder").await;
    assert_eq!(
        described_partitions(&t),
        vec![("t".to_string(), 0)],
        "verification added nothing"
    );
    let t = describe(&mut client, "adder-2").await;
    assert_eq!(
        (t.transaction_state.as_str(), described_partitions(&t)),
        ("Ongoing", vec![("t".to_string(), 1)])
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn add_partitions_to_txn_verify_only_answers_like_kafka_4() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 2).await;
    init(&mut client, "adder").await;
    let p = init(&mut client, "adder").await;
    assert_eq!(p.epoch, 1);
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    let mut answers = Vec::new();
    for version in [4, 5] {
        for epoch in [p.epoch, p.epoch + 1, p.epoch - 1] {
            let asked = Producer { epoch, ..p.clone() };
            let (_, by_txn) = add_partitions_batched(
                &mut client,
                version,
                &[(&asked, true, &[("t", 0), ("t", 1)])],
            )
            .await;
            let codes = &by_txn["adder"];
            answers.push((
                version,
                epoch,
                codes[&("t".to_string(), 0)],
                codes[&("t".to_string(), 1)],
            ));
        }
    }
    let fenced = code(ResponseError::ProducerFenced);
    let kafka: Vec<(i16, i16, i16, i16)> = [4, 5]
        .into_iter()
        .flat_map(|v| {
            [
                (v, p.epoch, NONE, TRANSACTION_ABORTABLE),
                (v, p.epoch + 1, fenced, fenced),
                (v, p.epoch - 1, fenced, fenced),
            ]
        })
        .collect();
    assert_eq!(answers, kafka, "(version, epoch, t-0 in it, t-1 not in it)");
    broker.replication.shutdown();
}

// ---- transactional Produce (KIP-890 verification) ----

#[tokio::test]
async fn transactional_produce_needs_the_partition_in_the_transaction() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 2).await;
    init(&mut client, "writer").await;
    let p = init(&mut client, "writer").await;
    assert_eq!(p.epoch, 1);
    let leo = |b: &Broker, partition: i32| {
        b.replication
            .replica("t", partition)
            .expect("replica")
            .log()
            .log_end_offset()
    };

    // Not added yet (the transaction is not even open): refused, nothing written.
    assert_eq!(
        produce(&mut client, "t", 0, Some("writer"), txn_batch(&p, 0, 2))
            .await
            .0,
        code(ResponseError::InvalidTxnState)
    );
    // A transactional id the coordinator does not know.
    assert_eq!(
        produce(&mut client, "t", 0, Some("stranger"), txn_batch(&p, 0, 2))
            .await
            .0,
        code(ResponseError::InvalidProducerIdMapping)
    );
    // Transactional records need the request's transactional id.
    let (e, _) = produce(&mut client, "t", 0, None, txn_batch(&p, 0, 2)).await;
    assert_ne!(e, NONE, "transactional records without a transactional id");
    assert_eq!(leo(&broker, 0), 0, "nothing was written");

    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("writer"), txn_batch(&p, 0, 2)).await,
        (NONE, 0)
    );
    assert_eq!(
        produce(&mut client, "t", 0, Some("writer"), txn_batch(&p, 2, 1)).await,
        (NONE, 2)
    );
    // The other partition is still not in the transaction.
    assert_eq!(
        produce(&mut client, "t", 1, Some("writer"), txn_batch(&p, 0, 1))
            .await
            .0,
        code(ResponseError::InvalidTxnState)
    );
    assert_eq!(leo(&broker, 1), 0);
    // An older epoch is fenced.
    let zombie = Producer {
        epoch: p.epoch - 1,
        ..p.clone()
    };
    assert_eq!(
        produce(
            &mut client,
            "t",
            1,
            Some("writer"),
            txn_batch(&zombie, 0, 1)
        )
        .await
        .0,
        code(ResponseError::InvalidProducerEpoch)
    );
    add_partitions(&mut client, &p, &[("t", 1)]).await;
    assert_eq!(
        produce(&mut client, "t", 1, Some("writer"), txn_batch(&p, 0, 1)).await,
        (NONE, 0)
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn transactional_produce_without_a_transactional_id_is_not_authorized() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let p = init(&mut client, "writer").await;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    let (e, _) = produce(&mut client, "t", 0, None, txn_batch(&p, 0, 1)).await;
    assert_eq!(e, code(ResponseError::TransactionalIdAuthorizationFailed));
    broker.replication.shutdown();
}

#[tokio::test]
async fn failed_verification_is_transaction_abortable_for_clients_that_know_it() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    group_ready(&mut client, "g").await;
    let p = init(&mut client, "writer").await;
    let invalid = code(ResponseError::InvalidTxnState);
    let mut answers = Vec::new();
    // Produce v12+ adds the partition instead (Transactions V2, below).
    for version in [9, 10, 11] {
        let (e, _) = produce_v(
            &mut client,
            version,
            "t",
            0,
            Some("writer"),
            txn_batch(&p, 0, 1),
        )
        .await;
        answers.push(("Produce", version, e));
    }
    for version in [3, 4] {
        let codes = txn_commit(&mut client, version, &p, "g", &[("t", 0, 1)]).await;
        answers.push(("TxnOffsetCommit", version, codes[0]));
    }
    assert_eq!(
        answers,
        vec![
            ("Produce", 9, invalid),
            ("Produce", 10, invalid),
            ("Produce", 11, TRANSACTION_ABORTABLE),
            ("TxnOffsetCommit", 3, invalid),
            ("TxnOffsetCommit", 4, TRANSACTION_ABORTABLE),
        ]
    );
    broker.replication.shutdown();
}

// ---- EndTxn ----

#[tokio::test]
async fn end_txn_commits_an_ongoing_transaction_and_refuses_what_kafka_refuses() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 2).await;
    let p = init(&mut client, "ender").await;

    // Nothing to end.
    for commit in [true, false] {
        assert_eq!(
            end_txn(&mut client, &p, commit).await,
            code(ResponseError::InvalidTxnState),
            "EndTxn(commit={commit}) on Empty"
        );
    }
    // Unknown ids and producers, stale epochs (PRODUCER_FENCED from v2).
    assert_eq!(
        end_txn_raw(&mut client, 3, "nobody", p.pid, p.epoch, true).await,
        code(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        end_txn_raw(&mut client, 3, "ender", p.pid + 1, p.epoch, true).await,
        code(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        end_txn_raw(&mut client, 3, "", p.pid, p.epoch, true).await,
        code(ResponseError::InvalidRequest)
    );
    add_partitions(&mut client, &p, &[("t", 0), ("t", 1)]).await;
    for (version, expected) in [
        (1, ResponseError::InvalidProducerEpoch),
        (2, ResponseError::ProducerFenced),
        (4, ResponseError::ProducerFenced),
    ] {
        assert_eq!(
            end_txn_raw(&mut client, version, "ender", p.pid, p.epoch + 1, true).await,
            code(expected),
            "v{version}"
        );
    }
    assert_eq!(
        produce(&mut client, "t", 0, Some("ender"), txn_batch(&p, 0, 3)).await,
        (NONE, 0)
    );

    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    let t = describe(&mut client, "ender").await;
    assert!(
        ["PrepareCommit", "CompleteCommit"].contains(&t.transaction_state.as_str()),
        "{t:?}"
    );
    let t = wait_for_state(&mut client, "ender", "CompleteCommit").await;
    assert_eq!(
        described_partitions(&t),
        vec![],
        "a completed transaction holds no partitions"
    );
    assert_eq!(
        (t.producer_id.0, t.producer_epoch),
        (p.pid, p.epoch),
        "a commit keeps the epoch"
    );

    // Markers reached both partitions (even the one nothing was written to).
    for partition in [0, 1] {
        let data = wait_stable(&mut client, "t", partition).await;
        let markers: Vec<BatchHeader> = batches(&data)
            .into_iter()
            .filter(|h| h.is_control())
            .collect();
        assert_eq!(markers.len(), 1, "t-{partition}: one commit marker");
        assert_eq!(
            (markers[0].producer_id, markers[0].producer_epoch),
            (p.pid, p.epoch)
        );
    }

    // A retried commit succeeds; an abort of the committed transaction is refused.
    assert_eq!(
        end_txn(&mut client, &p, true).await,
        NONE,
        "a retried EndTxn(commit)"
    );
    assert_eq!(
        end_txn(&mut client, &p, false).await,
        code(ResponseError::InvalidTxnState),
        "EndTxn(abort) after a commit"
    );
    assert_eq!(
        describe(&mut client, "ender")
            .await
            .transaction_state
            .as_str(),
        "CompleteCommit"
    );

    // The next transaction can be aborted; then a retried abort succeeds and a commit fails.
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("ender"), txn_batch(&p, 3, 1))
            .await
            .0,
        NONE
    );
    assert_eq!(end_txn(&mut client, &p, false).await, NONE);
    wait_for_state(&mut client, "ender", "CompleteAbort").await;
    assert_eq!(
        end_txn(&mut client, &p, false).await,
        NONE,
        "a retried EndTxn(abort)"
    );
    assert_eq!(
        end_txn(&mut client, &p, true).await,
        code(ResponseError::InvalidTxnState),
        "EndTxn(commit) after an abort"
    );
    broker.replication.shutdown();
}

// ---- read_committed ----

#[tokio::test]
async fn read_committed_fetch_and_list_offsets_stop_at_the_first_open_transaction() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let p = init(&mut client, "reader-app").await;

    // Offset 0: a plain batch. Offsets 1-2: the open transaction.
    assert_eq!(
        produce(&mut client, "t", 0, None, plain_batch(1)).await,
        (NONE, 0)
    );
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("reader-app"), txn_batch(&p, 0, 2)).await,
        (NONE, 1)
    );

    let committed = fetch(&mut client, "t", 0, 0, READ_COMMITTED).await;
    assert_eq!(
        (committed.high_watermark, committed.last_stable_offset),
        (3, 1),
        "the last stable offset is the open transaction's first offset"
    );
    assert_eq!(
        data_ranges(&committed),
        vec![(0, 0)],
        "nothing of the open transaction"
    );
    assert_eq!(aborted(&committed), vec![]);
    let from_open = fetch(&mut client, "t", 0, 1, READ_COMMITTED).await;
    assert_eq!(data_ranges(&from_open), vec![], "{from_open:?}");
    let uncommitted = fetch(&mut client, "t", 0, 0, READ_UNCOMMITTED).await;
    assert_eq!(uncommitted.high_watermark, 3);
    assert_eq!(
        data_ranges(&uncommitted),
        vec![(0, 0), (1, 2)],
        "read_uncommitted sees the open transaction"
    );

    // LATEST is the last stable offset for read_committed, the high watermark otherwise;
    // EARLIEST is the same for both.
    assert_eq!(
        list_offset(&mut client, "t", 0, -1, READ_COMMITTED).await,
        (NONE, 1)
    );
    assert_eq!(
        list_offset(&mut client, "t", 0, -1, READ_UNCOMMITTED).await,
        (NONE, 3)
    );
    assert_eq!(
        list_offset(&mut client, "t", 0, -2, READ_COMMITTED).await,
        (NONE, 0)
    );

    // Commit: everything is visible, up to the marker.
    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    let stable = wait_stable(&mut client, "t", 0).await;
    assert_eq!(
        stable.high_watermark, 4,
        "records 0-2 and the commit marker"
    );
    assert_eq!(data_ranges(&stable), vec![(0, 0), (1, 2)]);
    assert_eq!(
        aborted(&stable),
        vec![],
        "a committed transaction is not aborted"
    );
    let headers = batches(&stable);
    assert!(headers[1].is_transactional() && !headers[1].is_control());
    assert!(
        headers[2].is_control() && headers[2].base_offset == 3,
        "{headers:?}"
    );
    assert_eq!(
        list_offset(&mut client, "t", 0, -1, READ_COMMITTED).await,
        (NONE, 4)
    );
    assert_eq!(
        list_offset(&mut client, "t", 0, -1, READ_UNCOMMITTED).await,
        (NONE, 4)
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn aborted_transactions_are_listed_for_read_committed_fetches() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let p = init(&mut client, "aborter").await;

    // A committed transaction (0-1, marker 2), then an aborted one (3-5, marker 6).
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("aborter"), txn_batch(&p, 0, 2)).await,
        (NONE, 0)
    );
    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    wait_for_state(&mut client, "aborter", "CompleteCommit").await;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("aborter"), txn_batch(&p, 2, 3)).await,
        (NONE, 3)
    );
    assert_eq!(end_txn(&mut client, &p, false).await, NONE);
    let t = wait_for_state(&mut client, "aborter", "CompleteAbort").await;
    assert_eq!(described_partitions(&t), vec![]);

    let p0 = wait_stable(&mut client, "t", 0).await;
    assert_eq!(p0.high_watermark, 7);
    // The aborted batch is returned, with the transaction the client must drop.
    assert_eq!(data_ranges(&p0), vec![(0, 1), (3, 5)]);
    assert_eq!(aborted(&p0), vec![(p.pid, 3)]);
    let markers: Vec<i64> = batches(&p0)
        .iter()
        .filter(|h| h.is_control())
        .map(|h| h.base_offset)
        .collect();
    assert_eq!(markers, vec![2, 6]);
    let from_aborted = fetch(&mut client, "t", 0, 4, READ_COMMITTED).await;
    assert_eq!(
        aborted(&from_aborted),
        vec![(p.pid, 3)],
        "a fetch from inside it"
    );
    // read_uncommitted clients are told of no aborted transactions.
    let uncommitted = fetch(&mut client, "t", 0, 0, READ_UNCOMMITTED).await;
    assert_eq!(aborted(&uncommitted), vec![]);
    assert_eq!(
        list_offset(&mut client, "t", 0, -1, READ_COMMITTED).await,
        (NONE, 7)
    );
    broker.replication.shutdown();
}

// ---- transactional offset commits ----

#[tokio::test]
async fn transactional_offsets_are_invisible_until_the_commit_and_never_appear_after_an_abort() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 2).await;
    group_ready(&mut client, "g").await;
    let p = init(&mut client, "committer").await;

    // Without AddOffsetsToTxn first the group's partition is not in the transaction.
    let codes = txn_commit(&mut client, 3, &p, "g", &[("t", 0, 42)]).await;
    assert_eq!(codes.len(), 1);
    assert_ne!(codes[0], NONE, "TxnOffsetCommit before AddOffsetsToTxn");
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, false).await,
        (NONE, NONE, -1)
    );

    assert_eq!(add_offsets(&mut client, 3, &p, "g").await, NONE);
    let t = describe(&mut client, "committer").await;
    assert_eq!(t.transaction_state.as_str(), "Ongoing");
    assert_eq!(
        described_partitions(&t),
        vec![("__consumer_offsets".to_string(), 0)],
        "the group's partition joined the transaction"
    );
    for version in 0..=4 {
        assert_eq!(
            txn_commit(&mut client, version, &p, "g", &[("t", 0, 42), ("t", 1, 7)]).await,
            vec![NONE, NONE],
            "TxnOffsetCommit v{version}"
        );
    }
    assert_eq!(
        txn_commit(&mut client, 3, &p, "g", &[("t", 9, 1)]).await,
        vec![code(ResponseError::UnknownTopicOrPartition)]
    );

    // Pending: invisible, and UNSTABLE_OFFSET_COMMIT for require_stable (v7+, KIP-447).
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, false).await,
        (NONE, NONE, -1)
    );
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, true).await,
        (NONE, code(ResponseError::UnstableOffsetCommit), -1)
    );
    assert_eq!(
        offset_fetch_v8(&mut client, "g", "t", 1, true).await,
        (NONE, code(ResponseError::UnstableOffsetCommit), -1)
    );
    assert_eq!(
        offset_fetch_v8(&mut client, "g", "t", 1, false).await,
        (NONE, NONE, -1)
    );

    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    eventually!("the committed offsets become visible", {
        let stable = offset_fetch(&mut client, "g", "t", 0, true).await;
        (stable == (NONE, NONE, 42)).then_some(())
    });
    wait_for_state(&mut client, "committer", "CompleteCommit").await;
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, false).await,
        (NONE, NONE, 42)
    );
    assert_eq!(
        offset_fetch_v8(&mut client, "g", "t", 1, true).await,
        (NONE, NONE, 7)
    );

    // An aborted transaction's offsets never appear.
    assert_eq!(add_offsets(&mut client, 3, &p, "g").await, NONE);
    assert_eq!(
        txn_commit(&mut client, 3, &p, "g", &[("t", 0, 99)]).await,
        vec![NONE]
    );
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, true).await,
        (NONE, code(ResponseError::UnstableOffsetCommit), -1)
    );
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, false).await,
        (NONE, NONE, 42),
        "the pending offset hides nothing already committed"
    );
    assert_eq!(end_txn(&mut client, &p, false).await, NONE);
    wait_for_state(&mut client, "committer", "CompleteAbort").await;
    eventually!("the aborted offset is dropped", {
        let stable = offset_fetch(&mut client, "g", "t", 0, true).await;
        (stable.1 == NONE).then_some(())
    });
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, true).await,
        (NONE, NONE, 42)
    );
    assert_eq!(
        offset_fetch(&mut client, "g", "t", 0, false).await,
        (NONE, NONE, 42)
    );

    // AddOffsetsToTxn checks the producer like AddPartitionsToTxn.
    let zombie = Producer {
        epoch: p.epoch + 1,
        ..p.clone()
    };
    assert_eq!(
        add_offsets(&mut client, 1, &zombie, "g").await,
        code(ResponseError::InvalidProducerEpoch)
    );
    assert_eq!(
        add_offsets(&mut client, 2, &zombie, "g").await,
        code(ResponseError::ProducerFenced)
    );
    let stranger = Producer {
        id: "nobody".into(),
        ..p.clone()
    };
    assert_eq!(
        add_offsets(&mut client, 3, &stranger, "g").await,
        code(ResponseError::InvalidProducerIdMapping)
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn add_offsets_to_txn_with_an_empty_group_id_adds_its_partition() {
    let (broker, mut client, _dir) = start().await;
    let p = init(&mut client, "committer").await;
    assert_eq!(add_offsets(&mut client, 3, &p, "").await, NONE);
    let t = describe(&mut client, "committer").await;
    assert_eq!(
        described_partitions(&t),
        vec![("__consumer_offsets".to_string(), 0)]
    );
    broker.replication.shutdown();
}

// ---- DescribeTransactions, ListTransactions ----

#[tokio::test]
async fn describe_and_list_transactions_filter_like_kafka() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let a = init(&mut client, "list-a").await;
    let b = init(&mut client, "list-b").await;
    let c = init(&mut client, "other-c").await;
    add_partitions(&mut client, &a, &[("t", 0)]).await;
    add_partitions(&mut client, &c, &[("t", 0)]).await;

    let unknown = describe(&mut client, "never-initialised").await;
    assert_eq!(
        unknown.error_code,
        code(ResponseError::TransactionalIdNotFound),
        "{unknown:?}"
    );
    let t = describe(&mut client, "list-a").await;
    assert_eq!(
        (
            t.error_code,
            t.transaction_state.as_str(),
            t.producer_id.0,
            t.producer_epoch,
            t.transaction_timeout_ms
        ),
        (NONE, "Ongoing", a.pid, a.epoch, 60_000)
    );
    assert!(t.transaction_start_time_ms > 0);
    let t = describe(&mut client, "list-b").await;
    assert_eq!(
        (t.transaction_state.as_str(), t.transaction_start_time_ms),
        ("Empty", -1)
    );

    let pair = |id: &str, state: &str| (id.to_string(), state.to_string());
    let all = list_txns(&mut client, 0, ListTransactionsRequest::default()).await;
    assert_eq!(all.error_code, NONE);
    assert_eq!(
        listed(&all),
        [
            pair("list-a", "Ongoing"),
            pair("list-b", "Empty"),
            pair("other-c", "Ongoing")
        ]
        .into_iter()
        .collect()
    );
    let ids: BTreeMap<String, i64> = all
        .transaction_states
        .iter()
        .map(|t| (t.transactional_id.0.to_string(), t.producer_id.0))
        .collect();
    assert_eq!(ids["list-b"], b.pid);

    // By state; unknown state names are reported back.
    let ongoing = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing")]),
    )
    .await;
    assert_eq!(
        listed(&ongoing),
        [pair("list-a", "Ongoing"), pair("other-c", "Ongoing")]
            .into_iter()
            .collect()
    );
    assert!(ongoing.unknown_state_filters.is_empty());
    let mixed = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing"), s("Bogus")]),
    )
    .await;
    assert_eq!(mixed.error_code, NONE);
    assert_eq!(listed(&mixed), listed(&ongoing));
    assert_eq!(mixed.unknown_state_filters, vec![s("Bogus")]);

    // By producer id.
    let by_pid = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_producer_id_filters(vec![ProducerId(b.pid)]),
    )
    .await;
    assert_eq!(
        listed(&by_pid),
        [pair("list-b", "Empty")].into_iter().collect()
    );
    let none = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_producer_id_filters(vec![ProducerId(-42)]),
    )
    .await;
    assert_eq!(listed(&none), BTreeSet::new());

    // v1: by how long they have been open.
    let long_open = list_txns(
        &mut client,
        1,
        ListTransactionsRequest::default()
            .with_state_filters(vec![s("Ongoing")])
            .with_duration_filter(3_600_000),
    )
    .await;
    assert_eq!(listed(&long_open), BTreeSet::new(), "none open for an hour");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let open = list_txns(
        &mut client,
        1,
        ListTransactionsRequest::default()
            .with_state_filters(vec![s("Ongoing")])
            .with_duration_filter(5),
    )
    .await;
    assert_eq!(listed(&open), listed(&ongoing));

    // v2 (KIP-1152): by a transactional id pattern.
    let pattern = list_txns(
        &mut client,
        2,
        ListTransactionsRequest::default().with_transactional_id_pattern(Some(s("list-.*"))),
    )
    .await;
    assert_eq!(
        listed(&pattern),
        [pair("list-a", "Ongoing"), pair("list-b", "Empty")]
            .into_iter()
            .collect()
    );
    let combined = list_txns(
        &mut client,
        2,
        ListTransactionsRequest::default()
            .with_state_filters(vec![s("Ongoing")])
            .with_transactional_id_pattern(Some(s("list-.*"))),
    )
    .await;
    assert_eq!(
        listed(&combined),
        [pair("list-a", "Ongoing")].into_iter().collect()
    );
    let invalid = list_txns(
        &mut client,
        2,
        ListTransactionsRequest::default().with_transactional_id_pattern(Some(s("(unclosed"))),
    )
    .await;
    assert_eq!(
        invalid.error_code,
        code(ResponseError::InvalidRegularExpression)
    );

    // A committed transaction is listed as CompleteCommit.
    assert_eq!(end_txn(&mut client, &a, true).await, NONE);
    wait_for_state(&mut client, "list-a", "CompleteCommit").await;
    let complete = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_state_filters(vec![s("CompleteCommit")]),
    )
    .await;
    assert_eq!(
        listed(&complete),
        [pair("list-a", "CompleteCommit")].into_iter().collect()
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn list_transactions_with_only_unknown_state_filters_lists_nothing() {
    let (broker, mut client, _dir) = start().await;
    init(&mut client, "app").await;
    let r = list_txns(
        &mut client,
        0,
        ListTransactionsRequest::default().with_state_filters(vec![s("Bogus")]),
    )
    .await;
    assert_eq!(r.unknown_state_filters, vec![s("Bogus")]);
    assert_eq!(listed(&r), BTreeSet::new());
    broker.replication.shutdown();
}

#[tokio::test]
async fn describe_transactions_of_an_empty_transactional_id_is_invalid() {
    let (broker, mut client, _dir) = start().await;
    init(&mut client, "app").await;
    let t = describe(&mut client, "").await;
    assert_eq!(t.error_code, code(ResponseError::InvalidRequest), "{t:?}");
    broker.replication.shutdown();
}

// ---- DescribeProducers ----

#[tokio::test]
async fn describe_producers_shows_where_the_open_transaction_starts() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "t", 1).await;
    let p = init(&mut client, "described").await;
    assert_eq!(
        produce(&mut client, "t", 0, None, plain_batch(2)).await,
        (NONE, 0)
    );
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("described"), txn_batch(&p, 0, 3)).await,
        (NONE, 2)
    );
    assert_eq!(
        produce(&mut client, "t", 0, Some("described"), txn_batch(&p, 3, 1)).await,
        (NONE, 5)
    );

    let producers = describe_producers(&mut client, "t", 0).await;
    assert_eq!(producers.len(), 1, "{producers:?}");
    let open = &producers[0];
    assert_eq!(
        (
            open.producer_id.0,
            open.producer_epoch,
            open.last_sequence,
            open.current_txn_start_offset
        ),
        (p.pid, i32::from(p.epoch), 3, 2),
        "the first offset of the open transaction"
    );
    assert!(open.last_timestamp > 0);

    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    wait_stable(&mut client, "t", 0).await;
    let producers = describe_producers(&mut client, "t", 0).await;
    assert_eq!(producers.len(), 1, "{producers:?}");
    let done = &producers[0];
    assert_eq!(
        (done.producer_id.0, done.current_txn_start_offset),
        (p.pid, -1),
        "no open transaction after the marker"
    );
    assert!(
        done.coordinator_epoch >= 0,
        "the marker's coordinator epoch: {done:?}"
    );
    broker.replication.shutdown();
}

// ---- timeouts ----

fn fast_timeouts(c: &mut BrokerConfig) {
    small(c);
    c.txn.abort_timed_out_interval_ms = 100;
}

#[tokio::test]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let (broker, mut client, _dir) = start_with(fast_timeouts).await;
    create(&mut client, "t", 1).await;
    let p = init_with(&mut client, "slow", 1000).await;
    assert_eq!(p.epoch, 0);
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("slow"), txn_batch(&p, 0, 2)).await,
        (NONE, 0)
    );
    let started = Instant::now();
    assert_eq!(
        describe(&mut client, "slow")
            .await
            .transaction_state
            .as_str(),
        "Ongoing"
    );

    let t = wait_for_state(&mut client, "slow", "CompleteAbort").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "aborted only after its timeout ({:?})",
        started.elapsed()
    );
    assert_eq!(
        (t.producer_id.0, t.producer_epoch),
        (p.pid, p.epoch + 2),
        "the coordinator bumped the epoch to fence the producer, and once more for its \
         Transactions V2 abort (transaction.version 2)"
    );
    assert_eq!(described_partitions(&t), vec![]);

    // The data is aborted for read_committed consumers.
    let data = wait_stable(&mut client, "t", 0).await;
    assert_eq!(data.high_watermark, 3);
    assert_eq!(aborted(&data), vec![(p.pid, 0)]);

    // The old epoch is fenced everywhere.
    assert_eq!(
        add_partitions_code(&mut client, 3, "slow", p.pid, p.epoch, &[("t", 0)]).await,
        code(ResponseError::ProducerFenced)
    );
    assert_eq!(
        add_partitions_code(&mut client, 1, "slow", p.pid, p.epoch, &[("t", 0)]).await,
        code(ResponseError::InvalidProducerEpoch)
    );
    assert_eq!(
        end_txn(&mut client, &p, true).await,
        code(ResponseError::ProducerFenced)
    );
    assert_eq!(
        produce(&mut client, "t", 0, Some("slow"), txn_batch(&p, 2, 1))
            .await
            .0,
        code(ResponseError::InvalidProducerEpoch)
    );
    // A new incarnation carries on from the bumped epoch.
    let next = init_with(&mut client, "slow", 1000).await;
    assert_eq!((next.pid, next.epoch), (p.pid, p.epoch + 3));
    broker.replication.shutdown();
}

#[tokio::test]
async fn a_timed_out_producer_cannot_rejoin_with_its_fenced_epoch() {
    let (broker, mut client, _dir) = start_with(fast_timeouts).await;
    create(&mut client, "t", 1).await;
    let p = init_with(&mut client, "slow", 1000).await;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    wait_for_state(&mut client, "slow", "CompleteAbort").await;
    let r = init_raw(&mut client, 4, "slow", 1000, (p.pid, p.epoch)).await;
    assert_eq!(r.error_code, code(ResponseError::ProducerFenced), "{r:?}");
    broker.replication.shutdown();
}

// ---- Transactions V2 (KIP-890 part 2) ----

/// EndTxn v5: (error, producer id, producer epoch) — the ids the client continues with.
async fn end_txn_v5(client: &mut Client, p: &Producer, commit: bool) -> (i16, i64, i16) {
    let r = client
        .call(
            ApiKey::EndTxn,
            5,
            RequestKind::EndTxn(
                EndTxnRequest::default()
                    .with_transactional_id(tid(&p.id))
                    .with_producer_id(ProducerId(p.pid))
                    .with_producer_epoch(p.epoch)
                    .with_committed(commit),
            ),
        )
        .await;
    let ResponseKind::EndTxn(r) = r else {
        panic!("{r:?}")
    };
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

/// Produce v12 of one transactional batch per partition in one request: the codes.
async fn produce_v12(
    client: &mut Client,
    p: &Producer,
    batches: &[(&str, i32, i32, usize)],
) -> Vec<i16> {
    let mut topics: Vec<produce_request::TopicProduceData> = Vec::new();
    for (t, partition, seq, n) in batches {
        let data = produce_request::PartitionProduceData::default()
            .with_index(*partition)
            .with_records(Some(txn_batch(p, *seq, *n)));
        match topics.iter_mut().find(|x| x.name.0.as_str() == *t) {
            Some(x) => x.partition_data.push(data),
            None => topics.push(
                produce_request::TopicProduceData::default()
                    .with_name(topic(t))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    let r = client
        .call(
            ApiKey::Produce,
            12,
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_transactional_id(Some(tid(&p.id)))
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(topics),
            ),
        )
        .await;
    let ResponseKind::Produce(r) = r else {
        panic!("{r:?}")
    };
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
        .collect()
}

async fn api_versions(client: &mut Client) -> ApiVersionsResponse {
    let r = client
        .call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(
                ApiVersionsRequest::default()
                    .with_client_software_name(s("apache-kafka-java"))
                    .with_client_software_version(s("4.0.0")),
            ),
        )
        .await;
    let ResponseKind::ApiVersions(r) = r else {
        panic!("{r:?}")
    };
    r
}

fn max_version(r: &ApiVersionsResponse, key: ApiKey) -> i16 {
    r.api_keys
        .iter()
        .find(|k| k.api_key == key as i16)
        .map_or(-1, |k| k.max_version)
}

#[tokio::test]
async fn api_versions_finalizes_transaction_version_2_and_the_v2_request_versions() {
    let (broker, mut client, _dir) = start().await;
    let r = api_versions(&mut client).await;
    let supported: Vec<(String, i16, i16)> = r
        .supported_features
        .iter()
        .map(|f| (f.name.to_string(), f.min_version, f.max_version))
        .collect();
    assert_eq!(supported, vec![("transaction.version".to_string(), 0, 2)]);
    let finalized: Vec<(String, i16, i16)> = r
        .finalized_features
        .iter()
        .map(|f| (f.name.to_string(), f.min_version_level, f.max_version_level))
        .collect();
    assert_eq!(finalized, vec![("transaction.version".to_string(), 2, 2)]);
    assert!(r.finalized_features_epoch > 0, "{r:?}");
    // What Kafka's TransactionManager requires before it uses V2.
    assert!(max_version(&r, ApiKey::Produce) >= 12);
    assert!(max_version(&r, ApiKey::TxnOffsetCommit) >= 5);
    assert_eq!(max_version(&r, ApiKey::EndTxn), 5);
    assert_eq!(max_version(&r, ApiKey::AddOffsetsToTxn), 4, "as in Kafka");

    // Old librdkafka (Debian's kcat) gets no tagged fields.
    let ResponseKind::ApiVersions(old) = client
        .call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(
                ApiVersionsRequest::default()
                    .with_client_software_name(s("librdkafka"))
                    .with_client_software_version(s("2.0.2")),
            ),
        )
        .await
    else {
        panic!("ApiVersions")
    };
    assert!(old.supported_features.is_empty() && old.finalized_features.is_empty());
    broker.replication.shutdown();

    // Level 0: supported, not finalized (Kafka lists only levels above 0), so clients use V1.
    let (broker, mut client, _dir) = start_with(|c| {
        small(c);
        c.txn.transaction_version = 0;
    })
    .await;
    let r = api_versions(&mut client).await;
    assert_eq!(r.supported_features.len(), 1);
    assert!(r.finalized_features.is_empty(), "{r:?}");
    broker.replication.shutdown();
}

#[tokio::test]
async fn transactions_v2_add_partitions_and_offsets_implicitly_and_bump_the_epoch_per_transaction()
{
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "v2", 3).await;
    group_ready(&mut client, "g").await;
    let mut p = init(&mut client, "tv2").await;
    let first = p.clone();

    // No AddPartitionsToTxn: the first batch to each partition adds it.
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 0, 0, 2), ("v2", 1, 0, 3)]).await,
        vec![NONE, NONE]
    );
    // Later batches of the transaction find it open on the partition.
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 0, 2, 1)]).await,
        vec![NONE]
    );
    let t = describe(&mut client, "tv2").await;
    assert_eq!(t.transaction_state.as_str(), "Ongoing");
    assert_eq!(
        described_partitions(&t),
        vec![("v2".to_string(), 0), ("v2".to_string(), 1)]
    );
    // No AddOffsetsToTxn: TxnOffsetCommit v5 adds the group's partition.
    assert_eq!(
        txn_commit(&mut client, 5, &p, "g", &[("v2", 0, 17)]).await,
        vec![NONE]
    );
    assert_eq!(
        described_partitions(&describe(&mut client, "tv2").await),
        vec![
            ("__consumer_offsets".to_string(), 0),
            ("v2".to_string(), 0),
            ("v2".to_string(), 1)
        ]
    );
    assert_eq!(
        offset_fetch(&mut client, "g", "v2", 0, true).await,
        (NONE, code(ResponseError::UnstableOffsetCommit), -1),
        "pending until the commit"
    );
    let open = fetch(&mut client, "v2", 0, 0, READ_COMMITTED).await;
    assert_eq!(data_ranges(&open), vec![], "read_committed waits");

    // EndTxn v5 commits and bumps the epoch; the markers carry the new epoch.
    let (e, pid, epoch) = end_txn_v5(&mut client, &p, true).await;
    assert_eq!((e, pid, epoch), (NONE, p.pid, p.epoch + 1));
    p.epoch = epoch;
    let committed = wait_stable(&mut client, "v2", 0).await;
    assert_eq!(data_ranges(&committed), vec![(0, 1), (2, 2)]);
    assert_eq!(aborted(&committed), vec![]);
    let marker = batches(&committed)
        .into_iter()
        .find(|h| h.is_control())
        .expect("a commit marker");
    assert_eq!(
        (marker.producer_id, marker.producer_epoch),
        (p.pid, p.epoch)
    );
    assert_eq!(
        data_ranges(&wait_stable(&mut client, "v2", 1).await),
        vec![(0, 2)]
    );
    eventually!("the committed offset becomes visible", {
        (offset_fetch(&mut client, "g", "v2", 0, true).await == (NONE, NONE, 17)).then_some(())
    });
    wait_for_state(&mut client, "tv2", "CompleteCommit").await;

    // A retry of the commit with the old epoch is answered as done, with the new epoch; the
    // old epoch is fenced everywhere else.
    assert_eq!(
        end_txn_v5(&mut client, &first, true).await,
        (NONE, p.pid, p.epoch)
    );
    assert_eq!(
        end_txn_v5(&mut client, &first, false).await.0,
        code(ResponseError::InvalidTxnState)
    );
    assert_eq!(
        produce_v12(&mut client, &first, &[("v2", 2, 0, 1)]).await,
        vec![code(ResponseError::InvalidProducerEpoch)]
    );
    assert_eq!(
        produce_v12(&mut client, &first, &[("v2", 0, 3, 1)]).await,
        vec![code(ResponseError::InvalidProducerEpoch)],
        "a late batch of the committed transaction is fenced by the marker's epoch"
    );
    assert_eq!(
        txn_commit(&mut client, 5, &first, "g", &[("v2", 0, 99)]).await,
        vec![code(ResponseError::InvalidProducerEpoch)]
    );

    // The next transaction, at the new epoch (sequences start again at 0), is aborted.
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 2, 0, 2), ("v2", 0, 0, 1)]).await,
        vec![NONE, NONE]
    );
    assert_eq!(
        txn_commit(&mut client, 5, &p, "g", &[("v2", 0, 18)]).await,
        vec![NONE]
    );
    let (e, pid, epoch) = end_txn_v5(&mut client, &p, false).await;
    assert_eq!((e, pid, epoch), (NONE, p.pid, p.epoch + 1));
    let second = p.clone();
    p.epoch = epoch;
    let two = wait_stable(&mut client, "v2", 2).await;
    assert_eq!(aborted(&two), vec![(p.pid, 0)]);
    let zero = wait_stable(&mut client, "v2", 0).await;
    assert_eq!(aborted(&zero), vec![(p.pid, 4)]);
    wait_for_state(&mut client, "tv2", "CompleteAbort").await;
    assert_eq!(
        offset_fetch(&mut client, "g", "v2", 0, true).await,
        (NONE, NONE, 17),
        "the aborted offset never appears"
    );
    assert_eq!(
        end_txn_v5(&mut client, &second, false).await,
        (NONE, p.pid, p.epoch),
        "a retried abort"
    );

    // An abort of a transaction the coordinator never saw (nothing reached it) still bumps.
    let (e, _, epoch) = end_txn_v5(&mut client, &p, false).await;
    assert_eq!((e, epoch), (NONE, p.epoch + 1));
    p.epoch = epoch;
    // And V1 requests keep V1 semantics: no bump, AddPartitionsToTxn first.
    add_partitions(&mut client, &p, &[("v2", 1)]).await;
    assert_eq!(
        produce(&mut client, "v2", 1, Some("tv2"), txn_batch(&p, 0, 1))
            .await
            .0,
        NONE
    );
    assert_eq!(end_txn(&mut client, &p, true).await, NONE);
    let t = wait_for_state(&mut client, "tv2", "CompleteCommit").await;
    assert_eq!(t.producer_epoch, p.epoch, "EndTxn v3 does not bump");
    broker.replication.shutdown();
}

#[tokio::test]
async fn transactions_v2_implicit_adds_answer_with_kafkas_produce_errors() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "v2", 1).await;
    let p = init(&mut client, "tv2").await;
    let stranger = Producer {
        id: "nobody".into(),
        pid: p.pid,
        epoch: p.epoch,
    };
    assert_eq!(
        produce_v12(&mut client, &stranger, &[("v2", 0, 0, 1)]).await,
        vec![code(ResponseError::InvalidProducerIdMapping)]
    );
    let wrong_pid = Producer {
        pid: p.pid + 1,
        ..p.clone()
    };
    assert_eq!(
        produce_v12(&mut client, &wrong_pid, &[("v2", 0, 0, 1)]).await,
        vec![code(ResponseError::InvalidProducerIdMapping)]
    );
    let future_epoch = Producer {
        epoch: p.epoch + 1,
        ..p.clone()
    };
    assert_eq!(
        produce_v12(&mut client, &future_epoch, &[("v2", 0, 0, 1)]).await,
        vec![code(ResponseError::InvalidProducerEpoch)],
        "PRODUCER_FENCED from the coordinator, as Produce reports it"
    );
    assert_eq!(
        describe(&mut client, "tv2")
            .await
            .transaction_state
            .as_str(),
        "Empty",
        "nothing joined"
    );
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 0, 0, 1)]).await,
        vec![NONE]
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn a_v2_transaction_past_its_timeout_is_aborted_and_its_end_is_fenced() {
    let (broker, mut client, _dir) = start_with(fast_timeouts).await;
    create(&mut client, "v2", 1).await;
    let p = init_with(&mut client, "slow", 1000).await;
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 0, 0, 2)]).await,
        vec![NONE]
    );
    let t = wait_for_state(&mut client, "slow", "CompleteAbort").await;
    assert_eq!(t.producer_epoch, p.epoch + 2);
    assert_eq!(
        aborted(&wait_stable(&mut client, "v2", 0).await),
        vec![(p.pid, 0)]
    );
    assert_eq!(
        end_txn_v5(&mut client, &p, true).await.0,
        code(ResponseError::ProducerFenced),
        "not mistaken for a retry of a V2 end"
    );
    assert_eq!(
        produce_v12(&mut client, &p, &[("v2", 0, 2, 1)]).await,
        vec![code(ResponseError::InvalidProducerEpoch)]
    );
    broker.replication.shutdown();
}

#[tokio::test]
async fn pipelined_v2_first_batches_to_one_partition_all_land_in_order() {
    let (broker, mut client, _dir) = start().await;
    create(&mut client, "v2", 2).await;
    let mut p = init(&mut client, "tv2").await;
    for round in 0..3 {
        // Five in-flight requests, as a producer with max.in.flight 5 sends them: the first
        // two partitions' first batches race to add their partition.
        let request = |partition: i32, seq: i32, n: usize| {
            (
                ApiKey::Produce,
                12,
                RequestKind::Produce(
                    ProduceRequest::default()
                        .with_transactional_id(Some(tid(&p.id)))
                        .with_acks(-1)
                        .with_timeout_ms(5000)
                        .with_topic_data(vec![produce_request::TopicProduceData::default()
                            .with_name(topic("v2"))
                            .with_partition_data(vec![
                                produce_request::PartitionProduceData::default()
                                    .with_index(partition)
                                    .with_records(Some(txn_batch(&p, seq, n))),
                            ])]),
                ),
            )
        };
        let answers = client
            .pipeline(vec![
                request(0, 0, 2),
                request(0, 2, 1),
                request(1, 0, 1),
                request(0, 3, 2),
                request(1, 1, 1),
            ])
            .await;
        let codes: Vec<i16> = answers
            .iter()
            .map(|a| match a {
                ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(codes, vec![NONE; 5], "round {round}");
        let (e, _, epoch) = end_txn_v5(&mut client, &p, true).await;
        assert_eq!(e, NONE);
        p.epoch = epoch;
    }
    let zero = wait_stable(&mut client, "v2", 0).await;
    let sizes: Vec<i64> = data_ranges(&zero).iter().map(|(a, b)| b - a + 1).collect();
    assert_eq!(
        sizes,
        vec![2, 1, 2, 2, 1, 2, 2, 1, 2],
        "every batch once, in order"
    );
    assert_eq!(aborted(&zero), vec![]);
    broker.replication.shutdown();
}

#[tokio::test]
async fn below_transaction_version_2_the_coordinators_own_aborts_bump_the_epoch_once() {
    let (broker, mut client, _dir) = start_with(|c| {
        fast_timeouts(c);
        c.txn.transaction_version = 1;
    })
    .await;
    let r = api_versions(&mut client).await;
    assert_eq!(
        r.finalized_features
            .iter()
            .map(|f| (f.name.to_string(), f.max_version_level))
            .collect::<Vec<_>>(),
        vec![("transaction.version".to_string(), 1)]
    );
    create(&mut client, "t", 1).await;
    let p = init_with(&mut client, "slow", 1000).await;
    add_partitions(&mut client, &p, &[("t", 0)]).await;
    assert_eq!(
        produce(&mut client, "t", 0, Some("slow"), txn_batch(&p, 0, 1))
            .await
            .0,
        NONE
    );
    let t = wait_for_state(&mut client, "slow", "CompleteAbort").await;
    assert_eq!(t.producer_epoch, p.epoch + 1, "only the fence");
    assert_eq!(
        end_txn(&mut client, &p, true).await,
        code(ResponseError::ProducerFenced)
    );
    broker.replication.shutdown();
}
