//! Three brokers' replication layers in one process, talking Raft over real TCP connections
//! on loopback: the metadata group elects a leader among three voters, followers' metadata
//! proposals are forwarded to it, a topic whose
//! partition has three replicas is created through it, acknowledged writes reach every
//! replica, a stopped follower does not stop writes, and it catches up when it restarts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_replication::proto::{self, metadata_record::Record};
use runnel_replication::tcp::{
    listen_with_zones, TcpListenerHandle, TcpOptions, TcpStats, TcpTransport, Zones,
};
use runnel_replication::{MetadataRecord, Replication, ReplicationConfig, ReplicationError};
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

const NODES: [i32; 3] = [1, 2, 3];

struct Node {
    replication: Arc<Replication>,
    _listener: TcpListenerHandle,
}

fn raft_id(node: i32) -> u64 {
    node as u64 + 1
}

/// Starts node `id` listening on `addrs[id]` (binding it) with peers `addrs`.
fn start(id: i32, dir: &Path, addrs: &HashMap<i32, SocketAddr>) -> Node {
    start_in_zones(id, dir, addrs, &HashMap::new(), Duration::ZERO).0
}

/// [`start`] with every node's AZ (`azs`) known to the transport, which delays frames to
/// other AZs by `az_latency`; also returns the node's traffic counters.
fn start_in_zones(
    id: i32,
    dir: &Path,
    addrs: &HashMap<i32, SocketAddr>,
    azs: &HashMap<i32, &str>,
    az_latency: Duration,
) -> (Node, Arc<TcpStats>) {
    let zones = Arc::new(Zones::new(azs.get(&id).map(|s| s.to_string())));
    for (&n, &az) in azs {
        zones.set_peer(raft_id(n), Some(az));
    }
    let slot: Arc<OnceLock<Arc<Replication>>> = Arc::new(OnceLock::new());
    let stats = Arc::new(TcpStats::default());
    let deliver = {
        let slot = slot.clone();
        move |from: u64, envelopes| {
            if let Some(r) = slot.get() {
                let _ = r.step_raft(from, envelopes);
            }
        }
    };
    // The port may still be held by the previous incarnation's accept loop for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match listen_with_zones(addrs[&id], stats.clone(), zones.clone(), deliver.clone()) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {}: {e}", addrs[&id]);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {}: {e}", addrs[&id]),
        }
    };
    let peers = addrs
        .iter()
        .map(|(n, a)| (raft_id(*n), a.to_string()))
        .collect();
    let options = TcpOptions { zones, az_latency };
    let transport = TcpTransport::with_options(raft_id(id), peers, stats.clone(), options);
    let mut config = ReplicationConfig::new(id, dir.to_path_buf());
    config.fsync = false;
    config.tick = Duration::from_millis(20);
    // Elections after 400-800 ms: several round trips even with injected AZ latency.
    config.election_tick = 20;
    config.metadata_voters = NODES.to_vec();
    let replication =
        Arc::new(Replication::start_with_transport(config, Box::new(transport)).expect("start"));
    let _ = slot.set(replication.clone());
    (
        Node {
            replication,
            _listener: listener,
        },
        stats,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Proposes `record` through whichever node leads the metadata group, retrying until one
/// accepts it.
fn propose(nodes: &HashMap<i32, Node>, record: MetadataRecord) {
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes.values() {
            match rt.block_on(n.replication.propose_metadata(record.clone())) {
                Ok(()) => return,
                Err(ReplicationError::NotLeaderOrFollower) => {}
                Err(e) => eprintln!("proposal failed: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "no metadata leader within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Free loopback addresses for `NODES`.
fn addresses() -> HashMap<i32, SocketAddr> {
    NODES
        .iter()
        .map(|&n| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            (n, l.local_addr().expect("addr"))
        })
        .collect()
}

/// Creates topic `t` with one partition replicated on every node.
fn create_topic(nodes: &HashMap<i32, Node>) {
    propose(
        nodes,
        MetadataRecord {
            record: Some(Record::CreateTopic(proto::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::new_v4().as_bytes().to_vec(),
                partitions: vec![proto::PartitionAssignment {
                    replicas: NODES.to_vec(),
                }],
                configs: Vec::new(),
            })),
        },
    );
    wait_for("every broker to open its replica", || {
        nodes
            .values()
            .all(|n| n.replication.replica("t", 0).is_some())
    });
}

fn record(i: usize) -> Bytes {
    build_batch(
        &[NewRecord {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Vec::new(),
        }],
        &BatchOptions::default(),
    )
    .expect("batch")
}

/// Produces `range` through the partition's leader with acks=all, retrying across leader
/// changes.
fn produce_all(nodes: &HashMap<i32, Node>, range: std::ops::Range<usize>) {
    produce_timed(nodes, range);
}

/// [`produce_all`], returning how long each acknowledged produce took (its last attempt).
fn produce_timed(nodes: &HashMap<i32, Node>, range: std::ops::Range<usize>) -> Vec<Duration> {
    let rt = runtime();
    let mut took = Vec::new();
    for i in range {
        let deadline = Instant::now() + Duration::from_secs(20);
        'retry: loop {
            for n in nodes.values() {
                let Some(replica) = n.replication.replica("t", 0) else {
                    continue;
                };
                if replica.leader_id() != n.replication.node_id() {
                    continue;
                }
                let started = Instant::now();
                match rt.block_on(n.replication.produce("t", 0, vec![record(i)], -1)) {
                    Ok(_) => {
                        took.push(started.elapsed());
                        break 'retry;
                    }
                    Err(e) => eprintln!("produce {i}: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "record {i} not acknowledged in 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    took
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_brokers_replicate_over_tcp_and_a_restarted_follower_catches_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: HashMap<i32, PathBuf> = NODES
        .iter()
        .map(|&n| (n, root.path().join(format!("node-{n}"))))
        .collect();
    let addrs: HashMap<i32, SocketAddr> = NODES
        .iter()
        .map(|&n| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            (n, l.local_addr().expect("addr"))
        })
        .collect();
    let mut nodes: HashMap<i32, Node> = NODES
        .iter()
        .map(|&n| (n, start(n, &dirs[&n], &addrs)))
        .collect();

    propose(
        &nodes,
        MetadataRecord {
            record: Some(Record::CreateTopic(proto::CreateTopic {
                name: "t".into(),
                topic_id: uuid::Uuid::new_v4().as_bytes().to_vec(),
                partitions: vec![proto::PartitionAssignment {
                    replicas: NODES.to_vec(),
                }],
                configs: Vec::new(),
            })),
        },
    );
    // Every broker registers itself through its own replication layer: followers' proposals
    // travel to the metadata leader and are answered once applied locally.
    let rt = runtime();
    for n in nodes.values() {
        let id = n.replication.node_id();
        let register = MetadataRecord {
            record: Some(Record::RegisterBroker(proto::RegisterBroker {
                node_id: id,
                host: "127.0.0.1".into(),
                port: 9000 + id,
                rack: Some(format!("az-{id}")),
                endpoints: Vec::new(),
                raft_address: String::new(),
            })),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rt.block_on(n.replication.propose_metadata(register.clone())) {
                Ok(()) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "node {id} cannot register: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        assert!(
            n.replication.metadata().brokers.contains_key(&id),
            "node {id}'s registration is applied when its proposal returns"
        );
    }
    wait_for("every broker to know all three", || {
        nodes
            .values()
            .all(|n| n.replication.metadata().brokers.len() == 3)
    });
    wait_for("every broker to open its replica", || {
        nodes
            .values()
            .all(|n| n.replication.replica("t", 0).is_some())
    });
    produce_all(&nodes, 0..200);
    let hw = |n: &Node| {
        n.replication
            .replica("t", 0)
            .map_or(0, |r| r.high_watermark())
    };
    wait_for("every replica to reach offset 200", || {
        nodes.values().all(|n| hw(n) == 200)
    });
    for n in nodes.values() {
        let replica = n.replication.replica("t", 0).expect("replica");
        assert_eq!(
            replica.log().log_end_offset(),
            200,
            "node {}",
            n.replication.node_id()
        );
    }

    // Stop a follower: the other two still commit.
    let leader = nodes[&1]
        .replication
        .replica("t", 0)
        .expect("replica")
        .leader_id();
    let follower = *NODES.iter().find(|&&n| n != leader).expect("a follower");
    let stopped = nodes.remove(&follower).expect("node");
    stopped.replication.shutdown();
    drop(stopped);
    produce_all(&nodes, 200..300);
    wait_for("the two live replicas to reach offset 300", || {
        nodes.values().all(|n| hw(n) == 300)
    });

    // Restart it from its data dir: it catches up from the leader.
    nodes.insert(follower, start(follower, &dirs[&follower], &addrs));
    wait_for("the restarted follower to catch up", || {
        hw(&nodes[&follower]) == 300
    });
    let values = |n: &Node| {
        let replica = n.replication.replica("t", 0).expect("replica");
        let log = replica.log();
        log.read(0, usize::MAX, 300).expect("read")
    };
    let reference = values(&nodes[&leader]);
    for n in nodes.values() {
        assert_eq!(
            values(n),
            reference,
            "node {} holds the same batches",
            n.replication.node_id()
        );
    }
}

/// Nodes 1 and 2 share an AZ, node 3 is in another: replication counts as cross-AZ exactly
/// what goes to or comes from node 3.
#[test]
fn replication_bytes_to_other_azs_are_counted_and_same_az_bytes_are_not() {
    let root = tempfile::tempdir().expect("tempdir");
    let addrs = addresses();
    let azs: HashMap<i32, &str> = [(1, "az-a"), (2, "az-a"), (3, "az-b")].into();
    let mut nodes = HashMap::new();
    let mut stats = HashMap::new();
    for &n in &NODES {
        let dir = root.path().join(format!("node-{n}"));
        let (node, s) = start_in_zones(n, &dir, &addrs, &azs, Duration::ZERO);
        nodes.insert(n, node);
        stats.insert(n, s);
    }
    create_topic(&nodes);
    produce_all(&nodes, 0..100);
    wait_for("every replica to reach offset 100", || {
        nodes.values().all(|n| {
            n.replication
                .replica("t", 0)
                .is_some_and(|r| r.high_watermark() == 100)
        })
    });
    // Raft heartbeats and the liveness batches flow both ways, so every pair has traffic.
    wait_for("traffic between every pair", || {
        stats
            .values()
            .all(|s| s.bytes_sent.load(Ordering::Relaxed) > 0)
            && stats[&3].cross_az_sent().keys().eq(["az-a"])
    });
    for n in [1, 2] {
        let sent = stats[&n].cross_az_sent();
        let received = stats[&n].cross_az_received();
        assert_eq!(
            sent.keys().collect::<Vec<_>>(),
            ["az-b"],
            "node {n} counts only what it sends to az-b: {sent:?}"
        );
        assert_eq!(
            received.keys().collect::<Vec<_>>(),
            ["az-b"],
            "node {n} counts only what it receives from az-b: {received:?}"
        );
        // What went to its same-AZ neighbour is not in the count.
        assert!(stats[&n].bytes_sent.load(Ordering::Relaxed) > sent["az-b"]);
    }
    let to_a = stats[&3].cross_az_sent();
    assert_eq!(to_a.keys().collect::<Vec<_>>(), ["az-a"]);
    // 100 records of at least 60 bytes each reached node 3 from az-a (leader in az-a), or
    // left it (leader node 3).
    let records_bytes = 100 * 60;
    let crossed = stats[&3].cross_az_received()["az-a"] + to_a["az-a"];
    assert!(
        crossed > records_bytes,
        "node 3 exchanged only {crossed} bytes with az-a"
    );
}

/// With 60 ms injected one way between AZs and every node in its own AZ, an acks=all produce
/// needs a majority, so at least one round trip to another AZ: never under 120 ms. (Without
/// the delay it takes a few ms on loopback; that is printed, not asserted.)
#[test]
fn injected_az_latency_delays_acks_all_produce() {
    let latency = Duration::from_millis(60);
    let azs: HashMap<i32, &str> = [(1, "az-1"), (2, "az-2"), (3, "az-3")].into();
    let mut medians = Vec::new();
    for delay in [Duration::ZERO, latency] {
        let root = tempfile::tempdir().expect("tempdir");
        let addrs = addresses();
        let nodes: HashMap<i32, Node> = NODES
            .iter()
            .map(|&n| {
                let dir = root.path().join(format!("node-{n}"));
                (n, start_in_zones(n, &dir, &addrs, &azs, delay).0)
            })
            .collect();
        create_topic(&nodes);
        produce_all(&nodes, 0..5);
        let mut took = produce_timed(&nodes, 5..25);
        took.sort();
        let median = took[took.len() / 2];
        eprintln!(
            "acks=all produce with {delay:?} one-way between AZs: min {:?}, median {median:?}",
            took[0]
        );
        if !delay.is_zero() {
            assert!(
                took[0] >= 2 * delay,
                "an acks=all produce took {:?}, less than one inter-AZ round trip ({:?})",
                took[0],
                2 * delay
            );
        }
        medians.push(median);
        for n in nodes.values() {
            n.replication.shutdown();
        }
    }
    eprintln!(
        "median acks=all produce: {:?} without, {:?} with the delay",
        medians[0], medians[1]
    );
}
