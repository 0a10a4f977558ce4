//! The KIP-848 consumer group protocol: members heartbeat with ConsumerGroupHeartbeat, the
//! coordinator computes the target assignment with a server-side assignor (`uniform`, the
//! default, or `range`) and reconciles each member towards it incrementally: a member first
//! gives up partitions it must lose, and receives a partition only once its previous owner has
//! released it, so no partition is ever owned by two members.
//!
//! Like [`super::classic`] it does no I/O and reads no clock. Its state goes to
//! `__consumer_offsets` as Kafka's KIP-848 records (group epoch, member metadata, target and
//! current assignments): [`ConsumerGroup::take_changes`] returns what changed since the last
//! call, and [`Replayed`] rebuilds the group when a coordinator loads the partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use runnel_protocol::kafka_protocol::ResponseError;
use uuid::Uuid;

use super::records::{
    decode_epoch_value, decode_target_assignment, encode_epoch_value, encode_target_assignment,
    ConsumerMemberMetadataValue, CurrentMemberAssignmentValue, RecordKey, TopicPartitions,
};

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// What the coordinator knows of a topic a member may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: Uuid,
    pub partitions: i32,
}

/// Topics by name, as the cluster metadata has them now.
pub type Topics = BTreeMap<String, TopicInfo>;

pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// `group.consumer.*` settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub session_timeout_ms: i32,
    pub heartbeat_interval_ms: i32,
    pub max_size: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: i32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed since the member last heard it.
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the member may own now (its current assignment).
    pub assigned: Assignment,
    /// Partitions it was told to give up and has not yet confirmed giving up.
    pub revoking: Assignment,
    /// The assignment last sent to it.
    sent: Option<Assignment>,
    session_deadline: i64,
    revocation_deadline: Option<i64>,
    /// A static member that left temporarily (epoch -2): its assignment waits for it.
    pub left_temporarily: bool,
    /// Set for a member that speaks the classic protocol (JoinGroup, SyncGroup, Heartbeat)
    /// inside this consumer group, as Kafka lets classic and consumer members mix.
    pub classic: Option<ClassicMember>,
}

/// What a classic-protocol member of a consumer group said in its JoinGroup.
#[derive(Debug, Clone)]
pub struct ClassicMember {
    pub session_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    /// The protocol named in its JoinGroup answer (its first).
    pub protocol_name: String,
    /// SyncGroup must follow JoinGroup within the rebalance timeout.
    sync_deadline: Option<i64>,
}

impl ConsumerMember {
    /// A member joining with nothing assigned yet.
    fn joining(
        member_id: String,
        instance_id: Option<String>,
        client: (String, String),
        rebalance_timeout_ms: i32,
        now: i64,
    ) -> ConsumerMember {
        ConsumerMember {
            member_id,
            instance_id,
            rack_id: None,
            client_id: client.0,
            client_host: client.1,
            member_epoch: 0,
            previous_member_epoch: -1,
            rebalance_timeout_ms,
            subscribed_topic_names: Vec::new(),
            subscribed_topic_regex: None,
            server_assignor: None,
            assigned: Assignment::new(),
            revoking: Assignment::new(),
            sent: None,
            session_deadline: now,
            revocation_deadline: None,
            left_temporarily: false,
            classic: None,
        }
    }

    /// A classic member brought into a consumer group by an online upgrade.
    #[allow(clippy::too_many_arguments)]
    pub fn from_classic(
        member_id: String,
        instance_id: Option<String>,
        client: (String, String),
        timeouts: (i32, i32),
        protocols: Vec<(String, Bytes)>,
        protocol_name: String,
        topics: Vec<String>,
        assigned: Assignment,
        epoch: i32,
        now: i64,
    ) -> ConsumerMember {
        let (session_timeout_ms, rebalance_timeout_ms) = timeouts;
        ConsumerMember {
            member_id,
            instance_id,
            rack_id: None,
            client_id: client.0,
            client_host: client.1,
            member_epoch: epoch,
            previous_member_epoch: epoch - 1,
            rebalance_timeout_ms,
            subscribed_topic_names: topics,
            subscribed_topic_regex: None,
            server_assignor: None,
            assigned,
            revoking: Assignment::new(),
            sent: None,
            session_deadline: now + i64::from(session_timeout_ms),
            revocation_deadline: None,
            left_temporarily: false,
            classic: Some(ClassicMember {
                session_timeout_ms,
                protocols,
                protocol_name,
                sync_deadline: None,
            }),
        }
    }
}

/// A classic member's JoinGroup, as the consumer group sees it.
#[derive(Debug, Clone)]
pub struct ClassicJoin {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub require_known_member_id: bool,
    /// From the member's `ConsumerProtocolSubscription`.
    pub topics: Vec<String>,
    pub owned: Assignment,
}

/// The answer to a classic member's JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassicJoined {
    MemberIdRequired(String),
    Joined {
        member_id: String,
        generation: i32,
        protocol_name: String,
    },
}

impl ConsumerMember {
    fn subscribes(&self, topic: &str) -> bool {
        self.subscribed_topic_names.iter().any(|t| t == topic)
            || self
                .subscribed_topic_regex
                .as_ref()
                .is_some_and(|r| regex_matches(r, topic))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    pub static_members: HashMap<String, String>,
    /// The target assignment of each member, as of `assignment_epoch`.
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics' metadata the target was computed from.
    metadata: BTreeMap<String, TopicInfo>,
    pub assignor: String,
    settings: ConsumerSettings,
    /// The records last handed out for writing, by encoded key.
    persisted: BTreeMap<Bytes, Bytes>,
}

fn to_records(a: &Assignment) -> TopicPartitions {
    a.iter()
        .map(|(id, ps)| (*id, ps.iter().copied().collect()))
        .collect()
}

fn from_records(tps: &TopicPartitions) -> Assignment {
    let mut a = Assignment::new();
    for (id, ps) in tps {
        a.entry(*id).or_default().extend(ps.iter().copied());
    }
    a.retain(|_, ps| !ps.is_empty());
    a
}

/// An epoch record's value, or its tombstone; false when it does not decode.
fn apply_epoch(slot: &mut Option<i32>, value: Option<&[u8]>) -> bool {
    match value.map(decode_epoch_value) {
        None => *slot = None,
        Some(Ok(e)) => *slot = Some(e),
        Some(Err(_)) => return false,
    }
    true
}

/// A member record's value, or its tombstone; false when it does not decode.
fn apply_member<T>(
    map: &mut BTreeMap<String, T>,
    member: &str,
    value: Option<&[u8]>,
    decode: impl Fn(&[u8]) -> Result<T, super::records::RecordError>,
) -> bool {
    match value.map(decode) {
        None => {
            map.remove(member);
        }
        Some(Ok(v)) => {
            map.insert(member.to_string(), v);
        }
        Some(Err(_)) => return false,
    }
    true
}

/// A consumer group's KIP-848 records as read back from `__consumer_offsets` (tombstones
/// applied).
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub group_epoch: Option<i32>,
    pub assignment_epoch: Option<i32>,
    pub members: BTreeMap<String, ConsumerMemberMetadataValue>,
    pub targets: BTreeMap<String, TopicPartitions>,
    pub current: BTreeMap<String, CurrentMemberAssignmentValue>,
}

impl Replayed {
    /// Applies one record; false when the key is not a KIP-848 consumer group record or the
    /// value does not decode.
    pub fn apply(&mut self, key: &RecordKey, value: Option<&[u8]>) -> bool {
        match key {
            RecordKey::ConsumerGroupMetadata { .. } => apply_epoch(&mut self.group_epoch, value),
            RecordKey::TargetAssignmentMetadata { .. } => {
                apply_epoch(&mut self.assignment_epoch, value)
            }
            RecordKey::ConsumerMemberMetadata { member, .. } => apply_member(
                &mut self.members,
                member,
                value,
                ConsumerMemberMetadataValue::decode,
            ),
            RecordKey::TargetAssignmentMember { member, .. } => {
                apply_member(&mut self.targets, member, value, decode_target_assignment)
            }
            RecordKey::CurrentMemberAssignment { member, .. } => apply_member(
                &mut self.current,
                member,
                value,
                CurrentMemberAssignmentValue::decode,
            ),
            _ => false,
        }
    }

    /// The group these records describe, members' sessions starting now.
    pub fn build(
        self,
        group_id: &str,
        settings: ConsumerSettings,
        topics: &Topics,
        now: i64,
    ) -> Option<ConsumerGroup> {
        let group_epoch = self.group_epoch?;
        let mut g = ConsumerGroup::new(settings);
        g.group_epoch = group_epoch;
        g.assignment_epoch = self.assignment_epoch.unwrap_or(0).min(group_epoch);
        for (id, m) in self.members {
            let current = self.current.get(&id).cloned().unwrap_or_default();
            if let Some(i) = &m.instance_id {
                g.static_members.insert(i.clone(), id.clone());
            }
            g.members.insert(
                id.clone(),
                ConsumerMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id,
                    rack_id: m.rack_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    // Epoch -2 records a static member's temporary leave; its epoch is kept
                    // as the previous one.
                    member_epoch: if current.member_epoch == -2 {
                        current.previous_member_epoch
                    } else {
                        current.member_epoch
                    },
                    previous_member_epoch: current.previous_member_epoch,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    subscribed_topic_names: m.subscribed_topic_names,
                    subscribed_topic_regex: m.subscribed_topic_regex,
                    server_assignor: m.server_assignor,
                    assigned: from_records(&current.assigned),
                    revoking: from_records(&current.pending_revocation),
                    sent: None,
                    session_deadline: now + i64::from(g.settings.session_timeout_ms),
                    revocation_deadline: None,
                    left_temporarily: current.member_epoch == -2,
                    classic: m
                        .classic
                        .map(|(session_timeout_ms, protocols)| ClassicMember {
                            session_timeout_ms,
                            protocol_name: protocols
                                .first()
                                .map(|(n, _)| n.clone())
                                .unwrap_or_default(),
                            protocols,
                            sync_deadline: None,
                        }),
                },
            );
            if let Some(t) = self.targets.get(&id) {
                g.target.insert(id, from_records(t));
            }
        }
        // The assignor the members asked for (the target itself is as stored).
        g.assignor = g
            .members
            .values()
            .find_map(|m| m.server_assignor.clone())
            .unwrap_or_else(|| ASSIGNORS[0].to_string());
        // The target stands if it still covers every subscribed partition; otherwise the
        // next heartbeat sees changed metadata and assigns anew.
        let subscribed = g.subscribed_metadata(topics);
        let targeted: usize = g
            .target
            .values()
            .flat_map(|a| a.values())
            .map(BTreeSet::len)
            .sum();
        let wanted: usize = subscribed
            .values()
            .map(|t| t.partitions.max(0) as usize)
            .sum();
        if targeted == wanted {
            g.metadata = subscribed;
        }
        g.persisted = g.snapshot(group_id);
        Some(g)
    }
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

type Failure = (i16, String);

fn fail<T>(e: ResponseError, message: impl Into<String>) -> Result<T, Failure> {
    Err((e.code(), message.into()))
}

fn union(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = a.clone();
    for (t, ps) in b {
        out.entry(*t).or_default().extend(ps);
    }
    out.retain(|_, ps| !ps.is_empty());
    out
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(other) => ps.difference(other).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(t, ps)| b.get(t).is_some_and(|o| !ps.is_disjoint(o)))
}

/// Compiled subscription patterns (bounded; cleared when full).
static REGEXES: std::sync::Mutex<BTreeMap<String, Option<regex::Regex>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Compiles a subscription pattern as Kafka matches it: the whole topic name (RE2 syntax, as
/// RE2J in Kafka; linear-time matching, so a hostile pattern cannot stall the coordinator).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            format!("SubscribedTopicRegex {pattern:?} is not a valid regular expression: {e}")
        })
}

/// Whether `text` matches the subscription `pattern` (never, for an invalid one).
pub fn regex_matches(pattern: &str, text: &str) -> bool {
    let mut cache = REGEXES.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= 4096 && !cache.contains_key(pattern) {
        cache.clear();
    }
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| compile_regex(pattern).ok())
        .as_ref()
        .is_some_and(|r| r.is_match(text))
}

impl ConsumerGroup {
    pub fn new(settings: ConsumerSettings) -> ConsumerGroup {
        ConsumerGroup {
            assignor: ASSIGNORS[0].to_string(),
            settings,
            ..ConsumerGroup::default()
        }
    }

    /// The group's KIP-848 records as of now, by encoded key.
    fn snapshot(&self, group_id: &str) -> BTreeMap<Bytes, Bytes> {
        let group = group_id.to_string();
        let mut out = BTreeMap::new();
        out.insert(
            RecordKey::ConsumerGroupMetadata {
                group: group.clone(),
            }
            .encode(),
            encode_epoch_value(self.group_epoch),
        );
        out.insert(
            RecordKey::TargetAssignmentMetadata {
                group: group.clone(),
            }
            .encode(),
            encode_epoch_value(self.assignment_epoch),
        );
        for m in self.members.values() {
            let member = m.member_id.clone();
            out.insert(
                RecordKey::ConsumerMemberMetadata {
                    group: group.clone(),
                    member: member.clone(),
                }
                .encode(),
                ConsumerMemberMetadataValue {
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.subscribed_topic_names.clone(),
                    subscribed_topic_regex: m.subscribed_topic_regex.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    server_assignor: m.server_assignor.clone(),
                    classic: m
                        .classic
                        .as_ref()
                        .map(|c| (c.session_timeout_ms, c.protocols.clone())),
                }
                .encode(),
            );
            let target = self.target.get(&m.member_id).cloned().unwrap_or_default();
            out.insert(
                RecordKey::TargetAssignmentMember {
                    group: group.clone(),
                    member: member.clone(),
                }
                .encode(),
                encode_target_assignment(&to_records(&target)),
            );
            // Kafka's MemberState: STABLE 0, UNREVOKED_PARTITIONS 1, UNRELEASED_PARTITIONS 2.
            let state = if !m.revoking.is_empty() {
                1
            } else if m.assigned != target {
                2
            } else {
                0
            };
            out.insert(
                RecordKey::CurrentMemberAssignment {
                    group: group.clone(),
                    member,
                }
                .encode(),
                CurrentMemberAssignmentValue {
                    member_epoch: if m.left_temporarily {
                        -2
                    } else {
                        m.member_epoch
                    },
                    previous_member_epoch: if m.left_temporarily {
                        m.member_epoch
                    } else {
                        m.previous_member_epoch
                    },
                    state,
                    assigned: to_records(&m.assigned),
                    pending_revocation: to_records(&m.revoking),
                }
                .encode(),
            );
        }
        out
    }

    /// The records to append so `__consumer_offsets` matches the group: changed values, and
    /// tombstones for members that are gone.
    pub fn take_changes(&mut self, group_id: &str) -> Vec<(Bytes, Option<Bytes>)> {
        let now = self.snapshot(group_id);
        let mut out: Vec<(Bytes, Option<Bytes>)> = self
            .persisted
            .keys()
            .filter(|k| !now.contains_key(*k))
            .map(|k| (k.clone(), None))
            .collect();
        for (k, v) in &now {
            if self.persisted.get(k) != Some(v) {
                out.push((k.clone(), Some(v.clone())));
            }
        }
        self.persisted = now;
        out
    }

    /// A write of [`ConsumerGroup::take_changes`] failed: write everything next time.
    pub fn forget_persisted(&mut self) {
        // Keep the keys (their tombstones are still owed) but no value counts as written.
        for v in self.persisted.values_mut() {
            *v = Bytes::new();
        }
    }

    /// Tombstones for every record of the group (deletion).
    pub fn tombstones(&mut self, group_id: &str) -> Vec<(Bytes, Option<Bytes>)> {
        let mut keys: BTreeSet<Bytes> = std::mem::take(&mut self.persisted).into_keys().collect();
        keys.extend(self.snapshot(group_id).into_keys());
        keys.into_iter().map(|k| (k, None)).collect()
    }

    /// Kafka's consumer group states.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.member_epoch != self.assignment_epoch
                || !m.revoking.is_empty()
                || self
                    .target
                    .get(&m.member_id)
                    .is_some_and(|t| *t != m.assigned)
        }) {
            // Someone still gives up or waits for partitions.
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The topics some member subscribes to, by name or by regex, among `topics`.
    pub fn subscribed_topics_in(&self, topics: &Topics) -> std::collections::HashSet<String> {
        let mut out: std::collections::HashSet<String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter().cloned())
            .collect();
        out.extend(self.subscribed_metadata(topics).into_keys());
        out
    }

    /// The metadata of every topic some member subscribes to.
    fn subscribed_metadata(&self, topics: &Topics) -> BTreeMap<String, TopicInfo> {
        topics
            .iter()
            .filter(|(name, _)| self.members.values().any(|m| m.subscribes(name)))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }

    fn bump(&mut self) {
        self.group_epoch += 1;
    }

    /// Handles one ConsumerGroupHeartbeat.
    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        topics: &Topics,
        version: i16,
        now: i64,
    ) -> Result<HeartbeatResponse, Failure> {
        let s = self.settings.clone();
        if req.member_epoch == -1 || req.member_epoch == -2 {
            return self.leave(&req, now);
        }
        let is_full_request = req.member_epoch == 0
            || (req.rebalance_timeout_ms != -1
                && (req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some())
                && req.owned.is_some());
        let reported = req.owned.clone();
        if req.member_epoch < -2 {
            return fail(ResponseError::InvalidRequest, "MemberEpoch is invalid");
        }
        if let Some(pattern) = &req.subscribed_topic_regex {
            if let Err(message) = compile_regex(pattern) {
                return fail(ResponseError::InvalidRegularExpression, message);
            }
        }
        if let Some(a) = &req.server_assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return fail(
                    ResponseError::UnsupportedAssignor,
                    format!("ServerAssignor {a} is not supported; use uniform or range"),
                );
            }
        }
        // Kafka's request checks (ConsumerGroupHeartbeatRequest validation).
        if req.member_epoch != 0 && req.member_id.is_empty() {
            return fail(ResponseError::InvalidRequest, "MemberId can't be empty.");
        }
        if req.member_epoch == 0 && req.owned.as_ref().is_some_and(|o| !o.is_empty()) {
            return fail(
                ResponseError::InvalidRequest,
                "TopicPartitions must be empty when (re-)joining.",
            );
        }
        let mut changed = false;
        let member_id = if req.member_epoch == 0 {
            let (id, joined) = self.join(&req, version, now)?;
            changed = joined;
            id
        } else {
            let Some(m) = self.members.get(&req.member_id) else {
                return fail(
                    ResponseError::UnknownMemberId,
                    format!("Member {} is not a member of the group", req.member_id),
                );
            };
            // Kafka accepts the previous epoch only with owned partitions, all still its own.
            let owned_ok = req
                .owned
                .as_ref()
                .is_some_and(|o| minus(o, &m.assigned).is_empty());
            if req.member_epoch != m.member_epoch
                && !(req.member_epoch == m.previous_member_epoch && owned_ok)
            {
                return fail(
                    ResponseError::FencedMemberEpoch,
                    format!(
                        "The consumer group member has an epoch {} but the group expects {}",
                        req.member_epoch, m.member_epoch
                    ),
                );
            }
            if let (Some(instance), Some(current)) = (
                &req.instance_id,
                req.instance_id
                    .as_ref()
                    .and_then(|i| self.static_members.get(i)),
            ) {
                if *current != req.member_id {
                    return fail(
                        ResponseError::FencedInstanceId,
                        format!("Instance {instance} is used by another member"),
                    );
                }
            }
            req.member_id.clone()
        };
        // Subscription and settings changes.
        if let Some(m) = self.members.get_mut(&member_id) {
            m.session_deadline = now
                + i64::from(
                    m.classic
                        .as_ref()
                        .map_or(s.session_timeout_ms, |c| c.session_timeout_ms),
                );
            if let Some(names) = &req.subscribed_topic_names {
                let mut names = names.clone();
                names.sort();
                names.dedup();
                if names != m.subscribed_topic_names {
                    m.subscribed_topic_names = names;
                    changed = true;
                }
            }
            if req.subscribed_topic_regex.is_some()
                && req.subscribed_topic_regex != m.subscribed_topic_regex
            {
                m.subscribed_topic_regex = req.subscribed_topic_regex.clone();
                changed = true;
            }
            if req.rebalance_timeout_ms > 0 {
                m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            }
            if req.rack_id.is_some() {
                m.rack_id = req.rack_id.clone();
            }
            if req.server_assignor.is_some() && req.server_assignor != m.server_assignor {
                m.server_assignor = req.server_assignor.clone();
                changed = true;
            }
            m.client_id = req.client_id.clone();
            m.client_host = req.client_host.clone();
            if let Some(owned) = &req.owned {
                // What it gave up no longer counts as owned.
                m.revoking = m
                    .revoking
                    .iter()
                    .map(|(t, ps)| {
                        let still: BTreeSet<i32> = owned
                            .get(t)
                            .map(|o| ps.intersection(o).copied().collect())
                            .unwrap_or_default();
                        (*t, still)
                    })
                    .filter(|(_, ps)| !ps.is_empty())
                    .collect();
            }
        }
        // One new group epoch for whatever changed in this heartbeat.
        if changed || self.subscribed_metadata(topics) != self.metadata {
            self.bump();
        }
        if self.assignment_epoch < self.group_epoch {
            self.compute_target(topics);
        }
        self.reconcile(&member_id, None, now);
        let m = self
            .members
            .get_mut(&member_id)
            .ok_or((code(ResponseError::UnknownMemberId), String::new()))?;
        // Kafka sends the assignment when it changed, and on every full request (a join, or
        // a retry after a lost answer carrying all fields), so a lost response heals.
        // A member reporting other partitions than it was given lost an answer too.
        let out_of_step = reported.is_some_and(|o| o != m.assigned);
        let assignment = if is_full_request || out_of_step || m.sent.as_ref() != Some(&m.assigned) {
            m.sent = Some(m.assigned.clone());
            Some(m.assigned.clone())
        } else {
            None
        };
        Ok(HeartbeatResponse {
            member_id: m.member_id.clone(),
            member_epoch: m.member_epoch,
            heartbeat_interval_ms: s.heartbeat_interval_ms,
            assignment,
        })
    }

    /// Adds (or re-creates) the member; true when the group's membership changed.
    fn join(
        &mut self,
        req: &HeartbeatRequest,
        version: i16,
        now: i64,
    ) -> Result<(String, bool), Failure> {
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return fail(
                ResponseError::InvalidRequest,
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request",
            );
        }
        if req.rebalance_timeout_ms < 0 {
            return fail(
                ResponseError::InvalidRequest,
                "RebalanceTimeoutMs must be provided in first request",
            );
        }
        let member_id = if req.member_id.is_empty() {
            if version >= 1 {
                return fail(ResponseError::InvalidRequest, "MemberId can't be empty.");
            }
            Uuid::new_v4().to_string()
        } else {
            req.member_id.clone()
        };
        let mut carried: Option<ConsumerMember> = None;
        if let Some(instance) = &req.instance_id {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                if old_id != member_id {
                    let left = self
                        .members
                        .get(&old_id)
                        .is_some_and(|m| m.left_temporarily);
                    if !left {
                        return fail(
                            ResponseError::UnreleasedInstanceId,
                            format!("Static member {instance} is still in use by {old_id}"),
                        );
                    }
                    // The static member returns: it takes its old assignment and epoch.
                    carried = self.members.remove(&old_id);
                    if let Some(t) = self.target.remove(&old_id) {
                        self.target.insert(member_id.clone(), t);
                    }
                }
            }
        }
        let is_new = !self.members.contains_key(&member_id) && carried.is_none();
        if is_new && self.members.len() >= self.settings.max_size {
            return fail(
                ResponseError::GroupMaxSizeReached,
                "The consumer group has reached its maximum size",
            );
        }
        let member = match carried {
            Some(mut m) => {
                m.member_id = member_id.clone();
                m.left_temporarily = false;
                m.sent = None;
                m
            }
            None => {
                // A member rejoining with epoch 0 has dropped all its partitions.
                let mut m = ConsumerMember::joining(
                    member_id.clone(),
                    req.instance_id.clone(),
                    (req.client_id.clone(), req.client_host.clone()),
                    req.rebalance_timeout_ms,
                    now,
                );
                m.rack_id = req.rack_id.clone();
                m
            }
        };
        if let Some(instance) = &req.instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        let returning_static = !self.members.contains_key(&member_id) && member.member_epoch > 0;
        self.members.insert(member_id.clone(), member);
        Ok((member_id, !returning_static))
    }

    fn leave(&mut self, req: &HeartbeatRequest, now: i64) -> Result<HeartbeatResponse, Failure> {
        let member_id = if req.member_id.is_empty() {
            req.instance_id
                .as_ref()
                .and_then(|i| self.static_members.get(i).cloned())
                .unwrap_or_default()
        } else {
            req.member_id.clone()
        };
        if !self.members.contains_key(&member_id) {
            return fail(
                ResponseError::UnknownMemberId,
                format!("Member {member_id} is not a member of the group"),
            );
        }
        if req.member_epoch == -2 && req.instance_id.is_some() {
            // A static member's temporary leave: its partitions stay reserved for it until
            // its session times out.
            if let Some(m) = self.members.get_mut(&member_id) {
                m.left_temporarily = true;
                m.session_deadline = now + i64::from(self.settings.session_timeout_ms);
            }
        } else {
            self.remove(&member_id);
        }
        Ok(HeartbeatResponse {
            member_id,
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn remove(&mut self, member_id: &str) {
        if let Some(m) = self.members.remove(member_id) {
            if let Some(i) = &m.instance_id {
                if self.static_members.get(i).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(i);
                }
            }
        }
        self.target.remove(member_id);
        self.bump();
    }

    /// Runs the group's assignor over the members' subscriptions.
    fn compute_target(&mut self, topics: &Topics) {
        self.metadata = self.subscribed_metadata(topics);
        let preferred = self
            .members
            .values()
            .filter_map(|m| m.server_assignor.clone())
            .max_by_key(|a| {
                self.members
                    .values()
                    .filter(|m| m.server_assignor.as_ref() == Some(a))
                    .count()
            });
        self.assignor = preferred.unwrap_or_else(|| ASSIGNORS[0].to_string());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let mut target: BTreeMap<String, Assignment> = ids
            .iter()
            .map(|id| (id.clone(), Assignment::new()))
            .collect();
        for (name, info) in &self.metadata {
            let subscribers: Vec<&String> = ids
                .iter()
                .filter(|id| self.members[*id].subscribes(name))
                .collect();
            if subscribers.is_empty() {
                continue;
            }
            if self.assignor == "range" {
                let n = info.partitions as usize;
                let k = subscribers.len();
                let mut p = 0usize;
                for (i, id) in subscribers.iter().enumerate() {
                    let count = n / k + usize::from(i < n % k);
                    let set: BTreeSet<i32> = (p..p + count).map(|x| x as i32).collect();
                    p += count;
                    if !set.is_empty() {
                        target
                            .entry((*id).clone())
                            .or_default()
                            .insert(info.id, set);
                    }
                }
            }
        }
        if self.assignor != "range" {
            self.uniform(&mut target, &ids);
        }
        self.target = target;
        self.assignment_epoch = self.group_epoch;
    }

    /// Balanced and sticky: every partition goes to a subscriber, counts differ by at most one
    /// among members with the same subscriptions, and partitions stay where they were when
    /// that keeps the balance.
    fn uniform(&self, target: &mut BTreeMap<String, Assignment>, ids: &[String]) {
        let mut count: BTreeMap<&String, usize> = ids.iter().map(|id| (id, 0)).collect();
        let all: Vec<(String, Uuid, i32)> = self
            .metadata
            .iter()
            .flat_map(|(n, t)| (0..t.partitions).map(move |p| (n.clone(), t.id, p)))
            .collect();
        let eligible = |topic: &str| -> Vec<&String> {
            ids.iter()
                .filter(|id| self.members[*id].subscribes(topic))
                .collect()
        };
        // Quota: an even share of the partitions each member could take.
        let total = all.len();
        let quota = total.div_ceil(ids.len().max(1));
        let mut unassigned = Vec::new();
        for (topic, id, p) in &all {
            let keeper = self
                .target
                .iter()
                .find(|(_, a)| a.get(id).is_some_and(|s| s.contains(p)))
                .map(|(m, _)| m)
                .filter(|m| {
                    self.members.get(*m).is_some_and(|mm| mm.subscribes(topic))
                        && count.get(m).is_some_and(|c| *c < quota)
                });
            match keeper.and_then(|k| ids.iter().find(|i| *i == k)) {
                Some(k) => {
                    target
                        .entry(k.clone())
                        .or_default()
                        .entry(*id)
                        .or_default()
                        .insert(*p);
                    *count.entry(k).or_default() += 1;
                }
                None => unassigned.push((topic.clone(), *id, *p)),
            }
        }
        for (topic, id, p) in unassigned {
            let Some(best) = eligible(&topic)
                .into_iter()
                .min_by_key(|m| (count[*m], (*m).clone()))
            else {
                continue;
            };
            target
                .entry(best.clone())
                .or_default()
                .entry(id)
                .or_default()
                .insert(p);
            *count.entry(best).or_default() += 1;
        }
        // Even out: move partitions from the fullest to the emptiest eligible member.
        loop {
            let mut moved = false;
            for (topic, id, p) in &all {
                let Some(owner) = target
                    .iter()
                    .find(|(_, a)| a.get(id).is_some_and(|s| s.contains(p)))
                    .map(|(m, _)| m.clone())
                else {
                    continue;
                };
                let Some(least) = eligible(topic)
                    .into_iter()
                    .min_by_key(|m| (count[*m], (*m).clone()))
                else {
                    continue;
                };
                let owner_ref = ids.iter().find(|i| **i == owner);
                if let Some(owner_ref) = owner_ref {
                    if count[owner_ref] > count[least] + 1 {
                        if let Some(s) = target.get_mut(&owner).and_then(|a| a.get_mut(id)) {
                            s.remove(p);
                        }
                        target
                            .entry(least.clone())
                            .or_default()
                            .entry(*id)
                            .or_default()
                            .insert(*p);
                        *count.entry(owner_ref).or_default() -= 1;
                        *count.entry(least).or_default() += 1;
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        for a in target.values_mut() {
            a.retain(|_, ps| !ps.is_empty());
        }
    }

    /// Moves a member towards its target: revoke first, then take what others released.
    /// `owned`: what the member reports owning (classic members, from their JoinGroup
    /// subscription); `None` counts everything it was given as still owned.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: i64) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        // Partitions someone else still owns or is giving up.
        let held_by_others: Assignment = self
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .fold(Assignment::new(), |acc, m| {
                union(&union(&acc, &m.assigned), &m.revoking)
            });
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        if m.left_temporarily {
            return;
        }
        let to_revoke = minus(&m.assigned, &target);
        if let Some(owned) = owned {
            m.revoking = minus(&m.revoking, &minus(&m.revoking, owned));
        }
        if !to_revoke.is_empty() {
            let still_owned = match owned {
                Some(o) => minus(&to_revoke, &minus(&to_revoke, o)),
                None => to_revoke.clone(),
            };
            m.assigned = minus(&m.assigned, &to_revoke);
            m.revoking = union(&m.revoking, &still_owned);
            if !m.revoking.is_empty() {
                m.revocation_deadline = Some(now + i64::from(m.rebalance_timeout_ms.max(0)));
            }
        }
        if !m.revoking.is_empty() {
            // Wait until the member confirms (its owned partitions no longer include them).
            return;
        }
        m.revocation_deadline = None;
        if m.member_epoch != epoch {
            m.previous_member_epoch = m.member_epoch;
            m.member_epoch = epoch;
        }
        let free = minus(&minus(&target, &m.assigned), &held_by_others);
        m.assigned = union(&m.assigned, &free);
        // The protocol's promise: no partition is owned by two members at once.
        debug_assert!(
            !intersects(&m.assigned, &held_by_others),
            "member {member_id} was given a partition another member still owns"
        );
    }

    /// Expires sessions and members that did not revoke in time. Returns whether anything
    /// changed.
    pub fn tick(&mut self, now: i64) -> bool {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                now >= m.session_deadline || m.revocation_deadline.is_some_and(|d| now >= d)
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &expired {
            tracing::info!(member = id, "consumer group member expired");
            self.remove(id);
        }
        !expired.is_empty()
    }

    /// Whether `member_id` is a classic-protocol member of this group.
    pub fn has_classic_member(&self, member_id: &str) -> bool {
        self.members
            .get(member_id)
            .is_some_and(|m| m.classic.is_some())
    }

    fn validate_classic(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<&ConsumerMember, i16> {
        if let Some(i) = instance_id {
            if self.static_members.get(i).is_some_and(|m| m != member_id) {
                return Err(code(ResponseError::FencedInstanceId));
            }
        }
        let m = self
            .members
            .get(member_id)
            .filter(|m| m.classic.is_some())
            .ok_or(code(ResponseError::UnknownMemberId))?;
        if generation != m.member_epoch {
            return Err(code(ResponseError::IllegalGeneration));
        }
        Ok(m)
    }

    /// JoinGroup from a classic member: it joins as a member of this consumer group, the
    /// server-side assignor decides, and its generation is its member epoch.
    pub fn classic_join(
        &mut self,
        req: ClassicJoin,
        topics: &Topics,
        now: i64,
    ) -> Result<ClassicJoined, Failure> {
        let Some(protocol_name) = req.protocols.first().map(|(n, _)| n.clone()) else {
            return fail(ResponseError::InconsistentGroupProtocol, "no protocol");
        };
        let member_id = if req.member_id.is_empty() {
            let id = format!("{}-{}", req.client_id, Uuid::new_v4());
            if req.require_known_member_id && req.instance_id.is_none() {
                return Ok(ClassicJoined::MemberIdRequired(id));
            }
            id
        } else {
            // Known, or handed out with MEMBER_ID_REQUIRED: Kafka creates it either way.
            req.member_id.clone()
        };
        // A static member's new incarnation takes the old one's place.
        if let Some(instance) = &req.instance_id {
            if let Some(old) = self.static_members.get(instance).cloned() {
                if old != member_id {
                    if let Some(mut m) = self.members.remove(&old) {
                        m.member_id = member_id.clone();
                        self.members.insert(member_id.clone(), m);
                    }
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(member_id.clone(), t);
                    }
                }
            }
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        let is_new = !self.members.contains_key(&member_id);
        if is_new && self.members.len() >= self.settings.max_size {
            return fail(
                ResponseError::GroupMaxSizeReached,
                "The consumer group has reached its maximum size",
            );
        }
        let mut topics_sorted = req.topics.clone();
        topics_sorted.sort();
        topics_sorted.dedup();
        let m = self.members.entry(member_id.clone()).or_insert_with(|| {
            ConsumerMember::joining(
                member_id.clone(),
                req.instance_id.clone(),
                (req.client_id.clone(), req.client_host.clone()),
                req.rebalance_timeout_ms,
                now,
            )
        });
        let changed = is_new || m.subscribed_topic_names != topics_sorted;
        m.subscribed_topic_names = topics_sorted;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.left_temporarily = false;
        m.session_deadline = now + i64::from(req.session_timeout_ms);
        m.classic = Some(ClassicMember {
            session_timeout_ms: req.session_timeout_ms,
            protocols: req.protocols,
            protocol_name: protocol_name.clone(),
            sync_deadline: Some(now + i64::from(req.rebalance_timeout_ms.max(0))),
        });
        if changed || self.subscribed_metadata(topics) != self.metadata {
            self.bump();
        }
        if self.assignment_epoch < self.group_epoch {
            self.compute_target(topics);
        }
        self.reconcile(&member_id, Some(&req.owned), now);
        let generation = self.members.get(&member_id).map_or(0, |m| m.member_epoch);
        Ok(ClassicJoined::Joined {
            member_id,
            generation,
            protocol_name,
        })
    }

    /// SyncGroup from a classic member: its current assignment.
    pub fn classic_sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(String, Assignment), i16> {
        self.validate_classic(member_id, instance_id, generation)?;
        let m = self
            .members
            .get_mut(member_id)
            .ok_or(code(ResponseError::UnknownMemberId))?;
        let classic = m
            .classic
            .as_mut()
            .ok_or(code(ResponseError::UnknownMemberId))?;
        classic.sync_deadline = None;
        m.session_deadline = now + i64::from(classic.session_timeout_ms);
        Ok((classic.protocol_name.clone(), m.assigned.clone()))
    }

    /// Heartbeat from a classic member: `REBALANCE_IN_PROGRESS` while its assignment still has
    /// to change, so it rejoins.
    pub fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> i16 {
        if let Err(e) = self.validate_classic(member_id, instance_id, generation) {
            return e;
        }
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if let Some(c) = &m.classic {
            m.session_deadline = now + i64::from(c.session_timeout_ms);
        }
        // Behind the group (a member left, subscriptions or topics changed) or not yet at its
        // target: rejoin, so the assignor runs and the member reconciles.
        if m.member_epoch < self.group_epoch
            || m.member_epoch != epoch
            || !m.revoking.is_empty()
            || m.assigned != target
        {
            return code(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// LeaveGroup for a classic member.
    pub fn classic_leave(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let id = match instance_id {
            Some(i) => match self.static_members.get(i) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return code(ResponseError::FencedInstanceId),
                None => return code(ResponseError::UnknownMemberId),
            },
            None => member_id.to_string(),
        };
        if !self.has_classic_member(&id) {
            return code(ResponseError::UnknownMemberId);
        }
        self.remove(&id);
        0
    }

    /// A classic group whose members all speak `consumer` becomes a consumer group when a
    /// consumer-protocol member arrives (Kafka's online upgrade): members keep their
    /// generation as epoch and their assignment.
    pub fn upgrade_from(
        members: Vec<(ConsumerMember, Assignment)>,
        generation: i32,
        settings: ConsumerSettings,
        topics: &Topics,
    ) -> ConsumerGroup {
        let mut g = ConsumerGroup::new(settings);
        g.group_epoch = generation;
        g.assignment_epoch = generation;
        for (m, assigned) in members {
            if let Some(i) = &m.instance_id {
                g.static_members.insert(i.clone(), m.member_id.clone());
            }
            g.target.insert(m.member_id.clone(), assigned);
            g.members.insert(m.member_id.clone(), m);
        }
        g.metadata = g.subscribed_metadata(topics);
        g
    }

    /// OffsetCommit and OffsetFetch from members: `STALE_MEMBER_EPOCH` for an old epoch.
    pub fn validate_offset_commit(&self, member_id: &str, member_epoch: i32) -> Result<(), i16> {
        if member_epoch < 0 && member_id.is_empty() {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(code(ResponseError::UnknownMemberId))
            };
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(code(ResponseError::UnknownMemberId));
        };
        if member_epoch != m.member_epoch {
            // Consumer-protocol clients commit with OffsetCommit v9+; classic members expect
            // their generation to be checked.
            return Err(if m.classic.is_some() {
                code(ResponseError::IllegalGeneration)
            } else {
                code(ResponseError::StaleMemberEpoch)
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(n: i32) -> (Topics, Uuid) {
        let id = Uuid::from_u128(7);
        let mut t = Topics::new();
        t.insert("t".into(), TopicInfo { id, partitions: n });
        (t, id)
    }

    fn join(g: &mut ConsumerGroup, id: &str, topics: &Topics, now: i64) -> HeartbeatResponse {
        g.heartbeat(
            HeartbeatRequest {
                member_id: id.into(),
                member_epoch: 0,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: Some(vec!["t".into()]),
                ..HeartbeatRequest::default()
            },
            topics,
            1,
            now,
        )
        .expect("join")
    }

    fn beat(
        g: &mut ConsumerGroup,
        id: &str,
        epoch: i32,
        owned: Option<Assignment>,
        topics: &Topics,
        now: i64,
    ) -> HeartbeatResponse {
        g.heartbeat(
            HeartbeatRequest {
                member_id: id.into(),
                member_epoch: epoch,
                owned,
                ..HeartbeatRequest::default()
            },
            topics,
            1,
            now,
        )
        .expect("heartbeat")
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn a_second_member_gets_partitions_only_after_the_first_releases_them() {
        let (topics, _) = topics(6);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        let a = join(&mut g, "a", &topics, 0);
        assert_eq!(a.member_epoch, 1);
        let a_owned = a.assignment.clone().expect("assignment");
        assert_eq!(count(&a_owned), 6);
        let b = join(&mut g, "b", &topics, 10);
        assert_eq!(b.member_epoch, 2);
        assert_eq!(
            count(b.assignment.as_ref().expect("assignment")),
            0,
            "nothing is free yet"
        );
        // a is told to give up three partitions and keeps its epoch until it confirms.
        let a2 = beat(&mut g, "a", 1, None, &topics, 20);
        let kept = a2.assignment.expect("revocation");
        assert_eq!(count(&kept), 3);
        assert_eq!(a2.member_epoch, 1);
        assert_eq!(g.state(), "Reconciling");
        // b still gets nothing while a owns them.
        assert!(beat(&mut g, "b", 2, Some(Assignment::new()), &topics, 30)
            .assignment
            .is_none_or(|x| count(&x) == 0));
        let a3 = beat(&mut g, "a", 1, Some(kept.clone()), &topics, 40);
        assert_eq!(a3.member_epoch, 2);
        let b3 = beat(&mut g, "b", 2, Some(Assignment::new()), &topics, 50);
        let b_owned = b3.assignment.expect("released partitions");
        assert_eq!(count(&b_owned), 3);
        assert!(!intersects(&kept, &b_owned));
        assert_eq!(g.state(), "Stable");
    }

    #[test]
    fn stale_epochs_are_fenced_and_leaving_rebalances() {
        let (topics, _) = topics(4);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        join(&mut g, "a", &topics, 0);
        join(&mut g, "b", &topics, 0);
        let err = g
            .heartbeat(
                HeartbeatRequest {
                    member_id: "a".into(),
                    member_epoch: 7,
                    ..HeartbeatRequest::default()
                },
                &topics,
                1,
                1,
            )
            .expect_err("fenced");
        assert_eq!(err.0, code(ResponseError::FencedMemberEpoch));
        let before = g.group_epoch;
        g.heartbeat(
            HeartbeatRequest {
                member_id: "b".into(),
                member_epoch: -1,
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            2,
        )
        .expect("leave");
        assert_eq!(g.group_epoch, before + 1);
        assert!(!g.members.contains_key("b"));
        assert_eq!(
            g.validate_offset_commit("a", 99),
            Err(code(ResponseError::StaleMemberEpoch))
        );
    }

    #[test]
    fn state_written_as_records_rebuilds_the_same_group() {
        let (topics, _) = topics(6);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        join(&mut g, "a", &topics, 0);
        join(&mut g, "b", &topics, 0);
        beat(&mut g, "a", 1, None, &topics, 1);
        let mut log: Vec<(Bytes, Option<Bytes>)> = g.take_changes("g");
        assert!(!log.is_empty());
        assert!(g.take_changes("g").is_empty(), "nothing changed since");
        g.heartbeat(
            HeartbeatRequest {
                member_id: "b".into(),
                member_epoch: -1,
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            2,
        )
        .expect("leave");
        let changes = g.take_changes("g");
        assert!(
            changes.iter().filter(|(_, v)| v.is_none()).count() == 3,
            "b's member, target and current assignment records are tombstoned"
        );
        log.extend(changes);
        let mut replayed = Replayed::default();
        for (k, v) in &log {
            let key = RecordKey::decode(k).expect("key");
            assert!(replayed.apply(&key, v.as_deref()));
        }
        let back = replayed
            .build("g", ConsumerSettings::default(), &topics, 10)
            .expect("group");
        assert_eq!(back.group_epoch, g.group_epoch);
        assert_eq!(back.assignment_epoch, g.assignment_epoch);
        assert_eq!(back.target, g.target);
        let ids: Vec<&String> = back.members.keys().collect();
        assert_eq!(ids, vec!["a"]);
        let (m, orig) = (&back.members["a"], &g.members["a"]);
        assert_eq!(
            (
                m.member_epoch,
                &m.assigned,
                &m.revoking,
                &m.subscribed_topic_names
            ),
            (
                orig.member_epoch,
                &orig.assigned,
                &orig.revoking,
                &orig.subscribed_topic_names
            )
        );
    }

    #[test]
    fn a_static_members_temporary_leave_survives_a_reload() {
        let (topics, _) = topics(2);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        g.heartbeat(
            HeartbeatRequest {
                member_id: "s1".into(),
                member_epoch: 0,
                instance_id: Some("i".into()),
                rebalance_timeout_ms: 1000,
                subscribed_topic_names: Some(vec!["t".into()]),
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            0,
        )
        .expect("join");
        let epoch = g.members["s1"].member_epoch;
        g.heartbeat(
            HeartbeatRequest {
                member_id: "s1".into(),
                member_epoch: -2,
                instance_id: Some("i".into()),
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            1,
        )
        .expect("temporary leave");
        let mut replayed = Replayed::default();
        for (k, v) in g.take_changes("g") {
            let key = RecordKey::decode(&k).expect("key");
            assert!(replayed.apply(&key, v.as_deref()));
        }
        let back = replayed
            .build("g", ConsumerSettings::default(), &topics, 2)
            .expect("group");
        let m = &back.members["s1"];
        assert!(m.left_temporarily, "epoch -2 is stored");
        assert_eq!(m.member_epoch, epoch);
        assert_eq!(count(&m.assigned), 2, "its partitions stay reserved");
    }

    #[test]
    fn malformed_heartbeats_are_invalid_requests() {
        let (topics, id) = topics(2);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        let no_id = g.heartbeat(
            HeartbeatRequest {
                member_epoch: 3,
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            0,
        );
        assert_eq!(
            no_id.map(|_| ()).map_err(|e| e.0),
            Err(code(ResponseError::InvalidRequest))
        );
        let owned: Assignment = [(id, [0].into())].into();
        let joining_with_partitions = g.heartbeat(
            HeartbeatRequest {
                member_id: "m".into(),
                member_epoch: 0,
                rebalance_timeout_ms: 1000,
                subscribed_topic_names: Some(vec!["t".into()]),
                owned: Some(owned),
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            0,
        );
        assert_eq!(
            joining_with_partitions.map(|_| ()).map_err(|e| e.0),
            Err(code(ResponseError::InvalidRequest))
        );
        let bad_regex = g.heartbeat(
            HeartbeatRequest {
                member_id: "m".into(),
                member_epoch: 0,
                rebalance_timeout_ms: 1000,
                subscribed_topic_regex: Some("(".into()),
                ..HeartbeatRequest::default()
            },
            &topics,
            1,
            0,
        );
        assert_eq!(
            bad_regex.map(|_| ()).map_err(|e| e.0),
            Err(code(ResponseError::InvalidRegularExpression))
        );
        assert!(
            g.members.is_empty(),
            "no refused request left a member behind"
        );
    }

    #[test]
    fn sessions_expire() {
        let (topics, _) = topics(2);
        let mut g = ConsumerGroup::new(ConsumerSettings::default());
        join(&mut g, "a", &topics, 0);
        assert!(!g.tick(44_999));
        assert!(g.tick(45_000));
        assert!(g.members.is_empty());
        assert_eq!(g.state(), "Empty");
    }

    #[test]
    fn range_and_uniform_spread_partitions_evenly() {
        for assignor in ASSIGNORS {
            let (topics, _) = topics(10);
            let mut g = ConsumerGroup::new(ConsumerSettings::default());
            for id in ["a", "b", "c"] {
                g.heartbeat(
                    HeartbeatRequest {
                        member_id: id.into(),
                        member_epoch: 0,
                        rebalance_timeout_ms: 1000,
                        subscribed_topic_names: Some(vec!["t".into()]),
                        server_assignor: Some((*assignor).into()),
                        ..HeartbeatRequest::default()
                    },
                    &topics,
                    1,
                    0,
                )
                .expect("join");
            }
            g.compute_target(&topics);
            let counts: Vec<usize> = g.target.values().map(count).collect();
            assert_eq!(counts.iter().sum::<usize>(), 10, "{assignor}");
            assert!(
                counts.iter().all(|c| (3..=4).contains(c)),
                "{assignor}: {counts:?}"
            );
        }
    }

    #[test]
    fn subscription_regexes_match_whole_names() {
        assert!(regex_matches("orders-.*", "orders-eu"));
        assert!(!regex_matches("orders-.*", "my-orders-eu"));
        assert!(regex_matches("t-(a|b)", "t-b"));
        assert!(regex_matches("t[0-9]+", "t42"));
        assert!(!regex_matches("t[0-9]+", "t"));
        assert!(
            !regex_matches("(unclosed", "x"),
            "an invalid pattern matches nothing"
        );
        assert!(compile_regex("(unclosed").is_err());
        // Backtracking matchers take exponential time on this; RE2 semantics do not.
        let started = std::time::Instant::now();
        assert!(!regex_matches(
            &format!("{}x", ".*".repeat(20)),
            &"a".repeat(40)
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
