//! Raft messages between brokers: what the driver hands over after each Ready cycle, one batch
//! per destination, and how a batch travels as bytes.
//!
//! The driver only sees the [`Transport`] trait. A single broker uses [`NoopTransport`] (it has
//! no peers: a group of one voter never sends a message); tests use [`sim::SimNetwork`], a
//! seeded network with drop, delay, reordering, duplication and partitions.
//!
//! Wire form: a [`RaftMessageBatch`](crate::proto::RaftMessageBatch) (prost) whose envelopes
//! carry each `eraftpb::Message` in raft-rs's own rust-protobuf encoding. rust-protobuf 2.28 has
//! RUSTSEC-2024-0437 (unbounded recursion on crafted input): decode only batches from
//! authenticated peers, and every size is bounded before anything is parsed.

use std::fmt;

use bytes::Bytes;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::proto::{RaftEnvelope, RaftMessageBatch};
use crate::ReplicationError;

/// Largest encoded batch accepted (a Raft message carries at most `max_size_per_msg` of
/// entries, 1 MiB, but one entry may be a whole record batch).
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Most envelopes in one batch: far more than one Ready cycle of thousands of groups sends.
pub const MAX_ENVELOPES: usize = 256 * 1024;
/// Kafka's limit on topic names.
const MAX_TOPIC_BYTES: usize = 249;

/// The Raft group a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupId {
    /// The cluster metadata (controller) group, `__cluster_metadata`.
    Metadata,
    Partition {
        topic: String,
        partition: i32,
    },
}

impl GroupId {
    pub fn partition(topic: &str, partition: i32) -> GroupId {
        GroupId::Partition {
            topic: topic.to_string(),
            partition,
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Metadata => f.write_str(crate::METADATA_TOPIC),
            GroupId::Partition { topic, partition } => write!(f, "{topic}-{partition}"),
        }
    }
}

/// One Raft message of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub group: GroupId,
    pub message: Message,
}

/// Carries Raft messages to other brokers. `send` must not block: a slow or unreachable peer
/// loses messages, which Raft retries.
pub trait Transport: Send + fmt::Debug {
    /// Sends one Ready cycle's messages for broker `to` (a Raft id: Kafka broker id + 1).
    fn send(&mut self, to: u64, batch: Vec<Envelope>);

    /// Learns (or relearns) where broker `to` listens: a broker that joined after this one
    /// started, or one whose registered Raft address changed. Transports that route by id
    /// alone ignore it.
    fn set_peer_address(&mut self, _to: u64, _address: &str) {}
}

/// The transport of a broker without peers: anything sent is dropped (a single voter sends
/// nothing; a group that names absent voters retries until they exist).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTransport;

impl Transport for NoopTransport {
    fn send(&mut self, to: u64, batch: Vec<Envelope>) {
        tracing::trace!(
            to,
            messages = batch.len(),
            "no transport: dropping raft messages"
        );
    }
}

/// Encodes the batch `from` sends.
pub fn encode_batch(from: u64, batch: &[Envelope]) -> Result<Vec<u8>, ReplicationError> {
    let mut envelopes = Vec::with_capacity(batch.len());
    for e in batch {
        let message = e
            .message
            .write_to_bytes()
            .map_err(|err| ReplicationError::Raft(format!("encoding a raft message: {err}")))?;
        let (topic, partition) = match &e.group {
            GroupId::Metadata => (None, 0),
            GroupId::Partition { topic, partition } => (Some(topic.clone()), *partition),
        };
        envelopes.push(RaftEnvelope {
            topic,
            partition,
            message: Bytes::from(message),
        });
    }
    let out = RaftMessageBatch { from, envelopes }.encode_to_vec();
    if out.len() > MAX_BATCH_BYTES {
        return Err(ReplicationError::Raft(format!(
            "a raft message batch of {} bytes exceeds {MAX_BATCH_BYTES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a batch from a peer: (sender's Raft id, envelopes). Every size is checked.
pub fn decode_batch(bytes: &[u8]) -> Result<(u64, Vec<Envelope>), ReplicationError> {
    let corrupt = |what: String| ReplicationError::Corrupt(format!("raft message batch: {what}"));
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(corrupt(format!("{} bytes", bytes.len())));
    }
    let batch = RaftMessageBatch::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if batch.envelopes.len() > MAX_ENVELOPES {
        return Err(corrupt(format!("{} envelopes", batch.envelopes.len())));
    }
    let mut out = Vec::with_capacity(batch.envelopes.len());
    for e in batch.envelopes {
        let group = match e.topic {
            None => GroupId::Metadata,
            Some(topic) if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES => {
                return Err(corrupt(format!("a topic name of {} bytes", topic.len())))
            }
            Some(_) if e.partition < 0 => {
                return Err(corrupt(format!("partition {}", e.partition)));
            }
            Some(topic) => GroupId::Partition {
                topic,
                partition: e.partition,
            },
        };
        let message = Message::parse_from_carllerche_bytes(&e.message)
            .map_err(|err| corrupt(format!("raft message of {group}: {err}")))?;
        out.push(Envelope { group, message });
    }
    Ok((batch.from, out))
}

pub mod sim {
    //! A simulated network for deterministic tests of whole clusters in one process: every
    //! batch is encoded and decoded as on the wire, and a seeded RNG decides drops, delays
    //! (hence reordering), duplicates; links can be cut (partitions, a whole AZ isolated).

    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use super::{decode_batch, encode_batch, Envelope, Transport};

    /// SplitMix64: small, fast, and the same sequence everywhere for a seed.
    #[derive(Debug, Clone)]
    pub struct SimRng(u64);

    impl SimRng {
        pub fn new(seed: u64) -> SimRng {
            SimRng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `[0, n)` (0 when `n` is 0).
        pub fn below(&mut self, n: u64) -> u64 {
            if n == 0 {
                0
            } else {
                self.next_u64() % n
            }
        }

        /// True with probability `p`.
        pub fn chance(&mut self, p: f64) -> bool {
            let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            unit < p
        }
    }

    /// Probabilities of the network's misbehaviour, per batch.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Faults {
        pub drop: f64,
        pub duplicate: f64,
        /// A batch is delivered after 0..=max_delay steps; different delays reorder batches.
        pub max_delay: u64,
    }

    impl Faults {
        pub const NONE: Faults = Faults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay: 0,
        };
    }

    type Outbox = Arc<Mutex<Vec<(u64, u64, Vec<u8>)>>>;

    /// A node's side of the simulated network: sending encodes the batch into the outbox.
    #[derive(Debug, Clone)]
    pub struct SimTransport {
        from: u64,
        outbox: Outbox,
    }

    impl Transport for SimTransport {
        fn send(&mut self, to: u64, batch: Vec<Envelope>) {
            match encode_batch(self.from, &batch) {
                Ok(bytes) => self
                    .outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.from, to, bytes)),
                Err(e) => tracing::warn!(error = %e, "dropping a raft batch that does not encode"),
            }
        }
    }

    #[derive(Debug)]
    struct Packet {
        deliver_at: u64,
        seq: u64,
        from: u64,
        to: u64,
        bytes: Vec<u8>,
    }

    /// A delivered batch.
    #[derive(Debug)]
    pub struct Delivery {
        pub from: u64,
        pub to: u64,
        pub envelopes: Vec<Envelope>,
    }

    #[derive(Debug)]
    pub struct SimNetwork {
        outbox: Outbox,
        in_flight: Vec<Packet>,
        /// Directed links that lose everything.
        cut: BTreeSet<(u64, u64)>,
        now: u64,
        seq: u64,
        pub faults: Faults,
        rng: SimRng,
    }

    impl SimNetwork {
        pub fn new(seed: u64, faults: Faults) -> SimNetwork {
            SimNetwork {
                outbox: Arc::default(),
                in_flight: Vec::new(),
                cut: BTreeSet::new(),
                now: 0,
                seq: 0,
                faults,
                rng: SimRng::new(seed),
            }
        }

        pub fn transport(&self, from: u64) -> SimTransport {
            SimTransport {
                from,
                outbox: self.outbox.clone(),
            }
        }

        /// Cuts every link between the sides (both directions).
        pub fn partition(&mut self, sides: &[Vec<u64>]) {
            for (i, a) in sides.iter().enumerate() {
                for b in sides.iter().skip(i + 1) {
                    for &x in a {
                        for &y in b {
                            self.cut.insert((x, y));
                            self.cut.insert((y, x));
                        }
                    }
                }
            }
        }

        /// Cuts `node` off from every node of `all` (an availability zone going dark).
        pub fn isolate(&mut self, node: u64, all: &[u64]) {
            let rest: Vec<u64> = all.iter().copied().filter(|&n| n != node).collect();
            self.partition(&[vec![node], rest]);
        }

        pub fn heal(&mut self) {
            self.cut.clear();
        }

        pub fn is_cut(&self, from: u64, to: u64) -> bool {
            self.cut.contains(&(from, to))
        }

        /// Batches sent but not delivered yet.
        pub fn in_flight(&self) -> usize {
            self.in_flight.len() + self.outbox.lock().unwrap_or_else(|e| e.into_inner()).len()
        }

        /// Drops everything in flight (e.g. for a node that crashed: its sockets are gone).
        pub fn drop_to(&mut self, node: u64) {
            self.in_flight.retain(|p| p.to != node && p.from != node);
        }

        /// Moves the outbox into flight (applying drops, duplicates and delays), advances the
        /// network's time by one step and returns what arrives now, in delivery order.
        pub fn step(&mut self) -> Vec<Delivery> {
            let sent = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
            for (from, to, bytes) in sent {
                if self.is_cut(from, to) || self.rng.chance(self.faults.drop) {
                    continue;
                }
                let copies = if self.rng.chance(self.faults.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = self.rng.below(self.faults.max_delay + 1);
                    self.seq += 1;
                    self.in_flight.push(Packet {
                        deliver_at: self.now + delay,
                        seq: self.seq,
                        from,
                        to,
                        bytes: bytes.clone(),
                    });
                }
            }
            let now = self.now;
            self.now += 1;
            let (mut due, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|p| p.deliver_at <= now);
            self.in_flight = rest;
            due.sort_by_key(|p| (p.deliver_at, p.seq));
            due.into_iter()
                // A link cut while the batch was on its way loses it too.
                .filter(|p| !self.cut.contains(&(p.from, p.to)))
                .filter_map(|p| match decode_batch(&p.bytes) {
                    Ok((from, envelopes)) => Some(Delivery {
                        from,
                        to: p.to,
                        envelopes,
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable simulated batch");
                        None
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    #[test]
    fn batch_round_trip() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.entries = vec![Entry {
            index: 3,
            term: 7,
            data: Bytes::from_static(b"batch"),
            ..Default::default()
        }]
        .into();
        let batch = vec![
            Envelope {
                group: GroupId::Metadata,
                message: m.clone(),
            },
            Envelope {
                group: GroupId::partition("orders", 3),
                message: m,
            },
        ];
        let bytes = encode_batch(1, &batch).expect("encodes");
        let (from, decoded) = decode_batch(&bytes).expect("decodes");
        assert_eq!(from, 1);
        assert_eq!(decoded, batch);
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(decode_batch(&[0xff, 0xff, 0xff]).is_err());
        let bad = RaftMessageBatch {
            from: 1,
            envelopes: vec![RaftEnvelope {
                topic: Some("x".repeat(300)),
                partition: 0,
                message: Bytes::new(),
            }],
        };
        assert!(decode_batch(&bad.encode_to_vec()).is_err());
        let bad = RaftMessageBatch {
            from: 1,
            envelopes: vec![RaftEnvelope {
                topic: None,
                partition: 0,
                message: Bytes::from_static(&[0x0a, 0xff]),
            }],
        };
        assert!(decode_batch(&bad.encode_to_vec()).is_err());
    }
}
