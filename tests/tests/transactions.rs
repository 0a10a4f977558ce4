//! Transactions end to end: librdkafka's transactional producer (the `rdkafka` crate) against
//! a real `runnel` process, read back by `read_committed` and `read_uncommitted` consumers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use runnel_tests::Broker;

const T: Duration = Duration::from_secs(30);

/// Brokers for these tests: small coordinator topics so startup stays quick.
fn broker(extra: &[&str]) -> Broker {
    let mut args = vec![
        "--no-fsync",
        "--offsets-topic-num-partitions",
        "3",
        "--transaction-state-log-num-partitions",
        "3",
        "--group-initial-rebalance-delay-ms",
        "0",
    ];
    args.extend_from_slice(extra);
    Broker::start(&args).expect("broker")
}

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

fn transactional_producer(bootstrap: &str, id: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: BaseProducer = config.create().expect("producer");
    producer.init_transactions(T).expect("init_transactions");
    producer
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, value: &str) {
    let mut record = BaseRecord::<(), _>::to(topic)
        .payload(value)
        .partition(partition);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                producer.poll(Duration::from_millis(5));
                record = r;
            }
        }
    }
}

/// Every value of `topic` (all partitions, from the beginning) an `isolation.level` consumer
/// sees within `wait`, by partition, in order.
fn read(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    wait: Duration,
) -> BTreeMap<i32, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.entry(m.partition())
                .or_default()
                .push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out
}

#[test]
fn read_committed_sees_exactly_the_committed_transactions_and_read_uncommitted_sees_all() {
    let broker = broker(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "txn", 3);
    let producer = transactional_producer(&bootstrap, "txn-basic", &[]);
    let mut committed: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut all: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for round in 0..6 {
        producer.begin_transaction().expect("begin");
        for i in 0..30 {
            let p = i % 3;
            let value = format!("r{round}-{i}");
            send(&producer, "txn", p, &value);
            all.entry(p).or_default().push(value.clone());
            if round % 2 == 0 {
                committed.entry(p).or_default().push(value);
            }
        }
        if round % 2 == 0 {
            producer.commit_transaction(T).expect("commit");
        } else {
            producer.flush(T).expect("flush");
            producer.abort_transaction(T).expect("abort");
        }
    }
    let seen = read(
        &bootstrap,
        "txn",
        3,
        "read_committed",
        Duration::from_secs(4),
    );
    assert_eq!(
        seen, committed,
        "read_committed: committed records only, in order"
    );
    let seen = read(
        &bootstrap,
        "txn",
        3,
        "read_uncommitted",
        Duration::from_secs(4),
    );
    assert_eq!(seen, all, "read_uncommitted: every record");
}

#[test]
fn an_open_transaction_holds_read_committed_consumers_until_it_commits() {
    let broker = broker(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "open", 1);
    let producer = transactional_producer(&bootstrap, "txn-open", &[]);
    producer.begin_transaction().expect("begin");
    send(&producer, "open", 0, "before-commit");
    producer.flush(T).expect("flush");
    let seen = read(
        &bootstrap,
        "open",
        1,
        "read_committed",
        Duration::from_secs(2),
    );
    assert!(seen.is_empty(), "nothing visible while open: {seen:?}");
    let seen = read(
        &bootstrap,
        "open",
        1,
        "read_uncommitted",
        Duration::from_secs(2),
    );
    assert_eq!(
        seen.get(&0).map(Vec::len),
        Some(1),
        "read_uncommitted sees it"
    );
    producer.commit_transaction(T).expect("commit");
    let seen = read(
        &bootstrap,
        "open",
        1,
        "read_committed",
        Duration::from_secs(2),
    );
    assert_eq!(seen.get(&0), Some(&vec!["before-commit".to_string()]));
}

#[test]
fn a_new_incarnation_fences_the_zombie_and_aborts_its_transaction() {
    let broker = broker(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "zombie", 1);
    let zombie = transactional_producer(&bootstrap, "txn-zombie", &[]);
    zombie.begin_transaction().expect("begin");
    send(&zombie, "zombie", 0, "from-zombie");
    zombie.flush(T).expect("flush");
    // Same transactional id: the coordinator aborts the zombie's transaction and bumps the
    // epoch.
    let fresh = transactional_producer(&bootstrap, "txn-zombie", &[]);
    fresh.begin_transaction().expect("begin");
    send(&fresh, "zombie", 0, "from-fresh");
    fresh.commit_transaction(T).expect("commit");
    let error = zombie
        .commit_transaction(T)
        .expect_err("the zombie cannot commit");
    let fenced = match &error {
        rdkafka::error::KafkaError::Transaction(e) => e.is_fatal() || e.txn_requires_abort(),
        _ => false,
    };
    assert!(fenced, "the zombie is fenced: {error:?}");
    let seen = read(
        &bootstrap,
        "zombie",
        1,
        "read_committed",
        Duration::from_secs(3),
    );
    assert_eq!(
        seen.get(&0),
        Some(&vec!["from-fresh".to_string()]),
        "only the new incarnation's records"
    );
}

// ---------------------------------------------------------------------------------------------
// Crash and recovery: kill -9 of the broker and of the application.

/// A plain (idempotent, non-transactional) producer for pre-filling topics.
fn plain_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// A consumer that only assigns partitions (no group membership) at `isolation`.
fn reader(bootstrap: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Every value of `topic` an `isolation` consumer reads from the beginning: it stops once it
/// has at least `expected` records and every partition reported its end (for read_committed,
/// the last stable offset), then keeps reading one more second to catch anything extra.
fn read_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    expected: usize,
    wait: Duration,
) -> BTreeMap<i32, Vec<String>> {
    let consumer = reader(bootstrap, isolation);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut at_end = vec![false; partitions as usize];
    let mut count = 0;
    let deadline = Instant::now() + wait;
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle.is_some_and(|s| now >= s) || now >= deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                at_end[m.partition() as usize] = false;
                count += 1;
                out.entry(m.partition())
                    .or_default()
                    .push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            Some(Err(e)) => eprintln!("{isolation} reader of {topic}: {e}"),
            None => {}
        }
        if settle.is_none() && count >= expected && at_end.iter().all(|e| *e) {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    out
}

/// (low, high) watermarks of every partition as an `isolation` client sees them: for
/// read_committed the high one is the last stable offset.
fn watermarks(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<(i64, i64)> {
    let consumer = reader(bootstrap, isolation);
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap_or((-1, -1))
        })
        .collect()
}

const CTP_IN: &str = "ctp-in";
const CTP_OUT: &str = "ctp-out";
const CTP_RECORDS: usize = 3000;
const CTP_BATCH: usize = 100;

#[derive(Debug, Default)]
struct CtpProgress {
    /// Transactions the application committed (commit_transaction returned Ok).
    commits: std::sync::atomic::AtomicUsize,
    /// Records written in transactions the application abandoned on purpose (flushed, then
    /// producer and consumer dropped without commit or abort).
    abandoned_records: std::sync::atomic::AtomicUsize,
    /// Producer+consumer pairs created (one per application "process").
    incarnations: std::sync::atomic::AtomicUsize,
    /// Incarnations that ended in an error (the broker went away under them).
    failures: std::sync::atomic::AtomicUsize,
    /// Broker restarts (by the test): an incarnation that sees this change ends before its
    /// next batch, and the application starts a new one, as after a crash of both.
    broker_restarts: std::sync::atomic::AtomicUsize,
    /// Set by the application while it holds an open transaction with flushed records and
    /// waits for the test to kill -9 and restart the broker under it.
    holding_open_txn: std::sync::atomic::AtomicBool,
}

/// The commit count after which the application holds a flushed, open transaction while the
/// broker is killed and restarted, then dies without ending it.
const CTP_HOLD_AT: usize = 25;

enum CtpEnd {
    Done,
    Abandoned,
    BrokerRestarted,
}

/// One incarnation of the consume-transform-produce application: a read_committed consumer
/// in group "ctp" and a transactional producer "ctp-1". Each batch of up to 100 input
/// records becomes one transaction: the transformed records plus the consumer's offsets.
/// When the commit count reaches one of `abandon_at` (each once), it instead writes and
/// flushes the batch, then returns without committing: the caller drops the "process".
fn ctp_incarnation(
    bootstrap: &str,
    progress: &CtpProgress,
    abandon_at: &mut Vec<usize>,
    hold_at: &mut Option<usize>,
) -> Result<CtpEnd, String> {
    use std::sync::atomic::Ordering::SeqCst;
    let restarts = progress.broker_restarts.load(SeqCst);
    let timeout = Duration::from_secs(10);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "ctp-1")
        .set("transaction.timeout.ms", "20000")
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    producer
        .init_transactions(timeout)
        .map_err(|e| format!("init_transactions: {e}"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ctp")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    consumer
        .subscribe(&[CTP_IN])
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        if progress.broker_restarts.load(SeqCst) != restarts {
            return Ok(CtpEnd::BrokerRestarted);
        }
        let mut batch: Vec<(i32, i64, String)> = Vec::new();
        let started = Instant::now();
        while batch.len() < CTP_BATCH && started.elapsed() < Duration::from_millis(500) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => batch.push((
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                Some(Err(e)) => return Err(format!("consume: {e}")),
                None if !batch.is_empty() => break,
                None => {}
            }
        }
        if batch.is_empty() {
            let mut all = TopicPartitionList::new();
            for p in 0..3 {
                all.add_partition(CTP_IN, p);
            }
            let committed = consumer
                .committed_offsets(all, timeout)
                .map_err(|e| format!("committed: {e}"))?;
            let consumed: i64 = committed
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
                .sum();
            if consumed == CTP_RECORDS as i64 {
                return Ok(CtpEnd::Done);
            }
            continue;
        }
        producer
            .begin_transaction()
            .map_err(|e| format!("begin: {e}"))?;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, offset, value) in &batch {
            send(&producer, CTP_OUT, *p, &format!("out-{value}"));
            next.insert(*p, offset + 1);
        }
        let commits = progress.commits.load(SeqCst);
        if let Some(i) = abandon_at.iter().position(|&n| n <= commits) {
            abandon_at.remove(i);
            producer.flush(timeout).map_err(|e| format!("flush: {e}"))?;
            progress.abandoned_records.fetch_add(batch.len(), SeqCst);
            eprintln!(
                "ctp: abandoning an open transaction of {} records after {commits} commits",
                batch.len()
            );
            return Ok(CtpEnd::Abandoned);
        }
        // (Only after the first broker restart, which the test does first.)
        if hold_at.is_some_and(|n| n <= commits) && restarts >= 1 {
            *hold_at = None;
            producer.flush(timeout).map_err(|e| format!("flush: {e}"))?;
            progress.abandoned_records.fetch_add(batch.len(), SeqCst);
            eprintln!(
                "ctp: holding an open transaction of {} records after {commits} commits",
                batch.len()
            );
            progress.holding_open_txn.store(true, SeqCst);
            let wait = Instant::now() + Duration::from_secs(20);
            while progress.broker_restarts.load(SeqCst) == restarts && Instant::now() < wait {
                std::thread::sleep(Duration::from_millis(5));
            }
            progress.holding_open_txn.store(false, SeqCst);
            return Ok(CtpEnd::BrokerRestarted);
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets
                .add_partition_offset(CTP_IN, *p, Offset::Offset(*o))
                .expect("offset");
        }
        let group = consumer.group_metadata().ok_or("no group metadata")?;
        producer
            .send_offsets_to_transaction(&offsets, &group, timeout)
            .map_err(|e| format!("send_offsets_to_transaction: {e}"))?;
        producer
            .commit_transaction(timeout)
            .map_err(|e| format!("commit: {e}"))?;
        progress.commits.fetch_add(1, SeqCst);
    }
}

/// The application: incarnations one after the other until the input is consumed (or
/// `deadline`). An incarnation that fails is dropped and replaced, as a supervisor would.
fn ctp_application(
    bootstrap: String,
    progress: std::sync::Arc<CtpProgress>,
    deadline: Instant,
) -> Result<(), String> {
    use std::sync::atomic::Ordering::SeqCst;
    let mut abandon_at = vec![5, 20];
    let mut hold_at = Some(CTP_HOLD_AT);
    while Instant::now() < deadline {
        progress.incarnations.fetch_add(1, SeqCst);
        match ctp_incarnation(&bootstrap, &progress, &mut abandon_at, &mut hold_at) {
            Ok(CtpEnd::Done) => return Ok(()),
            Ok(CtpEnd::Abandoned) => {}
            Ok(CtpEnd::BrokerRestarted) => {
                eprintln!(
                    "ctp: recreating producer and consumer after the broker restart ({} commits)",
                    progress.commits.load(SeqCst)
                );
            }
            Err(e) => {
                progress.failures.fetch_add(1, SeqCst);
                eprintln!(
                    "ctp: incarnation failed after {} commits: {e}",
                    progress.commits.load(SeqCst)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Err(format!(
        "input not consumed before the deadline: {progress:?}"
    ))
}

#[test]
fn consume_transform_produce_is_exactly_once_across_broker_kill_9_and_application_restarts() {
    use std::sync::atomic::Ordering::SeqCst;
    let started = Instant::now();
    let mut broker = broker(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, CTP_IN, 3);
    create_topic(&bootstrap, CTP_OUT, 3);
    let input = plain_producer(&bootstrap);
    for n in 0..CTP_RECORDS {
        send(&input, CTP_IN, (n % 3) as i32, &n.to_string());
    }
    input.flush(T).expect("flush input");
    drop(input);

    let progress = std::sync::Arc::new(CtpProgress::default());
    let app = {
        let (bootstrap, progress) = (bootstrap.clone(), progress.clone());
        let deadline = Instant::now() + Duration::from_secs(45);
        std::thread::spawn(move || ctp_application(bootstrap, progress, deadline))
    };
    // Mid-stream: after some commits (and after the first abandoned transaction), kill -9.
    let wait = Instant::now() + Duration::from_secs(30);
    while progress.commits.load(SeqCst) < 12 && Instant::now() < wait && !app.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_kill = progress.commits.load(SeqCst);
    assert!(at_kill >= 12, "the application made progress: {progress:?}");
    broker.kill_9();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart().expect("restart");
    progress.broker_restarts.fetch_add(1, SeqCst);
    eprintln!("broker killed and restarted after {at_kill} commits");
    // Again, this time while the application holds an open transaction whose records the
    // broker has acknowledged: the application dies with it (never commits nor aborts).
    let wait = Instant::now() + Duration::from_secs(30);
    while !progress.holding_open_txn.load(SeqCst) && Instant::now() < wait && !app.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        progress.holding_open_txn.load(SeqCst),
        "the application reached {CTP_HOLD_AT} commits: {progress:?}"
    );
    broker.kill_9();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart().expect("restart");
    progress.broker_restarts.fetch_add(1, SeqCst);
    eprintln!("broker killed and restarted under an open transaction");
    app.join()
        .expect("application thread")
        .expect("application");
    eprintln!("application done: {progress:?}");
    let commits = progress.commits.load(SeqCst);
    assert!(commits > at_kill, "commits after the restart: {progress:?}");
    assert!(
        progress.incarnations.load(SeqCst) >= 5,
        "two abandoned incarnations, two ended by broker restarts, and the last: {progress:?}"
    );
    let abandoned = progress.abandoned_records.load(SeqCst);
    assert!(abandoned > 0, "{progress:?}");

    let seen = read_to_end(&bootstrap, CTP_OUT, 3, "read_committed", CTP_RECORDS, T);
    for p in 0..3 {
        let expected: Vec<String> = (0..CTP_RECORDS)
            .filter(|n| n % 3 == p as usize)
            .map(|n| format!("out-{n}"))
            .collect();
        let got = seen.get(&p).cloned().unwrap_or_default();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &got {
            *counts.entry(v.as_str()).or_default() += 1;
        }
        let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|v| !counts.contains_key(v.as_str()))
            .collect();
        assert!(
            dups.is_empty() && missing.is_empty(),
            "partition {p}: {} records, duplicates {:?}, missing {} (first {:?})",
            got.len(),
            &dups[..dups.len().min(10)],
            missing.len(),
            missing.first()
        );
        assert_eq!(got, expected, "partition {p}: in input order");
    }
    // The abandoned (and any broker-interrupted) transactions' records are in the log, just
    // not visible to read_committed.
    let all: usize = read_to_end(&bootstrap, CTP_OUT, 3, "read_uncommitted", CTP_RECORDS, T)
        .values()
        .map(Vec::len)
        .sum();
    assert!(
        all >= CTP_RECORDS + abandoned,
        "read_uncommitted sees the aborted records too: {all} < {CTP_RECORDS} + {abandoned}"
    );
    eprintln!("ctp test took {:?}", started.elapsed());
}

/// A 3 s transaction timeout (librdkafka wants `message.timeout.ms` no longer).
const SHORT_TIMEOUT: &[(&str, &str)] = &[
    ("transaction.timeout.ms", "3000"),
    ("message.timeout.ms", "3000"),
];

#[test]
fn a_transaction_left_open_by_a_broker_kill_9_is_aborted_by_its_timeout_after_restart() {
    let mut broker = broker(&[
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms",
        "500",
    ]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "stuck", 2);
    let producer = transactional_producer(&bootstrap, "txn-stuck", SHORT_TIMEOUT);
    let began = Instant::now();
    producer.begin_transaction().expect("begin");
    send(&producer, "stuck", 0, "open-0");
    send(&producer, "stuck", 1, "open-1");
    producer.flush(T).expect("flush");
    assert_eq!(
        watermarks(&bootstrap, "stuck", 2, "read_committed"),
        vec![(0, 0), (0, 0)],
        "the open transaction holds the last stable offset at its first record"
    );
    assert_eq!(
        watermarks(&bootstrap, "stuck", 2, "read_uncommitted"),
        vec![(0, 1), (0, 1)]
    );

    broker.kill_9();
    // The client dies with the broker: nobody will end this transaction but the coordinator.
    drop(producer);
    broker.restart().expect("restart");
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(10);
    let mut lso = watermarks(&bootstrap, "stuck", 2, "read_committed");
    while lso != vec![(0, 2), (0, 2)] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        lso = watermarks(&bootstrap, "stuck", 2, "read_committed");
    }
    assert_eq!(
        lso,
        vec![(0, 2), (0, 2)],
        "within 10 s of the restart the coordinator aborted the timed-out transaction: its \
         abort markers (offset 1) are written and the last stable offset is past them"
    );
    eprintln!(
        "aborted {:?} after the restart, {:?} after the transaction began (restart at {:?})",
        restarted.elapsed(),
        began.elapsed(),
        restarted - began
    );
    assert_eq!(
        watermarks(&bootstrap, "stuck", 2, "read_uncommitted"),
        vec![(0, 2), (0, 2)]
    );
    let seen = read_to_end(&bootstrap, "stuck", 2, "read_committed", 0, T);
    assert!(
        seen.is_empty(),
        "the aborted records are not visible: {seen:?}"
    );

    // A new transactional producer commits after the aborted transaction in both partitions.
    let after = transactional_producer(&bootstrap, "txn-after", &[]);
    after.begin_transaction().expect("begin");
    send(&after, "stuck", 0, "after-0");
    send(&after, "stuck", 1, "after-1");
    after.commit_transaction(T).expect("commit");
    let seen = read_to_end(&bootstrap, "stuck", 2, "read_committed", 2, T);
    assert_eq!(
        seen,
        BTreeMap::from([
            (0, vec!["after-0".to_string()]),
            (1, vec!["after-1".to_string()])
        ]),
        "read_committed reads past the aborted transaction to the committed one"
    );
    let seen = read_to_end(&bootstrap, "stuck", 2, "read_uncommitted", 4, T);
    assert_eq!(
        seen,
        BTreeMap::from([
            (0, vec!["open-0".to_string(), "after-0".to_string()]),
            (1, vec!["open-1".to_string(), "after-1".to_string()]),
        ])
    );
    // The timed-out transactional id is usable again (its epoch was bumped by the abort).
    let again = transactional_producer(&bootstrap, "txn-stuck", SHORT_TIMEOUT);
    again.begin_transaction().expect("begin");
    send(&again, "stuck", 0, "again-0");
    again.commit_transaction(T).expect("commit");
    let seen = read_to_end(&bootstrap, "stuck", 2, "read_committed", 3, T);
    assert_eq!(
        seen.get(&0),
        Some(&vec!["after-0".to_string(), "again-0".to_string()])
    );
}

#[test]
fn committed_and_aborted_transactions_keep_their_outcome_across_broker_kill_9() {
    let mut broker = broker(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "durable", 2);
    let producer = transactional_producer(&bootstrap, "txn-durable", &[]);
    let mut committed: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut all: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (name, commit) in [("a", true), ("b", false), ("c", true)] {
        producer.begin_transaction().expect("begin");
        for i in 0..10 {
            let p = i % 2;
            let value = format!("{name}-{i}");
            send(&producer, "durable", p, &value);
            all.entry(p).or_default().push(value.clone());
            if commit {
                committed.entry(p).or_default().push(value);
            }
        }
        if commit {
            producer.commit_transaction(T).expect("commit");
        } else {
            producer.flush(T).expect("flush");
            producer.abort_transaction(T).expect("abort");
        }
    }
    // Straight after the last commit returned: its markers may still be on their way.
    broker.kill_9();
    drop(producer);
    broker.restart().expect("restart");
    let seen = read_to_end(&bootstrap, "durable", 2, "read_committed", 10, T);
    assert_eq!(
        seen, committed,
        "after kill -9: the committed transactions, in order"
    );
    let seen = read_to_end(&bootstrap, "durable", 2, "read_uncommitted", 30, T);
    assert_eq!(seen, all, "after kill -9: every record");
    // The same transactional id continues after the restart.
    let producer = transactional_producer(&bootstrap, "txn-durable", &[]);
    producer.begin_transaction().expect("begin");
    send(&producer, "durable", 0, "d-0");
    producer.commit_transaction(T).expect("commit");
    committed.entry(0).or_default().push("d-0".to_string());
    let seen = read_to_end(&bootstrap, "durable", 2, "read_committed", 11, T);
    assert_eq!(seen, committed);
}
