//! ApiVersions (key 18): the versions this broker speaks, from the one table in `handlers`,
//! and the features it supports and has finalized (v3+), as Kafka 4 brokers answer them:
//! `transaction.version` (KIP-890), whose finalized level 2 tells clients to use
//! Transactions V2.

use runnel_protocol::encode_response;
use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseKind,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::{Reply, SUPPORTED};
use crate::txn::MAX_TRANSACTION_VERSION;
use crate::Broker;

/// Kafka's `TransactionVersion.FEATURE_NAME`.
pub const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";

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

pub fn handle(
    broker: &Arc<Broker>,
    request: ApiVersionsRequest,
    version: i16,
) -> ApiVersionsResponse {
    let response = ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(table());
    if version < 3 || !reads_tagged_fields(&request) {
        return response;
    }
    let level = broker.txns.config().transaction_version;
    // Kafka lists a feature as finalized only above level 0.
    let finalized = if level > 0 {
        vec![FinalizedFeatureKey::default()
            .with_name(StrBytes::from_static_str(TRANSACTION_VERSION_FEATURE))
            .with_min_version_level(level)
            .with_max_version_level(level)]
    } else {
        Vec::new()
    };
    response
        .with_supported_features(vec![SupportedFeatureKey::default()
            .with_name(StrBytes::from_static_str(TRANSACTION_VERSION_FEATURE))
            .with_min_version(0)
            .with_max_version(MAX_TRANSACTION_VERSION)])
        .with_finalized_features_epoch(broker.txns.features_epoch())
        .with_finalized_features(finalized)
}

/// The features are tagged fields, and librdkafka before 2.2 skips tagged fields one byte
/// short (its #4278), the reason this reply carried none before (ARCHITECTURE's trap 11).
/// Debian's kcat (librdkafka 2.0.2) was seen to cope with these three, but only because the
/// bytes it misreads as tag lengths happen to be small (the last byte of the supported
/// features, the first of the epoch); librdkafka never uses the features, so clients that say
/// they are built on librdkafka and do not say it is 2.2 or newer get the reply without them.
fn reads_tagged_fields(request: &ApiVersionsRequest) -> bool {
    let name = request.client_software_name.to_ascii_lowercase();
    let software_version = request.client_software_version.to_string();
    let librdkafka_version = if name == "librdkafka" {
        Some(software_version.as_str())
    } else if let Some(i) = software_version.find("rdkafka-") {
        // Wrappers (confluent-kafka-python, -go, -dotnet) append `-rdkafka-<version>`.
        Some(&software_version[i + "rdkafka-".len()..])
    } else if name.contains("kcat") || name.contains("kafkacat") || name.contains("rdkafka") {
        Some("")
    } else {
        return true;
    };
    librdkafka_version.is_some_and(|v| {
        let mut parts = v
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) >= (2, 2)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from(name: &str, version: &str) -> ApiVersionsRequest {
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_string(name.into()))
            .with_client_software_version(StrBytes::from_string(version.into()))
    }

    #[test]
    fn features_are_withheld_only_from_librdkafka_before_2_2() {
        assert!(reads_tagged_fields(&from("apache-kafka-java", "4.0.0")));
        assert!(reads_tagged_fields(&from("", "")));
        assert!(!reads_tagged_fields(&from("librdkafka", "2.0.2")));
        assert!(reads_tagged_fields(&from("librdkafka", "2.12.1")));
        assert!(!reads_tagged_fields(&from(
            "confluent-kafka-python",
            "2.1.0-rdkafka-2.1.0"
        )));
        assert!(reads_tagged_fields(&from(
            "confluent-kafka-python",
            "2.6.0-rdkafka-2.6.0"
        )));
        assert!(reads_tagged_fields(&from(
            "confluent-kafka-go",
            "2.6.0-librdkafka-v2.6.0"
        )));
        assert!(!reads_tagged_fields(&from("kcat", "1.7.1")));
    }
}
