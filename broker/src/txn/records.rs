//! The records of `__transaction_state`, in Kafka's schemas (`TransactionLogKey` and
//! `TransactionLogValue` in Kafka's transaction-coordinator message specs), so tools that read
//! the topic raw decode what Runnel writes.
//!
//! The key is version 0 and the transactional id; the value is written in version 1 (flexible,
//! with the tagged previous/next producer ids and client transaction version) as Kafka 4
//! writes it, and read in versions 0 and 1. A null value is a tombstone: the transactional id
//! expired.

use bytes::{BufMut, Bytes, BytesMut};

use crate::group::records::{
    err, put_compact_string, put_string, put_uvarint, Reader, RecordError,
};

/// Kafka's `TransactionState`, with its stored ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use (Kafka's `stateName`).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        (0..=7)
            .filter_map(TxnState::from_id)
            .find(|s| s.name() == name)
    }
}

/// `TransactionLogValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnLogValue {
    pub producer_id: i64,
    pub previous_producer_id: i64,
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Topic and partitions; `None` is written as a null array (Kafka writes null for
    /// transactions that hold no partitions).
    pub partitions: Vec<(String, Vec<i32>)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
    pub client_transaction_version: i16,
}

/// `TransactionLogKey` (version 0).
pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + transactional_id.len());
    buf.put_i16(0);
    put_string(&mut buf, transactional_id);
    buf.freeze()
}

pub fn decode_key(data: &[u8]) -> Result<String, RecordError> {
    let mut r = Reader::new(data);
    let version = r.i16()?;
    if version != 0 {
        return err(format!("unknown transaction log key version {version}"));
    }
    r.string(false)
}

fn put_tagged_i64(buf: &mut BytesMut, tag: u64, v: i64) {
    put_uvarint(buf, tag);
    put_uvarint(buf, 8);
    buf.put_i64(v);
}

impl TxnLogValue {
    /// Version 1, with the tagged fields Kafka writes when they differ from their defaults.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_i16(1);
        buf.put_i64(self.producer_id);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.timeout_ms);
        buf.put_i8(self.state.id());
        if self.partitions.is_empty() {
            put_uvarint(&mut buf, 0);
        } else {
            put_uvarint(&mut buf, self.partitions.len() as u64 + 1);
            for (topic, partitions) in &self.partitions {
                put_compact_string(&mut buf, Some(topic));
                put_uvarint(&mut buf, partitions.len() as u64 + 1);
                for p in partitions {
                    buf.put_i32(*p);
                }
                put_uvarint(&mut buf, 0);
            }
        }
        buf.put_i64(self.last_update_ms);
        buf.put_i64(self.start_ms);
        let mut tagged = BytesMut::new();
        let mut count = 0;
        if self.previous_producer_id != -1 {
            put_tagged_i64(&mut tagged, 0, self.previous_producer_id);
            count += 1;
        }
        if self.next_producer_id != -1 {
            put_tagged_i64(&mut tagged, 1, self.next_producer_id);
            count += 1;
        }
        if self.client_transaction_version != 0 {
            put_uvarint(&mut tagged, 2);
            put_uvarint(&mut tagged, 2);
            tagged.put_i16(self.client_transaction_version);
            count += 1;
        }
        put_uvarint(&mut buf, count);
        buf.put_slice(&tagged);
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<TxnLogValue, RecordError> {
        let mut r = Reader::new(data);
        let version = r.i16()?;
        if !(0..=1).contains(&version) {
            return err(format!("unknown transaction log value version {version}"));
        }
        let flexible = version >= 1;
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        let timeout_ms = r.i32()?;
        let state_id = r.i8()?;
        let state = TxnState::from_id(state_id)
            .map_or_else(|| err(format!("unknown transaction state {state_id}")), Ok)?;
        let count = r.array_len(flexible)?;
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let topic = r.string(flexible)?;
            let n = r.array_len(flexible)?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(r.i32()?);
            }
            if flexible {
                r.skip_tagged_fields()?;
            }
            partitions.push((topic, ids));
        }
        let last_update_ms = r.i64()?;
        let start_ms = r.i64()?;
        let mut value = TxnLogValue {
            producer_id,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_ms,
            start_ms,
            client_transaction_version: 0,
        };
        if flexible {
            let tags = r.varint()?;
            for _ in 0..tags {
                let tag = r.varint()?;
                let size = r.varint()? as usize;
                let field = r.take(size)?;
                let mut f = Reader::new(field);
                match tag {
                    0 => value.previous_producer_id = f.i64()?,
                    1 => value.next_producer_id = f.i64()?,
                    2 => value.client_transaction_version = f.i16()?,
                    _ => {}
                }
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> TxnLogValue {
        TxnLogValue {
            producer_id: 4000,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: vec![
                ("orders".into(), vec![0, 2]),
                ("__consumer_offsets".into(), vec![7]),
            ],
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn key_layout_is_kafkas() {
        assert_eq!(&encode_key("tx")[..], &[0, 0, 0, 2, b't', b'x']);
        assert_eq!(decode_key(&encode_key("app-1")).as_deref(), Ok("app-1"));
        assert!(decode_key(&[0, 1, 0, 0]).is_err(), "unknown key version");
    }

    #[test]
    fn value_v1_round_trips_with_tagged_fields() {
        let mut v = value();
        assert_eq!(TxnLogValue::decode(&v.encode()), Ok(v.clone()));
        v.previous_producer_id = 12;
        v.next_producer_id = 13;
        v.client_transaction_version = 2;
        v.partitions.clear();
        v.state = TxnState::CompleteCommit;
        assert_eq!(TxnLogValue::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn value_v0_decodes() {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i64(7);
        buf.put_i16(1);
        buf.put_i32(10_000);
        buf.put_i8(3);
        buf.put_i32(1);
        put_string(&mut buf, "t");
        buf.put_i32(2);
        buf.put_i32(0);
        buf.put_i32(1);
        buf.put_i64(5);
        buf.put_i64(4);
        let v = TxnLogValue::decode(&buf).expect("v0");
        assert_eq!(v.state, TxnState::PrepareAbort);
        assert_eq!(v.partitions, vec![("t".to_string(), vec![0, 1])]);
        assert_eq!((v.last_update_ms, v.start_ms), (5, 4));
    }

    #[test]
    fn truncated_values_are_errors() {
        let full = value().encode();
        for cut in 0..full.len() {
            assert!(TxnLogValue::decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = BytesMut::from(&full[..]);
        bad[2 + 8 + 2 + 4] = 9;
        assert!(TxnLogValue::decode(&bad).is_err(), "unknown state");
    }
}
