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
use runnel_tests::{free_port, Broker};

const PARTITIONS: i32 = 3;

/// Starts brokers 1..=3 (AZs az-1..az-3) as one cluster.
fn cluster() -> Vec<Broker> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (free_port().expect("port"), free_port().expect("port")))
        .collect();
    let voters: String = ports
        .iter()
        .enumerate()
        .map(|(i, (_, raft))| format!("{}@127.0.0.1:{raft}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (kafka, _))| {
            let az = format!("az-{}", i + 1);
            Broker::start_node(
                i as i32 + 1,
                *kafka,
                &[
                    "--no-fsync",
                    "--az",
                    &az,
                    "--controller-quorum-voters",
                    &voters,
                ],
            )
            .expect("broker")
        })
        .collect()
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
        .collect()
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
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Brokers register themselves through the metadata quorum once it has a leader.
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .fetch_metadata(None, Duration::from_secs(5))
        .map_or(0, |md| md.brokers().len())
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the brokers never all registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let topic = NewTopic::new("replicated", PARTITIONS, TopicReplication::Fixed(3));
    for r in rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create")
    {
        r.expect("topic created");
    }
    // Every partition elects a leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut led = leaders(&bootstrap, "replicated");
    while led.len() < PARTITIONS as usize || led.values().any(|&l| l < 1) {
        assert!(Instant::now() < deadline, "no leaders: {led:?}");
        std::thread::sleep(Duration::from_millis(200));
        led = leaders(&bootstrap, "replicated");
    }

    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .create_with_context(Acks(acked.clone()))
        .expect("producer");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("{i}");
                let partition = (i % PARTITIONS as u64) as i32;
                let record = BaseRecord::<(), _>::to("replicated")
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
    std::thread::sleep(Duration::from_secs(2));
    // Kill the leader of partition 0, keep producing, bring it back.
    let victim = led[&0];
    eprintln!("killing broker {victim}, leader of partition 0 (leaders {led:?})");
    let killed_at = Instant::now();
    brokers[(victim - 1) as usize].kill_9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = leaders(&brokers[(victim % 3) as usize].bootstrap(), "replicated");
        if now.get(&0).is_some_and(|&l| l >= 1 && l != victim) {
            eprintln!(
                "partition 0 led by {} {} ms after the kill",
                now[&0],
                killed_at.elapsed().as_millis()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no new leader for partition 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    brokers[(victim - 1) as usize].restart().expect("restart");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().expect("sender");
    let acked = acked.lock().expect("acks").clone();
    assert!(
        acked.len() > 1000,
        "only {} of {sent} acknowledged",
        acked.len()
    );

    // Read everything back from the restarted broker's cluster.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "verifier")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("replicated", p, Offset::Beginning)
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
    for p in 0..PARTITIONS {
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
    eprintln!(
        "sent {sent}, acknowledged {}, read {}",
        acked.len(),
        read.values().map(Vec::len).sum::<usize>()
    );
}
