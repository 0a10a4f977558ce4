//! `runnel-bench --idle`: what idle partitions cost. Starts a cluster of `--brokers` broker
//! processes on loopback (each in its own AZ, every one a controller voter, as `runnel dev`
//! does), creates `--idle-topics` topics of `--idle-partitions` partitions at replication
//! factor 3 (so each of 3 brokers holds topics × partitions replicas), waits until every
//! partition has a leader, lets it settle, then reads each broker's CPU time (utime + stime
//! from /proc/<pid>/stat, so other processes on the machine do not inflate it) over
//! `--idle-secs` and prints it as % of one core. Also: how long creating the partitions took,
//! and how long a broker holding them takes to stop and start again (clean and after kill -9).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{free_port, proc_usage};

pub(crate) struct IdleArgs {
    pub runnel: PathBuf,
    pub brokers: u16,
    pub topics: usize,
    pub partitions: i32,
    pub settle_secs: u64,
    pub measure_secs: u64,
    pub no_fsync: bool,
}

struct Broker {
    id: u16,
    kafka: String,
    metrics: String,
    dir: PathBuf,
    child: Option<Child>,
    /// Lines the broker prints on stdout ("ready in N ms").
    stdout: Option<mpsc::Receiver<String>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    runnel: PathBuf,
    voters: String,
    no_fsync: bool,
    brokers: Vec<Broker>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(args: &IdleArgs) -> anyhow::Result<Cluster> {
        if !args.runnel.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p runnel-cli` or pass --runnel",
                args.runnel.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("runnel-bench-idle")
            .tempdir_in("target")
            .or_else(|_| tempfile::tempdir())?;
        let mut brokers = Vec::new();
        let mut voters = Vec::new();
        for id in 1..=args.brokers {
            let raft = free_port()?;
            voters.push(format!("{id}@127.0.0.1:{raft}"));
            brokers.push(Broker {
                id,
                kafka: format!("127.0.0.1:{}", free_port()?),
                metrics: format!("127.0.0.1:{}", free_port()?),
                dir: dir.path().join(format!("broker-{id}")),
                child: None,
                stdout: None,
            });
        }
        let mut cluster = Cluster {
            runnel: args.runnel.clone(),
            voters: voters.join(","),
            no_fsync: args.no_fsync,
            brokers,
            _dir: dir,
        };
        for i in 0..cluster.brokers.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.brokers.len() {
            cluster.wait_ready(i, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let b = &mut self.brokers[i];
        std::fs::create_dir_all(&b.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(b.dir.with_extension("log"))?;
        let mut cmd = Command::new(&self.runnel);
        cmd.arg("serve")
            .args(["--node-id", &b.id.to_string()])
            .args(["--listen", &b.kafka])
            .args(["--az", &format!("az-{}", b.id)])
            .args(["--controller-quorum-voters", &self.voters])
            .args(["--metrics-listen", &b.metrics])
            .arg("--data-dir")
            .arg(&b.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if self.no_fsync {
            cmd.arg("--no-fsync");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting broker {}", b.id))?;
        let out = child.stdout.take().context("broker stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        b.child = Some(child);
        b.stdout = Some(rx);
        Ok(())
    }

    /// Waits for the broker's "ready in N ms" line; returns N.
    fn wait_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<u64> {
        let b = &mut self.brokers[i];
        let rx = b.stdout.as_ref().context("broker not started")?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ms) = line
                        .split_once("ready in ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(|n| n.parse().ok())
                    {
                        return Ok(ms);
                    }
                }
                Err(_) => bail!(
                    "broker {} not ready within {timeout:?} (log: {})",
                    b.id,
                    b.dir.with_extension("log").display()
                ),
            }
        }
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.brokers[i].child.as_ref().map(Child::id)
    }

    fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.kafka.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGTERM (or SIGKILL) and wait for the exit; returns how long stopping took.
    fn stop(&mut self, i: usize, kill: bool) -> anyhow::Result<Duration> {
        let b = &mut self.brokers[i];
        let mut child = b.child.take().context("broker not running")?;
        let started = Instant::now();
        if kill {
            child.kill()?;
        } else {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()?;
        }
        child.wait()?;
        b.stdout = None;
        Ok(started.elapsed())
    }
}

/// Partitions (of `topics`) that `broker` reports without a leader, or None if it cannot answer.
fn leaderless(broker: &str, topics: &[String]) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .ok()?;
    let mut missing = 0;
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .ok()?;
        let topic = md.topics().first()?;
        if topic.partitions().is_empty() {
            return None;
        }
        missing += topic
            .partitions()
            .iter()
            .filter(|p| p.leader() < 0 || p.error().is_some())
            .count();
    }
    Some(missing)
}

/// Waits until every broker reports a leader for every partition; returns how long it took.
fn wait_for_leaders(
    cluster: &Cluster,
    topics: &[String],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let all = cluster
            .brokers
            .iter()
            .filter(|b| b.child.is_some())
            .all(|b| leaderless(&b.kafka, topics) == Some(0));
        if all {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("partitions still without a leader after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/metrics` of a broker, as text.
fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of every sample of metric `name` (any labels).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU a spinning thread of this process gets in one second of wall time (1.0 = a whole core).
fn busy_loop_share() -> f64 {
    let me = std::process::id();
    let before = proc_usage(me).map_or(0, |u| u.1);
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    let after = proc_usage(me).map_or(0, |u| u.1);
    (after - before) as f64 / 1000.0 / started.elapsed().as_secs_f64()
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub(crate) fn run(args: &IdleArgs) -> anyhow::Result<()> {
    let replicas = args.topics * args.partitions as usize * 3 / usize::from(args.brokers.max(1));
    println!(
        "# runnel-bench --idle: {} brokers, {} topics x {} partitions, RF 3 ({} replicas per broker), settle {} s, measure {} s{}",
        args.brokers,
        args.topics,
        args.partitions,
        replicas,
        args.settle_secs,
        args.measure_secs,
        if args.no_fsync { ", brokers --no-fsync" } else { "" }
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cores} cores, load average {}, a busy loop here gets {:.0}% of a core",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        busy_loop_share() * 100.0
    );
    let mut cluster = Cluster::start(args)?;
    let bootstrap = cluster.bootstrap();
    println!("cluster up: {bootstrap}");

    // Empty cluster first: the floor the partitions add to.
    let empty = measure(&cluster, Duration::from_secs(args.measure_secs.min(10)))?;
    print_cpu("no topics", &empty);

    let topics: Vec<String> = (0..args.topics).map(|t| format!("idle-{t}")).collect();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("socket.timeout.ms", "300000")
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut retries = 0;
    for t in &topics {
        let new = NewTopic::new(t, args.partitions, TopicReplication::Fixed(3));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(300)));
        let mut retried = false;
        loop {
            let r = runtime
                .block_on(admin.create_topics([&new], &opts))?
                .pop()
                .context("no CreateTopics result")?;
            match r {
                Ok(_) => break,
                // A retry of a creation that went through after all.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) if retried => break,
                // Answered by a broker that forwarded the proposal and gave up waiting for it
                // (5 s): it may still be applied.
                Err((
                    _,
                    RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::RequestTimedOut,
                )) if started.elapsed() < Duration::from_secs(600) => {
                    retries += 1;
                    retried = true;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err((t, e)) => bail!("creating {t}: {e}"),
            }
        }
    }
    let created = started.elapsed();
    if retries > 0 {
        println!("create: {retries} CreateTopics retries (NOT_LEADER_OR_FOLLOWER / timeout)");
    }
    let leaders = wait_for_leaders(&cluster, &topics, Duration::from_secs(300))?;
    println!(
        "create: {} partitions (RF 3) answered in {:.2} s; every partition led (seen by every broker) {:.2} s after that",
        args.topics * args.partitions as usize,
        created.as_secs_f64(),
        leaders.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let idle = measure(&cluster, Duration::from_secs(args.measure_secs))?;
    print_cpu(&format!("{replicas} replicas each"), &idle);

    // Restart the last broker: clean (SIGTERM, logs checkpointed), then after kill -9.
    let last = cluster.brokers.len() - 1;
    for kill in [false, true] {
        let stopping = cluster.stop(last, kill)?;
        let size = du(&cluster.brokers[last].dir);
        let spawned = Instant::now();
        cluster.spawn(last)?;
        let port = loop {
            if TcpStream::connect(&cluster.brokers[last].kafka).is_ok() {
                break spawned.elapsed();
            }
            if spawned.elapsed() > Duration::from_secs(120) {
                bail!("restarted broker does not listen");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let ready_ms = cluster.wait_ready(last, Duration::from_secs(120))?;
        let ready = spawned.elapsed();
        let led = wait_for_leaders(&cluster, &topics, Duration::from_secs(300))?;
        println!(
            "restart ({}): stopped in {:.2} s; data dir {:.1} MiB; port accepting {:.2} s after spawn, registered (\"ready in {ready_ms} ms\") {:.2} s, its metadata shows every leader {:.2} s after that",
            if kill { "kill -9" } else { "SIGTERM" },
            stopping.as_secs_f64(),
            size as f64 / 1048576.0,
            port.as_secs_f64(),
            ready.as_secs_f64(),
            led.as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(args.settle_secs));
    }
    let after = measure(&cluster, Duration::from_secs(args.measure_secs.min(10)))?;
    print_cpu("after the restarts", &after);
    Ok(())
}

struct Sample {
    broker: u16,
    cpu_share: f64,
    rss_kib: u64,
    raft_bytes_per_s: f64,
}

fn measure(cluster: &Cluster, over: Duration) -> anyhow::Result<Vec<Sample>> {
    let metric = "runnel_raft_bytes_sent_total";
    let before: Vec<_> = (0..cluster.brokers.len())
        .map(|i| {
            (
                cluster.pid(i).and_then(proc_usage),
                scrape(&cluster.brokers[i].metrics).map(|t| metric_sum(&t, metric)),
            )
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(over);
    let secs = started.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for (i, (cpu0, bytes0)) in before.into_iter().enumerate() {
        let cpu1 = cluster.pid(i).and_then(proc_usage);
        let bytes1 = scrape(&cluster.brokers[i].metrics).map(|t| metric_sum(&t, metric));
        let (Some(c0), Some(c1)) = (cpu0, cpu1) else {
            bail!("broker {} is not running", cluster.brokers[i].id);
        };
        out.push(Sample {
            broker: cluster.brokers[i].id,
            cpu_share: (c1.1 - c0.1) as f64 / 1000.0 / secs,
            rss_kib: c1.0,
            raft_bytes_per_s: match (bytes0, bytes1) {
                (Some(a), Some(b)) => (b - a) / secs,
                _ => f64::NAN,
            },
        });
    }
    Ok(out)
}

fn print_cpu(what: &str, samples: &[Sample]) {
    let parts: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "broker {}: {:.2}% of a core, RSS {:.1} MiB, raft {:.1} KB/s sent",
                s.broker,
                s.cpu_share * 100.0,
                s.rss_kib as f64 / 1024.0,
                s.raft_bytes_per_s / 1000.0
            )
        })
        .collect();
    println!("idle CPU ({what}): {}", parts.join("; "));
}
