//! `runnel group list|describe|delete|reset-offsets`, after Kafka's `kafka-consumer-groups`:
//! members and their assignments, committed offsets and lag per partition, and offset resets
//! that only print their plan unless `--execute` is given.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use runnel_protocol::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use runnel_protocol::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, ListGroupsRequest, ListOffsetsRequest, OffsetCommitRequest,
    OffsetFetchRequest, RequestKind, ResponseKind,
};
use runnel_protocol::kafka_protocol::protocol::{Decodable, StrBytes};

use crate::client::{error_text, json_string, topic_name, Client};
use crate::Output;

#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// Members, assignments, committed offsets and lag per partition of a group.
    Describe { group: String },
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
    /// Move a group's committed offsets (the group must have no members). Prints the plan;
    /// `--execute` commits it.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
struct ResetArgs {
    group: String,
    /// `topic` or `topic:0,1,2` (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    #[arg(long, group = "target")]
    to_earliest: bool,
    #[arg(long, group = "target")]
    to_latest: bool,
    #[arg(long, group = "target")]
    to_offset: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS[.sss]` in UTC: the first offset at or after that time.
    #[arg(long, group = "target")]
    to_datetime: Option<String>,
    /// Move each committed offset by N (negative moves back), clamped to the log.
    #[arg(long, group = "target", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Commit the new offsets (without it the plan is only printed, as Kafka's --dry-run).
    #[arg(long)]
    execute: bool,
}

fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

/// The address of `group`'s coordinator.
async fn coordinator(client: &mut Client, group: &str) -> anyhow::Result<String> {
    for _ in 0..50 {
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into()));
        let ResponseKind::FindCoordinator(r) = client
            .call(
                ApiKey::FindCoordinator,
                RequestKind::FindCoordinator(request),
            )
            .await?
        else {
            bail!("unexpected answer to FindCoordinator");
        };
        if r.error_code == 0 {
            return Ok(format!("{}:{}", r.host, r.port));
        }
        if r.error_code != 15 {
            bail!(
                "cannot find the coordinator of {group}: {}",
                error_text(r.error_code)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("the coordinator of {group} stayed unavailable; is the broker starting?")
}

/// Retries while the coordinator loads its state.
async fn call_coordinator(
    client: &mut Client,
    addr: &str,
    api_key: ApiKey,
    body: RequestKind,
    error_of: impl Fn(&ResponseKind) -> i16,
) -> anyhow::Result<ResponseKind> {
    for _ in 0..100 {
        let (_, r) = client.call_at(Some(addr), api_key, body.clone()).await?;
        if error_of(&r) != 14 {
            return Ok(r);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("the coordinator at {addr} is still loading its groups; try again")
}

/// Committed offsets of a group: (topic, partition) -> (offset, metadata).
async fn committed(
    client: &mut Client,
    addr: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), (i64, String)>> {
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let r = call_coordinator(
        client,
        addr,
        ApiKey::OffsetFetch,
        RequestKind::OffsetFetch(request),
        |r| match r {
            ResponseKind::OffsetFetch(r) => r.error_code,
            _ => 0,
        },
    )
    .await?;
    let ResponseKind::OffsetFetch(r) = r else {
        bail!("unexpected answer to OffsetFetch");
    };
    if r.error_code != 0 {
        bail!(
            "cannot read the offsets of {group}: {}",
            error_text(r.error_code)
        );
    }
    let mut out = BTreeMap::new();
    for t in &r.topics {
        for p in &t.partitions {
            if p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    (
                        p.committed_offset,
                        p.metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// ListOffsets for every partition of `topics` at `timestamp` (-1 latest, -2 earliest).
async fn list_offsets(
    client: &mut Client,
    partitions: &[(String, i32)],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut out = BTreeMap::new();
    for (topic, parts) in by_topic {
        let leaders: BTreeMap<i32, String> =
            client.leaders(topic, false).await?.into_iter().collect();
        for p in parts {
            let request =
                ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_timestamp(timestamp)])]);
            let (_, r) = client
                .call_at(
                    leaders.get(&p).map(String::as_str),
                    ApiKey::ListOffsets,
                    RequestKind::ListOffsets(request),
                )
                .await?;
            let ResponseKind::ListOffsets(r) = r else {
                bail!("unexpected answer to ListOffsets");
            };
            let part = r
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .context("ListOffsets returned no partition")?;
            if part.error_code != 0 {
                bail!("{topic}-{p}: {}", error_text(part.error_code));
            }
            out.insert((topic.to_string(), p), part.offset);
        }
    }
    Ok(out)
}

/// The partitions a `consumer` protocol assignment names.
fn assigned(assignment: &[u8]) -> Vec<(String, i32)> {
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([assignment[0], assignment[1]]).clamp(0, 3);
    let mut buf = bytes::Bytes::copy_from_slice(&assignment[2..]);
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.sss][Z]` (UTC) to epoch milliseconds.
fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("--to-datetime {s}: expected YYYY-MM-DDTHH:MM:SS[.sss] (UTC)");
    let s2 = s.trim_end_matches('Z');
    let (date, time) = s2.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || t.len() != 3 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        return Err(bad());
    }
    let ms: i64 = format!("{millis:0<3}")[..3].parse().map_err(|_| bad())?;
    let days = days_from_civil(d[0], d[1], d[2]);
    Ok(((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms)
}

pub(crate) async fn run(args: GroupArgs, bootstrap: &str, output: Output) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap).await?;
    match args.command {
        GroupCommand::List => {
            // A broker still loading some of its groups says so; wait as Kafka's tools do.
            let r = call_coordinator(
                &mut client,
                bootstrap,
                ApiKey::ListGroups,
                RequestKind::ListGroups(ListGroupsRequest::default()),
                |r| match r {
                    ResponseKind::ListGroups(r) => r.error_code,
                    _ => 0,
                },
            )
            .await?;
            let ResponseKind::ListGroups(r) = r else {
                bail!("unexpected answer to ListGroups");
            };
            if r.error_code != 0 {
                bail!("ListGroups: {}", error_text(r.error_code));
            }
            for g in &r.groups {
                match output {
                    Output::Json => println!(
                        "{{\"group\":{},\"state\":{},\"protocol_type\":{},\"type\":{}}}",
                        json_string(&g.group_id.0),
                        json_string(&g.group_state),
                        json_string(&g.protocol_type),
                        json_string(&g.group_type)
                    ),
                    Output::Text => println!(
                        "{}\t{}\t{}\t{}",
                        g.group_id.0, g.group_state, g.protocol_type, g.group_type
                    ),
                }
            }
        }
        GroupCommand::Describe { group } => describe(&mut client, &group, output).await?,
        GroupCommand::Delete { group } => {
            let addr = coordinator(&mut client, &group).await?;
            let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
            let r = call_coordinator(
                &mut client,
                &addr,
                ApiKey::DeleteGroups,
                RequestKind::DeleteGroups(request),
                |r| match r {
                    ResponseKind::DeleteGroups(r) => r.results.first().map_or(0, |g| g.error_code),
                    _ => 0,
                },
            )
            .await?;
            let ResponseKind::DeleteGroups(r) = r else {
                bail!("unexpected answer to DeleteGroups");
            };
            let code = r.results.first().map_or(0, |g| g.error_code);
            if code != 0 {
                bail!("cannot delete group {group}: {}", error_text(code));
            }
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets(reset) => reset_offsets(&mut client, reset, output).await?,
    }
    Ok(())
}

async fn describe(client: &mut Client, group: &str, output: Output) -> anyhow::Result<()> {
    let addr = coordinator(client, group).await?;
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![group_id(group)])
        .with_include_authorized_operations(false);
    let r = call_coordinator(
        client,
        &addr,
        ApiKey::DescribeGroups,
        RequestKind::DescribeGroups(request),
        |r| match r {
            ResponseKind::DescribeGroups(r) => r.groups.first().map_or(0, |g| g.error_code),
            _ => 0,
        },
    )
    .await?;
    let ResponseKind::DescribeGroups(r) = r else {
        bail!("unexpected answer to DescribeGroups");
    };
    let g = r
        .groups
        .first()
        .context("DescribeGroups returned no group")?;
    if g.error_code != 0 {
        bail!("group {group}: {}", error_text(g.error_code));
    }
    if g.group_state.as_str() == "Dead" {
        bail!("consumer group {group} does not exist");
    }
    let offsets = committed(client, &addr, group).await?;
    // Who owns what, from the members' assignments.
    let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &g.members {
        for tp in assigned(&m.member_assignment) {
            owner.insert(
                tp,
                (
                    m.member_id.to_string(),
                    m.client_host.to_string(),
                    m.client_id.to_string(),
                ),
            );
        }
    }
    let mut partitions: Vec<(String, i32)> = offsets.keys().cloned().collect();
    partitions.extend(owner.keys().cloned());
    partitions.sort();
    partitions.dedup();
    let ends = list_offsets(client, &partitions, -1).await?;
    match output {
        Output::Text => {
            let protocol = if g.protocol_data.is_empty() {
                g.protocol_type.to_string()
            } else {
                format!("{} ({})", g.protocol_type, g.protocol_data)
            };
            println!(
                "group {group}: state {}, protocol {protocol}, {} members",
                g.group_state,
                g.members.len()
            );
            println!("TOPIC\tPARTITION\tCURRENT-OFFSET\tLOG-END-OFFSET\tLAG\tCONSUMER-ID\tHOST\tCLIENT-ID");
        }
        Output::Json => {}
    }
    for tp in &partitions {
        let current = offsets.get(tp).map(|(o, _)| *o);
        let end = ends.get(tp).copied().unwrap_or(-1);
        let lag = current.map(|c| (end - c).max(0));
        let (member, host, client_id) = owner
            .get(tp)
            .cloned()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        match output {
            Output::Text => println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                tp.0,
                tp.1,
                current.map_or("-".to_string(), |c| c.to_string()),
                end,
                lag.map_or("-".to_string(), |l| l.to_string()),
                member,
                host,
                client_id
            ),
            Output::Json => println!(
                "{{\"group\":{},\"topic\":{},\"partition\":{},\"current_offset\":{},\"log_end_offset\":{},\"lag\":{},\"consumer_id\":{},\"host\":{},\"client_id\":{}}}",
                json_string(group),
                json_string(&tp.0),
                tp.1,
                current.map_or("null".to_string(), |c| c.to_string()),
                end,
                lag.map_or("null".to_string(), |l| l.to_string()),
                json_string(&member),
                json_string(&host),
                json_string(&client_id)
            ),
        }
    }
    Ok(())
}

async fn reset_offsets(client: &mut Client, args: ResetArgs, output: Output) -> anyhow::Result<()> {
    let group = args.group.as_str();
    let addr = coordinator(client, group).await?;
    let current = committed(client, &addr, group).await?;
    let mut partitions: Vec<(String, i32)> = Vec::new();
    if args.all_topics {
        partitions.extend(current.keys().cloned());
    }
    for spec in &args.topics {
        match spec.split_once(':') {
            Some((t, ps)) => {
                for p in ps.split(',') {
                    let p: i32 = p
                        .trim()
                        .parse()
                        .with_context(|| format!("--topic {spec}: bad partition {p}"))?;
                    partitions.push((t.to_string(), p));
                }
            }
            None => {
                for (p, _) in client.leaders(spec, false).await? {
                    partitions.push((spec.clone(), p));
                }
            }
        }
    }
    partitions.sort();
    partitions.dedup();
    if partitions.is_empty() {
        bail!("name the partitions to reset: --topic T, --topic T:0,1 or --all-topics");
    }
    let earliest = list_offsets(client, &partitions, -2).await?;
    let latest = list_offsets(client, &partitions, -1).await?;
    let by_time = match &args.to_datetime {
        Some(s) => Some(list_offsets(client, &partitions, parse_datetime(s)?).await?),
        None => None,
    };
    let mut plan: Vec<((String, i32), i64)> = Vec::new();
    for tp in &partitions {
        let lo = earliest.get(tp).copied().unwrap_or(0);
        let hi = latest.get(tp).copied().unwrap_or(0);
        let target = if args.to_earliest {
            lo
        } else if args.to_latest {
            hi
        } else if let Some(o) = args.to_offset {
            o
        } else if let Some(times) = &by_time {
            // No record at or after the time: the end of the log, as Kafka's tool.
            times.get(tp).copied().filter(|o| *o >= 0).unwrap_or(hi)
        } else if let Some(n) = args.shift_by {
            current.get(tp).map_or(lo, |(o, _)| *o).saturating_add(n)
        } else {
            bail!("choose a target: --to-earliest, --to-latest, --to-offset, --to-datetime or --shift-by");
        };
        plan.push((tp.clone(), target.clamp(lo, hi)));
    }
    for ((topic, partition), offset) in &plan {
        match output {
            Output::Text => println!("{group}\t{topic}\t{partition}\t{offset}"),
            Output::Json => println!(
                "{{\"group\":{},\"topic\":{},\"partition\":{},\"new_offset\":{}}}",
                json_string(group),
                json_string(topic),
                partition,
                offset
            ),
        }
    }
    if !args.execute {
        eprintln!("dry run: nothing committed (add --execute to commit these offsets)");
        return Ok(());
    }
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((topic, partition), offset) in &plan {
        topics.entry(topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let r = call_coordinator(
        client,
        &addr,
        ApiKey::OffsetCommit,
        RequestKind::OffsetCommit(request),
        |r| match r {
            ResponseKind::OffsetCommit(r) => r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .find(|c| *c != 0)
                .unwrap_or(0),
            _ => 0,
        },
    )
    .await?;
    let ResponseKind::OffsetCommit(r) = r else {
        bail!("unexpected answer to OffsetCommit");
    };
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code == 25 {
                bail!(
                    "group {group} has active members: stop its consumers before resetting offsets"
                );
            }
            if p.error_code != 0 {
                bail!(
                    "{}-{}: {}",
                    t.name.0,
                    p.partition_index,
                    error_text(p.error_code)
                );
            }
        }
    }
    eprintln!("committed {} offsets for group {group}", plan.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_as_utc_milliseconds() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00").ok(), Some(0));
        assert_eq!(
            parse_datetime("2024-02-29T12:30:15.250Z").ok(),
            Some(1_709_209_815_250)
        );
        assert!(parse_datetime("2024-13-01T00:00:00").is_err());
        assert!(parse_datetime("yesterday").is_err());
    }
}
