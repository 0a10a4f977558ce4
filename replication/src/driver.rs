//! The driver of every Raft group of this broker, in the order raft-rs requires: send
//! messages, apply the snapshot, apply committed entries, persist entries (one fsync),
//! persist hard state, send persisted messages, advance, apply what advance committed.
//!
//! [`Driver`] is the logic, steppable one call at a time (a command, a tick, a Ready cycle),
//! with time from a [`Clock`] and messages to other brokers through a [`Transport`]: a
//! simulation drives whole clusters with it in one thread. [`start`] runs it on the broker's
//! `raft-driver` thread, a thin loop over commands and ticks.
//!
//! It also runs retention and checkpoints on its logs; compaction runs on its own thread and
//! takes each log's write lock only to swap cleaned segments in.
//!
//! Idle partitions cost next to nothing, for thousands of them per broker:
//! - A Ready cycle visits only the groups marked dirty (stepped, proposed to, ticked into
//!   action, woken), never every group.
//! - Quiescence (as CockroachDB's): a leader with nothing in flight whose live followers hold
//!   its whole log sends them one last heartbeat marked [`QUIESCE`] and stops ticking; a
//!   follower whose log ends at that heartbeat's commit stops ticking too. Any other message,
//!   and any proposal, wakes a group. A quiesced follower cannot time out on its own, so
//!   liveness moves up to brokers: every broker sends every peer a batch each tick (an empty
//!   one if it has nothing else), and a peer silent for an election timeout counts as down:
//!   quiesced followers of its leaders wake with their election timer as if they had been
//!   ticking (so they campaign within the usual randomized timeout), quiesced leaders that no
//!   longer hear a majority wake (so check-quorum can depose them), and a peer heard again
//!   wakes the quiesced groups it follows so their leaders catch it up. Quiescence only stops
//!   timers; it never changes what Raft decides. `tests/cluster_sim.rs` covers it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, StateRole};
use runnel_storage::batch::{self, BatchHeader, BatchOptions, NewRecord};
use runnel_storage::{Clock, Log, LogConfig, SystemClock};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::metadata::{ClusterMetadata, MetadataEffect, TopicMetadata};
use crate::raft_log::{RaftLog, Replica};
use crate::transport::{Envelope, GroupId, Transport};
use crate::{
    Command, MetadataRecord, Origin, ProduceAck, ReplicationConfig, ReplicationError, Reply,
    Shared, METADATA_TOPIC,
};

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

enum Pending {
    Produce {
        first_index: u64,
        acks: i16,
        reply: Reply<ProduceAck>,
    },
    Metadata {
        reply: Reply<()>,
    },
}

/// What applying committed metadata entries leaves for the driver to do, in order.
enum Effect {
    Apply(MetadataEffect),
    Reply(Reply<()>),
}

/// An idempotent batch proposed but not yet in the log.
struct InFlight {
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
    index: u64,
}

struct Group {
    id: GroupId,
    node: RawNode<RaftLog>,
    /// Idempotent batches proposed but not yet persisted, by producer id.
    in_flight: HashMap<i64, Vec<InFlight>>,
    /// End-transaction markers proposed but not yet persisted: producer id -> (epoch, index).
    markers_in_flight: HashMap<i64, (i16, u64)>,
    /// Proposals waiting for persistence or commit, by the index of their last entry.
    pending: BTreeMap<u64, Pending>,
    /// Metadata proposals this follower forwarded to the leader (raft-rs forwards them), by
    /// the token in their record key: answered when they are applied here, or failed at the
    /// deadline (clock ms) so the caller retries.
    forwarded: HashMap<u64, (Reply<()>, i64)>,
    was_leader: bool,
    /// Why the last Ready cycle could not persist (a full or failing disk), until one can.
    /// Meanwhile the unpersisted entries stay in Raft's unstable log and every cycle retries
    /// them; new writes are refused with the error (KAFKA_STORAGE_ERROR) instead of piling up.
    persist_failure: Option<String>,
    /// Not ticked: an idle partition whose leader told its followers so (see [`quiesce`]).
    quiesced: bool,
    /// (last index, its term, commit) at the last checkpoint of the log.
    checkpointed: Option<(u64, u64, u64)>,
    /// While leading: when each follower was last caught up, for the ISR.
    isr: Option<IsrTracker>,
    /// While leading: the (epoch, ISR) the metadata log was last seen to record, and its
    /// applied index then (any later record may have changed it: a late report of ours).
    reported: Option<(i32, Vec<i32>, u64)>,
}

/// Kafka's ISR rule over Raft progress: a follower is in sync while it has caught up with
/// the leader's log end within `replica.lag.time.max.ms`. Sampled: a follower whose matched
/// index reached the last index of the previous sample was caught up at that sample's time.
struct IsrTracker {
    term: u64,
    sample_ms: i64,
    sample_index: u64,
    caught_up_ms: BTreeMap<u64, i64>,
}

impl Group {
    fn is_metadata(&self) -> bool {
        self.id == GroupId::Metadata
    }
}

/// What a group's Raft state machine says of itself (for tests, metrics and admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    /// The current term (Kafka's leader epoch).
    pub term: u64,
    /// Raft id of the leader this node knows of, 0 for none.
    pub leader: u64,
    pub is_leader: bool,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index in the log (persisted or not).
    pub last_index: u64,
    /// Idle and not ticked (see the module's notes on quiescence).
    pub quiesced: bool,
}

/// Every Raft group of one broker and the logic that drives them. Nothing here reads the
/// wall clock or blocks on a socket: the caller decides when commands arrive, when time
/// ticks and when Ready cycles run.
pub struct Driver {
    config: ReplicationConfig,
    raft_id: u64,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    logger: slog::Logger,
    metadata: Group,
    /// Ordered, so that every Ready cycle visits groups (and sends) in the same order.
    partitions: BTreeMap<(String, i32), Group>,
    transport: Box<dyn Transport>,
    /// This Ready cycle's outgoing messages, by destination; sent once the cycle ends.
    outbox: BTreeMap<u64, Vec<Envelope>>,
    next_retention_ms: i64,
    next_checkpoint_ms: i64,
    next_metrics_ms: i64,
    /// Tokens of forwarded metadata proposals.
    next_token: u64,
    next_leader_report_ms: i64,
    next_rebalance_ms: i64,
    /// The leader report proposed and not yet applied, with its deadline (clock ms).
    leader_report: Option<(oneshot::Receiver<Result<(), ReplicationError>>, i64)>,
    /// While this broker leads the metadata group: when each voter was last heard from.
    heard_ms: BTreeMap<u64, i64>,
    /// While this broker leads the metadata group: when each replica last held its whole log.
    caught_up_ms: BTreeMap<u64, i64>,
    fence_report: Option<(oneshot::Receiver<Result<(), ReplicationError>>, i64)>,
    /// Partitions that may have a Ready (stepped, proposed to, ticked into action, woken):
    /// a Ready cycle visits only these, not thousands of idle groups.
    dirty: BTreeSet<(String, i32)>,
    /// The other brokers this one shares a group with, by Raft id.
    peers: BTreeMap<u64, PeerLiveness>,
    ticks: u64,
    /// A checkpoint pass under way: the last partition checkpointed (`None`: none yet).
    checkpoint_from: Option<Option<(String, i32)>>,
    /// Raft messages for partitions not hosted here yet, with when they came (clock ms):
    /// a new partition's preferred leader campaigns the moment it applies the topic's
    /// record, often before its followers have applied it. Stepped once the group opens,
    /// so the first election takes a round trip instead of an election timeout.
    unhosted: BTreeMap<(String, i32), Vec<(i64, Message)>>,
    unhosted_count: usize,
    /// Bytes of entries in `unhosted`.
    unhosted_bytes: usize,
}

/// Messages kept for partitions not hosted yet, at most.
const MAX_UNHOSTED: usize = 4096;
/// Bytes of entries they may carry, at most (an append carries up to 1 MiB).
const MAX_UNHOSTED_BYTES: usize = 16 * 1024 * 1024;
/// How long such a message is kept.
const UNHOSTED_MS: i64 = 2_000;

/// Whether another broker is alive, as far as quiesced groups care: it is while batches (at
/// least the empty one every broker sends each peer every tick) keep coming from it.
#[derive(Debug, Clone, Copy, Default)]
struct PeerLiveness {
    /// Clock ms of the last batch from it.
    last_heard: Option<i64>,
    live: bool,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("node_id", &self.config.node_id)
            .field("partitions", &self.partitions.len())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

fn raft_err(e: raft::Error) -> ReplicationError {
    ReplicationError::Raft(e.to_string())
}

/// Kafka broker id -> Raft id (Raft ids start at 1).
pub fn raft_id(node_id: i32) -> u64 {
    node_id as u64 + 1
}

/// Raft id -> Kafka broker id (-1 for "none").
fn broker_id(raft_id: u64) -> i32 {
    if raft_id == 0 {
        -1
    } else {
        (raft_id - 1) as i32
    }
}
/// The offset just past entry `index` (the high watermark once it is committed).
fn offset_end_of_entry(log: &Log, index: u64) -> Option<u64> {
    let entry = log.entries(index, index + 1, 0).ok()?.pop()?;
    let h = BatchHeader::parse(&entry.data).ok()?;
    Some(h.next_offset().max(0) as u64)
}

/// The high watermark a replica restarts with: the end of its last committed entry.
fn recovered_high_watermark(log: &Log, commit: u64) -> u64 {
    if commit >= log.first_entry_index() {
        if let Some(end) = offset_end_of_entry(log, commit) {
            return end;
        }
    }
    log.log_start_offset()
}

pub(crate) fn start(
    config: ReplicationConfig,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    transport: Box<dyn Transport>,
) -> Result<Vec<std::thread::JoinHandle<()>>, ReplicationError> {
    let mut driver = Driver::open_shared(config, shared, Arc::new(SystemClock), transport)?;
    let stop = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let shared = driver.shared.clone();
        let config = driver.config.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("log-cleaner".into())
            .spawn(move || run_cleaner(&shared, &config, &stop))
            .map_err(|e| ReplicationError::Io(format!("spawn cleaner: {e}")))?
    };
    let raft = std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || {
            // Stops the cleaner however the driver ends, a panic included.
            let _stop = StopOnDrop(stop);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run(rx)));
            if outcome.is_err() {
                // Without its driver the broker cannot make progress; exit so the supervisor
                // restarts it and recovery brings every log back.
                tracing::error!(
                    "the raft driver panicked; exiting (status 70) so the broker restarts"
                );
                std::process::exit(70);
            }
        })
        .map_err(|e| ReplicationError::Io(format!("spawn driver: {e}")))?;
    Ok(vec![raft, cleaner])
}

fn new_group(
    config: &ReplicationConfig,
    id: GroupId,
    raft_id: u64,
    raft_log: RaftLog,
    applied: u64,
    logger: &slog::Logger,
) -> Result<Group, ReplicationError> {
    let single_voter = raft::Storage::initial_state(&raft_log)
        .map_err(raft_err)?
        .conf_state
        .voters
        == vec![raft_id];
    let election_tick = config.election_tick.max(2);
    let cfg = raft::Config {
        id: raft_id,
        election_tick,
        heartbeat_tick: 1,
        // raft-rs draws each election timeout from [min, max) with the thread's RNG; a
        // deterministic simulation pins it and jitters by ticking nodes unevenly instead.
        min_election_tick: election_tick,
        max_election_tick: if config.randomized_election_timeout {
            2 * election_tick
        } else {
            election_tick + 1
        },
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        max_committed_size_per_ready: 16 * 1024 * 1024,
        ..raft::Config::default()
    };
    let mut node = RawNode::new(&cfg, raft_log, logger).map_err(raft_err)?;
    // A single voter needs nobody's vote: it leads at once, as a single broker always has.
    if single_voter {
        node.campaign().map_err(raft_err)?;
    }
    Ok(Group {
        id,
        node,
        in_flight: HashMap::new(),
        markers_in_flight: HashMap::new(),
        pending: BTreeMap::new(),
        forwarded: HashMap::new(),
        was_leader: false,
        isr: None,
        reported: None,
        quiesced: false,
        checkpointed: None,
        persist_failure: None,
    })
}
/// Applies every committed metadata record in the log (startup).
fn replay_metadata(
    shared: &Shared,
    replica: &Replica,
    commit: u64,
) -> Result<(), ReplicationError> {
    let log = replica.log();
    let mut index = log.first_entry_index();
    let mut metadata = shared.metadata.write().unwrap_or_else(|e| e.into_inner());
    while index <= commit {
        let entries = log.entries(index, commit + 1, 4 * 1024 * 1024)?;
        if entries.is_empty() {
            break;
        }
        for e in &entries {
            for record in metadata_records(&e.data) {
                metadata.apply(&record);
            }
            metadata.applied_index = e.index;
        }
        index = entries.last().map_or(commit + 1, |e| e.index + 1);
    }
    Ok(())
}

/// How long a follower waits for a forwarded metadata proposal to come back applied.
const FORWARD_TIMEOUT_MS: i64 = 5_000;

/// How long a joining broker waits for its record before handing it to the next voter
/// (the first may have had no leader to pass it to).
const JOIN_RETRY_MS: i64 = 1_000;

/// How often leaders refresh their ISR and report changes to the metadata log.
const LEADER_REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// Partitions in one leader report at most (the rest go in the next).
const MAX_LEADER_REPORT: usize = 5_000;

/// The (proposer Raft id, token) a follower put in the key of a metadata record it forwarded.
fn proposal_token(data: &[u8]) -> Option<(u64, u64)> {
    let h = BatchHeader::parse(data).ok()?;
    if h.is_control() {
        return None;
    }
    let body = batch::records_body(data, &h, 64 * 1024 * 1024).ok()?;
    let records = batch::parse_records(&body, h.records_count).ok()?;
    let key = records.first()?.key?;
    let proposer = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let token = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((proposer, token))
}

/// The metadata records in a stored metadata batch (none for control batches).
fn metadata_records(data: &[u8]) -> Vec<MetadataRecord> {
    let Ok(h) = BatchHeader::parse(data) else {
        return Vec::new();
    };
    if h.is_control() {
        return Vec::new();
    }
    let Ok(body) = batch::records_body(data, &h, 64 * 1024 * 1024) else {
        return Vec::new();
    };
    let Ok(records) = batch::parse_records(&body, h.records_count) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| r.value)
        .filter_map(|v| MetadataRecord::decode(v).ok())
        .collect()
}

impl Driver {
    /// Opens the metadata log (replaying what is committed) and every replica the metadata
    /// places on this broker, each group's Raft state recovered from its log.
    pub fn open(
        config: ReplicationConfig,
        clock: Arc<dyn Clock>,
        transport: Box<dyn Transport>,
    ) -> Result<Driver, ReplicationError> {
        Driver::open_shared(config, Arc::new(Shared::default()), clock, transport)
    }

    pub(crate) fn open_shared(
        config: ReplicationConfig,
        shared: Arc<Shared>,
        clock: Arc<dyn Clock>,
        transport: Box<dyn Transport>,
    ) -> Result<Driver, ReplicationError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", config.data_dir.display())))?;
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let raft_id = raft_id(config.node_id);
        // The metadata log: replay what is committed, then join its group.
        let dir = config.data_dir.join(format!("{METADATA_TOPIC}-0"));
        let meta_config = LogConfig {
            retention_ms: -1,
            segment_bytes: 64 * 1024 * 1024,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, meta_config, clock.clone())?;
        let replica = Arc::new(Replica::new(
            METADATA_TOPIC.to_string(),
            0,
            Uuid::nil(),
            log,
        ));
        let voters: Vec<u64> = if config.metadata_voters.is_empty() {
            vec![raft_id]
        } else {
            config
                .metadata_voters
                .iter()
                .map(|&v| self::raft_id(v))
                .collect()
        };
        let raft_log = RaftLog::open(replica.clone(), &dir, &voters, config.fsync, clock.clone())?;
        let commit = raft_log
            .hard_state()
            .commit
            .min(replica.log().next_entry_index().saturating_sub(1));
        replay_metadata(&shared, &replica, commit)?;
        replica.reset_high_watermark(recovered_high_watermark(&replica.log(), commit));
        let metadata = new_group(
            &config,
            GroupId::Metadata,
            raft_id,
            raft_log,
            commit,
            &logger,
        )?;
        let now = clock.now_ms();
        let mut driver = Driver {
            next_retention_ms: now + duration_ms(config.retention_check_interval),
            next_checkpoint_ms: now + duration_ms(config.checkpoint_interval),
            next_metrics_ms: now,
            // Unique across restarts: a proposal forwarded before a crash may commit after it.
            next_token: (now.max(0) as u64) << 20,
            next_leader_report_ms: now,
            next_rebalance_ms: now + duration_ms(config.leader_imbalance_check_interval),
            leader_report: None,
            heard_ms: BTreeMap::new(),
            caught_up_ms: BTreeMap::new(),
            fence_report: None,
            config,
            raft_id,
            shared,
            clock,
            logger,
            metadata,
            partitions: BTreeMap::new(),
            transport,
            outbox: BTreeMap::new(),
            dirty: BTreeSet::new(),
            peers: BTreeMap::new(),
            ticks: 0,
            checkpoint_from: None,
            unhosted: BTreeMap::new(),
            unhosted_count: 0,
            unhosted_bytes: 0,
        };
        let me = driver.raft_id;
        let voters: Vec<u64> = driver
            .metadata
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&v| v != me)
            .collect();
        for v in voters {
            driver.peers.entry(v).or_default();
        }
        driver.sync_peer_addresses();
        driver.publish_quorum(now);
        let topics: Vec<TopicMetadata> = driver.metadata_read().topics.values().cloned().collect();
        for topic in topics {
            driver.open_partitions(&topic, 0)?;
        }
        Ok(driver)
    }

    /// This broker's Raft id (Kafka broker id + 1).
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// The groups this broker hosts: the metadata group first, then partitions in order.
    pub fn groups(&self) -> Vec<GroupId> {
        std::iter::once(GroupId::Metadata)
            .chain(
                self.partitions
                    .keys()
                    .map(|(t, p)| GroupId::partition(t, *p)),
            )
            .collect()
    }

    fn group(&self, id: &GroupId) -> Option<&Group> {
        match id {
            GroupId::Metadata => Some(&self.metadata),
            GroupId::Partition { topic, partition } => {
                self.partitions.get(&(topic.clone(), *partition))
            }
        }
    }

    pub fn group_state(&self, id: &GroupId) -> Option<GroupState> {
        let g = self.group(id)?;
        let raft = &g.node.raft;
        Some(GroupState {
            term: raft.term,
            leader: raft.leader_id,
            is_leader: raft.state == StateRole::Leader,
            commit: raft.raft_log.committed,
            last_index: raft.raft_log.last_index(),
            quiesced: g.quiesced,
        })
    }

    /// The replica (log, high watermark) of a group this broker hosts.
    pub fn replica(&self, id: &GroupId) -> Option<Arc<Replica>> {
        self.group(id).map(|g| g.node.store().replica().clone())
    }

    /// The metadata as applied here.
    pub fn metadata(&self) -> ClusterMetadata {
        self.metadata_read().clone()
    }

    /// Proposes batches to a partition this broker leads; answers as
    /// [`Replication::produce`](crate::Replication::produce) does (`acks` 1 or -1).
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        acks: i16,
    ) -> oneshot::Receiver<Result<ProduceAck, ReplicationError>> {
        let (reply, rx) = oneshot::channel();
        self.handle(Command::Produce {
            topic: topic.to_string(),
            partition,
            batches,
            acks,
            origin: Origin::Client,
            guard: None,
            reply: Some(reply),
        });
        rx
    }

    /// Proposes a metadata record; answers once it is committed and applied here.
    pub fn propose_metadata(
        &mut self,
        record: MetadataRecord,
    ) -> oneshot::Receiver<Result<(), ReplicationError>> {
        let (reply, rx) = oneshot::channel();
        self.handle(Command::Metadata { record, reply });
        rx
    }

    /// Feeds messages from broker `from` (a Raft id) to their groups. Messages of groups
    /// this broker does not host (yet) are dropped: Raft sends them again. Any batch, even
    /// an empty one, shows that `from` is alive.
    pub fn step_raft(&mut self, from: u64, envelopes: Vec<Envelope>) {
        let me = self.raft_id;
        self.heard_from(from);
        for Envelope { group, message } in envelopes {
            if message.to != me || message.from != from {
                tracing::debug!(from, to = message.to, claimed = message.from, %group, "dropping a misaddressed raft message");
                continue;
            }
            let GroupId::Partition { topic, partition } = group else {
                if let Err(e) = self.metadata.node.step(message) {
                    tracing::debug!(from, group = %GroupId::Metadata, error = %e, "raft message refused");
                }
                continue;
            };
            let key = (topic, partition);
            let Some(g) = self.partitions.get_mut(&key) else {
                tracing::trace!(
                    from,
                    topic = key.0,
                    partition,
                    "raft message for a group not hosted here (yet)"
                );
                let bytes = entry_bytes(&message);
                if self.unhosted_count < MAX_UNHOSTED
                    && self.unhosted_bytes + bytes <= MAX_UNHOSTED_BYTES
                {
                    self.unhosted_count += 1;
                    self.unhosted_bytes += bytes;
                    let now = self.clock.now_ms();
                    self.unhosted.entry(key).or_default().push((now, message));
                }
                continue;
            };
            let quiesce = is_quiesce_heartbeat(&message);
            let (kind, term, commit) = (message.get_msg_type(), message.term, message.commit);
            if g.quiesced
                && g.node.raft.leader_id == from
                && matches!(
                    kind,
                    MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
                )
            {
                // Its leader campaigns: it restarted (faster than the liveness timeout) and
                // leads no more, so this follower must not reject it as "in lease".
                wake(g);
            }
            if let Err(e) = g.node.step(message) {
                tracing::debug!(from, topic = key.0, partition, error = %e, "raft message refused");
            }
            if quiesce {
                g.quiesced = follower_may_quiesce(g, from, term, commit);
            } else if g.quiesced {
                // A caught-up follower answering the heartbeat that quiesced its leader
                // leaves it quiesced; anything else is activity.
                let answer = kind == MessageType::MsgHeartbeatResponse
                    && g.node.raft.state == StateRole::Leader
                    && !g.node.has_ready();
                g.quiesced = answer;
            }
            self.dirty.insert(key);
        }
    }

    /// One Raft tick of every group that is not quiesced (heartbeats, election timeouts);
    /// idle partitions whose followers are all caught up quiesce instead, and quiesced ones
    /// wake when a broker they depend on stops being heard from. Every peer gets a batch in
    /// this cycle, if only an empty one: that is what tells it this broker is alive.
    pub fn tick(&mut self) {
        self.metadata.node.tick();
        let now = self.clock.now_ms();
        if self.unhosted_count > 0 {
            self.unhosted.retain(|_, messages| {
                messages.retain(|(at, _)| now - at < UNHOSTED_MS);
                !messages.is_empty()
            });
            self.unhosted_count = self.unhosted.values().map(Vec::len).sum();
            self.unhosted_bytes = self
                .unhosted
                .values()
                .flatten()
                .map(|(_, m)| entry_bytes(m))
                .sum();
        }
        let timeout = self.liveness_timeout_ms();
        for p in self.peers.values_mut() {
            p.live = p.last_heard.is_some_and(|t| now - t < timeout);
        }
        let me = self.raft_id;
        let peers = &self.peers;
        let live = |id: u64| id == me || peers.get(&id).is_some_and(|p| p.live);
        self.ticks += 1;
        // Once a second, quiesced groups are looked at too, so that one changed where nobody
        // marked it dirty still gets its Ready cycle.
        let sweep = self.ticks % 10 == 0;
        for (key, g) in self.partitions.iter_mut() {
            if g.quiesced {
                if !must_wake(g, &live) {
                    if sweep && g.node.has_ready() {
                        self.dirty.insert(key.clone());
                    }
                    continue;
                }
                wake(g);
            }
            if leader_may_quiesce(g, &live) {
                quiesce(g, &live, &mut self.outbox);
                continue;
            }
            if g.node.tick() || g.node.has_ready() {
                self.dirty.insert(key.clone());
            }
        }
        for &id in self.peers.keys() {
            self.outbox.entry(id).or_default();
        }
    }

    /// How long a broker may stay silent before quiesced groups stop counting on it: one
    /// election timeout, so that a quiesced follower notices a dead leader as fast as a
    /// ticking one would.
    fn liveness_timeout_ms(&self) -> i64 {
        duration_ms(self.config.tick).saturating_mul(self.config.election_tick.max(2) as i64)
    }

    /// Records a batch from `from`; a broker heard from again wakes the quiesced groups it
    /// follows here, so their leaders catch it up (or learn it moved on).
    fn heard_from(&mut self, from: u64) {
        let now = self.clock.now_ms();
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.last_heard = Some(now);
        if peer.live {
            return;
        }
        peer.live = true;
        for (key, g) in self.partitions.iter_mut() {
            if g.quiesced
                && g.node.raft.state == StateRole::Leader
                && g.node.raft.prs().conf().voters().contains(from)
            {
                g.quiesced = false;
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Retention, checkpoints and metrics, each when its interval (by the clock) has passed.
    pub fn run_timers(&mut self) {
        let now = self.clock.now_ms();
        // Forwarded proposals lost with a leader change fail, so their callers retry.
        let expired: Vec<u64> = self
            .metadata
            .forwarded
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some((reply, _)) = self.metadata.forwarded.remove(&t) {
                let _ = reply.send(Err(ReplicationError::NotLeaderOrFollower));
            }
        }
        if due(
            &mut self.next_retention_ms,
            now,
            self.config.retention_check_interval,
        ) {
            self.apply_retention();
        }
        if due(&mut self.next_leader_report_ms, now, LEADER_REPORT_INTERVAL) {
            self.report_leaders(now);
            self.fence_brokers(now);
            self.add_learners();
            self.publish_quorum(now);
        }
        if self.config.auto_leader_rebalance
            && due(
                &mut self.next_rebalance_ms,
                now,
                self.config.leader_imbalance_check_interval,
            )
        {
            self.rebalance_leaders();
        }
        if due(&mut self.next_metrics_ms, now, Duration::from_secs(5)) {
            self.publish_metrics();
        }
        if due(
            &mut self.next_checkpoint_ms,
            now,
            self.config.checkpoint_interval,
        ) {
            // A pass over every group, a few per call: checkpoints fsync, and thousands of
            // them at once would stall the driver past an election timeout.
            self.checkpoint_from = Some(None);
        }
        if let Some(after) = self.checkpoint_from.take() {
            self.checkpoint_from = self.checkpoint_some(after, CHECKPOINTS_PER_CALL);
        }
    }

    /// Checkpoints up to `budget` partitions after `after` (the metadata group first, with
    /// `None`); returns where the pass stopped, or `None` once it is done.
    fn checkpoint_some(
        &mut self,
        after: Option<(String, i32)>,
        budget: usize,
    ) -> Option<Option<(String, i32)>> {
        use std::ops::Bound;
        let start = match &after {
            None => {
                checkpoint(&mut self.metadata);
                Bound::Unbounded
            }
            Some(key) => Bound::Excluded(key.clone()),
        };
        let mut last = None;
        for (key, g) in self
            .partitions
            .range_mut((start, Bound::Unbounded))
            .take(budget)
        {
            checkpoint(g);
            last = Some(key.clone());
        }
        last.map(Some)
    }

    /// Updates the ISR of every partition this broker leads, and proposes to the metadata
    /// log the leaders and ISRs that differ from what it records (one record, one in flight
    /// at a time; anything lost is simply found different again next time).
    fn report_leaders(&mut self, now: i64) {
        if let Some((rx, deadline)) = &mut self.leader_report {
            let done = !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            if done || *deadline <= now {
                self.leader_report = None;
            }
        }
        let lag_max = self.config.replica_lag_time_max_ms;
        let me = self.raft_id;
        let mut changed = Vec::new();
        {
            let metadata = self
                .shared
                .metadata
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for (key, g) in self.partitions.iter_mut() {
                if g.node.raft.state != StateRole::Leader {
                    g.reported = None;
                    if g.isr.take().is_some() {
                        g.node.store().replica().set_isr(Vec::new());
                    }
                    continue;
                }
                let term = g.node.raft.term;
                let last_index = g.node.raft.raft_log.last_index();
                let tracker = match &mut g.isr {
                    Some(t) if t.term == term => t,
                    _ => {
                        // A new leader starts with every replica in sync, as Kafka's new
                        // leader keeps the ISR it was elected with.
                        let caught_up_ms =
                            g.node.raft.prs().iter().map(|(&id, _)| (id, now)).collect();
                        g.isr.insert(IsrTracker {
                            term,
                            sample_ms: now,
                            sample_index: last_index,
                            caught_up_ms,
                        })
                    }
                };
                for (&id, pr) in g.node.raft.prs().iter() {
                    if id == me || pr.matched >= tracker.sample_index {
                        let at = if id == me { now } else { tracker.sample_ms };
                        let e = tracker.caught_up_ms.entry(id).or_insert(at);
                        *e = (*e).max(at);
                    }
                }
                tracker.sample_ms = now;
                tracker.sample_index = last_index;
                let mut isr: Vec<i32> = vec![broker_id(me)];
                for (&id, &at) in &tracker.caught_up_ms {
                    // A fenced broker leaves every ISR at once, as KRaft's controller does.
                    if id != me
                        && now - at <= lag_max
                        && g.node.raft.prs().get(id).is_some()
                        && !metadata.is_fenced(broker_id(id))
                    {
                        isr.push(broker_id(id));
                    }
                }
                isr[1..].sort_unstable();
                let epoch = i32::try_from(term).unwrap_or(i32::MAX);
                // Unchanged since the metadata log last showed it: nothing to look up (this
                // runs for thousands of idle leaders).
                if g.reported.as_ref().is_some_and(|(e, i, applied)| {
                    *e == epoch && *i == isr && *applied == metadata.applied_index
                }) {
                    continue;
                }
                let replica = g.node.store().replica();
                if replica.isr() != isr {
                    replica.set_isr(isr.clone());
                }
                let recorded = metadata.partition_leaders.get(key);
                let same = recorded.is_some_and(|r| {
                    r.leader == broker_id(me) && r.leader_epoch == epoch && r.isr == isr
                });
                if same {
                    g.reported = Some((epoch, isr, metadata.applied_index));
                } else if changed.len() < MAX_LEADER_REPORT {
                    changed.push(crate::proto::PartitionLeader {
                        topic_id: replica.topic_id.as_bytes().to_vec(),
                        partition: key.1,
                        leader: broker_id(me),
                        leader_epoch: epoch,
                        isr,
                    });
                }
            }
        }
        if changed.is_empty() || self.leader_report.is_some() {
            return;
        }
        let record = crate::proto::metadata_record::Record::PartitionLeaders(
            crate::proto::PartitionLeaders {
                partitions: changed,
            },
        );
        self.leader_report = Some(self.propose_internal(record, now));
    }

    /// The driver's own metadata proposal; the receiver answers once it is applied here.
    fn propose_internal(
        &mut self,
        record: crate::proto::metadata_record::Record,
        now: i64,
    ) -> (oneshot::Receiver<Result<(), ReplicationError>>, i64) {
        let (reply, rx) = oneshot::channel();
        let record = MetadataRecord {
            record: Some(record),
        };
        self.handle(Command::Metadata { record, reply });
        (rx, now + FORWARD_TIMEOUT_MS)
    }

    /// On the metadata leader: fences voters not heard from for `broker.session.timeout.ms`
    /// and unfences them when they are heard again (one change in flight at a time).
    fn fence_brokers(&mut self, now: i64) {
        if let Some((rx, deadline)) = &mut self.fence_report {
            let done = !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            if done || *deadline <= now {
                self.fence_report = None;
            }
        }
        if self.metadata.node.raft.state != StateRole::Leader {
            self.heard_ms.clear();
            return;
        }
        let me = self.raft_id;
        for (&id, pr) in self.metadata.node.raft.prs().iter() {
            if id == me || pr.recent_active {
                self.heard_ms.insert(id, now);
            } else {
                // A new leader gives everyone a full session before fencing.
                self.heard_ms.entry(id).or_insert(now);
            }
        }
        if self.fence_report.is_some() {
            return;
        }
        let change = {
            let md = self.metadata_read();
            self.heard_ms.iter().find_map(|(&id, &at)| {
                let node = broker_id(id);
                let fenced = now - at > self.config.broker_session_timeout_ms;
                (fenced != md.is_fenced(node)).then_some((node, fenced))
            })
        };
        if let Some((node_id, fenced)) = change {
            tracing::info!(
                node_id,
                fenced,
                "{} broker {node_id}",
                if fenced { "fencing" } else { "unfencing" }
            );
            let record =
                crate::proto::metadata_record::Record::FenceBroker(crate::proto::FenceBroker {
                    node_id,
                    fenced,
                });
            self.fence_report = Some(self.propose_internal(record, now));
        }
    }

    /// `auto.leader.rebalance.enable`: when more than
    /// `leader.imbalance.per.broker.percentage` of the partitions whose preferred leader
    /// (first replica) is this broker are led elsewhere, asks their leaders to hand
    /// leadership back (a Raft leader transfer, which the leader performs once this replica
    /// has caught up).
    fn rebalance_leaders(&mut self) {
        let me = self.config.node_id;
        let mut preferred = 0usize;
        let mut imbalanced = 0usize;
        let mut elsewhere = Vec::new();
        let metadata = self.metadata_read();
        for (key, g) in &self.partitions {
            let first = metadata
                .topics
                .get(&key.0)
                .and_then(|t| t.partitions.get(key.1 as usize))
                .and_then(|r| r.first().copied());
            if first != Some(me) {
                continue;
            }
            preferred += 1;
            let leader = g.node.raft.leader_id;
            // Only once the leader counts this replica in sync (Kafka elects a preferred
            // leader only from the ISR): a transfer to a lagging replica would stall writes
            // until it timed out.
            let in_sync = metadata
                .partition_leaders
                .get(key)
                .is_some_and(|l| l.leader == broker_id(leader) && l.isr.contains(&me));
            if g.node.raft.state != StateRole::Leader && leader != raft::INVALID_ID {
                imbalanced += 1;
                if in_sync {
                    elsewhere.push(key.clone());
                }
            }
        }
        drop(metadata);
        if elsewhere.is_empty()
            || imbalanced * 100
                <= preferred * self.config.leader_imbalance_per_broker_percentage as usize
        {
            return;
        }
        tracing::info!(
            partitions = elsewhere.len(),
            preferred,
            "leader imbalance: asking for preferred leadership back"
        );
        for key in elsewhere {
            if let Some(g) = self.partitions.get_mut(&key) {
                g.node.transfer_leader(self.raft_id);
                g.quiesced = false;
                self.dirty.insert(key);
            }
        }
    }

    /// On the metadata leader: a broker that registered a Raft address but is in no
    /// membership of the metadata group (it joined after the cluster formed, not among the
    /// controller voters) is added as a learner, so that it receives the metadata log as
    /// KRaft's brokers observe theirs. One change at a time, as Raft requires.
    fn add_learners(&mut self) {
        let raft = &self.metadata.node.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let conf = raft.prs().conf();
        let joining = self
            .metadata_read()
            .brokers
            .values()
            .filter(|b| !b.raft_address.is_empty())
            .map(|b| raft_id(b.node_id))
            .find(|&id| !conf.voters().contains(id) && !conf.learners().contains(&id));
        let Some(id) = joining else {
            return;
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = id;
        match self.metadata.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => tracing::info!(
                node_id = broker_id(id),
                "broker {} joined: adding it to the metadata group as a learner",
                broker_id(id)
            ),
            Err(e) => {
                tracing::debug!(node_id = broker_id(id), error = %e, "could not propose a learner")
            }
        }
    }

    /// Publishes the metadata group's state for DescribeQuorum: on the leader, every voter's
    /// and learner's progress (heard from: Raft's `recent_active`, sampled here; caught up:
    /// holding the leader's last entry).
    fn publish_quorum(&mut self, now: i64) {
        let raft = &self.metadata.node.raft;
        let leads = raft.state == StateRole::Leader;
        if !leads {
            self.caught_up_ms.clear();
        }
        let mut state = crate::QuorumState {
            leader_id: broker_id(raft.leader_id),
            leader_epoch: i32::try_from(raft.term).unwrap_or(i32::MAX),
            high_watermark: raft.raft_log.committed as i64,
            is_leader: leads,
            voters: Vec::new(),
            observers: Vec::new(),
        };
        if leads {
            let last = raft.raft_log.last_index();
            let conf = raft.prs().conf();
            for (&id, pr) in raft.prs().iter() {
                let matched = if id == self.raft_id { last } else { pr.matched };
                if matched >= last {
                    self.caught_up_ms.insert(id, now);
                }
                let replica = crate::QuorumReplica {
                    node_id: broker_id(id),
                    log_end_offset: matched as i64,
                    last_fetch_ms: if id == self.raft_id {
                        now
                    } else {
                        self.heard_ms.get(&id).copied().unwrap_or(-1)
                    },
                    last_caught_up_ms: self.caught_up_ms.get(&id).copied().unwrap_or(-1),
                };
                if conf.voters().contains(id) {
                    state.voters.push(replica);
                } else {
                    state.observers.push(replica);
                }
            }
            state.voters.sort_by_key(|r| r.node_id);
            state.observers.sort_by_key(|r| r.node_id);
        }
        *self
            .shared
            .quorum
            .write()
            .unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Tells the transport where every registered broker listens for Raft traffic (brokers
    /// that joined later are known only from the metadata log).
    fn sync_peer_addresses(&mut self) {
        let me = self.raft_id;
        let addresses: Vec<(u64, String)> = self
            .metadata_read()
            .brokers
            .values()
            .filter(|b| !b.raft_address.is_empty() && raft_id(b.node_id) != me)
            .map(|b| (raft_id(b.node_id), b.raft_address.clone()))
            .collect();
        for (id, address) in addresses {
            self.transport.set_peer_address(id, &address);
        }
    }

    fn metadata_read(&self) -> std::sync::RwLockReadGuard<'_, ClusterMetadata> {
        self.shared
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the local replicas of `topic`'s partitions from `from` on.
    fn open_partitions(
        &mut self,
        topic: &TopicMetadata,
        from: usize,
    ) -> Result<(), ReplicationError> {
        let log_config = self.metadata_read().log_config(topic);
        for (p, replicas) in topic.partitions.iter().enumerate().skip(from) {
            if !replicas.contains(&self.config.node_id) {
                continue;
            }
            let partition = p as i32;
            let key = (topic.name.clone(), partition);
            if self.partitions.contains_key(&key) {
                continue;
            }
            let dir = self
                .config
                .data_dir
                .join(runnel_storage::partition_dir_name(&topic.name, partition));
            let log = Log::open(&dir, log_config.clone(), self.clock.clone())?;
            let replica = Arc::new(Replica::new(topic.name.clone(), partition, topic.id, log));
            let voters: Vec<u64> = replicas.iter().map(|&r| raft_id(r)).collect();
            let raft_log = RaftLog::open(
                replica.clone(),
                &dir,
                &voters,
                self.config.fsync,
                self.clock.clone(),
            )?;
            let commit = raft_log
                .hard_state()
                .commit
                .min(replica.log().next_entry_index().saturating_sub(1));
            let hw = recovered_high_watermark(&replica.log(), commit);
            replica.reset_high_watermark(hw);
            // Transactions decided before the restart stop holding the LSO back.
            replica.log_mut().on_high_watermark(hw);
            let mut group = new_group(
                &self.config,
                GroupId::partition(&topic.name, partition),
                self.raft_id,
                raft_log,
                commit,
                &self.logger,
            )?;
            // A new partition's preferred leader (its first replica) campaigns at once, so
            // leaders start where placement spread them, without waiting an election
            // timeout. Never on a restart (term > 0): that would only disturb a live leader.
            if replicas.len() > 1
                && replicas.first() == Some(&self.config.node_id)
                && group.node.raft.term == 0
            {
                if let Err(e) = group.node.campaign() {
                    tracing::debug!(topic = topic.name, partition, error = %e, "preferred leader could not campaign");
                }
            }
            // A single voter leads as soon as it campaigns: say so now, so requests that follow
            // CreateTopics's answer find a leader instead of NOT_LEADER_OR_FOLLOWER.
            if group.node.raft.state == StateRole::Leader {
                let term = i32::try_from(group.node.raft.term).unwrap_or(i32::MAX);
                replica.set_leader(self.config.node_id, term);
            }
            for &v in &voters {
                if v != self.raft_id {
                    self.peers.entry(v).or_default();
                }
            }
            if let Some(early) = self.unhosted.remove(&key) {
                self.unhosted_count -= early.len();
                self.unhosted_bytes -= early.iter().map(|(_, m)| entry_bytes(m)).sum::<usize>();
                for (_, m) in early {
                    if let Err(e) = group.node.step(m) {
                        tracing::debug!(topic = topic.name, partition, error = %e, "early raft message refused");
                    }
                }
            }
            self.partitions.insert(key.clone(), group);
            self.dirty.insert(key.clone());
            self.shared
                .replicas
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, replica);
        }
        Ok(())
    }

    /// The broker's driver thread: commands as they come, a tick every `config.tick`, a
    /// Ready cycle after each wake-up, timers. Returns on shutdown, every log checkpointed.
    fn run(&mut self, rx: Receiver<Command>) {
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        'run: loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        break 'run;
                    }
                    while let Ok(cmd) = rx.try_recv() {
                        if !self.handle(cmd) {
                            break 'run;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break 'run,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick = now + tick;
            }
            self.process_ready();
            self.run_timers();
        }
        self.checkpoint_all();
        tracing::info!("raft driver stopped; logs checkpointed");
    }

    /// Handles one command; false on shutdown.
    pub(crate) fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Shutdown => return false,
            Command::Raft { from, envelopes } => self.step_raft(from, envelopes),
            Command::Produce {
                topic,
                partition,
                batches,
                acks,
                origin,
                guard,
                reply,
            } => {
                let key = (topic, partition);
                let Some(group) = self.partitions.get_mut(&key) else {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ReplicationError::UnknownTopicOrPartition));
                    }
                    return true;
                };
                if group.node.raft.state != StateRole::Leader {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ReplicationError::NotLeaderOrFollower));
                    }
                    return true;
                }
                if let Some(failure) = &group.persist_failure {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ReplicationError::Io(failure.clone())));
                    }
                    return true;
                }
                let count = batches.len() as u64;
                let headers: Vec<Option<BatchHeader>> =
                    batches.iter().map(|b| BatchHeader::parse(b).ok()).collect();
                let checked = match origin {
                    Origin::Client => check_transactions(group, &headers, guard)
                        .and_then(|()| check_sequences(group, &headers)),
                    Origin::Coordinator => check_markers(group, &batches, &headers),
                };
                match checked {
                    Ok(None) => {}
                    Ok(Some(ack)) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(ack));
                        }
                        return true;
                    }
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return true;
                    }
                }
                let first_index = group.node.raft.raft_log.last_index() + 1;
                if origin == Origin::Coordinator {
                    for (i, (data, h)) in batches.iter().zip(&headers).enumerate() {
                        let Some(h) = h else { continue };
                        if batch::parse_end_txn_marker(data).is_some() {
                            // A marker ends the producer's verified transaction here.
                            group
                                .node
                                .store()
                                .replica()
                                .clear_verification_guard(h.producer_id);
                            group
                                .markers_in_flight
                                .insert(h.producer_id, (h.producer_epoch, first_index + i as u64));
                        }
                    }
                }
                for (i, h) in headers.iter().enumerate() {
                    if origin == Origin::Coordinator {
                        break;
                    }
                    if let Some(h) = h.filter(|h| h.has_producer_id()) {
                        group
                            .in_flight
                            .entry(h.producer_id)
                            .or_default()
                            .push(InFlight {
                                epoch: h.producer_epoch,
                                first_seq: h.base_sequence,
                                last_seq: runnel_storage::producer_state::last_sequence(&h),
                                index: first_index + i as u64,
                            });
                    }
                }
                group.quiesced = false;
                self.dirty.insert(key);
                for b in batches {
                    if let Err(e) = group.node.propose(Vec::new(), b.to_vec()) {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(match e {
                                raft::Error::ProposalDropped => {
                                    ReplicationError::NotLeaderOrFollower
                                }
                                other => raft_err(other),
                            }));
                        }
                        return true;
                    }
                }
                if let Some(reply) = reply {
                    let last = group.node.raft.raft_log.last_index();
                    group.pending.insert(
                        last,
                        Pending::Produce {
                            first_index: last + 1 - count,
                            acks,
                            reply,
                        },
                    );
                }
            }
            Command::DeleteRecords {
                topic,
                partition,
                offset,
                reply,
            } => self.delete_records(&topic, partition, offset, reply),
            Command::Metadata { record, reply } => {
                let value = Bytes::from(record.encode_to_vec());
                let group = &mut self.metadata;
                let leads = group.node.raft.state == StateRole::Leader;
                // A follower's proposal travels to the leader inside raft-rs; its record key
                // (this broker's Raft id and a token) lets it recognise its record on apply.
                let token = (!leads).then(|| {
                    self.next_token += 1;
                    self.next_token
                });
                let key = token.map(|t| {
                    let mut k = Vec::with_capacity(16);
                    k.extend_from_slice(&self.raft_id.to_be_bytes());
                    k.extend_from_slice(&t.to_be_bytes());
                    Bytes::from(k)
                });
                let rec = NewRecord {
                    timestamp: self.clock.now_ms(),
                    key,
                    value: Some(value),
                    headers: Vec::new(),
                };
                let data = match batch::build_batch(&[rec], &BatchOptions::default()) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return true;
                    }
                };
                if let Some(token) = token {
                    if group.node.raft.leader_id == raft::INVALID_ID {
                        let me = self.raft_id;
                        let conf = group.node.raft.prs().conf();
                        let member = conf.voters().contains(me) || conf.learners().contains(&me);
                        let voters: Vec<u64> = conf.voters().ids().iter().collect();
                        if member || voters.is_empty() {
                            let _ = reply.send(Err(ReplicationError::NotLeaderOrFollower));
                            return true;
                        }
                        // A broker joining the cluster is in no membership yet, so nobody
                        // sends it anything and it knows no leader: it hands its record to a
                        // voter (another one each attempt), whose Raft passes it on to the
                        // leader. It learns the outcome once it receives the log as a
                        // learner (see `add_learners`).
                        let to = voters[(token % voters.len() as u64) as usize];
                        let entry = Entry {
                            data: data.clone(),
                            ..Default::default()
                        };
                        let mut m = Message::default();
                        m.set_msg_type(MessageType::MsgPropose);
                        m.to = to;
                        m.from = me;
                        m.set_entries(vec![entry].into());
                        self.outbox.entry(to).or_default().push(Envelope {
                            group: GroupId::Metadata,
                            message: m,
                        });
                        let deadline = self.clock.now_ms() + JOIN_RETRY_MS;
                        group.forwarded.insert(token, (reply, deadline));
                        return true;
                    }
                    match group.node.propose(Vec::new(), data.to_vec()) {
                        Ok(()) => {
                            let deadline = self.clock.now_ms() + FORWARD_TIMEOUT_MS;
                            group.forwarded.insert(token, (reply, deadline));
                        }
                        Err(_) => {
                            let _ = reply.send(Err(ReplicationError::NotLeaderOrFollower));
                        }
                    }
                    return true;
                }
                match group.node.propose(Vec::new(), data.to_vec()) {
                    Ok(()) => {
                        let last = group.node.raft.raft_log.last_index();
                        group.pending.insert(last, Pending::Metadata { reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(raft_err(e)));
                    }
                }
            }
        }
        true
    }

    /// Proposes a new log start offset (`DeleteRecords`) to a partition this broker leads.
    fn delete_records(
        &mut self,
        topic: &str,
        partition: i32,
        offset: u64,
        reply: Reply<ProduceAck>,
    ) {
        let Some(g) = self.partitions.get_mut(&(topic.to_string(), partition)) else {
            let _ = reply.send(Err(ReplicationError::UnknownTopicOrPartition));
            return;
        };
        if g.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ReplicationError::NotLeaderOrFollower));
            return;
        }
        let replica = g.node.store().replica().clone();
        let hw = replica.high_watermark();
        let log_start = replica.log().log_start_offset();
        if offset > hw {
            let _ = reply.send(Err(ReplicationError::Storage(
                runnel_storage::StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: log_start,
                    log_end_offset: hw,
                },
            )));
            return;
        }
        if offset <= log_start {
            let _ = reply.send(Ok(ProduceAck {
                base_offset: hw,
                log_start_offset: log_start,
            }));
            return;
        }
        let data = match batch::build_raft_control_batch(
            batch::control_type::LOG_START_OFFSET,
            Some(Bytes::copy_from_slice(&offset.to_be_bytes())),
            self.clock.now_ms(),
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        if let Err(e) = g.node.propose(Vec::new(), data.to_vec()) {
            let _ = reply.send(Err(match e {
                raft::Error::ProposalDropped => ReplicationError::NotLeaderOrFollower,
                other => raft_err(other),
            }));
            return;
        }
        let last = g.node.raft.raft_log.last_index();
        g.pending.insert(
            last,
            Pending::Produce {
                first_index: last,
                acks: -1,
                reply,
            },
        );
        g.quiesced = false;
        self.dirty.insert((topic.to_string(), partition));
    }

    /// One Ready cycle of every group that may have one (the metadata group and the dirty
    /// partitions, in order), then the cycle's messages go out, one batch per destination.
    pub fn process_ready(&mut self) {
        let mut effects = Vec::new();
        if self.metadata.node.has_ready() {
            match on_ready(&mut self.metadata, &self.shared, &mut self.outbox) {
                Ok(mut e) => effects.append(&mut e),
                Err(e) => tracing::error!(error = %e, "metadata group failed to persist"),
            }
        }
        let slow = effects.iter().any(|e| {
            matches!(
                e,
                Effect::Apply(MetadataEffect::PartitionsAdded { .. })
                    | Effect::Apply(MetadataEffect::TopicDeleted(_))
            )
        });
        if slow {
            // Opening (or removing) many logs takes a while: the metadata group's messages
            // (the commit that lets followers apply the same record) leave first, so the
            // brokers do that work side by side rather than one after the other.
            for (to, batch) in std::mem::take(&mut self.outbox) {
                self.transport.send(to, batch);
            }
        }
        for effect in effects {
            let effect = match effect {
                Effect::Reply(reply) => {
                    let _ = reply.send(Ok(()));
                    continue;
                }
                Effect::Apply(effect) => effect,
            };
            if let Err(e) = self.apply_effect(effect) {
                tracing::error!(error = %e, "applying a metadata change to local replicas failed");
            }
        }
        for key in std::mem::take(&mut self.dirty) {
            let Some(g) = self.partitions.get_mut(&key) else {
                continue;
            };
            if g.node.has_ready() {
                let was_leader = g.was_leader;
                match on_ready(g, &self.shared, &mut self.outbox) {
                    Ok(_) => {
                        if !was_leader && g.was_leader {
                            // A new leader is reported at once, not at the next interval:
                            // clients of a new topic or a failed-over partition find it.
                            self.next_leader_report_ms = self.clock.now_ms();
                        }
                        if g.persist_failure.take().is_some() {
                            tracing::info!(
                                topic = key.0,
                                partition = key.1,
                                "partition persists again"
                            );
                        }
                    }
                    Err(e) => on_persist_failure(g, &key.0, key.1, e),
                }
                // Committed entries beyond one cycle's budget, and entries that could not be
                // persisted, are left for the next cycle.
                if g.node.has_ready() || g.persist_failure.is_some() {
                    self.dirty.insert(key);
                }
            }
        }
        for (to, batch) in std::mem::take(&mut self.outbox) {
            self.transport.send(to, batch);
        }
    }

    fn apply_effect(&mut self, effect: MetadataEffect) -> Result<(), ReplicationError> {
        match effect {
            MetadataEffect::None => {}
            MetadataEffect::PartitionsAdded { topic, from } => {
                let t = self.metadata_read().topics.get(&topic).cloned();
                if let Some(t) = t {
                    self.open_partitions(&t, from)?;
                }
            }
            MetadataEffect::TopicDeleted(t) => {
                for p in 0..t.partitions.len() as i32 {
                    let key = (t.name.clone(), p);
                    self.dirty.remove(&key);
                    if let Some(mut g) = self.partitions.remove(&key) {
                        for (_, pending) in std::mem::take(&mut g.pending) {
                            fail(pending, ReplicationError::UnknownTopicOrPartition);
                        }
                    }
                    let replica = self
                        .shared
                        .replicas
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    if let Some(replica) = replica {
                        let dir = replica.log().dir().to_path_buf();
                        drop(replica);
                        remove_dir(&dir);
                    }
                }
            }
            MetadataEffect::TopicConfigChanged { topic } => self.reconfigure(Some(&topic)),
            MetadataEffect::BrokerConfigChanged => self.reconfigure(None),
            MetadataEffect::BrokerRegistered { .. } => self.sync_peer_addresses(),
        }
        Ok(())
    }

    fn reconfigure(&mut self, only: Option<&str>) {
        let metadata = self.metadata_read().clone();
        let replicas = self
            .shared
            .replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((topic, _), replica) in replicas {
            if only.is_some_and(|t| t != topic) {
                continue;
            }
            if let Some(t) = metadata.topics.get(&topic) {
                if let Err(e) = replica.log_mut().set_config(metadata.log_config(t)) {
                    tracing::warn!(topic, error = %e, "could not apply topic config");
                }
            }
        }
    }

    fn apply_retention(&mut self) {
        for r in self.shared.all_replicas() {
            let hw = r.high_watermark();
            r.log_mut()
                .expire_producers(self.config.producer_id_expiration_ms);
            match r.log_mut().delete_old_segments(hw) {
                Ok(o) if o.segments_deleted > 0 => {
                    tracing::info!(
                        topic = r.topic,
                        partition = r.partition,
                        segments = o.segments_deleted,
                        bytes = o.bytes_deleted,
                        "retention deleted segments"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(topic = r.topic, partition = r.partition, error = %e, "retention failed")
                }
            }
        }
    }

    fn publish_metrics(&self) {
        let mut leaders = 0;
        for g in self.partitions.values() {
            let leader = g.node.raft.state == StateRole::Leader;
            leaders += usize::from(leader);
            crate::probe::replica_state(g.node.store().replica(), g.node.raft.term, leader);
        }
        crate::probe::partition_counts(self.partitions.len(), leaders);
    }

    /// Checkpoints every log written to since its last checkpoint (on shutdown).
    fn checkpoint_all(&mut self) {
        for g in std::iter::once(&mut self.metadata).chain(self.partitions.values_mut()) {
            checkpoint(g);
        }
    }
}

/// Partitions checkpointed per [`Driver::run_timers`] call during a checkpoint pass.
const CHECKPOINTS_PER_CALL: usize = 32;

/// Checkpoints a group's log and commit index, unless nothing was written since its last
/// checkpoint (an idle log's checkpoint would only repeat its fsyncs: thousands a minute for
/// thousands of partitions).
fn checkpoint(g: &mut Group) {
    let raft_log = &g.node.raft.raft_log;
    // What is applied, not merely committed: a restart applies everything after it again
    // (every apply is idempotent), so nothing committed is skipped.
    let commit = raft_log.applied;
    // Every append or truncation moves the last index or its term.
    let mark = (raft_log.last_index(), raft_log.last_term(), commit);
    if g.checkpointed == Some(mark) {
        return;
    }
    let store = g.node.mut_store();
    let mut ok = true;
    if let Err(e) = store.replica().log_mut().checkpoint() {
        tracing::warn!(error = %e, "checkpoint failed");
        ok = false;
    }
    if let Err(e) = store.set_commit(commit) {
        tracing::warn!(error = %e, "storing commit index failed");
        ok = false;
    }
    if ok {
        g.checkpointed = Some(mark);
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not delete a deleted topic's directory");
    }
}

fn fail(pending: Pending, error: ReplicationError) {
    match pending {
        Pending::Produce { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Pending::Metadata { reply } => {
            let _ = reply.send(Err(error));
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a timer set for `*next` has fired at `now`; if so (or if the clock went back by
/// more than an interval), sets it one interval after `now`.
fn due(next: &mut i64, now: i64, interval: Duration) -> bool {
    let interval = duration_ms(interval);
    let fired = now >= *next;
    if fired || *next - now > interval {
        *next = now.saturating_add(interval);
    }
    fired
}

fn queue_messages(out: &mut BTreeMap<u64, Vec<Envelope>>, group: &GroupId, messages: Vec<Message>) {
    for message in messages {
        out.entry(message.to).or_default().push(Envelope {
            group: group.clone(),
            message,
        });
    }
}

/// The `context` of the heartbeat with which an idle leader tells a follower that it stops
/// ticking (raft-rs echoes a heartbeat's context in the response and ignores it otherwise).
const QUIESCE: &[u8] = b"runnel-quiesce";

fn is_quiesce_heartbeat(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgHeartbeat && m.get_context() == QUIESCE
}

/// Whether a leader may stop ticking: nothing proposed, pending, uncommitted or unapplied, no
/// leadership transfer or configuration change under way, a majority of its voters alive, and
/// every live follower holding the whole log. Followers that are down are caught up when they
/// are heard from again (which wakes the group).
fn leader_may_quiesce(g: &Group, live: &impl Fn(u64) -> bool) -> bool {
    let raft = &g.node.raft;
    if raft.state != StateRole::Leader
        || g.is_metadata()
        || !g.pending.is_empty()
        || !g.in_flight.is_empty()
        || !g.markers_in_flight.is_empty()
        || raft.lead_transferee.is_some()
    {
        return false;
    }
    let log = &raft.raft_log;
    let last = log.last_index();
    if log.committed != last || log.applied != last || raft.pending_conf_index > last {
        return false;
    }
    if g.node.has_ready() {
        return false;
    }
    let voters = raft.prs().conf().voters().ids();
    let mut alive = 0;
    for id in voters.iter() {
        if !live(id) {
            continue;
        }
        alive += 1;
        if id != raft.id && raft.prs().get(id).is_none_or(|pr| pr.matched != last) {
            return false;
        }
    }
    2 * alive > voters.len()
}

/// Quiesces a leader: one last heartbeat, carrying the commit index and the quiesce mark, to
/// every live follower, which quiesces too if its log matches.
fn quiesce(g: &mut Group, live: &impl Fn(u64) -> bool, out: &mut BTreeMap<u64, Vec<Envelope>>) {
    let raft = &g.node.raft;
    for (&id, pr) in raft.prs().iter() {
        if id == raft.id || !live(id) {
            continue;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = id;
        m.from = raft.id;
        m.term = raft.term;
        m.commit = pr.matched.min(raft.raft_log.committed);
        m.context = Bytes::from_static(QUIESCE);
        out.entry(id).or_default().push(Envelope {
            group: g.id.clone(),
            message: m,
        });
    }
    g.quiesced = true;
}

/// After stepping a quiesce heartbeat: a follower quiesces only if it follows that leader in
/// that term and its log ends exactly at the leader's commit index.
fn follower_may_quiesce(g: &Group, from: u64, term: u64, commit: u64) -> bool {
    let raft = &g.node.raft;
    raft.state == StateRole::Follower
        && raft.leader_id == from
        && raft.term == term
        && raft.raft_log.committed == commit
        && raft.raft_log.last_index() == commit
}

/// Whether a quiesced group must tick again: a follower whose leader's broker went silent, a
/// leader that no longer hears from a majority (so that check-quorum can depose it).
fn must_wake(g: &Group, live: &impl Fn(u64) -> bool) -> bool {
    let raft = &g.node.raft;
    match raft.state {
        StateRole::Leader => {
            let voters = raft.prs().conf().voters().ids();
            let alive = voters.iter().filter(|&id| live(id)).count();
            2 * alive <= voters.len()
        }
        _ => raft.leader_id == raft::INVALID_ID || !live(raft.leader_id),
    }
}

/// Wakes a quiesced group because a broker went silent. A follower's election timer resumes
/// as if it had been ticking since it last heard from its leader (one liveness timeout ago),
/// so it campaigns within its usual randomized timeout instead of a whole new one.
fn wake(g: &mut Group) {
    g.quiesced = false;
    let raft = &mut g.node.raft;
    if raft.state != StateRole::Leader {
        let timeout = raft.election_timeout().saturating_sub(1);
        raft.election_elapsed = raft.election_elapsed.max(timeout);
    }
}

/// A partition's Ready cycle could not persist (typically a full disk). Nothing is lost or
/// half-written (storage cuts a failed append back) and the next cycle retries, but clients
/// must hear about it: waiting produce requests fail with the error (KAFKA_STORAGE_ERROR; an
/// idempotent retry finds its batch if it is persisted later), new ones are refused until a
/// cycle persists again, and a leader hands leadership to a follower, whose disk may be fine,
/// as Kafka moves leaders off a failed log directory.
fn on_persist_failure(g: &mut Group, topic: &str, partition: i32, error: ReplicationError) {
    let message = format!("{topic}-{partition} cannot write its log: {error}");
    if g.persist_failure.is_none() {
        tracing::error!(topic, partition, error = %error, "partition cannot persist; refusing writes until it can");
    }
    g.persist_failure = Some(message.clone());
    // Proposals already persisted here may still commit: they keep waiting.
    let persisted = g.node.raft.raft_log.persisted;
    for (_, p) in g.pending.split_off(&(persisted + 1)) {
        fail(p, ReplicationError::Io(message.clone()));
    }
    if g.node.raft.state == StateRole::Leader && g.node.raft.lead_transferee.is_none() {
        let me = g.node.raft.id;
        let last = g.node.raft.raft_log.last_index();
        let transferee = g
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(_, pr)| pr.matched.min(last))
            .map(|(id, _)| *id);
        if let Some(to) = transferee {
            g.node.transfer_leader(to);
        }
    }
}

/// One Ready cycle of one group; its messages join `out`. Returns the metadata effects of
/// applied metadata entries.
fn on_ready(
    g: &mut Group,
    shared: &Shared,
    out: &mut BTreeMap<u64, Vec<Envelope>>,
) -> Result<Vec<Effect>, ReplicationError> {
    let mut effects = Vec::new();
    let mut ready = g.node.ready();
    // A leader's appends and heartbeats may leave before its own entries are persisted (they
    // leave with the rest of the cycle's messages, after persisting, which is as safe).
    let messages = ready.take_messages();
    // Runnel's snapshots are a few bytes inside the message itself: count one as delivered
    // once sent. If it is lost, the follower rejects the next append and gets another.
    let snapshots_to: Vec<u64> = messages
        .iter()
        .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
        .map(|m| m.to)
        .collect();
    queue_messages(out, &g.id, messages);
    if !ready.snapshot().is_empty() {
        if g.is_metadata() {
            // The metadata log is never trimmed, so no leader sends one.
            tracing::error!("ignoring a snapshot of the cluster metadata log");
        } else {
            let snapshot = ready.snapshot().clone();
            let next_offset = g.node.mut_store().apply_snapshot(&snapshot)?;
            let replica = g.node.store().replica();
            replica.reset_high_watermark(next_offset);
            replica.log_mut().on_high_watermark(next_offset);
            tracing::info!(
                group = %g.id,
                index = snapshot.get_metadata().index,
                next_offset,
                "behind the leader's log start: restarted the log from the leader's snapshot"
            );
            shared.data_changed.notify_waiters();
        }
    }
    let committed = ready.take_committed_entries();
    apply_committed(g, shared, &committed, &mut effects);
    if !ready.entries().is_empty() {
        let last = ready.entries().last().map_or(0, |e| e.index);
        g.node.mut_store().append_entries(ready.entries())?;
        g.in_flight.retain(|_, batches| {
            batches.retain(|b| b.index > last);
            !batches.is_empty()
        });
        g.markers_in_flight.retain(|_, (_, index)| *index > last);
        acknowledge_persisted(g, last);
    }
    if let Some(hs) = ready.hs() {
        let stored = g.node.store().hard_state();
        if hs.term != stored.term || hs.vote != stored.vote {
            g.node.mut_store().set_hard_state(hs)?;
        }
    }
    // Votes and append responses: only once entries and hard state are persisted.
    queue_messages(out, &g.id, ready.take_persisted_messages());
    let mut light = g.node.advance(ready);
    queue_messages(out, &g.id, light.take_messages());
    let committed = light.take_committed_entries();
    apply_committed(g, shared, &committed, &mut effects);
    g.node.advance_apply();
    for to in snapshots_to {
        g.node.report_snapshot(to, raft::SnapshotStatus::Finish);
    }

    let leader = g.node.raft.state == StateRole::Leader;
    let term = i32::try_from(g.node.raft.term).unwrap_or(i32::MAX);
    g.node
        .store()
        .replica()
        .set_leader(broker_id(g.node.raft.leader_id), term);
    if g.was_leader && !leader {
        // Entries proposed in the lost term may yet commit under the new leader, or be
        // truncated: the client cannot know which, as with Kafka's own leader changes.
        for (_, p) in std::mem::take(&mut g.pending) {
            fail(p, ReplicationError::NotLeaderOrFollower);
        }
        g.in_flight.clear();
        g.markers_in_flight.clear();
    }
    g.was_leader = leader;
    Ok(effects)
}

/// Kafka's idempotence checks for the batches of one produce request, against the log's
/// producer state and the batches proposed but not yet persisted. `Ok(Some(ack))` answers a
/// retry of a batch already in the log with its original offsets.
fn check_sequences(
    g: &Group,
    headers: &[Option<BatchHeader>],
) -> Result<Option<ProduceAck>, ReplicationError> {
    use runnel_storage::producer_state::{last_sequence, SequenceCheck};
    let log = g.node.store().replica().log();
    let mut pending: HashMap<i64, (i16, i32)> = HashMap::new();
    for h in headers.iter().flatten().filter(|h| h.has_producer_id()) {
        let (first, last) = (h.base_sequence, last_sequence(h));
        let latest_in_flight = pending.get(&h.producer_id).copied().or_else(|| {
            g.in_flight
                .get(&h.producer_id)
                .and_then(|v| v.last())
                .map(|b| (b.epoch, b.last_seq))
        });
        if let Some((epoch, last_seq)) = latest_in_flight {
            if h.producer_epoch < epoch {
                return Err(ReplicationError::InvalidProducerEpoch {
                    epoch: h.producer_epoch,
                    current: epoch,
                });
            }
            let in_flight_retry = g.in_flight.get(&h.producer_id).is_some_and(|v| {
                v.iter()
                    .any(|b| b.epoch == h.producer_epoch && b.first_seq == first)
            });
            if in_flight_retry {
                return Err(ReplicationError::DuplicateInFlight);
            }
            // A new epoch restarts at 0; sequences wrap from i32::MAX to 0.
            let expected = if h.producer_epoch > epoch || last_seq == i32::MAX {
                0
            } else {
                last_seq + 1
            };
            if first != expected {
                return Err(ReplicationError::OutOfOrderSequence { expected });
            }
        } else {
            match log
                .producer_state()
                .check(h.producer_id, h.producer_epoch, first, last)
            {
                SequenceCheck::Accept => {}
                SequenceCheck::Duplicate(meta) if headers.len() == 1 => {
                    return Ok(Some(ProduceAck {
                        base_offset: meta.first_offset,
                        log_start_offset: log.log_start_offset(),
                    }));
                }
                SequenceCheck::Duplicate(_) => return Err(ReplicationError::DuplicateInFlight),
                SequenceCheck::OutOfOrder { expected } => {
                    return Err(ReplicationError::OutOfOrderSequence { expected })
                }
                SequenceCheck::InvalidEpoch { current } => {
                    return Err(ReplicationError::InvalidProducerEpoch {
                        epoch: h.producer_epoch,
                        current,
                    })
                }
            }
        }
        pending.insert(h.producer_id, (h.producer_epoch, last));
    }
    Ok(None)
}

/// Transactional batches of clients (KIP-890): a producer's first batch of a transaction
/// here needs the verification guard the coordinator's check left, still in place (no marker
/// for the producer was proposed since), and nothing may follow a marker still in flight
/// with an older epoch.
fn check_transactions(
    g: &Group,
    headers: &[Option<BatchHeader>],
    guard: Option<u64>,
) -> Result<(), ReplicationError> {
    let replica = g.node.store().replica();
    let log = replica.log();
    for h in headers.iter().flatten().filter(|h| h.has_producer_id()) {
        let marker = g.markers_in_flight.get(&h.producer_id).copied();
        if let Some((epoch, _)) = marker {
            if h.producer_epoch < epoch {
                return Err(ReplicationError::InvalidProducerEpoch {
                    epoch: h.producer_epoch,
                    current: epoch,
                });
            }
        }
        if !h.is_transactional() {
            continue;
        }
        let open = marker.is_none()
            && log.producer_state().get(h.producer_id).is_some_and(|e| {
                e.epoch == h.producer_epoch && e.current_txn_first_offset.is_some()
            });
        let verified = guard.is_some_and(|guard| {
            replica.has_verification_guard(h.producer_id, h.producer_epoch, guard)
        });
        if !open && !verified {
            return Err(ReplicationError::InvalidTxnState(format!(
                "producer {} has no verified transaction on this partition",
                h.producer_id
            )));
        }
    }
    Ok(())
}

/// A coordinator's batches: end-transaction markers must carry the producer's current epoch
/// (or a newer one, which fences it) and a coordinator epoch no older than the last marker's.
fn check_markers(
    g: &Group,
    batches: &[Bytes],
    headers: &[Option<BatchHeader>],
) -> Result<Option<ProduceAck>, ReplicationError> {
    use runnel_storage::producer_state::MarkerCheck;
    let log = g.node.store().replica().log();
    for (data, h) in batches.iter().zip(headers) {
        let Some(h) = h.filter(|h| h.has_producer_id()) else {
            continue;
        };
        let Some(marker) = batch::parse_end_txn_marker(data) else {
            // Transactional offset commits: only a current or newer epoch may write.
            if let Some(e) = log.producer_state().get(h.producer_id) {
                if h.producer_epoch < e.epoch {
                    return Err(ReplicationError::InvalidProducerEpoch {
                        epoch: h.producer_epoch,
                        current: e.epoch,
                    });
                }
            }
            continue;
        };
        match log.check_end_txn_marker(h.producer_id, h.producer_epoch, marker.coordinator_epoch) {
            Ok(()) => {}
            Err(MarkerCheck::InvalidProducerEpoch { current }) => {
                return Err(ReplicationError::InvalidProducerEpoch {
                    epoch: h.producer_epoch,
                    current,
                })
            }
            Err(MarkerCheck::CoordinatorFenced { current }) => {
                return Err(ReplicationError::CoordinatorFenced {
                    epoch: marker.coordinator_epoch,
                    current,
                })
            }
        }
    }
    Ok(None)
}

/// acks=1: answered once the leader's own log has the entries.
fn acknowledge_persisted(g: &mut Group, last_persisted: u64) {
    let ready: Vec<u64> = g
        .pending
        .range(..=last_persisted)
        .filter(|(_, p)| matches!(p, Pending::Produce { acks: 1, .. }))
        .map(|(k, _)| *k)
        .collect();
    for k in ready {
        if let Some(Pending::Produce {
            first_index, reply, ..
        }) = g.pending.remove(&k)
        {
            let _ = reply.send(produce_ack(g, first_index));
        }
    }
}

fn produce_ack(g: &Group, first_index: u64) -> Result<ProduceAck, ReplicationError> {
    let log = g.node.store().replica().log();
    Ok(ProduceAck {
        base_offset: log.entry_offset(first_index)?,
        log_start_offset: log.log_start_offset(),
    })
}

fn apply_committed(g: &mut Group, shared: &Shared, entries: &[Entry], effects: &mut Vec<Effect>) {
    let Some(last) = entries.last() else { return };
    if g.is_metadata() {
        let mut metadata = shared.metadata.write().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                for record in metadata_records(&e.data) {
                    effects.push(Effect::Apply(metadata.apply(&record)));
                }
                if let Some((proposer, token)) = proposal_token(&e.data) {
                    if proposer == g.node.raft.id {
                        if let Some((reply, _)) = g.forwarded.remove(&token) {
                            effects.push(Effect::Reply(reply));
                        }
                    }
                }
            }
            metadata.applied_index = e.index;
        }
    }
    for e in entries {
        apply_conf_change(g, e);
    }
    let replica = g.node.store().replica().clone();
    for e in entries {
        if let Some(offset) = batch::parse_log_start_offset(&e.data) {
            if let Err(err) = replica.delete_records_before(offset) {
                tracing::warn!(topic = replica.topic, partition = replica.partition, offset, error = %err, "could not move the log start offset");
            }
        }
    }
    let end = offset_end_of_entry(&replica.log(), last.index);
    if let Some(end) = end {
        replica.set_high_watermark(end);
        // Decided transactions stop holding the last stable offset back once their markers
        // are committed.
        let unstable = replica.log().first_unstable_offset().is_some();
        if unstable {
            replica
                .log_mut()
                .on_high_watermark(replica.high_watermark());
        }
    }
    let done: Vec<u64> = g.pending.range(..=last.index).map(|(k, _)| *k).collect();
    for k in done {
        match g.pending.remove(&k) {
            Some(Pending::Produce {
                first_index, reply, ..
            }) => {
                let _ = reply.send(produce_ack(g, first_index));
            }
            Some(Pending::Metadata { reply }) => {
                // Answered once the driver has applied the effects to local replicas.
                effects.push(Effect::Reply(reply));
            }
            None => {}
        }
    }
    shared.data_changed.notify_waiters();
}

/// Bytes of entry data a Raft message carries.
fn entry_bytes(m: &Message) -> usize {
    m.entries.iter().map(|e| e.data.len()).sum()
}

/// Applies a committed membership change to the group's Raft state and stores the new
/// membership (the group's `membership` file) before anything else is applied.
fn apply_conf_change(g: &mut Group, e: &Entry) {
    use protobuf::Message as _;
    let applied = match e.get_entry_type() {
        EntryType::EntryNormal => return,
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data)
            .map_err(|e| e.to_string())
            .and_then(|cc| g.node.apply_conf_change(&cc).map_err(|e| e.to_string())),
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data)
            .map_err(|e| e.to_string())
            .and_then(|cc| g.node.apply_conf_change(&cc).map_err(|e| e.to_string())),
    };
    match applied {
        Ok(cs) => {
            tracing::info!(group = %g.id, index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
            if let Err(err) = g.node.mut_store().set_membership(&cs) {
                tracing::error!(group = %g.id, error = %err, "could not store the new membership");
            }
        }
        Err(err) => {
            tracing::warn!(group = %g.id, index = e.index, error = %err, "membership change refused")
        }
    }
}

/// The compaction thread: for each compacted log, plan under a read lock, build with no lock,
/// install under the write lock.
fn run_cleaner(shared: &Shared, config: &ReplicationConfig, stop: &AtomicBool) {
    let step = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(step);
        waited += step;
        if waited < config.cleaner_interval {
            continue;
        }
        waited = Duration::ZERO;
        for r in shared.all_replicas() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            // Never past the last stable offset: undecided transactions are not cleaned.
            let plan = match r.log().clean_plan(r.last_stable_offset()) {
                Ok(Some(plan)) => plan,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(topic = r.topic, partition = r.partition, error = %e, "cleaner plan failed");
                    continue;
                }
            };
            let result = plan
                .build(&config.cleaner)
                .and_then(|output| r.log_mut().install_clean(output));
            match result {
                Ok(stats) => tracing::info!(
                    topic = r.topic,
                    partition = r.partition,
                    removed = stats.records_removed,
                    rewritten = stats.segments_rewritten,
                    "cleaned log"
                ),
                Err(e) => {
                    tracing::warn!(topic = r.topic, partition = r.partition, error = %e, "cleaning failed")
                }
            }
        }
    }
}
