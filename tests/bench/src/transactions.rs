//! `runnel-bench --transactions`: transactions per second of one transactional producer
//! (librdkafka) committing transactions of `--txn-records` records each over `--partitions`
//! partitions, beside the same records sent by an idempotent producer without transactions,
//! so the cost of the coordinator round trips and markers is visible.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const T: Duration = Duration::from_secs(60);

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in runtime.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, payload: &[u8]) {
    let mut record = BaseRecord::<(), [u8]>::to(topic)
        .payload(payload)
        .partition(partition);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                producer.poll(Duration::from_millis(1));
                record = r;
            }
        }
    }
}

/// Waits for every delivery report, polling every millisecond. The crate's `flush` polls in
/// 100 ms steps, which would make every transaction (commit flushes first) take 100 ms.
fn drain(producer: &BaseProducer) {
    let deadline = Instant::now() + T;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

fn producer(bootstrap: &str, transactional_id: Option<&str>) -> anyhow::Result<BaseProducer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id);
    }
    Ok(c.create()?)
}

pub(crate) fn run(
    bootstrap: &str,
    transactions: usize,
    records: usize,
    partitions: i32,
    size: usize,
) -> anyhow::Result<()> {
    let payload = vec![b'x'; size];
    let topic = format!("bench-txn-{}", std::process::id());
    create_topic(bootstrap, &topic, partitions)?;
    let p = producer(bootstrap, Some("runnel-bench"))?;
    p.init_transactions(T)?;
    // Warm-up: the first transaction finds the coordinators and loads their partitions.
    p.begin_transaction()?;
    send(&p, &topic, 0, &payload);
    p.commit_transaction(T)?;
    let mut latencies = Vec::with_capacity(transactions);
    let start = Instant::now();
    for t in 0..transactions {
        let began = Instant::now();
        p.begin_transaction()?;
        for i in 0..records {
            send(
                &p,
                &topic,
                ((t * records + i) % partitions as usize) as i32,
                &payload,
            );
        }
        drain(&p);
        p.commit_transaction(T)?;
        latencies.push(began.elapsed());
        if (t + 1) % 200 == 0 {
            eprintln!("  {} / {transactions} transactions", t + 1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    let total = transactions * records;
    println!(
        "transactional: {transactions} transactions of {records} records ({} bytes) over {partitions} partitions in {secs:.2} s: {:.0} transactions/s, {:.0} msgs/s; commit latency p50 {:.1} ms, p99 {:.1} ms",
        size,
        transactions as f64 / secs,
        total as f64 / secs,
        pct(0.5),
        pct(0.99),
    );
    drop(p);

    let p = producer(bootstrap, None)?;
    let start = Instant::now();
    for i in 0..total {
        send(&p, &topic, (i % partitions as usize) as i32, &payload);
    }
    p.flush(T)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "idempotent, no transactions: {total} records in {secs:.2} s: {:.0} msgs/s",
        total as f64 / secs
    );
    // The same records, flushed every `records` as a transaction would be: the round trip
    // each commit waits for, without the coordinator.
    let start = Instant::now();
    for t in 0..transactions {
        for i in 0..records {
            send(
                &p,
                &topic,
                ((t * records + i) % partitions as usize) as i32,
                &payload,
            );
        }
        drain(&p);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "idempotent, flushed every {records} records: {:.0} flushes/s, {:.0} msgs/s",
        transactions as f64 / secs,
        total as f64 / secs
    );
    Ok(())
}
