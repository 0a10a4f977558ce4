//! One classic consumer group's state machine (Kafka's `ClassicGroup`): Empty,
//! PreparingRebalance, CompletingRebalance, Stable, Dead; member ids and `MEMBER_ID_REQUIRED`;
//! generations; protocol selection; session, rebalance and sync timeouts; the initial rebalance
//! delay; static membership (KIP-345) with fencing.
//!
//! It does no I/O and reads no clock: every call takes `now` (ms), answers that must wait
//! (JoinGroup until the join phase ends, SyncGroup until the leader's assignment is stored) go
//! to oneshot channels, and writes it needs are returned as [`Store`]s for the coordinator to
//! append to `__consumer_offsets`. That keeps it testable by simulation.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use runnel_protocol::kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use super::records::{GroupMetadataValue, MemberMetadata, OffsetCommitValue};

/// How long a member added during a rebalance may wait for its first generation before it is
/// dropped (Kafka's `NewMemberJoinTimeoutMs`).
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka reports in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Broker settings that shape groups (Kafka's `group.*` configs).
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i32,
    pub max_size: usize,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets `MEMBER_ID_REQUIRED` with its id.
    pub require_known_member_id: bool,
    /// JoinGroup v9+ (KIP-814): a static leader rejoining a stable group may skip assigning.
    pub supports_skip_assignment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    pub members: Vec<JoinedMember>,
}

impl JoinResult {
    pub fn error(code: i16, member_id: String) -> JoinResult {
        JoinResult {
            error: code,
            generation_id: -1,
            member_id,
            ..JoinResult::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(code: i16) -> SyncResult {
        SyncResult {
            error: code,
            ..SyncResult::default()
        }
    }
}

/// The group's metadata must be appended to `__consumer_offsets`; afterwards the coordinator
/// calls [`ClassicGroup::stored`] with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    pub generation: i32,
    /// The leader's assignment: the group turns Stable (and SyncGroup answers) once stored.
    pub completes_sync: bool,
    /// A static member replaced without a rebalance: its JoinGroup is answered once stored,
    /// and the replacement undone if the write fails (as Kafka does).
    pub replacement: Option<u64>,
}

/// A static member's replacement waiting for its metadata record.
#[derive(Debug)]
struct PendingReplacement {
    old_id: String,
    new_id: String,
    tx: oneshot::Sender<JoinResult>,
    result: JoinResult,
}

#[derive(Debug)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    heartbeat_deadline: i64,
    /// Added during the current rebalance, not yet in any generation.
    is_new: bool,
    joined_at: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    pub fn is_awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }
}

/// A committed offset and where its record sits in `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub value: OffsetCommitValue,
    pub record_offset: u64,
}

#[derive(Debug)]
pub struct ClassicGroup {
    pub group_id: String,
    pub state: GroupState,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id -> member id.
    pub static_members: HashMap<String, String>,
    /// Members told `MEMBER_ID_REQUIRED`, with the time they must join by.
    pub pending_members: HashMap<String, i64>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Offsets committed inside transactions not yet decided, by producer id
    /// (TxnOffsetCommit): visible once the commit marker is written, dropped on abort.
    pub pending_txn_offsets: HashMap<i64, BTreeMap<(String, i32), CommittedOffset>>,
    pub current_state_timestamp: i64,
    /// Set when the group uses the KIP-848 consumer protocol: its members are there, and
    /// the classic part holds only the committed offsets. A group is of one type at a time;
    /// an empty group changes type when a member of the other protocol joins, as in Kafka.
    pub consumer: Option<super::consumer::ConsumerGroup>,
    settings: GroupSettings,
    join_deadline: i64,
    /// The initial rebalance delay in force: (time still allowed, members joined meanwhile).
    initial_delay: Option<(i64, bool)>,
    pending_sync: HashSet<String>,
    sync_deadline: i64,
    join_counter: i64,
    replacements: HashMap<u64, PendingReplacement>,
    next_replacement: u64,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl ClassicGroup {
    pub fn new(group_id: String, settings: GroupSettings, now: i64) -> ClassicGroup {
        ClassicGroup {
            group_id,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            offsets: BTreeMap::new(),
            pending_txn_offsets: HashMap::new(),
            current_state_timestamp: now,
            settings,
            join_deadline: 0,
            initial_delay: None,
            pending_sync: HashSet::new(),
            sync_deadline: 0,
            join_counter: 0,
            consumer: None,
            replacements: HashMap::new(),
            next_replacement: 0,
        }
    }

    /// A group as its last metadata record left it (coordinator load). Members come back
    /// Stable with fresh session timers, as in Kafka.
    pub fn from_record(
        group_id: String,
        value: &GroupMetadataValue,
        settings: GroupSettings,
        now: i64,
    ) -> ClassicGroup {
        let mut g = ClassicGroup::new(group_id, settings, now);
        g.generation_id = value.generation;
        g.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
        g.protocol_name = value.protocol.clone();
        g.leader_id = value.leader.clone();
        g.current_state_timestamp = if value.current_state_timestamp >= 0 {
            value.current_state_timestamp
        } else {
            now
        };
        for (i, m) in value.members.iter().enumerate() {
            let protocols = match &value.protocol {
                Some(p) => vec![(p.clone(), m.subscription.clone())],
                None => Vec::new(),
            };
            if let Some(instance) = &m.group_instance_id {
                g.static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            g.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout,
                    rebalance_timeout_ms: m.rebalance_timeout,
                    protocol_type: value.protocol_type.clone(),
                    protocols,
                    assignment: m.assignment.clone(),
                    join_waiter: None,
                    sync_waiter: None,
                    heartbeat_deadline: now + i64::from(m.session_timeout),
                    is_new: false,
                    joined_at: i as i64,
                },
            );
        }
        g.join_counter = value.members.len() as i64;
        g.state = if g.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        if g.leader_id
            .as_ref()
            .is_some_and(|l| !g.members.contains_key(l))
        {
            g.leader_id = g.members.keys().next().cloned();
        }
        g
    }

    /// The group's metadata record as of now.
    pub fn to_record(&self) -> GroupMetadataValue {
        let protocol = self.protocol_name.clone();
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation_id,
            protocol: protocol.clone(),
            leader: self.leader_id.clone(),
            current_state_timestamp: self.current_state_timestamp,
            members: self
                .members
                .values()
                .map(|m| MemberMetadata {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout: m.rebalance_timeout_ms,
                    session_timeout: m.session_timeout_ms,
                    subscription: protocol
                        .as_deref()
                        .map(|p| m.metadata_for(p))
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// A transaction of `producer_id` was decided by the marker at `marker_offset`: the
    /// offsets it committed before the marker become the committed ones (unless a later
    /// commit already replaced them), or are dropped.
    pub fn complete_transaction(&mut self, producer_id: i64, commit: bool, marker_offset: u64) {
        let Some(pending) = self.pending_txn_offsets.remove(&producer_id) else {
            return;
        };
        let (decided, later): (BTreeMap<_, _>, BTreeMap<_, _>) = pending
            .into_iter()
            .partition(|(_, o)| o.record_offset < marker_offset);
        if !later.is_empty() {
            self.pending_txn_offsets.insert(producer_id, later);
        }
        if !commit {
            return;
        }
        for (key, offset) in decided {
            let newer = self
                .offsets
                .get(&key)
                .is_none_or(|c| c.record_offset < offset.record_offset);
            if newer {
                self.offsets.insert(key, offset);
            }
        }
    }

    /// Whether some undecided transaction holds an offset of this partition (OffsetFetch
    /// with `require_stable` answers UNSTABLE_OFFSET_COMMIT then).
    pub fn has_pending_txn_offset(&self, key: &(String, i32)) -> bool {
        self.pending_txn_offsets
            .values()
            .any(|o| o.contains_key(key))
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.pending_members.is_empty()
            && self.consumer.as_ref().is_none_or(|c| c.is_empty())
    }

    fn set_state(&mut self, state: GroupState, now: i64) {
        self.state = state;
        self.current_state_timestamp = now;
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Each member votes for the first candidate it lists; most votes wins, ties go to the
    /// leader's preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let order: Vec<&str> = self
            .leader_id
            .as_ref()
            .and_then(|l| self.members.get(l))
            .map(|m| {
                m.protocols
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| candidates.iter().any(|c| c == n))
                    .collect()
            })
            .unwrap_or_else(|| candidates.iter().map(String::as_str).collect());
        let best = votes.values().copied().max()?;
        order
            .into_iter()
            .find(|n| votes.get(n) == Some(&best))
            .map(str::to_string)
    }

    /// UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID, as Kafka's `validateMember`.
    fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => {
                    return Err(code(ResponseError::FencedInstanceId))
                }
                Some(_) => {}
                None => return Err(code(ResponseError::UnknownMemberId)),
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(code(ResponseError::UnknownMemberId));
        }
        Ok(())
    }

    fn refresh(&mut self, member_id: &str, now: i64) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
        }
    }

    fn current_join_result(&self, member_id: &str, with_members: bool) -> JoinResult {
        JoinResult {
            error: 0,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.clone().unwrap_or_default(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members: if with_members {
                self.joined_members()
            } else {
                Vec::new()
            },
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined_at);
        members
            .into_iter()
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    // ---- JoinGroup ----

    /// Handles a JoinGroup. The answer arrives on the receiver, at once or when the join phase
    /// ends.
    pub fn join(
        &mut self,
        req: JoinRequest,
        now: i64,
    ) -> (oneshot::Receiver<JoinResult>, Vec<Store>) {
        let (tx, rx) = oneshot::channel();
        let mut stores = Vec::new();
        let answer = |tx: oneshot::Sender<JoinResult>, r: JoinResult| {
            let _ = tx.send(r);
        };
        let s = &self.settings;
        if req.session_timeout_ms < s.min_session_timeout_ms
            || req.session_timeout_ms > s.max_session_timeout_ms
        {
            answer(
                tx,
                JoinResult::error(code(ResponseError::InvalidSessionTimeout), req.member_id),
            );
            return (rx, stores);
        }
        if self.state == GroupState::Dead {
            answer(
                tx,
                JoinResult::error(code(ResponseError::CoordinatorNotAvailable), req.member_id),
            );
            return (rx, stores);
        }
        if self.consumer.as_ref().is_some_and(|c| !c.is_empty()) {
            // A consumer-protocol group with members: classic members cannot join it.
            answer(
                tx,
                JoinResult::error(
                    code(ResponseError::InconsistentGroupProtocol),
                    req.member_id,
                ),
            );
            return (rx, stores);
        }
        self.consumer = None;
        let unknown = req.member_id.is_empty();
        if !unknown {
            if let Some(instance) = &req.group_instance_id {
                if self
                    .static_members
                    .get(instance)
                    .is_some_and(|m| *m != req.member_id)
                {
                    answer(
                        tx,
                        JoinResult::error(code(ResponseError::FencedInstanceId), req.member_id),
                    );
                    return (rx, stores);
                }
            }
            if !self.members.contains_key(&req.member_id)
                && !self.pending_members.contains_key(&req.member_id)
            {
                answer(
                    tx,
                    JoinResult::error(code(ResponseError::UnknownMemberId), req.member_id),
                );
                return (rx, stores);
            }
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            answer(
                tx,
                JoinResult::error(
                    code(ResponseError::InconsistentGroupProtocol),
                    req.member_id,
                ),
            );
            return (rx, stores);
        }
        let is_new_member = unknown
            && !req
                .group_instance_id
                .as_ref()
                .is_some_and(|i| self.static_members.contains_key(i));
        if (is_new_member || self.pending_members.contains_key(&req.member_id))
            && self.members.len() >= self.settings.max_size
        {
            answer(
                tx,
                JoinResult::error(code(ResponseError::GroupMaxSizeReached), req.member_id),
            );
            return (rx, stores);
        }
        if unknown {
            let prefix = req
                .group_instance_id
                .clone()
                .unwrap_or_else(|| req.client_id.clone());
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old_id) = self.static_members.get(&instance).cloned() {
                    self.replace_static_member(&old_id, new_id, req, tx, now, &mut stores);
                } else {
                    self.add_member(new_id, req, tx, now);
                }
            } else if req.require_known_member_id {
                self.pending_members
                    .insert(new_id.clone(), now + i64::from(req.session_timeout_ms));
                answer(
                    tx,
                    JoinResult::error(code(ResponseError::MemberIdRequired), new_id),
                );
                return (rx, stores);
            } else {
                self.add_member(new_id, req, tx, now);
            }
        } else if self.pending_members.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            self.add_member(id, req, tx, now);
        } else {
            let member_id = req.member_id.clone();
            match self.state {
                GroupState::PreparingRebalance => {
                    self.update_member(req, tx);
                }
                GroupState::CompletingRebalance => {
                    let same = self
                        .members
                        .get(&member_id)
                        .is_some_and(|m| m.same_protocols(&req.protocols));
                    if same {
                        // A retry of a join whose answer was lost: this generation again.
                        let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
                        answer(tx, self.current_join_result(&member_id, is_leader));
                        return (rx, stores);
                    }
                    self.update_member(req, tx);
                }
                GroupState::Stable => {
                    let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
                    let same = self
                        .members
                        .get(&member_id)
                        .is_some_and(|m| m.same_protocols(&req.protocols));
                    if !is_leader && same {
                        self.refresh(&member_id, now);
                        answer(tx, self.current_join_result(&member_id, false));
                        return (rx, stores);
                    }
                    self.update_member(req, tx);
                }
                GroupState::Empty | GroupState::Dead => {
                    answer(
                        tx,
                        JoinResult::error(code(ResponseError::UnknownMemberId), member_id),
                    );
                    return (rx, stores);
                }
            }
        }
        if self.state == GroupState::PreparingRebalance {
            stores.extend(self.try_complete_join(now));
        } else if self.members.values().any(|m| m.join_waiter.is_some()) {
            self.prepare_rebalance(now);
            stores.extend(self.try_complete_join(now));
        }
        (rx, stores)
    }

    fn add_member(
        &mut self,
        member_id: String,
        req: JoinRequest,
        tx: oneshot::Sender<JoinResult>,
        now: i64,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id.clone());
        }
        self.join_counter += 1;
        self.members.insert(
            member_id.clone(),
            Member {
                member_id,
                group_instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocol_type: req.protocol_type,
                protocols: req.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                heartbeat_deadline: now + NEW_MEMBER_JOIN_TIMEOUT_MS,
                is_new: true,
                joined_at: self.join_counter,
            },
        );
        if let Some((_, joined)) = &mut self.initial_delay {
            *joined = true;
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
    }

    fn update_member(&mut self, req: JoinRequest, tx: oneshot::Sender<JoinResult>) {
        if let Some(m) = self.members.get_mut(&req.member_id) {
            m.protocols = req.protocols;
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.client_id = req.client_id;
            m.client_host = req.client_host;
            if let Some(old) = m.join_waiter.replace(tx) {
                let _ = old.send(JoinResult::error(
                    code(ResponseError::UnknownMemberId),
                    m.member_id.clone(),
                ));
            }
        }
    }

    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        req: JoinRequest,
        tx: oneshot::Sender<JoinResult>,
        now: i64,
        stores: &mut Vec<Store>,
    ) {
        let Some(mut member) = self.members.remove(old_id) else {
            self.add_member(new_id, req, tx, now);
            return;
        };
        // The old instance is fenced: whatever it waits for ends with FENCED_INSTANCE_ID.
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResult::error(
                code(ResponseError::FencedInstanceId),
                old_id.to_string(),
            ));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResult::error(code(ResponseError::FencedInstanceId)));
        }
        let old_leader = self.leader_id.clone();
        let was_leader = old_leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader_id = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        let same_protocols = member.same_protocols(&req.protocols);
        member.member_id = new_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        // A member still waiting for its first generation keeps the new-member allowance.
        member.heartbeat_deadline = if member.is_new {
            now + NEW_MEMBER_JOIN_TIMEOUT_MS
        } else {
            now + i64::from(req.session_timeout_ms)
        };
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        match self.state {
            GroupState::Stable if same_protocols => {
                self.members.insert(new_id.clone(), member);
                // Same subscription: no rebalance (KIP-345). The new id is persisted.
                stores.push(Store {
                    generation: self.generation_id,
                    completes_sync: false,
                    replacement: Some(self.next_replacement),
                });
                let mut result = self.current_join_result(&new_id, false);
                if was_leader && req.supports_skip_assignment {
                    result.members = self.joined_members();
                    result.skip_assignment = true;
                } else if was_leader {
                    // Older clients would reassign if told they lead: name the old id, so
                    // the rejoined leader acts as a follower and keeps its assignment.
                    result.leader = old_leader.unwrap_or_default();
                }
                self.replacements.insert(
                    self.next_replacement,
                    PendingReplacement {
                        old_id: old_id.to_string(),
                        new_id,
                        tx,
                        result,
                    },
                );
                self.next_replacement += 1;
            }
            _ => {
                member.protocols = req.protocols;
                member.join_waiter = Some(tx);
                self.members.insert(new_id, member);
                if self.state != GroupState::PreparingRebalance {
                    self.prepare_rebalance(now);
                }
            }
        }
    }

    fn prepare_rebalance(&mut self, now: i64) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(code(ResponseError::RebalanceInProgress)));
                }
            }
        }
        self.pending_sync.clear();
        let delay = i64::from(self.settings.initial_rebalance_delay_ms);
        if self.state == GroupState::Empty && delay > 0 {
            self.join_deadline = now + delay;
            self.initial_delay = Some(((self.rebalance_timeout_ms() - delay).max(0), false));
        } else {
            self.join_deadline = now + self.rebalance_timeout_ms();
            self.initial_delay = None;
        }
        self.set_state(GroupState::PreparingRebalance, now);
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    fn try_complete_join(&mut self, now: i64) -> Vec<Store> {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay.is_none()
            && self.all_joined()
        {
            return self.complete_join(now);
        }
        Vec::new()
    }

    /// The join phase ends: members that did not rejoin are dropped, a new generation starts.
    fn complete_join(&mut self, now: i64) -> Vec<Store> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.drop_member(&id);
        }
        self.initial_delay = None;
        self.generation_id += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader_id = None;
            self.set_state(GroupState::Empty, now);
            return vec![Store {
                generation: self.generation_id,
                completes_sync: false,
                replacement: None,
            }];
        }
        if self
            .leader_id
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader_id = self
                .members
                .values()
                .min_by_key(|m| m.joined_at)
                .map(|m| m.member_id.clone());
        }
        self.protocol_name = self.select_protocol();
        self.set_state(GroupState::CompletingRebalance, now);
        let leader = self.leader_id.clone().unwrap_or_default();
        let all = self.joined_members();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = {
                let mut r = self.current_join_result(&id, false);
                if id == leader {
                    r.members = all.clone();
                }
                r
            };
            if let Some(m) = self.members.get_mut(&id) {
                m.is_new = false;
                m.heartbeat_deadline = now + i64::from(m.session_timeout_ms);
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(result);
                }
            }
            self.pending_sync.insert(id);
        }
        self.sync_deadline = now + self.rebalance_timeout_ms();
        Vec::new()
    }

    /// Removes a member without touching the group's state.
    fn drop_member(&mut self, member_id: &str) {
        let Some(mut m) = self.members.remove(member_id) else {
            return;
        };
        if let Some(instance) = &m.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(JoinResult::error(
                code(ResponseError::UnknownMemberId),
                member_id.to_string(),
            ));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(SyncResult::error(code(ResponseError::UnknownMemberId)));
        }
        self.pending_sync.remove(member_id);
        if self.leader_id.as_deref() == Some(member_id) {
            self.leader_id = self
                .members
                .values()
                .min_by_key(|m| m.joined_at)
                .map(|m| m.member_id.clone());
        }
    }

    /// A member leaves or expires: the group rebalances without it.
    fn remove_member(&mut self, member_id: &str, now: i64) -> Vec<Store> {
        self.drop_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.try_complete_join(now)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => Vec::new(),
        }
    }

    // ---- SyncGroup ----

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> (oneshot::Receiver<SyncResult>, Vec<Store>) {
        let (tx, rx) = oneshot::channel();
        let fail = |tx: oneshot::Sender<SyncResult>, e: ResponseError| {
            let _ = tx.send(SyncResult::error(e.code()));
        };
        if self.state == GroupState::Dead {
            fail(tx, ResponseError::CoordinatorNotAvailable);
            return (rx, Vec::new());
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            let _ = tx.send(SyncResult::error(e));
            return (rx, Vec::new());
        }
        if generation_id != self.generation_id {
            fail(tx, ResponseError::IllegalGeneration);
            return (rx, Vec::new());
        }
        let (ptype, pname) = protocol;
        if ptype.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || pname.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            fail(tx, ResponseError::InconsistentGroupProtocol);
            return (rx, Vec::new());
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                fail(tx, ResponseError::UnknownMemberId);
                (rx, Vec::new())
            }
            GroupState::PreparingRebalance => {
                fail(tx, ResponseError::RebalanceInProgress);
                (rx, Vec::new())
            }
            GroupState::CompletingRebalance => {
                self.pending_sync.remove(member_id);
                self.refresh(member_id, now);
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                }
                if self.leader_id.as_deref() != Some(member_id) {
                    return (rx, Vec::new());
                }
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.member_id).unwrap_or_default();
                }
                (
                    rx,
                    vec![Store {
                        generation: self.generation_id,
                        completes_sync: true,
                        replacement: None,
                    }],
                )
            }
            GroupState::Stable => {
                self.pending_sync.remove(member_id);
                self.refresh(member_id, now);
                let assignment = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                let _ = tx.send(SyncResult {
                    error: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment,
                });
                (rx, Vec::new())
            }
        }
    }

    /// The outcome of appending the metadata record asked for by a [`Store`].
    pub fn stored(&mut self, store: Store, error: i16, now: i64) -> Vec<Store> {
        if let Some(token) = store.replacement {
            if let Some(r) = self.replacements.remove(&token) {
                if error == 0 {
                    let _ = r.tx.send(r.result);
                } else {
                    self.undo_replacement(&r.old_id, &r.new_id);
                    let _ = r.tx.send(JoinResult::error(error, r.new_id));
                }
            }
            return Vec::new();
        }
        if !store.completes_sync
            || store.generation != self.generation_id
            || self.state != GroupState::CompletingRebalance
        {
            return Vec::new();
        }
        if error != 0 {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(error));
                }
            }
            self.prepare_rebalance(now);
            return self.try_complete_join(now);
        }
        self.set_state(GroupState::Stable, now);
        let (ptype, pname) = (self.protocol_type.clone(), self.protocol_name.clone());
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult {
                    error: 0,
                    protocol_type: ptype.clone(),
                    protocol_name: pname.clone(),
                    assignment: m.assignment.clone(),
                });
            }
        }
        Vec::new()
    }

    /// Gives a static member its old id back after its replacement failed to be stored.
    fn undo_replacement(&mut self, old_id: &str, new_id: &str) {
        let Some(mut member) = self.members.remove(new_id) else {
            return;
        };
        member.member_id = old_id.to_string();
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), old_id.to_string());
        }
        if self.leader_id.as_deref() == Some(new_id) {
            self.leader_id = Some(old_id.to_string());
        }
        if self.pending_sync.remove(new_id) {
            self.pending_sync.insert(old_id.to_string());
        }
        self.members.insert(old_id.to_string(), member);
    }

    // ---- Heartbeat, LeaveGroup ----

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: i64,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            return e;
        }
        if generation_id != self.generation_id {
            return code(ResponseError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => code(ResponseError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.refresh(member_id, now);
                0
            }
            GroupState::PreparingRebalance => {
                self.refresh(member_id, now);
                code(ResponseError::RebalanceInProgress)
            }
        }
    }

    /// LeaveGroup for one member (v3+ batches call this per member). An empty member id with
    /// an instance id names the static member by its instance (as the admin client does).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
    ) -> (i16, Vec<Store>) {
        if self.state == GroupState::Dead {
            return (code(ResponseError::CoordinatorNotAvailable), Vec::new());
        }
        let target = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return (code(ResponseError::UnknownMemberId), Vec::new()),
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return (code(ResponseError::FencedInstanceId), Vec::new())
                }
                Some(current) => current.clone(),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&target).is_some() {
            return (0, self.try_complete_join(now));
        }
        if !self.members.contains_key(&target) {
            return (code(ResponseError::UnknownMemberId), Vec::new());
        }
        (0, self.remove_member(&target, now))
    }

    // ---- OffsetCommit checks ----

    /// Kafka's `validateOffsetCommit` for a classic group.
    pub fn validate_offset_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: i64,
    ) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        if let Some(c) = &self.consumer {
            return c.validate_offset_commit(member_id, generation_id);
        }
        if generation_id < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if generation_id >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_member(member_id, instance_id)?;
            if generation_id != self.generation_id {
                return Err(code(ResponseError::IllegalGeneration));
            }
        } else if self.state != GroupState::Empty {
            return Err(code(ResponseError::UnknownMemberId));
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(code(ResponseError::RebalanceInProgress));
        }
        self.refresh(member_id, now);
        Ok(())
    }

    /// Kafka's checks of a TxnOffsetCommit: producers that send no group metadata (generation
    /// -1, no member) commit into any group; members (KIP-447) must be current.
    pub fn validate_txn_offset_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: i64,
    ) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        if generation_id < 0 && member_id.is_empty() && instance_id.is_none() {
            return Ok(());
        }
        if let Some(c) = &self.consumer {
            // Transactional commits with a stale member epoch are ILLEGAL_GENERATION.
            return c
                .validate_offset_commit(member_id, generation_id)
                .map_err(|e| {
                    if e == code(ResponseError::StaleMemberEpoch) {
                        code(ResponseError::IllegalGeneration)
                    } else {
                        e
                    }
                });
        }
        self.validate_member(member_id, instance_id)?;
        if generation_id != self.generation_id {
            return Err(code(ResponseError::IllegalGeneration));
        }
        self.refresh(member_id, now);
        Ok(())
    }

    // ---- time ----

    /// Expires sessions, pending members and phase deadlines. Returns the writes to make.
    pub fn tick(&mut self, now: i64) -> Vec<Store> {
        let mut stores = Vec::new();
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, deadline)| now >= **deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending_members.remove(&id);
            stores.extend(self.try_complete_join(now));
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now >= m.heartbeat_deadline)
            .filter(|m| {
                // Members waiting in a join or sync are kept alive (Kafka's shouldKeepAlive),
                // new ones only up to the new-member join timeout.
                let waiting_join = m.join_waiter.is_some() && !m.is_new;
                let waiting_sync = m.sync_waiter.is_some();
                let new_too_long = m.is_new && now >= m.heartbeat_deadline;
                (!waiting_join && !waiting_sync) || new_too_long
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = self.group_id, member = id, "member session expired");
            stores.extend(self.remove_member(&id, now));
        }
        if self.state == GroupState::PreparingRebalance && now >= self.join_deadline {
            match self.initial_delay {
                Some((remaining, true)) if remaining > 0 => {
                    let delay = i64::from(self.settings.initial_rebalance_delay_ms);
                    let step = delay.min(remaining);
                    self.join_deadline = now + step;
                    self.initial_delay = Some((remaining - step, false));
                }
                _ => stores.extend(self.complete_join(now)),
            }
        }
        if !self.pending_sync.is_empty()
            && now >= self.sync_deadline
            && matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            )
        {
            let late: Vec<String> = self.pending_sync.drain().collect();
            for id in late {
                tracing::info!(
                    group = self.group_id,
                    member = id,
                    "member did not sync in time"
                );
                stores.extend(self.remove_member(&id, now));
            }
        }
        stores
    }

    /// Ends the group (deletion, offsets expired, coordinator unloaded): every waiter gets
    /// `error`.
    pub fn close(&mut self, error: i16) {
        for (_, r) in self.replacements.drain() {
            let _ = r.tx.send(JoinResult::error(error, r.new_id));
        }
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(error, m.member_id.clone()));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(error));
            }
        }
        self.state = GroupState::Dead;
    }

    /// The topics the members of a live `consumer` protocol group subscribe to.
    pub fn subscribed_topics(&self) -> std::collections::HashSet<String> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .flat_map(|m| {
                m.protocols
                    .iter()
                    .filter(|(n, _)| *n == protocol)
                    .flat_map(|(_, meta)| super::subscribed_topics(meta))
            })
            .collect()
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }
}
