//! ApiVersions (key 18): the versions this broker speaks, from the one table in `handlers`.

use runnel_protocol::encode_response;
use runnel_protocol::kafka_protocol::messages::api_versions_response::ApiVersion;
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseKind,
};
use runnel_protocol::kafka_protocol::ResponseError;

use super::{Reply, SUPPORTED};

fn table() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|r| {
            ApiVersion::default()
                .with_api_key(r.api_key as i16)
                .with_min_version(r.min)
                .with_max_version(r.max)
        })
        .collect()
}

pub fn handle(_request: ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    // Feature fields keep their defaults so none of them is sent as a tagged field: old
    // librdkafka (Debian's kcat) cannot read tagged fields in this response.
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(table())
}

/// The KIP-511 answer to an ApiVersions request at a version we do not speak: v0, error
/// UNSUPPORTED_VERSION, and our table.
pub fn unsupported_version_response(correlation_id: i32) -> Reply {
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(table());
    match encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    ) {
        Ok(frame) => Reply::Frame(frame),
        Err(_) => Reply::Close,
    }
}
