//! `runnel health`: one ApiVersions and Metadata round trip to a broker, exit status 0 when it
//! answers and knows enough registered brokers, 1 otherwise. For container health checks,
//! where the image has no shell and no other client.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, MetadataRequest, RequestKind, ResponseKind,
};

use crate::client::Client;

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The broker to check, host:port (its listener, not its Raft port).
    #[arg(
        long,
        alias = "bootstrap-server",
        env = "RUNNEL_HEALTH_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Unhealthy unless the broker's metadata lists at least this many registered brokers.
    #[arg(long, default_value_t = 1)]
    min_brokers: usize,
    /// Give up (unhealthy) after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let check = async {
        let mut client = Client::connect(&args.bootstrap).await?;
        // Topics: empty (not null) asks for brokers only.
        let request = MetadataRequest::default().with_topics(Some(Vec::new()));
        let ResponseKind::Metadata(md) = client
            .call(ApiKey::Metadata, RequestKind::Metadata(request))
            .await?
        else {
            bail!("unexpected answer to Metadata");
        };
        anyhow::Ok(md)
    };
    let md = tokio::time::timeout(Duration::from_millis(args.timeout_ms), check)
        .await
        .with_context(|| {
            format!(
                "{}: no answer within {} ms",
                args.bootstrap, args.timeout_ms
            )
        })??;
    if md.brokers.len() < args.min_brokers {
        bail!(
            "{}: unhealthy: {} registered broker(s), want at least {}",
            args.bootstrap,
            md.brokers.len(),
            args.min_brokers
        );
    }
    println!(
        "{}: healthy: cluster {}, {} broker(s)",
        args.bootstrap,
        md.cluster_id.as_deref().unwrap_or("-"),
        md.brokers.len()
    );
    Ok(())
}
