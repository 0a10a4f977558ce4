//! The TCP transport between brokers: one connection per broker pair and direction carries
//! every group's Raft messages, one length-prefixed frame per Ready-cycle batch.
//!
//! Sending never blocks the Raft driver: each peer has a bounded queue drained by its own
//! writer thread, which connects (and reconnects, with backoff up to one second) on demand,
//! and writes whatever is queued in one go. A full queue or a dead peer loses messages, which
//! Raft resends. The receiving side reads frames bounded by
//! [`MAX_BATCH_BYTES`](crate::transport::MAX_BATCH_BYTES) and hands each decoded batch to a
//! callback (the broker's [`Replication::step_raft`](crate::Replication::step_raft)).
//!
//! Peer addresses are `host:port` strings resolved at every connection attempt, not once at
//! start: in a container network a peer's name exists only once its container runs, and its
//! address may change when it is restarted or reconnected.
//!
//! Frame: `u32` big-endian length, then a [`RaftMessageBatch`](crate::proto::RaftMessageBatch).
//! Peers are not authenticated: run brokers on a private network (rust-protobuf's
//! RUSTSEC-2024-0437 makes that a requirement, not only advice).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::transport::{decode_batch, encode_batch, Envelope, Transport, MAX_BATCH_BYTES};

/// Frames queued per peer before new ones are dropped.
const QUEUE_FRAMES: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Counters a broker exposes about its peers' traffic.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
}

#[derive(Debug)]
struct Peer {
    queue: SyncSender<Vec<u8>>,
}

/// Outgoing half: implements [`Transport`] over one writer thread per peer.
#[derive(Debug)]
pub struct TcpTransport {
    from: u64,
    peers: HashMap<u64, Peer>,
    stats: Arc<TcpStats>,
    stop: Arc<AtomicBool>,
}

impl TcpTransport {
    /// A transport from broker `from` (a Raft id) to `peers` (Raft id -> `host:port`, a name
    /// or an IP address).
    pub fn new(from: u64, peers: HashMap<u64, String>, stats: Arc<TcpStats>) -> TcpTransport {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = peers
            .into_iter()
            .filter(|(id, _)| *id != from)
            .map(|(id, addr)| {
                let (queue, rx) = sync_channel(QUEUE_FRAMES);
                let stats = stats.clone();
                let stop = stop.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("raft-send-{id}"))
                    .spawn(move || run_writer(addr, rx, &stats, &stop));
                if let Err(e) = spawned {
                    tracing::error!(peer = id, error = %e, "cannot start a raft writer thread");
                }
                (id, Peer { queue })
            })
            .collect();
        TcpTransport {
            from,
            peers,
            stats,
            stop,
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, to: u64, batch: Vec<Envelope>) {
        let Some(peer) = self.peers.get(&to) else {
            tracing::debug!(to, "raft message for an unknown peer dropped");
            return;
        };
        let frame = match encode_batch(self.from, &batch) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(to, error = %e, "cannot encode raft messages");
                return;
            }
        };
        if frame.len() > MAX_BATCH_BYTES {
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match peer.queue.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Connects on demand, writes queued frames, reconnects with backoff after errors.
fn run_writer(addr: String, rx: Receiver<Vec<u8>>, stats: &TcpStats, stop: &AtomicBool) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(10);
    let mut resolved_at = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // A peer whose name now resolves elsewhere (a container restarted or reconnected to
        // its network with a new IP) leaves our connection to its old address silently
        // black-holed: TCP would take minutes to notice. Reconnect to where the name points.
        if resolved_at.elapsed() > Duration::from_secs(1) {
            resolved_at = std::time::Instant::now();
            let moved = conn
                .as_ref()
                .and_then(|c| c.peer_addr().ok())
                .is_some_and(|at| {
                    addr.to_socket_addrs()
                        .is_ok_and(|mut now| now.all(|a| a != at))
                });
            if moved {
                tracing::info!(%addr, "raft peer moved to a new address; reconnecting");
                conn = None;
            }
        }
        // Everything queued goes out in one write.
        let mut out = Vec::with_capacity(first.len() + 4);
        let mut frames = 0u64;
        for frame in std::iter::once(first).chain(rx.try_iter()) {
            out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            out.extend_from_slice(&frame);
            frames += 1;
        }
        if conn.is_none() {
            match connect(&addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                    conn = Some(s);
                    backoff = Duration::from_millis(10);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "raft peer unreachable");
                    stats.frames_dropped.fetch_add(frames, Ordering::Relaxed);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        match s.write_all(&out) {
            Ok(()) => {
                stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
                stats
                    .bytes_sent
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "raft connection lost");
                stats.frames_dropped.fetch_add(frames, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Resolves `addr` now (a peer's name may appear or move at any time) and connects to the
/// first of its addresses that answers.
fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{addr} resolves to no address"),
    );
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Incoming half: accepts peers' connections and hands every decoded batch to `deliver`.
#[derive(Debug)]
pub struct TcpListenerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpListenerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpListenerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` for other brokers' Raft traffic.
pub fn listen<F>(
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    deliver: F,
) -> std::io::Result<TcpListenerHandle>
where
    F: Fn(u64, Vec<Envelope>) + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let deliver = Arc::new(deliver);
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("raft-listen".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (stats, deliver, stop) = (stats.clone(), deliver.clone(), stop.clone());
                    let _ = std::thread::Builder::new()
                        .name("raft-recv".into())
                        .spawn(move || read_frames(conn, &stats, &*deliver, &stop));
                }
            })?
    };
    Ok(TcpListenerHandle {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// Reads frames until the peer closes, a frame is malformed, or the listener stops.
fn read_frames(
    mut conn: TcpStream,
    stats: &TcpStats,
    deliver: &(dyn Fn(u64, Vec<Envelope>) + Send + Sync),
    stop: &AtomicBool,
) {
    let peer = conn.peer_addr().ok();
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut len = [0u8; 4];
    loop {
        match read_full(&mut conn, &mut len, stop) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(?peer, error = %e, "raft connection closed");
                return;
            }
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_BATCH_BYTES {
            tracing::warn!(
                ?peer,
                bytes = n,
                "oversized raft frame; closing the connection"
            );
            return;
        }
        let mut frame = vec![0u8; n];
        match read_full(&mut conn, &mut frame, stop) {
            Ok(true) => {}
            _ => return,
        }
        stats.frames_received.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_received
            .fetch_add(n as u64 + 4, Ordering::Relaxed);
        match decode_batch(&frame) {
            Ok((from, envelopes)) => deliver(from, envelopes),
            Err(e) => {
                tracing::warn!(?peer, error = %e, "malformed raft frame; closing the connection");
                return;
            }
        }
    }
}

/// Fills `buf`; false when the peer closed cleanly before the first byte or we stop.
fn read_full(conn: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        if stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        match conn.read(&mut buf[at..]) {
            Ok(0) if at == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "frame cut short",
                ))
            }
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
