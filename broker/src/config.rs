//! Static broker configuration (what `runnel serve` is started with), named after Kafka's
//! broker configs.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The name of the one listener of a broker configured with `--listen` alone.
pub const DEFAULT_LISTENER: &str = "PLAINTEXT";

/// One named listener: where it binds and what it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// The endpoint clients of this listener are told about; `None` for a listener left out
    /// of `advertised.listeners` (bound, but no broker is advertised on it, as in Kafka).
    pub advertised: Option<(String, u16)>,
}

/// One `NAME://host:port` entry of `listeners` or `advertised.listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// Parses Kafka's listener list syntax: `NAME://host:port,...` (`[v6]:port` too; a bare
/// `host:port` is the `PLAINTEXT` listener). Names are case-insensitive (upper-cased, as
/// Kafka's `ListenerName.normalised`) and must be distinct. `what` names the setting in errors.
pub fn parse_listener_list(spec: &str, what: &str) -> Result<Vec<ListenerSpec>, String> {
    let mut out: Vec<ListenerSpec> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = match entry.split_once("://") {
            Some((name, address)) => (name.trim().to_ascii_uppercase(), address),
            None => (DEFAULT_LISTENER.to_string(), entry),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "{what}: {entry:?}: the listener name must be letters, digits, '_' or '-' (NAME://host:port)"
            ));
        }
        if matches!(name.as_str(), "SSL" | "SASL_PLAINTEXT" | "SASL_SSL") {
            return Err(format!(
                "{what}: {entry:?}: runnel speaks PLAINTEXT only; TLS and SASL listeners are not supported"
            ));
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{what}: {entry:?}: expected NAME://host:port"))?;
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| format!("{what}: {entry:?}: the port must be a number from 0 to 65535"))?;
        let host = host.trim();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if out.iter().any(|l| l.name == name) {
            return Err(format!("{what}: the listener name {name} appears twice"));
        }
        out.push(ListenerSpec {
            name,
            host: host.to_string(),
            port,
        });
    }
    if out.is_empty() {
        return Err(format!("{what} is empty: expected NAME://host:port,..."));
    }
    Ok(out)
}

/// Kafka's `listeners` and `advertised.listeners` together: every listener binds its own
/// address (an empty host binds every interface); `advertised` (default: `listeners`) says
/// what each one tells its clients. Advertised names must be listeners; a listener left out
/// of `advertised` advertises nothing. The first advertised listener comes first.
pub fn resolve_listeners(
    listeners: &str,
    advertised: Option<&str>,
) -> Result<Vec<ListenerConfig>, String> {
    let binds = parse_listener_list(listeners, "listeners")?;
    let mut ports: Vec<u16> = binds.iter().map(|l| l.port).filter(|p| *p != 0).collect();
    ports.sort_unstable();
    if ports.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!(
            "listeners: each listener must have a different port ({listeners})"
        ));
    }
    let adverts = match advertised {
        Some(a) => parse_listener_list(a, "advertised.listeners")?,
        None => binds.clone(),
    };
    for a in &adverts {
        if !binds.iter().any(|b| b.name == a.name) {
            return Err(format!(
                "advertised.listeners: {} is not one of the listeners ({listeners})",
                a.name
            ));
        }
        let unspecified = a.host.is_empty()
            || a.host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
        if unspecified {
            return Err(if advertised.is_some() {
                format!(
                    "advertised.listeners: {}://{}:{} is not an address clients can connect to: give a host name or a routable IP",
                    a.name, a.host, a.port
                )
            } else {
                format!(
                    "listeners: {}://{}:{} binds every interface: also give advertised listeners (--advertised-listeners {}://host:port) so clients know where to connect",
                    a.name, a.host, a.port, a.name
                )
            });
        }
        if a.port == 0 {
            return Err(format!(
                "advertised.listeners: {}://{}:0: advertise the real port",
                a.name, a.host
            ));
        }
    }
    let mut out = Vec::with_capacity(binds.len());
    for b in binds {
        let host = if b.host.is_empty() {
            "0.0.0.0"
        } else {
            &b.host
        };
        let listen = std::net::ToSocketAddrs::to_socket_addrs(&(host, b.port))
            .map_err(|e| {
                format!(
                    "listeners: cannot resolve {}://{host}:{}: {e}",
                    b.name, b.port
                )
            })?
            .next()
            .ok_or_else(|| {
                format!(
                    "listeners: {}://{host}:{} resolves to nothing",
                    b.name, b.port
                )
            })?;
        let advertised = adverts
            .iter()
            .find(|a| a.name == b.name)
            .map(|a| (a.host.clone(), a.port));
        out.push(ListenerConfig {
            name: b.name,
            listen,
            advertised,
        });
    }
    // The first advertised listener fills the record fields older readers know.
    if let Some(first) = out.iter().position(|l| l.advertised.is_some()) {
        let l = out.remove(first);
        out.insert(0, l);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `log.dirs`.
    pub data_dir: PathBuf,
    /// The address to bind: the first listener's.
    pub listen: SocketAddr,
    /// `advertised.listeners`: the host and port clients of the first listener are told to
    /// connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// The first listener's name (`PLAINTEXT` unless named listeners were configured).
    pub listener_name: String,
    /// More named listeners (`listeners=INTERNAL://...,EXTERNAL://...` beyond the first):
    /// each binds its own address and advertises its own endpoint, and a client is answered
    /// with the endpoints of the listener its connection came in on.
    pub extra_listeners: Vec<ListenerConfig>,
    /// `broker.rack`: the availability zone.
    pub rack: Option<String>,
    /// `socket.request.max.bytes`.
    pub max_request_size: usize,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and of CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// fsync once per Raft cycle before acknowledging (default). Off: page cache only.
    pub fsync: bool,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    pub max_connections: usize,
    /// `offsets.topic.*`, `offsets.retention.*`, `group.*`: the group coordinator.
    pub group: crate::group::GroupConfig,
    /// `transaction.*`, `transactional.id.expiration.ms`: the transaction coordinator.
    pub txn: crate::txn::TxnConfig,
    /// `producer.id.expiration.ms`.
    pub producer_id_expiration_ms: i64,
    /// `controller.quorum.voters`: the brokers (id and Raft address) of the cluster metadata
    /// group. Empty: this broker alone.
    /// Addresses are `host:port`, names resolved at every connection attempt.
    pub controller_voters: Vec<(i32, String)>,
    /// Where this broker listens for other brokers' Raft traffic (its own entry of
    /// `controller_voters` by default).
    pub raft_listen: Option<SocketAddr>,
    /// Where other brokers reach this one's Raft listener, recorded when it registers
    /// (default: its entry of `controller_voters`, else `raft_listen` with the advertised
    /// host when it listens on every address).
    pub raft_advertised: Option<String>,
    /// `auto.leader.rebalance.enable`.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_per_broker_percentage: u32,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: i64,
    /// `broker.session.timeout.ms`.
    pub broker_session_timeout_ms: i64,
    /// `replica.selector.class` is `RackAwareReplicaSelector` (KIP-392): consumers that send
    /// `client.rack` are sent to an in-sync replica in their AZ. Runnel's default, since
    /// cross-AZ traffic is what it costs on AWS; Kafka's default is leader-only.
    pub rack_aware_replica_selector: bool,
}

impl BrokerConfig {
    pub fn new(node_id: i32, data_dir: PathBuf, listen: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            node_id,
            data_dir,
            listen,
            advertised_host: listen.ip().to_string(),
            advertised_port: listen.port(),
            listener_name: DEFAULT_LISTENER.to_string(),
            extra_listeners: Vec::new(),
            rack: None,
            max_request_size: runnel_protocol::DEFAULT_MAX_REQUEST_SIZE,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            fsync: true,
            retention_check_interval_ms: 300_000,
            max_connections: 10_000,
            group: crate::group::GroupConfig::default(),
            txn: crate::txn::TxnConfig::default(),
            producer_id_expiration_ms: 86_400_000,
            controller_voters: Vec::new(),
            raft_listen: None,
            raft_advertised: None,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            replica_lag_time_max_ms: 30_000,
            broker_session_timeout_ms: 9_000,
            rack_aware_replica_selector: true,
        }
    }

    /// Whether this broker is one of the controller voters (or the only broker).
    pub fn is_controller_voter(&self) -> bool {
        self.controller_voters.is_empty()
            || self
                .controller_voters
                .iter()
                .any(|(id, _)| *id == self.node_id)
    }

    /// The Raft address this broker registers (empty for a broker alone): see
    /// [`BrokerConfig::raft_advertised`].
    pub fn raft_address(&self) -> String {
        if self.controller_voters.is_empty() {
            return String::new();
        }
        if let Some(a) = &self.raft_advertised {
            return a.clone();
        }
        if let Some((_, a)) = self
            .controller_voters
            .iter()
            .find(|(id, _)| *id == self.node_id)
        {
            return a.clone();
        }
        match self.raft_listen {
            Some(l) if l.ip().is_unspecified() => format!("{}:{}", self.advertised_host, l.port()),
            Some(l) => l.to_string(),
            None => String::new(),
        }
    }

    /// Every listener, the first (`listen`, `advertised_*`) first.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        let mut out = vec![ListenerConfig {
            name: self.listener_name.clone(),
            listen: self.listen,
            advertised: Some((self.advertised_host.clone(), self.advertised_port)),
        }];
        out.extend(self.extra_listeners.iter().cloned());
        out
    }

    /// Sets every listener from [`resolve_listeners`]' answer (at least one, the first
    /// advertised).
    pub fn set_listeners(&mut self, listeners: Vec<ListenerConfig>) -> Result<(), String> {
        let mut it = listeners.into_iter();
        let first = it.next().ok_or("no listeners")?;
        let (host, port) = first
            .advertised
            .clone()
            .ok_or("advertised.listeners must name at least one of the listeners")?;
        self.listener_name = first.name;
        self.listen = first.listen;
        self.advertised_host = host;
        self.advertised_port = port;
        self.extra_listeners = it.collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_listeners_bind_and_advertise_their_own_endpoints() {
        let l = resolve_listeners(
            "INTERNAL://0.0.0.0:19092,external://127.0.0.1:9092",
            Some("INTERNAL://broker-1:19092,EXTERNAL://localhost:9092"),
        )
        .expect("valid");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "INTERNAL");
        assert_eq!(l[0].listen, "0.0.0.0:19092".parse().expect("addr"));
        assert_eq!(l[0].advertised, Some(("broker-1".to_string(), 19092)));
        assert_eq!(l[1].name, "EXTERNAL");
        assert_eq!(l[1].advertised, Some(("localhost".to_string(), 9092)));
    }

    #[test]
    fn listeners_without_advertised_listeners_advertise_their_bind_address() {
        let l = resolve_listeners("PLAINTEXT://127.0.0.1:9092", None).expect("valid");
        assert_eq!(l[0].advertised, Some(("127.0.0.1".to_string(), 9092)));
        let err = resolve_listeners("A://0.0.0.0:9092", None).expect_err("unroutable");
        assert!(err.contains("binds every interface"), "{err}");
        let err = resolve_listeners("A://:9092", None).expect_err("unroutable");
        assert!(err.contains("binds every interface"), "{err}");
    }

    #[test]
    fn a_listener_left_out_of_advertised_listeners_advertises_nothing() {
        let l = resolve_listeners(
            "A://127.0.0.1:9092,B://127.0.0.1:9093",
            Some("B://b.example:9093"),
        )
        .expect("valid");
        // The advertised one comes first.
        assert_eq!(l[0].name, "B");
        assert_eq!(l[1].name, "A");
        assert_eq!(l[1].advertised, None);
    }

    #[test]
    fn bad_listener_settings_are_refused_with_the_reason() {
        let cases = [
            (
                "A://127.0.0.1:9092,A://127.0.0.1:9093",
                None,
                "appears twice",
            ),
            (
                "A://127.0.0.1:9092,B://127.0.0.1:9092",
                None,
                "different port",
            ),
            (
                "A://127.0.0.1:9092",
                Some("B://x:9092"),
                "not one of the listeners",
            ),
            (
                "A://127.0.0.1:9092",
                Some("A://0.0.0.0:9092"),
                "not an address clients",
            ),
            (
                "A://127.0.0.1:9092",
                Some("A://x:0"),
                "advertise the real port",
            ),
            ("A://127.0.0.1", None, "expected NAME://host:port"),
            ("A://127.0.0.1:http", None, "port must be a number"),
            ("A://127.0.0.1:70000", None, "port must be a number"),
            ("SSL://127.0.0.1:9093", None, "PLAINTEXT only"),
            ("A B://127.0.0.1:9093", None, "listener name must be"),
            ("", None, "empty"),
        ];
        for (listeners, advertised, want) in cases {
            let err = resolve_listeners(listeners, advertised)
                .expect_err(&format!("{listeners} / {advertised:?} refused"));
            assert!(err.contains(want), "{listeners} / {advertised:?}: {err}");
        }
    }

    #[test]
    fn a_bare_host_port_is_the_plaintext_listener_and_ipv6_brackets_are_stripped() {
        let l = parse_listener_list("127.0.0.1:9092,X://[::1]:9093", "listeners").expect("ok");
        assert_eq!(l[0].name, "PLAINTEXT");
        assert_eq!(l[1].host, "::1");
        assert_eq!(l[1].port, 9093);
    }
}
