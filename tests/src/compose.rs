//! The top-level `docker-compose.yml` cluster, started under a unique project name and unique
//! host ports so test runs do not collide with each other or with a developer's own cluster,
//! and torn down (volumes too) when dropped. Faults are injected with plain docker commands:
//! `kill`, `start`, `restart`, `pause`, `network disconnect`.
//!
//! Needs docker, `docker compose` or `docker-compose`, and the image `$RUNNEL_IMAGE`
//! (default `runnel:dev`, built by `scripts/docker-image.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::free_port;

/// The brokers' compose service names, in node id order.
pub const SERVICES: [&str; 3] = ["broker-1", "broker-2", "broker-3"];

/// The image under test.
pub fn image() -> String {
    std::env::var("RUNNEL_IMAGE").unwrap_or_else(|_| "runnel:dev".to_string())
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(out)
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever is installed.
fn compose_command() -> Option<Vec<String>> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v2 {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    v1.then(|| vec!["docker-compose".into()])
}

/// Why the compose cluster cannot run here, if it cannot: no docker daemon, no compose, or
/// no image.
pub fn unavailable() -> Option<String> {
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !docker.is_ok_and(|s| s.success()) {
        return Some("docker is not installed or its daemon is not reachable".into());
    }
    if compose_command().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    let image = image();
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        return Some(format!(
            "the image {image} does not exist: build it with ./scripts/docker-image.sh"
        ));
    }
    None
}

/// The repository's `docker-compose.yml`.
pub fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// One compose project: three brokers, their network and volumes.
#[derive(Debug)]
pub struct Cluster {
    project: String,
    ports: [u16; 3],
    compose: Vec<String>,
    override_file: Option<tempfile::NamedTempFile>,
    /// Container ids of broker-1..3 (stable across stop, start and restart).
    containers: Vec<String>,
}

impl Cluster {
    /// Starts the cluster (project `runnel-<name>-<pid>`) and waits until every broker is
    /// healthy. `override_yaml` is a compose override merged over the file (e.g. a tmpfs data
    /// volume).
    pub fn up(name: &str, override_yaml: Option<&str>) -> anyhow::Result<Cluster> {
        let compose = compose_command().context("no docker compose")?;
        let project: String = format!("runnel{name}{}", std::process::id())
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        let override_file = match override_yaml {
            Some(yaml) => {
                let mut f = tempfile::Builder::new()
                    .prefix("runnel-compose-override")
                    .suffix(".yml")
                    .tempfile()?;
                std::io::Write::write_all(&mut f, yaml.as_bytes())?;
                Some(f)
            }
            None => None,
        };
        let mut cluster = Cluster {
            project,
            ports: [free_port()?, free_port()?, free_port()?],
            compose,
            override_file,
            containers: Vec::new(),
        };
        let started = Instant::now();
        // Only the three brokers: services an override adds start when a test says so.
        let mut up = vec!["up", "-d"];
        up.extend(SERVICES);
        cluster.compose_ok(&up)?;
        for service in SERVICES {
            let id = cluster.compose_ok(&["ps", "-q", service])?;
            if id.is_empty() {
                bail!("no container for {service}");
            }
            cluster.containers.push(id);
        }
        cluster.wait_healthy(Duration::from_secs(60))?;
        eprintln!(
            "compose project {} up and healthy in {} ms (bootstrap {})",
            cluster.project,
            started.elapsed().as_millis(),
            cluster.bootstrap()
        );
        Ok(cluster)
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(compose_file());
        if let Some(f) = &self.override_file {
            cmd.arg("-f").arg(f.path());
        }
        cmd.args(args)
            .env("RUNNEL_IMAGE", image())
            .env("RUNNEL_EXTERNAL_HOST", "127.0.0.1")
            .env("RUNNEL_HOST_PORT_1", self.ports[0].to_string())
            .env("RUNNEL_HOST_PORT_2", self.ports[1].to_string())
            .env("RUNNEL_HOST_PORT_3", self.ports[2].to_string())
            // Small internal topics and no initial rebalance delay keep the tests quick.
            .env("RUNNEL_OFFSETS_TOPIC_NUM_PARTITIONS", "6")
            .env("RUNNEL_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "3")
            .env("RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            // Preferred leaders return within seconds, so each scenario can require it.
            .env("RUNNEL_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS", "2");
        cmd
    }

    fn compose_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(&mut self.compose_cmd(args))
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// `down` without removing volumes, then `up` again (same project, same ports), and
    /// waits until healthy: what a developer does at the end and start of a day.
    pub fn down_up(&mut self) -> anyhow::Result<()> {
        self.compose_ok(&["down", "-t", "10"])?;
        self.compose_ok(&["up", "-d"])?;
        self.containers.clear();
        for service in SERVICES {
            let id = self.compose_ok(&["ps", "-q", service])?;
            if id.is_empty() {
                bail!("no container for {service}");
            }
            self.containers.push(id);
        }
        self.wait_healthy(Duration::from_secs(60))
    }

    /// The host's bootstrap list (the EXTERNAL listeners).
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The host address of one broker (node ids 1..=3).
    pub fn broker_address(&self, node: i32) -> String {
        format!("127.0.0.1:{}", self.ports[(node - 1) as usize])
    }

    /// The compose network's name.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// The container id of broker `node` (1..=3).
    pub fn container(&self, node: i32) -> anyhow::Result<String> {
        usize::try_from(node - 1)
            .ok()
            .and_then(|i| self.containers.get(i))
            .cloned()
            .with_context(|| format!("no container for broker-{node}"))
    }

    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(Command::new("docker").args(args))
    }

    /// Starts one more service of the override (a broker joining the running cluster) and
    /// returns its container id.
    pub fn up_service(&self, service: &str) -> anyhow::Result<String> {
        self.compose_ok(&["up", "-d", "--no-deps", service])?;
        let id = self.compose_ok(&["ps", "-q", service])?;
        if id.is_empty() {
            bail!("no container for {service}");
        }
        Ok(id)
    }

    /// `docker kill` (SIGKILL) of a container by id, then `docker start` of it when `restart`.
    pub fn kill_container(&self, id: &str, restart: bool) -> anyhow::Result<()> {
        self.docker(&["kill", id])?;
        if restart {
            self.docker(&["start", id])?;
        }
        Ok(())
    }

    /// SIGKILL, as `docker kill` sends: no shutdown, no flush.
    pub fn kill(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&["kill", &self.container(node)?]).map(drop)
    }

    /// All three at once, in one `docker kill` (power loss).
    pub fn kill_all(&self) -> anyhow::Result<()> {
        let ids = (1..=3)
            .map(|n| self.container(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut args = vec!["kill"];
        args.extend(ids.iter().map(String::as_str));
        self.docker(&args).map(drop)
    }

    pub fn start_all(&self) -> anyhow::Result<()> {
        let ids = (1..=3)
            .map(|n| self.container(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut args = vec!["start"];
        args.extend(ids.iter().map(String::as_str));
        self.docker(&args).map(drop)
    }

    pub fn start(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&["start", &self.container(node)?]).map(drop)
    }

    /// SIGTERM, then SIGKILL after 20 s, then start again.
    pub fn restart(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&["restart", "-t", "20", &self.container(node)?])
            .map(drop)
    }

    pub fn pause(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&["pause", &self.container(node)?]).map(drop)
    }

    pub fn unpause(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&["unpause", &self.container(node)?]).map(drop)
    }

    /// Cuts broker `node` off the compose network: from the other brokers and from clients.
    pub fn disconnect(&self, node: i32) -> anyhow::Result<()> {
        self.docker(&[
            "network",
            "disconnect",
            &self.network(),
            &self.container(node)?,
        ])
        .map(drop)
    }

    /// Joins broker `node` to the compose network again, under its service name.
    pub fn connect(&self, node: i32) -> anyhow::Result<()> {
        let service = SERVICES[(node - 1) as usize];
        self.docker(&[
            "network",
            "connect",
            "--alias",
            service,
            &self.network(),
            &self.container(node)?,
        ])
        .map(drop)
    }

    /// Copies the host's `sh`, `dd` and `rm` (with the libraries `ldd` names) into broker
    /// `node`'s container, whose image has no shell, so [`Cluster::exec_sh`] can run there.
    pub fn install_shell_tools(&self, node: i32) -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        for (tool, name) in [("dash", "sh"), ("sh", "sh"), ("dd", "dd"), ("rm", "rm")] {
            let Ok(path) = run_ok(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
            else {
                continue;
            };
            let path = std::fs::canonicalize(&path)?;
            if !bin.join(name).exists() {
                std::fs::copy(&path, bin.join(name))?;
            }
            let libs = run_ok(Command::new("ldd").arg(&path)).unwrap_or_default();
            for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
                let src = std::fs::canonicalize(lib)?;
                let dest = root.path().join(lib.trim_start_matches('/'));
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::copy(&src, &dest)?;
            }
        }
        for name in ["sh", "dd", "rm"] {
            if !bin.join(name).exists() {
                bail!("the host has no {name} to copy into the container");
            }
        }
        let from = format!("{}/.", root.path().display());
        let to = format!("{}:/", self.container(node)?);
        self.docker(&["cp", &from, &to]).map(drop)
    }

    /// Runs `script` with `sh -c` inside broker `node`'s container (after
    /// [`Cluster::install_shell_tools`]); returns its exit status and output.
    pub fn exec_sh(&self, node: i32, script: &str) -> anyhow::Result<(bool, String)> {
        let out = run(Command::new("docker").args([
            "exec",
            &self.container(node)?,
            "/bin/sh",
            "-c",
            script,
        ]))?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// The health status Docker reports for broker `node` (from the image's health check).
    pub fn health(&self, node: i32) -> anyhow::Result<String> {
        self.docker(&[
            "inspect",
            "-f",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            &self.container(node)?,
        ])
    }

    /// Waits until Docker reports every broker healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<String> = (1..=3)
                .map(|n| self.health(n).unwrap_or_else(|e| e.to_string()))
                .collect();
            if states.iter().all(|s| s == "healthy") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "brokers not healthy after {} s: {states:?}\n{}",
                    timeout.as_secs(),
                    self.logs_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs a one-off container of the image on the compose network (a client inside the
    /// network, like an application container) and returns its output.
    pub fn run_in_network(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--rm", "-i", "--network", &self.network(), &image()])
            .args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("docker run")?;
        if let Some(mut input) = child.stdin.take() {
            std::io::Write::write_all(&mut input, stdin.unwrap_or("").as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "docker run {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last `lines` log lines of every broker, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let n = lines.to_string();
        run(&mut self.compose_cmd(&["logs", "--no-color", "--tail", &n]))
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("RUNNEL_KEEP_COMPOSE").is_some() {
            eprintln!(
                "RUNNEL_KEEP_COMPOSE: leaving project {} running",
                self.project
            );
            return;
        }
        // Unpause first: a paused container cannot be removed.
        for node in 1..=3 {
            if let Ok(id) = self.container(node) {
                let _ = run(Command::new("docker").args(["unpause", &id]));
            }
        }
        let _ = run(&mut self.compose_cmd(&["down", "-v", "--remove-orphans", "-t", "2"]));
    }
}
