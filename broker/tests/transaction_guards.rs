//! KIP-890 verification guards at the partition leader: a producer's first transactional
//! batch is appended only while the guard its verification took is still in place, and a
//! batch that arrives after a marker (proposed or written) cannot open a transaction nobody
//! will close, so the last stable offset never hangs.

mod common;

use bytes::Bytes;
use common::start;
use runnel_protocol::kafka_protocol::messages::{
    create_topics_request, ApiKey, CreateTopicsRequest, RequestKind, ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_replication::ReplicationError;
use runnel_storage::batch::{build_batch, build_end_txn_marker, BatchOptions, NewRecord};

const PID: i64 = 4242;

fn txn_batch(seq: i32) -> Bytes {
    let record = NewRecord {
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from(format!("v{seq}"))),
        headers: Vec::new(),
    };
    build_batch(
        &[record],
        &BatchOptions {
            producer_id: PID,
            producer_epoch: 0,
            base_sequence: seq,
            transactional: true,
            ..BatchOptions::default()
        },
    )
    .expect("batch")
}

#[tokio::test]
async fn transactional_batches_need_a_live_verification_guard_or_an_open_transaction() {
    let (broker, mut client, _dir) = start().await;
    let r = client
        .call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("g")))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ])),
        )
        .await;
    let ResponseKind::CreateTopics(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(r.topics[0].error_code, 0);
    let replication = &broker.replication;
    let replica = replication.replica("g", 0).expect("replica");
    let produce = |seq: i32, guard: Option<u64>| {
        replication
            .begin_transactional_produce("g", 0, vec![txn_batch(seq)], -1, guard)
            .expect("sent")
            .expect("acks=-1 answers")
    };
    let marker = |commit: bool| {
        replication
            .begin_coordinator_append(
                "g",
                0,
                build_end_txn_marker(commit, PID, 0, 0, 1_700_000_000_000).expect("marker"),
            )
            .expect("sent")
    };

    // No transaction open and no verification: refused.
    let refused = produce(0, None).await.expect("answer");
    assert!(
        matches!(refused, Err(ReplicationError::InvalidTxnState(_))),
        "{refused:?}"
    );
    // Verified: appended, and the transaction is open; later batches need no guard.
    let guard = replica.verification_guard(PID, 0);
    produce(0, Some(guard))
        .await
        .expect("answer")
        .expect("first batch");
    produce(1, None)
        .await
        .expect("answer")
        .expect("open transaction");

    // A batch sent right behind the abort marker, while the marker may not even be persisted
    // yet, is refused although the transaction looked open when it was sent.
    let abort = marker(false);
    let late = produce(2, None);
    abort.await.expect("answer").expect("marker");
    let late = late.await.expect("answer");
    assert!(
        matches!(late, Err(ReplicationError::InvalidTxnState(_))),
        "a batch after the marker opens no transaction: {late:?}"
    );

    // A guard taken before a marker is void after it.
    let stale = replica.verification_guard(PID, 0);
    produce(2, Some(stale))
        .await
        .expect("answer")
        .expect("verified again");
    marker(true).await.expect("answer").expect("commit marker");
    let after = produce(3, Some(stale)).await.expect("answer");
    assert!(
        matches!(after, Err(ReplicationError::InvalidTxnState(_))),
        "{after:?}"
    );

    // Nothing hangs: every transaction was decided, so the LSO is the high watermark.
    let hw = replica.high_watermark();
    assert_eq!(replica.last_stable_offset(), hw);
    assert!(replica
        .log()
        .producer_state()
        .get(PID)
        .is_some_and(|e| e.current_txn_first_offset.is_none()));
}

/// TxnOffsetCommit's write can complete after the marker deciding it was already applied (a
/// coordinator abort racing the commit's answer): the late offsets are decided at once, never
/// left pending forever, and an aborted one never becomes committed.
#[tokio::test]
async fn transactional_offsets_installed_after_their_marker_are_decided_at_once() {
    use runnel_broker::group::classic::CommittedOffset;
    use runnel_broker::group::records::OffsetCommitValue;
    let (broker, _client, _dir) = common::start_with(|c| {
        c.group.offsets_topic_num_partitions = 1;
    })
    .await;
    runnel_broker::handlers::find_coordinator::ensure_offsets_topic(&broker)
        .await
        .expect("offsets topic");
    let offset = |n: i64, record_offset: u64| CommittedOffset {
        value: OffsetCommitValue {
            offset: n,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: 0,
            expire_timestamp: -1,
        },
        record_offset,
    };
    // Wait for the coordinator to load its partition.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while broker.groups.with_groups(&broker, "g", |_, _| ()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "coordinator never loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Producer 7's transaction was aborted by the marker at offset 10; its offsets written at
    // offset 9 arrive afterwards.
    broker.groups.complete_transaction(&broker, 0, 7, false, 10);
    broker
        .groups
        .install_txn_offsets(&broker, "g", 7, vec![(("t".into(), 0), offset(42, 9))])
        .expect("installed");
    // Producer 8 committed at offset 20; its offsets at 19 arrive late, and offsets of its
    // next transaction (at 25) stay pending.
    broker.groups.complete_transaction(&broker, 0, 8, true, 20);
    broker
        .groups
        .install_txn_offsets(
            &broker,
            "g",
            8,
            vec![
                (("t".into(), 1), offset(5, 19)),
                (("t".into(), 2), offset(6, 25)),
            ],
        )
        .expect("installed");
    let (committed, pending) = broker
        .groups
        .with_groups(&broker, "g", |groups, _| {
            let g = &groups["g"];
            (
                g.offsets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.offset))
                    .collect::<Vec<_>>(),
                g.pending_txn_offsets
                    .iter()
                    .map(|(pid, o)| (*pid, o.keys().cloned().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
        })
        .expect("loaded");
    assert_eq!(
        committed,
        vec![(("t".to_string(), 1), 5)],
        "the aborted offset is dropped, the committed one applied"
    );
    assert_eq!(
        pending,
        vec![(8, vec![("t".to_string(), 2)])],
        "only the next transaction's offset is pending"
    );
}
