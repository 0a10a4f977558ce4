//! `runnel dev`: a whole multi-AZ cluster on this machine. Starts `--brokers` broker
//! processes (this same binary, `runnel serve`) on 127.0.0.1, broker `i` in AZ
//! `az-((i - 1) % azs + 1)`, with its data under `<data-dir>/broker-<i>`, Kafka port
//! `base-port + i - 1` and Raft port `base-port + 100 + i - 1`; prints the bootstrap string;
//! and stops every broker on Ctrl-C (SIGTERM, so each checkpoints, and prints the bytes it
//! exchanged with other AZs). A broker that dies is reported, not restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// How many brokers.
    #[arg(long, default_value_t = 3)]
    brokers: u16,
    /// How many of them (the first ones) are controller voters, holding the cluster
    /// metadata quorum; the others join as brokers that follow it.
    #[arg(long, default_value_t = 3)]
    controller_voters: u16,
    /// How many availability zones to spread them over.
    #[arg(long, default_value_t = 3)]
    azs: u16,
    /// Where the brokers keep their data.
    #[arg(long, default_value = "./runnel-dev")]
    data_dir: PathBuf,
    /// Kafka port of broker 1; broker i listens on base-port + i - 1, and for Raft on
    /// base-port + 100 + i - 1.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// Acknowledge from the page cache (faster; loses acknowledged writes on power loss).
    #[arg(long)]
    no_fsync: bool,
    /// One-way delay, in ms, injected on replication traffic between brokers in different
    /// AZs (an acks=all produce then waits at least one inter-AZ round trip).
    #[arg(long, default_value_t = 0)]
    az_latency_ms: u64,
}

struct Cluster(Vec<(u16, Child)>);

impl Drop for Cluster {
    /// SIGTERM to every broker, then SIGKILL to any still running after 10 s.
    fn drop(&mut self) {
        for (_, child) in &self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (id, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("runnel dev: broker {id} did not stop in 10 s; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.brokers == 0 || args.azs == 0 {
        bail!("--brokers and --azs must be at least 1");
    }
    if u32::from(args.base_port) + 100 + u32::from(args.brokers) > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for {} brokers",
            args.base_port,
            args.brokers
        );
    }
    let exe = std::env::current_exe().context("cannot find the runnel binary")?;
    let kafka_port = |i: u16| args.base_port + i - 1;
    let raft_port = |i: u16| args.base_port + 100 + i - 1;
    if args.controller_voters == 0 {
        bail!("--controller-voters must be at least 1");
    }
    let voter_count = args.controller_voters.min(args.brokers);
    let voters: Vec<String> = (1..=voter_count)
        .map(|i| format!("{i}@127.0.0.1:{}", raft_port(i)))
        .collect();
    let voters = voters.join(",");
    let mut cluster = Cluster(Vec::new());
    for i in 1..=args.brokers {
        let dir = args.data_dir.join(format!("broker-{i}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let az = format!("az-{}", (i - 1) % args.azs + 1);
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &i.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", kafka_port(i))])
            .args(["--az", &az])
            .args(["--controller-quorum-voters", &voters])
            .args(
                (i > voter_count)
                    .then(|| {
                        [
                            "--raft-listen".to_string(),
                            format!("127.0.0.1:{}", raft_port(i)),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(["--metrics-listen", ""])
            .arg("--data-dir")
            .arg(&dir)
            .stdin(Stdio::null());
        if args.no_fsync {
            cmd.arg("--no-fsync");
        }
        if args.az_latency_ms > 0 {
            cmd.args(["--az-latency-ms", &args.az_latency_ms.to_string()]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start broker {i}"))?;
        cluster.0.push((i, child));
    }
    // Wait until every broker accepts connections (each registers once the quorum is up).
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 1..=args.brokers {
        let addr = format!("127.0.0.1:{}", kafka_port(i));
        while std::net::TcpStream::connect(&addr).is_err() {
            for (id, child) in &mut cluster.0 {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "broker {id} exited ({status}); is port {} or {} taken? try --base-port",
                        kafka_port(*id),
                        raft_port(*id)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("broker {i} did not accept connections on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let bootstrap: Vec<String> = (1..=args.brokers)
        .map(|i| format!("127.0.0.1:{}", kafka_port(i)))
        .collect();
    println!(
        "runnel dev: {} brokers ({} controller voters) in {} AZs, data in {}{}",
        args.brokers,
        voter_count,
        args.azs.min(args.brokers),
        args.data_dir.display(),
        if args.az_latency_ms > 0 {
            format!(", {} ms one-way between AZs", args.az_latency_ms)
        } else {
            String::new()
        }
    );
    println!("bootstrap.servers={}", bootstrap.join(","));
    println!("Ctrl-C stops the cluster.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut reported = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => return,
                _ = tick.tick() => {
                    for (id, child) in &mut cluster.0 {
                        if let Ok(Some(status)) = child.try_wait() {
                            if reported.insert(*id) {
                                eprintln!("runnel dev: broker {id} exited ({status}); the others keep running");
                            }
                        }
                    }
                }
            }
        }
    });
    println!("runnel dev: stopping");
    drop(cluster);
    Ok(())
}
