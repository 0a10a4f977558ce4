//! Every API at every version this broker advertises gets a well-formed answer: the table that
//! drives ApiVersions must promise only what really works (aiokafka, old librdkafka and the
//! Java client each pick different versions).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// The transactional APIs: each version gets a transactional id of its own, prepared before
/// the sweep so that the request is valid in its state.
const TXN_APIS: &[ApiKey] = &[
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeTransactions,
];

/// The group transactional offsets are committed for.
const TXN_GROUP: &str = "matrix-txn-group";

fn txn_id(api_key: ApiKey, version: i16) -> String {
    format!("{api_key:?}-v{version}")
}

fn transactional_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_string()))
}

/// What the sweep's requests need to know: the producer id and epoch of each prepared
/// transactional id, and an idempotent producer for WriteTxnMarkers.
#[derive(Default)]
struct Ctx {
    producers: HashMap<String, (i64, i16)>,
    marker_producer: i64,
}

impl Ctx {
    fn producer(&self, api_key: ApiKey, version: i16) -> (ProducerId, i16) {
        let (pid, epoch) = self.producers[&txn_id(api_key, version)];
        (ProducerId(pid), epoch)
    }
}

/// A representative request for `api_key` at `version` against topic `matrix` (id `id`).
fn request(api_key: ApiKey, version: i16, id: uuid::Uuid, ctx: &Ctx) -> Option<RequestKind> {
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
        ApiKey::DescribeQuorum => {
            RequestKind::DescribeQuorum(DescribeQuorumRequest::default().with_topics(vec![
                describe_quorum_request::TopicData::default()
                    .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                    .with_partitions(vec![
                        describe_quorum_request::PartitionData::default().with_partition_index(0),
                    ]),
            ]))
        }
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
        ApiKey::FindCoordinator if version < 4 => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("matrix-group")),
        ),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![StrBytes::from_static_str("matrix-group")]),
        ),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(group("matrix-group"))
                .with_generation_id_or_member_epoch(-1)
                .with_retention_time_ms(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(topic)
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(i64::from(version))
                                .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                        ]),
                ]),
        ),
        ApiKey::OffsetFetch if version < 8 => RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(group("matrix-group"))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(topic)
                        .with_partition_indexes(vec![0]),
                ])),
        ),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(
            vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(group("matrix-group"))
                .with_topics(None)],
        )),
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group(&format!("join-v{version}")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_group_instance_id(if version >= 5 {
                    Some(StrBytes::from_string(format!("instance-v{version}")))
                } else {
                    None
                })
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"\0\0\0\0\0\0\0\0"))]),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(group("matrix-group"))
                .with_member_id(StrBytes::from_static_str("nobody")),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(group("matrix-group"))
                .with_member_id(StrBytes::from_static_str("nobody")),
        ),
        ApiKey::LeaveGroup if version < 3 => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(group("matrix-group"))
                .with_member_id(StrBytes::from_static_str("nobody")),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(group("matrix-group"))
                .with_members(vec![leave_group_request::MemberIdentity::default()
                    .with_member_id(StrBytes::from_static_str("nobody"))]),
        ),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![group("matrix-group")]),
        ),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![group("never-existed")]),
        ),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(group("matrix-group"))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(topic)
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default()
                                .with_partition_index(0),
                        ]),
                ]),
        ),
        ApiKey::ConsumerGroupHeartbeat => RequestKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(group(&format!("cg-v{version}")))
                .with_member_id(StrBytes::from_string(format!("member-v{version}")))
                .with_member_epoch(0)
                .with_rebalance_timeout_ms(10_000)
                .with_subscribed_topic_names(Some(vec![name("matrix")]))
                .with_topic_partitions(Some(Vec::new())),
        ),
        ApiKey::ConsumerGroupDescribe => RequestKind::ConsumerGroupDescribe(
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![group("cg-v1")]),
        ),
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(topic)
                    .with_partition_indexes(vec![0]),
            ]))
        }
        ApiKey::AddPartitionsToTxn if version < 4 => {
            let (pid, epoch) = ctx.producer(api_key, version);
            RequestKind::AddPartitionsToTxn(
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(transactional_id(&txn_id(api_key, version)))
                    .with_v3_and_below_producer_id(pid)
                    .with_v3_and_below_producer_epoch(epoch)
                    .with_v3_and_below_topics(vec![
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(topic)
                            .with_partitions(vec![0]),
                    ]),
            )
        }
        // v4+ is the batched form brokers send; one transaction adds, one only verifies.
        ApiKey::AddPartitionsToTxn => {
            let (pid, epoch) = ctx.producer(api_key, version);
            RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(
                vec![add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(transactional_id(&txn_id(api_key, version)))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_verify_only(false)
                    .with_topics(vec![
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(topic)
                            .with_partitions(vec![0]),
                    ])],
            ))
        }
        ApiKey::AddOffsetsToTxn => {
            let (pid, epoch) = ctx.producer(api_key, version);
            RequestKind::AddOffsetsToTxn(
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(transactional_id(&txn_id(api_key, version)))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_group_id(group(TXN_GROUP)),
            )
        }
        // The transaction was opened (matrix-0 added) before the sweep.
        ApiKey::EndTxn => {
            let (pid, epoch) = ctx.producer(api_key, version);
            RequestKind::EndTxn(
                EndTxnRequest::default()
                    .with_transactional_id(transactional_id(&txn_id(api_key, version)))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_committed(true),
            )
        }
        ApiKey::WriteTxnMarkers => {
            RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(ProducerId(ctx.marker_producer))
                    .with_producer_epoch(0)
                    .with_transaction_result(false)
                    .with_coordinator_epoch(0)
                    .with_topics(vec![
                        write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(topic)
                            .with_partition_indexes(vec![0]),
                    ]),
            ]))
        }
        // The group's partition was added with AddOffsetsToTxn before the sweep.
        ApiKey::TxnOffsetCommit => {
            let (pid, epoch) = ctx.producer(api_key, version);
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(transactional_id(&txn_id(api_key, version)))
                    .with_group_id(group(TXN_GROUP))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_generation_id(-1)
                    .with_topics(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                            .with_name(topic)
                            .with_partitions(vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(i64::from(version))
                                    .with_committed_leader_epoch(-1)
                                    .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                            ]),
                    ]),
            )
        }
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![transactional_id(&txn_id(api_key, version))]),
        ),
        ApiKey::ListTransactions => RequestKind::ListTransactions(
            ListTransactionsRequest::default()
                .with_state_filters(if version >= 1 {
                    vec![]
                } else {
                    vec![StrBytes::from_static_str("Ongoing")]
                })
                .with_duration_filter(if version >= 1 { 0 } else { -1 })
                .with_transactional_id_pattern(if version >= 2 {
                    Some(StrBytes::from_static_str(".*-v[0-9]"))
                } else {
                    None
                }),
        ),
        other => panic!("{other:?} is advertised but this test has no request for it: add one"),
    })
}

fn group(id: &str) -> GroupId {
    GroupId(StrBytes::from_string(id.to_string()))
}

/// Errors that are the right answer to the request above (it names no live member).
fn expected_errors(api_key: ApiKey, version: i16) -> Vec<i16> {
    use runnel_protocol::kafka_protocol::ResponseError;
    match api_key {
        ApiKey::Heartbeat | ApiKey::SyncGroup | ApiKey::LeaveGroup => {
            vec![ResponseError::UnknownMemberId.code()]
        }
        ApiKey::JoinGroup if version == 4 => vec![ResponseError::MemberIdRequired.code()],
        ApiKey::DeleteGroups => vec![ResponseError::GroupIdNotFound.code()],
        _ => Vec::new(),
    }
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
        ResponseKind::DescribeQuorum(r) => std::iter::once(r.error_code)
            .chain(
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|x| x.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().map(|x| x.error_code).collect()
        }
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::DescribeTopicPartitions(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::FindCoordinator(r) => std::iter::once(r.error_code)
            .chain(r.coordinators.iter().map(|c| c.error_code))
            .collect(),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::OffsetFetch(r) => std::iter::once(r.error_code)
            .chain(
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .chain(r.groups.iter().map(|g| g.error_code))
            .collect(),
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        ResponseKind::LeaveGroup(r) => std::iter::once(r.error_code)
            .chain(r.members.iter().map(|m| m.error_code))
            .collect(),
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        ResponseKind::ListGroups(r) => vec![r.error_code],
        ResponseKind::DeleteGroups(r) => r.results.iter().map(|g| g.error_code).collect(),
        ResponseKind::OffsetDelete(r) => std::iter::once(r.error_code)
            .chain(
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ConsumerGroupHeartbeat(r) => vec![r.error_code],
        ResponseKind::ConsumerGroupDescribe(r) => r.groups.iter().map(|g| g.error_code).collect(),
        ResponseKind::DescribeProducers(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::AddPartitionsToTxn(r) => std::iter::once(r.error_code)
            .chain(
                r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| t.results_by_partition.iter())
                    .map(|p| p.partition_error_code),
            )
            .chain(
                r.results_by_transaction
                    .iter()
                    .flat_map(|x| x.topic_results.iter())
                    .flat_map(|t| t.results_by_partition.iter())
                    .map(|p| p.partition_error_code),
            )
            .collect(),
        ResponseKind::AddOffsetsToTxn(r) => vec![r.error_code],
        ResponseKind::EndTxn(r) => vec![r.error_code],
        ResponseKind::WriteTxnMarkers(r) => r
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeTransactions(r) => {
            r.transaction_states.iter().map(|t| t.error_code).collect()
        }
        ResponseKind::ListTransactions(r) => vec![r.error_code],
        other => panic!("no error extractor for {other:?}"),
    }
}

/// What the transactional answers must hold beyond their error codes.
fn check_content(api_key: ApiKey, version: i16, response: &ResponseKind) {
    let what = format!("{api_key:?} v{version}: {response:?}");
    match response {
        ResponseKind::AddPartitionsToTxn(r) if version < 4 => {
            assert_eq!(r.results_by_topic_v3_and_below.len(), 1, "{what}");
            assert_eq!(
                r.results_by_topic_v3_and_below[0]
                    .results_by_partition
                    .len(),
                1,
                "{what}"
            );
        }
        ResponseKind::AddPartitionsToTxn(r) => {
            assert_eq!(r.results_by_transaction.len(), 1, "{what}");
            assert_eq!(
                r.results_by_transaction[0].transactional_id.0.as_str(),
                txn_id(api_key, version),
                "{what}"
            );
            assert_eq!(r.results_by_transaction[0].topic_results.len(), 1, "{what}");
        }
        ResponseKind::WriteTxnMarkers(r) => {
            assert_eq!(r.markers.len(), 1, "{what}");
            assert_eq!(r.markers[0].topics.len(), 1, "{what}");
            assert_eq!(r.markers[0].topics[0].partitions.len(), 1, "{what}");
        }
        ResponseKind::TxnOffsetCommit(r) => {
            assert_eq!(r.topics.len(), 1, "{what}");
            assert_eq!(r.topics[0].partitions.len(), 1, "{what}");
        }
        ResponseKind::DescribeTransactions(r) => {
            assert_eq!(r.transaction_states.len(), 1, "{what}");
            let t = &r.transaction_states[0];
            assert_eq!(t.transaction_state.as_str(), "Empty", "{what}");
            assert!(t.producer_id.0 >= 0, "{what}");
        }
        ResponseKind::ListTransactions(r) => {
            assert!(!r.transaction_states.is_empty(), "{what}");
            if version == 0 {
                assert!(
                    r.transaction_states
                        .iter()
                        .all(|t| t.transaction_state.as_str() == "Ongoing"),
                    "{what}"
                );
            }
        }
        _ => {}
    }
}

/// FindCoordinator for a transactional id, then InitProducerId until the coordinator has
/// loaded: the producer id and epoch.
async fn init_transactional(client: &mut common::Client, id: &str) -> (i64, i16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let find = RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_key_type(1)
                .with_key(StrBytes::from_string(id.to_string())),
        );
        let ResponseKind::FindCoordinator(f) = client.call(ApiKey::FindCoordinator, 3, find).await
        else {
            panic!("FindCoordinator");
        };
        if f.error_code == 0 {
            let init = RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(transactional_id(id)))
                    .with_transaction_timeout_ms(60_000),
            );
            let ResponseKind::InitProducerId(r) =
                client.call(ApiKey::InitProducerId, 4, init).await
            else {
                panic!("InitProducerId");
            };
            if r.error_code == 0 {
                return (r.producer_id.0, r.producer_epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the transaction coordinator for {id} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gives every version of the transactional APIs a transactional id in the state its request
/// needs: initialised; for EndTxn with matrix-0 in an open transaction; for TxnOffsetCommit
/// with the group's offsets partition in it.
async fn prepare_transactions(client: &mut common::Client) -> Ctx {
    let mut ctx = Ctx::default();
    for range in SUPPORTED.iter().filter(|r| TXN_APIS.contains(&r.api_key)) {
        for version in range.min..=range.max {
            let id = txn_id(range.api_key, version);
            let (pid, epoch) = init_transactional(client, &id).await;
            match range.api_key {
                ApiKey::EndTxn => {
                    let add = AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(transactional_id(&id))
                        .with_v3_and_below_producer_id(ProducerId(pid))
                        .with_v3_and_below_producer_epoch(epoch)
                        .with_v3_and_below_topics(vec![
                            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                                .with_name(name("matrix"))
                                .with_partitions(vec![0]),
                        ]);
                    let r = client
                        .call(
                            ApiKey::AddPartitionsToTxn,
                            3,
                            RequestKind::AddPartitionsToTxn(add),
                        )
                        .await;
                    assert_eq!(errors(&r), vec![0, 0], "{id}: {r:?}");
                }
                ApiKey::TxnOffsetCommit => {
                    let add = AddOffsetsToTxnRequest::default()
                        .with_transactional_id(transactional_id(&id))
                        .with_producer_id(ProducerId(pid))
                        .with_producer_epoch(epoch)
                        .with_group_id(group(TXN_GROUP));
                    let r = client
                        .call(
                            ApiKey::AddOffsetsToTxn,
                            3,
                            RequestKind::AddOffsetsToTxn(add),
                        )
                        .await;
                    assert_eq!(errors(&r), vec![0], "{id}: {r:?}");
                }
                _ => {}
            }
            ctx.producers.insert(id, (pid, epoch));
        }
    }
    let init =
        RequestKind::InitProducerId(InitProducerIdRequest::default().with_transactional_id(None));
    let ResponseKind::InitProducerId(r) = client.call(ApiKey::InitProducerId, 4, init).await else {
        panic!("InitProducerId");
    };
    assert_eq!(r.error_code, 0);
    ctx.marker_producer = r.producer_id.0;
    // Every `__transaction_state` partition loaded, so ListTransactions answers without
    // COORDINATOR_LOAD_IN_PROGRESS.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = RequestKind::ListTransactions(ListTransactionsRequest::default());
        if errors(&client.call(ApiKey::ListTransactions, 0, list).await) == vec![0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transaction coordinator never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx
}

#[tokio::test]
async fn every_advertised_version_answers_well_formed_and_without_error() {
    let (broker, mut client, _dir) = common::start_with(|c| {
        c.group.groups.initial_rebalance_delay_ms = 0;
        c.group.offsets_topic_num_partitions = 5;
        c.txn.state_log_num_partitions = 5;
    })
    .await;
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
    // The coordinator loads its partitions once `__consumer_offsets` exists.
    let find = RequestKind::FindCoordinator(
        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("matrix-group")),
    );
    client.call(ApiKey::FindCoordinator, 3, find).await;
    // Both groups' coordinators loaded (the sweep's group and the transactional commits').
    let fetch = |g: &str| {
        RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(group(g))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(name("matrix"))
                        .with_partition_indexes(vec![0]),
                ])),
        )
    };
    for g in ["matrix-group", TXN_GROUP] {
        let mut waited = 0;
        while errors(&client.call(ApiKey::OffsetFetch, 7, fetch(g)).await) != vec![0, 0] {
            waited += 1;
            assert!(waited < 500, "the group coordinator never finished loading");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let ctx = prepare_transactions(&mut client).await;
    let mut checked = 0;
    for range in SUPPORTED {
        for version in range.min..=range.max {
            let Some(body) = request(range.api_key, version, id, &ctx) else {
                continue;
            };
            let response = client
                .try_call(range.api_key, version, body)
                .await
                .unwrap_or_else(|e| panic!("{:?} v{version}: {e}", range.api_key));
            let errs = errors(&response);
            let allowed = expected_errors(range.api_key, version);
            assert!(
                errs.iter().all(|&e| e == 0 || allowed.contains(&e)),
                "{:?} v{version} answered with errors {errs:?}: {response:?}",
                range.api_key
            );
            assert!(
                !errs.is_empty(),
                "{:?} v{version} answered with nothing: {response:?}",
                range.api_key
            );
            check_content(range.api_key, version, &response);
            checked += 1;
        }
    }
    assert!(checked > 80, "checked {checked} api versions");
    broker.replication.shutdown();
}
