//! DescribeCluster (key 60): the cluster id, the controller and the brokers with their racks,
//! at their endpoints on the listener the request came in on.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use runnel_protocol::kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::metadata::AUTHORIZED_OPERATIONS_OMITTED;
use crate::Broker;

/// Kafka's `EndpointType` codes.
const ENDPOINT_BROKER: i8 = 1;
const ENDPOINT_CONTROLLER: i8 = 2;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    version: i16,
    listener: &str,
) -> DescribeClusterResponse {
    // Brokers answer for broker endpoints only; v0 has only INVALID_REQUEST to say so.
    if request.endpoint_type != ENDPOINT_BROKER {
        let (code, message) = match request.endpoint_type {
            _ if version == 0 => (
                ResponseError::InvalidRequest.code(),
                format!("Unsupported endpoint type {}", request.endpoint_type),
            ),
            ENDPOINT_CONTROLLER => (
                ResponseError::MismatchedEndpointType.code(),
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER".to_string(),
            ),
            other => (
                ResponseError::UnsupportedEndpointType.code(),
                format!("Unsupported endpoint type {other}"),
            ),
        };
        return DescribeClusterResponse::default()
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message)))
            .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    }
    let md = broker.replication.metadata();
    let brokers = md
        .brokers
        .values()
        .filter_map(|b| {
            // The endpoints of the listener the request came in on; brokers without it are
            // left out, as Kafka does.
            let (host, port) = b.endpoint(listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port)
                    .with_rack(b.rack.clone().map(StrBytes::from_string)),
            )
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
        .with_endpoint_type(ENDPOINT_BROKER)
}
