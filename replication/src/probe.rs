//! Replication's metrics in one place: per-partition log state (Kafka's `kafka.log:type=Log`
//! names) and per-group Raft state.

use metrics::gauge;

use crate::raft_log::Replica;

/// Publishes one replica's log and Raft state.
pub(crate) fn replica_state(replica: &Replica, raft_term: u64, is_leader: bool) {
    let topic = replica.topic.clone();
    let partition = replica.partition.to_string();
    let log = replica.log();
    let labels = [("topic", topic), ("partition", partition)];
    gauge!("kafka_log_log_size", &labels).set(log.size_in_bytes() as f64);
    gauge!("kafka_log_log_numlogsegments", &labels).set(log.segment_count() as f64);
    gauge!("kafka_log_log_logendoffset", &labels).set(log.log_end_offset() as f64);
    gauge!("kafka_log_log_logstartoffset", &labels).set(log.log_start_offset() as f64);
    gauge!("kafka_cluster_partition_highwatermark", &labels).set(replica.high_watermark() as f64);
    gauge!("runnel_raft_term", &labels).set(raft_term as f64);
    gauge!("runnel_raft_is_leader", &labels).set(if is_leader { 1.0 } else { 0.0 });
}

/// Broker-wide partition counts (`kafka.server:type=ReplicaManager`).
pub(crate) fn partition_counts(partitions: usize, leaders: usize) {
    gauge!("kafka_server_replicamanager_partitioncount").set(partitions as f64);
    gauge!("kafka_server_replicamanager_leadercount").set(leaders as f64);
}
