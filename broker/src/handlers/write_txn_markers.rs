//! WriteTxnMarkers (key 27): a transaction coordinator asks the leaders of a transaction's
//! partitions to append its commit or abort marker. Runnel's own coordinator writes markers
//! to local leaders directly; this API serves coordinators elsewhere and tools.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::ReplicationError;

use crate::error::replication_error_code;
use crate::txn::{begin_marker, finish_marker, max_coordinator_epoch, MarkerError};
use crate::Broker;

fn marker_error_code(e: &MarkerError) -> i16 {
    match e {
        MarkerError::Retry(e) | MarkerError::Fenced(e) => replication_error_code(e),
        MarkerError::Unknown => ResponseError::UnknownTopicOrPartition.code(),
    }
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: WriteTxnMarkersRequest,
    _version: i16,
) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    let newest_coordinator = max_coordinator_epoch(broker);
    for m in &request.markers {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in &m.topics {
            let name = t.name.0.to_string();
            let begun: Vec<_> = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let led = broker
                        .replication
                        .replica(&name, p)
                        .is_some_and(|r| r.leader_id() == broker.config.node_id);
                    let marker = if m.coordinator_epoch > newest_coordinator.max(0) {
                        // No coordinator this broker knows of has that epoch: refusing it
                        // keeps a stray request from fencing the real coordinator's markers.
                        // But a real coordinator newer than this broker's metadata (a
                        // `__transaction_state` partition just created or just failed over)
                        // sends it too, so the refusal is retriable: a final
                        // TRANSACTION_COORDINATOR_FENCED made it skip the partition, and a
                        // committed transaction lost its marker there.
                        None
                    } else if led {
                        Some(begin_marker(
                            broker,
                            &name,
                            p,
                            m.producer_id.0,
                            m.producer_epoch,
                            m.transaction_result,
                            m.coordinator_epoch,
                        ))
                    } else {
                        Some(Err(MarkerError::Retry(
                            ReplicationError::NotLeaderOrFollower,
                        )))
                    };
                    (p, marker)
                })
                .collect();
            let mut partitions = Vec::with_capacity(begun.len());
            for (p, marker) in begun {
                let tp = (name.clone(), p);
                let code = match marker {
                    None => ResponseError::RequestTimedOut.code(),
                    Some(marker) => match finish_marker(
                        broker,
                        &tp,
                        m.producer_id.0,
                        m.transaction_result,
                        marker,
                    )
                    .await
                    {
                        Ok(()) => 0,
                        Err(e) => marker_error_code(&e),
                    },
                };
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
