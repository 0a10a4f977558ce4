//! `runnel`: serve a broker, administer topics, produce and consume.

mod client;
mod consume;
mod dev;
mod group;
mod health;
mod produce;
mod serve;
mod topic;

use clap::{Parser, Subcommand, ValueEnum};

/// Survives hostile array lengths in Kafka requests (see `runnel_protocol::alloc`).
#[global_allocator]
static ALLOCATOR: runnel_protocol::alloc::LazyHugeAllocator =
    runnel_protocol::alloc::LazyHugeAllocator;

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "A Kafka-compatible broker: Raft-replicated partition logs on disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How client subcommands print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// A broker to bootstrap from.
    #[arg(
        long,
        env = "RUNNEL_BOOTSTRAP_SERVER",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap_server: String,
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a broker (a cluster of one unless peers are given).
    Serve(Box<serve::ServeArgs>),
    /// Start a whole multi-AZ cluster on this machine (`--brokers 3 --azs 3`).
    Dev(dev::DevArgs),
    /// Create, list, describe, delete topics and change their configs.
    Topic {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: topic::TopicArgs,
    },
    /// Write lines from stdin to a topic (`key<TAB>value` lines carry keys).
    Produce {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: produce::ProduceArgs,
    },
    /// List, describe, delete consumer groups and reset their offsets.
    Group {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: group::GroupArgs,
    },
    /// Print a topic's records.
    Consume {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: consume::ConsumeArgs,
    },
    /// Check that a broker answers (ApiVersions and Metadata): exit 0 if healthy, 1 if not.
    Health(health::HealthArgs),
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        // The client commands print like Unix tools: `runnel consume ... | head` ends quietly
        // when the pipe closes instead of panicking in `println!`. Rust ignores SIGPIPE by
        // default; sockets are unaffected (their writes use MSG_NOSIGNAL).
        // SAFETY: setting a signal disposition before any thread starts.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Dev(args) => dev::run(args),
        Command::Topic { client, args } => {
            block_on(topic::run(args, &client.bootstrap_server, client.output))
        }
        Command::Produce { client, args } => {
            block_on(produce::run(args, &client.bootstrap_server, client.output))
        }
        Command::Group { client, args } => {
            block_on(group::run(args, &client.bootstrap_server, client.output))
        }
        Command::Consume { client, args } => {
            block_on(consume::run(args, &client.bootstrap_server, client.output))
        }
        Command::Health(args) => block_on(health::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
