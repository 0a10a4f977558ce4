//! `runnel consume TOPIC`: records from a starting point (earliest, latest, an offset or a
//! timestamp), printed as `key<TAB>value`, the value alone, or JSON lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use runnel_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use runnel_protocol::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, FetchRequest, ListOffsetsRequest, RequestKind, ResponseKind,
};
use runnel_storage::batch::{self, BatchIter};

use crate::client::{error_text, json_string, topic_name, Client};
use crate::Output;

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    /// earliest, latest, or an offset.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Start at the first record with this timestamp (ms) or later; overrides --from.
    #[arg(long)]
    from_timestamp: Option<i64>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop after this long without new records (default: wait forever, like Kafka's console
    /// consumer).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print keys too (`key<TAB>value`).
    #[arg(long)]
    print_key: bool,
    /// Consumer groups arrive with the group coordinator.
    #[arg(long)]
    group: Option<String>,
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

pub(crate) async fn run(args: ConsumeArgs, bootstrap: &str, output: Output) -> anyhow::Result<()> {
    if args.group.is_some() {
        eprintln!("runnel: consumer groups are not implemented yet; consume without --group");
        std::process::exit(2);
    }
    let mut client = Client::connect(bootstrap).await?;
    let leaders = client.leaders(&args.topic, false).await?;
    let leader_of: BTreeMap<i32, String> = leaders.iter().cloned().collect();
    let partitions: Vec<i32> = match args.partition {
        Some(p) if leaders.iter().any(|(q, _)| *q == p) => vec![p],
        Some(p) => bail!("topic {} has no partition {p}", args.topic),
        None => leaders.iter().map(|(p, _)| *p).collect(),
    };
    // Either an exact offset, or a ListOffsets target (-2 earliest, -1 latest, or a time).
    let (exact, list_target) = match (args.from_timestamp, args.from.as_str()) {
        (Some(ts), _) => (None, ts),
        (None, "earliest") => (None, -2),
        (None, "latest") => (None, -1),
        (None, n) => {
            let offset: i64 = n
                .parse()
                .with_context(|| format!("--from {n}: use earliest, latest or an offset"))?;
            if offset < 0 {
                bail!("--from {offset}: offsets are not negative");
            }
            (Some(offset), 0)
        }
    };
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    if let Some(offset) = exact {
        positions.extend(partitions.iter().map(|p| (*p, offset)));
    } else {
        for target in [list_target, -1] {
            let missing: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| positions.get(p).is_none_or(|o| *o < 0))
                .collect();
            if missing.is_empty() {
                break;
            }
            let mut answers = Vec::new();
            for (leader, missing) in by_leader(&leader_of, &missing, bootstrap) {
                let request =
                    ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic_name(&args.topic))
                        .with_partitions(
                            missing
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(*p)
                                        .with_timestamp(target)
                                })
                                .collect(),
                        )]);
                let (_, ResponseKind::ListOffsets(r)) = client
                    .call_at(
                        Some(&leader),
                        ApiKey::ListOffsets,
                        RequestKind::ListOffsets(request),
                    )
                    .await?
                else {
                    bail!("unexpected answer to ListOffsets");
                };
                answers.extend(r.topics.into_iter().flat_map(|t| t.partitions));
            }
            for p in &answers {
                if p.error_code != 0 {
                    bail!(
                        "partition {}: {}",
                        p.partition_index,
                        error_text(p.error_code)
                    );
                }
                // No record at or after a timestamp (-1): the second pass starts it at the end.
                positions.insert(p.partition_index, p.offset);
            }
        }
    }
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    let fetched: Vec<i32> = positions.keys().copied().collect();
    let groups = by_leader(&leader_of, &fetched, bootstrap);
    // Each leader is fetched in turn: together they wait about half a second when idle.
    let max_wait = (500 / groups.len().max(1) as i32).max(50);
    loop {
        let mut responses = Vec::new();
        for (leader, partitions) in &groups {
            let fetch = FetchRequest::default()
                .with_max_wait_ms(max_wait)
                .with_min_bytes(1)
                .with_max_bytes(16 * 1024 * 1024)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(&args.topic))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(positions.get(p).copied().unwrap_or(0))
                                    .with_partition_max_bytes(4 * 1024 * 1024)
                            })
                            .collect(),
                    )]);
            let (_, ResponseKind::Fetch(r)) = client
                .call_at(Some(leader), ApiKey::Fetch, RequestKind::Fetch(fetch))
                .await?
            else {
                bail!("unexpected answer to Fetch");
            };
            if r.error_code != 0 {
                bail!("fetch: {}", error_text(r.error_code));
            }
            responses.extend(r.responses.into_iter().flat_map(|t| t.partitions));
        }
        let mut got = false;
        for p in &responses {
            if p.error_code != 0 {
                bail!(
                    "partition {}: {}",
                    p.partition_index,
                    error_text(p.error_code)
                );
            }
            let Some(records) = &p.records else { continue };
            let position = positions.get(&p.partition_index).copied().unwrap_or(0);
            let mut next = position;
            for (at, h) in BatchIter::new(records) {
                next = next.max(h.next_offset());
                if h.is_control() {
                    continue;
                }
                let raw = &records[at..at + h.size()];
                let body = batch::records_body(raw, &h, 256 * 1024 * 1024)?;
                for rec in batch::parse_records(&body, h.records_count)? {
                    let offset = h.base_offset + i64::from(rec.offset_delta);
                    if offset < position {
                        continue;
                    }
                    let timestamp = if h.is_log_append_time() {
                        h.max_timestamp
                    } else {
                        h.base_timestamp + rec.timestamp_delta
                    };
                    match output {
                        Output::Json => println!(
                            "{{\"partition\":{},\"offset\":{offset},\"timestamp\":{timestamp},\"key\":{},\"value\":{}}}",
                            p.partition_index,
                            rec.key.map_or("null".to_string(), |k| json_string(&text(Some(k)))),
                            rec.value.map_or("null".to_string(), |v| json_string(&text(Some(v))))
                        ),
                        Output::Text if args.print_key => println!("{}\t{}", text(rec.key), text(rec.value)),
                        Output::Text => println!("{}", text(rec.value)),
                    }
                    printed += 1;
                    got = true;
                    if args.max_messages.is_some_and(|m| printed >= m) {
                        return Ok(());
                    }
                }
            }
            positions.insert(p.partition_index, next);
        }
        if got {
            last_data = Instant::now();
        } else if args
            .timeout_ms
            .is_some_and(|t| last_data.elapsed() >= Duration::from_millis(t))
        {
            return Ok(());
        }
    }
}

/// `partitions` grouped by the address of their leader (the bootstrap broker when unknown).
fn by_leader(
    leader_of: &BTreeMap<i32, String>,
    partitions: &[i32],
    bootstrap: &str,
) -> Vec<(String, Vec<i32>)> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for p in partitions {
        let leader = leader_of
            .get(p)
            .cloned()
            .unwrap_or_else(|| bootstrap.to_string());
        out.entry(leader).or_default().push(*p);
    }
    out.into_iter().collect()
}
