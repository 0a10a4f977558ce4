//! The broker's metrics, in one place, named after Kafka's JMX exporter conventions (what
//! MSK's open monitoring exposes): `kafka_<domain>_<type>_<name>`.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

pub fn request_done(api: &'static str, version: i16, elapsed: Duration) {
    let version = version.to_string();
    counter!("kafka_network_requestmetrics_requests_total", "request" => api, "version" => version.clone()).increment(1);
    histogram!("kafka_network_requestmetrics_totaltimems", "request" => api, "version" => version)
        .record(elapsed.as_secs_f64() * 1000.0);
}

pub fn error(api: &'static str, code: i16) {
    if code != 0 {
        counter!("kafka_network_requestmetrics_errors_total", "request" => api, "error" => code.to_string()).increment(1);
    }
}

pub fn bytes_in(topic: &str, bytes: usize, messages: u64) {
    counter!("kafka_server_brokertopicmetrics_bytesin_total", "topic" => topic.to_string())
        .increment(bytes as u64);
    counter!("kafka_server_brokertopicmetrics_messagesin_total", "topic" => topic.to_string())
        .increment(messages);
}

pub fn bytes_out(topic: &str, bytes: usize) {
    counter!("kafka_server_brokertopicmetrics_bytesout_total", "topic" => topic.to_string())
        .increment(bytes as u64);
}

pub fn connection_opened() {
    gauge!("kafka_server_socketservermetrics_connection_count").increment(1.0);
}

pub fn connection_closed() {
    gauge!("kafka_server_socketservermetrics_connection_count").decrement(1.0);
}

pub fn log_size(topic: &str, partition: i32, bytes: u64) {
    gauge!("kafka_log_log_size", "topic" => topic.to_string(), "partition" => partition.to_string()).set(bytes as f64);
}

/// Fetch response bytes sent to a client in another AZ (its `client.rack`).
pub fn cross_az_fetch_bytes(client_az: &str, bytes: usize) {
    counter!("runnel_cross_az_bytes_sent_total", "peer_az" => client_az.to_string(), "traffic" => "fetch")
        .increment(bytes as u64);
}
