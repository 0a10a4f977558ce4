//! Requests this broker sends to other brokers over the Kafka protocol, as Kafka's own
//! inter-broker clients do: the transaction coordinator's WriteTxnMarkers to the leaders of
//! partitions it does not lead, a partition leader's AddPartitionsToTxn to the transaction
//! coordinator of a Transactions V2 producer (Kafka's `AddPartitionsToTxnManager`), and
//! DescribeQuorum forwarded to the metadata leader. Connections are kept per broker and
//! reused; every call is bounded in time, and a connection that failed is dropped.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, DescribeQuorumRequest,
    DescribeQuorumResponse, RequestKind, ResponseKind, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use runnel_protocol::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Broker;

/// How long one inter-broker request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses from other brokers larger than this are refused.
const MAX_RESPONSE_SIZE: usize = 16 * 1024 * 1024;
/// Idle connections kept per broker.
const MAX_IDLE_PER_BROKER: usize = 4;

struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    next_id: i32,
}

/// Idle connections to other brokers, by broker id.
#[derive(Default)]
pub(crate) struct Peers {
    idle: std::sync::Mutex<HashMap<i32, Vec<Connection>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    fn take(&self, node_id: i32) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&node_id)
            .and_then(Vec::pop)
    }

    fn give_back(&self, node_id: i32, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(node_id).or_default();
        if list.len() < MAX_IDLE_PER_BROKER {
            list.push(c);
        }
    }
}

/// Sends one request to broker `node_id` and waits for its response.
async fn call(
    broker: &Broker,
    node_id: i32,
    key: ApiKey,
    version: i16,
    body: RequestKind,
) -> Result<ResponseKind, String> {
    let mut conn = match broker.peers.take(node_id) {
        Some(c) => c,
        None => {
            let (host, port) = {
                let md = broker.replication.metadata();
                let b = md
                    .brokers
                    .get(&node_id)
                    .ok_or_else(|| format!("broker {node_id} is not registered"))?;
                // Brokers talk to each other on their first listener (Kafka's
                // `inter.broker.listener.name` defaults the same way), else any.
                let name = broker
                    .config
                    .listeners()
                    .first()
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                let (host, port) = b.endpoint(&name).unwrap_or((&b.host, b.port));
                (host.to_string(), port)
            };
            let stream = tokio::time::timeout(
                REQUEST_TIMEOUT,
                TcpStream::connect((host.as_str(), port as u16)),
            )
            .await
            .map_err(|_| format!("connecting to broker {node_id} at {host}:{port} timed out"))?
            .map_err(|e| format!("cannot connect to broker {node_id} at {host}:{port}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Connection {
                stream,
                buf: BytesMut::new(),
                next_id: 0,
            }
        }
    };
    conn.next_id = conn.next_id.wrapping_add(1);
    let id = conn.next_id;
    let client_id = format!("broker-{}", broker.config.node_id);
    let frame = encode_request(key, version, id, &client_id, &body)
        .map_err(|e| format!("encoding {key:?}: {e}"))?;
    let exchange = async {
        conn.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("writing to broker {node_id}: {e}"))?;
        loop {
            if let Some(frame) = next_frame(&mut conn.buf, MAX_RESPONSE_SIZE)
                .map_err(|e| format!("from broker {node_id}: {e}"))?
            {
                let (cid, body) = decode_response(key, version, frame)
                    .map_err(|e| format!("decoding broker {node_id}'s {key:?}: {e}"))?;
                if cid != id {
                    return Err(format!(
                        "broker {node_id} answered correlation id {cid}, expected {id}"
                    ));
                }
                return Ok(body);
            }
            let n = conn
                .stream
                .read_buf(&mut conn.buf)
                .await
                .map_err(|e| format!("reading from broker {node_id}: {e}"))?;
            if n == 0 {
                return Err(format!("broker {node_id} closed the connection"));
            }
        }
    };
    let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("broker {node_id} did not answer {key:?} in time"))?;
    if result.is_ok() {
        broker.peers.give_back(node_id, conn);
    }
    result
}

/// WriteTxnMarkers v1 to broker `node_id`.
pub(crate) async fn write_txn_markers(
    broker: &Broker,
    node_id: i32,
    request: WriteTxnMarkersRequest,
) -> Result<WriteTxnMarkersResponse, String> {
    match call(
        broker,
        node_id,
        ApiKey::WriteTxnMarkers,
        1,
        RequestKind::WriteTxnMarkers(request),
    )
    .await?
    {
        ResponseKind::WriteTxnMarkers(r) => Ok(r),
        other => Err(format!(
            "broker {node_id} answered WriteTxnMarkers with {other:?}"
        )),
    }
}

/// AddPartitionsToTxn v5 (the inter-broker form, KIP-890) to broker `node_id`.
pub(crate) async fn add_partitions_to_txn(
    broker: &Broker,
    node_id: i32,
    request: AddPartitionsToTxnRequest,
) -> Result<AddPartitionsToTxnResponse, String> {
    match call(
        broker,
        node_id,
        ApiKey::AddPartitionsToTxn,
        5,
        RequestKind::AddPartitionsToTxn(request),
    )
    .await?
    {
        ResponseKind::AddPartitionsToTxn(r) => Ok(r),
        other => Err(format!(
            "broker {node_id} answered AddPartitionsToTxn with {other:?}"
        )),
    }
}

/// DescribeQuorum to the metadata leader `node_id`, in the client's `version`.
pub(crate) async fn describe_quorum(
    broker: &Broker,
    node_id: i32,
    version: i16,
    request: DescribeQuorumRequest,
) -> Result<DescribeQuorumResponse, String> {
    match call(
        broker,
        node_id,
        ApiKey::DescribeQuorum,
        version,
        RequestKind::DescribeQuorum(request),
    )
    .await?
    {
        ResponseKind::DescribeQuorum(r) => Ok(r),
        other => Err(format!(
            "broker {node_id} answered DescribeQuorum with {other:?}"
        )),
    }
}
