//! DescribeQuorum (key 55): the cluster metadata quorum (`kafka-metadata-quorum.sh describe
//! --status/--replication`): its leader and epoch, high watermark, and each voter's and
//! observer's (learner's) log end and last contact, as the metadata leader sees them. A
//! broker that does not lead the metadata group forwards the request to the one that does, as
//! Kafka's brokers forward it to the active controller. Offsets are Raft indexes of the
//! metadata log; timestamps are wall-clock ms.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::{QuorumReplica, METADATA_TOPIC};

use crate::Broker;

/// The client id inter-broker requests carry (see `inter_broker`): such a request is answered
/// here, never forwarded again.
fn forwarded(client_id: &str) -> bool {
    client_id.starts_with("broker-")
}

fn error(code: i16, message: &str, version: i16) -> DescribeQuorumResponse {
    DescribeQuorumResponse::default()
        .with_error_code(code)
        .with_error_message((version >= 2).then(|| StrBytes::from_string(message.to_string())))
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: DescribeQuorumRequest,
    version: i16,
    client_id: &str,
    listener: &str,
) -> DescribeQuorumResponse {
    // Kafka's KafkaRaftClient: anything but the one metadata partition is a top-level error.
    let valid = request.topics.len() == 1
        && request.topics[0].topic_name.0.as_str() == METADATA_TOPIC
        && request.topics[0].partitions.len() == 1
        && request.topics[0].partitions[0].partition_index == 0;
    if !valid {
        return error(
            ResponseError::UnknownTopicOrPartition.code(),
            "DescribeQuorum describes __cluster_metadata-0 only",
            version,
        );
    }
    let quorum = broker.replication.quorum();
    if !quorum.is_leader {
        if quorum.leader_id >= 0 && !forwarded(client_id) {
            match crate::inter_broker::describe_quorum(broker, quorum.leader_id, version, request)
                .await
            {
                Ok(r) => return r,
                Err(e) => {
                    tracing::debug!(error = e, "DescribeQuorum to the metadata leader failed")
                }
            }
        }
        let partition = PartitionData::default()
            .with_partition_index(0)
            .with_error_code(ResponseError::NotLeaderOrFollower.code())
            .with_leader_id(BrokerId(quorum.leader_id))
            .with_leader_epoch(quorum.leader_epoch);
        return DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![partition])]);
    }
    // The driver's clock is the system clock in a broker: its ms are wall-clock ms.
    let replica = |r: &QuorumReplica| {
        ReplicaState::default()
            .with_replica_id(BrokerId(r.node_id))
            .with_log_end_offset(r.log_end_offset)
            .with_last_fetch_timestamp(r.last_fetch_ms)
            .with_last_caught_up_timestamp(r.last_caught_up_ms)
    };
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(quorum.leader_id))
        .with_leader_epoch(quorum.leader_epoch)
        .with_high_watermark(quorum.high_watermark)
        .with_current_voters(quorum.voters.iter().map(replica).collect())
        .with_observers(quorum.observers.iter().map(replica).collect());
    let mut response = DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![partition])]);
    if version >= 2 {
        // The voters' endpoints, on the listener the request came in on.
        let md = broker.replication.metadata();
        let nodes = quorum
            .voters
            .iter()
            .filter_map(|v| {
                let b = md.brokers.get(&v.node_id)?;
                let (host, port) = b.endpoint(listener)?;
                Some(
                    Node::default()
                        .with_node_id(BrokerId(v.node_id))
                        .with_listeners(vec![Listener::default()
                            .with_name(StrBytes::from_string(listener.to_string()))
                            .with_host(StrBytes::from_string(host.to_string()))
                            .with_port(port as u16)]),
                )
            })
            .collect();
        response = response.with_nodes(nodes);
    }
    response
}
