//! DescribeCluster (key 60): the cluster id, the controller and the brokers with their racks.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;

use super::metadata::AUTHORIZED_OPERATIONS_OMITTED;
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let md = broker.replication.metadata();
    let brokers = md
        .brokers
        .values()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    if version >= 1 {
        response = response.with_endpoint_type(request.endpoint_type.max(1));
    }
    response
}
