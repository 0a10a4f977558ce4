//! The Runnel broker: connections, one handler per Kafka API (`handlers/`), topic and
//! partition management through [`runnel_replication`], metrics.
//!
//! A handler reads as: decode (done by the connection), validate, delegate to replication or
//! storage, respond. Client mistakes become Kafka error codes ([`error`]), never a panic or a
//! dropped connection where the protocol has an answer.

pub mod config;
pub mod configs;
mod connection;
pub mod error;
mod fetch_session;
pub mod group;
pub mod handlers;
mod inter_broker;
pub mod probe;
pub mod txn;

use std::sync::Arc;

use runnel_replication::proto::{metadata_record::Record, Endpoint, RegisterBroker};
use runnel_replication::tcp;
use runnel_replication::{MetadataRecord, Replication, ReplicationConfig, ReplicationError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use config::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// A running broker's state, shared by all connections.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub replication: Replication,
    pub cluster_id: String,
    /// The group coordinator for the `__consumer_offsets` partitions this broker leads.
    pub groups: group::GroupCoordinator,
    /// The transaction coordinator for the `__transaction_state` partitions it leads.
    pub txns: txn::TransactionCoordinator,
    fetch_sessions: fetch_session::FetchSessionCache,
    /// Connections to other brokers for inter-broker requests.
    peers: inter_broker::Peers,
    /// Raft traffic to and from other brokers (clustered brokers only).
    pub raft_stats: Option<Arc<tcp::TcpStats>>,
    /// Every broker's AZ, as the Raft transport knows it (from the cluster metadata).
    zones: Arc<tcp::Zones>,
    /// Fetch response bytes sent to clients in other AZs (their `client.rack`), by AZ.
    fetch_cross_az: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    _raft_listener: Option<tcp::TcpListenerHandle>,
}

/// How brokers talk to each other, beyond the Kafka configs.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// One-way delay injected on Raft traffic to brokers in other AZs (`runnel dev
    /// --az-latency-ms`).
    pub az_latency: std::time::Duration,
}

/// The listener for other brokers' Raft traffic, and its counters.
type RaftListener = (tcp::TcpListenerHandle, Arc<tcp::TcpStats>);

/// Replication of a broker in a cluster: Raft over TCP to the controller voters, and to
/// every other broker once the metadata log names its Raft address. A broker that is not a
/// voter joins as a learner of the metadata group (it needs `raft_listen`).
fn start_clustered(
    config: &BrokerConfig,
    mut rc: ReplicationConfig,
    options: tcp::TcpOptions,
) -> Result<(Replication, Option<RaftListener>), BrokerError> {
    let raft_id = |node: i32| node as u64 + 1;
    rc.metadata_voters = config.controller_voters.iter().map(|(id, _)| *id).collect();
    let listen = match config.raft_listen {
        Some(addr) => addr,
        None => {
            let own = config
                .controller_voters
                .iter()
                .find(|(id, _)| *id == config.node_id)
                .map(|(_, a)| a.as_str())
                .ok_or_else(|| {
                    BrokerError::Config(format!(
                        "broker {} is not among the controller voters, so it joins the cluster: give it --raft-listen (the address other brokers reach it at, for Raft traffic)",
                        config.node_id
                    ))
                })?;
            std::net::ToSocketAddrs::to_socket_addrs(own)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    BrokerError::Config(format!(
                        "cannot resolve this broker's own Raft address {own}: give --raft-listen (e.g. 0.0.0.0:{})",
                        own.rsplit(':').next().unwrap_or("port")
                    ))
                })?
        }
    };
    let stats = Arc::new(tcp::TcpStats::default());
    let inbox: Arc<std::sync::OnceLock<runnel_replication::RaftInbox>> =
        Arc::new(std::sync::OnceLock::new());
    let deliver = {
        let inbox = inbox.clone();
        move |from: u64, envelopes| {
            if let Some(i) = inbox.get() {
                i.deliver(from, envelopes);
            }
        }
    };
    let listener = tcp::listen_with_zones(listen, stats.clone(), options.zones.clone(), deliver)
        .map_err(|source| {
        BrokerError::Config(format!(
            "cannot listen for Raft traffic on {listen}: {source} (is another broker using it? pick --raft-listen)"
        ))
    })?;
    let peers = config
        .controller_voters
        .iter()
        .map(|(id, addr)| (raft_id(*id), addr.clone()))
        .collect();
    let transport =
        tcp::TcpTransport::with_options(raft_id(config.node_id), peers, stats.clone(), options);
    let replication = Replication::start_with_transport(rc, Box::new(transport))?;
    let _ = inbox.set(replication.raft_inbox());
    tracing::info!(%listen, voters = config.controller_voters.len(), "raft listening for other brokers");
    Ok((replication, Some((listener, stats))))
}

/// `meta.properties`, as Kafka writes it: the cluster id and node id this data dir belongs to.
fn load_or_create_meta(config: &BrokerConfig) -> Result<String, BrokerError> {
    let path = config.data_dir.join("meta.properties");
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        BrokerError::Config(format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut cluster_id = None;
        let mut node_id = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("cluster.id=") {
                cluster_id = Some(v.trim().to_string());
            }
            if let Some(v) = line.strip_prefix("node.id=") {
                node_id = v.trim().parse::<i32>().ok();
            }
        }
        if let Some(stored) = node_id {
            if stored != config.node_id {
                return Err(BrokerError::Config(format!(
                    "data dir {} belongs to node {stored}, not {}: start with --node-id {stored} or use another --data-dir",
                    config.data_dir.display(),
                    config.node_id
                )));
            }
        }
        if let Some(id) = cluster_id {
            return Ok(id);
        }
    }
    // Brokers of one cluster must report one cluster id: derive it from the controller
    // voters when there are some.
    let cluster_id = if config.controller_voters.is_empty() {
        base64_url(uuid::Uuid::new_v4().as_bytes())
    } else {
        let spec: String = config
            .controller_voters
            .iter()
            .map(|(id, a)| format!("{id}@{a},"))
            .collect();
        let a = crc32c::crc32c(spec.as_bytes());
        let b = crc32c::crc32c_append(a, spec.as_bytes());
        let c = crc32c::crc32c_append(b, b"runnel");
        let d = crc32c::crc32c_append(c, spec.as_bytes());
        let hi = (u64::from(a) << 32) | u64::from(b);
        let lo = (u64::from(c) << 32) | u64::from(d);
        base64_url(uuid::Uuid::from_u64_pair(hi, lo).as_bytes())
    };
    let text = format!(
        "version=1\ncluster.id={cluster_id}\nnode.id={}\n",
        config.node_id
    );
    std::fs::write(&path, text)
        .map_err(|e| BrokerError::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(cluster_id)
}

/// Kafka prints cluster and topic ids as URL-safe base64 without padding.
pub fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Broker {
    /// Opens the data dir (recovering every log) and starts replication.
    pub fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        Broker::open_with(config, TransportOptions::default())
    }

    /// [`Broker::open`] with inter-broker transport options.
    pub fn open_with(
        config: BrokerConfig,
        transport: TransportOptions,
    ) -> Result<Broker, BrokerError> {
        let cluster_id = load_or_create_meta(&config)?;
        let mut rc = ReplicationConfig::new(config.node_id, config.data_dir.clone());
        rc.fsync = config.fsync;
        rc.producer_id_expiration_ms = config.producer_id_expiration_ms;
        rc.auto_leader_rebalance = config.auto_leader_rebalance;
        rc.leader_imbalance_check_interval =
            std::time::Duration::from_millis(config.leader_imbalance_check_interval_ms.max(1));
        rc.leader_imbalance_per_broker_percentage = config.leader_imbalance_per_broker_percentage;
        rc.replica_lag_time_max_ms = config.replica_lag_time_max_ms;
        rc.broker_session_timeout_ms = config.broker_session_timeout_ms;
        rc.retention_check_interval =
            std::time::Duration::from_millis(config.retention_check_interval_ms.max(10));
        let zones = Arc::new(tcp::Zones::new(config.rack.clone()));
        let (replication, raft_listener) = if config.controller_voters.is_empty() {
            (Replication::start(rc)?, None)
        } else {
            let options = tcp::TcpOptions {
                zones: zones.clone(),
                az_latency: transport.az_latency,
            };
            start_clustered(&config, rc, options)?
        };
        let broker = Broker {
            groups: group::GroupCoordinator::new(config.group.clone()),
            txns: txn::TransactionCoordinator::new(config.txn.clone()),
            config,
            replication,
            cluster_id,
            fetch_sessions: fetch_session::FetchSessionCache::default(),
            peers: inter_broker::Peers::default(),
            raft_stats: raft_listener.as_ref().map(|(_, stats)| stats.clone()),
            zones,
            fetch_cross_az: std::sync::Mutex::default(),
            _raft_listener: raft_listener.map(|(l, _)| l),
        };
        broker.refresh_zones();
        Ok(broker)
    }

    /// Tells the Raft transport every registered broker's AZ.
    pub fn refresh_zones(&self) {
        let brokers: Vec<(i32, Option<String>)> = self
            .replication
            .metadata()
            .brokers
            .values()
            .map(|b| (b.node_id, b.rack.clone()))
            .collect();
        for (id, rack) in brokers {
            self.zones.set_peer(id as u64 + 1, rack.as_deref());
        }
    }

    /// Counts a fetch response's record bytes as cross-AZ traffic when the client said which
    /// AZ it is in (`client.rack`, Fetch v11+) and that is not this broker's.
    pub fn count_fetch_bytes(&self, client_rack: &str, bytes: usize) {
        if bytes == 0 || client_rack.is_empty() {
            return;
        }
        if self
            .config
            .rack
            .as_deref()
            .is_none_or(|az| az == client_rack)
        {
            return;
        }
        probe::cross_az_fetch_bytes(client_rack, bytes);
        let mut map = self
            .fetch_cross_az
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry(client_rack.to_string()).or_default() += bytes as u64;
    }

    /// Bytes this broker sent to and received from other AZs so far: (replication sent,
    /// replication received, fetch responses sent), each by the other side's AZ.
    pub fn cross_az_bytes(&self) -> CrossAzBytes {
        let (sent, received) = self
            .raft_stats
            .as_ref()
            .map(|s| (s.cross_az_sent(), s.cross_az_received()))
            .unwrap_or_default();
        CrossAzBytes {
            replication_sent: sent,
            replication_received: received,
            fetch_sent: self
                .fetch_cross_az
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Records this broker's endpoint in the cluster metadata if it changed.
    pub async fn register(&self) -> Result<(), BrokerError> {
        let endpoints: Vec<Endpoint> = self
            .config
            .listeners()
            .into_iter()
            .filter_map(|l| {
                l.advertised.map(|(host, port)| Endpoint {
                    name: l.name,
                    host,
                    port: i32::from(port),
                })
            })
            .collect();
        let wanted = RegisterBroker {
            node_id: self.config.node_id,
            host: self.config.advertised_host.clone(),
            port: i32::from(self.config.advertised_port),
            rack: self.config.rack.clone(),
            endpoints,
            raft_address: self.config.raft_address(),
        };
        let current = self
            .replication
            .metadata()
            .brokers
            .get(&self.config.node_id)
            .cloned();
        let same = current.is_some_and(|b| {
            b.host == wanted.host
                && b.port == wanted.port
                && b.rack == wanted.rack
                && b.raft_address == wanted.raft_address
                && b.endpoints.len() == wanted.endpoints.len()
                && b.endpoints
                    .iter()
                    .zip(&wanted.endpoints)
                    .all(|(have, want)| {
                        have.name == want.name && have.host == want.host && have.port == want.port
                    })
        });
        if !same {
            let mut attempts = 0;
            let mut warned = std::time::Instant::now();
            loop {
                let record = MetadataRecord {
                    record: Some(Record::RegisterBroker(wanted.clone())),
                };
                match self.replication.propose_metadata(record).await {
                    Ok(()) => break,
                    // A lone broker's metadata group elects itself within a tick or two; a
                    // cluster's takes an election timeout once enough voters are up.
                    // A broker joining later waits for the quorum to take it in (each attempt
                    // waits up to five seconds for its record to come back).
                    Err(ReplicationError::NotLeaderOrFollower)
                        if attempts < 3000 || !self.config.is_controller_voter() =>
                    {
                        attempts += 1;
                        if warned.elapsed() > std::time::Duration::from_secs(30) {
                            warned = std::time::Instant::now();
                            tracing::warn!(
                                attempts,
                                "not registered yet: are the controller voters up and reachable at the Raft addresses of --controller-quorum-voters?"
                            );
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.refresh_zones();
        Ok(())
    }

    /// Accepts connections on the first listener until `shutdown` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let name = self.config.listener_name.clone();
        self.serve_listeners(vec![(name, listener)], shutdown).await;
    }

    /// Accepts connections on every named listener (from [`bind_all`]) until `shutdown`
    /// turns true. Each connection answers with its own listener's endpoints.
    pub async fn serve_listeners(
        self: Arc<Self>,
        listeners: Vec<(String, TcpListener)>,
        shutdown: watch::Receiver<bool>,
    ) {
        tokio::spawn(group::run_timer(self.clone(), shutdown.clone()));
        tokio::spawn(refresh_zones_every_second(self.clone(), shutdown.clone()));
        tokio::spawn(txn::run_timer(self.clone(), shutdown.clone()));
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let mut accepting = Vec::new();
        for (name, listener) in listeners {
            let name: Arc<str> = Arc::from(name);
            accepting.push(tokio::spawn(self.clone().accept_loop(
                name,
                listener,
                limit.clone(),
                shutdown.clone(),
            )));
        }
        for a in accepting {
            let _ = a.await;
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        name: Arc<str>,
        listener: TcpListener,
        limit: Arc<Semaphore>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection limit reached; closing");
                        continue;
                    };
                    let broker = self.clone();
                    let shutdown = shutdown.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        connection::run(broker, socket, peer, name, shutdown).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Cross-AZ traffic of one broker, by the other side's AZ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossAzBytes {
    pub replication_sent: std::collections::BTreeMap<String, u64>,
    pub replication_received: std::collections::BTreeMap<String, u64>,
    pub fetch_sent: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for CrossAzBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // "1.2 MiB (az-2 0.6 MiB, az-3 0.6 MiB)", or "0 B".
        let show = |m: &std::collections::BTreeMap<String, u64>| {
            let total = human_bytes(m.values().sum::<u64>());
            if m.is_empty() {
                return total;
            }
            let each: Vec<String> = m
                .iter()
                .map(|(az, b)| format!("{az} {}", human_bytes(*b)))
                .collect();
            format!("{total} ({})", each.join(", "))
        };
        write!(
            f,
            "replication sent {}, received {}; fetch responses to clients in other AZs {}",
            show(&self.replication_sent),
            show(&self.replication_received),
            show(&self.fetch_sent),
        )
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Keeps the Raft transport's view of the brokers' AZs current as brokers register.
async fn refresh_zones_every_second(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => broker.refresh_zones(),
        }
    }
}

/// Kafka's internal topics: only their coordinators write them, and Metadata flags them.
/// Who leads a partition, as well as this broker knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// Broker id of the leader, -1 while there is none (an election).
    pub leader: i32,
    pub leader_epoch: i32,
    /// In-sync replicas, leader included (empty without a leader).
    pub isr: Vec<i32>,
}

impl Broker {
    /// A partition's leader, epoch and ISR: from the local replica when this broker hosts it
    /// (its Raft state is the freshest), else from what the leader last reported to the
    /// metadata log, whichever has the newer epoch.
    pub fn leader_view(
        &self,
        md: &runnel_replication::ClusterMetadata,
        topic: &str,
        partition: i32,
    ) -> LeaderView {
        let replicas: &[i32] = md
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .map_or(&[], |r| r.as_slice());
        let recorded = md.partition_leaders.get(&(topic.to_string(), partition));
        let local = self.replication.replica(topic, partition);
        if let Some(r) = &local {
            if r.leader_id() == self.config.node_id {
                let mut isr = r.isr();
                if isr.is_empty() {
                    // Elected moments ago: the first ISR sample is not taken yet.
                    isr = replicas.to_vec();
                }
                return LeaderView {
                    leader: r.leader_id(),
                    leader_epoch: r.leader_epoch(),
                    isr,
                };
            }
        }
        let from_record = |rec: &runnel_replication::PartitionLeaderState| LeaderView {
            leader: rec.leader,
            leader_epoch: rec.leader_epoch,
            isr: rec.isr.clone(),
        };
        let view = match (local, recorded) {
            (Some(r), Some(rec)) if rec.leader_epoch >= r.leader_epoch() => from_record(rec),
            (Some(r), rec) => {
                let leader = r.leader_id();
                let isr = if leader < 0 {
                    Vec::new()
                } else {
                    let mut isr = rec.map_or_else(|| replicas.to_vec(), |rec| rec.isr.clone());
                    if !isr.contains(&leader) {
                        isr.insert(0, leader);
                    }
                    isr
                };
                LeaderView {
                    leader,
                    leader_epoch: r.leader_epoch(),
                    isr,
                }
            }
            (None, Some(rec)) => from_record(rec),
            (None, None) => LeaderView {
                leader: -1,
                leader_epoch: -1,
                isr: Vec::new(),
            },
        };
        // A leader on a fenced (dead) broker leads nothing: LEADER_NOT_AVAILABLE until a
        // replica elsewhere takes over, as KRaft's controller answers.
        if view.leader >= 0 && md.is_fenced(view.leader) {
            return LeaderView {
                leader: -1,
                leader_epoch: view.leader_epoch,
                isr: Vec::new(),
            };
        }
        view
    }

    /// [`Broker::leader_view`], taking the metadata lock itself.
    pub fn partition_leader(&self, topic: &str, partition: i32) -> LeaderView {
        let md = self.replication.metadata();
        self.leader_view(&md, topic, partition)
    }
}

pub fn is_internal_topic(name: &str) -> bool {
    name == group::OFFSETS_TOPIC || name == txn::TRANSACTION_STATE_TOPIC
}

/// Binds the first listener.
pub async fn bind(config: &BrokerConfig) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })
}

/// Binds every listener, named, for [`Broker::serve_listeners`].
pub async fn bind_all(config: &BrokerConfig) -> Result<Vec<(String, TcpListener)>, BrokerError> {
    let mut out = Vec::new();
    for l in config.listeners() {
        let bound = TcpListener::bind(l.listen)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: l.listen,
                source,
            })?;
        out.push((l.name, bound));
    }
    Ok(out)
}
