//! Every API at every version this broker advertises gets a well-formed answer: the table that
//! drives ApiVersions must promise only what really works (aiokafka, old librdkafka and the
//! Java client each pick different versions).

mod common;

use bytes::Bytes;
use common::start;
use runnel_broker::handlers::SUPPORTED;
use runnel_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic;
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create(topic: &str, partitions: i32) -> RequestKind {
    RequestKind::CreateTopics(
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)]),
    )
}

fn records() -> Bytes {
    let r = NewRecord {
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"v")),
        headers: vec![],
    };
    build_batch(&[r], &BatchOptions::default()).expect("batch")
}

/// A representative request for `api_key` at `version` against topic `matrix` (id `id`).
fn request(api_key: ApiKey, version: i16, id: uuid::Uuid) -> Option<RequestKind> {
    let topic = name("matrix");
    Some(match api_key {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            let t = metadata_request::MetadataRequestTopic::default().with_name(Some(topic));
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![t])))
        }
        ApiKey::Produce if version < 3 => return None, // refused, as Kafka 4 refuses v0-2
        ApiKey::Produce => {
            let mut t = produce_request::TopicProduceData::default().with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records())),
            ]);
            t = if version >= 13 {
                t.with_topic_id(id)
            } else {
                t.with_name(topic)
            };
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![t]),
            )
        }
        ApiKey::Fetch => {
            let p = fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20);
            let mut t = fetch_request::FetchTopic::default().with_partitions(vec![p]);
            t = if version >= 13 {
                t.with_topic_id(id)
            } else {
                t.with_topic(topic)
            };
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![t]),
            )
        }
        ApiKey::ListOffsets => {
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic)
                    .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1)]),
            ]))
        }
        ApiKey::CreateTopics => create(&format!("created-v{version}"), 1),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default().with_transactional_id(None),
        ),
        ApiKey::DeleteTopics => {
            let doomed = format!("doomed-v{version}");
            if version >= 6 {
                let t = delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name(&doomed)));
                RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![t]))
            } else {
                RequestKind::DeleteTopics(
                    DeleteTopicsRequest::default().with_topic_names(vec![name(&doomed)]),
                )
            }
        }
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(topic)
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(0),
                    ]),
            ]))
        }
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(topic)
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_leader_epoch(1)
                            .with_current_leader_epoch(-1),
                    ]),
            ]),
        ),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("matrix")),
            ]))
        }
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(
                vec![alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("matrix"))
            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(Some(StrBytes::from_static_str("86400000")))])],
            ))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("matrix"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("retention.bytes"))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_static_str("1000000"))),
                    ]),
            ]),
        ),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name("growing"))
                        .with_count(2 + version as i32)
                        .with_assignments(None),
                ]),
        ),
        ApiKey::DescribeTopicPartitions => RequestKind::DescribeTopicPartitions(
            DescribeTopicPartitionsRequest::default()
                .with_topics(vec![
                    describe_topic_partitions_request::TopicRequest::default().with_name(topic),
                ])
                .with_response_partition_limit(100),
        ),
        other => panic!("{other:?} is advertised but this test has no request for it: add one"),
    })
}

/// The error codes a response carries at its top and per topic/partition (0 = none).
fn errors(response: &ResponseKind) -> Vec<i16> {
    match response {
        ResponseKind::ApiVersions(r) => vec![r.error_code],
        ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::Fetch(r) => std::iter::once(r.error_code)
            .chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeCluster(r) => vec![r.error_code],
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|x| x.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().map(|x| x.error_code).collect()
        }
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::DescribeTopicPartitions(r) => r.topics.iter().map(|t| t.error_code).collect(),
        other => panic!("no error extractor for {other:?}"),
    }
}

#[tokio::test]
async fn every_advertised_version_answers_well_formed_and_without_error() {
    let (broker, mut client, _dir) = start().await;
    client
        .call(ApiKey::CreateTopics, 7, create("matrix", 1))
        .await;
    client
        .call(ApiKey::CreateTopics, 7, create("growing", 1))
        .await;
    for r in SUPPORTED
        .iter()
        .filter(|r| r.api_key == ApiKey::DeleteTopics)
    {
        for v in r.min..=r.max {
            client
                .call(ApiKey::CreateTopics, 7, create(&format!("doomed-v{v}"), 1))
                .await;
        }
    }
    let id = broker
        .replication
        .metadata()
        .topics
        .get("matrix")
        .expect("matrix")
        .id;
    let mut checked = 0;
    for range in SUPPORTED {
        for version in range.min..=range.max {
            let Some(body) = request(range.api_key, version, id) else {
                continue;
            };
            let response = client
                .try_call(range.api_key, version, body)
                .await
                .unwrap_or_else(|e| panic!("{:?} v{version}: {e}", range.api_key));
            let errs = errors(&response);
            assert!(
                errs.iter().all(|&e| e == 0),
                "{:?} v{version} answered with errors {errs:?}: {response:?}",
                range.api_key
            );
            checked += 1;
        }
    }
    assert!(checked > 80, "checked {checked} api versions");
    broker.replication.shutdown();
}
