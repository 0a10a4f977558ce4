//! The admin APIs against a real broker on a loopback port: DeleteTopics, CreatePartitions,
//! DeleteRecords, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DescribeCluster,
//! DescribeTopicPartitions and OffsetForLeaderEpoch, including their error answers at every
//! advertised version (an error path can set a field its version lacks, which the encoder
//! refuses, so those are exercised separately from the happy paths in `every_version.rs`).

mod common;

use bytes::Bytes;
use common::{start, start_with, Client};
use runnel_broker::handlers::{supported, SUPPORTED};
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::topic_config::TOPIC_CONFIGS;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn max_version(api_key: ApiKey) -> i16 {
    supported(api_key).expect("advertised").max
}

fn versions(api_key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let r = supported(api_key).expect("advertised");
    r.min..=r.max
}

async fn create_topic(client: &mut Client, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(n, v)| {
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(s(n))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    let ResponseKind::CreateTopics(r) = client
        .call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_timeout_ms(5000)
                    .with_topics(vec![t]),
            ),
        )
        .await
    else {
        panic!("not a CreateTopics response")
    };
    assert_eq!(
        r.topics[0].error_code, 0,
        "create {topic}: {:?}",
        r.topics[0]
    );
    wait_for_leaders(client, topic).await;
}

/// CreateTopics answers before the new partitions have elected leaders; clients wait for
/// Metadata to show them, and so do these tests.
async fn wait_for_leaders(client: &mut Client, topic: &str) {
    for _ in 0..250 {
        let ResponseKind::Metadata(r) = client
            .call(
                ApiKey::Metadata,
                12,
                RequestKind::Metadata(
                    MetadataRequest::default()
                        .with_allow_auto_topic_creation(false)
                        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                        )
                        .with_name(Some(name(topic)))])),
                ),
            )
            .await
        else {
            panic!("not a Metadata response")
        };
        let t = &r.topics[0];
        if t.error_code == 0
            && t.partitions
                .iter()
                .all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{topic} has partitions without a leader after 5 s");
}

/// Produces `count` one-record batches to a partition and returns the last base offset.
async fn produce(client: &mut Client, topic: &str, partition: i32, count: usize) -> i64 {
    let mut last = -1;
    for i in 0..count {
        let record = NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: vec![],
        };
        let batch = build_batch(&[record], &BatchOptions::default()).expect("batch");
        let t = produce_request::TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![produce_request::PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))]);
        let ResponseKind::Produce(r) = client
            .call(
                ApiKey::Produce,
                9,
                RequestKind::Produce(
                    ProduceRequest::default()
                        .with_acks(-1)
                        .with_timeout_ms(5000)
                        .with_topic_data(vec![t]),
                ),
            )
            .await
        else {
            panic!("not a Produce response")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce to {topic}-{partition}: {p:?}");
        last = p.base_offset;
    }
    last
}

/// ListOffsets earliest (-2) or latest (-1).
async fn list_offset(
    client: &mut Client,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> (i16, i64) {
    let ResponseKind::ListOffsets(r) = client
        .call(
            ApiKey::ListOffsets,
            7,
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            list_offsets_request::ListOffsetsPartition::default()
                                .with_partition_index(partition)
                                .with_timestamp(timestamp),
                        ])]),
            ),
        )
        .await
    else {
        panic!("not a ListOffsets response")
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

async fn metadata_partitions(client: &mut Client, topic: &str) -> Option<usize> {
    let ResponseKind::Metadata(r) = client
        .call(
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(
                MetadataRequest::default()
                    .with_allow_auto_topic_creation(false)
                    .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                    )
                    .with_name(Some(name(topic)))])),
            ),
        )
        .await
    else {
        panic!("not a Metadata response")
    };
    let t = &r.topics[0];
    (t.error_code == 0).then_some(t.partitions.len())
}

// ---------------------------------------------------------------------------------------------
// DeleteTopics

fn delete_by_name(version: i16, topic: &str) -> RequestKind {
    let r = DeleteTopicsRequest::default().with_timeout_ms(5000);
    RequestKind::DeleteTopics(if version >= 6 {
        r.with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(name(topic)))
        ])
    } else {
        r.with_topic_names(vec![name(topic)])
    })
}

fn delete_by_id(id: uuid::Uuid) -> RequestKind {
    RequestKind::DeleteTopics(
        DeleteTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_topic_id(id)
            ]),
    )
}

async fn delete_topics(
    client: &mut Client,
    version: i16,
    body: RequestKind,
) -> DeleteTopicsResponse {
    match client.call(ApiKey::DeleteTopics, version, body).await {
        ResponseKind::DeleteTopics(r) => r,
        other => panic!("not a DeleteTopics response: {other:?}"),
    }
}

#[tokio::test]
async fn delete_topics_by_name_and_by_id_then_recreate() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "doomed", 2, &[("retention.ms", "1000")]).await;
    produce(&mut client, "doomed", 0, 3).await;

    // By name (v4): gone from metadata, and its data with it.
    let r = delete_topics(&mut client, 4, delete_by_name(4, "doomed")).await;
    assert_eq!(r.responses.len(), 1);
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(r.responses[0].name, Some(name("doomed")));
    assert_eq!(metadata_partitions(&mut client, "doomed").await, None);
    assert!(broker.replication.replica("doomed", 0).is_none());

    // Deleting it again, by name at every version: UNKNOWN_TOPIC_OR_PARTITION.
    for v in versions(ApiKey::DeleteTopics) {
        let r = delete_topics(&mut client, v, delete_by_name(v, "doomed")).await;
        assert_eq!(
            r.responses[0].error_code,
            code(ResponseError::UnknownTopicOrPartition),
            "v{v}"
        );
    }

    // Recreated under the same name: a new id, empty logs, no old configs.
    create_topic(&mut client, "doomed", 1, &[]).await;
    let id = broker.replication.metadata().topics["doomed"].id;
    assert_eq!(list_offset(&mut client, "doomed", 0, -1).await, (0, 0));
    assert_eq!(produce(&mut client, "doomed", 0, 1).await, 0);
    let configs = describe_topic_configs(&mut client, 4, "doomed", None).await;
    let retention = config(&configs, "retention.ms");
    assert_eq!(retention.config_source, DEFAULT_CONFIG);

    // By id (v6): the answer names the topic.
    let r = delete_topics(&mut client, 6, delete_by_id(id)).await;
    assert_eq!(r.responses[0].error_code, 0, "{r:?}");
    assert_eq!(r.responses[0].topic_id, id);
    assert_eq!(r.responses[0].name, Some(name("doomed")));
    assert!(!broker.replication.metadata().topics.contains_key("doomed"));
    let r = delete_topics(&mut client, 6, delete_by_id(id)).await;
    assert_eq!(
        r.responses[0].error_code,
        code(ResponseError::UnknownTopicId)
    );
    assert_eq!(r.responses[0].topic_id, id);

    // Neither or both of name and id: INVALID_REQUEST, with Kafka's message.
    create_topic(&mut client, "kept", 1, &[]).await;
    let kept = broker.replication.metadata().topics["kept"].id;
    let both = RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
        delete_topics_request::DeleteTopicState::default()
            .with_name(Some(name("kept")))
            .with_topic_id(kept),
        delete_topics_request::DeleteTopicState::default(),
    ]));
    let r = delete_topics(&mut client, 6, both).await;
    assert_eq!(r.responses.len(), 2);
    for t in &r.responses {
        assert_eq!(t.error_code, code(ResponseError::InvalidRequest), "{t:?}");
        assert!(t.error_message.is_some());
    }
    assert!(broker.replication.metadata().topics.contains_key("kept"));
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// CreatePartitions

fn grow(
    topic: &str,
    count: i32,
    assignments: Option<Vec<Vec<i32>>>,
) -> create_partitions_request::CreatePartitionsTopic {
    create_partitions_request::CreatePartitionsTopic::default()
        .with_name(name(topic))
        .with_count(count)
        .with_assignments(assignments.map(|a| {
            a.into_iter()
                .map(|brokers| {
                    create_partitions_request::CreatePartitionsAssignment::default()
                        .with_broker_ids(brokers.into_iter().map(BrokerId).collect())
                })
                .collect()
        }))
}

async fn create_partitions(
    client: &mut Client,
    version: i16,
    validate_only: bool,
    topics: Vec<create_partitions_request::CreatePartitionsTopic>,
) -> Vec<(String, i16)> {
    let ResponseKind::CreatePartitions(r) = client
        .call(
            ApiKey::CreatePartitions,
            version,
            RequestKind::CreatePartitions(
                CreatePartitionsRequest::default()
                    .with_timeout_ms(5000)
                    .with_validate_only(validate_only)
                    .with_topics(topics),
            ),
        )
        .await
    else {
        panic!("not a CreatePartitions response")
    };
    r.results
        .iter()
        .map(|t| {
            if t.error_code != 0 {
                assert!(t.error_message.is_some(), "{t:?}");
            }
            (t.name.0.to_string(), t.error_code)
        })
        .collect()
}

#[tokio::test]
async fn create_partitions_grows_topics_and_refuses_bad_counts_and_assignments() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "grow", 1, &[]).await;
    create_topic(&mut client, "other", 2, &[]).await;
    let v = max_version(ApiKey::CreatePartitions);

    // validate_only: answered, nothing changes.
    let r = create_partitions(&mut client, v, true, vec![grow("grow", 3, None)]).await;
    assert_eq!(r, vec![("grow".to_string(), 0)]);
    assert_eq!(metadata_partitions(&mut client, "grow").await, Some(1));

    // Round-robin placement; every requested topic gets an entry, errors included.
    let r = create_partitions(
        &mut client,
        v,
        false,
        vec![
            grow("grow", 3, None),
            grow("missing", 2, None),
            grow("other", 2, None),
            grow("grow2", 1, None),
        ],
    )
    .await;
    assert_eq!(
        r,
        vec![
            ("grow".to_string(), 0),
            (
                "missing".to_string(),
                code(ResponseError::UnknownTopicOrPartition)
            ),
            ("other".to_string(), code(ResponseError::InvalidPartitions)),
            (
                "grow2".to_string(),
                code(ResponseError::UnknownTopicOrPartition)
            ),
        ]
    );
    assert_eq!(metadata_partitions(&mut client, "grow").await, Some(3));
    assert_eq!(
        broker.replication.metadata().topics["grow"].partitions[2],
        vec![1]
    );
    wait_for_leaders(&mut client, "grow").await;
    assert_eq!(produce(&mut client, "grow", 2, 1).await, 0);

    // Shrinking: INVALID_PARTITIONS.
    let r = create_partitions(&mut client, v, false, vec![grow("grow", 2, None)]).await;
    assert_eq!(r[0].1, code(ResponseError::InvalidPartitions));

    // Explicit assignments: an unknown broker, the wrong count, the wrong replication factor,
    // a broker twice.
    for bad in [
        vec![vec![99]],
        vec![vec![1], vec![1]],
        vec![vec![1, 1]],
        vec![vec![]],
    ] {
        let r = create_partitions(
            &mut client,
            v,
            false,
            vec![grow("grow", 4, Some(bad.clone()))],
        )
        .await;
        assert_eq!(
            r[0].1,
            code(ResponseError::InvalidReplicaAssignment),
            "{bad:?}"
        );
    }
    assert_eq!(metadata_partitions(&mut client, "grow").await, Some(3));
    let r = create_partitions(
        &mut client,
        v,
        false,
        vec![grow("grow", 4, Some(vec![vec![1]]))],
    )
    .await;
    assert_eq!(r[0].1, 0);
    assert_eq!(metadata_partitions(&mut client, "grow").await, Some(4));

    // The same topic twice: neither is applied.
    let r = create_partitions(
        &mut client,
        v,
        false,
        vec![grow("grow", 5, None), grow("grow", 6, None)],
    )
    .await;
    assert_eq!(r.len(), 2);
    assert!(r
        .iter()
        .all(|(_, c)| *c == code(ResponseError::InvalidRequest)));
    assert_eq!(metadata_partitions(&mut client, "grow").await, Some(4));
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// DeleteRecords

async fn delete_records(
    client: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i16, i64) {
    let ResponseKind::DeleteRecords(r) = client
        .call(
            ApiKey::DeleteRecords,
            version,
            RequestKind::DeleteRecords(
                DeleteRecordsRequest::default()
                    .with_timeout_ms(5000)
                    .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_partition_index(partition)
                                .with_offset(offset),
                        ])]),
            ),
        )
        .await
    else {
        panic!("not a DeleteRecords response")
    };
    assert_eq!(r.topics.len(), 1);
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.partition_index, partition);
    (p.error_code, p.low_watermark)
}

#[tokio::test]
async fn delete_records_moves_the_log_start_offset() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "trim", 2, &[]).await;
    produce(&mut client, "trim", 0, 5).await;
    let v = max_version(ApiKey::DeleteRecords);

    assert_eq!(delete_records(&mut client, v, "trim", 0, 2).await, (0, 2));
    assert_eq!(list_offset(&mut client, "trim", 0, -2).await, (0, 2));
    // Below the current start: nothing moves.
    assert_eq!(delete_records(&mut client, v, "trim", 0, 1).await, (0, 2));
    // Past the high watermark: OFFSET_OUT_OF_RANGE, nothing moves.
    assert_eq!(
        delete_records(&mut client, v, "trim", 0, 6).await.0,
        code(ResponseError::OffsetOutOfRange)
    );
    assert_eq!(list_offset(&mut client, "trim", 0, -2).await, (0, 2));
    // -1: up to the high watermark.
    assert_eq!(delete_records(&mut client, v, "trim", 0, -1).await, (0, 5));
    assert_eq!(list_offset(&mut client, "trim", 0, -2).await, (0, 5));
    assert_eq!(list_offset(&mut client, "trim", 0, -1).await, (0, 5));
    // The log goes on from there.
    assert_eq!(produce(&mut client, "trim", 0, 1).await, 5);
    // An empty partition: -1 is offset 0.
    assert_eq!(delete_records(&mut client, 0, "trim", 1, -1).await, (0, 0));

    for v in versions(ApiKey::DeleteRecords) {
        let (e, low) = delete_records(&mut client, v, "nope", 0, 0).await;
        assert_eq!(
            (e, low),
            (code(ResponseError::UnknownTopicOrPartition), -1),
            "v{v}"
        );
        let (e, _) = delete_records(&mut client, v, "trim", 7, 0).await;
        assert_eq!(e, code(ResponseError::UnknownTopicOrPartition), "v{v}");
        let (e, _) = delete_records(&mut client, v, "trim", 0, -5).await;
        assert_eq!(e, code(ResponseError::OffsetOutOfRange), "v{v}");
    }
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// DescribeConfigs, AlterConfigs, IncrementalAlterConfigs

async fn describe_configs(
    client: &mut Client,
    version: i16,
    resource_type: i8,
    resource: &str,
    keys: Option<Vec<&str>>,
) -> describe_configs_response::DescribeConfigsResult {
    let ResponseKind::DescribeConfigs(mut r) = client
        .call(
            ApiKey::DescribeConfigs,
            version,
            RequestKind::DescribeConfigs(
                DescribeConfigsRequest::default()
                    .with_include_synonyms(true)
                    .with_include_documentation(version >= 3)
                    .with_resources(vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(resource_type)
                            .with_resource_name(s(resource))
                            .with_configuration_keys(keys.map(|k| k.into_iter().map(s).collect())),
                    ]),
            ),
        )
        .await
    else {
        panic!("not a DescribeConfigs response")
    };
    assert_eq!(r.results.len(), 1);
    let result = r.results.remove(0);
    assert_eq!(result.resource_type, resource_type);
    assert_eq!(result.resource_name.as_str(), resource);
    result
}

async fn describe_topic_configs(
    client: &mut Client,
    version: i16,
    topic: &str,
    keys: Option<Vec<&str>>,
) -> Vec<describe_configs_response::DescribeConfigsResourceResult> {
    let r = describe_configs(client, version, TOPIC, topic, keys).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    r.configs
}

fn config<'a>(
    configs: &'a [describe_configs_response::DescribeConfigsResourceResult],
    key: &str,
) -> &'a describe_configs_response::DescribeConfigsResourceResult {
    configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .unwrap_or_else(|| panic!("no {key} in {configs:?}"))
}

fn value(c: &describe_configs_response::DescribeConfigsResourceResult) -> Option<&str> {
    c.value.as_ref().map(|v| v.as_str())
}

fn synonyms(c: &describe_configs_response::DescribeConfigsResourceResult) -> Vec<(String, i8)> {
    c.synonyms
        .iter()
        .map(|s| (s.name.to_string(), s.source))
        .collect()
}

async fn alter_configs(
    client: &mut Client,
    version: i16,
    validate_only: bool,
    resource_type: i8,
    resource: &str,
    configs: &[(&str, &str)],
) -> (i16, Option<String>) {
    let ResponseKind::AlterConfigs(r) = client
        .call(
            ApiKey::AlterConfigs,
            version,
            RequestKind::AlterConfigs(
                AlterConfigsRequest::default()
                    .with_validate_only(validate_only)
                    .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(resource_type)
                        .with_resource_name(s(resource))
                        .with_configs(
                            configs
                                .iter()
                                .map(|(n, v)| {
                                    alter_configs_request::AlterableConfig::default()
                                        .with_name(s(n))
                                        .with_value(Some(s(v)))
                                })
                                .collect(),
                        )]),
            ),
        )
        .await
    else {
        panic!("not an AlterConfigs response")
    };
    assert_eq!(r.responses.len(), 1);
    let x = &r.responses[0];
    assert_eq!(x.resource_type, resource_type);
    assert_eq!(x.resource_name.as_str(), resource);
    (
        x.error_code,
        x.error_message.as_ref().map(|m| m.to_string()),
    )
}

async fn incremental_alter(
    client: &mut Client,
    version: i16,
    validate_only: bool,
    resource_type: i8,
    resource: &str,
    ops: &[(&str, i8, Option<&str>)],
) -> (i16, Option<String>) {
    let ResponseKind::IncrementalAlterConfigs(r) = client
        .call(
            ApiKey::IncrementalAlterConfigs,
            version,
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default()
                    .with_validate_only(validate_only)
                    .with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(resource_type)
                            .with_resource_name(s(resource))
                            .with_configs(
                                ops.iter()
                                    .map(|(n, op, v)| {
                                        incremental_alter_configs_request::AlterableConfig::default(
                                        )
                                        .with_name(s(n))
                                        .with_config_operation(*op)
                                        .with_value(v.map(s))
                                    })
                                    .collect(),
                            ),
                    ]),
            ),
        )
        .await
    else {
        panic!("not an IncrementalAlterConfigs response")
    };
    assert_eq!(r.responses.len(), 1);
    let x = &r.responses[0];
    (
        x.error_code,
        x.error_message.as_ref().map(|m| m.to_string()),
    )
}

#[tokio::test]
async fn describe_configs_reports_every_topic_config_with_sources_types_and_docs() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "cfg", 1, &[("retention.ms", "3600000")]).await;

    for v in versions(ApiKey::DescribeConfigs) {
        let configs = describe_topic_configs(&mut client, v, "cfg", None).await;
        assert_eq!(configs.len(), TOPIC_CONFIGS.len(), "v{v}");
        for c in &configs {
            assert!(c.value.is_some(), "v{v} {c:?}");
            assert!(!c.is_sensitive && !c.read_only, "v{v} {c:?}");
            assert_eq!(c.config_type != 0, v >= 3, "v{v} {c:?}");
            if v >= 3 {
                assert!(
                    c.documentation.as_ref().is_some_and(|d| !d.is_empty()),
                    "v{v} {c:?}"
                );
            }
            assert!(!c.synonyms.is_empty(), "v{v} {c:?}");
        }
        let retention = config(&configs, "retention.ms");
        assert_eq!(value(retention), Some("3600000"));
        assert_eq!(retention.config_source, DYNAMIC_TOPIC_CONFIG);
        assert_eq!(
            synonyms(retention),
            vec![
                ("retention.ms".to_string(), DYNAMIC_TOPIC_CONFIG),
                ("log.retention.ms".to_string(), DEFAULT_CONFIG)
            ]
        );
        let policy = config(&configs, "cleanup.policy");
        assert_eq!(value(policy), Some("delete"));
        assert_eq!(policy.config_source, DEFAULT_CONFIG);
        if v >= 3 {
            assert_eq!(policy.config_type, 7, "LIST");
            assert_eq!(retention.config_type, 5, "LONG");
        }
    }

    // Without synonyms or documentation asked for.
    let v = max_version(ApiKey::DescribeConfigs);
    let ResponseKind::DescribeConfigs(r) = client
        .call(
            ApiKey::DescribeConfigs,
            v,
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(s("cfg")),
            ])),
        )
        .await
    else {
        panic!("not a DescribeConfigs response")
    };
    assert_eq!(r.results[0].configs.len(), TOPIC_CONFIGS.len());
    for c in &r.results[0].configs {
        assert!(c.synonyms.is_empty() && c.documentation.is_none(), "{c:?}");
    }

    // A key filter; null and empty both mean everything.
    let some = describe_topic_configs(
        &mut client,
        v,
        "cfg",
        Some(vec!["segment.bytes", "no.such"]),
    )
    .await;
    assert_eq!(some.len(), 1);
    assert_eq!(value(&some[0]), Some("1073741824"));
    let all = describe_topic_configs(&mut client, v, "cfg", Some(vec![])).await;
    assert_eq!(all.len(), TOPIC_CONFIGS.len());

    // Unknown topic and unknown resource type: an error in that resource only.
    let r = describe_configs(&mut client, v, TOPIC, "nope", None).await;
    assert_eq!(r.error_code, code(ResponseError::UnknownTopicOrPartition));
    assert!(r.configs.is_empty());
    let r = describe_configs(&mut client, v, 3, "nope", None).await;
    assert_eq!(r.error_code, code(ResponseError::InvalidRequest));
    broker.replication.shutdown();
}

#[tokio::test]
async fn describe_configs_of_a_broker() {
    let (broker, mut client, dir) = start_with(|c| c.rack = Some("az-1".into())).await;
    let v = max_version(ApiKey::DescribeConfigs);
    let r = describe_configs(&mut client, v, BROKER, "1", None).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    let configs = r.configs;
    for (key, want) in [
        ("node.id", "1".to_string()),
        ("broker.id", "1".to_string()),
        ("broker.rack", "az-1".to_string()),
        ("num.partitions", "1".to_string()),
        ("default.replication.factor", "1".to_string()),
        ("auto.create.topics.enable", "true".to_string()),
        ("log.dirs", dir.path().display().to_string()),
    ] {
        let c = config(&configs, key);
        assert_eq!(value(c), Some(want.as_str()), "{key}");
        assert_eq!(c.config_source, STATIC_BROKER_CONFIG, "{key}");
    }
    let listeners = config(&configs, "advertised.listeners");
    assert!(value(listeners).is_some_and(|l| l.starts_with("PLAINTEXT://127.0.0.1:")));
    // Every topic config's broker-level synonym, at its default until set.
    for def in TOPIC_CONFIGS {
        let broker_name = def.broker_name.expect("broker synonym");
        let c = config(&configs, broker_name);
        assert!(c.value.is_some(), "{broker_name}");
    }
    let retention = config(&configs, "log.retention.ms");
    assert_eq!(retention.config_source, DEFAULT_CONFIG);
    assert_eq!(value(retention), Some("604800000"));

    // Another broker's id: INVALID_REQUEST.
    let r = describe_configs(&mut client, v, BROKER, "7", None).await;
    assert_eq!(r.error_code, code(ResponseError::InvalidRequest));
    broker.replication.shutdown();

    // No rack: null, as Kafka reports it.
    let (broker, mut client, _dir) = start().await;
    let r = describe_configs(&mut client, v, BROKER, "1", Some(vec!["broker.rack"])).await;
    assert_eq!(r.configs.len(), 1);
    assert_eq!(r.configs[0].value, None);
    broker.replication.shutdown();
}

#[tokio::test]
async fn alter_configs_replaces_topic_configs_and_sets_cluster_defaults() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "alter", 1, &[("segment.ms", "100000")]).await;
    let v = max_version(ApiKey::AlterConfigs);

    // validate_only: checked, not applied.
    let r = alter_configs(
        &mut client,
        v,
        true,
        TOPIC,
        "alter",
        &[("retention.ms", "1000")],
    )
    .await;
    assert_eq!(r.0, 0);
    let configs = describe_topic_configs(&mut client, 4, "alter", None).await;
    assert_eq!(
        config(&configs, "retention.ms").config_source,
        DEFAULT_CONFIG
    );

    // The whole set is replaced: segment.ms goes back to its default.
    let r = alter_configs(
        &mut client,
        v,
        false,
        TOPIC,
        "alter",
        &[("retention.ms", "1000"), ("cleanup.policy", "compact")],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "alter", None).await;
    let retention = config(&configs, "retention.ms");
    assert_eq!(
        (value(retention), retention.config_source),
        (Some("1000"), DYNAMIC_TOPIC_CONFIG)
    );
    assert_eq!(value(config(&configs, "cleanup.policy")), Some("compact"));
    assert_eq!(config(&configs, "segment.ms").config_source, DEFAULT_CONFIG);

    // Bad values and unknown names: INVALID_CONFIG with a message; nothing changes.
    for (key, bad) in [
        ("retention.ms", "soon"),
        ("cleanup.policy", "shred"),
        ("no.such.config", "1"),
    ] {
        for version in versions(ApiKey::AlterConfigs) {
            let (e, message) =
                alter_configs(&mut client, version, false, TOPIC, "alter", &[(key, bad)]).await;
            assert_eq!(
                e,
                code(ResponseError::InvalidConfig),
                "{key}={bad} v{version}"
            );
            assert!(message.is_some_and(|m| m.contains(key)), "{key}");
        }
    }
    let configs = describe_topic_configs(&mut client, 4, "alter", None).await;
    assert_eq!(value(config(&configs, "retention.ms")), Some("1000"));

    // Unknown topic; a key named twice.
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        TOPIC,
        "nope",
        &[("retention.ms", "1")],
    )
    .await;
    assert_eq!(e, code(ResponseError::UnknownTopicOrPartition));
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        TOPIC,
        "alter",
        &[("retention.ms", "1"), ("retention.ms", "2")],
    )
    .await;
    assert_eq!(e, code(ResponseError::InvalidRequest));

    // Broker resource: broker-level synonyms become cluster-wide defaults.
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        BROKER,
        "",
        &[("log.retention.ms", "7200000")],
    )
    .await;
    assert_eq!(e, 0);
    create_topic(&mut client, "defaulted", 1, &[]).await;
    let configs = describe_topic_configs(&mut client, 4, "defaulted", None).await;
    let retention = config(&configs, "retention.ms");
    assert_eq!(
        (value(retention), retention.config_source),
        (Some("7200000"), DYNAMIC_DEFAULT_BROKER_CONFIG)
    );
    assert_eq!(
        synonyms(retention),
        vec![
            (
                "log.retention.ms".to_string(),
                DYNAMIC_DEFAULT_BROKER_CONFIG
            ),
            ("log.retention.ms".to_string(), DEFAULT_CONFIG)
        ]
    );
    // The topic's own setting still wins.
    let configs = describe_topic_configs(&mut client, 4, "alter", None).await;
    assert_eq!(value(config(&configs, "retention.ms")), Some("1000"));
    let r = describe_configs(&mut client, 4, BROKER, "1", Some(vec!["log.retention.ms"])).await;
    assert_eq!(r.configs[0].config_source, DYNAMIC_DEFAULT_BROKER_CONFIG);
    assert_eq!(value(&r.configs[0]), Some("7200000"));

    // Broker configs that are not topic defaults, and bad values: refused.
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        BROKER,
        "1",
        &[("num.partitions", "3")],
    )
    .await;
    assert_eq!(e, code(ResponseError::InvalidRequest));
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        BROKER,
        "1",
        &[("log.retention.ms", "x")],
    )
    .await;
    assert_eq!(e, code(ResponseError::InvalidConfig));
    let (e, _) = alter_configs(
        &mut client,
        v,
        false,
        BROKER,
        "9",
        &[("log.retention.ms", "1")],
    )
    .await;
    assert_eq!(e, code(ResponseError::InvalidRequest));
    broker.replication.shutdown();
}

#[tokio::test]
async fn incremental_alter_configs_set_delete_append_subtract() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "inc", 1, &[("segment.ms", "100000")]).await;
    let v = max_version(ApiKey::IncrementalAlterConfigs);
    let policy = |configs: &[describe_configs_response::DescribeConfigsResourceResult]| {
        let c = config(configs, "cleanup.policy");
        (value(c).map(str::to_string), c.config_source)
    };

    // SET keeps the other dynamic configs (unlike AlterConfigs).
    let r = incremental_alter(
        &mut client,
        v,
        false,
        TOPIC,
        "inc",
        &[("retention.ms", SET, Some("5000"))],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(
        config(&configs, "retention.ms").config_source,
        DYNAMIC_TOPIC_CONFIG
    );
    assert_eq!(value(config(&configs, "segment.ms")), Some("100000"));

    // APPEND to an unset list starts from its default, as Kafka does; SUBTRACT removes.
    let r = incremental_alter(
        &mut client,
        v,
        false,
        TOPIC,
        "inc",
        &[("cleanup.policy", APPEND, Some("compact"))],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(
        policy(&configs),
        (Some("delete,compact".into()), DYNAMIC_TOPIC_CONFIG)
    );
    let r = incremental_alter(
        &mut client,
        0,
        false,
        TOPIC,
        "inc",
        &[("cleanup.policy", SUBTRACT, Some("delete"))],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(
        policy(&configs),
        (Some("compact".into()), DYNAMIC_TOPIC_CONFIG)
    );

    // DELETE goes back to the default.
    let r = incremental_alter(
        &mut client,
        v,
        false,
        TOPIC,
        "inc",
        &[
            ("cleanup.policy", DELETE, None),
            ("segment.ms", DELETE, None),
        ],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(policy(&configs), (Some("delete".into()), DEFAULT_CONFIG));
    assert_eq!(config(&configs, "segment.ms").config_source, DEFAULT_CONFIG);
    assert_eq!(value(config(&configs, "retention.ms")), Some("5000"));

    // validate_only.
    let r = incremental_alter(
        &mut client,
        v,
        true,
        TOPIC,
        "inc",
        &[("retention.ms", SET, Some("6000"))],
    )
    .await;
    assert_eq!(r.0, 0);
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(value(config(&configs, "retention.ms")), Some("5000"));

    // Errors, at every version: nothing changes.
    for version in versions(ApiKey::IncrementalAlterConfigs) {
        for (ops, want) in [
            (
                vec![("retention.ms", SET, Some("later"))],
                ResponseError::InvalidConfig,
            ),
            (
                vec![("no.such", SET, Some("1"))],
                ResponseError::InvalidConfig,
            ),
            (
                vec![("retention.ms", APPEND, Some("1"))],
                ResponseError::InvalidConfig,
            ),
            (
                vec![("retention.ms", SET, None)],
                ResponseError::InvalidRequest,
            ),
            (
                vec![("retention.ms", 9, Some("1"))],
                ResponseError::InvalidRequest,
            ),
            (
                vec![
                    ("retention.ms", SET, Some("1")),
                    ("retention.ms", DELETE, None),
                ],
                ResponseError::InvalidRequest,
            ),
        ] {
            let (e, message) =
                incremental_alter(&mut client, version, false, TOPIC, "inc", &ops).await;
            assert_eq!(e, code(want), "{ops:?} v{version}");
            assert!(message.is_some());
        }
        let (e, _) = incremental_alter(
            &mut client,
            version,
            false,
            TOPIC,
            "nope",
            &[("retention.ms", SET, Some("1"))],
        )
        .await;
        assert_eq!(e, code(ResponseError::UnknownTopicOrPartition));
    }
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(value(config(&configs, "retention.ms")), Some("5000"));

    // Broker resource: cluster-wide defaults, and only topic-config synonyms.
    let r = incremental_alter(
        &mut client,
        v,
        false,
        BROKER,
        "",
        &[("log.cleanup.policy", APPEND, Some("compact"))],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let configs = describe_topic_configs(&mut client, 4, "inc", None).await;
    assert_eq!(
        policy(&configs),
        (Some("delete,compact".into()), DYNAMIC_DEFAULT_BROKER_CONFIG)
    );
    let r = incremental_alter(
        &mut client,
        v,
        false,
        BROKER,
        "1",
        &[("log.dirs", SET, Some("/tmp"))],
    )
    .await;
    assert_eq!(r.0, code(ResponseError::InvalidRequest));
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// DescribeCluster

#[tokio::test]
async fn describe_cluster_lists_brokers_with_racks() {
    let (broker, mut client, _dir) = start_with(|c| c.rack = Some("az-2".into())).await;
    for v in versions(ApiKey::DescribeCluster) {
        let ResponseKind::DescribeCluster(r) = client
            .call(
                ApiKey::DescribeCluster,
                v,
                RequestKind::DescribeCluster(DescribeClusterRequest::default()),
            )
            .await
        else {
            panic!("not a DescribeCluster response")
        };
        assert_eq!(r.error_code, 0);
        assert_eq!(r.cluster_id.as_str(), broker.cluster_id);
        assert_eq!(r.controller_id, BrokerId(1));
        assert_eq!(r.cluster_authorized_operations, i32::MIN);
        assert_eq!(r.endpoint_type, 1);
        assert_eq!(r.brokers.len(), 1);
        let b = &r.brokers[0];
        assert_eq!(b.broker_id, BrokerId(1));
        assert_eq!(b.host.as_str(), "127.0.0.1");
        assert_eq!(b.port, i32::from(broker.config.advertised_port));
        assert_eq!(b.rack.as_ref().map(|r| r.as_str()), Some("az-2"));
    }
    // Asking a broker for controllers.
    for (v, want) in [
        (1, ResponseError::MismatchedEndpointType),
        (2, ResponseError::MismatchedEndpointType),
    ] {
        let ResponseKind::DescribeCluster(r) = client
            .call(
                ApiKey::DescribeCluster,
                v,
                RequestKind::DescribeCluster(
                    DescribeClusterRequest::default().with_endpoint_type(2),
                ),
            )
            .await
        else {
            panic!("not a DescribeCluster response")
        };
        assert_eq!(r.error_code, code(want), "v{v}");
        assert!(r.brokers.is_empty());
    }
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// DescribeTopicPartitions

async fn describe_partitions(
    client: &mut Client,
    topics: &[&str],
    limit: i32,
    cursor: Option<(&str, i32)>,
) -> DescribeTopicPartitionsResponse {
    let ResponseKind::DescribeTopicPartitions(r) = client
        .call(
            ApiKey::DescribeTopicPartitions,
            0,
            RequestKind::DescribeTopicPartitions(
                DescribeTopicPartitionsRequest::default()
                    .with_topics(
                        topics
                            .iter()
                            .map(|t| {
                                describe_topic_partitions_request::TopicRequest::default()
                                    .with_name(name(t))
                            })
                            .collect(),
                    )
                    .with_response_partition_limit(limit)
                    .with_cursor(cursor.map(|(t, p)| {
                        describe_topic_partitions_request::Cursor::default()
                            .with_topic_name(name(t))
                            .with_partition_index(p)
                    })),
            ),
        )
        .await
    else {
        panic!("not a DescribeTopicPartitions response")
    };
    r
}

type Page = (Vec<(String, Vec<i32>)>, Option<(String, i32)>);

/// (topic, partitions) of a page, and its cursor.
fn page(r: &DescribeTopicPartitionsResponse) -> Page {
    (
        r.topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect(),
        r.next_cursor
            .as_ref()
            .map(|c| (c.topic_name.0.to_string(), c.partition_index)),
    )
}

#[tokio::test]
async fn describe_topic_partitions_pages_with_a_cursor() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "a", 3, &[]).await;
    create_topic(&mut client, "b", 2, &[]).await;
    create_topic(&mut client, "c", 1, &[]).await;
    let ids: Vec<uuid::Uuid> = ["a", "b", "c"]
        .iter()
        .map(|t| broker.replication.metadata().topics[*t].id)
        .collect();

    // Everything in one page, with the partition details.
    let r = describe_partitions(&mut client, &[], 0, None).await;
    assert_eq!(
        page(&r),
        (
            vec![
                ("a".into(), vec![0, 1, 2]),
                ("b".into(), vec![0, 1]),
                ("c".into(), vec![0])
            ],
            None
        )
    );
    for (t, id) in r.topics.iter().zip(&ids) {
        assert_eq!(t.error_code, 0);
        assert_eq!(t.topic_id, *id);
        assert!(!t.is_internal);
        assert_eq!(t.topic_authorized_operations, i32::MIN);
        for p in &t.partitions {
            assert_eq!(p.error_code, 0);
            assert_eq!(p.leader_id, BrokerId(1));
            assert!(p.leader_epoch >= 0);
            assert_eq!(p.replica_nodes, vec![BrokerId(1)]);
            assert_eq!(p.isr_nodes, vec![BrokerId(1)]);
            assert_eq!(p.eligible_leader_replicas, Some(vec![]));
            assert_eq!(p.last_known_elr, Some(vec![]));
            assert!(p.offline_replicas.is_empty());
        }
    }

    // Pages of 4: the cursor points into b.
    let r = describe_partitions(&mut client, &["c", "b", "a"], 4, None).await;
    assert_eq!(
        page(&r),
        (
            vec![("a".into(), vec![0, 1, 2]), ("b".into(), vec![0])],
            Some(("b".into(), 1))
        )
    );
    let r = describe_partitions(&mut client, &["c", "b", "a"], 4, Some(("b", 1))).await;
    assert_eq!(
        page(&r),
        (vec![("b".into(), vec![1]), ("c".into(), vec![0])], None)
    );

    // A page that ends exactly at a topic's end: the next topic starts the next page and is
    // not also sent empty in this one.
    let r = describe_partitions(&mut client, &[], 3, None).await;
    assert_eq!(
        page(&r),
        (vec![("a".into(), vec![0, 1, 2])], Some(("b".into(), 0)))
    );
    let r = describe_partitions(&mut client, &[], 3, Some(("b", 0))).await;
    assert_eq!(
        page(&r),
        (vec![("b".into(), vec![0, 1]), ("c".into(), vec![0])], None)
    );

    // Unknown topics: UNKNOWN_TOPIC_OR_PARTITION, the others still described.
    let r = describe_partitions(&mut client, &["nope", "c"], 0, None).await;
    assert_eq!(r.topics.len(), 2);
    assert_eq!(r.topics[0].name, Some(name("c")));
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[1].name, Some(name("nope")));
    assert_eq!(
        r.topics[1].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );
    assert_eq!(r.topics[1].topic_authorized_operations, i32::MIN);
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// OffsetForLeaderEpoch

async fn end_offset_for(
    client: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    let ResponseKind::OffsetForLeaderEpoch(r) = client
        .call(
            ApiKey::OffsetForLeaderEpoch,
            version,
            RequestKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-2))
                    .with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(name(topic))
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                )
                                .with_partition(partition)
                                .with_current_leader_epoch(current_leader_epoch)
                                .with_leader_epoch(leader_epoch),
                            ]),
                    ]),
            ),
        )
        .await
    else {
        panic!("not an OffsetForLeaderEpoch response")
    };
    assert_eq!(r.topics[0].topic, name(topic));
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.partition, partition);
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[tokio::test]
async fn offset_for_leader_epoch_answers_epoch_ends_and_fences() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "epochs", 1, &[]).await;
    produce(&mut client, "epochs", 0, 4).await;
    let replica = broker.replication.replica("epochs", 0).expect("replica");
    let epoch = replica.leader_epoch();
    assert!(epoch >= 1, "Raft terms start at 1");
    let end = replica.high_watermark() as i64;
    assert_eq!(end, 4);

    for v in versions(ApiKey::OffsetForLeaderEpoch) {
        // The current epoch ends at the log end; the client's view may be unknown (-1).
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 0, epoch, epoch).await,
            (0, epoch, end),
            "v{v}"
        );
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 0, -1, epoch).await,
            (0, epoch, end),
            "v{v}"
        );
        // An epoch before the first: where the first one starts, with the requested epoch.
        let (e, le, off) = end_offset_for(&mut client, v, "epochs", 0, -1, epoch - 1).await;
        assert_eq!(e, 0);
        assert!(le < epoch, "v{v}: {le}");
        assert!((0..=end).contains(&off), "v{v}: {off}");
        // An epoch from the future: undefined.
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 0, -1, epoch + 5).await,
            (0, -1, -1),
            "v{v}"
        );
        // The client's current epoch is newer or older than the leader's.
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 0, epoch + 1, epoch).await,
            (code(ResponseError::UnknownLeaderEpoch), -1, -1),
            "v{v}"
        );
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 0, epoch - 1, epoch).await,
            (code(ResponseError::FencedLeaderEpoch), -1, -1),
            "v{v}"
        );
        // Unknown topic or partition.
        assert_eq!(
            end_offset_for(&mut client, v, "nope", 0, -1, epoch).await,
            (code(ResponseError::UnknownTopicOrPartition), -1, -1),
            "v{v}"
        );
        assert_eq!(
            end_offset_for(&mut client, v, "epochs", 3, -1, epoch)
                .await
                .0,
            code(ResponseError::UnknownTopicOrPartition),
            "v{v}"
        );
    }
    broker.replication.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Every advertised version, on error paths

/// A request for `api_key` at `version` that must be answered with an error (unknown topics,
/// invalid values), so the error paths of every version go through the encoder too.
fn failing_request(api_key: ApiKey, version: i16) -> Option<RequestKind> {
    let missing = name("missing-topic");
    Some(match api_key {
        ApiKey::DeleteTopics => delete_by_name(version, "missing-topic"),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default().with_topics(vec![grow("missing-topic", 3, None)]),
        ),
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(missing)
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default().with_offset(1),
                    ]),
            ]))
        }
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(TOPIC)
                .with_resource_name(s("missing-topic")),
        ]))
        }
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(TOPIC)
                .with_resource_name(s("present"))
                .with_configs(vec![alter_configs_request::AlterableConfig::default()
                    .with_name(s("retention.ms"))
                    .with_value(Some(s("never")))]),
        ]))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(s("missing-topic"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("1"))),
                    ]),
            ]),
        ),
        ApiKey::DescribeCluster if version >= 1 => {
            RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(2))
        }
        ApiKey::DescribeTopicPartitions => RequestKind::DescribeTopicPartitions(
            DescribeTopicPartitionsRequest::default().with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default().with_name(missing),
            ]),
        ),
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("present"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(1_000_000)
                            .with_leader_epoch(1),
                    ]),
            ]),
        ),
        ApiKey::ListOffsets => {
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(missing)
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
                    ]),
            ]))
        }
        ApiKey::CreateTopics => {
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name("present"))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]))
        }
        // v0-3 cannot say "do not create it".
        ApiKey::Metadata if version >= 4 => RequestKind::Metadata(
            MetadataRequest::default()
                .with_allow_auto_topic_creation(false)
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(missing))])),
        ),
        _ => return None,
    })
}

/// Every error code in a response.
fn error_codes(response: &ResponseKind) -> Vec<i16> {
    match response {
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().map(|t| t.error_code).collect()
        }
        ResponseKind::DescribeCluster(r) => vec![r.error_code],
        ResponseKind::DescribeTopicPartitions(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
        other => panic!("no error extractor for {other:?}"),
    }
}

#[tokio::test]
async fn every_advertised_version_answers_its_errors_well_formed() {
    let (broker, mut client, _dir) = start().await;
    create_topic(&mut client, "present", 1, &[]).await;
    let mut checked = 0;
    for range in SUPPORTED {
        for version in range.min..=range.max {
            let Some(body) = failing_request(range.api_key, version) else {
                continue;
            };
            let response = client
                .try_call(range.api_key, version, body)
                .await
                .unwrap_or_else(|e| panic!("{:?} v{version}: {e}", range.api_key));
            let codes = error_codes(&response);
            assert!(
                !codes.is_empty() && codes.iter().all(|&c| c != 0),
                "{:?} v{version} should fail: {response:?}",
                range.api_key
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "checked {checked} api versions");
    broker.replication.shutdown();
}
