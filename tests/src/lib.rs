//! Harness for end-to-end tests: real `runnel` processes on loopback ports, killed and
//! restarted like a production broker would be.
//!
//! The binary is `$RUNNEL_BIN`, or `target/debug/runnel` of this workspace (build it with
//! `cargo build -p runnel-cli`; `scripts/test.sh` does).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod compose;

/// The `runnel` binary under test.
pub fn runnel_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("RUNNEL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/runnel");
    if !path.exists() {
        bail!(
            "{} does not exist: run `cargo build -p runnel-cli` first (or set RUNNEL_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port for a broker a test starts. Taken below Linux's ephemeral range
/// (32768 and up), where the OS picks the local ports of outgoing connections: a port the
/// OS handed out with `bind(0)` and released could be taken by some client's connection
/// before the broker binds it. Each call in a process returns another port, from a start
/// that differs between processes.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One broker process with its own data directory and port.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    node_id: i32,
    extra_args: Vec<String>,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Broker> {
        Broker::start_at(free_port()?, extra_args)
    }

    /// Like [`Broker::start`], on a port the caller chose.
    pub fn start_at(port: u16, extra_args: &[&str]) -> anyhow::Result<Broker> {
        Broker::start_node(1, port, extra_args)
    }

    /// Broker `node_id` of a cluster (its peers in `extra_args`), on `port`.
    pub fn start_node(node_id: i32, port: u16, extra_args: &[&str]) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new().prefix("runnel-e2e").tempdir()?;
        let mut broker = Broker {
            child: None,
            dir,
            port,
            node_id,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        broker.spawn()?;
        eprintln!(
            "runnel broker on 127.0.0.1:{} with data in {}",
            broker.port,
            broker.dir.path().display()
        );
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let listen = format!("127.0.0.1:{}", self.port);
        let node_id = self.node_id.to_string();
        let child = Command::new(runnel_bin()?)
            .args([
                "serve",
                "--node-id",
                &node_id,
                "--listen",
                &listen,
                "--metrics-listen",
                "",
            ])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            // RUNNEL_TEST_LOGS=1 shows the broker's log (with RUST_LOG to pick levels).
            .stdout(if std::env::var_os("RUNNEL_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start runnel")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&listen).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("runnel exited during startup: {status}");
            }
            if Instant::now() > deadline {
                bail!("runnel did not accept connections on {listen} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: no shutdown, no flush beyond what was fsynced.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("runnel did not stop within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the broker again on the same directory and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_9();
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A seed for a randomized test: `$RUNNEL_SEED` or the clock; always printed so a failure
/// can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RUNNEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (replay with RUNNEL_SEED={seed})");
    seed
}

/// A TCP proxy on loopback that forwards to `upstream` and, every `drop_every`-th chunk the
/// server sends back, swallows that chunk and cuts the connection: the broker has handled the
/// request but the client never hears the answer, so it must retry. It stops when dropped.
#[derive(Debug)]
pub struct CuttingProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cutting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(upstream: String, drop_every: usize) -> anyhow::Result<CuttingProxy> {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let cutting = Arc::new(AtomicBool::new(true));
        let chunks = Arc::new(AtomicUsize::new(0));
        let (stop2, cuts2, cutting2) = (stop.clone(), cuts.clone(), cutting.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_read, mut c_write) = (server, client);
                let (cuts, cutting, chunks) = (cuts2.clone(), cutting2.clone(), chunks.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let nth = chunks.fetch_add(1, Ordering::SeqCst) + 1;
                        if cutting.load(Ordering::SeqCst) && nth % drop_every.max(1) == 0 {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(CuttingProxy {
            port,
            stop,
            cutting,
            cuts,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many answers were swallowed (and their connections cut).
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps forwarding, but cuts no more connections.
    pub fn stop_cutting(&self) {
        self.cutting
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
