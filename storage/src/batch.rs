//! Kafka record batches, format v2 (magic 2), as bytes.
//!
//! ```text
//! baseOffset: int64            0
//! batchLength: int32           8   bytes after this field
//! partitionLeaderEpoch: int32 12
//! magic: int8                 16   = 2
//! crc: uint32                 17   CRC-32C of attributes..end
//! attributes: int16           21   codec(0-2) timestampType(3) transactional(4) control(5) deleteHorizon(6)
//! lastOffsetDelta: int32      23
//! baseTimestamp: int64        27
//! maxTimestamp: int64         35
//! producerId: int64           43
//! producerEpoch: int16        51
//! baseSequence: int32         53
//! recordsCount: int32         57
//! records                     61
//! ```
//!
//! `baseOffset` and `partitionLeaderEpoch` lie before the CRC'd range, so the log can assign
//! offsets and stamp the leader epoch without touching the checksum.

use bytes::{BufMut, Bytes, BytesMut};

use crate::compression::{self, Compression};
use crate::error::{Result, StorageError};

pub const BASE_OFFSET: usize = 0;
pub const BATCH_LENGTH: usize = 8;
pub const PARTITION_LEADER_EPOCH: usize = 12;
pub const MAGIC: usize = 16;
pub const CRC: usize = 17;
pub const ATTRIBUTES: usize = 21;
pub const LAST_OFFSET_DELTA: usize = 23;
pub const BASE_TIMESTAMP: usize = 27;
pub const MAX_TIMESTAMP: usize = 35;
pub const PRODUCER_ID: usize = 43;
pub const PRODUCER_EPOCH: usize = 51;
pub const BASE_SEQUENCE: usize = 53;
pub const RECORDS_COUNT: usize = 57;
/// Size of the v2 batch header; the records start here.
pub const HEADER_SIZE: usize = 61;
/// Bytes before `batchLength` counts: `baseOffset` and `batchLength` themselves.
pub const LOG_OVERHEAD: usize = 12;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const DELETE_HORIZON_BIT: i16 = 1 << 6;

/// `partitionLeaderEpoch` of a batch written without a leader epoch.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_TIMESTAMP: i64 = -1;

/// Kafka's control record types (the `type` field of a control record key). Runnel reuses
/// KRaft's: a new Raft leader's no-op entry is a `LeaderChange` record, a membership change a
/// `KRaftVoters` record. Every client skips control batches.
pub mod control_type {
    pub const ABORT: i16 = 0;
    pub const COMMIT: i16 = 1;
    pub const LEADER_CHANGE: i16 = 2;
    pub const KRAFT_VOTERS: i16 = 6;
    /// Runnel's own: `DeleteRecords` replicated through Raft, the value the new log start
    /// offset (8 bytes, big-endian). Clients skip control batches they do not know.
    pub const LOG_START_OFFSET: i16 = 1000;
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The decoded v2 batch header. Parsing it checks sizes only; [`BatchHeader::validate`]
/// checks the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Needs [`HEADER_SIZE`] bytes; does not require
    /// the whole batch to be present.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < HEADER_SIZE {
            return Err(StorageError::TruncatedBatch {
                needed: HEADER_SIZE,
                available: buf.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET),
            batch_length: be_i32(buf, BATCH_LENGTH),
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH),
            magic: buf[MAGIC] as i8,
            crc: be_u32(buf, CRC),
            attributes: be_i16(buf, ATTRIBUTES),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP),
            producer_id: be_i64(buf, PRODUCER_ID),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH),
            base_sequence: be_i32(buf, BASE_SEQUENCE),
            records_count: be_i32(buf, RECORDS_COUNT),
        })
    }

    /// Total size of the batch on disk and on the wire, with a length already checked by
    /// [`BatchHeader::check_length`].
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Checks the length field against the v2 header size and `max_size`, returning the total
    /// batch size.
    pub fn check_length(&self, max_size: usize) -> Result<usize> {
        let len = i64::from(self.batch_length);
        if len < (HEADER_SIZE - LOG_OVERHEAD) as i64 {
            return Err(StorageError::InvalidBatchLength(len));
        }
        let size = LOG_OVERHEAD + len as usize;
        if size > max_size {
            return Err(StorageError::BatchTooLarge {
                size,
                max: max_size,
            });
        }
        Ok(size)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression(&self) -> Result<Compression> {
        Compression::from_id(self.attributes & COMPRESSION_MASK)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & DELETE_HORIZON_BIT != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// A Raft-internal control batch (a new leader's no-op, a membership change) that takes no
    /// Kafka offset: `lastOffsetDelta` is -1, so the next batch starts at the same offset and
    /// consumers see offsets exactly as Kafka assigns them. Never served to clients.
    pub fn is_zero_width(&self) -> bool {
        self.is_control() && self.last_offset_delta == -1
    }

    /// The offset after this batch (its base offset for a zero-width batch).
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Checks everything but the CRC that an append needs: magic, codec, record count and
    /// offset delta consistency.
    pub fn validate(&self) -> Result<()> {
        if self.magic != 2 {
            return Err(StorageError::UnsupportedMagic(self.magic));
        }
        self.compression()?;
        if self.is_zero_width() {
            return if self.records_count == 1 {
                Ok(())
            } else {
                Err(StorageError::InvalidBatch(
                    "a zero-width control batch holds exactly one record".into(),
                ))
            };
        }
        if self.records_count < 0 {
            return Err(StorageError::InvalidBatch(format!(
                "negative record count {}",
                self.records_count
            )));
        }
        if self.last_offset_delta < 0 {
            return Err(StorageError::InvalidBatch(format!(
                "negative lastOffsetDelta {}",
                self.last_offset_delta
            )));
        }
        // Offsets inside a batch are distinct, so the batch spans at least one offset per
        // record. The cleaner leaves gaps, so the span may be larger.
        if i64::from(self.last_offset_delta) + 1 < i64::from(self.records_count) {
            return Err(StorageError::InvalidBatch(format!(
                "{} records cannot fit in lastOffsetDelta {}",
                self.records_count, self.last_offset_delta
            )));
        }
        Ok(())
    }
}

/// CRC-32C of a whole batch's checksummed range (attributes to the end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Checks the stored CRC of a complete batch.
pub fn verify_crc(batch: &[u8], header: &BatchHeader) -> Result<()> {
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(StorageError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Splits `buf` into complete, fully validated batches (header, CRC, size bounded by
/// `max_batch_size`). Fails on the first bad batch; a trailing partial batch is an error.
pub fn validate_batches(buf: &[u8], max_batch_size: usize) -> Result<Vec<(usize, BatchHeader)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let header = BatchHeader::parse(rest)?;
        let size = header.check_length(max_batch_size)?;
        if rest.len() < size {
            return Err(StorageError::TruncatedBatch {
                needed: size,
                available: rest.len(),
            });
        }
        header.validate()?;
        verify_crc(&rest[..size], &header)?;
        out.push((pos, header));
        pos += size;
    }
    Ok(out)
}

/// Iterates the complete batches in a buffer of batches already known to be well formed
/// (read back from a segment), yielding `(position, header)`.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter { buf, pos: 0 }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = (usize, BatchHeader);
    fn next(&mut self) -> Option<Self::Item> {
        let header = BatchHeader::parse(&self.buf[self.pos..]).ok()?;
        let size = header.size();
        if size < HEADER_SIZE || self.pos + size > self.buf.len() {
            return None;
        }
        let at = self.pos;
        self.pos += size;
        Some((at, header))
    }
}

/// One record inside a batch. `key` and `value` borrow the decoded (decompressed) records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's whole encoding, length prefix included, so it can be copied verbatim into
    /// a rebuilt batch with the same base offset and base timestamp.
    pub raw: &'a [u8],
}

fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| StorageError::InvalidRecords("varint runs past the records".into()))?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(StorageError::InvalidRecords(
                "varint overflows 64 bits".into(),
            ));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(StorageError::InvalidRecords(
        "varint longer than 10 bytes".into(),
    ))
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32> {
    let v = read_varlong(buf, pos)?;
    i32::try_from(v)
        .map_err(|_| StorageError::InvalidRecords(format!("varint {v} overflows 32 bits")))
}

fn read_nullable<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>> {
    let len = read_varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| {
            StorageError::InvalidRecords(format!("field of {len} bytes runs past the record"))
        })?;
    let out = &buf[*pos..end];
    *pos = end;
    Ok(Some(out))
}

pub(crate) fn write_varlong(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

/// Parses the uncompressed records section of a batch: exactly `count` records.
pub fn parse_records(body: &[u8], count: i32) -> Result<Vec<RecordView<'_>>> {
    let count = usize::try_from(count)
        .map_err(|_| StorageError::InvalidRecords("negative count".into()))?;
    // Each record takes at least 7 bytes, which bounds the allocation by the input size.
    let mut out = Vec::with_capacity(count.min(body.len() / 7 + 1));
    let mut pos = 0;
    for _ in 0..count {
        let start = pos;
        let len = read_varint(body, &mut pos)?;
        if len < 0 {
            return Err(StorageError::InvalidRecords(format!(
                "negative record length {len}"
            )));
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| {
                StorageError::InvalidRecords(format!("record of {len} bytes runs past the batch"))
            })?;
        let rec = &body[..end];
        let mut p = pos + 1; // attributes (unused in v2)
        if p > end {
            return Err(StorageError::InvalidRecords("empty record".into()));
        }
        let timestamp_delta = read_varlong(rec, &mut p)?;
        let offset_delta = read_varint(rec, &mut p)?;
        let key = read_nullable(rec, &mut p)?;
        let value = read_nullable(rec, &mut p)?;
        out.push(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
            raw: &body[start..end],
        });
        pos = end;
    }
    if pos != body.len() {
        return Err(StorageError::InvalidRecords(format!(
            "{} bytes left after {count} records",
            body.len() - pos
        )));
    }
    Ok(out)
}

/// The records section of a complete batch, decompressed if needed (bounded by
/// `max_decompressed`).
pub fn records_body(batch: &[u8], header: &BatchHeader, max_decompressed: usize) -> Result<Bytes> {
    let body = &batch[HEADER_SIZE..header.size()];
    compression::decompress(header.compression()?, body, max_decompressed)
}

/// A record to build a batch from (tests, control records, tools).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Producer fields and flags of a batch to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub compression: Compression,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
    pub control: bool,
    pub log_append_time: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            compression: Compression::None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
            log_append_time: false,
        }
    }
}

fn encode_record(out: &mut BytesMut, offset_delta: i32, timestamp_delta: i64, rec: &NewRecord) {
    let mut body = BytesMut::new();
    body.put_i8(0);
    write_varlong(&mut body, timestamp_delta);
    write_varlong(&mut body, i64::from(offset_delta));
    for field in [&rec.key, &rec.value] {
        match field {
            Some(b) => {
                write_varlong(&mut body, b.len() as i64);
                body.put_slice(b);
            }
            None => write_varlong(&mut body, -1),
        }
    }
    write_varlong(&mut body, rec.headers.len() as i64);
    for (k, v) in &rec.headers {
        write_varlong(&mut body, k.len() as i64);
        body.put_slice(k.as_bytes());
        match v {
            Some(v) => {
                write_varlong(&mut body, v.len() as i64);
                body.put_slice(v);
            }
            None => write_varlong(&mut body, -1),
        }
    }
    write_varlong(out, body.len() as i64);
    out.put_slice(&body);
}

/// Builds one v2 batch with base offset 0 and records at offset deltas 0..n. Used by tests,
/// tools and for control batches; the broker stores client batches as received.
pub fn build_batch(records: &[NewRecord], options: &BatchOptions) -> Result<Bytes> {
    if records.is_empty() {
        return Err(StorageError::InvalidBatch(
            "a batch needs at least one record".into(),
        ));
    }
    let base_timestamp = records[0].timestamp;
    let max_timestamp = records
        .iter()
        .map(|r| r.timestamp)
        .max()
        .unwrap_or(base_timestamp);
    let mut body = BytesMut::new();
    for (i, rec) in records.iter().enumerate() {
        encode_record(&mut body, i as i32, rec.timestamp - base_timestamp, rec);
    }
    let mut attributes = options.compression.id();
    if options.log_append_time {
        attributes |= TIMESTAMP_TYPE_BIT;
    }
    if options.transactional {
        attributes |= TRANSACTIONAL_BIT;
    }
    if options.control {
        attributes |= CONTROL_BIT;
    }
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        magic: 2,
        crc: 0,
        attributes,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp,
        max_timestamp,
        producer_id: options.producer_id,
        producer_epoch: options.producer_epoch,
        base_sequence: options.base_sequence,
        records_count: records.len() as i32,
    };
    let compressed = compression::compress(options.compression, &body)?;
    Ok(assemble(&header, &compressed))
}

/// Writes `header` (fixing length and CRC) followed by the records section.
pub fn assemble(header: &BatchHeader, records_section: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_SIZE + records_section.len());
    out.put_i64(header.base_offset);
    out.put_i32((HEADER_SIZE - LOG_OVERHEAD + records_section.len()) as i32);
    out.put_i32(header.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0);
    out.put_i16(header.attributes);
    out.put_i32(header.last_offset_delta);
    out.put_i64(header.base_timestamp);
    out.put_i64(header.max_timestamp);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(header.records_count);
    out.put_slice(records_section);
    let crc = compute_crc(&out);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// A control batch holding one control record of `control_type` (key: version 0, type) with
/// `value` as its payload. Raft no-op and membership entries are stored this way.
pub fn build_control_batch(
    control_type: i16,
    value: Option<Bytes>,
    timestamp: i64,
) -> Result<Bytes> {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(control_type);
    let record = NewRecord {
        timestamp,
        key: Some(key.freeze()),
        value,
        headers: Vec::new(),
    };
    build_batch(
        &[record],
        &BatchOptions {
            control: true,
            ..BatchOptions::default()
        },
    )
}

/// A zero-width control batch (see [`BatchHeader::is_zero_width`]): Raft's no-op and
/// membership entries are stored this way so they take no Kafka offset.
pub fn build_raft_control_batch(
    control_type: i16,
    value: Option<Bytes>,
    timestamp: i64,
) -> Result<Bytes> {
    let batch = build_control_batch(control_type, value, timestamp)?;
    let mut header = BatchHeader::parse(&batch)?;
    header.last_offset_delta = -1;
    Ok(assemble(&header, &batch[HEADER_SIZE..]))
}

/// The new log start offset a [`control_type::LOG_START_OFFSET`] batch carries.
pub fn parse_log_start_offset(batch: &[u8]) -> Option<u64> {
    if control_type_of(batch)? != control_type::LOG_START_OFFSET {
        return None;
    }
    let header = BatchHeader::parse(batch).ok()?;
    let body = records_body(batch, &header, 1 << 20).ok()?;
    let records = parse_records(&body, header.records_count).ok()?;
    let value = records.first()?.value?;
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// The control type of a control batch's first record, if it is a well-formed control batch.
pub fn control_type_of(batch: &[u8]) -> Option<i16> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.size() > batch.len() {
        return None;
    }
    let body = records_body(batch, &header, 1 << 20).ok()?;
    let records = parse_records(&body, header.records_count).ok()?;
    let key = records.first()?.key?;
    (key.len() >= 4).then(|| be_i16(key, 2))
}

/// `type` of an end-transaction marker's control record key that aborts the transaction.
pub const CONTROL_ABORT: i16 = control_type::ABORT;
/// `type` of an end-transaction marker's control record key that commits the transaction.
pub const CONTROL_COMMIT: i16 = control_type::COMMIT;
/// Version of the control record key and of the `EndTransactionMarker` value Runnel writes.
const END_TXN_MARKER_VERSION: i16 = 0;
/// The largest batch [`parse_end_txn_marker`] looks into (stored or decompressed). A marker
/// is one tiny record (about 80 bytes); anything bigger is not one.
pub const MAX_END_TXN_MARKER_BATCH_BYTES: usize = 4096;

/// The decoded value of an end-transaction marker (Kafka's `EndTransactionMarker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    /// COMMIT (`true`) or ABORT (`false`).
    pub commit: bool,
    /// Epoch of the transaction coordinator that wrote the marker.
    pub coordinator_epoch: i32,
}

/// The end-transaction marker the transaction coordinator appends to each partition of a
/// transaction, byte for byte as Kafka's `MemoryRecords.withEndTransactionMarker` writes it: an
/// uncompressed CreateTime v2 batch with the control and transactional bits set, the
/// producer's id and epoch, base sequence -1, and one record at offset delta 0 whose key is
/// `(version: int16 = 0, type: int16)` (0 = ABORT, 1 = COMMIT) and whose value is
/// `(version: int16 = 0, coordinatorEpoch: int32)`. Base offset 0, no partition leader epoch:
/// the log assigns both.
pub fn build_end_txn_marker(
    commit: bool,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Result<Bytes> {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(END_TXN_MARKER_VERSION);
    key.put_i16(if commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    });
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(END_TXN_MARKER_VERSION);
    value.put_i32(coordinator_epoch);
    let record = NewRecord {
        timestamp,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Vec::new(),
    };
    build_batch(
        &[record],
        &BatchOptions {
            compression: Compression::None,
            producer_id,
            producer_epoch,
            base_sequence: -1,
            transactional: true,
            control: true,
            log_append_time: false,
        },
    )
}

/// The end-transaction marker in `batch`, or `None` unless `batch` is a complete, well-formed
/// transactional control batch (not zero-width, with a producer id, at most
/// [`MAX_END_TXN_MARKER_BATCH_BYTES`]) whose first record is an ABORT or COMMIT marker. As in
/// Kafka, key and value versions above 0 are read as version 0.
pub fn parse_end_txn_marker(batch: &[u8]) -> Option<EndTxnMarker> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control()
        || !header.is_transactional()
        || header.is_zero_width()
        || !header.has_producer_id()
        || header.records_count < 1
    {
        return None;
    }
    let size = header.check_length(MAX_END_TXN_MARKER_BATCH_BYTES).ok()?;
    if size > batch.len() {
        return None;
    }
    let body = records_body(batch, &header, MAX_END_TXN_MARKER_BATCH_BYTES).ok()?;
    let records = parse_records(&body, header.records_count).ok()?;
    let record = records.first()?;
    let key = record.key.filter(|k| k.len() >= 4 && be_i16(k, 0) >= 0)?;
    let commit = match be_i16(key, 2) {
        CONTROL_ABORT => false,
        CONTROL_COMMIT => true,
        _ => return None,
    };
    let value = record.value.filter(|v| v.len() >= 6 && be_i16(v, 0) >= 0)?;
    Some(EndTxnMarker {
        commit,
        coordinator_epoch: be_i32(value, 2),
    })
}

/// Overwrites `baseOffset` (outside the CRC'd range).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites `partitionLeaderEpoch` (outside the CRC'd range).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with `timestamp` as its max timestamp, and fixes the CRC.
/// Brokers do this for topics with `message.timestamp.type=LogAppendTime`.
pub fn set_log_append_time(batch: &mut [u8], timestamp: i64) {
    let attributes = be_i16(batch, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64, key: &str, value: Option<&str>) -> NewRecord {
        NewRecord {
            timestamp: ts,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
        }
    }

    #[test]
    fn built_batch_round_trips_header_and_records() {
        let batch = build_batch(
            &[rec(100, "a", Some("1")), rec(105, "b", None)],
            &BatchOptions::default(),
        )
        .expect("build");
        let header = BatchHeader::parse(&batch).expect("parse");
        assert_eq!(header.size(), batch.len());
        header.validate().expect("valid");
        verify_crc(&batch, &header).expect("crc");
        assert_eq!(header.records_count, 2);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.max_timestamp, 105);
        let body = records_body(&batch, &header, 1 << 20).expect("body");
        let records = parse_records(&body, header.records_count).expect("records");
        assert_eq!(records[0].key, Some(&b"a"[..]));
        assert_eq!(records[0].value, Some(&b"1"[..]));
        assert_eq!(records[1].timestamp_delta, 5);
        assert_eq!(records[1].offset_delta, 1);
        assert_eq!(records[1].value, None);
    }

    #[test]
    fn every_codec_round_trips() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records: Vec<_> = (0..50)
                .map(|i| rec(i, &format!("k{i}"), Some("value value value")))
                .collect();
            let batch = build_batch(
                &records,
                &BatchOptions {
                    compression,
                    ..Default::default()
                },
            )
            .expect("build");
            let header = BatchHeader::parse(&batch).expect("parse");
            assert_eq!(header.compression().expect("codec"), compression);
            let body = records_body(&batch, &header, 1 << 20).expect("decompress");
            let parsed = parse_records(&body, header.records_count).expect("records");
            assert_eq!(parsed.len(), 50, "{compression:?}");
            assert_eq!(parsed[49].key, Some(&b"k49"[..]));
        }
    }

    #[test]
    fn stamping_offset_and_epoch_keeps_crc_valid() {
        let mut batch = build_batch(&[rec(1, "a", Some("v"))], &BatchOptions::default())
            .expect("build")
            .to_vec();
        set_base_offset(&mut batch, 42);
        set_partition_leader_epoch(&mut batch, 7);
        let header = BatchHeader::parse(&batch).expect("parse");
        assert_eq!((header.base_offset, header.partition_leader_epoch), (42, 7));
        verify_crc(&batch, &header).expect("CRC does not cover offset and epoch");
    }

    #[test]
    fn flipped_byte_in_checksummed_range_fails_crc() {
        let batch =
            build_batch(&[rec(1, "a", Some("v"))], &BatchOptions::default()).expect("build");
        for i in ATTRIBUTES..batch.len() {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x01;
            let err = validate_batches(&bad, 1 << 20);
            assert!(err.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn bad_headers_get_typed_errors() {
        let batch =
            build_batch(&[rec(1, "a", Some("v"))], &BatchOptions::default()).expect("build");
        assert!(matches!(
            validate_batches(&batch[..30], 1 << 20),
            Err(StorageError::TruncatedBatch { .. })
        ));
        assert!(matches!(
            validate_batches(&batch[..batch.len() - 1], 1 << 20),
            Err(StorageError::TruncatedBatch { .. })
        ));
        assert!(matches!(
            validate_batches(&batch, 10),
            Err(StorageError::BatchTooLarge { .. })
        ));
        let mut bad = batch.to_vec();
        bad[MAGIC] = 1;
        assert!(matches!(
            validate_batches(&bad, 1 << 20),
            Err(StorageError::UnsupportedMagic(1))
        ));
        let mut bad = batch.to_vec();
        bad[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batches(&bad, 1 << 20),
            Err(StorageError::InvalidBatchLength(-5))
        ));
    }

    #[test]
    fn raft_control_batches_take_no_offset() {
        let batch = build_raft_control_batch(control_type::LEADER_CHANGE, None, 5).expect("build");
        let header = BatchHeader::parse(&batch).expect("parse");
        header.validate().expect("valid");
        verify_crc(&batch, &header).expect("crc");
        assert!(header.is_zero_width());
        assert_eq!(header.next_offset(), header.base_offset);
        assert_eq!(control_type_of(&batch), Some(control_type::LEADER_CHANGE));
    }

    #[test]
    fn control_batches_carry_their_type() {
        let batch = build_control_batch(control_type::LEADER_CHANGE, None, 5).expect("build");
        let header = BatchHeader::parse(&batch).expect("parse");
        assert!(header.is_control());
        assert_eq!(control_type_of(&batch), Some(control_type::LEADER_CHANGE));
    }

    #[test]
    fn end_txn_markers_are_written_as_kafka_writes_them_and_parse_back() {
        let batch = build_end_txn_marker(false, 42, 3, 7, 1234).expect("build");
        let header = BatchHeader::parse(&batch).expect("parse");
        header.validate().expect("valid");
        verify_crc(&batch, &header).expect("crc");
        assert!(header.is_control() && header.is_transactional());
        assert!(!header.is_zero_width());
        assert_eq!(header.compression().expect("codec"), Compression::None);
        assert!(!header.is_log_append_time());
        assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
        assert_eq!(header.base_sequence, -1);
        assert_eq!((header.records_count, header.last_offset_delta), (1, 0));
        assert_eq!((header.base_timestamp, header.max_timestamp), (1234, 1234));
        assert_eq!(header.partition_leader_epoch, NO_PARTITION_LEADER_EPOCH);
        // Kafka's layout: 61-byte header + one 17-byte record (length 16, attributes 0,
        // timestamp delta 0, offset delta 0, 4-byte key, 6-byte value, no headers).
        assert_eq!(batch.len(), HEADER_SIZE + 17);
        assert_eq!(
            &batch[HEADER_SIZE..],
            &[32, 0, 0, 0, 8, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 7, 0][..]
        );
        assert_eq!(
            parse_end_txn_marker(&batch),
            Some(EndTxnMarker {
                commit: false,
                coordinator_epoch: 7
            })
        );
        assert_eq!(control_type_of(&batch), Some(CONTROL_ABORT));
        let commit = build_end_txn_marker(true, 42, 3, 8, 1234).expect("build");
        assert_eq!(
            parse_end_txn_marker(&commit),
            Some(EndTxnMarker {
                commit: true,
                coordinator_epoch: 8
            })
        );
    }

    #[test]
    fn only_well_formed_transactional_control_batches_are_markers() {
        let data = build_batch(
            &[rec(1, "a", Some("v"))],
            &BatchOptions {
                producer_id: 1,
                producer_epoch: 0,
                base_sequence: 0,
                transactional: true,
                ..Default::default()
            },
        )
        .expect("build");
        assert_eq!(parse_end_txn_marker(&data), None, "data batch");
        let raft = build_raft_control_batch(control_type::LEADER_CHANGE, None, 5).expect("raft");
        assert_eq!(parse_end_txn_marker(&raft), None, "zero-width Raft batch");
        let plain = build_control_batch(CONTROL_COMMIT, None, 5).expect("control");
        assert_eq!(parse_end_txn_marker(&plain), None, "not transactional");
        let marker = build_end_txn_marker(true, 9, 0, 0, 5).expect("marker");
        assert_eq!(
            parse_end_txn_marker(&marker[..marker.len() - 1]),
            None,
            "torn"
        );
        assert_eq!(parse_end_txn_marker(&marker[..20]), None, "header only");
        let mut other_type = marker.to_vec();
        // The key's type is record bytes 7..9 (after length, attributes, timestamp and offset
        // deltas, key length and key version).
        other_type[HEADER_SIZE + 7] = 0;
        other_type[HEADER_SIZE + 8] = control_type::LEADER_CHANGE as u8;
        assert_eq!(
            parse_end_txn_marker(&other_type),
            None,
            "other control type"
        );
        let mut short_value = marker.to_vec();
        short_value[HEADER_SIZE + 9] = 4; // value length 2: no room for the coordinator epoch
        assert_eq!(parse_end_txn_marker(&short_value), None, "value too short");
    }

    #[test]
    fn log_append_time_sets_max_timestamp_and_crc() {
        let mut batch = build_batch(&[rec(1, "a", Some("v"))], &BatchOptions::default())
            .expect("build")
            .to_vec();
        set_log_append_time(&mut batch, 999);
        let header = BatchHeader::parse(&batch).expect("parse");
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 999);
        verify_crc(&batch, &header).expect("crc fixed");
    }
}
