//! One client connection: bytes to frames to requests, and responses back in request order.
//! Requests are handled concurrently (a producer's pipelined batches share one fsync) and
//! answered in the order they arrived, as Kafka requires.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::ApiKey;
use runnel_protocol::{decode_request, DecodeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::handlers::{self, Reply};
use crate::probe;
use crate::Broker;

/// Requests of one connection in flight at once.
const MAX_IN_FLIGHT: usize = 64;

pub(crate) async fn run(
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    probe::connection_opened();
    let (mut reader, writer) = socket.into_split();
    let (tx, rx) = mpsc::channel::<oneshot::Receiver<Reply>>(MAX_IN_FLIGHT);
    let writer_task = tokio::spawn(write_loop(writer, rx));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'conn: loop {
        loop {
            match next_frame(&mut buf, broker.config.max_request_size) {
                Ok(Some(frame)) => {
                    if !dispatch(&broker, frame, &tx, peer, &listener).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing connection: bad frame");
                    break 'conn;
                }
            }
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed");
                    break;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(tx);
    let _ = writer_task.await;
    probe::connection_closed();
}

/// Starts handling one frame; false when the connection must close.
async fn dispatch(
    broker: &Arc<Broker>,
    frame: Bytes,
    tx: &mpsc::Sender<oneshot::Receiver<Reply>>,
    peer: SocketAddr,
    listener: &Arc<str>,
) -> bool {
    let (done, answer) = oneshot::channel();
    match decode_request(frame) {
        Ok(request) => {
            if tx.send(answer).await.is_err() {
                return false;
            }
            let reply = handlers::start(broker, request, peer, listener.clone());
            tokio::spawn(async move {
                let _ = done.send(reply.await);
            });
            true
        }
        Err(DecodeError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            ..
        }) => {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our table, so the client
            // can retry with a version we speak.
            let _ = done.send(handlers::api_versions::unsupported_version_response(
                correlation_id,
            ));
            tx.send(answer).await.is_ok()
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "closing connection: cannot decode request");
            false
        }
    }
}

async fn write_loop(mut writer: OwnedWriteHalf, mut rx: mpsc::Receiver<oneshot::Receiver<Reply>>) {
    while let Some(answer) = rx.recv().await {
        let Ok(response) = answer.await else { break };
        match response {
            Reply::Frame(bytes) => {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Reply::Nothing => {}
            Reply::Close => break,
        }
    }
    let _ = writer.shutdown().await;
}
