//! librdkafka (the `rdkafka` crate) against real `runnel` processes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use runnel_tests::Broker;

type Record = (i32, i64, Vec<u8>, Vec<u8>);

fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// A consumer for `assign`-based reads (librdkafka needs a `group.id` even to assign).
fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "runnel-e2e")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("consumer")
}

/// Reads every partition from the beginning until `expected` records arrived or `timeout`.
fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer = consumer(bootstrap, &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(expected);
    let deadline = Instant::now() + timeout;
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn hundred_thousand_keyed_messages_round_trip_in_order_per_partition() {
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "orders", 6, &[]);
    let producer = producer(&bootstrap, &[]);
    const N: usize = 100_000;
    for i in 0..N {
        let key = format!("key-{}", i % 97);
        let value = format!("value-{i}");
        let mut record = BaseRecord::to("orders").key(&key).payload(&value);
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
    producer.flush(Duration::from_secs(60)).expect("flush");
    let records = consume_all(&bootstrap, "orders", 6, N, Duration::from_secs(60));
    assert_eq!(records.len(), N, "every produced message is consumed");
    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut last_in_partition: HashMap<i32, (i64, usize)> = HashMap::new();
    let mut by_key_last: HashMap<Vec<u8>, usize> = HashMap::new();
    for (partition, offset, key, value) in &records {
        let p = *partition_of_key.entry(key.clone()).or_insert(*partition);
        assert_eq!(
            p,
            *partition,
            "key {:?} moved partition",
            String::from_utf8_lossy(key)
        );
        let seq: usize = String::from_utf8_lossy(value)
            .trim_start_matches("value-")
            .parse()
            .expect("value");
        assert_eq!(
            format!("key-{}", seq % 97).as_bytes(),
            &key[..],
            "key and value belong together"
        );
        if let Some((last_offset, _)) = last_in_partition.get(partition) {
            assert_eq!(
                *offset,
                last_offset + 1,
                "offsets are contiguous in partition {partition}"
            );
        } else {
            assert_eq!(*offset, 0, "partition {partition} starts at offset 0");
        }
        last_in_partition.insert(*partition, (*offset, seq));
        if let Some(prev) = by_key_last.insert(key.clone(), seq) {
            assert!(prev < seq, "per-key order kept");
        }
    }
    assert!(
        last_in_partition.len() > 1,
        "messages spread over partitions"
    );
}

#[test]
fn every_compression_codec_round_trips() {
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&bootstrap, &topic, 1, &[]);
        let producer = producer(&bootstrap, &[("compression.type", codec)]);
        for i in 0..2000 {
            let value = format!("{codec} message {i} {}", "padding ".repeat(10));
            producer
                .send(BaseRecord::<(), _>::to(&topic).payload(&value))
                .expect("send");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        let records = consume_all(&bootstrap, &topic, 1, 2000, Duration::from_secs(30));
        assert_eq!(records.len(), 2000, "{codec}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.1, i as i64, "{codec} offsets");
            assert!(
                String::from_utf8_lossy(&r.3).starts_with(&format!("{codec} message {i} ")),
                "{codec} content"
            );
        }
    }
}

/// Collects the payloads the broker acknowledged (delivery reports without error).
struct Acks(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            if let Ok(mut acked) = self.0.lock() {
                acked.push(m.payload().unwrap_or_default().to_vec());
            }
        }
    }
}

#[test]
fn kill_9_during_a_produce_stream_loses_no_acknowledged_message() {
    let mut broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "durable", 2, &[]);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let producer: ThreadedProducer<Acks> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("acks", "all")
                .set("enable.idempotence", "false")
                .set("linger.ms", "2")
                .set("message.timeout.ms", "20000")
                .create_with_context(Acks(acked))
                .expect("producer");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let value = format!("m{i}");
                if producer
                    .send(BaseRecord::<(), _>::to("durable").payload(&value))
                    .is_ok()
                {
                    i += 1;
                }
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let _ = producer.flush(Duration::from_secs(20));
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let acked_before_kill = acked.lock().expect("lock").len();
    broker.kill_9();
    std::thread::sleep(Duration::from_millis(300));
    broker.restart().expect("restart");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Release);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked_before_kill > 0,
        "writes were acknowledged before the kill"
    );
    let records = consume_all(
        &bootstrap,
        "durable",
        2,
        acked.len() + 1_000_000,
        Duration::from_secs(10),
    );
    let present: std::collections::HashSet<Vec<u8>> = records.iter().map(|r| r.3.clone()).collect();
    let lost: Vec<String> = acked
        .iter()
        .filter(|a| !present.contains(*a))
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn offsets_for_times_finds_the_first_message_at_or_after_a_timestamp() {
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "timed", 1, &[]);
    let producer = producer(&bootstrap, &[]);
    let base = 1_700_000_000_000i64;
    for i in 0..100i64 {
        let value = format!("t{i}");
        producer
            .send(
                BaseRecord::<(), _>::to("timed")
                    .payload(&value)
                    .timestamp(base + i * 1000),
            )
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    let consumer = consumer(&bootstrap, &[]);
    for (ts, expected) in [
        (base, 0i64),
        (base + 42_500, 43),
        (base + 99_000, 99),
        (base + 200_000, -1),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("timed", 0, Offset::Offset(ts))
            .expect("tpl");
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(10))
            .expect("offsets_for_times");
        let offset = found.elements()[0].offset();
        match offset {
            Offset::Offset(o) => assert_eq!(o, expected, "timestamp {ts}"),
            Offset::End => assert_eq!(expected, -1, "timestamp {ts}"),
            other => panic!("unexpected {other:?} for {ts}"),
        }
    }
    let (low, high) = consumer
        .fetch_watermarks("timed", 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!((low, high), (0, 100));
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    let broker = Broker::start(&["--retention-check-interval-ms", "200"]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(
        &bootstrap,
        "short-lived",
        1,
        &[("segment.bytes", "2048"), ("retention.ms", "1000")],
    );
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    for i in 0..200 {
        let value = format!("{i:0100}");
        producer
            .send(BaseRecord::<(), _>::to("short-lived").payload(&value))
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    let consumer = consumer(&bootstrap, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut low = 0;
    while Instant::now() < deadline {
        low = consumer
            .fetch_watermarks("short-lived", 0, Duration::from_secs(5))
            .expect("watermarks")
            .0;
        if low > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        low > 100,
        "retention moved the log start past old segments (low watermark {low})"
    );
    let segments = std::fs::read_dir(broker.data_dir().join("short-lived-0"))
        .expect("partition dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(
        segments < 10,
        "old segment files were deleted ({segments} left)"
    );
}

#[test]
fn topics_configs_and_data_survive_clean_and_unclean_restarts() {
    use rdkafka::admin::{ConfigSource, ResourceSpecifier};
    let mut broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(
        &bootstrap,
        "kept",
        2,
        &[("retention.ms", "-1"), ("cleanup.policy", "compact")],
    );
    let producer = producer(&bootstrap, &[]);
    for i in 0..10 {
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to("kept").key(&key).payload("v"))
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    drop(producer);
    for unclean in [false, true] {
        if unclean {
            broker.kill_9();
        } else {
            broker.stop().expect("clean stop");
        }
        broker.restart().expect("restart");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let described = rt
            .block_on(
                admin.describe_configs([&ResourceSpecifier::Topic("kept")], &AdminOptions::new()),
            )
            .expect("describe_configs");
        let resource = described[0].as_ref().expect("topic described");
        let retention = resource.get("retention.ms").expect("retention.ms");
        assert_eq!(retention.value.as_deref(), Some("-1"), "unclean={unclean}");
        assert_eq!(retention.source, ConfigSource::DynamicTopic);
        assert_eq!(
            resource
                .get("cleanup.policy")
                .and_then(|e| e.value.as_deref()),
            Some("compact")
        );
        let records = consume_all(&bootstrap, "kept", 2, 10, Duration::from_secs(20));
        assert_eq!(records.len(), 10, "data survives (unclean={unclean})");
    }
}

#[test]
fn log_append_time_topics_stamp_the_broker_time() {
    use rdkafka::message::Timestamp;
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    create_topic(
        &bootstrap,
        "stamped",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    create_topic(&bootstrap, "created", 1, &[]);
    let producer = producer(&bootstrap, &[]);
    let client_time = 1_600_000_000_000i64;
    for topic in ["stamped", "created"] {
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .payload("x")
                    .timestamp(client_time),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let consumer = consumer(&bootstrap, &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("stamped", 0, Offset::Beginning)
        .expect("tpl");
    tpl.add_partition_offset("created", 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen.insert(m.topic().to_string(), m.timestamp());
        }
    }
    match seen.get("stamped") {
        Some(Timestamp::LogAppendTime(ts)) => {
            assert!((ts - now).abs() < 60_000, "broker time {ts} near {now}")
        }
        other => panic!("LogAppendTime topic gave {other:?}"),
    }
    assert_eq!(
        seen.get("created"),
        Some(&Timestamp::CreateTime(client_time))
    );
}

/// An idempotent producer that never hears some of its produce answers (the proxy swallows one
/// in 25 and cuts the connection) retries those batches; the broker's sequence checks keep
/// every message exactly once and in order.
#[test]
fn idempotent_producer_retries_through_cut_connections_without_duplicates() {
    let port = runnel_tests::free_port().expect("port");
    let proxy = runnel_tests::CuttingProxy::start(format!("127.0.0.1:{port}"), 25).expect("proxy");
    // Clients are told to connect through the proxy, so every connection can be cut.
    let advertised = format!("127.0.0.1:{}", proxy.port());
    let broker = Broker::start_at(port, &["--no-fsync", "--advertised-listener", &advertised])
        .expect("broker");
    create_topic(&broker.bootstrap(), "cut", 2, &[]);
    let producer = producer(
        &advertised,
        &[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
            ("retry.backoff.ms", "10"),
            ("linger.ms", "2"),
            ("batch.num.messages", "200"),
        ],
    );
    const N: usize = 20_000;
    for i in 0..N {
        let value = format!("{i}");
        let mut record = BaseRecord::<(), _>::to("cut")
            .payload(&value)
            .partition((i % 2) as i32);
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
    producer.flush(Duration::from_secs(120)).expect("flush");
    assert!(
        proxy.cuts() >= 1,
        "the proxy swallowed {} answers",
        proxy.cuts()
    );
    proxy.stop_cutting();
    let records = consume_all(&advertised, "cut", 2, N, Duration::from_secs(60));
    assert_eq!(records.len(), N, "every message exactly once");
    for p in 0..2 {
        let values: Vec<usize> = records
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| String::from_utf8_lossy(&r.3).parse().expect("value"))
            .collect();
        let expected: Vec<usize> = (0..N).filter(|i| i % 2 == p as usize).collect();
        let first_difference = values.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            values == expected,
            "partition {p} holds each message once, in order: {} values, {} expected, first \
             difference at {first_difference:?}",
            values.len(),
            expected.len()
        );
    }
}
