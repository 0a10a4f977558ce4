//! Consumer groups with real clients against real `runnel` processes: librdkafka (the
//! `rdkafka` crate) and kafka-python, members joining, leaving and being killed, committed
//! offsets across a broker restart, static membership, and `__consumer_offsets` read raw.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_tests::Broker;

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create_topics")
    {
        r.expect("topic created");
    }
}

/// Produces `count` records round-robin over `partitions`, values `prefix-i`.
fn produce(bootstrap: &str, topic: &str, partitions: i32, prefix: &str, count: usize) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let mut record = BaseRecord::<(), _>::to(topic)
            .payload(&value)
            .partition((i % partitions as usize) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Counts rebalances a consumer goes through.
#[derive(Default)]
struct Counting {
    assigns: AtomicUsize,
    revokes: AtomicUsize,
}

impl ClientContext for Counting {}

impl ConsumerContext for Counting {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => self.assigns.fetch_add(1, Ordering::SeqCst),
            Rebalance::Revoke(_) => self.revokes.fetch_add(1, Ordering::SeqCst),
            Rebalance::Error(_) => 0,
        };
    }
}

fn group_consumer(
    bootstrap: &str,
    group: &str,
    client_id: &str,
    extra: &[(&str, &str)],
) -> BaseConsumer<Counting> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
        .create_with_context(Counting::default())
        .expect("consumer")
}

/// What one member consumed and what it owns now.
#[derive(Default)]
struct Seen {
    /// (partition, offset) of every record handed to the application.
    records: Vec<(i32, i64)>,
    /// Records whose synchronous commit failed (they may come again: the uncommitted window).
    uncommitted: BTreeSet<(i32, i64)>,
    assignment: BTreeSet<i32>,
}

/// A member on its own thread: polls, commits every record synchronously, tracks its
/// assignment; on `stop` it commits and closes (leaving the group).
struct Member {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn start(bootstrap: &str, group: &str, topic: &str, client_id: &str) -> Member {
        let consumer = group_consumer(bootstrap, group, client_id, &[]);
        consumer.subscribe(&[topic]).expect("subscribe");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let key = (m.partition(), m.offset());
                    let committed = consumer.commit_message(&m, CommitMode::Sync).is_ok();
                    let mut seen = s.lock().expect("lock");
                    seen.records.push(key);
                    if !committed {
                        seen.uncommitted.insert(key);
                    }
                }
                let assignment: BTreeSet<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                s.lock().expect("lock").assignment = assignment;
            }
            drop(consumer);
        });
        Member {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn assignment(&self) -> BTreeSet<i32> {
        self.seen.lock().expect("lock").assignment.clone()
    }

    fn leave(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("member thread");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every assignment disjoint, together exactly `0..partitions`, each of `sizes`.
fn split_evenly(members: &[&Member], partitions: i32) -> bool {
    let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assignment()).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    let even = partitions as usize / members.len();
    total == partitions as usize
        && union == (0..partitions).collect()
        && sets.iter().all(|s| s.len() == even)
}

fn consumed(members: &[&Member]) -> Vec<(i32, i64)> {
    members
        .iter()
        .flat_map(|m| m.seen.lock().expect("lock").records.clone())
        .collect()
}

/// Every record at most once, except records whose commit failed.
fn assert_no_duplicates_beyond_uncommitted(members: &[&Member]) {
    let uncommitted: BTreeSet<(i32, i64)> = members
        .iter()
        .flat_map(|m| m.seen.lock().expect("lock").uncommitted.clone())
        .collect();
    let mut count: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for r in consumed(members) {
        *count.entry(r).or_default() += 1;
    }
    for (r, n) in count {
        assert!(
            n == 1 || uncommitted.contains(&r),
            "record {r:?} consumed {n} times although its commit succeeded"
        );
    }
}

#[test]
fn three_members_split_twelve_partitions_and_the_rest_take_over_when_one_leaves() {
    let broker = Broker::start(&["--no-fsync", "--group-initial-rebalance-delay-ms", "500"])
        .expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "split", 12);
    produce(&bootstrap, "split", 12, "first", 600);
    let a = Member::start(&bootstrap, "g-split", "split", "member-a");
    let b = Member::start(&bootstrap, "g-split", "split", "member-b");
    let mut c = Member::start(&bootstrap, "g-split", "split", "member-c");
    wait_until(
        "three members own 4 partitions each",
        Duration::from_secs(30),
        || split_evenly(&[&a, &b, &c], 12),
    );
    wait_until("600 records consumed", Duration::from_secs(30), || {
        consumed(&[&a, &b, &c])
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            == 600
    });

    // DescribeGroups as librdkafka reports it matches what the members did.
    let probe = group_consumer(&bootstrap, "probe", "probe", &[]);
    let list = probe
        .fetch_group_list(Some("g-split"), Duration::from_secs(5))
        .expect("describe group");
    let g = &list.groups()[0];
    assert_eq!(g.state(), "Stable");
    assert_eq!(g.protocol_type(), "consumer");
    assert_eq!(g.protocol(), "range");
    let clients: BTreeSet<&str> = g.members().iter().map(|m| m.client_id()).collect();
    assert_eq!(
        clients,
        ["member-a", "member-b", "member-c"].into_iter().collect()
    );
    assert!(g
        .members()
        .iter()
        .all(|m| m.client_host() == "/127.0.0.1" && m.assignment().is_some()));

    c.leave();
    produce(&bootstrap, "split", 12, "second", 600);
    wait_until(
        "two members own 6 partitions each",
        Duration::from_secs(30),
        || split_evenly(&[&a, &b], 12),
    );
    wait_until("all 1200 records consumed", Duration::from_secs(30), || {
        consumed(&[&a, &b, &c])
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            == 1200
    });
    assert_no_duplicates_beyond_uncommitted(&[&a, &b, &c]);
    let all = probe
        .fetch_group_list(None, Duration::from_secs(5))
        .expect("list groups");
    assert!(all.groups().iter().any(|g| g.name() == "g-split"));
}

/// The committed offsets of `group` on `topic` as the coordinator reports them.
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer = group_consumer(bootstrap, group, "offsets-reader", &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Reads `__consumer_offsets` raw and decodes Kafka's key and value schemas independently of
/// the broker's code: (group, topic, partition) -> last committed offset.
fn raw_offsets(bootstrap: &str) -> HashMap<(String, String, i32), i64> {
    fn string(b: &[u8], pos: &mut usize) -> String {
        let n = i16::from_be_bytes([b[*pos], b[*pos + 1]]) as usize;
        *pos += 2;
        let s = String::from_utf8(b[*pos..*pos + n].to_vec()).expect("utf8");
        *pos += n;
        s
    }
    let consumer = group_consumer(bootstrap, "raw-reader", "raw-reader", &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..50 {
        tpl.add_partition_offset("__consumer_offsets", p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = HashMap::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(2) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        idle = Instant::now();
        let key = m.key().expect("every record has a key");
        let version = i16::from_be_bytes([key[0], key[1]]);
        if version > 1 {
            continue; // group metadata
        }
        let mut pos = 2;
        let group = string(key, &mut pos);
        let topic = string(key, &mut pos);
        let partition = i32::from_be_bytes([key[pos], key[pos + 1], key[pos + 2], key[pos + 3]]);
        match m.payload() {
            None => {
                out.remove(&(group, topic, partition));
            }
            Some(v) => {
                assert_eq!(i16::from_be_bytes([v[0], v[1]]), 3, "value version 3");
                let offset = i64::from_be_bytes(v[2..10].try_into().expect("8 bytes"));
                out.insert((group, topic, partition), offset);
            }
        }
    }
    out
}

#[test]
fn committed_offsets_survive_a_broker_kill_and_consumers_resume_exactly_there() {
    let mut broker = Broker::start(&["--group-initial-rebalance-delay-ms", "0"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "resume", 3);
    produce(&bootstrap, "resume", 3, "r", 90);
    let mut first = Member::start(&bootstrap, "g-resume", "resume", "first");
    wait_until("some records consumed", Duration::from_secs(30), || {
        first.seen.lock().expect("lock").records.len() >= 40
    });
    first.leave();
    let before: Vec<(i32, i64)> = first.seen.lock().expect("lock").records.clone();
    let offsets = committed(&bootstrap, "g-resume", "resume", 3);
    // -1: nothing committed for a partition no record was read from.
    let mut expected = [-1i64; 3];
    for (p, o) in &before {
        expected[*p as usize] = expected[*p as usize].max(o + 1);
    }
    assert_eq!(
        offsets,
        expected.to_vec(),
        "committed = next offset to read"
    );

    broker.restart().expect("restart after kill -9");
    let bootstrap = broker.bootstrap();
    wait_until(
        "offsets readable after restart",
        Duration::from_secs(30),
        || committed(&bootstrap, "g-resume", "resume", 3) == expected.to_vec(),
    );
    let raw = raw_offsets(&bootstrap);
    for p in (0..3).filter(|p| expected[*p as usize] >= 0) {
        assert_eq!(
            raw.get(&("g-resume".to_string(), "resume".to_string(), p)),
            Some(&expected[p as usize]),
            "__consumer_offsets read raw holds the committed offset of partition {p}"
        );
    }
    let second = Member::start(&bootstrap, "g-resume", "resume", "second");
    let remaining = 90 - before.len();
    wait_until("the rest consumed", Duration::from_secs(30), || {
        second.seen.lock().expect("lock").records.len() >= remaining
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = second.seen.lock().expect("lock").records.clone();
    assert_eq!(
        after.len(),
        remaining,
        "nothing consumed twice, nothing skipped"
    );
    for p in 0..3 {
        let first_after = after.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).min();
        if let Some(o) = first_after {
            assert_eq!(
                o,
                expected[p as usize].max(0),
                "partition {p} resumes at its commit"
            );
        }
    }
    let all: BTreeSet<(i32, i64)> = before.iter().chain(after.iter()).copied().collect();
    assert_eq!(all.len(), 90);
}

#[test]
fn a_static_member_rejoins_without_a_rebalance() {
    let broker =
        Broker::start(&["--no-fsync", "--group-initial-rebalance-delay-ms", "0"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "static", 4);
    let statik = |id: &str| {
        let c = group_consumer(
            &bootstrap,
            "g-static",
            id,
            &[("group.instance.id", id), ("session.timeout.ms", "10000")],
        );
        c.subscribe(&["static"]).expect("subscribe");
        c
    };
    let poll_until =
        |consumers: &[&BaseConsumer<Counting>], what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting until {what}");
                for c in consumers {
                    let _ = c.poll(Duration::from_millis(20));
                }
            }
        };
    let owned = owned_partitions;
    let a = statik("static-a");
    let b = statik("static-b");
    poll_until(&[&a, &b], "both static members own 2 partitions", &|| {
        owned(&a).len() == 2 && owned(&b).len() == 2
    });
    let b_owned = owned(&b);
    let a_rebalances = a.context().assigns.load(Ordering::SeqCst);
    // A static member closing does not leave the group (KIP-345); its replacement within the
    // session timeout takes its place and its partitions without a rebalance.
    drop(b);
    let b2 = statik("static-b");
    poll_until(
        &[&a, &b2],
        "the restarted member owns its partitions again",
        &|| owned(&b2) == b_owned,
    );
    for _ in 0..20 {
        let _ = a.poll(Duration::from_millis(50));
        let _ = b2.poll(Duration::from_millis(50));
    }
    assert_eq!(
        a.context().assigns.load(Ordering::SeqCst),
        a_rebalances,
        "the other member saw no rebalance"
    );
    assert_eq!(owned(&b2), b_owned);
}

/// A child process killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kafka-python joins the same group as librdkafka, commits, and is killed with SIGKILL: the
/// librdkafka member takes its partitions over after the session timeout.
#[test]
fn a_killed_kafka_python_member_is_replaced_after_its_session_timeout() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    if !python.exists() {
        assert!(!in_ci, "target/pyenv missing: run ./scripts/test.sh");
        eprintln!("SKIPPED: no target/pyenv (run ./scripts/test.sh)");
        return;
    }
    let broker =
        Broker::start(&["--no-fsync", "--group-initial-rebalance-delay-ms", "0"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "mixed", 4);
    produce(&bootstrap, "mixed", 4, "m", 400);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/group_member.py");
    let mut py = KillOnDrop(
        Command::new(&python)
            .arg(&script)
            .arg(&bootstrap)
            .arg("g-mixed")
            .arg("mixed")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kafka-python member"),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let stdout = py.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().expect("lock").push(line);
            }
        });
    }
    wait_until("kafka-python consumed", Duration::from_secs(60), || {
        lines
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.starts_with("consumed"))
    });
    let rd = Member::start(&bootstrap, "g-mixed", "mixed", "rdkafka");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let py_owns = lines
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|l| l.starts_with("assigned"))
            .map(|l| l.split(' ').count() - 1);
        if rd.assignment().len() == 2 && py_owns == Some(2) {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "the two clients did not split 4 partitions: rdkafka owns {:?}, kafka-python printed {:?}",
                rd.assignment(),
                lines.lock().expect("lock").iter().filter(|l| !l.starts_with("consumed")).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    py.0.kill().expect("kill -9 kafka-python");
    let _ = py.0.wait();
    let killed = Instant::now();
    wait_until(
        "rdkafka owns all 4 partitions",
        Duration::from_secs(30),
        || rd.assignment().len() == 4,
    );
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "took over after {took:?}: before the 6 s session timeout, so not by expiry"
    );
    let py_seen: Vec<(i32, i64)> = lines
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|l| {
            let mut it = l.strip_prefix("consumed ")?.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    wait_until("every record consumed", Duration::from_secs(30), || {
        let all: BTreeSet<(i32, i64)> = py_seen.iter().copied().chain(consumed(&[&rd])).collect();
        all.len() == 400
    });
    // kafka-python commits after each record; at most its last uncommitted record per
    // partition comes again.
    let mut count: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for r in py_seen.iter().copied().chain(consumed(&[&rd])) {
        *count.entry(r).or_default() += 1;
    }
    let dups = count.values().filter(|n| **n > 1).count();
    assert!(dups <= 4, "{dups} records consumed twice");
}

/// The partitions a consumer is assigned now.
fn owned_partitions(c: &BaseConsumer<Counting>) -> BTreeSet<i32> {
    c.assignment()
        .map(|t| t.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// A KIP-848 (`group.protocol=consumer`) member: the broker assigns, rebalances are
/// incremental.
fn kip848_consumer(bootstrap: &str, group: &str, client_id: &str) -> BaseConsumer<Counting> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Counting::default())
        .expect("consumer")
}

#[test]
fn group_protocol_consumer_members_rebalance_incrementally() {
    let broker = Broker::start(&[
        "--no-fsync",
        "--group-consumer-heartbeat-interval-ms",
        "200",
    ])
    .expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848", 6);
    produce(&bootstrap, "kip848", 6, "k", 600);
    let owned = owned_partitions;
    let mut seen: Vec<(i32, i64)> = Vec::new();
    let poll_all = |consumers: &[&BaseConsumer<Counting>], seen: &mut Vec<(i32, i64)>| {
        for c in consumers {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(10)) {
                seen.push((m.partition(), m.offset()));
                c.commit_message(&m, CommitMode::Sync)
                    .expect("commit with the member epoch");
            }
        }
    };
    let a = kip848_consumer(&bootstrap, "g-848", "a");
    a.subscribe(&["kip848"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&a).len() != 6 {
        assert!(
            Instant::now() < deadline,
            "the first member never got all 6 partitions"
        );
        poll_all(&[&a], &mut seen);
    }
    let b = kip848_consumer(&bootstrap, "g-848", "b");
    b.subscribe(&["kip848"]).expect("subscribe");
    // While the second member joins, the first keeps partitions throughout (incremental
    // revocation), and no partition is ever owned by both.
    let mut a_min = 6;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        poll_all(&[&a, &b], &mut seen);
        let (oa, ob) = (owned(&a), owned(&b));
        a_min = a_min.min(oa.len());
        assert!(oa.is_disjoint(&ob), "a {oa:?} and b {ob:?} overlap");
        if oa.len() == 3 && ob.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 3/3 split: a {oa:?}, b {ob:?}"
        );
    }
    assert_eq!(
        a_min, 3,
        "the first member never gave up everything at once"
    );
    let listed = Command::new(runnel_tests::runnel_bin().expect("runnel binary"))
        .args([
            "group",
            "list",
            "--output",
            "json",
            "--bootstrap-server",
            &bootstrap,
        ])
        .output()
        .expect("runnel group list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(
            r#"{"group":"g-848","state":"Stable","protocol_type":"consumer","type":"consumer"}"#
        ),
        "the group is a KIP-848 consumer group: {listed}"
    );
    assert_eq!(
        a.context().revokes.load(Ordering::SeqCst),
        1,
        "one incremental revocation"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.iter().collect::<BTreeSet<_>>().len() < 600 {
        assert!(
            Instant::now() < deadline,
            "only {} of 600 consumed",
            seen.len()
        );
        poll_all(&[&a, &b], &mut seen);
    }
    let distinct: BTreeSet<(i32, i64)> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "no record consumed twice");
    // b leaves: a takes everything back.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&a).len() != 6 {
        assert!(
            Instant::now() < deadline,
            "the remaining member did not take over"
        );
        poll_all(&[&a], &mut seen);
    }
    let offsets = committed(&bootstrap, "g-848", "kip848", 6);
    assert_eq!(offsets, vec![100; 6], "every record's commit landed");
}

#[test]
fn a_kip848_group_survives_a_coordinator_restart_without_rebalancing() {
    let mut broker =
        Broker::start(&["--group-consumer-heartbeat-interval-ms", "200"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848-restart", 4);
    let a = kip848_consumer(&bootstrap, "g-848-restart", "a");
    a.subscribe(&["kip848-restart"]).expect("subscribe");
    let owned = |c: &BaseConsumer<Counting>| c.assignment().map(|t| t.count()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&a) != 4 {
        assert!(
            Instant::now() < deadline,
            "the member never got its partitions"
        );
        let _ = a.poll(Duration::from_millis(20));
    }
    // Let a few heartbeats pass so the state is written, then kill the coordinator.
    for _ in 0..20 {
        let _ = a.poll(Duration::from_millis(20));
    }
    let (assigns, revokes) = (
        a.context().assigns.load(Ordering::SeqCst),
        a.context().revokes.load(Ordering::SeqCst),
    );
    broker.restart().expect("restart after kill -9");
    produce(&bootstrap, "kip848-restart", 4, "after", 40);
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < 40 {
        assert!(
            Instant::now() < deadline,
            "consumed {got} of 40 after the restart"
        );
        if let Some(Ok(_)) = a.poll(Duration::from_millis(20)) {
            got += 1;
        }
    }
    // The reloaded group accepted the member's epoch: no revocation, no new assignment.
    assert_eq!(a.context().revokes.load(Ordering::SeqCst), revokes);
    assert_eq!(a.context().assigns.load(Ordering::SeqCst), assigns);
    assert_eq!(owned(&a), 4);
}

/// Kafka lets classic and consumer-protocol members share a group: a stable classic group is
/// upgraded when a `group.protocol=consumer` member arrives, the server assignor then splits
/// partitions between both kinds, and no partition is owned by two members at once.
#[test]
fn classic_and_consumer_protocol_members_share_one_group() {
    let broker = Broker::start(&[
        "--no-fsync",
        "--group-initial-rebalance-delay-ms",
        "0",
        "--group-consumer-heartbeat-interval-ms",
        "200",
    ])
    .expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "mixed-proto", 4);
    produce(&bootstrap, "mixed-proto", 4, "m", 400);
    let owned = owned_partitions;
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    let poll = |c: &BaseConsumer<Counting>, seen: &mut BTreeSet<(i32, i64)>| {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(10)) {
            seen.insert((m.partition(), m.offset()));
            let _ = c.commit_message(&m, CommitMode::Sync);
        }
    };
    let classic = group_consumer(&bootstrap, "g-mixed-proto", "classic", &[]);
    classic.subscribe(&["mixed-proto"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&classic).len() != 4 {
        assert!(
            Instant::now() < deadline,
            "the classic member never got 4 partitions"
        );
        poll(&classic, &mut seen);
    }
    let modern = kip848_consumer(&bootstrap, "g-mixed-proto", "modern");
    modern.subscribe(&["mixed-proto"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        poll(&classic, &mut seen);
        poll(&modern, &mut seen);
        let (a, b) = (owned(&classic), owned(&modern));
        assert!(
            a.is_disjoint(&b),
            "classic {a:?} and consumer {b:?} overlap"
        );
        if a.len() == 2 && b.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 2/2 split: classic {a:?}, consumer {b:?}"
        );
    }
    let listed = Command::new(runnel_tests::runnel_bin().expect("runnel binary"))
        .args([
            "group",
            "list",
            "--output",
            "json",
            "--bootstrap-server",
            &bootstrap,
        ])
        .output()
        .expect("runnel group list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(r#""group":"g-mixed-proto""#) && listed.contains(r#""type":"consumer""#),
        "the upgraded group is a consumer group: {listed}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 400 {
        assert!(Instant::now() < deadline, "consumed {} of 400", seen.len());
        poll(&classic, &mut seen);
        poll(&modern, &mut seen);
    }
    // The classic member leaves: the consumer-protocol member takes everything.
    drop(classic);
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&modern).len() != 4 {
        assert!(
            Instant::now() < deadline,
            "the remaining member did not take over"
        );
        poll(&modern, &mut seen);
    }
}

/// The classic protocol with librdkafka's `cooperative-sticky` assignor: the coordinator only
/// relays assignments, and the incremental protocol runs through SyncGroup as in Kafka (the
/// first member never gives up everything when the second joins).
#[test]
fn cooperative_sticky_members_rebalance_incrementally_over_the_classic_protocol() {
    let broker =
        Broker::start(&["--no-fsync", "--group-initial-rebalance-delay-ms", "0"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "coop", 6);
    let coop = |id: &str| {
        let c = group_consumer(
            &bootstrap,
            "g-coop",
            id,
            &[("partition.assignment.strategy", "cooperative-sticky")],
        );
        c.subscribe(&["coop"]).expect("subscribe");
        c
    };
    let owned = owned_partitions;
    let a = coop("coop-a");
    let deadline = Instant::now() + Duration::from_secs(30);
    while owned(&a).len() != 6 {
        assert!(
            Instant::now() < deadline,
            "the first member never got 6 partitions"
        );
        let _ = a.poll(Duration::from_millis(20));
    }
    let b = coop("coop-b");
    let mut a_min = 6;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = a.poll(Duration::from_millis(20));
        let _ = b.poll(Duration::from_millis(20));
        let (oa, ob) = (owned(&a), owned(&b));
        a_min = a_min.min(oa.len());
        assert!(oa.is_disjoint(&ob), "a {oa:?} and b {ob:?} overlap");
        if oa.len() == 3 && ob.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 3/3 split: a {oa:?}, b {ob:?}"
        );
    }
    assert_eq!(
        a_min, 3,
        "cooperative: a kept its other partitions throughout"
    );
}

/// A KIP-848 member subscribed by regex gets the matching topics, including one created
/// after it joined.
#[test]
fn group_protocol_consumer_regex_subscriptions_follow_new_topics() {
    let broker = Broker::start(&[
        "--no-fsync",
        "--group-consumer-heartbeat-interval-ms",
        "200",
    ])
    .expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "rx-orders", 2);
    create_topic(&bootstrap, "other", 2);
    let c = kip848_consumer(&bootstrap, "g-regex", "rx");
    c.subscribe(&["^rx-.*"]).expect("subscribe by regex");
    let topics = |c: &BaseConsumer<Counting>| -> BTreeSet<(String, i32)> {
        c.assignment()
            .map(|t| {
                t.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while topics(&c).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "regex subscription got {:?}",
            topics(&c)
        );
        let _ = c.poll(Duration::from_millis(20));
    }
    assert!(topics(&c).iter().all(|(t, _)| t == "rx-orders"));
    create_topic(&bootstrap, "rx-payments", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while topics(&c).len() != 3 {
        assert!(
            Instant::now() < deadline,
            "the new matching topic was not assigned: {:?}",
            topics(&c)
        );
        let _ = c.poll(Duration::from_millis(20));
    }
}
