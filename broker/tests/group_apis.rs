//! The group coordinator's APIs against Kafka's documented answers: error codes for bad
//! commits and unknown groups, metadata and leader epochs kept, internal topic protection,
//! type checks between classic and consumer groups, and offset expiry (KIP-211, KIP-496).

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{start_with, Client};
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn group(id: &str) -> GroupId {
    GroupId(s(id))
}

fn topic(name: &str) -> TopicName {
    TopicName(s(name))
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
    assert_eq!(r.topics[0].error_code, 0);
}

/// FindCoordinator, then waits until the coordinator has loaded.
async fn ready(client: &mut Client, group_id: &str) {
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
    assert_eq!(r.error_code, 0, "{r:?}");
    for _ in 0..500 {
        let (error, _) = fetch(client, group_id, "none", 0).await;
        if error != ResponseError::CoordinatorLoadInProgress.code() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the coordinator never loaded");
}

fn commit_request(
    group_id: &str,
    generation: i32,
    member: &str,
    parts: &[(&str, i32, i64, Option<&str>, i32)],
) -> OffsetCommitRequest {
    let mut topics: Vec<offset_commit_request::OffsetCommitRequestTopic> = Vec::new();
    for (t, p, offset, meta, epoch) in parts {
        let part = offset_commit_request::OffsetCommitRequestPartition::default()
            .with_partition_index(*p)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(*epoch)
            .with_committed_metadata(meta.map(s));
        match topics.iter_mut().find(|x| x.name.0.as_str() == *t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(topic(t))
                    .with_partitions(vec![part]),
            ),
        }
    }
    OffsetCommitRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_retention_time_ms(-1)
        .with_topics(topics)
}

async fn commit(client: &mut Client, version: i16, request: OffsetCommitRequest) -> Vec<i16> {
    let r = client
        .call(
            ApiKey::OffsetCommit,
            version,
            RequestKind::OffsetCommit(request),
        )
        .await;
    let ResponseKind::OffsetCommit(r) = r else {
        panic!("{r:?}")
    };
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// (group error, (offset, leader epoch, metadata)) of one partition via OffsetFetch v7.
async fn fetch(
    client: &mut Client,
    group_id: &str,
    topic_name: &str,
    partition: i32,
) -> (i16, (i64, i32, String)) {
    let r = client
        .call(
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(group(group_id))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(topic(topic_name))
                            .with_partition_indexes(vec![partition]),
                    ])),
            ),
        )
        .await;
    let ResponseKind::OffsetFetch(r) = r else {
        panic!("{r:?}")
    };
    let p = &r.topics[0].partitions[0];
    (
        r.error_code,
        (
            p.committed_offset,
            p.committed_leader_epoch,
            p.metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        ),
    )
}

async fn list(client: &mut Client) -> Vec<(String, String, String)> {
    let r = client
        .call(
            ApiKey::ListGroups,
            5,
            RequestKind::ListGroups(ListGroupsRequest::default()),
        )
        .await;
    let ResponseKind::ListGroups(r) = r else {
        panic!("{r:?}")
    };
    r.groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.group_state.to_string(),
                g.group_type.to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn offset_commits_keep_metadata_and_epochs_and_refuse_what_kafka_refuses() {
    let (broker, mut client, _dir) = start_with(|c| {
        c.group.offsets_topic_num_partitions = 3;
        c.group.groups.initial_rebalance_delay_ms = 0;
    })
    .await;
    create(&mut client, "t", 2).await;
    ready(&mut client, "g").await;

    // A simple commit (no member, generation -1) with metadata and a leader epoch.
    let codes = commit(
        &mut client,
        9,
        commit_request(
            "g",
            -1,
            "",
            &[("t", 0, 42, Some("checkpoint"), 7), ("t", 1, 5, None, -1)],
        ),
    )
    .await;
    assert_eq!(codes, vec![0, 0]);
    assert_eq!(
        fetch(&mut client, "g", "t", 0).await,
        (0, (42, 7, "checkpoint".into()))
    );
    assert_eq!(
        fetch(&mut client, "g", "t", 1).await,
        (0, (5, -1, String::new()))
    );
    // Never committed: -1 and no error.
    ready(&mut client, "other").await;
    assert_eq!(
        fetch(&mut client, "other", "t", 0).await,
        (0, (-1, -1, String::new()))
    );

    // Unknown partitions, oversized metadata, per partition.
    let big = "x".repeat(4097);
    let codes = commit(
        &mut client,
        8,
        commit_request(
            "g",
            -1,
            "",
            &[
                ("t", 0, 43, None, -1),
                ("t", 9, 1, None, -1),
                ("nope", 0, 1, None, -1),
            ],
        ),
    )
    .await;
    assert_eq!(
        codes,
        vec![
            0,
            ResponseError::UnknownTopicOrPartition.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
    let codes = commit(
        &mut client,
        8,
        commit_request("g", -1, "", &[("t", 0, 1, Some(&big), -1)]),
    )
    .await;
    assert_eq!(codes, vec![ResponseError::OffsetMetadataTooLarge.code()]);
    assert_eq!(
        fetch(&mut client, "g", "t", 0).await.1 .0,
        43,
        "the refused commit changed nothing"
    );

    // A generation for a group that does not exist: ILLEGAL_GENERATION, GROUP_ID_NOT_FOUND
    // from v9.
    ready(&mut client, "ghost").await;
    let codes = commit(
        &mut client,
        8,
        commit_request("ghost", 3, "m", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(codes, vec![ResponseError::IllegalGeneration.code()]);
    let codes = commit(
        &mut client,
        9,
        commit_request("ghost", 3, "m", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(codes, vec![ResponseError::GroupIdNotFound.code()]);
    let codes = commit(
        &mut client,
        9,
        commit_request("", -1, "", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(codes, vec![ResponseError::InvalidGroupId.code()]);
    assert!(
        !list(&mut client).await.iter().any(|(g, _, _)| g == "ghost"),
        "a refused commit leaves no group behind"
    );

    // Clients may read __consumer_offsets but not write it.
    let batch = build_batch(
        &[NewRecord {
            timestamp: 0,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![],
        }],
        &BatchOptions::default(),
    )
    .expect("batch");
    let r = client
        .call(
            ApiKey::Produce,
            9,
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![produce_request::TopicProduceData::default()
                        .with_name(topic("__consumer_offsets"))
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch)),
                        ])]),
            ),
        )
        .await;
    let ResponseKind::Produce(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    let r = client
        .call(
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(topic("__consumer_offsets"))),
            ]))),
        )
        .await;
    let ResponseKind::Metadata(r) = r else {
        panic!("{r:?}")
    };
    assert!(r.topics[0].is_internal);
    assert_eq!(r.topics[0].partitions.len(), 3);

    // FindCoordinator: unknown key types are invalid requests (transactions: transaction_apis.rs).
    let r = client
        .call(
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(7)
                    .with_coordinator_keys(vec![s("g")]),
            ),
        )
        .await;
    let ResponseKind::FindCoordinator(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        r.coordinators[0].error_code,
        ResponseError::InvalidRequest.code()
    );

    // Describing: unknown groups are Dead before v6 and GROUP_ID_NOT_FOUND from v6; a classic
    // group asked for with ConsumerGroupDescribe is "not a consumer group".
    for (version, code) in [(5, 0), (6, ResponseError::GroupIdNotFound.code())] {
        let r = client
            .call(
                ApiKey::DescribeGroups,
                version,
                RequestKind::DescribeGroups(
                    DescribeGroupsRequest::default().with_groups(vec![group("ghost")]),
                ),
            )
            .await;
        let ResponseKind::DescribeGroups(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (r.groups[0].error_code, r.groups[0].group_state.as_str()),
            (code, "Dead")
        );
    }
    let r = client
        .call(
            ApiKey::ConsumerGroupDescribe,
            0,
            RequestKind::ConsumerGroupDescribe(
                ConsumerGroupDescribeRequest::default().with_group_ids(vec![group("g")]),
            ),
        )
        .await;
    let ResponseKind::ConsumerGroupDescribe(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        r.groups[0].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    assert!(r.groups[0]
        .error_message
        .as_ref()
        .is_some_and(|m| m.contains("not a consumer group")));
    // A consumer-protocol member commits with its member epoch, from v9 only.
    ready(&mut client, "modern").await;
    let r = client
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            RequestKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatRequest::default()
                    .with_group_id(group("modern"))
                    .with_member_id(s("m-1"))
                    .with_member_epoch(0)
                    .with_rebalance_timeout_ms(10_000)
                    .with_subscribed_topic_names(Some(vec![topic("t")]))
                    .with_topic_partitions(Some(Vec::new())),
            ),
        )
        .await;
    let ResponseKind::ConsumerGroupHeartbeat(hb) = r else {
        panic!("{r:?}")
    };
    assert_eq!(hb.error_code, 0, "{hb:?}");
    let epoch = hb.member_epoch;
    let old = commit(
        &mut client,
        8,
        commit_request("modern", epoch, "m-1", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(old, vec![ResponseError::UnsupportedVersion.code()]);
    let stale = commit(
        &mut client,
        9,
        commit_request("modern", epoch + 5, "m-1", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(stale, vec![ResponseError::StaleMemberEpoch.code()]);
    let ok = commit(
        &mut client,
        9,
        commit_request("modern", epoch, "m-1", &[("t", 0, 1, None, -1)]),
    )
    .await;
    assert_eq!(ok, vec![0]);
    broker.replication.shutdown();
}

/// `ConsumerProtocolSubscription` v0 for `topics`, with its version prefix.
fn subscription(topics: &[&str]) -> Bytes {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| s(t)).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    sub.encode(&mut buf, 0).expect("encode");
    buf.freeze()
}

#[tokio::test]
async fn offsets_expire_with_the_group_or_with_the_subscription() {
    let (broker, mut client, _dir) = start_with(|c| {
        c.group.offsets_topic_num_partitions = 1;
        c.group.groups.initial_rebalance_delay_ms = 0;
        c.group.offsets_retention_minutes = 0;
        c.group.offsets_retention_check_interval_ms = 100;
    })
    .await;
    create(&mut client, "a", 1).await;
    create(&mut client, "b", 1).await;
    ready(&mut client, "live").await;

    // A live group subscribed to "a" commits "a" and "b": "b" expires (KIP-496), "a" stays.
    let join = JoinGroupRequest::default()
        .with_group_id(group("live"))
        .with_session_timeout_ms(30_000)
        .with_rebalance_timeout_ms(30_000)
        .with_group_instance_id(Some(s("only")))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(s("range"))
        .with_metadata(subscription(&["a"]))]);
    let ResponseKind::JoinGroup(j) = client
        .call(ApiKey::JoinGroup, 5, RequestKind::JoinGroup(join))
        .await
    else {
        panic!("join")
    };
    assert_eq!(j.error_code, 0);
    let ResponseKind::SyncGroup(sy) = client
        .call(
            ApiKey::SyncGroup,
            3,
            RequestKind::SyncGroup(
                SyncGroupRequest::default()
                    .with_group_id(group("live"))
                    .with_generation_id(j.generation_id)
                    .with_member_id(j.member_id.clone())
                    .with_group_instance_id(Some(s("only"))),
            ),
        )
        .await
    else {
        panic!("sync")
    };
    assert_eq!(sy.error_code, 0);
    let mut req = commit_request(
        "live",
        j.generation_id,
        &j.member_id,
        &[("a", 0, 10, None, -1), ("b", 0, 20, None, -1)],
    );
    req.group_instance_id = Some(s("only"));
    assert_eq!(commit(&mut client, 8, req).await, vec![0, 0]);
    // A simple group's offsets expire with it, and the group goes.
    assert_eq!(
        commit(
            &mut client,
            8,
            commit_request("simple", -1, "", &[("a", 0, 1, None, -1)])
        )
        .await,
        vec![0]
    );
    let mut expired = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let b = fetch(&mut client, "live", "b", 0).await.1 .0;
        let simple_gone = !list(&mut client)
            .await
            .iter()
            .any(|(g, _, _)| g == "simple");
        if b == -1 && simple_gone {
            expired = true;
            break;
        }
        // Keep the member alive.
        let _ = client
            .call(
                ApiKey::Heartbeat,
                3,
                RequestKind::Heartbeat(
                    HeartbeatRequest::default()
                        .with_group_id(group("live"))
                        .with_generation_id(j.generation_id)
                        .with_member_id(j.member_id.clone())
                        .with_group_instance_id(Some(s("only"))),
                ),
            )
            .await;
    }
    assert!(
        expired,
        "the unsubscribed topic's offset and the simple group expired"
    );
    assert_eq!(
        fetch(&mut client, "live", "a", 0).await.1 .0,
        10,
        "the subscribed topic's offset is kept while the group lives"
    );
    assert_eq!(fetch(&mut client, "simple", "a", 0).await.1 .0, -1);
    broker.replication.shutdown();
}
