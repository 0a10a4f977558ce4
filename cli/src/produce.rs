//! `runnel produce TOPIC`: lines from stdin become records (`key<TAB>value` when the line has
//! the separator), partitioned by key like Kafka's default partitioner.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use runnel_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ProduceRequest, RequestKind, ResponseKind,
};
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

use crate::client::{error_text, topic_name, Client};
use crate::Output;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Separator between key and value on a line.
    #[arg(long, default_value = "\t")]
    key_separator: String,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
}

/// Kafka's murmur2, as its default partitioner uses it.
pub(crate) fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How many times a partition's records are sent again after a retriable error.
const PRODUCE_RETRIES: u32 = 10;

/// Errors after which the broker has not written the records: LEADER_NOT_AVAILABLE,
/// NOT_LEADER_OR_FOLLOWER and NOT_ENOUGH_REPLICAS.
const RETRIABLE: [i16; 3] = [5, 6, 19];

pub(crate) async fn run(args: ProduceArgs, bootstrap: &str, output: Output) -> anyhow::Result<()> {
    let acks: i16 = match args.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => bail!("--acks {other}: use all, 1 or 0"),
    };
    let mut client = Client::connect(bootstrap).await?;
    let mut leaders = client.leaders(&args.topic, true).await?;
    if leaders.is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }
    let count = leaders.len() as i32;
    if let Some(p) = args.partition {
        if !(0..count).contains(&p) {
            bail!(
                "--partition {p}: topic {} has partitions 0..{}",
                args.topic,
                count - 1
            );
        }
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let (mut sent, mut failed, mut round_robin) = (0u64, 0u64, 0i32);
    loop {
        let mut block: BTreeMap<i32, Vec<NewRecord>> = BTreeMap::new();
        let mut n = 0;
        for line in lines.by_ref() {
            let line = line.context("cannot read stdin")?;
            let (key, value) = match line.split_once(args.key_separator.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
                None => (None, Bytes::from(line)),
            };
            let partition = match (args.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => (murmur2(k) & 0x7fff_ffff) % count,
                (None, None) => {
                    round_robin = (round_robin + 1) % count;
                    round_robin
                }
            };
            block.entry(partition).or_default().push(NewRecord {
                timestamp: now_ms(),
                key,
                value: Some(value),
                headers: Vec::new(),
            });
            n += 1;
            if n >= args.batch_size * leaders.len() {
                break;
            }
        }
        if n == 0 {
            break;
        }
        let mut pending: BTreeMap<i32, Bytes> = BTreeMap::new();
        for (p, records) in &block {
            let mut data = Vec::new();
            for chunk in records.chunks(args.batch_size.max(1)) {
                data.extend_from_slice(&build_batch(chunk, &BatchOptions::default())?);
            }
            pending.insert(*p, Bytes::from(data));
        }
        // Partitions whose leader moved (an election, a broker down) are sent again to the
        // new leader, as Kafka's producers retry: the broker refused those writes, so
        // resending cannot duplicate them.
        for attempt in 0..=PRODUCE_RETRIES {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                leaders = client.leaders(&args.topic, false).await.unwrap_or(leaders);
            }
            let last = attempt == PRODUCE_RETRIES;
            // One request per partition leader (the bootstrap broker when a leader is unknown).
            let mut by_leader: BTreeMap<String, Vec<PartitionProduceData>> = BTreeMap::new();
            for (p, data) in &pending {
                let leader = leaders
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or_else(|| bootstrap.to_string(), |(_, a)| a.clone());
                by_leader.entry(leader).or_default().push(
                    PartitionProduceData::default()
                        .with_index(*p)
                        .with_records(Some(data.clone())),
                );
            }
            let mut retry: BTreeMap<i32, Bytes> = BTreeMap::new();
            for (leader, partitions) in by_leader {
                let asked: Vec<i32> = partitions.iter().map(|p| p.index).collect();
                let request = ProduceRequest::default()
                    .with_acks(acks)
                    .with_timeout_ms(30_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic_name(&args.topic))
                        .with_partition_data(partitions)]);
                if acks == 0 {
                    // No answer comes for acks=0: send and move on.
                    let _ = client
                        .call_at(
                            Some(&leader),
                            ApiKey::Produce,
                            RequestKind::Produce(request),
                        )
                        .await;
                    continue;
                }
                let answer = client
                    .call_at(
                        Some(&leader),
                        ApiKey::Produce,
                        RequestKind::Produce(request),
                    )
                    .await;
                let r = match answer {
                    Ok((_, ResponseKind::Produce(r))) => r,
                    Ok(_) => bail!("unexpected answer to Produce"),
                    Err(e) if !last => {
                        // The leader is unreachable (it may have just died): find the new one.
                        eprintln!("{leader}: {e}; retrying");
                        for p in asked {
                            if let Some(data) = pending.get(&p) {
                                retry.insert(p, data.clone());
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for t in &r.responses {
                    for p in &t.partition_responses {
                        let records = block.get(&p.index).map_or(0, Vec::len) as u64;
                        if p.error_code == 0 {
                            sent += records;
                        } else if RETRIABLE.contains(&p.error_code) && !last {
                            if let Some(data) = pending.get(&p.index) {
                                retry.insert(p.index, data.clone());
                            }
                        } else {
                            failed += records;
                            eprintln!("partition {}: {}", p.index, error_text(p.error_code));
                        }
                    }
                }
            }
            pending = retry;
        }
        if acks == 0 {
            sent += n as u64;
        }
    }
    match output {
        Output::Json => eprintln!(
            "{{\"topic\":\"{}\",\"produced\":{sent},\"failed\":{failed}}}",
            args.topic
        ),
        Output::Text => eprintln!(
            "produced {sent} records to {} ({failed} failed)",
            args.topic
        ),
    }
    if failed > 0 {
        bail!("{failed} records were not written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::murmur2;

    #[test]
    fn murmur2_matches_kafkas_partitioner() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
