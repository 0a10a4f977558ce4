//! Named listeners (Kafka's `listeners` / `advertised.listeners`): a client is answered with
//! the endpoints of the listener its connection came in on, in Metadata, FindCoordinator and
//! DescribeCluster, and brokers without that listener are left out.

mod common;

use std::sync::Arc;

use common::Client;
use runnel_broker::config::{resolve_listeners, ListenerConfig};
use runnel_broker::{Broker, BrokerConfig};
use runnel_protocol::kafka_protocol::messages::*;
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

struct Listeners {
    _broker: Arc<Broker>,
    _dir: tempfile::TempDir,
    /// Bound address of INTERNAL, EXTERNAL and HIDDEN (not advertised).
    internal: std::net::SocketAddr,
    external: std::net::SocketAddr,
    hidden: std::net::SocketAddr,
}

/// A broker with three listeners: INTERNAL advertised as `broker-1.internal`, EXTERNAL as
/// `localhost`, HIDDEN bound but not advertised.
async fn start() -> Listeners {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bound = Vec::new();
    for _ in 0..3 {
        bound.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let ports: Vec<u16> = bound
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let spec = format!(
        "INTERNAL://127.0.0.1:{},EXTERNAL://127.0.0.1:{},HIDDEN://127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let advertised = format!(
        "INTERNAL://broker-1.internal:{},EXTERNAL://localhost:{}",
        ports[0], ports[1]
    );
    let listeners: Vec<ListenerConfig> =
        resolve_listeners(&spec, Some(&advertised)).expect("listeners");
    let mut config = BrokerConfig::new(1, dir.path().to_path_buf(), listeners[0].listen);
    config.set_listeners(listeners.clone()).expect("set");
    config.fsync = false;
    let broker = Arc::new(Broker::open(config).expect("open"));
    broker.register().await.expect("register");
    let named = listeners
        .iter()
        .map(|l| l.name.clone())
        .zip(bound)
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(broker.clone().serve_listeners(named, stopped));
    std::mem::forget(stop);
    let addr = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[i]));
    Listeners {
        _broker: broker,
        _dir: dir,
        internal: addr(0),
        external: addr(1),
        hidden: addr(2),
    }
}

async fn metadata(client: &mut Client, version: i16, topic: Option<&str>) -> MetadataResponse {
    let topics = topic.map(|t| {
        vec![metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))]
    });
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(true);
    match client
        .call(ApiKey::Metadata, version, RequestKind::Metadata(request))
        .await
    {
        ResponseKind::Metadata(m) => m,
        other => panic!("not a Metadata answer: {other:?}"),
    }
}

fn hosts(md: &MetadataResponse) -> Vec<(String, i32)> {
    md.brokers
        .iter()
        .map(|b| (b.host.to_string(), b.port))
        .collect()
}

/// FindCoordinator for one group; `wait` retries COORDINATOR_NOT_AVAILABLE while the offsets
/// topic (created on first use) elects its leader.
async fn coordinator(client: &mut Client, version: i16, wait: bool) -> (i16, String, i32) {
    let request = if version >= 4 {
        FindCoordinatorRequest::default()
            .with_coordinator_keys(vec![StrBytes::from_static_str("listeners-group")])
    } else {
        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("listeners-group"))
    };
    // The offsets topic is created on first use; its leader is elected within moments.
    for _ in 0..200 {
        let ResponseKind::FindCoordinator(r) = client
            .call(
                ApiKey::FindCoordinator,
                version,
                RequestKind::FindCoordinator(request.clone()),
            )
            .await
        else {
            panic!("not a FindCoordinator answer");
        };
        let (code, host, port) = match r.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.host.to_string(), c.port),
            _ => (r.error_code, r.host.to_string(), r.port),
        };
        if !wait || code != ResponseError::CoordinatorNotAvailable.code() {
            return (code, host, port);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("FindCoordinator never found a coordinator");
}

#[tokio::test(flavor = "current_thread")]
async fn metadata_answers_with_the_endpoints_of_the_listener_the_client_connected_to() {
    let b = start().await;
    let mut internal = Client::connect(b.internal).await;
    let mut external = Client::connect(b.external).await;
    for version in [0, 1, 4, 9, 12] {
        assert_eq!(
            hosts(&metadata(&mut internal, version, None).await),
            vec![(
                "broker-1.internal".to_string(),
                i32::from(b.internal.port())
            )],
            "Metadata v{version} on INTERNAL"
        );
        assert_eq!(
            hosts(&metadata(&mut external, version, None).await),
            vec![("localhost".to_string(), i32::from(b.external.port()))],
            "Metadata v{version} on EXTERNAL"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn find_coordinator_and_describe_cluster_answer_with_the_connections_listener() {
    let b = start().await;
    let mut internal = Client::connect(b.internal).await;
    let mut external = Client::connect(b.external).await;
    for version in [0, 3, 4, 6] {
        let (code, host, port) = coordinator(&mut internal, version, true).await;
        assert_eq!(
            (code, host.as_str(), port),
            (0, "broker-1.internal", i32::from(b.internal.port())),
            "FindCoordinator v{version} on INTERNAL"
        );
        let (code, host, port) = coordinator(&mut external, version, true).await;
        assert_eq!(
            (code, host.as_str(), port),
            (0, "localhost", i32::from(b.external.port())),
            "FindCoordinator v{version} on EXTERNAL"
        );
    }
    for version in [0, 1] {
        for (client, want) in [
            (&mut internal, ("broker-1.internal", b.internal.port())),
            (&mut external, ("localhost", b.external.port())),
        ] {
            let ResponseKind::DescribeCluster(r) = client
                .call(
                    ApiKey::DescribeCluster,
                    version,
                    RequestKind::DescribeCluster(
                        DescribeClusterRequest::default().with_endpoint_type(1),
                    ),
                )
                .await
            else {
                panic!("not a DescribeCluster answer");
            };
            let got: Vec<(String, i32)> = r
                .brokers
                .iter()
                .map(|b| (b.host.to_string(), b.port))
                .collect();
            assert_eq!(
                got,
                vec![(want.0.to_string(), i32::from(want.1))],
                "DescribeCluster v{version}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_listener_that_is_not_advertised_shows_no_broker_leader_or_coordinator() {
    let b = start().await;
    // Create the topic through an advertised listener, then look from the hidden one.
    let mut external = Client::connect(b.external).await;
    let md = metadata(&mut external, 12, Some("seen")).await;
    assert_eq!(md.topics.len(), 1);
    let mut hidden = Client::connect(b.hidden).await;
    let mut led = false;
    for _ in 0..200 {
        let md = metadata(&mut hidden, 12, Some("seen")).await;
        assert!(
            md.brokers.is_empty(),
            "no broker on HIDDEN: {:?}",
            md.brokers
        );
        let p = &md.topics[0].partitions[0];
        if p.error_code == ResponseError::ListenerNotFound.code() {
            assert_eq!(p.leader_id.0, -1);
            led = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(led, "a led partition reads LISTENER_NOT_FOUND on HIDDEN");
    // Metadata v5 has no LISTENER_NOT_FOUND: LEADER_NOT_AVAILABLE, as Kafka answers.
    let md = metadata(&mut hidden, 5, Some("seen")).await;
    assert_eq!(
        md.topics[0].partitions[0].error_code,
        ResponseError::LeaderNotAvailable.code()
    );
    // The coordinator exists (found through EXTERNAL) but has no HIDDEN endpoint.
    assert_eq!(coordinator(&mut external, 4, true).await.0, 0);
    let (code, _, _) = coordinator(&mut hidden, 4, false).await;
    assert_eq!(code, ResponseError::CoordinatorNotAvailable.code());
}
