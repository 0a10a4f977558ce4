//! Three brokers' replication layers in one process, talking Raft over real TCP connections
//! on loopback: the metadata group elects a leader among three voters, followers' metadata
//! proposals are forwarded to it, a topic whose
//! partition has three replicas is created through it, acknowledged writes reach every
//! replica, a stopped follower does not stop writes, and it catches up when it restarts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_replication::proto::{self, metadata_record::Record};
use runnel_replication::tcp::{listen, TcpListenerHandle, TcpStats, TcpTransport};
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
        match listen(addrs[&id], stats.clone(), deliver.clone()) {
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
    let transport = TcpTransport::new(raft_id(id), peers, stats);
    let mut config = ReplicationConfig::new(id, dir.to_path_buf());
    config.fsync = false;
    config.tick = Duration::from_millis(20);
    config.metadata_voters = NODES.to_vec();
    let replication =
        Arc::new(Replication::start_with_transport(config, Box::new(transport)).expect("start"));
    let _ = slot.set(replication.clone());
    Node {
        replication,
        _listener: listener,
    }
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
    let rt = runtime();
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
                match rt.block_on(n.replication.produce("t", 0, vec![record(i)], -1)) {
                    Ok(_) => break 'retry,
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
