//! `runnel-bench`: drives a Runnel broker with librdkafka producers and consumers (the knobs of
//! librdkafka's `rdkafka_performance`) and prints msgs/s, MB/s and produce latency
//! percentiles next to the raw sequential write speed of the data disk and the loopback TCP
//! speed measured in the same run, plus the broker's RSS and CPU time.
//!
//! Without `--bootstrap` it starts its own broker (`target/release/runnel`, or `--runnel`)
//! on a free loopback port in a temporary directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

mod groups;
mod idle;
mod transactions;

#[derive(Debug, Parser)]
#[command(about = "Benchmark a Runnel broker with librdkafka")]
struct Args {
    /// Broker to drive; when absent a broker is started for the run.
    #[arg(long)]
    bootstrap: Option<String>,
    /// The runnel binary to start when no --bootstrap is given.
    #[arg(long, default_value = "target/release/runnel")]
    runnel: PathBuf,
    /// Start the broker with --no-fsync (page cache mode).
    #[arg(long)]
    no_fsync: bool,
    #[arg(long, default_value_t = 2_000_000)]
    messages: usize,
    /// Message value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replication factor of the benchmark topic (3 against a `runnel dev` cluster).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Measure consumer groups instead: time for a 10-member group to stabilise after a
    /// member joins or leaves, and offset commits per second.
    #[arg(long)]
    groups: bool,
    /// Measure transactions instead: transactions/s of one transactional producer
    /// committing `--txn-records` records per transaction, beside the same records without
    /// transactions.
    #[arg(long)]
    transactions: bool,
    /// Transactions to commit with --transactions.
    #[arg(long, default_value_t = 2000)]
    txn_count: usize,
    /// Records per transaction with --transactions.
    #[arg(long, default_value_t = 100)]
    txn_records: usize,
    /// Produce at this many messages/s instead of as fast as possible, so the latency
    /// percentiles are the cluster's own rather than queueing in the client (0: unpaced).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Measure what idle partitions cost instead: start a cluster of --brokers processes,
    /// create --idle-topics x --idle-partitions partitions at RF 3, and print each broker's
    /// CPU (% of one core) while nothing is produced; also creation and restart times.
    #[arg(long)]
    idle: bool,
    /// Brokers of the --idle cluster.
    #[arg(long, default_value_t = 3)]
    brokers: u16,
    #[arg(long, default_value_t = 3)]
    idle_topics: usize,
    #[arg(long, default_value_t = 1000)]
    idle_partitions: i32,
    /// Seconds to wait after every partition has a leader, before measuring.
    #[arg(long, default_value_t = 10)]
    idle_settle_secs: u64,
    /// Seconds of CPU measurement.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Bytes for the raw disk and loopback measurements.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    raw_bytes: usize,
}

struct Latencies(Mutex<Vec<u32>>);

struct Ctx(Arc<Latencies>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        if result.is_ok() {
            let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            if let Ok(mut v) = self.0 .0.lock() {
                v.push(micros);
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// fsyncs per second of the disk holding `dir` (4 KiB write + fsync, for one second): the
/// bound on synchronous commits that each wait for their own fsync.
fn fsyncs_per_s(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(n as f64 / secs)
}

/// Sequential write speed of the disk holding `dir`: 1 MiB writes, one fsync at the end.
fn raw_disk_mb_s(dir: &Path, bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("raw-write-test");
    let chunk = vec![0x5au8; 1024 * 1024];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..bytes / chunk.len() {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(bytes as f64 / 1048576.0 / secs)
}

/// Loopback TCP throughput: one connection, 64 KiB writes.
fn loopback_mb_s(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let chunk = vec![0u8; 64 * 1024];
    let start = Instant::now();
    for _ in 0..bytes / chunk.len() {
        s.write_all(&chunk)?;
    }
    drop(s);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(received as f64 / 1048576.0 / start.elapsed().as_secs_f64())
}

/// Resident memory (KiB) and CPU time (ms) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks * 10))
}

struct OwnBroker {
    child: Child,
    _dir: tempfile::TempDir,
    ready_ms: u128,
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(args: &Args) -> anyhow::Result<(OwnBroker, String, PathBuf)> {
    if !args.runnel.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p runnel-cli` or pass --runnel",
            args.runnel.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("runnel-bench")
        .tempdir_in("target")
        .or_else(|_| tempfile::tempdir())?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&args.runnel);
    cmd.args(["serve", "--data-dir"]).arg(dir.path()).args([
        "--listen",
        &listen,
        "--metrics-listen",
        "",
    ]);
    if args.no_fsync {
        cmd.arg("--no-fsync");
    }
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the broker")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!("broker did not start listening on {listen} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready_ms = start.elapsed().as_millis();
    let data = dir.path().to_path_buf();
    Ok((
        OwnBroker {
            child,
            _dir: dir,
            ready_ms,
        },
        listen,
        data,
    ))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.idle {
        return idle::run(&idle::IdleArgs {
            runnel: args.runnel.clone(),
            brokers: args.brokers,
            topics: args.idle_topics,
            partitions: args.idle_partitions,
            settle_secs: args.idle_settle_secs,
            measure_secs: args.idle_secs,
            no_fsync: args.no_fsync,
        });
    }
    let (own, bootstrap, data_dir) = match &args.bootstrap {
        Some(b) => (None, b.clone(), std::env::temp_dir()),
        None => {
            let (own, listen, data) = start_broker(&args)?;
            (Some(own), listen, data)
        }
    };
    let pid = own.as_ref().map(|b| b.child.id());
    if args.groups {
        println!(
            "# runnel-bench --groups{}",
            if args.no_fsync {
                ", broker --no-fsync"
            } else {
                ""
            }
        );
        let disk_fsyncs = fsyncs_per_s(&data_dir)?;
        println!("machine: {disk_fsyncs:.0} fsyncs/s (4 KiB write + fsync) on the data disk");
        return groups::run(&bootstrap);
    }
    if args.transactions {
        println!(
            "# runnel-bench --transactions --txn-count {} --txn-records {} --partitions {} --size {}{}",
            args.txn_count,
            args.txn_records,
            args.partitions,
            args.size,
            if args.no_fsync {
                ", broker --no-fsync"
            } else {
                ""
            }
        );
        let disk_fsyncs = fsyncs_per_s(&data_dir)?;
        println!("machine: {disk_fsyncs:.0} fsyncs/s (4 KiB write + fsync) on the data disk");
        let before = pid.and_then(proc_usage);
        let started = Instant::now();
        transactions::run(
            &bootstrap,
            args.txn_count,
            args.txn_records,
            args.partitions,
            args.size,
        )?;
        if let (Some(before), Some(after)) = (before, pid.and_then(proc_usage)) {
            let cpu = (after.1 - before.1) as f64 / 1000.0;
            println!(
                "broker: {:.1} s CPU over {:.1} s ({:.0}% of one core), RSS {} MiB",
                cpu,
                started.elapsed().as_secs_f64(),
                cpu * 100.0 / started.elapsed().as_secs_f64(),
                after.0 / 1024
            );
        }
        return Ok(());
    }
    println!("# runnel-bench: {} messages of {} bytes, acks={}, partitions={}, replication factor={}, linger.ms={}, compression={}{}{}",
        args.messages, args.size, args.acks, args.partitions, args.replication_factor, args.linger_ms, args.compression,
        if args.no_fsync { ", broker --no-fsync" } else { "" },
        if args.rate > 0 { format!(", paced at {} msgs/s", args.rate) } else { String::new() });
    if let Some(b) = &own {
        println!(
            "broker ready (port accepting) {} ms after spawn",
            b.ready_ms
        );
    }
    let idle = pid.and_then(proc_usage);
    let disk = raw_disk_mb_s(&data_dir, args.raw_bytes)?;
    let loopback = loopback_mb_s(args.raw_bytes)?;
    println!("machine: raw sequential disk write {disk:.0} MB/s (1 MiB writes + fsync), loopback TCP {loopback:.0} MB/s");

    let topic = format!("bench-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(
        &topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    for r in runtime.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }

    // Produce.
    let latencies = Arc::new(Latencies(Mutex::new(Vec::with_capacity(args.messages))));
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.type", &args.compression)
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("batch.size", "1000000")
        .create_with_context(Ctx(latencies.clone()))?;
    let payload = vec![b'x'; args.size];
    let before = pid.and_then(proc_usage);
    let start = Instant::now();
    for i in 0..args.messages {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let mut record: BaseRecord<'_, (), [u8], Box<Instant>> =
            BaseRecord::with_opaque_to(&topic, Box::new(Instant::now())).payload(&payload[..]);
        if args.partitions > 1 {
            record = record.partition((i % args.partitions as usize) as i32);
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((_, rejected)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    pending = rejected;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produce_secs = start.elapsed().as_secs_f64();
    let after_produce = pid.and_then(proc_usage);
    let mut lat = std::mem::take(
        &mut *latencies
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("latency lock"))?,
    );
    lat.sort_unstable();
    let delivered = lat.len();
    let mb = (args.messages * args.size) as f64 / 1048576.0;
    println!(
        "produce: {:.0} msgs/s, {:.1} MB/s ({} delivered in {:.2} s); latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        delivered as f64 / produce_secs,
        mb / produce_secs,
        delivered,
        produce_secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999)
    );

    // Consume everything back from the beginning.
    let mut consumer_config = ClientConfig::new();
    if let Ok(debug) = std::env::var("RUNNEL_BENCH_DEBUG") {
        consumer_config.set("debug", debug);
    }
    let consumer: BaseConsumer = consumer_config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "2097151")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut consumed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while consumed < delivered && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                consumed += 1;
                let _ = m.payload();
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {}
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();
    let after_consume = pid.and_then(proc_usage);
    println!(
        "consume: {:.0} msgs/s, {:.1} MB/s ({} of {} in {:.2} s)",
        consumed as f64 / consume_secs,
        (consumed * args.size) as f64 / 1048576.0 / consume_secs,
        consumed,
        delivered,
        consume_secs
    );
    // librdkafka's C consumer without a group (kcat), when installed: the group-less fetch
    // path, unaffected by the missing group coordinator.
    let kcat_start = Instant::now();
    let kcat = Command::new("kcat")
        .args([
            "-b",
            &bootstrap,
            "-C",
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o\n",
        ])
        .args([
            "-X",
            "fetch.max.bytes=52428800",
            "-X",
            "max.partition.fetch.bytes=10485760",
        ])
        .stderr(Stdio::null())
        .output();
    match kcat {
        Ok(out) if out.status.success() => {
            let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
            let secs = kcat_start.elapsed().as_secs_f64();
            println!(
                "consume (kcat, no group): {:.0} msgs/s, {:.1} MB/s ({} in {:.2} s, including kcat start and its 0.5 s end-of-partition wait)",
                lines as f64 / secs,
                (lines * args.size) as f64 / 1048576.0 / secs,
                lines,
                secs
            );
        }
        _ => println!("consume (kcat): skipped, kcat not installed"),
    }
    if let (Some(idle), Some(b), Some(p), Some(c)) = (idle, before, after_produce, after_consume) {
        println!(
            "broker: RSS idle {:.1} MiB, after produce {:.1} MiB, after consume {:.1} MiB; CPU {:.0}% of one core while producing, {:.0}% while consuming",
            idle.0 as f64 / 1024.0,
            p.0 as f64 / 1024.0,
            c.0 as f64 / 1024.0,
            100.0 * (p.1 - b.1) as f64 / 1000.0 / produce_secs,
            100.0 * (c.1 - p.1) as f64 / 1000.0 / consume_secs
        );
    }
    Ok(())
}
