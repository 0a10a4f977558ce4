#![allow(dead_code, unreachable_pub)]
//! An in-process broker on a loopback port and a raw Kafka client speaking to it.

use std::sync::Arc;

use bytes::BytesMut;
use runnel_broker::{Broker, BrokerConfig};
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use runnel_protocol::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    next_id: i32,
}

impl Client {
    /// A new connection to a broker's listener at `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            next_id: 0,
        }
    }

    pub async fn call(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        self.next_id += 1;
        let frame = encode_request(api_key, version, self.next_id, "idempotence-test", &body)
            .expect("encode");
        self.stream.write_all(&frame).await.expect("write");
        loop {
            if let Some(frame) = next_frame(&mut self.buf, 1 << 26).expect("frame") {
                let (cid, body) = decode_response(api_key, version, frame).expect("decode");
                assert_eq!(cid, self.next_id);
                return body;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "broker closed the connection");
        }
    }
}

pub async fn start() -> (Arc<Broker>, Client, tempfile::TempDir) {
    start_with(|_| {}).await
}

/// A broker whose config `configure` adjusts before it opens.
pub async fn start_with(
    configure: impl FnOnce(&mut BrokerConfig),
) -> (Arc<Broker>, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = BrokerConfig::new(1, dir.path().to_path_buf(), addr);
    config.fsync = false;
    configure(&mut config);
    let broker = Arc::new(Broker::open(config).expect("open"));
    broker.register().await.expect("register");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(broker.clone().serve(listener, stopped));
    std::mem::forget(_stop);
    let stream = TcpStream::connect(addr).await.expect("connect");
    (
        broker,
        Client {
            stream,
            buf: BytesMut::new(),
            next_id: 0,
        },
        dir,
    )
}

impl Client {
    /// Writes every request before reading any answer (a client's in-flight requests), then
    /// returns the answers in order.
    pub async fn pipeline(
        &mut self,
        requests: Vec<(ApiKey, i16, RequestKind)>,
    ) -> Vec<ResponseKind> {
        let mut sent = Vec::with_capacity(requests.len());
        let mut frames = Vec::new();
        for (api_key, version, body) in requests {
            self.next_id += 1;
            frames.extend_from_slice(
                &encode_request(api_key, version, self.next_id, "pipeline-test", &body)
                    .expect("encode"),
            );
            sent.push((self.next_id, api_key, version));
        }
        self.stream.write_all(&frames).await.expect("write");
        let mut out = Vec::with_capacity(sent.len());
        for (id, api_key, version) in sent {
            let body = loop {
                if let Some(frame) = next_frame(&mut self.buf, 1 << 26).expect("frame") {
                    let (cid, body) = decode_response(api_key, version, frame).expect("decode");
                    assert_eq!(cid, id, "answers come in request order");
                    break body;
                }
                let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "broker closed the connection");
            };
            out.push(body);
        }
        out
    }

    /// Sends a request and returns the decoded response, or the decode error.
    pub async fn try_call(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, String> {
        self.next_id += 1;
        let frame = encode_request(api_key, version, self.next_id, "test", &body)
            .map_err(|e| format!("encode: {e}"))?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            if let Some(frame) = next_frame(&mut self.buf, 1 << 26).map_err(|e| e.to_string())? {
                let (cid, body) =
                    decode_response(api_key, version, frame).map_err(|e| format!("decode: {e}"))?;
                if cid != self.next_id {
                    return Err(format!("correlation id {cid}, expected {}", self.next_id));
                }
                return Ok(body);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".into());
            }
        }
    }
}
