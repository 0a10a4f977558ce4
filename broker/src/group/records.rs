//! The records of `__consumer_offsets`, in Kafka's own schemas (`OffsetCommitKey`,
//! `OffsetCommitValue`, `GroupMetadataKey`, `GroupMetadataValue` in Kafka's group-coordinator
//! message specs), so tools that read the topic raw (Burrow, `kafka-console-consumer
//! --formatter ...OffsetsMessageFormatter`) decode what Runnel writes.
//!
//! Every key and value starts with an int16 version. Key version 0 or 1 is an offset commit,
//! 2 a group's metadata; later versions are KIP-848 records this coordinator skips. Values are
//! written in the versions Kafka 4 writes (offset commit v3, group metadata v3) and read in
//! every version Kafka defines, the flexible v4 included.

use bytes::{BufMut, Bytes, BytesMut};

/// A record key of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    OffsetCommit {
        group: String,
        topic: String,
        partition: i32,
    },
    GroupMetadata {
        group: String,
    },
    /// KIP-848 `ConsumerGroupMetadataKey` (type 3): the group epoch.
    ConsumerGroupMetadata {
        group: String,
    },
    /// `ConsumerGroupMemberMetadataKey` (type 5): a member's subscription and client.
    ConsumerMemberMetadata {
        group: String,
        member: String,
    },
    /// `ConsumerGroupTargetAssignmentMetadataKey` (type 6): the assignment epoch.
    TargetAssignmentMetadata {
        group: String,
    },
    /// `ConsumerGroupTargetAssignmentMemberKey` (type 7): a member's target assignment.
    TargetAssignmentMember {
        group: String,
        member: String,
    },
    /// `ConsumerGroupCurrentMemberAssignmentKey` (type 8): a member's epoch and assignment.
    CurrentMemberAssignment {
        group: String,
        member: String,
    },
    /// A record type this coordinator does not keep (partition metadata, regexes, share and
    /// streams groups).
    Other(i16),
}

/// `OffsetCommitValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub offset: i64,
    /// -1 when the client did not send one.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Only in version 1 (explicit retention from OffsetCommit v2-v4); -1 otherwise.
    pub expire_timestamp: i64,
}

/// `GroupMetadataValue.MemberMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadata {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: i32,
    pub session_timeout: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// `GroupMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<MemberMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed coordinator record: {0}")]
pub struct RecordError(pub String);

pub(crate) fn err<T>(what: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(what.into()))
}

// ---- writing ----

pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&s.as_bytes()[..len]);
}

pub(crate) fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

impl RecordKey {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            RecordKey::OffsetCommit {
                group,
                topic,
                partition,
            } => {
                buf.put_i16(1);
                put_string(&mut buf, group);
                put_string(&mut buf, topic);
                buf.put_i32(*partition);
            }
            RecordKey::GroupMetadata { group } => {
                buf.put_i16(2);
                put_string(&mut buf, group);
            }
            RecordKey::ConsumerGroupMetadata { group } => {
                buf.put_i16(3);
                put_string(&mut buf, group);
            }
            RecordKey::ConsumerMemberMetadata { group, member } => {
                buf.put_i16(5);
                put_string(&mut buf, group);
                put_string(&mut buf, member);
            }
            RecordKey::TargetAssignmentMetadata { group } => {
                buf.put_i16(6);
                put_string(&mut buf, group);
            }
            RecordKey::TargetAssignmentMember { group, member } => {
                buf.put_i16(7);
                put_string(&mut buf, group);
                put_string(&mut buf, member);
            }
            RecordKey::CurrentMemberAssignment { group, member } => {
                buf.put_i16(8);
                put_string(&mut buf, group);
                put_string(&mut buf, member);
            }
            RecordKey::Other(v) => buf.put_i16(*v),
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<RecordKey, RecordError> {
        let mut r = Reader::new(data);
        let version = r.i16()?;
        match version {
            0 | 1 => Ok(RecordKey::OffsetCommit {
                group: r.string(false)?,
                topic: r.string(false)?,
                partition: r.i32()?,
            }),
            2 => Ok(RecordKey::GroupMetadata {
                group: r.string(false)?,
            }),
            3 => Ok(RecordKey::ConsumerGroupMetadata {
                group: r.string(false)?,
            }),
            5 => Ok(RecordKey::ConsumerMemberMetadata {
                group: r.string(false)?,
                member: r.string(false)?,
            }),
            6 => Ok(RecordKey::TargetAssignmentMetadata {
                group: r.string(false)?,
            }),
            7 => Ok(RecordKey::TargetAssignmentMember {
                group: r.string(false)?,
                member: r.string(false)?,
            }),
            8 => Ok(RecordKey::CurrentMemberAssignment {
                group: r.string(false)?,
                member: r.string(false)?,
            }),
            v if v >= 0 => Ok(RecordKey::Other(v)),
            v => err(format!("negative key version {v}")),
        }
    }

    pub fn group(&self) -> Option<&str> {
        match self {
            RecordKey::OffsetCommit { group, .. }
            | RecordKey::GroupMetadata { group }
            | RecordKey::ConsumerGroupMetadata { group }
            | RecordKey::ConsumerMemberMetadata { group, .. }
            | RecordKey::TargetAssignmentMetadata { group }
            | RecordKey::TargetAssignmentMember { group, .. }
            | RecordKey::CurrentMemberAssignment { group, .. } => Some(group),
            RecordKey::Other(_) => None,
        }
    }
}

impl OffsetCommitValue {
    /// Version 3, or version 1 when an explicit expire timestamp must be kept (as Kafka).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        if self.expire_timestamp >= 0 {
            buf.put_i16(1);
            buf.put_i64(self.offset);
            put_string(&mut buf, &self.metadata);
            buf.put_i64(self.commit_timestamp);
            buf.put_i64(self.expire_timestamp);
        } else {
            buf.put_i16(3);
            buf.put_i64(self.offset);
            buf.put_i32(self.leader_epoch);
            put_string(&mut buf, &self.metadata);
            buf.put_i64(self.commit_timestamp);
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<OffsetCommitValue, RecordError> {
        let mut r = Reader::new(data);
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return err(format!("offset commit value version {version}"));
        }
        let flexible = version >= 4;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.string(flexible)?;
        let commit_timestamp = r.i64()?;
        let expire_timestamp = if version == 1 { r.i64()? } else { -1 };
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(OffsetCommitValue {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp,
            expire_timestamp,
        })
    }
}

impl GroupMetadataValue {
    /// Version 3, the version Kafka 4 writes.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        put_string(&mut buf, &self.protocol_type);
        buf.put_i32(self.generation);
        put_nullable_string(&mut buf, self.protocol.as_deref());
        put_nullable_string(&mut buf, self.leader.as_deref());
        buf.put_i64(self.current_state_timestamp);
        buf.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_string(&mut buf, &m.member_id);
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
            put_string(&mut buf, &m.client_id);
            put_string(&mut buf, &m.client_host);
            buf.put_i32(m.rebalance_timeout);
            buf.put_i32(m.session_timeout);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<GroupMetadataValue, RecordError> {
        let mut r = Reader::new(data);
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return err(format!("group metadata value version {version}"));
        }
        let flexible = version >= 4;
        let protocol_type = r.string(flexible)?;
        let generation = r.i32()?;
        let protocol = r.nullable_string(flexible)?;
        let leader = r.nullable_string(flexible)?;
        let current_state_timestamp = if version >= 2 { r.i64()? } else { -1 };
        let count = r.array_len(flexible)?;
        let mut members = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let member_id = r.string(flexible)?;
            let group_instance_id = if version >= 3 {
                r.nullable_string(flexible)?
            } else {
                None
            };
            let client_id = r.string(flexible)?;
            let client_host = r.string(flexible)?;
            let rebalance_timeout = if version >= 1 { r.i32()? } else { -1 };
            let session_timeout = r.i32()?;
            let subscription = r.bytes(flexible)?;
            let assignment = r.bytes(flexible)?;
            if flexible {
                r.skip_tagged_fields()?;
            }
            members.push(MemberMetadata {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout: if rebalance_timeout < 0 {
                    session_timeout
                } else {
                    rebalance_timeout
                },
                session_timeout,
                subscription,
                assignment,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(GroupMetadataValue {
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp,
            members,
        })
    }
}

// ---- KIP-848 values: version 0, flexible (compact strings and arrays, tagged fields) ----

/// Partitions by topic id, as the KIP-848 records carry them.
pub type TopicPartitions = Vec<(uuid::Uuid, Vec<i32>)>;

/// `ConsumerGroupMemberMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerMemberMetadataValue {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
    /// Tagged field 0, `ClassicMemberMetadata`: a classic-protocol member's session timeout
    /// and supported protocols (name, metadata).
    pub classic: Option<(i32, Vec<(String, Bytes)>)>,
}

/// `ConsumerGroupCurrentMemberAssignmentValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentMemberAssignmentValue {
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    /// Kafka's `MemberState`: 0 stable, 1 unrevoked partitions, 2 unreleased partitions.
    pub state: i8,
    pub assigned: TopicPartitions,
    pub pending_revocation: TopicPartitions,
}

pub(crate) fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

pub(crate) fn put_compact_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        None => put_uvarint(buf, 0),
        Some(s) => {
            put_uvarint(buf, s.len() as u64 + 1);
            buf.put_slice(s.as_bytes());
        }
    }
}

fn put_topic_partitions(buf: &mut BytesMut, tps: &TopicPartitions) {
    put_uvarint(buf, tps.len() as u64 + 1);
    for (id, partitions) in tps {
        buf.put_slice(id.as_bytes());
        put_uvarint(buf, partitions.len() as u64 + 1);
        for p in partitions {
            buf.put_i32(*p);
        }
        put_uvarint(buf, 0);
    }
}

/// A value that is only an int32 epoch: `ConsumerGroupMetadataValue` (the group epoch) and
/// `ConsumerGroupTargetAssignmentMetadataValue` (the assignment epoch).
pub fn encode_epoch_value(epoch: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(epoch);
    put_uvarint(&mut buf, 0);
    buf.freeze()
}

pub fn decode_epoch_value(data: &[u8]) -> Result<i32, RecordError> {
    let mut r = Reader::new(data);
    let _version = r.i16()?;
    let epoch = r.i32()?;
    r.skip_tagged_fields()?;
    Ok(epoch)
}

/// `ConsumerGroupTargetAssignmentMemberValue`.
pub fn encode_target_assignment(tps: &TopicPartitions) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    put_topic_partitions(&mut buf, tps);
    put_uvarint(&mut buf, 0);
    buf.freeze()
}

pub fn decode_target_assignment(data: &[u8]) -> Result<TopicPartitions, RecordError> {
    let mut r = Reader::new(data);
    let _version = r.i16()?;
    let tps = r.topic_partitions()?;
    r.skip_tagged_fields()?;
    Ok(tps)
}

impl ConsumerMemberMetadataValue {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        put_compact_string(&mut buf, self.instance_id.as_deref());
        put_compact_string(&mut buf, self.rack_id.as_deref());
        put_compact_string(&mut buf, Some(&self.client_id));
        put_compact_string(&mut buf, Some(&self.client_host));
        put_uvarint(&mut buf, self.subscribed_topic_names.len() as u64 + 1);
        for t in &self.subscribed_topic_names {
            put_compact_string(&mut buf, Some(t));
        }
        put_compact_string(&mut buf, self.subscribed_topic_regex.as_deref());
        buf.put_i32(self.rebalance_timeout_ms);
        put_compact_string(&mut buf, self.server_assignor.as_deref());
        match &self.classic {
            None => put_uvarint(&mut buf, 0),
            Some((session_timeout_ms, protocols)) => {
                // A nullable struct: a presence byte (1), then the struct.
                let mut field = BytesMut::new();
                field.put_i8(1);
                field.put_i32(*session_timeout_ms);
                put_uvarint(&mut field, protocols.len() as u64 + 1);
                for (name, metadata) in protocols {
                    put_compact_string(&mut field, Some(name));
                    put_uvarint(&mut field, metadata.len() as u64 + 1);
                    field.put_slice(metadata);
                    put_uvarint(&mut field, 0);
                }
                put_uvarint(&mut field, 0);
                put_uvarint(&mut buf, 1);
                put_uvarint(&mut buf, 0);
                put_uvarint(&mut buf, field.len() as u64);
                buf.put_slice(&field);
            }
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<ConsumerMemberMetadataValue, RecordError> {
        let mut r = Reader::new(data);
        let _version = r.i16()?;
        let instance_id = r.nullable_string(true)?;
        let rack_id = r.nullable_string(true)?;
        let client_id = r.string(true)?;
        let client_host = r.string(true)?;
        let n = r.array_len(true)?;
        let mut subscribed_topic_names = Vec::with_capacity(n);
        for _ in 0..n {
            subscribed_topic_names.push(r.string(true)?);
        }
        let subscribed_topic_regex = r.nullable_string(true)?;
        let rebalance_timeout_ms = r.i32()?;
        let server_assignor = r.nullable_string(true)?;
        let mut classic = None;
        for _ in 0..r.varint()? {
            let tag = r.varint()?;
            let size = r.varint()? as usize;
            let field = r.take(size)?;
            if tag == 0 && field.first() == Some(&1) {
                let mut f = Reader::new(&field[1..]);
                let session_timeout_ms = f.i32()?;
                let n = f.array_len(true)?;
                let mut protocols = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = f.string(true)?;
                    let metadata = f.bytes(true)?;
                    f.skip_tagged_fields()?;
                    protocols.push((name, metadata));
                }
                classic = Some((session_timeout_ms, protocols));
            }
        }
        Ok(ConsumerMemberMetadataValue {
            instance_id,
            rack_id,
            client_id,
            client_host,
            subscribed_topic_names,
            subscribed_topic_regex,
            rebalance_timeout_ms,
            server_assignor,
            classic,
        })
    }
}

impl CurrentMemberAssignmentValue {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i32(self.member_epoch);
        buf.put_i32(self.previous_member_epoch);
        buf.put_i8(self.state);
        put_topic_partitions(&mut buf, &self.assigned);
        put_topic_partitions(&mut buf, &self.pending_revocation);
        put_uvarint(&mut buf, 0);
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<CurrentMemberAssignmentValue, RecordError> {
        let mut r = Reader::new(data);
        let _version = r.i16()?;
        let member_epoch = r.i32()?;
        let previous_member_epoch = r.i32()?;
        let state = r.take(1)?[0] as i8;
        let assigned = r.topic_partitions()?;
        let pending_revocation = r.topic_partitions()?;
        r.skip_tagged_fields()?;
        Ok(CurrentMemberAssignmentValue {
            member_epoch,
            previous_member_epoch,
            state,
            assigned,
            pending_revocation,
        })
    }
}

// ---- reading, every length bounded by the input ----

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.data.len() - self.pos < n {
            return err(format!(
                "needs {n} bytes at {}, has {}",
                self.pos,
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn i8(&mut self) -> Result<i8, RecordError> {
        Ok(self.take(1)?[0] as i8)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, RecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, RecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub(crate) fn varint(&mut self) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err("varint longer than 10 bytes")
    }

    /// The length of a string, bytes or array; `None` for null.
    pub(crate) fn len(
        &mut self,
        flexible: bool,
        classic: i64,
    ) -> Result<Option<usize>, RecordError> {
        let n = if flexible {
            self.varint()? as i64 - 1
        } else {
            classic
        };
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(n as usize))
    }

    pub(crate) fn nullable_string(
        &mut self,
        flexible: bool,
    ) -> Result<Option<String>, RecordError> {
        let classic = if flexible { 0 } else { i64::from(self.i16()?) };
        match self.len(flexible, classic)? {
            None => Ok(None),
            Some(n) => {
                let raw = self.take(n)?;
                String::from_utf8(raw.to_vec())
                    .map(Some)
                    .or_else(|_| err("string is not UTF-8"))
            }
        }
    }

    pub(crate) fn string(&mut self, flexible: bool) -> Result<String, RecordError> {
        self.nullable_string(flexible)?
            .map_or_else(|| err("null where a string is required"), Ok)
    }

    pub(crate) fn bytes(&mut self, flexible: bool) -> Result<Bytes, RecordError> {
        let classic = if flexible { 0 } else { i64::from(self.i32()?) };
        match self.len(flexible, classic)? {
            None => Ok(Bytes::new()),
            Some(n) => Ok(Bytes::copy_from_slice(self.take(n)?)),
        }
    }

    pub(crate) fn array_len(&mut self, flexible: bool) -> Result<usize, RecordError> {
        let classic = if flexible { 0 } else { i64::from(self.i32()?) };
        let n = self.len(flexible, classic)?.unwrap_or(0);
        // Every element takes at least one byte: a larger count is corrupt.
        if n > self.data.len() - self.pos {
            return err(format!("array of {n} elements in a shorter record"));
        }
        Ok(n)
    }

    pub(crate) fn topic_partitions(&mut self) -> Result<TopicPartitions, RecordError> {
        let n = self.array_len(true)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = uuid::Uuid::from_slice(self.take(16)?).or_else(|_| err("bad uuid"))?;
            let count = self.array_len(true)?;
            let mut partitions = Vec::with_capacity(count);
            for _ in 0..count {
                partitions.push(self.i32()?);
            }
            self.skip_tagged_fields()?;
            out.push((id, partitions));
        }
        Ok(out)
    }

    pub(crate) fn skip_tagged_fields(&mut self) -> Result<(), RecordError> {
        let count = self.varint()?;
        for _ in 0..count {
            let _tag = self.varint()?;
            let size = self.varint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_commit_key_layout_is_kafkas() {
        let key = RecordKey::OffsetCommit {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let bytes = key.encode();
        assert_eq!(&bytes[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        assert_eq!(RecordKey::decode(&bytes), Ok(key));
    }

    #[test]
    fn offset_commit_value_v3_round_trips_and_v1_keeps_expiry() {
        let v = OffsetCommitValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp: 1000,
            expire_timestamp: -1,
        };
        let bytes = v.encode();
        assert_eq!(&bytes[..2], &[0, 3]);
        assert_eq!(bytes.len(), 2 + 8 + 4 + 2 + 4 + 8);
        assert_eq!(OffsetCommitValue::decode(&bytes), Ok(v.clone()));
        let v1 = OffsetCommitValue {
            expire_timestamp: 5000,
            leader_epoch: -1,
            ..v
        };
        let bytes = v1.encode();
        assert_eq!(&bytes[..2], &[0, 1]);
        assert_eq!(OffsetCommitValue::decode(&bytes), Ok(v1));
    }

    #[test]
    fn flexible_v4_offset_value_decodes() {
        let mut b = BytesMut::new();
        b.put_i16(4);
        b.put_i64(9);
        b.put_i32(2);
        b.put_u8(3); // compact string "ab"
        b.put_slice(b"ab");
        b.put_i64(77);
        b.put_u8(1); // one tagged field
        b.put_u8(0);
        b.put_u8(2);
        b.put_slice(&[1, 2]);
        let v = OffsetCommitValue::decode(&b).expect("decode");
        assert_eq!(
            (v.offset, v.leader_epoch, v.metadata.as_str()),
            (9, 2, "ab")
        );
        assert_eq!(v.commit_timestamp, 77);
    }

    #[test]
    fn group_metadata_round_trips() {
        let v = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 123,
            members: vec![MemberMetadata {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout: 300_000,
                session_timeout: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let bytes = v.encode();
        assert_eq!(&bytes[..2], &[0, 3]);
        assert_eq!(GroupMetadataValue::decode(&bytes), Ok(v));
        assert_eq!(
            RecordKey::decode(&RecordKey::GroupMetadata { group: "g".into() }.encode()),
            Ok(RecordKey::GroupMetadata { group: "g".into() })
        );
    }

    #[test]
    fn kip848_records_round_trip() {
        let member = ConsumerMemberMetadataValue {
            instance_id: Some("i".into()),
            rack_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            subscribed_topic_names: vec!["a".into(), "b".into()],
            subscribed_topic_regex: None,
            rebalance_timeout_ms: 300_000,
            server_assignor: Some("uniform".into()),
            classic: None,
        };
        assert_eq!(
            ConsumerMemberMetadataValue::decode(&member.encode()),
            Ok(member.clone())
        );
        let classic = ConsumerMemberMetadataValue {
            classic: Some((10_000, vec![("range".into(), Bytes::from_static(b"sub"))])),
            ..member
        };
        assert_eq!(
            ConsumerMemberMetadataValue::decode(&classic.encode()),
            Ok(classic)
        );
        let id = uuid::Uuid::from_u128(9);
        let current = CurrentMemberAssignmentValue {
            member_epoch: 4,
            previous_member_epoch: 3,
            state: 0,
            assigned: vec![(id, vec![0, 2])],
            pending_revocation: vec![],
        };
        assert_eq!(
            CurrentMemberAssignmentValue::decode(&current.encode()),
            Ok(current)
        );
        let target = vec![(id, vec![1]), (uuid::Uuid::from_u128(10), vec![0, 1, 2])];
        assert_eq!(
            decode_target_assignment(&encode_target_assignment(&target)),
            Ok(target)
        );
        assert_eq!(decode_epoch_value(&encode_epoch_value(17)), Ok(17));
        let key = RecordKey::CurrentMemberAssignment {
            group: "g".into(),
            member: "m".into(),
        };
        let bytes = key.encode();
        assert_eq!(&bytes[..2], &[0, 8], "the key version is the record type");
        assert_eq!(RecordKey::decode(&bytes), Ok(key));
    }

    #[test]
    fn truncated_and_hostile_records_are_errors_not_panics() {
        let v = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: None,
            leader: None,
            current_state_timestamp: -1,
            members: Vec::new(),
        }
        .encode();
        for cut in 0..v.len() {
            assert!(GroupMetadataValue::decode(&v[..cut]).is_err());
        }
        // A member count of two billion in a record of a few bytes.
        let mut b = BytesMut::new();
        b.put_i16(3);
        put_string(&mut b, "c");
        b.put_i32(1);
        b.put_i16(-1);
        b.put_i16(-1);
        b.put_i64(0);
        b.put_i32(i32::MAX);
        assert!(GroupMetadataValue::decode(&b).is_err());
        assert!(RecordKey::decode(&[0xff, 0xff]).is_err());
    }
}
