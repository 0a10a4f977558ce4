//! Kafka's wire protocol for Runnel: length-prefixed frames, request and response headers, and
//! bodies through the `kafka-protocol` crate. No sockets and no state, so all of it is tested
//! without a network.
//!
//! Checking that a frame is complete ([`frame::next_frame`]) is separate from parsing it
//! ([`decode_request`]); "not enough bytes yet" is an expected state, not an error.

pub mod alloc;
pub mod frame;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub use kafka_protocol;

/// Default `socket.request.max.bytes`.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 100 * 1024 * 1024;

/// Why a request frame could not be turned into a request. Every variant that knows the
/// correlation id carries it so the broker can still answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed part of a request header (api key, version, correlation id).
    #[error("request of {0} bytes is too short for a header")]
    TooShort(usize),
    /// An API key this build does not know at all.
    #[error("unknown API key {api_key} (version {api_version})")]
    UnknownApiKey {
        api_key: i16,
        api_version: i16,
        correlation_id: i32,
    },
    /// A known API at a version the codec cannot decode.
    #[error("{api_key:?} v{api_version} is not a version the codec knows")]
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    /// The header or body does not parse.
    #[error("malformed {api_key:?} v{api_version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        reason: String,
    },
}

impl DecodeError {
    /// The correlation id, when the header's fixed part was readable.
    pub fn correlation_id(&self) -> Option<i32> {
        match self {
            DecodeError::TooShort(_) => None,
            DecodeError::UnknownApiKey { correlation_id, .. }
            | DecodeError::UnsupportedVersion { correlation_id, .. }
            | DecodeError::Malformed { correlation_id, .. } => Some(*correlation_id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode {api_key:?} v{api_version}: {reason}")]
    Body {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
}

impl Request {
    pub fn api_version(&self) -> i16 {
        self.header.request_api_version
    }
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
    pub fn client_id(&self) -> &str {
        self.header.client_id.as_deref().unwrap_or("")
    }
}

/// The fixed first eight bytes of every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

pub fn peek_header(frame: &[u8]) -> Option<HeaderPrefix> {
    if frame.len() < 8 {
        return None;
    }
    Some(HeaderPrefix {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Decodes one request frame (without its length prefix).
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    let prefix = peek_header(&frame).ok_or(DecodeError::TooShort(frame.len()))?;
    let HeaderPrefix {
        api_key: key,
        api_version,
        correlation_id,
    } = prefix;
    let api_key = ApiKey::try_from(key).map_err(|_| DecodeError::UnknownApiKey {
        api_key: key,
        api_version,
        correlation_id,
    })?;
    let range = api_key.valid_versions();
    if api_version < range.min || api_version > range.max {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        api_version,
        correlation_id,
        reason,
    };
    let mut buf = frame;
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut buf, header_version)
        .map_err(|e| malformed(format!("header: {e:#}")))?;
    let body = RequestKind::decode(api_key, &mut buf, api_version)
        .map_err(|e| malformed(format!("{e:#}")))?;
    Ok(Request {
        api_key,
        header,
        body,
    })
}

/// What an encoding step returns (kafka-protocol's errors, boxed for display).
type Step = std::result::Result<(), Box<dyn std::fmt::Display>>;

/// Writes a length-prefixed frame: `header` then `body`, each encoded by its closure.
fn framed(
    api_key: ApiKey,
    api_version: i16,
    header: impl FnOnce(&mut BytesMut) -> Step,
    body: impl FnOnce(&mut BytesMut) -> Step,
) -> Result<Bytes, EncodeError> {
    let err = |reason: String| EncodeError::Body {
        api_key,
        api_version,
        reason,
    };
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    header(&mut out).map_err(|e| err(format!("header: {e:#}")))?;
    body(&mut out).map_err(|e| err(format!("{e:#}")))?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

fn boxed<E: std::fmt::Display + 'static>(e: E) -> Box<dyn std::fmt::Display> {
    Box::new(e)
}

/// Encodes a response frame: length prefix, response header (v0, or v1 for flexible
/// versions; ApiVersions always v0), body.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    framed(
        api_key,
        api_version,
        |out| {
            header
                .encode(out, api_key.response_header_version(api_version))
                .map_err(boxed)
        },
        |out| body.encode(out, api_version).map_err(boxed),
    )
}

/// Encodes a request frame (client side: the CLI and tests).
pub fn encode_request(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Result<Bytes, EncodeError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    framed(
        api_key,
        api_version,
        |out| {
            header
                .encode(out, api_key.request_header_version(api_version))
                .map_err(boxed)
        },
        |out| body.encode(out, api_version).map_err(boxed),
    )
}

/// Decodes a response frame (without its length prefix) for a request sent at `api_version`.
pub fn decode_response(
    api_key: ApiKey,
    api_version: i16,
    frame: Bytes,
) -> Result<(i32, ResponseKind), DecodeError> {
    let correlation_id = if frame.len() >= 4 {
        (&frame[..4]).get_i32()
    } else {
        return Err(DecodeError::TooShort(frame.len()));
    };
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        api_version,
        correlation_id,
        reason,
    };
    let mut buf = frame;
    ResponseHeader::decode(&mut buf, api_key.response_header_version(api_version))
        .map_err(|e| malformed(format!("header: {e:#}")))?;
    let body = ResponseKind::decode(api_key, &mut buf, api_version)
        .map_err(|e| malformed(format!("{e:#}")))?;
    Ok((correlation_id, body))
}

/// A supported version range of one API, as ApiVersions advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: ApiKey,
    pub min: i16,
    pub max: i16,
}

impl ApiVersionRange {
    pub fn contains(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, MetadataResponse};

    #[test]
    fn request_round_trips_through_client_and_broker_codecs() {
        for version in [0i16, 4, 9, 12] {
            let body = RequestKind::Metadata(
                MetadataRequest::default().with_allow_auto_topic_creation(true),
            );
            let framed =
                encode_request(ApiKey::Metadata, version, 77, "tester", &body).expect("encode");
            let frame = framed.slice(4..);
            let req = decode_request(frame).expect("decode");
            assert_eq!(req.api_key, ApiKey::Metadata);
            assert_eq!(req.correlation_id(), 77);
            assert_eq!(req.client_id(), "tester");
            assert_eq!(req.body, body, "v{version}");
        }
    }

    #[test]
    fn response_round_trips() {
        let body = ResponseKind::Metadata(MetadataResponse::default().with_throttle_time_ms(5));
        for version in [3i16, 9, 12] {
            let framed = encode_response(ApiKey::Metadata, version, 9, &body).expect("encode");
            let len = i32::from_be_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
            assert_eq!(len, framed.len() - 4);
            let (cid, decoded) =
                decode_response(ApiKey::Metadata, version, framed.slice(4..)).expect("decode");
            assert_eq!(cid, 9);
            assert_eq!(decoded, body);
        }
    }

    #[test]
    fn unknown_keys_and_versions_are_typed_errors_with_correlation_ids() {
        let mut frame = vec![0x7f, 0x00, 0, 1, 0, 0, 0, 42];
        frame.extend_from_slice(&[0; 8]);
        let err = decode_request(Bytes::from(frame)).expect_err("unknown key");
        assert!(matches!(
            err,
            DecodeError::UnknownApiKey {
                api_key: 0x7f00,
                correlation_id: 42,
                ..
            }
        ));
        let framed = encode_request(
            ApiKey::ApiVersions,
            3,
            5,
            "x",
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .expect("encode");
        let mut raw = framed.slice(4..).to_vec();
        raw[2..4].copy_from_slice(&99i16.to_be_bytes());
        let err = decode_request(Bytes::from(raw)).expect_err("bad version");
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                api_version: 99,
                correlation_id: 5
            }
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1, 2])),
            Err(DecodeError::TooShort(3))
        ));
    }
}
