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
//! Availability zones: given each broker's AZ ([`Zones`], from `broker.rack`), the transport
//! counts the bytes it sends to and receives from brokers in other AZs (what AWS bills for),
//! and can hold every frame to another AZ for a configured one-way delay (`runnel dev
//! --az-latency-ms`), each peer's writer waiting on its own frames only.
//!
//! Peer addresses are `host:port` strings resolved at every connection attempt, not once at
//! start: in a container network a peer's name exists only once its container runs, and its
//! address may change when it is restarted or reconnected.
//!
//! Frame: `u32` big-endian length, then a [`RaftMessageBatch`](crate::proto::RaftMessageBatch).
//! Peers are not authenticated: run brokers on a private network (rust-protobuf's
//! RUSTSEC-2024-0437 makes that a requirement, not only advice).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use metrics::counter;

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
    /// Bytes written to brokers in other AZs, by their AZ.
    pub cross_az_bytes_sent: Mutex<BTreeMap<String, u64>>,
    /// Bytes read from brokers in other AZs, by their AZ.
    pub cross_az_bytes_received: Mutex<BTreeMap<String, u64>>,
}

impl TcpStats {
    /// Cross-AZ bytes sent so far, by peer AZ.
    pub fn cross_az_sent(&self) -> BTreeMap<String, u64> {
        self.cross_az_bytes_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cross-AZ bytes received so far, by peer AZ.
    pub fn cross_az_received(&self) -> BTreeMap<String, u64> {
        self.cross_az_bytes_received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn sent(&self, peer_az: Option<&str>, frames: u64, bytes: u64) {
        self.frames_sent.fetch_add(frames, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        counter!("runnel_raft_bytes_sent_total").increment(bytes);
        if let Some(az) = peer_az {
            add(&self.cross_az_bytes_sent, az, bytes);
            counter!("runnel_cross_az_bytes_sent_total", "peer_az" => az.to_string(), "traffic" => "replication")
                .increment(bytes);
        }
    }

    fn received(&self, peer_az: Option<&str>, bytes: u64) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        counter!("runnel_raft_bytes_received_total").increment(bytes);
        if let Some(az) = peer_az {
            add(&self.cross_az_bytes_received, az, bytes);
            counter!("runnel_cross_az_bytes_received_total", "peer_az" => az.to_string(), "traffic" => "replication")
                .increment(bytes);
        }
    }
}

fn add(map: &Mutex<BTreeMap<String, u64>>, key: &str, n: u64) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_string(), n);
        }
    }
}

/// The AZ of this broker and of its peers (by Raft id), as far as known: peers' come from the
/// cluster metadata (`broker.rack` of registered brokers) and may arrive after the transport
/// starts. Traffic to a peer of unknown AZ is neither delayed nor counted as cross-AZ.
#[derive(Debug, Default)]
pub struct Zones {
    local: Option<String>,
    peers: RwLock<HashMap<u64, String>>,
}

impl Zones {
    pub fn new(local: Option<String>) -> Zones {
        Zones {
            local,
            peers: RwLock::default(),
        }
    }

    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// Records (or forgets, with `None`) the AZ of broker `raft_id`.
    pub fn set_peer(&self, raft_id: u64, az: Option<&str>) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        match az {
            Some(az) if peers.get(&raft_id).map(String::as_str) != Some(az) => {
                peers.insert(raft_id, az.to_string());
            }
            Some(_) => {}
            None => {
                peers.remove(&raft_id);
            }
        }
    }

    /// The AZ of broker `raft_id` when it is known and differs from this broker's.
    pub fn remote(&self, raft_id: u64) -> Option<String> {
        let local = self.local.as_deref()?;
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&raft_id)
            .filter(|az| az.as_str() != local)
            .cloned()
    }
}

/// How a [`TcpTransport`] treats availability zones.
#[derive(Debug, Clone, Default)]
pub struct TcpOptions {
    pub zones: Arc<Zones>,
    /// One-way delay added to every frame to a broker in another AZ (zero: none).
    pub az_latency: Duration,
}

/// A frame waiting in a peer's queue, and when it may leave.
type Queued = (Instant, Vec<u8>);

#[derive(Debug)]
struct Peer {
    address: String,
    queue: SyncSender<Queued>,
}

/// Outgoing half: implements [`Transport`] over one writer thread per peer.
#[derive(Debug)]
pub struct TcpTransport {
    from: u64,
    peers: HashMap<u64, Peer>,
    stats: Arc<TcpStats>,
    stop: Arc<AtomicBool>,
    options: TcpOptions,
}

impl TcpTransport {
    /// A transport from broker `from` (a Raft id) to `peers` (Raft id -> `host:port`, a name
    /// or an IP address).
    pub fn new(from: u64, peers: HashMap<u64, String>, stats: Arc<TcpStats>) -> TcpTransport {
        TcpTransport::with_options(from, peers, stats, TcpOptions::default())
    }

    /// [`TcpTransport::new`] knowing the brokers' AZs (cross-AZ counters, injected latency).
    pub fn with_options(
        from: u64,
        peers: HashMap<u64, String>,
        stats: Arc<TcpStats>,
        options: TcpOptions,
    ) -> TcpTransport {
        let mut transport = TcpTransport {
            from,
            peers: HashMap::new(),
            stats,
            stop: Arc::new(AtomicBool::new(false)),
            options,
        };
        for (id, addr) in peers {
            transport.set_peer_address(id, &addr);
        }
        transport
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Transport for TcpTransport {
    /// Starts a writer thread for a new peer; a peer whose address changed gets a new
    /// writer (the old one ends once its queue is dropped).
    fn set_peer_address(&mut self, to: u64, address: &str) {
        if to == self.from || self.peers.get(&to).is_some_and(|p| p.address == address) {
            return;
        }
        let (queue, rx) = sync_channel(QUEUE_FRAMES);
        let stats = self.stats.clone();
        let stop = self.stop.clone();
        let zones = self.options.zones.clone();
        let addr = address.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("raft-send-{to}"))
            .spawn(move || run_writer(addr, rx, &stats, &stop, &|| zones.remote(to)));
        if let Err(e) = spawned {
            tracing::error!(peer = to, error = %e, "cannot start a raft writer thread");
            return;
        }
        if self.peers.contains_key(&to) {
            tracing::info!(
                peer = to,
                address,
                "raft peer moved to a new registered address"
            );
        }
        self.peers.insert(
            to,
            Peer {
                address: address.to_string(),
                queue,
            },
        );
    }

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
        let mut due = Instant::now();
        if !self.options.az_latency.is_zero() && self.options.zones.remote(to).is_some() {
            due += self.options.az_latency;
        }
        match peer.queue.try_send((due, frame)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Connects on demand (resolving the peer's name at each attempt), writes queued frames
/// once they are due (all at once when they are due together), reconnects with backoff after
/// errors. `remote_az` is the peer's AZ when it is another than this broker's.
fn run_writer(
    addr: String,
    rx: Receiver<Queued>,
    stats: &TcpStats,
    stop: &AtomicBool,
    remote_az: &dyn Fn() -> Option<String>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(10);
    // Frames taken off the queue but not due yet (latency injection), in due order: every
    // frame to one peer has the same delay.
    let mut held: VecDeque<Queued> = VecDeque::new();
    let mut resolved_at = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let wait = held.front().map_or(Duration::from_millis(200), |(due, _)| {
            due.saturating_duration_since(Instant::now())
        });
        if held.is_empty() || !wait.is_zero() {
            match rx.recv_timeout(wait) {
                Ok(f) => held.push_back(f),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if held.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        while held.len() < QUEUE_FRAMES {
            match rx.try_recv() {
                Ok(f) => held.push_back(f),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let ready = held.iter().take_while(|(due, _)| *due <= now).count();
        if ready == 0 {
            continue;
        }
        // A peer whose name now resolves elsewhere (a container restarted or reconnected to
        // its network with a new IP) leaves our connection to its old address silently
        // black-holed: TCP would take minutes to notice. Reconnect to where the name points.
        if resolved_at.elapsed() > Duration::from_secs(1) {
            resolved_at = Instant::now();
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
        // Everything due goes out in one write.
        let mut out = Vec::new();
        for (_, frame) in held.drain(..ready) {
            out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            out.extend_from_slice(&frame);
        }
        let frames = ready as u64;
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
            Ok(()) => stats.sent(remote_az().as_deref(), frames, out.len() as u64),
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
    listen_with_zones(addr, stats, Arc::default(), deliver)
}

/// [`listen`], counting what brokers in other AZs (per `zones`) send as cross-AZ traffic.
pub fn listen_with_zones<F>(
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    zones: Arc<Zones>,
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
                    let zones = zones.clone();
                    let _ = std::thread::Builder::new()
                        .name("raft-recv".into())
                        .spawn(move || read_frames(conn, &stats, &zones, &*deliver, &stop));
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
    zones: &Zones,
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
        match decode_batch(&frame) {
            Ok((from, envelopes)) => {
                stats.received(zones.remote(from).as_deref(), n as u64 + 4);
                deliver(from, envelopes)
            }
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
