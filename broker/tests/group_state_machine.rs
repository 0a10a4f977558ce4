//! The classic consumer-group state machine (`runnel_broker::group::classic`) under a seeded
//! randomized simulation of real consumers, plus a few focused deterministic scenarios.
//!
//! The simulation drives one `ClassicGroup` with 1..=6 simulated consumers (some static) through
//! joins, syncs, heartbeats, offset-commit checks, leaves, crashes, restarts, stale "zombie"
//! incarnations, lost join responses, subscription changes, time jumps, timer ticks and
//! metadata writes answered late, out of order or (rarely) with NOT_COORDINATOR. Invariants are
//! checked after every call into the group; at the end faults stop and the group must converge.
//!
//! Every failure message names the seed. Replay one with
//! `RUNNEL_SEED=<seed> cargo test -p runnel-broker --test group_state_machine` (that seed runs
//! first); `RUNNEL_SIM_RUNS=<n>` changes how many consecutive seeds run (default 300).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel_broker::group::classic::{
    ClassicGroup, GroupSettings, GroupState, JoinRequest, JoinResult, Store, SyncResult,
};
use runnel_protocol::kafka_protocol::ResponseError;
use tokio::sync::oneshot::{self, error::TryRecvError};

const NONE: i16 = 0;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

const PARTITIONS: u32 = 12;
const SESSION_TIMEOUT_MS: i32 = 10_000;
const REBALANCE_TIMEOUT_MS: i32 = 20_000;
const PROTOCOL_TYPE: &str = "consumer";

const DEFAULT_RUNS: u64 = 300;
const STEPS: usize = 300;
/// Convergence rounds after the faults stop (each advances time by 500 ms).
const SETTLE_ROUNDS: usize = 400;

fn settings(initial_rebalance_delay_ms: i32) -> GroupSettings {
    GroupSettings {
        min_session_timeout_ms: 6000,
        max_session_timeout_ms: 1_800_000,
        initial_rebalance_delay_ms,
        max_size: usize::MAX,
    }
}

fn join_request(
    member_id: &str,
    instance: Option<&str>,
    protocols: Vec<(String, Bytes)>,
    supports_skip_assignment: bool,
) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_string(),
        group_instance_id: instance.map(str::to_string),
        client_id: "sim".to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: SESSION_TIMEOUT_MS,
        rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
        protocol_type: PROTOCOL_TYPE.to_string(),
        protocols,
        require_known_member_id: true,
        supports_skip_assignment,
    }
}

fn range_protocols(subscription: &str) -> Vec<(String, Bytes)> {
    vec![("range".to_string(), Bytes::from(subscription.to_string()))]
}

/// An assignment on the wire: big-endian u32 partition ids.
fn encode(parts: &[u32]) -> Bytes {
    parts
        .iter()
        .flat_map(|p| p.to_be_bytes())
        .collect::<Vec<u8>>()
        .into()
}

fn decode(bytes: &Bytes) -> Result<Vec<u32>, String> {
    if bytes.len() % 4 != 0 {
        return Err(format!("assignment of {} bytes is not u32s", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The range assignor: member `i` of `n` gets a contiguous slice of the partitions.
fn range_assign(n: usize) -> Vec<Vec<u32>> {
    let n = n as u32;
    (0..n)
        .map(|i| (i * PARTITIONS / n..(i + 1) * PARTITIONS / n).collect())
        .collect()
}

/// Who owns partitions across incarnations: a static member is its instance (a restarted
/// static consumer legitimately keeps its assignment under a new member id); a dynamic member
/// is its member id.
type Owner = String;

fn owner_of(member_id: &str, instance: Option<&str>) -> Owner {
    match instance {
        Some(i) => format!("static:{i}"),
        None => format!("dynamic:{member_id}"),
    }
}

/// Invariant 1: `parts`, just delivered to `owner`, are valid partitions and overlap nothing
/// another owner was delivered in the same generation.
fn check_disjoint(
    generation_owned: &BTreeMap<Owner, BTreeSet<u32>>,
    owner: &str,
    parts: &[u32],
) -> Result<(), String> {
    let distinct: BTreeSet<u32> = parts.iter().copied().collect();
    if distinct.len() != parts.len() {
        return Err(format!("{owner} was given duplicate partitions {parts:?}"));
    }
    if let Some(p) = parts.iter().find(|p| **p >= PARTITIONS) {
        return Err(format!(
            "{owner} was given partition {p}, beyond {PARTITIONS}"
        ));
    }
    for (other, theirs) in generation_owned {
        if other == owner {
            continue;
        }
        let both: Vec<u32> = distinct.intersection(theirs).copied().collect();
        if !both.is_empty() {
            return Err(format!(
                "partitions {both:?} owned by both {owner} and {other} in one generation"
            ));
        }
    }
    Ok(())
}

/// The leader's assignment for one generation, as the leader computed it.
#[derive(Debug, Clone)]
struct Plan {
    assignments: Vec<(String, Bytes)>,
    by_owner: BTreeMap<Owner, Vec<u32>>,
}

#[derive(Debug)]
enum Phase {
    /// Crashed, closed after LeaveGroup, or fenced: sends nothing until restarted.
    Stopped,
    /// Must send JoinGroup (with its member id, possibly empty).
    Unjoined,
    Joining(oneshot::Receiver<JoinResult>),
    /// Has a generation and must send SyncGroup (with `plan` if it leads).
    Joined {
        generation: i32,
        protocol: Option<String>,
        plan: Option<Plan>,
    },
    Syncing {
        generation: i32,
        rx: oneshot::Receiver<SyncResult>,
    },
    Stable {
        generation: i32,
    },
}

impl Phase {
    fn generation(&self) -> Option<i32> {
        match self {
            Phase::Joined { generation, .. }
            | Phase::Syncing { generation, .. }
            | Phase::Stable { generation } => Some(*generation),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Unjoined => "unjoined",
            Phase::Joining(_) => "joining",
            Phase::Joined { .. } => "joined",
            Phase::Syncing { .. } => "syncing",
            Phase::Stable { .. } => "stable",
        }
    }
}

/// A request whose client stopped waiting (crashed, left, rejoined or reset): its answer
/// still matters, since the group must answer every request and tell every member of a
/// generation about it.
#[derive(Debug)]
enum Orphan {
    Join {
        name: String,
        instance: Option<String>,
        rx: oneshot::Receiver<JoinResult>,
    },
    Sync {
        name: String,
        rx: oneshot::Receiver<SyncResult>,
    },
}

/// An earlier incarnation of a client that crashed but may still send with its old id.
#[derive(Debug, Clone)]
struct Zombie {
    member_id: String,
    generation: i32,
}

#[derive(Debug)]
struct Client {
    name: String,
    instance: Option<String>,
    member_id: String,
    protocols: Vec<(String, Bytes)>,
    subscription_version: u32,
    supports_skip: bool,
    phase: Phase,
    /// Highest generation this client was given by a successful JoinGroup.
    last_generation: i32,
    /// The one before it: what a request delayed in the network still carries.
    prev_generation: i32,
    /// Partitions from its last successful SyncGroup.
    owned: Vec<u32>,
    zombie: Option<Zombie>,
}

impl Client {
    fn owner(&self) -> Owner {
        owner_of(&self.member_id, self.instance.as_deref())
    }

    fn set_protocols(&mut self, rng: &mut StdRng) {
        let meta = Bytes::from(format!("{}-v{}", self.name, self.subscription_version));
        self.protocols = if rng.random_bool(0.5) {
            vec![("range".to_string(), meta)]
        } else {
            vec![
                ("roundrobin".to_string(), meta.clone()),
                ("range".to_string(), meta),
            ]
        };
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    steps: u64,
    joins_ok: u64,
    member_id_required: u64,
    syncs_ok: u64,
    syncs_with_partitions: u64,
    heartbeats_ok: u64,
    rebalance_in_progress: u64,
    illegal_generation: u64,
    unknown_member: u64,
    zombie_fenced: u64,
    static_rejoin_without_rebalance: u64,
    skip_assignment: u64,
    store_errors: u64,
    expired_by_tick: u64,
    leaves: u64,
    crashes: u64,
    stable_steps: u64,
    max_generation: i64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.joins_ok += o.joins_ok;
        self.member_id_required += o.member_id_required;
        self.syncs_ok += o.syncs_ok;
        self.syncs_with_partitions += o.syncs_with_partitions;
        self.heartbeats_ok += o.heartbeats_ok;
        self.rebalance_in_progress += o.rebalance_in_progress;
        self.illegal_generation += o.illegal_generation;
        self.unknown_member += o.unknown_member;
        self.zombie_fenced += o.zombie_fenced;
        self.static_rejoin_without_rebalance += o.static_rejoin_without_rebalance;
        self.skip_assignment += o.skip_assignment;
        self.store_errors += o.store_errors;
        self.expired_by_tick += o.expired_by_tick;
        self.leaves += o.leaves;
        self.crashes += o.crashes;
        self.stable_steps += o.stable_steps;
        self.max_generation = self.max_generation.max(o.max_generation);
    }
}

macro_rules! ensure {
    ($sim:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $sim.fail(format!($($fmt)+))
        }
    };
}

struct Sim {
    seed: u64,
    step: usize,
    rng: StdRng,
    now: i64,
    group: ClassicGroup,
    clients: Vec<Client>,
    /// Metadata writes asked for and not yet answered.
    stores: Vec<Store>,
    /// Whether faults (store errors) may be injected.
    chaos: bool,
    max_generation: i32,
    /// generation -> owner -> partitions delivered by successful SyncGroups.
    owned: BTreeMap<i32, BTreeMap<Owner, BTreeSet<u32>>>,
    /// generation -> (leader, assignment) the group accepted from the leader.
    plans: BTreeMap<i32, (Owner, BTreeMap<Owner, Vec<u32>>)>,
    /// generation -> the member list the leader was given.
    rosters: BTreeMap<i32, Vec<Owner>>,
    /// generation -> owners sent a successful JoinGroup answer for it (waiting or not).
    answered: BTreeMap<i32, BTreeSet<Owner>>,
    orphans: Vec<Orphan>,
    trace: VecDeque<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(1..=6usize);
        let delay = if rng.random_bool(0.5) { 0 } else { 3000 };
        let now = 1_000_000;
        let mut clients = Vec::new();
        for i in 0..n {
            let name = format!("c{i}");
            let instance = rng.random_bool(0.4).then(|| format!("instance-{i}"));
            let mut c = Client {
                name,
                instance,
                member_id: String::new(),
                protocols: Vec::new(),
                subscription_version: 0,
                supports_skip: rng.random_bool(0.5),
                phase: Phase::Unjoined,
                last_generation: 0,
                prev_generation: 0,
                owned: Vec::new(),
                zombie: None,
            };
            c.set_protocols(&mut rng);
            clients.push(c);
        }
        let mut sim = Sim {
            seed,
            step: 0,
            rng,
            now,
            group: ClassicGroup::new("sim-group".to_string(), settings(delay), now),
            clients,
            stores: Vec::new(),
            chaos: true,
            max_generation: 0,
            owned: BTreeMap::new(),
            plans: BTreeMap::new(),
            rosters: BTreeMap::new(),
            answered: BTreeMap::new(),
            orphans: Vec::new(),
            trace: VecDeque::new(),
            stats: Stats::default(),
        };
        let kinds: Vec<String> = sim
            .clients
            .iter()
            .map(|c| format!("{}={:?}", c.name, c.instance))
            .collect();
        sim.log(format!(
            "start: initial_rebalance_delay_ms={delay} clients {kinds:?}"
        ));
        sim
    }

    fn fail(&self, msg: String) -> ! {
        let mut trace = String::new();
        for line in &self.trace {
            let _ = writeln!(trace, "    {line}");
        }
        let members: Vec<String> = self
            .group
            .members
            .values()
            .map(|m| {
                format!(
                    "{}({:?}, {:?})",
                    m.member_id,
                    m.group_instance_id,
                    decode(&m.assignment)
                )
            })
            .collect();
        panic!(
            "group state machine: {msg}\n  seed={seed} step={step} now={now}\n  replay: \
             RUNNEL_SEED={seed} cargo test -p runnel-broker --test group_state_machine\n  \
             group: state={state:?} generation={generation} leader={leader:?}\n  members: \
             {members:?}\n  pending: {pending:?}\n  last events (oldest first):\n{trace}",
            seed = self.seed,
            step = self.step,
            now = self.now,
            state = self.group.state,
            generation = self.group.generation_id,
            leader = self.group.leader_id,
            pending = self.group.pending_members.keys().collect::<Vec<_>>(),
        )
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= 60 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[step {} t={}] {line}", self.step, self.now));
    }

    /// Replaces a client's phase; a request it was waiting on becomes an orphan.
    fn set_phase(&mut self, i: usize, next: Phase) {
        let c = &mut self.clients[i];
        match std::mem::replace(&mut c.phase, next) {
            Phase::Joining(rx) => self.orphans.push(Orphan::Join {
                name: c.name.clone(),
                instance: c.instance.clone(),
                rx,
            }),
            Phase::Syncing { rx, .. } => self.orphans.push(Orphan::Sync {
                name: c.name.clone(),
                rx,
            }),
            _ => {}
        }
    }

    // ---- the event loop ----

    fn run(&mut self, steps: usize) {
        for step in 0..steps {
            self.step = step;
            self.random_event();
            self.check_invariants();
            self.stats.steps += 1;
            if self.group.state == GroupState::Stable {
                self.stats.stable_steps += 1;
            }
        }
        self.settle();
        self.stats.max_generation = i64::from(self.max_generation);
    }

    fn random_event(&mut self) {
        let i = self.rng.random_range(0..self.clients.len());
        match self.rng.random_range(0..100) {
            0..=37 => self.act(i),
            38..=39 => self.late_request(i),
            40..=51 => self.heartbeat(i),
            52..=54 => self.commit(i),
            55..=68 => self.advance_time(),
            69..=78 => self.tick(),
            79..=87 => {
                self.answer_one_store();
                self.poll();
            }
            88..=89 => self.leave(i),
            90..=91 => self.crash(i),
            92..=94 => self.restart(i),
            95..=96 => self.zombie(i),
            97..=98 => self.retry_join(i),
            _ => self.resubscribe(i),
        }
    }

    /// The client's natural next request.
    fn act(&mut self, i: usize) {
        match self.clients[i].phase {
            Phase::Unjoined => self.send_join(i),
            Phase::Joined { .. } => self.send_sync(i),
            Phase::Syncing { .. } | Phase::Stable { .. } => self.heartbeat(i),
            Phase::Stopped | Phase::Joining(_) => {}
        }
    }

    fn advance_time(&mut self) {
        let dt = if self.rng.random_bool(0.08) {
            // Past the session timeout (and sometimes the rebalance timeout).
            self.rng.random_range(10_000..=30_000)
        } else {
            self.rng.random_range(0..=2_500)
        };
        self.now += dt;
        self.log(format!("time +{dt}ms"));
    }

    // ---- calls into the group (each followed by a poll of every waiting client) ----

    fn send_join(&mut self, i: usize) {
        let c = &self.clients[i];
        let req = join_request(
            &c.member_id,
            c.instance.as_deref(),
            c.protocols.clone(),
            c.supports_skip,
        );
        let line = format!(
            "{} -> join member={:?} instance={:?} protocols={:?}",
            c.name, c.member_id, c.instance, c.protocols
        );
        self.log(line);
        let (rx, stores) = self.group.join(req, self.now);
        self.set_phase(i, Phase::Joining(rx));
        self.clients[i].owned.clear();
        self.absorb(stores);
        self.poll();
    }

    fn send_sync(&mut self, i: usize) {
        let Phase::Joined {
            generation,
            protocol,
            plan,
        } = std::mem::replace(&mut self.clients[i].phase, Phase::Unjoined)
        else {
            return;
        };
        let c = &self.clients[i];
        let (member_id, instance, name, owner) = (
            c.member_id.clone(),
            c.instance.clone(),
            c.name.clone(),
            c.owner(),
        );
        let assignments = plan
            .as_ref()
            .map(|p| p.assignments.clone())
            .unwrap_or_default();
        self.log(format!(
            "{name} -> sync member={member_id} generation={generation} leader_plan={:?}",
            plan.as_ref().map(|p| &p.by_owner)
        ));
        let (rx, stores) = self.group.sync(
            &member_id,
            instance.as_deref(),
            generation,
            (Some(PROTOCOL_TYPE), protocol.as_deref()),
            assignments,
            self.now,
        );
        if stores.iter().any(|s| s.completes_sync) {
            // The group took this as the leader's assignment for `generation`.
            ensure!(
                self,
                stores
                    .iter()
                    .all(|s| !s.completes_sync || s.generation == generation),
                "{name}: SyncGroup for generation {generation} asked to store {stores:?}"
            );
            let Some(plan) = plan else {
                self.fail(format!(
                    "{name}: the group took an assignment from {member_id}, which it never told \
                     it leads generation {generation}"
                ));
            };
            if let Some((leader, by_owner)) = self.plans.get(&generation) {
                ensure!(
                    self,
                    *leader == owner && *by_owner == plan.by_owner,
                    "two leader assignments accepted for generation {generation}: {leader} \
                     {by_owner:?}, then {owner} {:?}",
                    plan.by_owner
                );
            }
            self.plans.insert(generation, (owner, plan.by_owner));
        }
        self.clients[i].phase = Phase::Syncing { generation, rx };
        self.absorb(stores);
        self.poll();
    }

    fn heartbeat(&mut self, i: usize) {
        let c = &self.clients[i];
        let Some(generation) = c.phase.generation() else {
            return;
        };
        let (name, member_id, instance) = (c.name.clone(), c.member_id.clone(), c.instance.clone());
        let code = self
            .group
            .heartbeat(&member_id, instance.as_deref(), generation, self.now);
        self.log(format!(
            "{name} -> heartbeat member={member_id} generation={generation}: {code}"
        ));
        self.check_heartbeat(&name, &member_id, generation, code);
        if let Some(next) = self.on_member_error(i, code, "Heartbeat") {
            self.set_phase(i, next);
        }
        self.poll();
    }

    /// Invariant 4: a successful heartbeat is from a current member of the current generation.
    fn check_heartbeat(&mut self, who: &str, member_id: &str, generation: i32, code: i16) {
        ensure!(
            self,
            matches!(
                code,
                NONE | ILLEGAL_GENERATION
                    | UNKNOWN_MEMBER_ID
                    | REBALANCE_IN_PROGRESS
                    | FENCED_INSTANCE_ID
            ),
            "{who}: unexpected heartbeat error {code}"
        );
        if code == NONE {
            self.stats.heartbeats_ok += 1;
            ensure!(
                self,
                self.group.members.contains_key(member_id),
                "{who}: heartbeat of {member_id} succeeded but it is not a member"
            );
            ensure!(
                self,
                generation == self.group.generation_id,
                "{who}: heartbeat for generation {generation} succeeded in generation {}",
                self.group.generation_id
            );
            ensure!(
                self,
                matches!(
                    self.group.state,
                    GroupState::CompletingRebalance | GroupState::Stable
                ),
                "{who}: heartbeat succeeded in state {:?}",
                self.group.state
            );
        }
        if code == REBALANCE_IN_PROGRESS {
            ensure!(
                self,
                self.group.state == GroupState::PreparingRebalance,
                "{who}: REBALANCE_IN_PROGRESS in state {:?}",
                self.group.state
            );
        }
    }

    /// How a member reacts to an error from Heartbeat or OffsetCommit; `None` for success.
    fn on_member_error(&mut self, i: usize, code: i16, what: &str) -> Option<Phase> {
        match code {
            NONE => None,
            REBALANCE_IN_PROGRESS => {
                self.stats.rebalance_in_progress += 1;
                Some(Phase::Unjoined)
            }
            ILLEGAL_GENERATION => {
                self.stats.illegal_generation += 1;
                Some(Phase::Unjoined)
            }
            UNKNOWN_MEMBER_ID => {
                self.stats.unknown_member += 1;
                self.clients[i].member_id.clear();
                Some(Phase::Unjoined)
            }
            FENCED_INSTANCE_ID => Some(self.fenced(i, what)),
            other => self.fail(format!(
                "{}: unexpected {what} error {other}",
                self.clients[i].name
            )),
        }
    }

    /// Only an older incarnation of an instance can be fenced: each instance id is used by one
    /// process at a time here, so its newest incarnation must never see FENCED_INSTANCE_ID.
    fn fenced(&mut self, i: usize, what: &str) -> Phase {
        let c = &self.clients[i];
        self.fail(format!(
            "{}: {what} answered FENCED_INSTANCE_ID to member {} of instance {:?}, but no newer \
             incarnation of that instance exists (static_members={:?})",
            c.name, c.member_id, c.instance, self.group.static_members
        ))
    }

    fn commit(&mut self, i: usize) {
        let c = &self.clients[i];
        let Phase::Stable { generation } = c.phase else {
            return;
        };
        let (name, member_id, instance) = (c.name.clone(), c.member_id.clone(), c.instance.clone());
        let result = self.group.validate_offset_commit(
            &member_id,
            instance.as_deref(),
            generation,
            self.now,
        );
        self.log(format!(
            "{name} -> commit check member={member_id} generation={generation}: {result:?}"
        ));
        match result {
            Ok(()) => {
                ensure!(
                    self,
                    self.group.members.contains_key(&member_id)
                        && generation == self.group.generation_id
                        && matches!(
                            self.group.state,
                            GroupState::Stable | GroupState::PreparingRebalance
                        ),
                    "{name}: offset commit by {member_id} for generation {generation} accepted"
                );
            }
            Err(code) => {
                ensure!(
                    self,
                    code != NONE,
                    "{name}: validate_offset_commit returned Err(0)"
                );
                if let Some(next) = self.on_member_error(i, code, "OffsetCommit") {
                    self.set_phase(i, next);
                }
            }
        }
        self.poll();
    }

    fn leave(&mut self, i: usize) {
        let c = &self.clients[i];
        if matches!(c.phase, Phase::Stopped) || c.member_id.is_empty() {
            return;
        }
        let (name, member_id, instance) = (c.name.clone(), c.member_id.clone(), c.instance.clone());
        let (code, stores) = self.group.leave(&member_id, instance.as_deref(), self.now);
        self.log(format!("{name} -> leave member={member_id}: {code}"));
        self.stats.leaves += 1;
        match code {
            NONE => {
                ensure!(
                    self,
                    !self.group.members.contains_key(&member_id)
                        && !self.group.pending_members.contains_key(&member_id),
                    "{name}: {member_id} left but is still in the group"
                );
            }
            UNKNOWN_MEMBER_ID => {}
            FENCED_INSTANCE_ID => {
                self.fenced(i, "LeaveGroup");
            }
            other => self.fail(format!("{name}: unexpected LeaveGroup error {other}")),
        }
        self.set_phase(i, Phase::Stopped);
        let c = &mut self.clients[i];
        c.owned.clear();
        c.zombie = None;
        self.absorb(stores);
        self.poll();
    }

    /// The process dies: it sends nothing more, its requests' answers go nowhere; the old id
    /// may later come back as a zombie.
    fn crash(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if matches!(c.phase, Phase::Stopped) {
            return;
        }
        if !c.member_id.is_empty() {
            c.zombie = Some(Zombie {
                member_id: c.member_id.clone(),
                generation: c.phase.generation().unwrap_or(c.last_generation),
            });
        }
        c.owned.clear();
        self.set_phase(i, Phase::Stopped);
        let c = &self.clients[i];
        let line = format!("{} crashes (member {})", c.name, c.member_id);
        self.stats.crashes += 1;
        self.log(line);
    }

    /// A new process for a stopped client: no member id, the same instance id if static.
    fn restart(&mut self, i: usize) {
        if !matches!(self.clients[i].phase, Phase::Stopped) {
            return;
        }
        let change = self.rng.random_bool(0.2);
        let skip = self.rng.random_bool(0.5);
        let c = &mut self.clients[i];
        c.member_id.clear();
        c.supports_skip = skip;
        if change {
            c.subscription_version += 1;
            c.set_protocols(&mut self.rng);
        }
        c.phase = Phase::Unjoined;
        let line = format!("{} restarts (subscription changed: {change})", c.name);
        self.log(line);
        self.send_join(i);
    }

    /// A stale incarnation wakes up and sends with its old member id.
    fn zombie(&mut self, i: usize) {
        let Some(z) = self.clients[i].zombie.clone() else {
            return;
        };
        let (name, instance) = (
            self.clients[i].name.clone(),
            self.clients[i].instance.clone(),
        );
        let current = instance
            .as_ref()
            .and_then(|inst| self.group.static_members.get(inst).cloned());
        let superseded = current.as_ref().is_some_and(|c| *c != z.member_id);
        if self.rng.random_bool(0.6) {
            let code =
                self.group
                    .heartbeat(&z.member_id, instance.as_deref(), z.generation, self.now);
            self.log(format!(
                "{name} zombie -> heartbeat member={} generation={}: {code}",
                z.member_id, z.generation
            ));
            self.check_heartbeat(&format!("{name} zombie"), &z.member_id, z.generation, code);
            if superseded {
                ensure!(
                    self,
                    code == FENCED_INSTANCE_ID,
                    "{name} zombie: heartbeat from superseded {} of {instance:?} answered {code}, \
                     not FENCED_INSTANCE_ID",
                    z.member_id
                );
            }
            if code == FENCED_INSTANCE_ID {
                self.stats.zombie_fenced += 1;
                self.clients[i].zombie = None;
            }
        } else {
            let (code, stores) = self
                .group
                .leave(&z.member_id, instance.as_deref(), self.now);
            self.log(format!(
                "{name} zombie -> leave member={}: {code}",
                z.member_id
            ));
            if superseded {
                ensure!(
                    self,
                    code == FENCED_INSTANCE_ID,
                    "{name} zombie: leave from superseded {} of {instance:?} answered {code}",
                    z.member_id
                );
                let still = current.as_ref().unwrap();
                ensure!(
                    self,
                    self.group.members.contains_key(still)
                        && self.group.static_members.get(instance.as_ref().unwrap()) == Some(still),
                    "{name} zombie: a fenced leave removed the current member {still}"
                );
                self.stats.zombie_fenced += 1;
            }
            ensure!(
                self,
                matches!(code, NONE | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID),
                "{name} zombie: unexpected LeaveGroup error {code}"
            );
            self.clients[i].zombie = None;
            self.absorb(stores);
        }
        self.poll();
    }

    /// A Heartbeat or SyncGroup sent before the client's latest rejoin arrives only now, with
    /// the previous generation. The client no longer cares about the answer (as Kafka's
    /// clients ignore errors for a generation they have left), but the group must refuse it.
    fn late_request(&mut self, i: usize) {
        let c = &self.clients[i];
        if matches!(c.phase, Phase::Stopped)
            || c.member_id.is_empty()
            || c.prev_generation >= c.last_generation
        {
            return;
        }
        let (name, member_id, instance, stale) = (
            c.name.clone(),
            c.member_id.clone(),
            c.instance.clone(),
            c.prev_generation,
        );
        let code = if self.rng.random_bool(0.5) {
            let code = self
                .group
                .heartbeat(&member_id, instance.as_deref(), stale, self.now);
            self.log(format!(
                "{name} late heartbeat member={member_id} generation={stale}: {code}"
            ));
            self.check_heartbeat(&format!("{name} (late)"), &member_id, stale, code);
            code
        } else {
            let (mut rx, stores) = self.group.sync(
                &member_id,
                instance.as_deref(),
                stale,
                (Some(PROTOCOL_TYPE), None),
                Vec::new(),
                self.now,
            );
            ensure!(
                self,
                stores.is_empty(),
                "{name}: a SyncGroup for old generation {stale} asked to store {stores:?}"
            );
            let code = match rx.try_recv() {
                Ok(r) => r.error,
                Err(e) => self.fail(format!(
                    "{name}: SyncGroup for old generation {stale} not refused at once: {e:?}"
                )),
            };
            self.log(format!(
                "{name} late sync member={member_id} generation={stale}: {code}"
            ));
            code
        };
        ensure!(
            self,
            code != NONE,
            "{name}: a request for old generation {stale} succeeded (group at {})",
            self.group.generation_id
        );
        if code == ILLEGAL_GENERATION {
            self.stats.illegal_generation += 1;
        }
        self.poll();
    }

    /// The answer to a JoinGroup was lost: the client sends it again.
    fn retry_join(&mut self, i: usize) {
        if matches!(
            self.clients[i].phase,
            Phase::Joining(_) | Phase::Joined { .. }
        ) {
            let line = format!("{} loses its join answer", self.clients[i].name);
            self.log(line);
            self.send_join(i);
        }
    }

    /// A stable consumer rejoins: it changed its subscription, or (same protocols) it wants a
    /// rebalance, as a leader does when its topics' metadata changes.
    fn resubscribe(&mut self, i: usize) {
        if !matches!(self.clients[i].phase, Phase::Stable { .. }) {
            return;
        }
        let change = self.rng.random_bool(0.5);
        let c = &mut self.clients[i];
        if change {
            c.subscription_version += 1;
            c.set_protocols(&mut self.rng);
        }
        let line = format!("{} rejoins (subscription changed: {change})", c.name);
        self.log(line);
        self.send_join(i);
    }

    fn tick(&mut self) {
        let before: BTreeSet<String> = self.group.members.keys().cloned().collect();
        let stores = self.group.tick(self.now);
        let gone: Vec<&String> = before
            .iter()
            .filter(|m| !self.group.members.contains_key(*m))
            .collect();
        let line = format!(
            "tick: removed {gone:?}, state {:?} generation {}, stores {stores:?}",
            self.group.state, self.group.generation_id
        );
        self.stats.expired_by_tick += gone.len() as u64;
        self.log(line);
        self.absorb(stores);
        self.poll();
    }

    // ---- metadata writes ----

    /// New writes wait; sometimes every pending one is answered at once.
    fn absorb(&mut self, stores: Vec<Store>) {
        self.stores.extend(stores);
        if self.rng.random_bool(0.3) {
            while !self.stores.is_empty() {
                self.answer_one_store();
            }
        }
    }

    /// Answers a pending write, usually the oldest, rarely with NOT_COORDINATOR.
    fn answer_one_store(&mut self) {
        if self.stores.is_empty() {
            return;
        }
        let idx = if self.rng.random_bool(0.7) {
            0
        } else {
            self.rng.random_range(0..self.stores.len())
        };
        let store = self.stores.remove(idx);
        let error = if self.chaos && self.rng.random_bool(0.06) {
            NOT_COORDINATOR
        } else {
            NONE
        };
        let failed_sync = error != NONE
            && store.completes_sync
            && store.generation == self.group.generation_id
            && self.group.state == GroupState::CompletingRebalance;
        let generation = self.group.generation_id;
        let more = self.group.stored(store, error, self.now);
        if failed_sync {
            self.stats.store_errors += 1;
            // As Kafka: a failed assignment write starts a new rebalance.
            ensure!(
                self,
                self.group.state == GroupState::PreparingRebalance
                    || self.group.generation_id > generation,
                "a failed assignment write for generation {generation} left the group {:?}",
                self.group.state
            );
        }
        self.log(format!(
            "stored {store:?} error={error}: state {:?}, more {more:?}",
            self.group.state
        ));
        self.stores.extend(more);
    }

    // ---- answers ----

    fn poll(&mut self) {
        for i in 0..self.clients.len() {
            let phase = std::mem::replace(&mut self.clients[i].phase, Phase::Stopped);
            let next = match phase {
                Phase::Joining(mut rx) => match rx.try_recv() {
                    Ok(r) => self.on_join(i, r),
                    Err(TryRecvError::Empty) => Phase::Joining(rx),
                    Err(TryRecvError::Closed) => self.fail(format!(
                        "{}: JoinGroup dropped without an answer",
                        self.clients[i].name
                    )),
                },
                Phase::Syncing { generation, mut rx } => match rx.try_recv() {
                    Ok(r) => self.on_sync(i, generation, r),
                    Err(TryRecvError::Empty) => Phase::Syncing { generation, rx },
                    Err(TryRecvError::Closed) => self.fail(format!(
                        "{}: SyncGroup dropped without an answer",
                        self.clients[i].name
                    )),
                },
                other => other,
            };
            self.clients[i].phase = next;
        }
        let mut kept = Vec::new();
        for orphan in std::mem::take(&mut self.orphans) {
            match orphan {
                Orphan::Join {
                    name,
                    instance,
                    mut rx,
                } => match rx.try_recv() {
                    Ok(r) => {
                        self.log(format!(
                            "{name} (gone) <- join error={} generation={} member={}",
                            r.error, r.generation_id, r.member_id
                        ));
                        if r.error == NONE {
                            self.answered
                                .entry(r.generation_id)
                                .or_default()
                                .insert(owner_of(&r.member_id, instance.as_deref()));
                        }
                    }
                    Err(TryRecvError::Empty) => kept.push(Orphan::Join { name, instance, rx }),
                    Err(TryRecvError::Closed) => self.fail(format!(
                        "{name}: an abandoned JoinGroup was dropped without an answer"
                    )),
                },
                Orphan::Sync { name, mut rx } => match rx.try_recv() {
                    Ok(r) => self.log(format!("{name} (gone) <- sync error={}", r.error)),
                    Err(TryRecvError::Empty) => kept.push(Orphan::Sync { name, rx }),
                    Err(TryRecvError::Closed) => self.fail(format!(
                        "{name}: an abandoned SyncGroup was dropped without an answer"
                    )),
                },
            }
        }
        self.orphans = kept;
    }

    fn on_join(&mut self, i: usize, r: JoinResult) -> Phase {
        let name = self.clients[i].name.clone();
        self.log(format!(
            "{name} <- join error={} generation={} member={} leader={} members={:?} skip={}",
            r.error,
            r.generation_id,
            r.member_id,
            r.leader,
            r.members.iter().map(|m| &m.member_id).collect::<Vec<_>>(),
            r.skip_assignment
        ));
        match r.error {
            NONE => self.on_joined(i, r),
            MEMBER_ID_REQUIRED => {
                let c = &self.clients[i];
                ensure!(
                    self,
                    c.member_id.is_empty() && c.instance.is_none() && !r.member_id.is_empty(),
                    "{name}: MEMBER_ID_REQUIRED for member {:?} instance {:?} with id {:?}",
                    c.member_id,
                    c.instance,
                    r.member_id
                );
                self.stats.member_id_required += 1;
                self.clients[i].member_id = r.member_id;
                Phase::Unjoined
            }
            UNKNOWN_MEMBER_ID => {
                self.stats.unknown_member += 1;
                self.clients[i].member_id.clear();
                Phase::Unjoined
            }
            FENCED_INSTANCE_ID => self.fenced(i, "JoinGroup"),
            // A static replacement whose metadata write failed: the client rediscovers the
            // coordinator and joins again.
            NOT_COORDINATOR => {
                self.clients[i].member_id.clear();
                Phase::Unjoined
            }
            other => self.fail(format!("{name}: unexpected JoinGroup error {other}")),
        }
    }

    fn on_joined(&mut self, i: usize, r: JoinResult) -> Phase {
        let c = &self.clients[i];
        let name = c.name.clone();
        let g = r.generation_id;
        // Invariant 2: generations only move forward.
        ensure!(
            self,
            g >= 1 && g <= self.group.generation_id,
            "{name}: JoinGroup gave generation {g}, the group is at {}",
            self.group.generation_id
        );
        ensure!(
            self,
            g >= c.last_generation,
            "{name}: JoinGroup gave generation {g} after generation {}",
            c.last_generation
        );
        ensure!(
            self,
            !r.member_id.is_empty() && (c.member_id.is_empty() || r.member_id == c.member_id),
            "{name}: joined as {:?} but asked as {:?}",
            r.member_id,
            c.member_id
        );
        ensure!(
            self,
            r.protocol_type.as_deref() == Some(PROTOCOL_TYPE)
                && r.protocol_name
                    .as_ref()
                    .is_some_and(|p| c.protocols.iter().any(|(n, _)| n == p)),
            "{name}: joined with protocol {:?}/{:?}, offered {:?}",
            r.protocol_type,
            r.protocol_name,
            c.protocols
        );
        if c.instance.is_some()
            && c.member_id.is_empty()
            && r.members.is_empty()
            && self.group.state == GroupState::Stable
        {
            self.stats.static_rejoin_without_rebalance += 1;
        }
        self.answered
            .entry(g)
            .or_default()
            .insert(owner_of(&r.member_id, c.instance.as_deref()));
        // A member told it leads must be given the members to assign (KIP-345's rejoining
        // static leader that cannot skip is told the old id leads instead).
        ensure!(
            self,
            r.leader != r.member_id || !r.members.is_empty(),
            "{name}: told it leads generation {g} but given no members"
        );
        let mut plan = None;
        if !r.members.is_empty() {
            ensure!(
                self,
                r.leader == r.member_id,
                "{name}: given the member list of generation {g} but told {} leads",
                r.leader
            );
            let owners: Vec<Owner> = r
                .members
                .iter()
                .map(|m| owner_of(&m.member_id, m.group_instance_id.as_deref()))
                .collect();
            let distinct: BTreeSet<&Owner> = owners.iter().collect();
            ensure!(
                self,
                distinct.len() == owners.len(),
                "{name}: duplicate owners in the member list {owners:?}"
            );
            let me = owner_of(&r.member_id, c.instance.as_deref());
            ensure!(
                self,
                owners.contains(&me),
                "{name}: leader {me} is missing from its own member list {owners:?}"
            );
            if let Some(prev) = self.rosters.get(&g) {
                ensure!(
                    self,
                    *prev == owners,
                    "two member lists for generation {g}: {prev:?} and {owners:?}"
                );
            }
            self.rosters.insert(g, owners.clone());
            if r.skip_assignment {
                ensure!(
                    self,
                    c.instance.is_some() && c.supports_skip,
                    "{name}: skip_assignment for a member that cannot skip"
                );
                self.stats.skip_assignment += 1;
            } else {
                let slices = range_assign(r.members.len());
                plan = Some(Plan {
                    assignments: r
                        .members
                        .iter()
                        .zip(&slices)
                        .map(|(m, s)| (m.member_id.clone(), encode(s)))
                        .collect(),
                    by_owner: owners.into_iter().zip(slices).collect(),
                });
            }
        } else {
            ensure!(
                self,
                !r.skip_assignment,
                "{name}: skip_assignment without a member list"
            );
        }
        self.stats.joins_ok += 1;
        let c = &mut self.clients[i];
        c.member_id = r.member_id;
        if g > c.last_generation {
            c.prev_generation = c.last_generation;
        }
        c.last_generation = g;
        Phase::Joined {
            generation: g,
            protocol: r.protocol_name,
            plan,
        }
    }

    fn on_sync(&mut self, i: usize, generation: i32, r: SyncResult) -> Phase {
        let c = &self.clients[i];
        let (name, member_id, owner) = (c.name.clone(), c.member_id.clone(), c.owner());
        self.log(format!(
            "{name} <- sync generation={generation} error={} assignment={:?}",
            r.error,
            decode(&r.assignment)
        ));
        match r.error {
            NONE => {
                // Invariant 2: an assignment is only handed out for the current generation,
                // once the group is Stable.
                ensure!(
                    self,
                    self.group.state == GroupState::Stable
                        && self.group.generation_id == generation,
                    "{name}: SyncGroup for generation {generation} succeeded while the group is \
                     {:?} in generation {}",
                    self.group.state,
                    self.group.generation_id
                );
                ensure!(
                    self,
                    self.group.members.contains_key(&member_id),
                    "{name}: SyncGroup succeeded for non-member {member_id}"
                );
                let parts = match decode(&r.assignment) {
                    Ok(p) => p,
                    Err(e) => self.fail(format!("{name}: {e}")),
                };
                let Some((_, plan)) = self.plans.get(&generation) else {
                    self.fail(format!(
                        "{name}: SyncGroup succeeded in generation {generation}, whose leader's \
                         assignment the group never accepted"
                    ));
                };
                let expected = plan.get(&owner).cloned().unwrap_or_default();
                ensure!(
                    self,
                    parts == expected,
                    "{name}: {owner} was given {parts:?} in generation {generation}, the leader \
                     assigned it {expected:?}"
                );
                // Invariant 1.
                let generation_owned = self.owned.entry(generation).or_default();
                if let Err(e) = check_disjoint(generation_owned, &owner, &parts) {
                    self.fail(format!("{name}: generation {generation}: {e}"));
                }
                let generation_owned = self.owned.entry(generation).or_default();
                generation_owned
                    .entry(owner)
                    .or_default()
                    .extend(parts.iter().copied());
                self.stats.syncs_ok += 1;
                if !parts.is_empty() {
                    self.stats.syncs_with_partitions += 1;
                }
                self.clients[i].owned = parts;
                Phase::Stable { generation }
            }
            REBALANCE_IN_PROGRESS => {
                self.stats.rebalance_in_progress += 1;
                Phase::Unjoined
            }
            ILLEGAL_GENERATION => {
                self.stats.illegal_generation += 1;
                Phase::Unjoined
            }
            // The coordinator failed to write the assignment; the client finds it again and
            // rejoins.
            NOT_COORDINATOR => Phase::Unjoined,
            UNKNOWN_MEMBER_ID => {
                self.stats.unknown_member += 1;
                self.clients[i].member_id.clear();
                Phase::Unjoined
            }
            FENCED_INSTANCE_ID => self.fenced(i, "SyncGroup"),
            other => self.fail(format!("{name}: unexpected SyncGroup error {other}")),
        }
    }

    // ---- invariants ----

    fn check_invariants(&mut self) {
        let g = &self.group;
        // Invariant 2: the group's generation never decreases.
        ensure!(
            self,
            g.generation_id >= self.max_generation,
            "generation went from {} back to {}",
            self.max_generation,
            g.generation_id
        );
        self.max_generation = g.generation_id;
        // Invariant 3: the state agrees with the members.
        match g.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                ensure!(
                    self,
                    !g.members.is_empty() && g.leader_id.is_some(),
                    "{:?} with no members or no leader",
                    g.state
                );
            }
            GroupState::Empty => {
                ensure!(self, g.members.is_empty(), "Empty with members");
            }
            GroupState::PreparingRebalance => {}
            GroupState::Dead => self.fail("the group died".to_string()),
        }
        if let Some(leader) = &g.leader_id {
            ensure!(
                self,
                g.members.contains_key(leader),
                "leader {leader} is not a member"
            );
        }
        // Static membership: group.instance.id <-> member id, both ways.
        for (instance, member_id) in &g.static_members {
            ensure!(
                self,
                g.members
                    .get(member_id)
                    .is_some_and(|m| m.group_instance_id.as_deref() == Some(instance.as_str())),
                "static_members maps {instance} to {member_id}, which is not that member"
            );
        }
        for (key, m) in &g.members {
            ensure!(
                self,
                *key == m.member_id,
                "member {} keyed under {key}",
                m.member_id
            );
            if let Some(instance) = &m.group_instance_id {
                ensure!(
                    self,
                    g.static_members.get(instance) == Some(&m.member_id),
                    "member {} of {instance} is not in static_members",
                    m.member_id
                );
            }
        }
        // Every member of a generation under way was told about it.
        if matches!(
            g.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            let told = self.answered.get(&g.generation_id);
            for m in g.members.values() {
                let owner = owner_of(&m.member_id, m.group_instance_id.as_deref());
                ensure!(
                    self,
                    told.is_some_and(|t| t.contains(&owner)),
                    "{owner} is a member of generation {} but was never sent it",
                    g.generation_id
                );
            }
        }
        for id in g.pending_members.keys() {
            ensure!(
                self,
                !g.members.contains_key(id),
                "{id} is both pending and a member"
            );
        }
        // Invariant 1, as the group holds it: the members' stored assignments are disjoint.
        let mut held: BTreeMap<Owner, BTreeSet<u32>> = BTreeMap::new();
        for m in g.members.values() {
            let owner = owner_of(&m.member_id, m.group_instance_id.as_deref());
            let parts = match decode(&m.assignment) {
                Ok(p) => p,
                Err(e) => self.fail(format!("member {}: {e}", m.member_id)),
            };
            if let Err(e) = check_disjoint(&held, &owner, &parts) {
                self.fail(format!("stored assignments: {e}"));
            }
            held.insert(owner, parts.into_iter().collect());
        }
    }

    // ---- convergence ----

    /// Faults stop; live clients keep acting as time passes in small steps. The group must
    /// settle: Stable with exactly the live clients, each holding its share of all partitions
    /// in the current generation, or Empty when no client is live.
    fn settle(&mut self) {
        self.chaos = false;
        self.log("faults stop".to_string());
        for round in 0..SETTLE_ROUNDS {
            self.step = STEPS + round;
            for i in 0..self.clients.len() {
                self.act(i);
                self.check_invariants();
            }
            while !self.stores.is_empty() {
                self.answer_one_store();
            }
            self.poll();
            self.check_invariants();
            if self.converged() {
                return;
            }
            self.now += 500;
            self.tick();
            self.check_invariants();
        }
        self.fail(format!(
            "no convergence within {SETTLE_ROUNDS} rounds after faults stopped; clients: {:?}",
            self.clients
                .iter()
                .map(|c| format!("{} {} {:?}", c.name, c.phase.name(), c.member_id))
                .collect::<Vec<_>>()
        ));
    }

    fn converged(&self) -> bool {
        let live: Vec<&Client> = self
            .clients
            .iter()
            .filter(|c| !matches!(c.phase, Phase::Stopped))
            .collect();
        let g = &self.group;
        if live.is_empty() {
            return g.state == GroupState::Empty && g.members.is_empty();
        }
        let ids: BTreeSet<&String> = live.iter().map(|c| &c.member_id).collect();
        let members: BTreeSet<&String> = g.members.keys().collect();
        let all_stable = live.iter().all(
            |c| matches!(c.phase, Phase::Stable { generation } if generation == g.generation_id),
        );
        let covered: BTreeSet<u32> = live.iter().flat_map(|c| c.owned.iter().copied()).collect();
        g.state == GroupState::Stable
            && g.pending_members.is_empty()
            && ids == members
            && all_stable
            && covered.len() == PARTITIONS as usize
    }
}

fn base_seed() -> u64 {
    match std::env::var("RUNNEL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RUNNEL_SEED={s:?} is not a u64")),
        Err(_) => {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            t.as_secs().wrapping_mul(1_000_003) ^ u64::from(t.subsec_nanos())
        }
    }
}

#[test]
fn randomized_consumers_keep_group_invariants() {
    let base = base_seed();
    let runs: u64 = std::env::var("RUNNEL_SIM_RUNS")
        .ok()
        .map(|s| s.parse().expect("RUNNEL_SIM_RUNS is a number"))
        .unwrap_or(DEFAULT_RUNS);
    eprintln!(
        "group_state_machine: seeds {base}..{} ({runs} runs x {STEPS} steps); replay one with \
         RUNNEL_SEED=<seed>",
        base.wrapping_add(runs)
    );
    let started = Instant::now();
    let mut total = Stats::default();
    for k in 0..runs {
        let mut sim = Sim::new(base.wrapping_add(k));
        sim.run(STEPS);
        total.add(&sim.stats);
    }
    eprintln!(
        "group_state_machine: {runs} runs in {:?} (base seed {base}): {total:?}",
        started.elapsed()
    );
    // The simulation must actually reach the interesting paths, or it proves nothing.
    // (Each path is hit 15+ times per 300 runs, so this does not flake at the default count.)
    if runs >= DEFAULT_RUNS {
        let coverage = [
            (
                "successful syncs with partitions",
                total.syncs_with_partitions,
            ),
            ("MEMBER_ID_REQUIRED", total.member_id_required),
            ("REBALANCE_IN_PROGRESS", total.rebalance_in_progress),
            ("ILLEGAL_GENERATION", total.illegal_generation),
            ("UNKNOWN_MEMBER_ID", total.unknown_member),
            ("zombies fenced", total.zombie_fenced),
            (
                "static rejoins without rebalance",
                total.static_rejoin_without_rebalance,
            ),
            ("skip_assignment", total.skip_assignment),
            ("failed assignment writes", total.store_errors),
            ("members expired by tick", total.expired_by_tick),
            ("steps in Stable", total.stable_steps),
        ];
        for (what, n) in coverage {
            assert!(
                n > 0,
                "base seed {base}: the simulation never exercised {what}: {total:?}"
            );
        }
    }
}

// ---- deterministic scenarios ----

fn recv<T>(rx: &mut oneshot::Receiver<T>) -> T {
    match rx.try_recv() {
        Ok(v) => v,
        Err(e) => panic!("no answer yet: {e:?}"),
    }
}

fn assert_waiting<T: std::fmt::Debug>(rx: &mut oneshot::Receiver<T>) {
    let r = rx.try_recv();
    assert!(matches!(r, Err(TryRecvError::Empty)), "answered: {r:?}");
}

fn answer_stores(group: &mut ClassicGroup, mut stores: Vec<Store>, now: i64) {
    while let Some(s) = stores.pop() {
        stores.extend(group.stored(s, NONE, now));
    }
}

/// A dynamic member's JoinGroup pair: MEMBER_ID_REQUIRED, then the join with the id.
fn join_dynamic(
    group: &mut ClassicGroup,
    now: i64,
) -> (String, oneshot::Receiver<JoinResult>, Vec<Store>) {
    let (mut rx, stores) = group.join(join_request("", None, range_protocols("t"), false), now);
    assert!(stores.is_empty());
    let r = recv(&mut rx);
    assert_eq!(r.error, MEMBER_ID_REQUIRED);
    let id = r.member_id;
    let (rx, stores) = group.join(join_request(&id, None, range_protocols("t"), false), now);
    (id, rx, stores)
}

fn sync(
    group: &mut ClassicGroup,
    member_id: &str,
    instance: Option<&str>,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
    now: i64,
) -> (oneshot::Receiver<SyncResult>, Vec<Store>) {
    group.sync(
        member_id,
        instance,
        generation,
        (Some(PROTOCOL_TYPE), Some("range")),
        assignments,
        now,
    )
}

fn leader_plan(r: &JoinResult) -> Vec<(String, Bytes)> {
    r.members
        .iter()
        .zip(range_assign(r.members.len()))
        .map(|(m, s)| (m.member_id.clone(), encode(&s)))
        .collect()
}

#[test]
fn error_codes_are_kafkas() {
    assert_eq!(NOT_COORDINATOR, ResponseError::NotCoordinator.code());
    assert_eq!(ILLEGAL_GENERATION, ResponseError::IllegalGeneration.code());
    assert_eq!(UNKNOWN_MEMBER_ID, ResponseError::UnknownMemberId.code());
    assert_eq!(
        REBALANCE_IN_PROGRESS,
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(MEMBER_ID_REQUIRED, ResponseError::MemberIdRequired.code());
    assert_eq!(FENCED_INSTANCE_ID, ResponseError::FencedInstanceId.code());
}

#[test]
fn disjointness_check_catches_overlaps() {
    let mut owned: BTreeMap<Owner, BTreeSet<u32>> = BTreeMap::new();
    owned.insert("dynamic:a".into(), [0, 1, 2].into_iter().collect());
    assert!(check_disjoint(&owned, "dynamic:b", &[3, 4]).is_ok());
    assert!(check_disjoint(&owned, "dynamic:a", &[0, 1, 2]).is_ok());
    assert!(check_disjoint(&owned, "dynamic:b", &[2, 3]).is_err());
    assert!(check_disjoint(&owned, "dynamic:b", &[5, 5]).is_err());
    assert!(check_disjoint(&owned, "dynamic:b", &[PARTITIONS]).is_err());
    assert_eq!(decode(&encode(&[0, 7, 11])).unwrap(), vec![0, 7, 11]);
    let all: Vec<u32> = range_assign(5).concat();
    assert_eq!(all, (0..PARTITIONS).collect::<Vec<_>>());
}

/// (a) A static member that restarts into a Stable group with the same protocols gets the
/// current generation at once, with a new member id; its old id is fenced.
#[test]
fn static_member_rejoin_keeps_generation_and_fences_old_id() {
    let mut g = ClassicGroup::new("static".to_string(), settings(0), 0);
    let protocols = range_protocols("t");

    // i1 alone: generation 1 at once (no initial delay).
    let (mut rx1, stores) = g.join(join_request("", Some("i1"), protocols.clone(), false), 0);
    assert!(stores.is_empty());
    let r1 = recv(&mut rx1);
    assert_eq!((r1.error, r1.generation_id), (NONE, 1));
    let a1 = r1.member_id.clone();
    assert_eq!(r1.leader, a1);
    let (mut s1, stores) = sync(&mut g, &a1, Some("i1"), 1, leader_plan(&r1), 10);
    assert_waiting(&mut s1);
    answer_stores(&mut g, stores, 10);
    assert_eq!(recv(&mut s1).error, NONE);
    assert_eq!(g.state, GroupState::Stable);

    // i2 joins: i1 learns of the rebalance by heartbeat and rejoins; generation 2.
    let (mut rx2, _) = g.join(join_request("", Some("i2"), protocols.clone(), false), 100);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_waiting(&mut rx2);
    assert_eq!(g.heartbeat(&a1, Some("i1"), 1, 200), REBALANCE_IN_PROGRESS);
    let (mut rx1, _) = g.join(join_request(&a1, Some("i1"), protocols.clone(), false), 300);
    let r1 = recv(&mut rx1);
    let r2 = recv(&mut rx2);
    assert_eq!((r1.error, r1.generation_id), (NONE, 2));
    assert_eq!((r2.error, r2.generation_id), (NONE, 2));
    assert_eq!(r1.leader, a1);
    assert_eq!(r1.members.len(), 2);
    assert!(r2.members.is_empty());
    let b_old = r2.member_id.clone();
    let (mut s1, stores) = sync(&mut g, &a1, Some("i1"), 2, leader_plan(&r1), 400);
    let (mut s2, more) = sync(&mut g, &b_old, Some("i2"), 2, Vec::new(), 400);
    assert!(more.is_empty());
    answer_stores(&mut g, stores, 400);
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(recv(&mut s1).error, NONE);
    let b_assignment = recv(&mut s2);
    assert_eq!(b_assignment.error, NONE);
    assert!(!b_assignment.assignment.is_empty());

    // i2 restarts: same protocols, so no rebalance; generation 2 with a new id.
    let (mut rx3, stores) = g.join(join_request("", Some("i2"), protocols.clone(), false), 1000);
    // Answered once the new member id is stored, not before.
    assert_waiting(&mut rx3);
    let stored_first = stores.clone();
    answer_stores(&mut g, stored_first, 1000);
    let r3 = recv(&mut rx3);
    assert_eq!(r3.error, NONE);
    assert_eq!(
        r3.generation_id, 2,
        "a static rejoin must not start a rebalance"
    );
    assert_ne!(r3.member_id, b_old);
    assert_eq!(r3.leader, a1);
    assert!(r3.members.is_empty());
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.generation_id, 2);
    assert!(stores
        .iter()
        .all(|s| s.generation == 2 && !s.completes_sync));
    assert!(!stores.is_empty(), "the new member id must be persisted");
    let b_new = r3.member_id.clone();

    // The old incarnation is fenced, and cannot make the new one leave.
    assert_eq!(g.heartbeat(&b_old, Some("i2"), 2, 1100), FENCED_INSTANCE_ID);
    assert_eq!(g.leave(&b_old, Some("i2"), 1100).0, FENCED_INSTANCE_ID);
    assert!(g.members.contains_key(&b_new));
    assert!(!g.members.contains_key(&b_old));
    assert_eq!(g.heartbeat(&b_new, Some("i2"), 2, 1100), NONE);
    assert_eq!(g.heartbeat(&a1, Some("i1"), 2, 1100), NONE);
    let (mut s3, stores) = sync(&mut g, &b_new, Some("i2"), 2, Vec::new(), 1200);
    assert!(stores.is_empty());
    let s3 = recv(&mut s3);
    assert_eq!(s3.error, NONE);
    assert_eq!(
        s3.assignment, b_assignment.assignment,
        "keeps its assignment"
    );

    // The static leader restarts: an old client is told the old id leads (so it does not
    // reassign); one that supports skip_assignment is told it leads but may skip.
    let (mut rx4, stores) = g.join(join_request("", Some("i1"), protocols.clone(), false), 1300);
    answer_stores(&mut g, stores, 1300);
    let r4 = recv(&mut rx4);
    assert_eq!((r4.error, r4.generation_id), (NONE, 2));
    assert_ne!(r4.member_id, a1);
    assert_eq!(r4.leader, a1);
    assert!(!r4.skip_assignment);
    assert_eq!(g.heartbeat(&a1, Some("i1"), 2, 1300), FENCED_INSTANCE_ID);
    let (mut rx5, stores) = g.join(join_request("", Some("i1"), protocols, true), 1400);
    answer_stores(&mut g, stores, 1400);
    let r5 = recv(&mut rx5);
    assert_eq!((r5.error, r5.generation_id), (NONE, 2));
    assert!(r5.skip_assignment);
    assert_eq!(r5.leader, r5.member_id);
    assert_eq!(r5.members.len(), 2);
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.generation_id, 2);
    assert_eq!(
        g.heartbeat(&r4.member_id, Some("i1"), 2, 1400),
        FENCED_INSTANCE_ID
    );
}

/// (b) A member that stops heartbeating is removed by `tick` once its session times out, and
/// the group rebalances without it.
#[test]
fn silent_member_expires_and_group_rebalances() {
    let mut g = ClassicGroup::new("expiry".to_string(), settings(0), 0);
    let (a, mut rxa, _) = join_dynamic(&mut g, 0);
    assert_eq!(recv(&mut rxa).generation_id, 1);
    let (b, mut rxb, _) = join_dynamic(&mut g, 0);
    assert_waiting(&mut rxb);
    assert_eq!(g.heartbeat(&a, None, 1, 0), REBALANCE_IN_PROGRESS);
    let (mut rxa, _) = g.join(join_request(&a, None, range_protocols("t"), false), 0);
    let ra = recv(&mut rxa);
    let rb = recv(&mut rxb);
    assert_eq!((ra.generation_id, rb.generation_id), (2, 2));
    assert_eq!(ra.leader, a);
    let (mut sa, stores) = sync(&mut g, &a, None, 2, leader_plan(&ra), 0);
    let (mut sb, _) = sync(&mut g, &b, None, 2, Vec::new(), 100);
    answer_stores(&mut g, stores, 100);
    assert_eq!(recv(&mut sa).error, NONE);
    assert_eq!(recv(&mut sb).error, NONE);
    assert_eq!(g.state, GroupState::Stable);

    // a heartbeats every 3 s; b (last seen at 100) goes silent.
    for t in [3_000, 6_000, 9_000] {
        assert_eq!(g.heartbeat(&a, None, 2, t), NONE);
        assert!(g.tick(t).is_empty());
        assert!(g.members.contains_key(&b), "b expired early at {t}");
    }
    assert!(g.tick(10_099).is_empty());
    assert!(g.members.contains_key(&b));
    assert_eq!(g.state, GroupState::Stable);
    let _ = g.tick(10_100);
    assert!(!g.members.contains_key(&b), "b outlived its session");
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.heartbeat(&b, None, 2, 10_200), UNKNOWN_MEMBER_ID);

    assert_eq!(g.heartbeat(&a, None, 2, 11_000), REBALANCE_IN_PROGRESS);
    let (mut rxa, _) = g.join(join_request(&a, None, range_protocols("t"), false), 11_000);
    let ra = recv(&mut rxa);
    assert_eq!((ra.error, ra.generation_id), (NONE, 3));
    assert_eq!(ra.leader, a);
    assert_eq!(
        ra.members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect::<Vec<_>>(),
        vec![a.as_str()]
    );
    let (mut sa, stores) = sync(&mut g, &a, None, 3, leader_plan(&ra), 11_100);
    answer_stores(&mut g, stores, 11_100);
    let sa = recv(&mut sa);
    assert_eq!(sa.error, NONE);
    assert_eq!(
        decode(&sa.assignment).unwrap(),
        (0..PARTITIONS).collect::<Vec<_>>()
    );
    assert_eq!(g.state, GroupState::Stable);
}

/// (c) With `initial_rebalance_delay_ms`, a member joining within the delay lands in the same
/// first generation as the first member.
#[test]
fn initial_rebalance_delay_gathers_early_joiners() {
    let mut g = ClassicGroup::new("delay".to_string(), settings(3000), 0);
    let (a, mut rxa, stores) = join_dynamic(&mut g, 0);
    assert!(stores.is_empty());
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_waiting(&mut rxa);
    assert!(g.tick(1000).is_empty());
    assert_waiting(&mut rxa);

    let (b, mut rxb, _) = join_dynamic(&mut g, 1500);
    // Everyone has joined, but the delay holds the join phase open.
    assert_waiting(&mut rxa);
    assert_waiting(&mut rxb);
    let _ = g.tick(2999);
    assert_waiting(&mut rxa);
    assert_waiting(&mut rxb);
    // A member joined during the delay, so it is extended once more.
    let _ = g.tick(3000);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_waiting(&mut rxa);
    assert_waiting(&mut rxb);
    let _ = g.tick(5999);
    assert_waiting(&mut rxa);
    let _ = g.tick(6000);
    let ra = recv(&mut rxa);
    let rb = recv(&mut rxb);
    assert_eq!((ra.error, rb.error), (NONE, NONE));
    assert_eq!(ra.generation_id, 1);
    assert_eq!(
        rb.generation_id, 1,
        "the early joiner must share the first generation"
    );
    assert_eq!(g.generation_id, 1);
    assert_eq!(ra.leader, a);
    let mut ids: Vec<&str> = ra.members.iter().map(|m| m.member_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(g.state, GroupState::CompletingRebalance);

    // Alone, the first member gets its generation when the delay ends.
    let mut g = ClassicGroup::new("delay-alone".to_string(), settings(3000), 0);
    let (_, mut rx, _) = join_dynamic(&mut g, 0);
    let _ = g.tick(2999);
    assert_waiting(&mut rx);
    let _ = g.tick(3000);
    assert_eq!(recv(&mut rx).generation_id, 1);
}

/// A static replacement whose metadata write fails is undone, as in Kafka: the restarted
/// client gets the write's error and the old member id stays valid.
#[test]
fn failed_static_replacement_is_undone() {
    let mut g = ClassicGroup::new("undo".to_string(), settings(0), 0);
    let protocols = range_protocols("t");
    let (mut rx, _) = g.join(join_request("", Some("i1"), protocols.clone(), false), 0);
    let r = recv(&mut rx);
    let old = r.member_id.clone();
    let (mut s, stores) = sync(&mut g, &old, Some("i1"), 1, leader_plan(&r), 10);
    answer_stores(&mut g, stores, 10);
    assert_eq!(recv(&mut s).error, NONE);

    let (mut rx, stores) = g.join(join_request("", Some("i1"), protocols, false), 100);
    assert_waiting(&mut rx);
    assert_eq!(stores.len(), 1);
    let more = g.stored(stores[0], NOT_COORDINATOR, 100);
    assert!(more.is_empty());
    let r = recv(&mut rx);
    assert_eq!(r.error, NOT_COORDINATOR);
    assert!(g.members.contains_key(&old), "the old id is a member again");
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.leader_id.as_deref(), Some(old.as_str()));
    assert_eq!(g.heartbeat(&old, Some("i1"), 1, 200), NONE);
    assert_eq!(g.state, GroupState::Stable);
}
