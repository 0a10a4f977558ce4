//! Transactions V2 (KIP-890 part 2) against real `runnel` processes. No client available
//! offline speaks it (librdkafka 2.12 stops at EndTxn v1 and Produce v10, kafka-python 3.0 at
//! the V1 versions), so these tests drive the protocol as Kafka 4's Java producer does with
//! `transaction.version` 2: InitProducerId, Produce v12 to partitions never announced with
//! AddPartitionsToTxn, TxnOffsetCommit v5 without AddOffsetsToTxn, EndTxn v5 taking the bumped
//! epoch it answers for the next transaction. Across three brokers the partition leaders add
//! their partitions through the coordinator (AddPartitionsToTxn v5); across a kill -9 the
//! coordinator reloads V2 transactions from `__transaction_state` and keeps telling retries
//! from fenced producers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use runnel_protocol::{decode_response, encode_request};
use runnel_tests::{free_port, Broker};

const NONE: i16 = 0;
const READ_COMMITTED: i8 = 1;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Polls `f` until it returns `Some`, for at most 30 seconds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Errors a client retries while coordinators are created, loaded or busy, or leaders move.
fn retriable(code: i16) -> bool {
    use runnel_protocol::kafka_protocol::ResponseError as E;
    [
        E::CoordinatorLoadInProgress,
        E::CoordinatorNotAvailable,
        E::NotCoordinator,
        E::ConcurrentTransactions,
        E::NotEnoughReplicas,
        E::NotLeaderOrFollower,
        E::UnknownTopicOrPartition,
        E::LeaderNotAvailable,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// A blocking raw Kafka connection to one broker.
struct Raw {
    stream: std::net::TcpStream,
    buf: bytes::BytesMut,
    next_id: i32,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = eventually(&format!("{addr} accepts connections"), || {
            std::net::TcpStream::connect(addr).ok()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            stream,
            buf: bytes::BytesMut::new(),
            next_id: 0,
        }
    }

    /// A connection, or `None` at once when nothing listens there (a killed broker).
    fn try_connect(addr: &str) -> Option<Raw> {
        let stream = std::net::TcpStream::connect(addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Some(Raw {
            stream,
            buf: bytes::BytesMut::new(),
            next_id: 0,
        })
    }

    fn call(&mut self, key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        use std::io::{Read, Write};
        self.next_id += 1;
        let frame = encode_request(key, version, self.next_id, "tv2-test", &body).expect("encode");
        self.stream.write_all(&frame).expect("write");
        loop {
            if let Some(frame) = next_frame(&mut self.buf, 1 << 26).expect("frame") {
                let (cid, body) = decode_response(key, version, frame).expect("decode");
                assert_eq!(cid, self.next_id, "correlation id");
                return body;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// FindCoordinator v3 for a group (0) or transactional id (1): the coordinator's address.
    fn coordinator(&mut self, key_type: i8, key: &str) -> String {
        eventually(&format!("a coordinator for {key}"), || {
            let ResponseKind::FindCoordinator(r) = self.call(
                ApiKey::FindCoordinator,
                3,
                RequestKind::FindCoordinator(
                    FindCoordinatorRequest::default()
                        .with_key_type(key_type)
                        .with_key(s(key)),
                ),
            ) else {
                panic!("FindCoordinator")
            };
            if r.error_code != NONE {
                assert!(retriable(r.error_code), "{r:?}");
                return None;
            }
            Some(format!("{}:{}", r.host, r.port))
        })
    }

    /// Partition -> the address of its leader, once every partition has one.
    fn leaders(&mut self, topic: &str) -> BTreeMap<i32, String> {
        eventually(&format!("leaders of {topic}"), || {
            let ResponseKind::Metadata(md) = self.call(
                ApiKey::Metadata,
                12,
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(s(topic)))),
                ]))),
            ) else {
                panic!("Metadata")
            };
            let brokers: BTreeMap<i32, String> = md
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
            let t = md.topics.first()?;
            if t.error_code != NONE || t.partitions.is_empty() {
                return None;
            }
            t.partitions
                .iter()
                .map(|p| Some((p.partition_index, brokers.get(&p.leader_id.0)?.clone())))
                .collect()
        })
    }

    /// Waits until `n` brokers are registered.
    fn wait_for_brokers(&mut self, n: usize) {
        eventually(&format!("{n} brokers registered"), || {
            let ResponseKind::Metadata(md) = self.call(
                ApiKey::Metadata,
                12,
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![]))),
            ) else {
                panic!("Metadata")
            };
            (md.brokers.len() == n).then_some(())
        })
    }

    fn create_topic(&mut self, name: &str, partitions: i32, replication_factor: i16) {
        let ResponseKind::CreateTopics(r) = self.call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_timeout_ms(10_000)
                    .with_topics(vec![create_topics_request::CreatableTopic::default()
                        .with_name(TopicName(s(name)))
                        .with_num_partitions(partitions)
                        .with_replication_factor(replication_factor)]),
            ),
        ) else {
            panic!("CreateTopics")
        };
        assert_eq!(r.topics[0].error_code, NONE, "{r:?}");
    }
}

/// What a Transactions V2 producer holds: its id and the epoch of its current transaction.
#[derive(Debug, Clone)]
struct Producer {
    id: String,
    pid: i64,
    epoch: i16,
}

fn init_producer(coordinator: &mut Raw, id: &str, timeout_ms: i32) -> Producer {
    eventually(&format!("InitProducerId({id})"), || {
        let ResponseKind::InitProducerId(r) = coordinator.call(
            ApiKey::InitProducerId,
            5,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(s(id))))
                    .with_transaction_timeout_ms(timeout_ms)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ),
        ) else {
            panic!("InitProducerId")
        };
        if r.error_code != NONE {
            assert!(retriable(r.error_code), "{r:?}");
            return None;
        }
        Some(Producer {
            id: id.to_string(),
            pid: r.producer_id.0,
            epoch: r.producer_epoch,
        })
    })
}

fn txn_batch(p: &Producer, seq: i32, values: &[String]) -> bytes::Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: p.pid,
            producer_epoch: p.epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: now,
            key: None,
            value: Some(bytes::Bytes::from(v.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.freeze()
}

/// Produce v12 of one transactional batch, with no AddPartitionsToTxn before it: the code.
fn produce_v12(
    leader: &mut Raw,
    p: &Producer,
    topic: &str,
    partition: i32,
    seq: i32,
    values: &[String],
) -> i16 {
    let ResponseKind::Produce(r) = leader.call(
        ApiKey::Produce,
        12,
        RequestKind::Produce(
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s(&p.id))))
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(TopicName(s(topic)))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(txn_batch(p, seq, values))),
                    ])]),
        ),
    ) else {
        panic!("Produce")
    };
    r.responses[0].partition_responses[0].error_code
}

/// [`produce_v12`] retried while the coordinator or leader is not ready.
fn produce_ok(
    leader: &mut Raw,
    p: &Producer,
    topic: &str,
    partition: i32,
    seq: i32,
    values: &[String],
) {
    eventually(&format!("{topic}-{partition} accepts the batch"), || {
        let code = produce_v12(leader, p, topic, partition, seq, values);
        if code == NONE {
            return Some(());
        }
        assert!(
            retriable(code),
            "Produce v12 to {topic}-{partition}: {code}"
        );
        None
    })
}

/// EndTxn v5: (error, producer id, epoch).
fn end_txn_v5(coordinator: &mut Raw, p: &Producer, commit: bool) -> (i16, i64, i16) {
    let ResponseKind::EndTxn(r) = coordinator.call(
        ApiKey::EndTxn,
        5,
        RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s(&p.id)))
                .with_producer_id(ProducerId(p.pid))
                .with_producer_epoch(p.epoch)
                .with_committed(commit),
        ),
    ) else {
        panic!("EndTxn")
    };
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

/// EndTxn v5 retried while the coordinator is busy; the producer moves to the answered epoch.
fn end_ok(coordinator: &mut Raw, p: &mut Producer, commit: bool) {
    let (pid, epoch) = eventually("EndTxn v5 succeeds", || {
        let (code, pid, epoch) = end_txn_v5(coordinator, p, commit);
        if code == NONE {
            return Some((pid, epoch));
        }
        assert!(retriable(code), "EndTxn v5: {code}");
        None
    });
    assert_eq!(pid, p.pid, "no rotation this far from the last epoch");
    assert_eq!(epoch, p.epoch + 1, "every V2 end bumps the epoch");
    p.epoch = epoch;
}

fn txn_offset_commit_v5(
    group_coordinator: &mut Raw,
    p: &Producer,
    group: &str,
    topic: &str,
    offset: i64,
) -> i16 {
    let ResponseKind::TxnOffsetCommit(r) = group_coordinator.call(
        ApiKey::TxnOffsetCommit,
        5,
        RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(s(&p.id)))
                .with_group_id(GroupId(s(group)))
                .with_producer_id(ProducerId(p.pid))
                .with_producer_epoch(p.epoch)
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                                .with_committed_metadata(Some(s(""))),
                        ]),
                ]),
        ),
    ) else {
        panic!("TxnOffsetCommit")
    };
    r.topics[0].partitions[0].error_code
}

/// The committed offset of `topic`-0 for `group` (OffsetFetch v7, require_stable), once stable.
fn committed_offset(group_coordinator: &mut Raw, group: &str, topic: &str) -> i64 {
    eventually("a stable committed offset", || {
        let ResponseKind::OffsetFetch(r) = group_coordinator.call(
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(group)))
                    .with_require_stable(true)
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(TopicName(s(topic)))
                            .with_partition_indexes(vec![0]),
                    ])),
            ),
        ) else {
            panic!("OffsetFetch")
        };
        let p = &r.topics[0].partitions[0];
        (r.error_code == NONE && p.error_code == NONE).then_some(p.committed_offset)
    })
}

/// What a read_committed consumer of one partition sees once no transaction is undecided:
/// the values of the data records, and the producer ids of the aborted transactions. Aborted
/// records are dropped as clients drop them (by the aborted-transaction list).
fn read_committed(leader: &mut Raw, topic: &str, partition: i32) -> (Vec<String>, Vec<i64>) {
    let p = eventually(&format!("{topic}-{partition} is stable"), || {
        let ResponseKind::Fetch(mut r) = leader.call(
            ApiKey::Fetch,
            11,
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_isolation_level(READ_COMMITTED)
                    .with_topics(vec![fetch_request::FetchTopic::default()
                        .with_topic(TopicName(s(topic)))
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)])]),
            ),
        ) else {
            panic!("Fetch")
        };
        let p = r.responses.remove(0).partitions.remove(0);
        (p.error_code == NONE && p.last_stable_offset == p.high_watermark).then_some(p)
    });
    let aborted: Vec<(i64, i64)> = p
        .aborted_transactions
        .as_ref()
        .map(|a| {
            a.iter()
                .map(|t| (t.producer_id.0, t.first_offset))
                .collect()
        })
        .unwrap_or_default();
    // As clients do: a producer's records are aborted from the first offset of one of its
    // aborted transactions until its next marker.
    let mut pending = aborted.clone();
    pending.sort_by_key(|(_, first)| *first);
    let mut aborting: Vec<i64> = Vec::new();
    let mut values = Vec::new();
    if let Some(mut records) = p.records.clone() {
        for set in RecordBatchDecoder::decode_all(&mut records).expect("batches") {
            for r in set.records {
                while pending.first().is_some_and(|(_, first)| *first <= r.offset) {
                    aborting.push(pending.remove(0).0);
                }
                if r.control {
                    aborting.retain(|pid| *pid != r.producer_id);
                } else if !aborting.contains(&r.producer_id) {
                    values.push(String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned());
                }
            }
        }
    }
    (values, aborted.into_iter().map(|(pid, _)| pid).collect())
}

fn describe_state(coordinator: &mut Raw, id: &str) -> (String, i16) {
    let ResponseKind::DescribeTransactions(r) = coordinator.call(
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![TransactionalId(s(id))]),
        ),
    ) else {
        panic!("DescribeTransactions")
    };
    let t = &r.transaction_states[0];
    (t.transaction_state.to_string(), t.producer_epoch)
}

fn values(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// Brokers 1..=3 in AZs az-1..az-3, one cluster.
fn cluster(extra: &[&str]) -> Vec<Broker> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (free_port().expect("port"), free_port().expect("port")))
        .collect();
    let voters: String = ports
        .iter()
        .enumerate()
        .map(|(i, (_, raft))| format!("{}@127.0.0.1:{raft}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (kafka, _))| {
            let az = format!("az-{}", i + 1);
            let mut args = vec![
                "--no-fsync",
                "--az",
                &az,
                "--controller-quorum-voters",
                &voters,
            ];
            args.extend_from_slice(extra);
            Broker::start_node(i as i32 + 1, *kafka, &args).expect("broker")
        })
        .collect()
}

#[test]
fn v2_transactions_over_partitions_led_by_three_brokers_join_through_the_coordinator() {
    let brokers = cluster(&[
        "--transaction-state-log-num-partitions",
        "3",
        "--offsets-topic-num-partitions",
        "3",
    ]);
    let mut admin = Raw::connect(&brokers[0].bootstrap());
    admin.wait_for_brokers(3);
    admin.create_topic("v2-spread", 3, 1);
    admin.create_topic("v2-in", 1, 3);
    let leaders = admin.leaders("v2-spread");
    let id = "v2-cluster";
    let coordinator_addr = admin.coordinator(1, id);
    let mut coordinator = Raw::connect(&coordinator_addr);
    assert!(
        leaders.values().any(|l| *l != coordinator_addr),
        "some partition is led away from the coordinator: {leaders:?}, {coordinator_addr}"
    );
    let group_addr = admin.coordinator(0, "v2-group");
    let mut group = Raw::connect(&group_addr);
    let mut conns: BTreeMap<i32, Raw> = leaders
        .iter()
        .map(|(p, addr)| (*p, Raw::connect(addr)))
        .collect();

    let mut p = init_producer(&mut coordinator, id, 60_000);
    let first_epoch = p.epoch;
    for (partition, conn) in conns.iter_mut() {
        produce_ok(
            conn,
            &p,
            "v2-spread",
            *partition,
            0,
            &values(&format!("c{partition}"), 3),
        );
    }
    let code = eventually("TxnOffsetCommit v5", || {
        let code = txn_offset_commit_v5(&mut group, &p, "v2-group", "v2-in", 5);
        (!retriable(code)).then_some(code)
    });
    assert_eq!(code, NONE);
    end_ok(&mut coordinator, &mut p, true);

    // The second transaction is aborted.
    for (partition, conn) in conns.iter_mut() {
        produce_ok(
            conn,
            &p,
            "v2-spread",
            *partition,
            0,
            &values(&format!("a{partition}"), 2),
        );
    }
    let code = eventually("TxnOffsetCommit v5", || {
        let code = txn_offset_commit_v5(&mut group, &p, "v2-group", "v2-in", 9);
        (!retriable(code)).then_some(code)
    });
    assert_eq!(code, NONE);
    end_ok(&mut coordinator, &mut p, false);

    for (partition, conn) in conns.iter_mut() {
        let (seen, aborted) = read_committed(conn, "v2-spread", *partition);
        assert_eq!(
            seen,
            values(&format!("c{partition}"), 3),
            "partition {partition}"
        );
        assert_eq!(aborted, vec![p.pid], "partition {partition}");
    }
    assert_eq!(committed_offset(&mut group, "v2-group", "v2-in"), 5);
    assert_eq!(p.epoch, first_epoch + 2);

    // The first epoch is fenced at every leader (the markers carried newer epochs).
    let zombie = Producer {
        epoch: first_epoch,
        ..p.clone()
    };
    for (partition, conn) in conns.iter_mut() {
        assert_eq!(
            produce_v12(conn, &zombie, "v2-spread", *partition, 3, &values("z", 1)),
            runnel_protocol::kafka_protocol::ResponseError::InvalidProducerEpoch.code(),
            "partition {partition}"
        );
    }
}

#[test]
fn v2_transactions_are_resolved_across_coordinator_kill_9_and_retries_stay_recognised() {
    let mut broker = Broker::start(&[
        "--no-fsync",
        "--transaction-state-log-num-partitions",
        "1",
        "--offsets-topic-num-partitions",
        "1",
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms",
        "200",
    ])
    .expect("broker");
    let mut raw = Raw::connect(&broker.bootstrap());
    raw.create_topic("v2-restart", 2, 1);
    let id = "v2-restart";
    let _ = raw.coordinator(1, id);
    let mut p = init_producer(&mut raw, id, 3000);
    let committed_with = p.clone();
    produce_ok(&mut raw, &p, "v2-restart", 0, 0, &values("one", 2));
    produce_ok(&mut raw, &p, "v2-restart", 1, 0, &values("one", 1));
    end_ok(&mut raw, &mut p, true);

    broker.kill_9();
    broker.restart().expect("restart");
    let mut raw = Raw::connect(&broker.bootstrap());
    // A retry of the commit with the epoch it was sent with is still a retry: the coordinator
    // reloaded the transaction as a V2 one (client_transaction_version 2 in its record).
    let answer = eventually("the reloaded coordinator answers EndTxn", || {
        let a = end_txn_v5(&mut raw, &committed_with, true);
        (!retriable(a.0)).then_some(a)
    });
    assert_eq!(answer, (NONE, p.pid, p.epoch));

    // A transaction open when the coordinator dies is aborted by its timeout after restart.
    produce_ok(&mut raw, &p, "v2-restart", 0, 0, &values("two", 2));
    produce_ok(&mut raw, &p, "v2-restart", 1, 0, &values("two", 2));
    assert_eq!(describe_state(&mut raw, id).0, "Ongoing");
    broker.kill_9();
    broker.restart().expect("restart");
    let mut raw = Raw::connect(&broker.bootstrap());
    let (state, epoch) = eventually("the open transaction is aborted", || {
        let ResponseKind::DescribeTransactions(r) = raw.call(
            ApiKey::DescribeTransactions,
            0,
            RequestKind::DescribeTransactions(
                DescribeTransactionsRequest::default()
                    .with_transactional_ids(vec![TransactionalId(s(id))]),
            ),
        ) else {
            panic!("DescribeTransactions")
        };
        let t = &r.transaction_states[0];
        (t.error_code == NONE && t.transaction_state.as_str() == "CompleteAbort")
            .then(|| (t.transaction_state.to_string(), t.producer_epoch))
    });
    assert_eq!(state, "CompleteAbort");
    assert_eq!(epoch, p.epoch + 2, "fenced, then bumped by the V2 abort");
    for partition in 0..2 {
        let (seen, aborted) = read_committed(&mut raw, "v2-restart", partition);
        let want = if partition == 0 { 2 } else { 1 };
        assert_eq!(seen, values("one", want), "partition {partition}");
        assert_eq!(aborted, vec![p.pid], "partition {partition}");
    }
    assert_eq!(
        end_txn_v5(&mut raw, &p, true).0,
        runnel_protocol::kafka_protocol::ResponseError::ProducerFenced.code(),
        "the timed-out producer is fenced, not taken for a retry"
    );
    // A new incarnation carries on.
    let next = init_producer(&mut raw, id, 3000);
    assert_eq!((next.pid, next.epoch), (p.pid, p.epoch + 3));
}

/// Produces through whichever broker leads the partition now, retrying while leadership moves.
fn produce_via_leader(
    admin: &mut Raw,
    p: &Producer,
    topic: &str,
    partition: i32,
    seq: i32,
    values: &[String],
) {
    eventually(&format!("{topic}-{partition} accepts the batch"), || {
        let leader = admin.leaders(topic).get(&partition)?.clone();
        let mut conn = Raw::try_connect(&leader)?;
        let code = produce_v12(&mut conn, p, topic, partition, seq, values);
        if code == NONE {
            return Some(());
        }
        assert!(
            retriable(code),
            "Produce v12 to {topic}-{partition}: {code}"
        );
        None
    })
}

#[test]
fn a_v2_transaction_outlives_its_coordinator_and_retries_reach_the_next_one() {
    let mut brokers = cluster(&[
        "--transaction-state-log-num-partitions",
        "1",
        "--offsets-topic-num-partitions",
        "1",
        "--broker-session-timeout-ms",
        "2000",
    ]);
    let mut admin = Raw::connect(&brokers[0].bootstrap());
    admin.wait_for_brokers(3);
    admin.create_topic("v2-failover", 2, 3);
    let id = "v2-failover";
    let first_addr = admin.coordinator(1, id);
    let victim = brokers
        .iter()
        .position(|b| b.bootstrap() == first_addr)
        .expect("the coordinator is one of the brokers");
    let mut coordinator = Raw::connect(&first_addr);
    let mut p = init_producer(&mut coordinator, id, 60_000);
    let committed_with = p.clone();
    for partition in 0..2 {
        produce_via_leader(
            &mut admin,
            &p,
            "v2-failover",
            partition,
            0,
            &values("one", 2),
        );
    }
    end_ok(&mut coordinator, &mut p, true);

    brokers[victim].kill_9();
    let mut admin = Raw::connect(&brokers[(victim + 1) % 3].bootstrap());
    let next_addr = eventually("another broker coordinates the transactional id", || {
        let a = admin.coordinator(1, id);
        (a != first_addr).then_some(a)
    });
    let mut coordinator = Raw::connect(&next_addr);
    // The new coordinator replayed the V2 transaction from the replicated log: a retry of
    // the commit with the epoch it was sent with is still a retry.
    let answer = eventually("the new coordinator answers EndTxn", || {
        let a = end_txn_v5(&mut coordinator, &committed_with, true);
        (!retriable(a.0)).then_some(a)
    });
    assert_eq!(answer, (NONE, p.pid, p.epoch));

    // The next transaction, at the bumped epoch, through the new coordinator and leaders.
    for partition in 0..2 {
        produce_via_leader(
            &mut admin,
            &p,
            "v2-failover",
            partition,
            0,
            &values("two", 3),
        );
    }
    end_ok(&mut coordinator, &mut p, false);
    let leaders = admin.leaders("v2-failover");
    for partition in 0..2 {
        let mut leader = Raw::connect(&leaders[&partition]);
        let (seen, aborted) = read_committed(&mut leader, "v2-failover", partition);
        assert_eq!(seen, values("one", 2), "partition {partition}");
        assert_eq!(aborted, vec![p.pid], "partition {partition}");
    }
    let state = eventually("the abort completes", || {
        let state = describe_state(&mut coordinator, id);
        (state.0 == "CompleteAbort").then_some(state)
    });
    assert_eq!(state.1, p.epoch);
}
