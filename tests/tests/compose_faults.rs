//! Fault injection against the top-level `docker-compose.yml` cluster: three brokers in three
//! AZs, driven by librdkafka clients on the host (through the EXTERNAL listeners) while
//! brokers are killed, cut off, restarted, paused and starved of disk. Afterwards an
//! independent consumer checks that every acknowledged message is present exactly once per
//! partition and in order, a monitor checks that the group's committed offsets never went
//! backwards, and the cluster must be back to full health. Each scenario prints one verdict
//! line with its counts.
//!
//! Needs Docker and the image (`./scripts/docker-image.sh`; `scripts/test.sh` builds it).
//! Without them the scenarios print why they are skipped, except under `CI=true`, where they
//! fail. `RUNNEL_SOAK=1` runs every scenario longer, with its fault repeated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_tests::compose::{self, Cluster};

const TOPIC: &str = "faults";
const PARTITIONS: i32 = 3;
const GROUP: &str = "faults-group";

/// One scenario at a time: each runs its own three-broker cluster.
static SERIAL: Mutex<()> = Mutex::new(());

fn soak() -> bool {
    std::env::var_os("RUNNEL_SOAK").is_some_and(|v| v != "0")
}

/// How many times a scenario repeats its fault: once, or five times when soaking.
fn rounds() -> usize {
    if soak() {
        5
    } else {
        1
    }
}

/// The compose cluster for one scenario, or `None` (with the reason printed) when Docker or
/// the image is missing outside CI. Under `CI=true` a missing prerequisite fails the test.
fn cluster(scenario: &str, override_yaml: Option<&str>) -> Option<Cluster> {
    if let Some(reason) = compose::unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("compose fault scenario {scenario:?} cannot run under CI: {reason}");
        }
        eprintln!("SKIPPED compose fault scenario {scenario:?}: {reason}");
        return None;
    }
    Some(Cluster::up(scenario, override_yaml).expect("compose cluster up"))
}

fn create_topic(bootstrap: &str) {
    create_topic_named(bootstrap, TOPIC, PARTITIONS);
    wait_until(
        "every partition has a leader",
        Duration::from_secs(30),
        || leaders(bootstrap).is_some_and(|l| l.len() == PARTITIONS as usize),
    );
}

/// Creates `name` with `partitions` partitions on all three AZs.
fn create_topic_named(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(3));
    for r in rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create")
    {
        r.expect("topic created");
    }
}

/// The distinct values read from the start of `partitions` of `topic` (until `want` of them
/// or 30 s).
fn read_values(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    want: usize,
) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.insert(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metadata(bootstrap: &str) -> Option<Metadata> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    client
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .ok()
}

/// Partition -> leader, when every partition has one.
fn leaders(bootstrap: &str) -> Option<BTreeMap<i32, i32>> {
    let md = metadata(bootstrap)?;
    let t = md.topics().iter().find(|t| t.name() == TOPIC)?;
    let led: BTreeMap<i32, i32> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader()))
        .collect();
    (led.len() == PARTITIONS as usize && led.values().all(|&l| l >= 1)).then_some(led)
}

/// Whether every partition is led by its preferred (first) replica, as Kafka's
/// `auto.leader.rebalance.enable` restores after a broker returns.
fn leaders_rebalanced(md: &Metadata) -> bool {
    md.topics()
        .iter()
        .filter(|t| t.name() == TOPIC)
        .flat_map(|t| t.partitions())
        .all(|p| p.replicas().first() == Some(&p.leader()))
}

/// Every scenario ends with each partition led by its preferred replica again
/// (`auto.leader.rebalance.enable`, checked every 2 s in these clusters).
const REQUIRE_REBALANCED_LEADERS: bool = true;

/// Full health: Docker reports every broker healthy, and each broker, asked alone from the
/// host, lists all three brokers at their EXTERNAL endpoints and a leader for every partition.
fn assert_full_health(cluster: &Cluster) -> bool {
    cluster
        .wait_healthy(Duration::from_secs(90))
        .expect("every broker healthy again");
    let mut rebalanced = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in 1..=3 {
        let address = cluster.broker_address(node);
        loop {
            let md = metadata(&address);
            let ok = md.as_ref().is_some_and(|md| {
                let brokers: BTreeSet<String> = md
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect();
                let want: BTreeSet<String> = (1..=3).map(|n| cluster.broker_address(n)).collect();
                brokers == want && leaders(&address).is_some()
            });
            if ok {
                rebalanced = md.as_ref().is_some_and(leaders_rebalanced);
                if !REQUIRE_REBALANCED_LEADERS || rebalanced {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "broker {node} never reported all three brokers and every partition led{}",
                if REQUIRE_REBALANCED_LEADERS {
                    " by its preferred replica"
                } else {
                    ""
                }
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    rebalanced
}

/// Acknowledged (partition, value) pairs and delivery errors the application saw.
#[derive(Default)]
struct Deliveries {
    acked: Mutex<Vec<(i32, u64)>>,
    errors: Mutex<Vec<String>>,
}

struct Acks(Arc<Deliveries>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default())
                    .parse::<u64>()
                    .unwrap_or(u64::MAX);
                if let Ok(mut v) = self.0.acked.lock() {
                    v.push((m.partition(), value));
                }
            }
            Err((e, _)) => {
                if let Ok(mut v) = self.0.errors.lock() {
                    v.push(e.to_string());
                }
            }
        }
    }
}

/// What the offsets monitor saw: the highest committed offset per partition and every time
/// a committed offset was lower than one seen before.
#[derive(Default, Debug)]
struct OffsetHistory {
    highest: BTreeMap<i32, i64>,
    backwards: Vec<String>,
}

/// Producers, a consumer group member committing as it goes, and a monitor of the group's
/// committed offsets, all running until [`Load::finish`].
struct Load {
    deliveries: Arc<Deliveries>,
    stop_producing: Arc<AtomicBool>,
    stop_consuming: Arc<AtomicBool>,
    consumed_by_group: Arc<AtomicU64>,
    offsets: Arc<Mutex<OffsetHistory>>,
    sender: Option<JoinHandle<u64>>,
    member: Option<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
}

/// What a scenario's load amounted to.
struct LoadResult {
    sent: u64,
    acked: Vec<(i32, u64)>,
    errors: Vec<String>,
    offsets_backwards: Vec<String>,
    group_caught_up: bool,
    group_consumed: u64,
}

impl Load {
    fn start(bootstrap: &str) -> Load {
        let deliveries = Arc::new(Deliveries::default());
        let stop_producing = Arc::new(AtomicBool::new(false));
        let stop_consuming = Arc::new(AtomicBool::new(false));
        let consumed_by_group = Arc::new(AtomicU64::new(0));
        let offsets = Arc::new(Mutex::new(OffsetHistory::default()));
        let producer: ThreadedProducer<Acks> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Retries hide every fault of these scenarios from the application, as they
            // would in production; only the disk-full scenario expects errors.
            .set("message.timeout.ms", "180000")
            .set("retry.backoff.ms", "100")
            .create_with_context(Acks(deliveries.clone()))
            .expect("producer");
        let sender = {
            let stop = stop_producing.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let value = i.to_string();
                    let record = BaseRecord::<(), _>::to(TOPIC)
                        .payload(&value)
                        .partition((i % PARTITIONS as u64) as i32);
                    if producer.send(record).is_ok() {
                        i += 1;
                    }
                    // About 500 messages a second: load, not a benchmark.
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = producer.flush(Duration::from_secs(180));
                i
            })
        };
        let member = {
            let (stop, consumed) = (stop_consuming.clone(), consumed_by_group.clone());
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", GROUP)
                .set("client.id", "faults-member")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .expect("group consumer");
            consumer.subscribe(&[TOPIC]).expect("subscribe");
            std::thread::spawn(move || {
                let mut last_commit = Instant::now();
                let mut dirty = false;
                while !stop.load(Ordering::SeqCst) {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                        consumed.fetch_add(1, Ordering::SeqCst);
                        dirty = true;
                    }
                    if dirty && last_commit.elapsed() > Duration::from_millis(300) {
                        // Failures (coordinator moving, rebalance) are retried next round.
                        let _ = consumer.commit_consumer_state(CommitMode::Sync);
                        last_commit = Instant::now();
                        dirty = false;
                    }
                }
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
            })
        };
        let monitor = {
            let (stop, offsets) = (stop_consuming.clone(), offsets.clone());
            // Same group id, never subscribes: only reads the committed offsets.
            let reader: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", GROUP)
                .set("client.id", "faults-offsets-monitor")
                .create()
                .expect("offsets reader");
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    record_committed(&reader, &offsets);
                    std::thread::sleep(Duration::from_millis(300));
                }
                record_committed(&reader, &offsets);
            })
        };
        Load {
            deliveries,
            stop_producing,
            stop_consuming,
            consumed_by_group,
            offsets,
            sender: Some(sender),
            member: Some(member),
            monitor: Some(monitor),
        }
    }

    fn acked(&self) -> usize {
        self.deliveries.acked.lock().map_or(0, |v| v.len())
    }

    /// Stops producing (waiting for every outstanding delivery), waits until the group has
    /// committed up to every partition's high watermark (or 90 s: then it is stuck), stops
    /// the member and the monitor.
    fn finish(mut self, bootstrap: &str) -> LoadResult {
        self.stop_producing.store(true, Ordering::SeqCst);
        let sent = self.sender.take().map_or(0, |s| s.join().expect("sender"));
        let ends = high_watermarks(bootstrap);
        let deadline = Instant::now() + Duration::from_secs(90);
        let group_caught_up = loop {
            let caught_up = self.offsets.lock().is_ok_and(|o| {
                ends.iter()
                    .all(|(p, end)| o.highest.get(p).is_some_and(|c| c >= end))
            });
            if caught_up {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        self.stop_consuming.store(true, Ordering::SeqCst);
        if let Some(m) = self.member.take() {
            let _ = m.join();
        }
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        let offsets = self.offsets.lock().map(|o| o.backwards.clone());
        LoadResult {
            sent,
            acked: self
                .deliveries
                .acked
                .lock()
                .map_or_else(|_| Vec::new(), |v| v.clone()),
            errors: self
                .deliveries
                .errors
                .lock()
                .map_or_else(|_| Vec::new(), |v| v.clone()),
            offsets_backwards: offsets.unwrap_or_default(),
            group_caught_up,
            group_consumed: self.consumed_by_group.load(Ordering::SeqCst),
        }
    }
}

fn record_committed(reader: &BaseConsumer, history: &Mutex<OffsetHistory>) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    // During a fault the coordinator may be unreachable: no reading this round.
    let Ok(got) = reader.committed_offsets(tpl, Duration::from_secs(3)) else {
        return;
    };
    let Ok(mut h) = history.lock() else { return };
    for p in 0..PARTITIONS {
        let Some(Offset::Offset(o)) = got.find_partition(TOPIC, p).map(|e| e.offset()) else {
            continue;
        };
        let highest = h.highest.get(&p).copied().unwrap_or(-1);
        if o < highest {
            h.backwards
                .push(format!("partition {p}: committed {o} after {highest}"));
        } else {
            h.highest.insert(p, o);
        }
    }
}

fn high_watermarks(bootstrap: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    (0..PARTITIONS)
        .map(|p| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match client.fetch_watermarks(TOPIC, p, Duration::from_secs(5)) {
                    Ok((_, high)) => break (p, high),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "no high watermark for {p}: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .collect()
}

/// What the independent consumer found, against what was acknowledged.
#[derive(Debug, Default)]
struct Check {
    acknowledged: usize,
    consumed: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    first_lost: Option<(i32, u64)>,
}

impl Check {
    fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// Reads every partition from the beginning to its high watermark with a fresh consumer (no
/// group) and compares with the acknowledged values: each once, in the order sent.
fn verify(bootstrap: &str, acked: &[(i32, u64)]) -> Check {
    let ends = high_watermarks(bootstrap);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "faults-verifier")
        .set("enable.auto.commit", "false")
        .create()
        .expect("verifier");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
    {
        assert!(
            Instant::now() < deadline,
            "the verifier did not reach the high watermarks {ends:?} (at {next:?})"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default())
                .parse::<u64>()
                .unwrap_or(u64::MAX);
            read.entry(m.partition()).or_default().push(v);
            next.insert(m.partition(), m.offset() + 1);
        }
    }
    let mut check = Check {
        acknowledged: acked.len(),
        consumed: read.values().map(Vec::len).sum(),
        ..Check::default()
    };
    for p in 0..PARTITIONS {
        let got = read.remove(&p).unwrap_or_default();
        let unique: BTreeSet<u64> = got.iter().copied().collect();
        check.duplicated += got.len() - unique.len();
        check.out_of_order += got.windows(2).filter(|w| w[1] < w[0]).count();
        for &(ap, v) in acked.iter().filter(|(ap, _)| *ap == p) {
            if !unique.contains(&v) {
                check.lost += 1;
                check.first_lost.get_or_insert((ap, v));
            }
        }
    }
    check
}

/// Prints a verdict line past the test harness's output capture, so it shows in every run.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints the verdict line and fails the test on any violation.
fn verdict(scenario: &str, cluster: &Cluster, load: &LoadResult, check: &Check, extra: &str) {
    let rebalanced = assert_full_health(cluster);
    let pass = check.clean()
        && load.offsets_backwards.is_empty()
        && load.group_caught_up
        && check.acknowledged > 0;
    say(&format!(
        "compose-faults [{scenario}]: {} — sent {}, acknowledged {}, consumed {}, lost {}, duplicated {}, out of order {}, producer errors {}, group consumed {} (caught up: {}), committed offsets backwards {}, leaders on preferred replicas: {}{extra}",
        if pass { "PASS" } else { "FAIL" },
        load.sent,
        check.acknowledged,
        check.consumed,
        check.lost,
        check.duplicated,
        check.out_of_order,
        load.errors.len(),
        load.group_consumed,
        load.group_caught_up,
        load.offsets_backwards.len(),
        if rebalanced { "yes" } else { "no" },
    ));
    assert!(
        check.acknowledged > 0,
        "{scenario}: nothing was acknowledged"
    );
    assert!(
        check.clean(),
        "{scenario}: {check:?}\n{}",
        cluster.logs_tail(60)
    );
    assert!(
        load.offsets_backwards.is_empty(),
        "{scenario}: committed offsets went backwards: {:?}",
        load.offsets_backwards
    );
    assert!(
        load.group_caught_up,
        "{scenario}: the consumer group is stuck: it never committed up to the end\n{}",
        cluster.logs_tail(60)
    );
}

/// The partition-0 leader, the broker whose loss hurts most.
fn leader_of_partition_0(bootstrap: &str) -> i32 {
    let mut led = None;
    wait_until("partition 0 has a leader", Duration::from_secs(30), || {
        led = leaders(bootstrap).and_then(|l| l.get(&0).copied());
        led.is_some()
    });
    led.unwrap_or(1)
}

fn wait_for_acks(load: &Load, more_than: usize, timeout: Duration, what: &str) {
    wait_until(what, timeout, || load.acked() > more_than);
}

#[test]
fn kill_9_of_one_broker_under_load_then_restart_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("kill", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    for round in 0..rounds() {
        let victim = leader_of_partition_0(&bootstrap);
        eprintln!("round {round}: docker kill broker-{victim} (leader of partition 0)");
        cluster.kill(victim).expect("kill");
        let before = load.acked();
        wait_for_acks(
            &load,
            before + 300,
            Duration::from_secs(60),
            "writes are acknowledged with a broker down",
        );
        cluster.start(victim).expect("start");
        cluster
            .wait_healthy(Duration::from_secs(60))
            .expect("healthy after restart");
        std::thread::sleep(Duration::from_secs(2));
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict("kill -9 one broker", &cluster, &result, &check, "");
    assert!(
        result.errors.is_empty(),
        "producer errors reached the application: {:?}",
        &result.errors[..result.errors.len().min(5)]
    );
}

#[test]
fn isolating_one_az_keeps_the_other_two_writing_and_healing_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("isolate", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    let mut during = 0;
    for round in 0..rounds() {
        let victim = leader_of_partition_0(&bootstrap);
        eprintln!("round {round}: isolating az-{victim} (broker-{victim}, leader of partition 0)");
        cluster.disconnect(victim).expect("disconnect");
        let before = load.acked();
        wait_for_acks(
            &load,
            before + 300,
            Duration::from_secs(60),
            "the two remaining AZs acknowledge writes",
        );
        std::thread::sleep(Duration::from_secs(3));
        during += load.acked() - before;
        cluster.connect(victim).expect("reconnect");
        cluster
            .wait_healthy(Duration::from_secs(60))
            .expect("healthy after healing");
        std::thread::sleep(Duration::from_secs(2));
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict(
        "isolate one AZ",
        &cluster,
        &result,
        &check,
        &format!(", acknowledged while isolated {during}"),
    );
}

#[test]
fn a_rolling_restart_under_load_surfaces_no_producer_error_and_no_stuck_group() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("rolling", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    for round in 0..rounds() {
        for node in 1..=3 {
            eprintln!("round {round}: docker restart broker-{node}");
            cluster.restart(node).expect("restart");
            cluster
                .wait_healthy(Duration::from_secs(60))
                .expect("healthy after restart");
            let before = load.acked();
            wait_for_acks(
                &load,
                before + 200,
                Duration::from_secs(60),
                "writes continue after the restart",
            );
        }
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict("rolling restart", &cluster, &result, &check, "");
    assert!(
        result.errors.is_empty(),
        "producer errors reached the application during the rolling restart: {:?}",
        &result.errors[..result.errors.len().min(5)]
    );
}

#[test]
fn pausing_a_broker_past_the_session_timeout_then_unpausing_recovers_the_group() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("pause", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    for round in 0..rounds() {
        let victim = leader_of_partition_0(&bootstrap);
        eprintln!("round {round}: docker pause broker-{victim} for 10 s (session timeout 6 s)");
        cluster.pause(victim).expect("pause");
        std::thread::sleep(Duration::from_secs(10));
        cluster.unpause(victim).expect("unpause");
        cluster
            .wait_healthy(Duration::from_secs(60))
            .expect("healthy after unpause");
        std::thread::sleep(Duration::from_secs(2));
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict("pause past session timeout", &cluster, &result, &check, "");
}

#[test]
fn killing_all_three_brokers_at_once_recovers_every_acknowledged_write() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("powerloss", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    for round in 0..rounds() {
        eprintln!("round {round}: docker kill of all three brokers at once");
        cluster.kill_all().expect("kill all");
        std::thread::sleep(Duration::from_secs(2));
        cluster.start_all().expect("start all");
        cluster
            .wait_healthy(Duration::from_secs(60))
            .expect("healthy after the power loss");
        let before = load.acked();
        wait_for_acks(
            &load,
            before + 300,
            Duration::from_secs(90),
            "writes continue after the restart",
        );
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict("kill all three at once", &cluster, &result, &check, "");
}

/// broker-1 keeps its data on a small tmpfs (`/full`) instead of its volume.
const SMALL_DISK_OVERRIDE: &str = r#"
version: "2.4"
services:
  broker-1:
    environment:
      RUNNEL_DATA_DIR: /full
    tmpfs:
      - /full:size=128m,uid=65532,gid=65532
"#;

/// Delivery outcome of one message, with the error librdkafka reports.
struct Outcome(Arc<Mutex<Option<Result<(), String>>>>);

impl ClientContext for Outcome {}

impl ProducerContext for Outcome {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(mut o) = self.0.lock() {
            *o = Some(match result {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(e.to_string()),
            });
        }
    }
}

/// Sends one message of `bytes` bytes to `topic` with no retries and waits for its delivery
/// report.
fn deliver_once(bootstrap: &str, topic: &str, bytes: usize) -> Result<(), String> {
    let outcome = Arc::new(Mutex::new(None));
    let producer: rdkafka::producer::BaseProducer<Outcome> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create_with_context(Outcome(outcome.clone()))
        .map_err(|e| e.to_string())?;
    let payload = vec![b'p'; bytes];
    producer
        .send(BaseRecord::<(), _>::to(topic).payload(&payload))
        .map_err(|(e, _)| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        producer.poll(Duration::from_millis(100));
        if let Some(result) = outcome.lock().ok().and_then(|mut o| o.take()) {
            return result;
        }
        if Instant::now() > deadline {
            return Err("no delivery report within 20 s".into());
        }
    }
}

#[test]
fn a_full_data_volume_refuses_writes_with_a_storage_error_and_recovers_when_space_returns() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = cluster("diskfull", Some(SMALL_DISK_OVERRIDE)) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap);
    // A partition whose only replica is on the small disk: nobody else can take its writes.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only_on_1: &[&[i32]] = &[&[1]];
    let probe = NewTopic::new("on-the-full-disk", 1, TopicReplication::Variable(only_on_1));
    for r in rt
        .block_on(admin.create_topics([&probe], &AdminOptions::new()))
        .expect("create")
    {
        r.expect("probe topic created");
    }
    wait_until(
        "the probe topic takes writes",
        Duration::from_secs(90),
        || match deliver_once(&bootstrap, "on-the-full-disk", 100) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("the probe topic does not take writes yet: {e}");
                false
            }
        },
    );
    let load = Load::start(&bootstrap);
    wait_for_acks(
        &load,
        500,
        Duration::from_secs(60),
        "the load is acknowledged",
    );
    cluster.install_shell_tools(1).expect("tools");
    let mut refusals = Vec::new();
    for round in 0..rounds() {
        eprintln!("round {round}: filling broker-1's data disk");
        let (_, out) = cluster
            .exec_sh(1, "dd if=/dev/zero of=/full/ballast bs=64k 2>&1; exit 0")
            .expect("fill");
        assert!(
            out.contains("No space left on device"),
            "dd filled the disk: {out}"
        );
        // Writes to the full disk are refused with a storage error, not hung or accepted.
        // Every attempt must fail; at least one must name the storage error (an attempt
        // can also run out its 10 s message timeout, see the report of issue 7).
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            let outcome = deliver_once(&bootstrap, "on-the-full-disk", 256 * 1024);
            eprintln!("produce 256 KiB to the full disk: {outcome:?}");
            let named = outcome
                .as_ref()
                .err()
                .is_some_and(|e| e.contains("KafkaStorageError"));
            outcomes.push(outcome);
            if named {
                break;
            }
        }
        // The first may still fit in the last page the log file already has.
        assert!(
            outcomes.iter().skip(1).all(Result::is_err),
            "writes to the full disk are refused: {outcomes:?}"
        );
        let error = outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .find(|e| e.contains("KafkaStorageError"))
            .cloned()
            .unwrap_or_else(|| panic!("no refusal named KAFKA_STORAGE_ERROR: {outcomes:?}"));
        refusals.push(error);
        // The broker is still up and answering; the replicated topic keeps taking writes on
        // the brokers with space.
        assert_eq!(cluster.health(1).expect("health"), "healthy");
        let before = load.acked();
        wait_for_acks(
            &load,
            before + 300,
            Duration::from_secs(60),
            "the replicated topic takes writes while one disk is full",
        );
        let (ok, out) = cluster.exec_sh(1, "rm /full/ballast").expect("free");
        assert!(ok, "rm: {out}");
        wait_until(
            "the freed disk takes writes again",
            Duration::from_secs(60),
            || deliver_once(&bootstrap, "on-the-full-disk", 256 * 1024).is_ok(),
        );
    }
    let result = load.finish(&bootstrap);
    let check = verify(&bootstrap, &result.acked);
    verdict(
        "full data volume",
        &cluster,
        &result,
        &check,
        &format!(", refused while full: {:?}", refusals.first()),
    );
}

/// Runs the image's `runnel` client in a container on the compose network.
fn in_network(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    cluster
        .run_in_network(args, stdin)
        .unwrap_or_else(|e| panic!("runnel {args:?} in the compose network: {e}"))
}

#[test]
fn host_and_container_clients_each_get_their_listeners_endpoints_and_data_survives_down_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut cluster) = cluster("listeners", None) else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    // From the host (EXTERNAL): every broker at 127.0.0.1 and its published port.
    let md = metadata(&bootstrap).expect("metadata from the host");
    let mut seen: Vec<String> = md
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    seen.sort();
    let mut want: Vec<String> = (1..=3).map(|n| cluster.broker_address(n)).collect();
    want.sort();
    assert_eq!(seen, want, "the host sees the EXTERNAL endpoints");
    // From a container (INTERNAL): the client follows the advertised service names to each
    // partition's leader, which only works if it was told broker-N:19092.
    in_network(
        &cluster,
        &[
            "topic",
            "--bootstrap-server",
            "broker-1:19092",
            "create",
            "inside",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
        None,
    );
    let lines: String = (0..30).map(|i| format!("{i}\n")).collect();
    wait_until(
        "every partition of inside has a leader",
        Duration::from_secs(60),
        || {
            let client: BaseConsumer = match ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
            {
                Ok(c) => c,
                Err(_) => return false,
            };
            client
                .fetch_metadata(Some("inside"), Duration::from_secs(5))
                .is_ok_and(|md| {
                    md.topics().iter().any(|t| {
                        t.partitions().len() == 3 && t.partitions().iter().all(|p| p.leader() >= 1)
                    })
                })
        },
    );
    in_network(
        &cluster,
        &["produce", "--bootstrap-server", "broker-2:19092", "inside"],
        Some(&lines),
    );
    let read_inside = |cluster: &Cluster| -> BTreeSet<u64> {
        in_network(
            cluster,
            &[
                "consume",
                "--bootstrap-server",
                "broker-3:19092",
                "inside",
                "--max-messages",
                "30",
                "--timeout-ms",
                "20000",
            ],
            None,
        )
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
    };
    let want: BTreeSet<u64> = (0..30).collect();
    assert_eq!(
        read_inside(&cluster),
        want,
        "a container reads what it wrote"
    );
    // The host reads the same records through EXTERNAL.
    let from_host: BTreeSet<u64> =
        read_values(&bootstrap, "listeners-host-reader", "inside", 3, 30)
            .iter()
            .filter_map(|v| v.parse().ok())
            .collect();
    assert_eq!(from_host, want, "the host reads what the container wrote");
    // `down` then `up` keeps the volumes and so the data.
    cluster.down_up().expect("down, then up");
    assert_eq!(
        read_inside(&cluster),
        want,
        "the records survive docker-compose down and up"
    );
    say(&format!(
        "compose-faults [listeners, down/up]: PASS — host sees {seen:?}, a container wrote and read 30 records through broker-N:19092, the host read them through EXTERNAL, and they survived down/up"
    ));
}

/// A fourth broker that is not a controller voter is started with `docker compose up` after
/// the three-voter cluster is running: it registers, every broker lists it, a new topic puts
/// replicas on it, a client bootstrapped from it alone writes and reads, and after
/// `docker kill` and `docker start` it rejoins every ISR.
#[test]
fn a_fourth_broker_joins_the_running_cluster_and_hosts_replicas() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = runnel_tests::free_port().expect("port");
    let yaml = format!(
        r#"version: "2.4"
services:
  broker-4:
    image: ${{RUNNEL_IMAGE:-runnel:dev}}
    hostname: broker-4
    command: ["serve"]
    environment:
      RUNNEL_DATA_DIR: /data
      RUNNEL_NODE_ID: "4"
      RUNNEL_AZ: az-1
      RUNNEL_RAFT_LISTEN: 0.0.0.0:19093
      RUNNEL_CONTROLLER_QUORUM_VOTERS: 1@broker-1:19093,2@broker-2:19093,3@broker-3:19093
      RUNNEL_DEFAULT_REPLICATION_FACTOR: "3"
      RUNNEL_OFFSETS_TOPIC_NUM_PARTITIONS: "6"
      RUNNEL_TRANSACTION_STATE_LOG_NUM_PARTITIONS: "3"
      RUNNEL_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS: "2"
      RUNNEL_LISTENERS: INTERNAL://0.0.0.0:19092,EXTERNAL://0.0.0.0:9092
      RUNNEL_ADVERTISED_LISTENERS: INTERNAL://broker-4:19092,EXTERNAL://127.0.0.1:{port}
    ports: ["{port}:9092"]
    volumes: ["broker-4-data:/data"]
volumes:
  broker-4-data: {{}}
"#
    );
    let Some(cluster) = cluster("join", Some(&yaml)) else {
        return;
    };
    let voters = cluster.bootstrap();
    let joined = format!("127.0.0.1:{port}");
    let container = cluster.up_service("broker-4").expect("broker-4 started");
    let brokers = |bootstrap: &str| metadata(bootstrap).map_or(0, |md| md.brokers().len());
    wait_until("broker 4 registered", Duration::from_secs(60), || {
        brokers(&voters) == 4 && brokers(&joined) == 4
    });
    create_topic_named(&voters, "joined", 8);
    let placement = |bootstrap: &str| -> Vec<(Vec<i32>, i32, usize)> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("client");
        client
            .fetch_metadata(Some("joined"), Duration::from_secs(5))
            .map(|md| {
                md.topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .map(|p| (p.replicas().to_vec(), p.leader(), p.isr().len()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let on_4 = placement(&joined)
        .iter()
        .filter(|(replicas, _, _)| replicas.contains(&4))
        .count();
    assert!(
        on_4 >= 4,
        "broker 4 hosts replicas of the new topic: {:?}",
        placement(&joined)
    );
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &joined)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let count = 800;
    for i in 0..count {
        let v = i.to_string();
        producer
            .send(
                BaseRecord::<(), _>::to("joined")
                    .payload(&v)
                    .partition(i % 8),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every message acknowledged");
    let read_all =
        |bootstrap: &str| read_values(bootstrap, "joined-reader", "joined", 8, count as usize);
    assert_eq!(
        read_all(&joined).len(),
        count as usize,
        "read back through broker 4"
    );
    cluster
        .kill_container(&container, true)
        .expect("kill and start broker 4");
    wait_until(
        "broker 4 back in every ISR",
        Duration::from_secs(90),
        || {
            let now = placement(&voters);
            now.len() == 8 && now.iter().all(|(_, leader, isr)| *leader >= 1 && *isr == 3)
        },
    );
    let after = read_all(&voters).len();
    say(&format!(
        "compose-faults [join]: {} — broker 4 registered and hosts {on_4} of 8 partitions, {count} acknowledged through it, {after} read back after its kill and restart",
        if after == count as usize { "PASS" } else { "FAIL" }
    ));
    assert_eq!(
        after, count as usize,
        "nothing lost across broker 4's kill -9"
    );
}
