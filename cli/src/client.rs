//! A small Kafka client for the CLI: one connection per broker, ApiVersions negotiation, and
//! the metadata lookups the subcommands need. Speaks through `runnel_protocol`.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bytes::BytesMut;
use runnel_protocol::frame::next_frame;
use runnel_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, MetadataResponse, RequestKind, ResponseKind,
    TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_protocol::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Versions this client speaks, newest first choice.
const WANTED: &[(ApiKey, i16)] = &[
    (ApiKey::Metadata, 12),
    (ApiKey::CreateTopics, 7),
    (ApiKey::DeleteTopics, 6),
    (ApiKey::DescribeConfigs, 4),
    (ApiKey::IncrementalAlterConfigs, 1),
    (ApiKey::Produce, 9),
    (ApiKey::Fetch, 12),
    (ApiKey::ListOffsets, 7),
    (ApiKey::FindCoordinator, 3),
    (ApiKey::ListGroups, 5),
    (ApiKey::DescribeGroups, 5),
    (ApiKey::DeleteGroups, 2),
    (ApiKey::OffsetFetch, 7),
    (ApiKey::OffsetCommit, 8),
];

struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    versions: HashMap<i16, (i16, i16)>,
}

pub(crate) struct Client {
    bootstrap: String,
    connections: HashMap<String, Connection>,
    next_id: i32,
}

/// A Kafka error code as the name Kafka's tools print, with its description.
pub(crate) fn error_text(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{} ({code}): {e}", upper_snake(&format!("{e:?}"))),
        None => format!("error code {code}"),
    }
}

fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

impl Client {
    pub(crate) async fn connect(bootstrap: &str) -> anyhow::Result<Client> {
        let mut client = Client {
            bootstrap: bootstrap.to_string(),
            connections: HashMap::new(),
            next_id: 0,
        };
        client.connection(bootstrap).await?;
        Ok(client)
    }

    async fn connection(&mut self, addr: &str) -> anyhow::Result<&mut Connection> {
        if !self.connections.contains_key(addr) {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}: is a broker running there? (start one with `runnel serve`)"))?;
            let mut conn = Connection {
                stream,
                buf: BytesMut::new(),
                versions: HashMap::new(),
            };
            self.next_id += 1;
            let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
            let response = exchange(&mut conn, ApiKey::ApiVersions, 3, self.next_id, &body).await?;
            let ResponseKind::ApiVersions(r) = response else {
                bail!("unexpected answer to ApiVersions")
            };
            if r.error_code != 0 {
                bail!("ApiVersions failed: {}", error_text(r.error_code));
            }
            conn.versions = r
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            self.connections.insert(addr.to_string(), conn);
        }
        self.connections
            .get_mut(addr)
            .context("connection vanished")
    }

    /// The version of `api_key` this client will use with the bootstrap broker.
    pub(crate) async fn version(&mut self, api_key: ApiKey) -> anyhow::Result<i16> {
        let addr = self.bootstrap.clone();
        let conn = self.connection(&addr).await?;
        let wanted = WANTED
            .iter()
            .find(|(k, _)| *k == api_key)
            .map_or(0, |w| w.1);
        let Some(&(_, max)) = conn.versions.get(&(api_key as i16)) else {
            bail!("the broker at {addr} does not support {api_key:?}");
        };
        Ok(wanted.min(max))
    }

    /// Sends a request to `addr` (the bootstrap broker when `None`) at the best version both
    /// sides speak.
    pub(crate) async fn call_at(
        &mut self,
        addr: Option<&str>,
        api_key: ApiKey,
        body: RequestKind,
    ) -> anyhow::Result<(i16, ResponseKind)> {
        let addr = addr.map_or_else(|| self.bootstrap.clone(), str::to_string);
        self.next_id += 1;
        let id = self.next_id;
        let conn = self.connection(&addr).await?;
        let wanted = WANTED
            .iter()
            .find(|(k, _)| *k == api_key)
            .map_or(0, |w| w.1);
        let Some(&(min, max)) = conn.versions.get(&(api_key as i16)) else {
            bail!("the broker at {addr} does not support {api_key:?}");
        };
        let version = wanted.min(max);
        if version < min {
            bail!("the broker at {addr} needs {api_key:?} v{min}+, this client speaks up to v{wanted}");
        }
        let response = exchange(conn, api_key, version, id, &body).await?;
        Ok((version, response))
    }

    pub(crate) async fn call(
        &mut self,
        api_key: ApiKey,
        body: RequestKind,
    ) -> anyhow::Result<ResponseKind> {
        Ok(self.call_at(None, api_key, body).await?.1)
    }

    /// Metadata for `topics` (all topics when `None`).
    pub(crate) async fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> anyhow::Result<MetadataResponse> {
        self.metadata_with(topics, false).await
    }

    pub(crate) async fn metadata_with(
        &mut self,
        topics: Option<&[String]>,
        auto_create: bool,
    ) -> anyhow::Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(auto_create)
            .with_topics(topics.map(|t| {
                t.iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                    .collect()
            }));
        match self
            .call(ApiKey::Metadata, RequestKind::Metadata(request))
            .await?
        {
            ResponseKind::Metadata(m) => Ok(m),
            _ => bail!("unexpected answer to Metadata"),
        }
    }

    /// The address of each partition's leader for one topic; fails with the Kafka error when
    /// the topic does not exist.
    pub(crate) async fn leaders(
        &mut self,
        topic: &str,
        auto_create: bool,
    ) -> anyhow::Result<Vec<(i32, String)>> {
        let md = self
            .metadata_with(Some(&[topic.to_string()]), auto_create)
            .await?;
        let t = md.topics.first().context("the broker returned no topic")?;
        if t.error_code != 0 {
            bail!("topic {topic}: {}", error_text(t.error_code));
        }
        let brokers: HashMap<i32, String> = md
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        let mut out = Vec::new();
        for p in &t.partitions {
            let addr = brokers
                .get(&p.leader_id.0)
                .cloned()
                .unwrap_or_else(|| self.bootstrap.clone());
            out.push((p.partition_index, addr));
        }
        out.sort();
        Ok(out)
    }
}

async fn exchange(
    conn: &mut Connection,
    api_key: ApiKey,
    version: i16,
    id: i32,
    body: &RequestKind,
) -> anyhow::Result<ResponseKind> {
    let frame = encode_request(api_key, version, id, "runnel-cli", body)?;
    conn.stream
        .write_all(&frame)
        .await
        .context("the broker closed the connection")?;
    loop {
        if let Some(frame) = next_frame(&mut conn.buf, 256 * 1024 * 1024)? {
            let (cid, response) = decode_response(api_key, version, frame)?;
            if cid != id {
                bail!("response for request {cid} while waiting for {id}");
            }
            return Ok(response);
        }
        let n = conn.stream.read_buf(&mut conn.buf).await?;
        if n == 0 {
            bail!("the broker closed the connection (it may not support {api_key:?} v{version})");
        }
    }
}

/// A JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn error_names_read_like_kafkas() {
        assert!(
            error_text(36).starts_with("TOPIC_ALREADY_EXISTS (36)"),
            "{}",
            error_text(36)
        );
    }
}
