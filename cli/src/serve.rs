//! `runnel serve`: flags, `RUNNEL_*` environment variables, and an optional Kafka-style
//! properties file (`--config server.properties`), in that order of precedence.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use runnel_broker::{Broker, BrokerConfig};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Kafka-style properties file (node.id, log.dirs, listeners, advertised.listeners,
    /// broker.rack, num.partitions, auto.create.topics.enable, ...). Flags win over it.
    #[arg(long, env = "RUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// This broker's id (`node.id`).
    #[arg(long, env = "RUNNEL_NODE_ID")]
    node_id: Option<i32>,
    /// Where partitions and metadata live (`log.dirs`).
    #[arg(long, env = "RUNNEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on for Kafka clients.
    #[arg(long, env = "RUNNEL_LISTEN")]
    listen: Option<String>,
    /// host:port clients are told to connect to (defaults to --listen).
    #[arg(long, env = "RUNNEL_ADVERTISED_LISTENER")]
    advertised_listener: Option<String>,
    /// Named listeners to bind, Kafka's `listeners`:
    /// `INTERNAL://0.0.0.0:19092,EXTERNAL://0.0.0.0:9092`. Instead of --listen.
    #[arg(long, env = "RUNNEL_LISTENERS", conflicts_with = "listen")]
    listeners: Option<String>,
    /// What each listener tells its clients, Kafka's `advertised.listeners`:
    /// `INTERNAL://broker-1:19092,EXTERNAL://localhost:9092`. A client is answered with the
    /// endpoints of the listener it connected to (default: the --listeners addresses).
    #[arg(
        long,
        env = "RUNNEL_ADVERTISED_LISTENERS",
        conflicts_with = "advertised_listener"
    )]
    advertised_listeners: Option<String>,
    /// Replicas of auto-created topics and of CreateTopics with -1
    /// (`default.replication.factor`, default 1).
    #[arg(long, env = "RUNNEL_DEFAULT_REPLICATION_FACTOR")]
    default_replication_factor: Option<i16>,
    /// Availability zone (`broker.rack`).
    #[arg(long, env = "RUNNEL_AZ")]
    az: Option<String>,
    /// Prometheus metrics address; empty to disable.
    #[arg(long, env = "RUNNEL_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Acknowledge writes once in the page cache instead of after fsync (faster, loses
    /// acknowledged writes on power loss; for development).
    #[arg(long, env = "RUNNEL_NO_FSYNC")]
    no_fsync: bool,
    /// How often retention runs, in ms (`log.retention.check.interval.ms`).
    #[arg(long, env = "RUNNEL_RETENTION_CHECK_INTERVAL_MS")]
    retention_check_interval_ms: Option<u64>,
    /// How long a new group waits for more members before its first rebalance, in ms
    /// (`group.initial.rebalance.delay.ms`, default 3000).
    #[arg(long, env = "RUNNEL_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<i32>,
    /// How often KIP-848 consumers heartbeat, in ms (`group.consumer.heartbeat.interval.ms`,
    /// default 5000).
    #[arg(long, env = "RUNNEL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    group_consumer_heartbeat_interval_ms: Option<i32>,
    /// Partitions of `__consumer_offsets` (`offsets.topic.num.partitions`, default 50).
    #[arg(long, env = "RUNNEL_OFFSETS_TOPIC_NUM_PARTITIONS")]
    offsets_topic_num_partitions: Option<i32>,
    /// Partitions of `__transaction_state` (`transaction.state.log.num.partitions`, default
    /// 50).
    #[arg(long, env = "RUNNEL_TRANSACTION_STATE_LOG_NUM_PARTITIONS")]
    transaction_state_log_num_partitions: Option<i32>,
    /// How often transactions past their timeout are aborted, in ms
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, default 10000).
    #[arg(long, env = "RUNNEL_TRANSACTION_ABORT_INTERVAL_MS")]
    transaction_abort_timed_out_transaction_cleanup_interval_ms: Option<u64>,
    /// The finalized `transaction.version` feature level, 0 to 2 (default 2): at 2 clients
    /// that support it use Transactions V2 (KIP-890 part 2). Kafka sets it with
    /// `kafka-features.sh upgrade --feature transaction.version=N`.
    #[arg(long, env = "RUNNEL_TRANSACTION_VERSION")]
    transaction_version: Option<i16>,
    /// The cluster's brokers as `id@host:port,...` (Kafka's `controller.quorum.voters`), their
    /// addresses being where each listens for Raft traffic. Absent: a single broker.
    #[arg(long, env = "RUNNEL_CONTROLLER_QUORUM_VOTERS")]
    controller_quorum_voters: Option<String>,
    /// Where to listen for other brokers' Raft traffic (default: this broker's address in
    /// --controller-quorum-voters).
    #[arg(long, env = "RUNNEL_RAFT_LISTEN")]
    raft_listen: Option<String>,
    /// The `host:port` other brokers reach this broker's Raft listener at, recorded in the
    /// cluster metadata when it registers (default: its --controller-quorum-voters entry;
    /// for a broker that joins, --raft-listen, with the advertised host in place of
    /// 0.0.0.0).
    #[arg(long, env = "RUNNEL_RAFT_ADVERTISED_ADDRESS")]
    raft_advertised_address: Option<String>,
    /// Whether preferred leaders take their partitions back after failures
    /// (`auto.leader.rebalance.enable`, default true).
    #[arg(long, env = "RUNNEL_AUTO_LEADER_REBALANCE_ENABLE")]
    auto_leader_rebalance_enable: Option<bool>,
    /// How often a broker checks whether it should take its preferred partitions back, in
    /// seconds (`leader.imbalance.check.interval.seconds`, default 300).
    #[arg(long, env = "RUNNEL_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS")]
    leader_imbalance_check_interval_seconds: Option<u64>,
    /// How long a follower may lag before it leaves the ISR, in ms
    /// (`replica.lag.time.max.ms`, default 30000).
    #[arg(long, env = "RUNNEL_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<i64>,
    /// How long the metadata leader waits to hear from a broker before it fences it and
    /// reports its replicas offline, in ms (`broker.session.timeout.ms`, default 9000).
    #[arg(long, env = "RUNNEL_BROKER_SESSION_TIMEOUT_MS")]
    broker_session_timeout_ms: Option<i64>,
    /// One-way delay, in ms, added to Raft traffic to brokers in other AZs (simulated
    /// inter-AZ latency; `runnel dev --az-latency-ms`).
    #[arg(long, env = "RUNNEL_AZ_LATENCY_MS", default_value_t = 0)]
    az_latency_ms: u64,
}

/// Reads `name` from the properties as a number, if set.
fn number<T: std::str::FromStr>(
    props: &HashMap<String, String>,
    name: &str,
) -> anyhow::Result<Option<T>> {
    props
        .get(name)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("{name} must be a number, not {v:?}"))
        })
        .transpose()
}

/// The group coordinator's settings, under Kafka's names.
fn group_config(
    args: &ServeArgs,
    props: &HashMap<String, String>,
) -> anyhow::Result<runnel_broker::group::GroupConfig> {
    let mut c = runnel_broker::group::GroupConfig::default();
    if let Some(v) = args
        .offsets_topic_num_partitions
        .or(number(props, "offsets.topic.num.partitions")?)
    {
        if v < 1 {
            bail!("offsets.topic.num.partitions must be at least 1");
        }
        c.offsets_topic_num_partitions = v;
    }
    if let Some(v) = number(props, "offsets.topic.replication.factor")? {
        c.offsets_topic_replication_factor = v;
    }
    if let Some(v) = number(props, "offsets.topic.segment.bytes")? {
        c.offsets_topic_segment_bytes = v;
    }
    if let Some(v) = number(props, "offsets.retention.minutes")? {
        c.offsets_retention_minutes = v;
    }
    if let Some(v) = number(props, "offsets.retention.check.interval.ms")? {
        c.offsets_retention_check_interval_ms = v;
    }
    if let Some(v) = number(props, "offset.metadata.max.bytes")? {
        c.offset_metadata_max_bytes = v;
    }
    if let Some(v) = number(props, "group.min.session.timeout.ms")? {
        c.groups.min_session_timeout_ms = v;
    }
    if let Some(v) = number(props, "group.max.session.timeout.ms")? {
        c.groups.max_session_timeout_ms = v;
    }
    if let Some(v) = number(props, "group.max.size")? {
        c.groups.max_size = v;
    }
    if let Some(v) = number(props, "group.consumer.session.timeout.ms")? {
        c.consumer.session_timeout_ms = v;
    }
    if let Some(v) = args
        .group_consumer_heartbeat_interval_ms
        .or(number(props, "group.consumer.heartbeat.interval.ms")?)
    {
        if v < 1 {
            bail!("group.consumer.heartbeat.interval.ms must be at least 1");
        }
        c.consumer.heartbeat_interval_ms = v;
    }
    if let Some(v) = number(props, "group.consumer.max.size")? {
        c.consumer.max_size = v;
    }
    if let Some(v) = args
        .group_initial_rebalance_delay_ms
        .or(number(props, "group.initial.rebalance.delay.ms")?)
    {
        c.groups.initial_rebalance_delay_ms = v.max(0);
    }
    Ok(c)
}

/// The transaction coordinator's settings, under Kafka's names.
fn txn_config(
    args: &ServeArgs,
    props: &HashMap<String, String>,
) -> anyhow::Result<runnel_broker::txn::TxnConfig> {
    let mut c = runnel_broker::txn::TxnConfig::default();
    if let Some(v) = args
        .transaction_state_log_num_partitions
        .or(number(props, "transaction.state.log.num.partitions")?)
    {
        if v < 1 {
            bail!("transaction.state.log.num.partitions must be at least 1");
        }
        c.state_log_num_partitions = v;
    }
    if let Some(v) = number(props, "transaction.state.log.replication.factor")? {
        c.state_log_replication_factor = v;
    }
    if let Some(v) = number(props, "transaction.state.log.segment.bytes")? {
        c.state_log_segment_bytes = v;
    }
    if let Some(v) = number(props, "transaction.max.timeout.ms")? {
        if v < 1 {
            bail!("transaction.max.timeout.ms must be at least 1");
        }
        c.max_timeout_ms = v;
    }
    if let Some(v) = number(props, "transactional.id.expiration.ms")? {
        c.transactional_id_expiration_ms = v;
    }
    if let Some(v) = args
        .transaction_abort_timed_out_transaction_cleanup_interval_ms
        .or(number(
            props,
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        )?)
    {
        c.abort_timed_out_interval_ms = v.max(1);
    }
    if let Some(v) = number(
        props,
        "transaction.remove.expired.transaction.cleanup.interval.ms",
    )? {
        c.remove_expired_interval_ms = v;
    }
    if let Some(v) = args
        .transaction_version
        .or(number(props, "transaction.version")?)
    {
        if !(0..=runnel_broker::txn::MAX_TRANSACTION_VERSION).contains(&v) {
            bail!(
                "transaction.version must be between 0 and {}",
                runnel_broker::txn::MAX_TRANSACTION_VERSION
            );
        }
        c.transaction_version = v;
    }
    Ok(c)
}

/// `1@host:port,2@host:port,...`. Host names are kept as given and resolved whenever a
/// broker connects to its peer (in a container network a peer's name exists only once it runs).
fn parse_voters(spec: &str) -> anyhow::Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('@')
            .with_context(|| format!("controller voter {part:?}: expected id@host:port"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("controller voter {part:?}: the id must be an integer"))?;
        if out.iter().any(|(other, _)| *other == id) {
            bail!("controller voter {id} is listed twice");
        }
        let (host, port) = split_host_port(addr)
            .with_context(|| format!("controller voter {part:?}: expected id@host:port"))?;
        if host.is_empty() {
            bail!("controller voter {part:?}: the host is missing");
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        out.push((id, addr));
    }
    Ok(out)
}

fn read_properties(path: &PathBuf) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            bail!("{}:{}: expected key=value", path.display(), n + 1);
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `PLAINTEXT://host:port` or `host:port`.
fn strip_listener(value: &str) -> &str {
    value
        .split(',')
        .next()
        .unwrap_or(value)
        .rsplit("://")
        .next()
        .unwrap_or(value)
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve listen address {addr}"))?
        .next()
        .with_context(|| format!("listen address {addr} resolves to nothing"))
}

fn split_host_port(value: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = value
        .rsplit_once(':')
        .with_context(|| format!("{value}: expected host:port"))?;
    let port = port.parse().with_context(|| format!("{value}: bad port"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

fn build_config(args: &ServeArgs) -> anyhow::Result<(BrokerConfig, Option<SocketAddr>)> {
    let props = match &args.config {
        Some(path) => read_properties(path)?,
        None => HashMap::new(),
    };
    let prop = |k: &str| props.get(k).cloned();
    let node_id = match args.node_id {
        Some(id) => id,
        None => prop("node.id")
            .or_else(|| prop("broker.id"))
            .map(|v| v.parse())
            .transpose()
            .context("node.id must be an integer")?
            .unwrap_or(1),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| {
            prop("log.dirs")
                .or_else(|| prop("log.dir"))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("./runnel-data"));
    // Named listeners (--listeners, or `listeners` in the file unless --listen is given)
    // or the single default listener of --listen.
    let named = args.listeners.clone().or_else(|| {
        if args.listen.is_some() {
            None
        } else {
            prop("listeners")
        }
    });
    let mut config = if let Some(spec) = named {
        if args.advertised_listener.is_some() {
            bail!("--advertised-listener goes with --listen; with --listeners give --advertised-listeners NAME://host:port,...");
        }
        let advertised = args
            .advertised_listeners
            .clone()
            .or_else(|| prop("advertised.listeners"));
        let listeners = runnel_broker::config::resolve_listeners(&spec, advertised.as_deref())
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut config = BrokerConfig::new(node_id, data_dir, listeners[0].listen);
        config
            .set_listeners(listeners)
            .map_err(|e| anyhow::anyhow!(e))?;
        config
    } else {
        if args.advertised_listeners.is_some() {
            bail!("--advertised-listeners goes with --listeners NAME://host:port,...; with --listen give --advertised-listener host:port");
        }
        let listen = args
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9092".to_string());
        let listen_addr = resolve(&listen)?;
        let mut config = BrokerConfig::new(node_id, data_dir, listen_addr);
        let advertised = args
            .advertised_listener
            .clone()
            .or_else(|| prop("advertised.listeners").map(|l| strip_listener(&l).to_string()));
        if let Some(adv) = advertised {
            let (host, port) = split_host_port(&adv)?;
            config.advertised_host = host;
            config.advertised_port = port;
        } else if listen_addr.ip().is_unspecified() {
            bail!("--listen {listen} binds every interface: also give --advertised-listener host:port so clients know where to connect");
        }
        config
    };
    config.rack = args
        .az
        .clone()
        .or_else(|| prop("broker.rack"))
        .or_else(|| Some("az-1".to_string()));
    config.fsync = !args.no_fsync;
    if let Some(v) = prop("num.partitions") {
        config.num_partitions = v.parse().context("num.partitions must be an integer")?;
    }
    if let Some(v) = args
        .default_replication_factor
        .or(number(&props, "default.replication.factor")?)
    {
        if v < 1 {
            bail!("default.replication.factor must be at least 1");
        }
        config.default_replication_factor = v;
    }
    if let Some(v) = prop("auto.create.topics.enable") {
        config.auto_create_topics = v
            .parse()
            .context("auto.create.topics.enable must be true or false")?;
    }
    if let Some(v) = prop("socket.request.max.bytes") {
        config.max_request_size = v
            .parse()
            .context("socket.request.max.bytes must be an integer")?;
    }
    if let Some(v) = args
        .retention_check_interval_ms
        .or(prop("log.retention.check.interval.ms").and_then(|v| v.parse().ok()))
    {
        config.retention_check_interval_ms = v;
    }
    config.group = group_config(args, &props)?;
    config.txn = txn_config(args, &props)?;
    if let Some(spec) = args
        .controller_quorum_voters
        .clone()
        .or_else(|| prop("controller.quorum.voters"))
    {
        config.controller_voters = parse_voters(&spec)?;
        if !config
            .controller_voters
            .iter()
            .any(|(id, _)| *id == node_id)
            && args.raft_listen.is_none()
        {
            bail!("node {node_id} is not in --controller-quorum-voters {spec}: to join the cluster as a broker that is not a voter, give it --raft-listen (where other brokers reach its Raft traffic)");
        }
    }
    if let Some(addr) = &args.raft_listen {
        config.raft_listen = Some(resolve(addr)?);
    }
    config.raft_advertised = args
        .raft_advertised_address
        .clone()
        .or_else(|| prop("raft.advertised.address"));
    if let Some(v) = number(&props, "producer.id.expiration.ms")? {
        config.producer_id_expiration_ms = v;
    }
    if let Some(v) = args
        .auto_leader_rebalance_enable
        .or(prop("auto.leader.rebalance.enable")
            .map(|v| v.trim().parse::<bool>())
            .transpose()
            .context("auto.leader.rebalance.enable must be true or false")?)
    {
        config.auto_leader_rebalance = v;
    }
    if let Some(v) = args
        .leader_imbalance_check_interval_seconds
        .or(number(&props, "leader.imbalance.check.interval.seconds")?)
    {
        if v < 1 {
            bail!("leader.imbalance.check.interval.seconds must be at least 1");
        }
        config.leader_imbalance_check_interval_ms = v * 1000;
    }
    if let Some(v) = number::<u32>(&props, "leader.imbalance.per.broker.percentage")? {
        config.leader_imbalance_per_broker_percentage = v;
    }
    if let Some(v) = args
        .replica_lag_time_max_ms
        .or(number(&props, "replica.lag.time.max.ms")?)
    {
        if v < 1 {
            bail!("replica.lag.time.max.ms must be at least 1");
        }
        config.replica_lag_time_max_ms = v;
    }
    if let Some(v) = prop("replica.selector.class") {
        config.rack_aware_replica_selector = match v.trim() {
            "" | "org.apache.kafka.common.replica.LeaderSelector" => false,
            "org.apache.kafka.common.replica.RackAwareReplicaSelector" => true,
            other => bail!("replica.selector.class {other:?} is not supported: use org.apache.kafka.common.replica.RackAwareReplicaSelector or org.apache.kafka.common.replica.LeaderSelector"),
        };
    }
    if let Some(v) = args
        .broker_session_timeout_ms
        .or(number(&props, "broker.session.timeout.ms")?)
    {
        if v < 1 {
            bail!("broker.session.timeout.ms must be at least 1");
        }
        config.broker_session_timeout_ms = v;
    }
    let metrics = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9644".to_string());
    let metrics = if metrics.trim().is_empty() {
        None
    } else {
        Some(resolve(&metrics)?)
    };
    Ok((config, metrics))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,runnel=info,runnel_broker=info,runnel_replication=info,runnel_storage=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let started = std::time::Instant::now();
    let (config, metrics) = build_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if let Some(addr) = metrics {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| {
                    format!("cannot serve metrics on {addr} (use --metrics-listen '' to disable)")
                })?;
        }
        let listeners = runnel_broker::bind_all(&config).await.context(
            "is another broker already running? use --listen or --listeners to pick other ports",
        )?;
        let transport = runnel_broker::TransportOptions {
            az_latency: std::time::Duration::from_millis(args.az_latency_ms),
        };
        let broker = Arc::new(
            Broker::open_with(config.clone(), transport).context("cannot open the data dir")?,
        );
        broker
            .register()
            .await
            .context("cannot register the broker in the cluster metadata")?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(broker.clone().serve_listeners(listeners, stopped));
        let listening = config
            .listeners()
            .iter()
            .map(|l| match &l.advertised {
                Some((host, port)) => {
                    format!("{} {} (advertised {host}:{port})", l.name, l.listen)
                }
                None => format!("{} {} (not advertised)", l.name, l.listen),
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "runnel: broker {} ({}) ready in {} ms on {listening}, data in {}",
            config.node_id,
            config.rack.as_deref().unwrap_or("-"),
            started.elapsed().as_millis(),
            config.data_dir.display()
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
        let _ = serving.await;
        // Stops the Raft driver, which checkpoints every log.
        broker.replication.shutdown();
        if !config.controller_voters.is_empty() {
            println!(
                "runnel: broker {} ({}) cross-AZ traffic: {}",
                config.node_id,
                config.rack.as_deref().unwrap_or("-"),
                broker.cross_az_bytes()
            );
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
