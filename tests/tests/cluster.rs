//! A three-broker cluster of real `runnel` processes on loopback, one per AZ, replicating
//! over Raft: librdkafka producers with acks=all and idempotence keep writing while the
//! leader of a partition is killed with SIGKILL and later restarted, and afterwards every
//! acknowledged message is read back exactly once, in order, per partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use runnel_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use runnel_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, FetchRequest, MetadataRequest, MetadataResponse, ProduceRequest, RequestKind,
    ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::{decode_response, encode_request};
use runnel_tests::{free_port, Broker};

const PARTITIONS: i32 = 3;

/// Starts brokers 1..=3 (AZs az-1..az-3) as one cluster.
fn cluster() -> Vec<Broker> {
    cluster_with(&[])
}

/// [`cluster`] with extra `runnel serve` arguments for every broker.
fn cluster_with(extra: &[&str]) -> Vec<Broker> {
    cluster_of(3, 3, extra)
}

/// Brokers 1..=`brokers`, broker i in AZ `az-((i - 1) % azs + 1)`; brokers 1..=3 are the
/// controller voters (the default), any others join the cluster as brokers that are not.
fn cluster_of(brokers: usize, azs: usize, extra: &[&str]) -> Vec<Broker> {
    let ports: Vec<(u16, u16)> = (0..brokers)
        .map(|_| (free_port().expect("port"), free_port().expect("port")))
        .collect();
    let voters = voters_spec(&ports);
    ports
        .iter()
        .enumerate()
        .map(|(i, (kafka, raft))| start_broker(i as i32 + 1, *kafka, *raft, azs, &voters, extra))
        .collect()
}

/// `--controller-quorum-voters` for brokers 1..=3 of `ports` (Kafka, Raft), the default
/// voters.
fn voters_spec(ports: &[(u16, u16)]) -> String {
    ports
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, (_, raft))| format!("{}@127.0.0.1:{raft}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Broker `node` in AZ `az-((node - 1) % azs + 1)` of the cluster whose voters are
/// `voters`; one that is not among them listens for Raft traffic on `raft`.
fn start_broker(
    node: i32,
    kafka: u16,
    raft: u16,
    azs: usize,
    voters: &str,
    extra: &[&str],
) -> Broker {
    let az = format!("az-{}", (node as usize - 1) % azs + 1);
    let raft_listen = format!("127.0.0.1:{raft}");
    let mut args = vec![
        "--no-fsync",
        "--az",
        &az,
        "--controller-quorum-voters",
        voters,
    ];
    if !voters
        .split(',')
        .any(|v| v.starts_with(&format!("{node}@")))
    {
        args.extend_from_slice(&["--raft-listen", &raft_listen]);
    }
    args.extend_from_slice(extra);
    Broker::start_node(node, kafka, &args).expect("broker")
}

/// Waits (40 s at most) until every one of the `count` partitions of `topic` is led by its
/// preferred replica with all three replicas in sync; returns how long that took.
fn await_preferred_leaders_and_full_isrs(
    bootstrap: &str,
    topic: &str,
    count: i32,
    what: &str,
) -> Duration {
    wait_for(Duration::from_secs(40), what, || {
        let now = partitions(bootstrap, topic);
        now.len() == count as usize
            && now
                .values()
                .all(|i| i.replicas.first() == Some(&i.leader) && i.isr.len() == 3)
    })
}

/// Waits until `count` brokers are registered (in the Metadata answer).
fn wait_registered(bootstrap: &str, count: usize) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    wait_for(
        Duration::from_secs(30),
        &format!("{count} brokers registered"),
        || {
            client
                .fetch_metadata(None, Duration::from_secs(5))
                .map_or(0, |md| md.brokers().len())
                >= count
        },
    );
}

fn bootstrap(brokers: &[Broker]) -> String {
    brokers
        .iter()
        .map(Broker::bootstrap)
        .collect::<Vec<_>>()
        .join(",")
}

/// Partition -> leader broker id, from a broker's metadata.
fn leaders(bootstrap: &str, topic: &str) -> BTreeMap<i32, i32> {
    partitions(bootstrap, topic)
        .into_iter()
        .map(|(p, info)| (p, info.leader))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionInfo {
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// Partition -> leader, replicas and ISR, from a broker's metadata (empty if none answers).
fn partitions(bootstrap: &str, topic: &str) -> BTreeMap<i32, PartitionInfo> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return BTreeMap::new();
    };
    md.topics()
        .iter()
        .flat_map(|t| {
            t.partitions().iter().map(|p| {
                let mut isr = p.isr().to_vec();
                isr.sort_unstable();
                (
                    p.id(),
                    PartitionInfo {
                        leader: p.leader(),
                        replicas: p.replicas().to_vec(),
                        isr,
                    },
                )
            })
        })
        .collect()
}

/// Polls `check` every 100 ms until it holds, failing with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Waits until all three brokers have registered, then creates `topic` and waits until each
/// of its partitions has a leader.
fn create_topic(bootstrap: &str, topic: &str, partitions: i32, replication: i32) {
    // Brokers register themselves through the metadata quorum once it has a leader.
    wait_registered(bootstrap, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for r in rt
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .expect("create")
    {
        r.expect("topic created");
    }
    wait_for(
        Duration::from_secs(20),
        "every partition has a leader",
        || {
            let led = leaders(bootstrap, topic);
            led.len() == partitions as usize && led.values().all(|&l| l >= 1)
        },
    );
}

/// An idempotent acks=all producer writing increasing numbers round-robin over the
/// partitions until stopped; it records what was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    acked: Arc<Mutex<Vec<(i32, String)>>>,
}

impl Load {
    fn start(bootstrap: &str, topic: &str, partitions: i32) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let producer: ThreadedProducer<Acks> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .set("retry.backoff.ms", "50")
            .create_with_context(Acks(acked.clone()))
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let value = format!("{i}");
                    let partition = (i % partitions as u64) as i32;
                    let record = BaseRecord::<(), _>::to(&topic)
                        .payload(&value)
                        .partition(partition);
                    if producer.send(record).is_ok() {
                        i += 1;
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                producer
                    .flush(Duration::from_secs(60))
                    .expect("every message delivered or failed");
                i
            })
        };
        Load {
            stop,
            sender,
            acked,
        }
    }

    /// Stops producing; returns (messages sent, acknowledged (partition, value)).
    fn finish(self) -> (u64, Vec<(i32, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.sender.join().expect("sender");
        let acked = self.acked.lock().expect("acks").clone();
        (sent, acked)
    }
}

/// Reads every partition from the start and checks that each acknowledged message is there
/// exactly once, in order. Returns how many messages were read.
fn verify_exactly_once(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    acked: &[(i32, String)],
) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "verifier")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.values().map(Vec::len).sum::<usize>() < acked.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: u64 = String::from_utf8_lossy(m.payload().unwrap_or_default())
                .parse()
                .expect("value");
            read.entry(m.partition()).or_default().push(v);
        }
    }
    for p in 0..partitions {
        let got = read.get(&p).cloned().unwrap_or_default();
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), got.len(), "partition {p}: no duplicates");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: in order"
        );
        let mut want: Vec<u64> = acked
            .iter()
            .filter(|(ap, _)| *ap == p)
            .map(|(_, v)| v.parse().expect("value"))
            .collect();
        want.sort_unstable();
        let missing: Vec<&u64> = want
            .iter()
            .filter(|v| got.binary_search(v).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "partition {p}: {} acknowledged messages missing, first {:?}",
            missing.len(),
            missing.first()
        );
    }
    read.values().map(Vec::len).sum()
}

struct Acks(Arc<Mutex<Vec<(i32, String)>>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            if let Ok(mut v) = self.0.lock() {
                v.push((m.partition(), value));
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_of_a_partition_leader_in_a_three_az_cluster() {
    let mut brokers = cluster();
    let bootstrap = bootstrap(&brokers);
    create_topic(&bootstrap, "replicated", PARTITIONS, 3);
    let led = leaders(&bootstrap, "replicated");
    let load = Load::start(&bootstrap, "replicated", PARTITIONS);
    std::thread::sleep(Duration::from_secs(2));
    // Kill the leader of partition 0, keep producing, bring it back.
    let victim = led[&0];
    eprintln!("killing broker {victim}, leader of partition 0 (leaders {led:?})");
    brokers[(victim - 1) as usize].kill_9();
    let other = brokers[(victim % 3) as usize].bootstrap();
    let took = wait_for(
        Duration::from_secs(20),
        "a new leader for partition 0",
        || {
            leaders(&other, "replicated")
                .get(&0)
                .is_some_and(|&l| l >= 1 && l != victim)
        },
    );
    eprintln!(
        "partition 0 has a new leader {} ms after the kill",
        took.as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    brokers[(victim - 1) as usize].restart().expect("restart");
    std::thread::sleep(Duration::from_secs(3));
    let (sent, acked) = load.finish();
    assert!(
        acked.len() > 1000,
        "only {} of {sent} acknowledged",
        acked.len()
    );
    let read = verify_exactly_once(&bootstrap, "replicated", PARTITIONS, &acked);
    eprintln!("sent {sent}, acknowledged {}, read {read}", acked.len());
}

/// Kafka's failure cycle for every partition in turn: its leader is killed, a follower takes
/// over, the ISR shrinks (`replica.lag.time.max.ms`), the broker returns and rejoins the ISR;
/// afterwards `auto.leader.rebalance.enable` hands every partition back to its preferred
/// leader, and no acknowledged write was lost or duplicated.
#[test]
fn leaders_killed_in_turn_rejoin_the_isr_and_preferred_leaders_take_back_their_partitions() {
    let mut brokers = cluster_with(&[
        "--leader-imbalance-check-interval-seconds",
        "2",
        "--replica-lag-time-max-ms",
        "2000",
    ]);
    let bootstrap = bootstrap(&brokers);
    create_topic(&bootstrap, "turns", PARTITIONS, 3);
    let initial = partitions(&bootstrap, "turns");
    for (p, info) in &initial {
        assert_eq!(info.replicas.len(), 3, "partition {p}: three replicas");
        assert_eq!(info.isr, [1, 2, 3], "partition {p}: all replicas in sync");
    }
    let load = Load::start(&bootstrap, "turns", PARTITIONS);
    std::thread::sleep(Duration::from_secs(1));
    for p in 0..PARTITIONS {
        let victim = partitions(&bootstrap, "turns")[&p].leader;
        let live = brokers[(victim % 3) as usize].bootstrap();
        eprintln!("partition {p}: killing its leader, broker {victim}");
        brokers[(victim - 1) as usize].kill_9();
        let took = wait_for(Duration::from_secs(15), "a new leader", || {
            partitions(&live, "turns")
                .get(&p)
                .is_some_and(|i| i.leader >= 1 && i.leader != victim)
        });
        eprintln!("partition {p}: new leader after {} ms", took.as_millis());
        wait_for(
            Duration::from_secs(15),
            "the dead broker leaves the ISR",
            || {
                partitions(&live, "turns")
                    .get(&p)
                    .is_some_and(|i| !i.isr.contains(&victim) && i.isr.len() == 2)
            },
        );
        brokers[(victim - 1) as usize].restart().expect("restart");
        let took = wait_for(
            Duration::from_secs(20),
            "the broker rejoins the ISR",
            || {
                partitions(&live, "turns")
                    .get(&p)
                    .is_some_and(|i| i.isr == [1, 2, 3])
            },
        );
        eprintln!(
            "partition {p}: broker {victim} back in the ISR after {} ms",
            took.as_millis()
        );
    }
    let took = wait_for(
        Duration::from_secs(30),
        "every partition led by its preferred replica",
        || {
            let now = partitions(&bootstrap, "turns");
            now.len() == PARTITIONS as usize
                && now.values().all(|i| i.replicas.first() == Some(&i.leader))
        },
    );
    eprintln!(
        "preferred leaders restored {} ms after the last restart",
        took.as_millis()
    );
    let (sent, acked) = load.finish();
    assert!(
        acked.len() > 1000,
        "only {} of {sent} acknowledged",
        acked.len()
    );
    let read = verify_exactly_once(&bootstrap, "turns", PARTITIONS, &acked);
    eprintln!("sent {sent}, acknowledged {}, read {read}", acked.len());
}

/// Writes `0..count` as values to partition 0 of `topic` with acks=all and waits for them.
fn produce_numbers(bootstrap: &str, topic: &str, count: u32) {
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create_with_context(Acks(Arc::new(Mutex::new(Vec::new()))))
        .expect("producer");
    for i in 0..count {
        let value = format!("{i}");
        producer
            .send(BaseRecord::<(), _>::to(topic).payload(&value).partition(0))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The values a consumer made from `config` (bootstrap, group and the like set) reads from
/// the start of `partitions`, in arrival order: until `want` arrived (20 s at most), then
/// `settle` longer, to catch anything that should not be there.
fn read_from_start(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    want: usize,
    settle: Duration,
) -> Vec<String> {
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if until.is_none() && (got.len() >= want || now >= deadline) {
            until = Some(now + settle);
        }
        if until.is_some_and(|u| now >= u) {
            return got;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
}

/// A raw Kafka connection to one broker (blocking), for fields librdkafka hides.
struct Raw {
    stream: std::net::TcpStream,
    buf: bytes::BytesMut,
    next_id: i32,
}

impl Raw {
    fn connect(bootstrap: &str) -> Raw {
        let stream = std::net::TcpStream::connect(bootstrap).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            stream,
            buf: bytes::BytesMut::new(),
            next_id: 0,
        }
    }

    fn call(&mut self, key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        use std::io::{Read, Write};
        self.next_id += 1;
        let frame =
            encode_request(key, version, self.next_id, "cluster-test", &body).expect("encode");
        self.stream.write_all(&frame).expect("write");
        loop {
            if let Some(frame) = next_frame(&mut self.buf, 1 << 26).expect("frame") {
                let (cid, body) = decode_response(key, version, frame).expect("decode");
                assert_eq!(cid, self.next_id, "correlation id");
                return body;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// DescribeQuorum v2 for `__cluster_metadata-0`.
    fn describe_quorum(
        &mut self,
    ) -> runnel_protocol::kafka_protocol::messages::DescribeQuorumResponse {
        use runnel_protocol::kafka_protocol::messages::describe_quorum_request::{
            PartitionData, TopicData,
        };
        let request = runnel_protocol::kafka_protocol::messages::DescribeQuorumRequest::default()
            .with_topics(vec![TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                .with_partitions(vec![
                    PartitionData::default().with_partition_index(0)
                ])]);
        match self.call(
            ApiKey::DescribeQuorum,
            2,
            RequestKind::DescribeQuorum(request),
        ) {
            ResponseKind::DescribeQuorum(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn metadata(&mut self, topic: &str) -> MetadataResponse {
        let request =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        match self.call(ApiKey::Metadata, 12, RequestKind::Metadata(request)) {
            ResponseKind::Metadata(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// With replication factor 1 on three brokers, each broker hosts one partition, yet every
/// broker answers Metadata with the same leaders (reported by the leaders through the
/// metadata log), tells a client that produces or fetches at the wrong broker where the
/// leader is (KIP-951 `current_leader` and `node_endpoints`), and reports the replicas of a
/// dead broker offline once the metadata leader fences it (`broker.session.timeout.ms`).
#[test]
fn every_broker_knows_the_leaders_of_partitions_it_does_not_host() {
    let mut brokers = cluster_with(&["--broker-session-timeout-ms", "2000"]);
    let all = bootstrap(&brokers);
    create_topic(&all, "spread", 3, 1);
    let mut views = Vec::new();
    for b in &brokers {
        let mut raw = Raw::connect(&b.bootstrap());
        wait_for(Duration::from_secs(10), "leaders known everywhere", || {
            raw.metadata("spread").topics[0]
                .partitions
                .iter()
                .all(|p| p.leader_id.0 >= 1)
        });
        let md = raw.metadata("spread");
        let t = &md.topics[0];
        assert_eq!(t.error_code, 0);
        let mut view: Vec<(i32, i32, Vec<i32>, Vec<i32>)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    p.leader_id.0,
                    p.replica_nodes.iter().map(|r| r.0).collect(),
                    p.isr_nodes.iter().map(|r| r.0).collect(),
                )
            })
            .collect();
        view.sort();
        for (p, leader, replicas, isr) in &view {
            assert_eq!(
                replicas,
                &[*leader],
                "partition {p}: one replica, the leader"
            );
            assert_eq!(isr, &[*leader], "partition {p}: the leader is the ISR");
        }
        views.push((view, t.topic_id));
    }
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "every broker reports the same leaders: {views:?}"
    );
    let (view, topic_id) = views[0].clone();
    let leaders: BTreeMap<i32, i32> = view.iter().map(|(p, l, _, _)| (*p, *l)).collect();
    let mut hosts: Vec<i32> = leaders.values().copied().collect();
    hosts.sort_unstable();
    assert_eq!(
        hosts,
        [1, 2, 3],
        "placement spreads the partitions over the brokers"
    );

    // Produce v10 and Fetch v16 at a broker that does not host partition 0.
    let leader = leaders[&0];
    let wrong = if leader == 1 { 2 } else { 1 };
    let mut raw = Raw::connect(&brokers[(wrong - 1) as usize].bootstrap());
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("spread")))
            .with_partition_data(
                vec![PartitionProduceData::default().with_index(0)],
            )]);
    let ResponseKind::Produce(r) = raw.call(ApiKey::Produce, 10, RequestKind::Produce(produce))
    else {
        panic!("not a produce response");
    };
    let part = &r.responses[0].partition_responses[0];
    assert_eq!(part.error_code, 6, "NOT_LEADER_OR_FOLLOWER");
    assert_eq!(
        part.current_leader.leader_id.0, leader,
        "KIP-951 current leader"
    );
    let endpoint = r
        .node_endpoints
        .iter()
        .find(|e| e.node_id.0 == leader)
        .expect("the leader's endpoint");
    assert_eq!(
        endpoint.port,
        i32::from(brokers[(leader - 1) as usize].port()),
        "the leader's port"
    );
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_current_leader_epoch(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(r) = raw.call(ApiKey::Fetch, 16, RequestKind::Fetch(fetch)) else {
        panic!("not a fetch response");
    };
    let part = &r.responses[0].partitions[0];
    assert_eq!(part.error_code, 6, "NOT_LEADER_OR_FOLLOWER");
    assert_eq!(
        part.current_leader.leader_id.0, leader,
        "KIP-951 current leader"
    );
    assert!(
        r.node_endpoints.iter().any(|e| e.node_id.0 == leader),
        "the leader's endpoint in the fetch response"
    );

    // A dead broker's replicas are offline once it is fenced.
    let victim = if leader == 3 { 2 } else { 3 };
    let victim_partition = *leaders
        .iter()
        .find(|(_, l)| **l == victim)
        .expect("hosted")
        .0;
    brokers[(victim - 1) as usize].kill_9();
    let took = wait_for(
        Duration::from_secs(20),
        "the dead broker's replica offline",
        || {
            let md = raw.metadata("spread");
            md.topics[0]
                .partitions
                .iter()
                .find(|p| p.partition_index == victim_partition)
                .is_some_and(|p| p.offline_replicas.iter().any(|r| r.0 == victim))
        },
    );
    eprintln!(
        "broker {victim} reported offline {} ms after kill -9",
        took.as_millis()
    );
    let md = raw.metadata("spread");
    let orphan = md.topics[0]
        .partitions
        .iter()
        .find(|p| p.partition_index == victim_partition)
        .expect("partition");
    assert_eq!(
        (orphan.leader_id.0, orphan.error_code),
        (-1, 5),
        "a partition whose only replica is fenced has no leader: LEADER_NOT_AVAILABLE"
    );
    brokers[(victim - 1) as usize].restart().expect("restart");
    wait_for(Duration::from_secs(20), "the broker back online", || {
        let md = raw.metadata("spread");
        md.topics[0]
            .partitions
            .iter()
            .all(|p| p.offline_replicas.is_empty() && p.leader_id.0 >= 1)
    });
}

/// `min.insync.replicas`: once a dead follower has left the ISR, acks=all writes to a topic
/// that needs three in-sync replicas are refused with NOT_ENOUGH_REPLICAS, while acks=1 ones
/// still succeed; when the follower is back in the ISR, acks=all works again.
#[test]
fn acks_all_is_refused_with_not_enough_replicas_below_min_insync_replicas() {
    let mut brokers = cluster_with(&["--replica-lag-time-max-ms", "1000"]);
    let all = bootstrap(&brokers);
    create_topic(&all, "strict", 1, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("strict"))
            .set("min.insync.replicas", "3");
    for r in rt
        .block_on(admin.alter_configs([&config], &AdminOptions::new()))
        .expect("alter")
    {
        r.expect("min.insync.replicas set");
    }
    let leader = leaders(&all, "strict")[&0];
    let victim = leader % 3 + 1;
    brokers[(victim - 1) as usize].kill_9();
    let live = brokers[(leader - 1) as usize].bootstrap();
    wait_for(Duration::from_secs(15), "the ISR shrinks to two", || {
        partitions(&live, "strict")
            .get(&0)
            .is_some_and(|i| i.isr.len() == 2)
    });
    let produce = |acks: i16| {
        let mut raw = Raw::connect(&live);
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("strict")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(one_record_batch()))])]);
        let ResponseKind::Produce(r) = raw.call(ApiKey::Produce, 9, RequestKind::Produce(request))
        else {
            panic!("not a produce response");
        };
        r.responses[0].partition_responses[0].error_code
    };
    assert_eq!(produce(-1), 19, "acks=all: NOT_ENOUGH_REPLICAS");
    assert_eq!(produce(1), 0, "acks=1 needs only the leader");
    brokers[(victim - 1) as usize].restart().expect("restart");
    wait_for(Duration::from_secs(20), "the ISR is whole again", || {
        partitions(&live, "strict")
            .get(&0)
            .is_some_and(|i| i.isr.len() == 3)
    });
    assert_eq!(produce(-1), 0, "acks=all with three in-sync replicas");
}

/// One record batch (magic 2) holding one record, encoded by kafka-protocol's own encoder.
fn one_record_batch() -> bytes::Bytes {
    use runnel_protocol::kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        key: None,
        value: Some(bytes::Bytes::from_static(b"x")),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.freeze()
}

/// Transactions in a cluster: the partitions of one transaction are led by different
/// brokers, so the coordinator writes most markers through WriteTxnMarkers to their leaders.
/// read_committed consumers see exactly the committed transactions, read_uncommitted ones
/// see everything.
#[test]
fn a_transaction_spanning_partitions_led_by_three_brokers_commits_and_aborts_atomically() {
    use rdkafka::producer::BaseProducer;
    let brokers = cluster();
    let all = bootstrap(&brokers);
    create_topic(&all, "txn-spread", 3, 3);
    let led = leaders(&all, "txn-spread");
    let mut distinct: Vec<i32> = led.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 1, "leaders spread over brokers: {led:?}");
    let t = Duration::from_secs(30);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .set("transactional.id", "spread-1")
        .create()
        .expect("producer");
    producer.init_transactions(t).expect("init_transactions");
    let mut committed = Vec::new();
    for round in 0..6 {
        producer.begin_transaction().expect("begin");
        for p in 0..3 {
            let value = format!("{round}-{p}");
            producer
                .send(
                    BaseRecord::<(), _>::to("txn-spread")
                        .payload(&value)
                        .partition(p),
                )
                .map_err(|(e, _)| e)
                .expect("send");
            if round % 2 == 0 {
                committed.push(value);
            }
        }
        // BaseProducer: delivery reports are served by polling, which flush does.
        producer.flush(t).expect("flush");
        if round % 2 == 0 {
            producer.commit_transaction(t).expect("commit");
        } else {
            producer.abort_transaction(t).expect("abort");
        }
    }
    let read = |isolation: &str, want: usize| {
        let mut got = read_from_start(
            ClientConfig::new()
                .set("bootstrap.servers", &all)
                .set("group.id", format!("reader-{isolation}"))
                .set("isolation.level", isolation)
                .set("enable.auto.commit", "false"),
            "txn-spread",
            &[0, 1, 2],
            want,
            Duration::from_millis(500),
        );
        got.sort();
        got
    };
    committed.sort();
    assert_eq!(read("read_committed", committed.len()), committed);
    assert_eq!(
        read("read_uncommitted", 18).len(),
        18,
        "every record, aborted ones too"
    );
}

/// KIP-392: the leader sends a consumer whose `client.rack` is another AZ to the in-sync
/// follower there (`preferred_read_replica`, no records), the follower serves the consumer's
/// fetches up to its high watermark, and librdkafka with `client.rack` reads everything.
#[test]
fn consumers_fetch_from_the_in_sync_replica_in_their_own_az() {
    let brokers = cluster();
    let all = bootstrap(&brokers);
    create_topic(&all, "racks", 1, 3);
    produce_numbers(&all, "racks", 100);
    let leader = leaders(&all, "racks")[&0];
    let follower = leader % 3 + 1;
    let follower_az = format!("az-{follower}");
    let mut raw = Raw::connect(&brokers[(leader - 1) as usize].bootstrap());
    let topic_id = raw.metadata("racks").topics[0].topic_id;
    // Wait for the follower to be reported in sync.
    wait_for(Duration::from_secs(10), "the follower in the ISR", || {
        partitions(&all, "racks")
            .get(&0)
            .is_some_and(|i| i.isr.contains(&follower))
    });
    let fetch = |raw: &mut Raw, rack: &str| {
        let request = FetchRequest::default()
            .with_replica_id(runnel_protocol::kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_rack_id(StrBytes::from_string(rack.to_string()))
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_current_leader_epoch(-1)
                    .with_partition_max_bytes(1 << 20)])]);
        let ResponseKind::Fetch(r) = raw.call(ApiKey::Fetch, 13, RequestKind::Fetch(request))
        else {
            panic!("not a fetch response");
        };
        r.responses[0].partitions[0].clone()
    };
    let at_leader = fetch(&mut raw, &follower_az);
    assert_eq!(at_leader.error_code, 0);
    assert_eq!(
        at_leader.preferred_read_replica.0, follower,
        "the leader names the replica in the consumer's AZ"
    );
    assert!(
        at_leader.records.as_ref().is_none_or(|r| r.is_empty()),
        "no records with a redirect"
    );
    let own_az = fetch(&mut raw, &format!("az-{leader}"));
    assert_eq!(
        own_az.preferred_read_replica.0, -1,
        "the leader serves its own AZ"
    );
    assert!(own_az.records.as_ref().is_some_and(|r| !r.is_empty()));
    let mut at_follower = Raw::connect(&brokers[(follower - 1) as usize].bootstrap());
    let served = fetch(&mut at_follower, &follower_az);
    assert_eq!(served.error_code, 0, "the follower serves consumers");
    assert_eq!(served.high_watermark, 100);
    assert!(served.records.as_ref().is_some_and(|r| !r.is_empty()));

    let got = read_from_start(
        ClientConfig::new()
            .set("bootstrap.servers", &all)
            .set("group.id", "rack-reader")
            .set("client.rack", &follower_az)
            .set("enable.auto.commit", "false"),
        "racks",
        &[0],
        100,
        Duration::ZERO,
    );
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every record once, in order");
}

/// DeleteRecords goes through the partition's Raft group: after the leader is killed, the
/// new leader (a former follower) reports the same low watermark and serves nothing below it.
#[test]
fn delete_records_moves_the_log_start_on_every_replica() {
    let mut brokers = cluster();
    let all = bootstrap(&brokers);
    create_topic(&all, "trimmed", 1, 3);
    produce_numbers(&all, "trimmed", 100);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trimmed", 0, Offset::Offset(60))
        .expect("partition");
    let result = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .expect("delete records");
    let low = result.elements()[0].offset();
    assert_eq!(low, Offset::Offset(60), "the new low watermark: {result:?}");
    // Give the followers a moment to apply the committed change, then fail over.
    std::thread::sleep(Duration::from_millis(500));
    let leader = leaders(&all, "trimmed")[&0];
    brokers[(leader - 1) as usize].kill_9();
    let live = brokers[(leader % 3) as usize].bootstrap();
    wait_for(Duration::from_secs(15), "a new leader", || {
        leaders(&live, "trimmed")
            .get(&0)
            .is_some_and(|&l| l >= 1 && l != leader)
    });
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &live)
        .create()
        .expect("consumer");
    let mut watermarks = (-1, -1);
    wait_for(
        Duration::from_secs(15),
        "watermarks from the new leader",
        || {
            watermarks = consumer
                .fetch_watermarks("trimmed", 0, Duration::from_secs(5))
                .unwrap_or((-1, -1));
            watermarks.1 == 100
        },
    );
    assert_eq!(
        watermarks,
        (60, 100),
        "the new leader's log starts at 60 too"
    );
}

/// A whole AZ fails: six brokers in three AZs, every partition with one replica per AZ; both
/// brokers of az-1 are killed at once under load. Every partition keeps a majority, so
/// writes go on; the AZ returns, its brokers rejoin, preferred leaders take their
/// partitions back, and every acknowledged write is there exactly once, in order.
#[test]
fn losing_a_whole_az_loses_no_acknowledged_write() {
    let mut brokers = cluster_of(6, 3, &["--leader-imbalance-check-interval-seconds", "2"]);
    let all = bootstrap(&brokers);
    let count = 6;
    wait_registered(&all, 6);
    create_topic(&all, "azs", count, 3);
    let az_of = |broker: i32| (broker - 1) % 3 + 1;
    for (p, info) in partitions(&all, "azs") {
        let mut zones: Vec<i32> = info.replicas.iter().map(|&r| az_of(r)).collect();
        zones.sort_unstable();
        assert_eq!(
            zones,
            [1, 2, 3],
            "partition {p}: one replica per AZ ({:?})",
            info.replicas
        );
    }
    let load = Load::start(&all, "azs", count);
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("killing az-1: brokers 1 (a controller voter) and 4 (a broker that joined)");
    brokers[0].kill_9();
    brokers[3].kill_9();
    let live = brokers[1].bootstrap();
    let took = wait_for(
        Duration::from_secs(20),
        "every partition led outside az-1",
        || {
            let now = partitions(&live, "azs");
            now.len() == count as usize
                && now.values().all(|i| i.leader >= 1 && az_of(i.leader) != 1)
        },
    );
    eprintln!(
        "az-1 down: all partitions led elsewhere after {} ms",
        took.as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    brokers[0].restart().expect("restart broker 1");
    brokers[3].restart().expect("restart broker 4");
    let took = await_preferred_leaders_and_full_isrs(
        &all,
        "azs",
        count,
        "every partition back with its preferred leader and a full ISR",
    );
    eprintln!(
        "az-1 back: preferred leaders and full ISRs after {} ms",
        took.as_millis()
    );
    let (sent, acked) = load.finish();
    assert!(
        acked.len() > 1000,
        "only {} of {sent} acknowledged",
        acked.len()
    );
    let read = verify_exactly_once(&all, "azs", count, &acked);
    eprintln!("sent {sent}, acknowledged {}, read {read}", acked.len());
}

/// `runnel produce` started the moment a partition's leader is killed: its first request
/// finds the dead leader (or a follower), and it retries against the new leader instead of
/// failing, so every line is written once.
#[test]
fn the_cli_producer_rides_out_a_leader_election() {
    let mut brokers = cluster();
    let all = bootstrap(&brokers);
    create_topic(&all, "cli-failover", 1, 3);
    let leader = leaders(&all, "cli-failover")[&0];
    let live = brokers[(leader % 3) as usize].bootstrap();
    brokers[(leader - 1) as usize].kill_9();
    let lines: String = (0..50).map(|i| format!("line-{i}\n")).collect();
    let mut child = std::process::Command::new(runnel_tests::runnel_bin().expect("runnel binary"))
        .args([
            "produce",
            "cli-failover",
            "--acks",
            "all",
            "--bootstrap-server",
            &live,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn runnel produce");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("write lines");
    }
    let out = child.wait_with_output().expect("runnel produce");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runnel produce failed: {stderr}");
    assert!(stderr.contains("produced 50"), "{stderr}");
    let got = read_from_start(
        ClientConfig::new()
            .set("bootstrap.servers", &live)
            .set("group.id", "cli-reader"),
        "cli-failover",
        &[0],
        50,
        Duration::ZERO,
    );
    let want: Vec<String> = (0..50).map(|i| format!("line-{i}")).collect();
    assert_eq!(got, want, "every line once, in order");
}

/// A broker that is not a controller voter joins a running cluster: it registers through
/// the voters, its Metadata answers are current, new topics place replicas (and preferred
/// leaders) on it, and after kill -9 and a restart it catches up and takes its partitions
/// back, with no acknowledged write lost.
#[test]
fn a_broker_that_joins_later_hosts_new_replicas_and_survives_kill_9() {
    let ports: Vec<(u16, u16)> = (0..4)
        .map(|_| (free_port().expect("port"), free_port().expect("port")))
        .collect();
    let voters = voters_spec(&ports);
    let extra = ["--leader-imbalance-check-interval-seconds", "2"];
    let mut brokers: Vec<Broker> = ports[..3]
        .iter()
        .enumerate()
        .map(|(i, (kafka, raft))| start_broker(i as i32 + 1, *kafka, *raft, 3, &voters, &extra))
        .collect();
    let voters_only = bootstrap(&brokers);
    create_topic(&voters_only, "before", 3, 3);
    produce_numbers(&voters_only, "before", 300);

    let (kafka, raft) = ports[3];
    brokers.push(start_broker(4, kafka, raft, 3, &voters, &extra));
    let joiner = brokers[3].bootstrap();
    wait_registered(&voters_only, 4);
    // The joiner's own metadata is the cluster's: it learned the log from the voters.
    wait_for(
        Duration::from_secs(20),
        "the joined broker answers Metadata with the topic created before it joined",
        || {
            let seen = partitions(&joiner, "before");
            seen.len() == 3 && seen == partitions(&voters_only, "before")
        },
    );
    // DescribeQuorum (kafka-metadata-quorum.sh) asked of the joined broker is forwarded to the
    // metadata leader: brokers 1-3 vote, broker 4 observes, and it holds the whole log.
    let mut raw = Raw::connect(&joiner);
    wait_for(
        Duration::from_secs(20),
        "DescribeQuorum shows broker 4 as a caught-up observer",
        || {
            let q = raw.describe_quorum();
            let Some(p) = q.topics.first().and_then(|t| t.partitions.first()) else {
                return false;
            };
            let voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
            let observers: Vec<i32> = p.observers.iter().map(|v| v.replica_id.0).collect();
            q.error_code == 0
                && p.error_code == 0
                && (1..=3).contains(&p.leader_id.0)
                && voters == [1, 2, 3]
                && observers == [4]
                && p.high_watermark > 0
                && p.observers[0].log_end_offset >= p.high_watermark
                && p.observers[0].last_caught_up_timestamp > 0
                && q.nodes.len() == 3
        },
    );
    let mut reader = ClientConfig::new();
    reader
        .set("bootstrap.servers", &joiner)
        .set("group.id", "joined-reader")
        .set("enable.auto.commit", "false");
    assert_eq!(
        read_from_start(&reader, "before", &[0], 300, Duration::ZERO).len(),
        300,
        "a consumer bootstrapped from the joined broker reads the older topic"
    );

    let all = bootstrap(&brokers);
    let count = 8;
    create_topic(&all, "after", count, 3);
    let placed = partitions(&all, "after");
    let hosted: Vec<i32> = placed
        .iter()
        .filter(|(_, i)| i.replicas.contains(&4))
        .map(|(p, _)| *p)
        .collect();
    let preferred = placed
        .values()
        .filter(|i| i.replicas.first() == Some(&4))
        .count();
    assert!(
        hosted.len() >= count as usize / 2,
        "new replicas go to the joined broker too: it hosts {hosted:?} of {placed:?}"
    );
    assert!(
        preferred >= 1,
        "the joined broker is the preferred leader of some new partitions: {placed:?}"
    );

    let load = Load::start(&all, "after", count);
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("killing the joined broker 4");
    brokers[3].kill_9();
    wait_for(
        Duration::from_secs(20),
        "every partition of the joined broker led elsewhere",
        || {
            let now = partitions(&voters_only, "after");
            now.len() == count as usize && now.values().all(|i| i.leader >= 1 && i.leader != 4)
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    brokers[3].restart().expect("restart broker 4");
    let took = await_preferred_leaders_and_full_isrs(
        &all,
        "after",
        count,
        "the joined broker back in every ISR and leading its preferred partitions",
    );
    eprintln!(
        "broker 4 back: preferred leaders and full ISRs after {} ms",
        took.as_millis()
    );
    let (sent, acked) = load.finish();
    assert!(
        acked.len() > 500,
        "only {} of {sent} acknowledged",
        acked.len()
    );
    let read = verify_exactly_once(&joiner, "after", count, &acked);
    eprintln!("sent {sent}, acknowledged {}, read {read}", acked.len());
}

/// As in KRaft, whose topic records carry their leaders: when CreateTopics (and
/// CreatePartitions) answer, every broker's Metadata already names a leader for each new
/// partition, so a producer that starts at once does not get LEADER_NOT_AVAILABLE and back
/// off.
#[test]
fn every_new_partition_has_a_leader_when_create_topics_answers() {
    let brokers = cluster();
    let all = bootstrap(&brokers);
    wait_registered(&all, 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers[1].bootstrap())
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for round in 0..3 {
        let topic = format!("fresh-{round}");
        let new = NewTopic::new(&topic, 12, TopicReplication::Fixed(3));
        for r in rt
            .block_on(admin.create_topics([&new], &options))
            .expect("create")
        {
            r.expect("topic created");
        }
        for b in &brokers {
            let led = partitions(&b.bootstrap(), &topic);
            assert_eq!(led.len(), 12, "{topic} on broker {}", b.bootstrap());
            assert!(
                led.values().all(|i| i.leader >= 1),
                "{topic}: every partition led when CreateTopics answered, per {}: {led:?}",
                b.bootstrap()
            );
        }
        let grown = rdkafka::admin::NewPartitions::new(&topic, 20);
        for r in rt
            .block_on(admin.create_partitions([&grown], &options))
            .expect("create partitions")
        {
            r.expect("partitions created");
        }
        let led = partitions(&brokers[2].bootstrap(), &topic);
        assert_eq!(led.len(), 20);
        assert!(
            led.values().all(|i| i.leader >= 1),
            "{topic}: the new partitions led when CreatePartitions answered: {led:?}"
        );
    }
}
