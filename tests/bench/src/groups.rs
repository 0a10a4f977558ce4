//! `runnel-bench --groups`: how long a 10-member group takes to stabilise after an 11th member
//! joins (and after it leaves), and how many offset commits per second the coordinator takes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 100;

/// A member polling on its own thread and publishing its assignment.
struct Member {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn start(
        bootstrap: &str,
        group: &str,
        topic: &str,
        heartbeat_ms: u32,
    ) -> anyhow::Result<Member> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", heartbeat_ms.to_string())
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "range")
            .create()?;
        consumer.subscribe(&[topic])?;
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (owned.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(10));
                let now: BTreeSet<i32> = consumer
                    .assignment()
                    .map(|t| t.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                if let Ok(mut g) = o.lock() {
                    *g = now;
                }
            }
        });
        Ok(Member {
            owned,
            stop,
            thread: Some(thread),
        })
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every member owns a share and together they own every partition exactly once.
fn stable(members: &[Member]) -> bool {
    let sets: Vec<BTreeSet<i32>> = members.iter().map(Member::owned).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    total == PARTITIONS as usize
        && union.len() == PARTITIONS as usize
        && sets.iter().all(|s| !s.is_empty())
}

fn wait_stable(members: &[Member], timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    // The old assignment is still "stable" until the rebalance starts: wait for a change.
    while !stable(members) {
        if start.elapsed() > timeout {
            anyhow::bail!("group did not stabilise within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed())
}

fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in runtime.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn stabilisation(bootstrap: &str, heartbeat_ms: u32, rounds: usize) -> anyhow::Result<()> {
    let topic = format!("group-bench-{heartbeat_ms}-{}", std::process::id());
    create_topic(bootstrap, &topic)?;
    let group = format!("bench-group-{heartbeat_ms}");
    let mut members = Vec::new();
    for _ in 0..10 {
        members.push(Member::start(bootstrap, &group, &topic, heartbeat_ms)?);
    }
    let first = wait_stable(&members, Duration::from_secs(60))?;
    println!(
        "  10 members from nothing: stable after {} ms (includes group.initial.rebalance.delay.ms)",
        first.as_millis()
    );
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before: Vec<BTreeSet<i32>> = members.iter().map(Member::owned).collect();
        let start = Instant::now();
        members.push(Member::start(bootstrap, &group, &topic, heartbeat_ms)?);
        while members
            .iter()
            .take(10)
            .map(Member::owned)
            .collect::<Vec<_>>()
            == before
            || !stable(&members)
        {
            if start.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("11 members did not stabilise within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        joins.push(start.elapsed());
        let start = Instant::now();
        drop(members.pop());
        wait_stable(&members, Duration::from_secs(60))?;
        while members.iter().map(|m| m.owned().len()).sum::<usize>() != PARTITIONS as usize
            || members.iter().any(|m| m.owned().len() != 10)
        {
            if start.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("10 members did not stabilise after a leave within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        leaves.push(start.elapsed());
    }
    joins.sort();
    leaves.sort();
    let ms = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize].as_millis();
    println!(
        "  heartbeat.interval.ms={heartbeat_ms}: 11th member joins -> stable in p50 {} ms, max {} ms; it leaves -> stable in p50 {} ms, max {} ms ({rounds} rounds)",
        ms(&joins, 0.5),
        ms(&joins, 1.0),
        ms(&leaves, 0.5),
        ms(&leaves, 1.0)
    );
    Ok(())
}

/// Synchronous commits of one partition's offset by `clients` consumers at once, for `secs`.
fn commits(bootstrap: &str, clients: usize, secs: u64) -> anyhow::Result<f64> {
    let topic = format!("commit-bench-{}", std::process::id());
    let _ = create_topic(bootstrap, &topic);
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut threads = Vec::new();
    for c in 0..clients {
        let bootstrap = bootstrap.to_string();
        let topic = topic.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("commit-bench-{c}"))
                .set("enable.auto.commit", "false")
                .create()?;
            let mut n = 0u64;
            while Instant::now() < stop {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, c as i32 % PARTITIONS, Offset::Offset(n as i64))?;
                consumer.commit(&tpl, CommitMode::Sync)?;
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("commit thread panicked"))??;
    }
    Ok(total as f64 / secs as f64)
}

pub(crate) fn run(bootstrap: &str) -> anyhow::Result<()> {
    println!("group stabilisation (100 partitions, range assignor, eager rebalancing):");
    stabilisation(bootstrap, 3000, 5)?;
    stabilisation(bootstrap, 100, 5)?;
    println!("offset commits (synchronous, one partition per commit):");
    for clients in [1, 8, 32] {
        println!(
            "  {clients} committing clients: {:.0} commits/s",
            commits(bootstrap, clients, 5)?
        );
    }
    Ok(())
}
