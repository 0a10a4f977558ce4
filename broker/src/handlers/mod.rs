//! One file per Kafka API, and the one table of supported APIs and versions that also
//! answers ApiVersions.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use runnel_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use runnel_protocol::{encode_response, ApiVersionRange, Request};

use crate::probe;
use crate::Broker;

const fn range(api_key: ApiKey, min: i16, max: i16) -> ApiVersionRange {
    ApiVersionRange { api_key, min, max }
}

/// Every API this broker answers, with the versions its handler implements. Produce
/// advertises v0 as its minimum because librdkafka requires it (KAFKA-18659); v0-2 requests
/// themselves are refused, as Kafka 4 refuses them.
pub const SUPPORTED: &[ApiVersionRange] = &[
    range(ApiKey::Produce, 0, 13),
    range(ApiKey::Fetch, 4, 18),
    range(ApiKey::ListOffsets, 1, 10),
    range(ApiKey::Metadata, 0, 13),
    range(ApiKey::ApiVersions, 0, 4),
    range(ApiKey::CreateTopics, 2, 7),
    range(ApiKey::InitProducerId, 0, 5),
    range(ApiKey::DeleteTopics, 1, 6),
    range(ApiKey::DeleteRecords, 0, 2),
    range(ApiKey::OffsetForLeaderEpoch, 2, 4),
    range(ApiKey::DescribeCluster, 0, 2),
    range(ApiKey::DescribeQuorum, 0, 2),
    range(ApiKey::DescribeConfigs, 1, 4),
    range(ApiKey::AlterConfigs, 0, 2),
    range(ApiKey::IncrementalAlterConfigs, 0, 1),
    range(ApiKey::CreatePartitions, 0, 3),
    range(ApiKey::DescribeTopicPartitions, 0, 0),
    range(ApiKey::FindCoordinator, 0, 6),
    range(ApiKey::OffsetCommit, 2, 9),
    range(ApiKey::OffsetFetch, 1, 9),
    range(ApiKey::JoinGroup, 0, 9),
    range(ApiKey::Heartbeat, 0, 4),
    range(ApiKey::LeaveGroup, 0, 5),
    range(ApiKey::SyncGroup, 0, 5),
    range(ApiKey::DescribeGroups, 0, 6),
    range(ApiKey::ListGroups, 0, 5),
    range(ApiKey::DeleteGroups, 0, 2),
    range(ApiKey::OffsetDelete, 0, 0),
    range(ApiKey::ConsumerGroupHeartbeat, 0, 1),
    range(ApiKey::ConsumerGroupDescribe, 0, 1),
    range(ApiKey::DescribeProducers, 0, 0),
    // Transactions V1 and V2 (KIP-890 part 2): Produce v12+, TxnOffsetCommit v5 and EndTxn v5
    // are the V2 forms, which clients use when ApiVersions' `transaction.version` is
    // finalized at 2 (AddOffsetsToTxn stops at 4 in Kafka too: V2 clients do not send it).
    range(ApiKey::AddPartitionsToTxn, 0, 5),
    range(ApiKey::AddOffsetsToTxn, 0, 4),
    range(ApiKey::EndTxn, 0, 5),
    range(ApiKey::WriteTxnMarkers, 1, 1),
    range(ApiKey::TxnOffsetCommit, 0, 5),
    range(ApiKey::DescribeTransactions, 0, 0),
    range(ApiKey::ListTransactions, 0, 2),
];

/// Who sent a request: JoinGroup records it per member (DescribeGroups shows it).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: String,
    /// Kafka's form: `/` and the peer's IP address.
    pub client_host: String,
}

pub fn supported(api_key: ApiKey) -> Option<&'static ApiVersionRange> {
    SUPPORTED.iter().find(|r| r.api_key == api_key)
}

/// What the connection sends back for one request.
#[derive(Debug)]
pub enum Reply {
    Frame(Bytes),
    /// No response at all (Produce with acks=0).
    Nothing,
    /// The request has no valid answer: close the connection, as Kafka does.
    Close,
}

fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeQuorum => "DescribeQuorum",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeTopicPartitions => "DescribeTopicPartitions",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        _ => "Other",
    }
}

/// Starts handling a request and returns the future of its reply. Produce does its
/// validation and proposing here, synchronously, so a connection's produce requests reach the
/// logs in the order they arrived; everything else runs in the returned future.
pub fn start(
    broker: &Arc<Broker>,
    request: Request,
    peer: std::net::SocketAddr,
    listener: Arc<str>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>> {
    let broker = broker.clone();
    let (api_key, version, correlation_id) = (
        request.api_key,
        request.api_version(),
        request.correlation_id(),
    );
    let supported_version = supported(api_key).is_some_and(|r| r.contains(version));
    if let (RequestKind::Produce(body), true) = (&request.body, supported_version) {
        let body = body.clone();
        let started = Instant::now();
        let begun = produce::begin(&broker, body, version, &listener);
        return Box::pin(async move {
            let Some(response) = produce::finish(begun).await else {
                return Reply::Nothing;
            };
            probe::request_done(api_name(api_key), version, started.elapsed());
            encode(
                api_key,
                version,
                correlation_id,
                &ResponseKind::Produce(response),
            )
        });
    }
    Box::pin(async move { handle(&broker, request, peer, &listener).await })
}

fn encode(api_key: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> Reply {
    match encode_response(api_key, version, correlation_id, body) {
        Ok(frame) => Reply::Frame(frame),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response; closing connection");
            Reply::Close
        }
    }
}

/// Handles one request that came in on the listener named `listener` (whose endpoints
/// Metadata, FindCoordinator and DescribeCluster answer with).
pub async fn handle(
    broker: &Arc<Broker>,
    request: Request,
    peer: std::net::SocketAddr,
    listener: &str,
) -> Reply {
    let api_key = request.api_key;
    let version = request.api_version();
    let correlation_id = request.correlation_id();
    let started = Instant::now();
    if !supported(api_key).is_some_and(|r| r.contains(version)) {
        if api_key == ApiKey::ApiVersions {
            return api_versions::unsupported_version_response(correlation_id);
        }
        tracing::info!(
            ?api_key,
            version,
            client = request.client_id(),
            "unsupported API or version; closing connection"
        );
        return Reply::Close;
    }
    let client = ClientInfo {
        client_id: request.client_id().to_string(),
        client_host: format!("/{}", peer.ip()),
    };
    let body = match request.body {
        RequestKind::ApiVersions(r) => {
            ResponseKind::ApiVersions(api_versions::handle(broker, r, version))
        }
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::handle(broker, r, version, listener).await)
        }
        RequestKind::Produce(r) => {
            match produce::finish(produce::begin(broker, r, version, listener)).await {
                Some(resp) => ResponseKind::Produce(resp),
                None => return Reply::Nothing,
            }
        }
        RequestKind::Fetch(r) => {
            ResponseKind::Fetch(fetch::handle(broker, r, version, listener).await)
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(broker, r, version))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(create_topics::handle(broker, r, version).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(init_producer_id::handle(broker, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(delete_topics::handle(broker, r, version).await)
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(delete_records::handle(broker, r, version).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(broker, r, version))
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(describe_cluster::handle(broker, r, version, listener))
        }
        RequestKind::DescribeQuorum(r) => ResponseKind::DescribeQuorum(
            describe_quorum::handle(broker, r, version, &client.client_id, listener).await,
        ),
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(describe_configs::handle(broker, r, version))
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(alter_configs::handle(broker, r, version).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs::handle(broker, r, version).await,
        ),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions::handle(broker, r, version).await)
        }
        RequestKind::DescribeTopicPartitions(r) => ResponseKind::DescribeTopicPartitions(
            describe_topic_partitions::handle(broker, r, version),
        ),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(offset_commit::handle(broker, r, version).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(offset_fetch::handle(broker, r, version))
        }
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(
            find_coordinator::handle(broker, r, version, listener).await,
        ),
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(join_group::handle(broker, r, version, &client).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(heartbeat::handle(broker, r, version)),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(leave_group::handle(broker, r, version))
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(sync_group::handle(broker, r, version).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(describe_groups::handle(broker, r, version))
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(list_groups::handle(broker, r, version))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(delete_groups::handle(broker, r, version).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(offset_delete::handle(broker, r, version).await)
        }
        RequestKind::ConsumerGroupHeartbeat(r) => ResponseKind::ConsumerGroupHeartbeat(
            consumer_group_heartbeat::handle(broker, r, version, &client).await,
        ),
        RequestKind::ConsumerGroupDescribe(r) => {
            ResponseKind::ConsumerGroupDescribe(consumer_group_describe::handle(broker, r, version))
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(describe_producers::handle(broker, r, version))
        }
        RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
            add_partitions_to_txn::handle(broker, r, version).await,
        ),
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(add_offsets_to_txn::handle(broker, r, version).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(end_txn::handle(broker, r, version).await),
        RequestKind::WriteTxnMarkers(r) => {
            ResponseKind::WriteTxnMarkers(write_txn_markers::handle(broker, r, version).await)
        }
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn_offset_commit::handle(broker, r, version).await)
        }
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(describe_transactions::handle(broker, r, version))
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(list_transactions::handle(broker, r, version))
        }
        _ => return Reply::Close,
    };
    probe::request_done(api_name(api_key), version, started.elapsed());
    encode(api_key, version, correlation_id, &body)
}
