//! One log segment (Kafka's `LogSegment`): `<baseOffset>.log` with its `.index`, `.timeindex`,
//! `.entryindex` and `.txnindex`. Only the last segment of a log (the active one) is appended
//! to.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::error::{IoContext, Result, StorageError};
use crate::index::{
    entry_index_header, parse_entry_index_header, IndexFile, OffsetPosition, TimestampOffset,
    ENTRIES_UNAVAILABLE, ENTRY_INDEX_HEADER_LEN,
};
use crate::producer_state::AbortedTxn;
use crate::txn_index::TxnIndex;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
pub(crate) const ENTRY_INDEX_SUFFIX: &str = ".entryindex";
pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";
/// Index suffixes, for cleanup of a segment's files.
pub(crate) const SEGMENT_SUFFIXES: [&str; 5] = [
    LOG_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    ENTRY_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
];

const SCAN_CHUNK: usize = 1 << 20;
const WALK_CHUNK: usize = 16 << 10;

pub(crate) fn file_name(base_offset: u64, suffix: &str) -> String {
    format!("{base_offset:020}{suffix}")
}

/// What a scan of a segment's batches found: where the valid data ends, and why it stopped
/// there if that is not the end of the file.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    pub(crate) valid_end: u64,
    pub(crate) file_len: u64,
    pub(crate) problem: Option<String>,
}

#[derive(Debug)]
pub(crate) struct LogSegment {
    base_offset: u64,
    log_path: PathBuf,
    file: OnceLock<File>,
    size: u64,
    next_offset: u64,
    first_entry_index: u64,
    entries_available: bool,
    offset_index: IndexFile<OffsetPosition>,
    time_index: IndexFile<TimestampOffset>,
    entry_index: IndexFile<OffsetPosition>,
    txn_index: TxnIndex,
    max_timestamp: i64,
    offset_of_max_timestamp: u64,
    last_index_position: u64,
    last_time_index_timestamp: i64,
    /// Max timestamp of the first batch: `segment.ms` counts from it, as in Kafka.
    rolling_base_timestamp: Option<i64>,
    created_ms: i64,
    index_interval: u64,
}

fn open_log_file(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(create)
        .open(path)
        .at(path)
}

impl LogSegment {
    /// A new, empty segment (files created or emptied).
    pub(crate) fn create(
        dir: &Path,
        base_offset: u64,
        first_entry_index: u64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<LogSegment> {
        let log_path = dir.join(file_name(base_offset, LOG_SUFFIX));
        let file = open_log_file(&log_path, true)?;
        file.set_len(0).at(&log_path)?;
        let segment = LogSegment {
            base_offset,
            file: OnceLock::new(),
            size: 0,
            next_offset: base_offset,
            first_entry_index,
            entries_available: true,
            offset_index: IndexFile::create(dir.join(file_name(base_offset, INDEX_SUFFIX)), &[])?,
            time_index: IndexFile::create(
                dir.join(file_name(base_offset, TIME_INDEX_SUFFIX)),
                &[],
            )?,
            entry_index: IndexFile::create(
                dir.join(file_name(base_offset, ENTRY_INDEX_SUFFIX)),
                &entry_index_header(first_entry_index, 0),
            )?,
            txn_index: TxnIndex::create(dir.join(file_name(base_offset, TXN_INDEX_SUFFIX)))?,
            max_timestamp: batch::NO_TIMESTAMP,
            offset_of_max_timestamp: base_offset,
            last_index_position: 0,
            last_time_index_timestamp: i64::MIN,
            rolling_base_timestamp: None,
            created_ms: now_ms,
            index_interval,
            log_path,
        };
        let _ = segment.file.set(file);
        Ok(segment)
    }

    /// Opens an existing segment trusting its indexes if they pass a sanity check. Returns the
    /// segment and whether its indexes need rebuilding (they were missing or inconsistent).
    /// `first_entry_index` is `None` when the entry index header is unreadable.
    pub(crate) fn open(
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<(LogSegment, bool)> {
        let log_path = dir.join(file_name(base_offset, LOG_SUFFIX));
        let size = std::fs::metadata(&log_path).at(&log_path)?.len();
        let mut needs_rebuild = false;
        let offset_index = match IndexFile::open(dir.join(file_name(base_offset, INDEX_SUFFIX)), 0)
        {
            Ok(i) => i,
            Err(_) => {
                needs_rebuild = true;
                IndexFile::create(dir.join(file_name(base_offset, INDEX_SUFFIX)), &[])?
            }
        };
        let time_index =
            match IndexFile::open(dir.join(file_name(base_offset, TIME_INDEX_SUFFIX)), 0) {
                Ok(i) => i,
                Err(_) => {
                    needs_rebuild = true;
                    IndexFile::create(dir.join(file_name(base_offset, TIME_INDEX_SUFFIX)), &[])?
                }
            };
        let entry_path = dir.join(file_name(base_offset, ENTRY_INDEX_SUFFIX));
        let mut header_info = None;
        let entry_index =
            match IndexFile::<OffsetPosition>::open(entry_path.clone(), ENTRY_INDEX_HEADER_LEN) {
                Ok(i) => {
                    let mut h = [0u8; 16];
                    i.read_header(&mut h)?;
                    match parse_entry_index_header(&entry_path, &h) {
                        Ok(info) => {
                            header_info = Some(info);
                            i
                        }
                        Err(_) => {
                            needs_rebuild = true;
                            IndexFile::create(entry_path.clone(), &entry_index_header(0, 0))?
                        }
                    }
                }
                Err(_) => {
                    needs_rebuild = true;
                    IndexFile::create(entry_path.clone(), &entry_index_header(0, 0))?
                }
            };
        let (first_entry_index, flags) = header_info.unwrap_or((0, 0));
        // Every marker is a batch of at least a header: that bounds the entries to read.
        let txn_index = TxnIndex::open(
            dir.join(file_name(base_offset, TXN_INDEX_SUFFIX)),
            (size / HEADER_SIZE as u64).min(usize::MAX as u64) as usize,
        )?;
        let mut segment = LogSegment {
            base_offset,
            log_path,
            file: OnceLock::new(),
            size,
            next_offset: base_offset,
            first_entry_index,
            entries_available: flags & ENTRIES_UNAVAILABLE == 0,
            offset_index,
            time_index,
            entry_index,
            txn_index,
            max_timestamp: batch::NO_TIMESTAMP,
            offset_of_max_timestamp: base_offset,
            last_index_position: 0,
            last_time_index_timestamp: i64::MIN,
            rolling_base_timestamp: None,
            created_ms: now_ms,
            index_interval,
        };
        if header_info.is_none() {
            segment.first_entry_index = u64::MAX; // resolved by the log from its neighbours
        }
        if !needs_rebuild && !segment.sanity_check()? {
            needs_rebuild = true;
        }
        if !needs_rebuild {
            segment.load_tail_state()?;
        }
        Ok((segment, needs_rebuild))
    }

    /// Cheap consistency checks of the indexes against the log file (Kafka's `sanityCheck`).
    fn sanity_check(&self) -> Result<bool> {
        if let Some(last) = self.offset_index.last()? {
            if u64::from(last.position) >= self.size.max(1) {
                return Ok(false);
            }
        }
        if let Some(last) = self.entry_index.last()? {
            if u64::from(last.position) >= self.size.max(1) {
                return Ok(false);
            }
        }
        if self.entries_available && self.size > 0 && self.entry_index.len() == 0 {
            return Ok(false);
        }
        Ok(true)
    }

    /// Fills in the in-memory facts of a segment opened from trusted indexes: max timestamp,
    /// next offset, index positions.
    fn load_tail_state(&mut self) -> Result<()> {
        if let Some(last) = self.time_index.last()? {
            self.max_timestamp = last.timestamp;
            self.offset_of_max_timestamp = self.base_offset + u64::from(last.relative_offset);
            self.last_time_index_timestamp = last.timestamp;
        }
        if let Some(last) = self.offset_index.last()? {
            self.last_index_position = u64::from(last.position);
        }
        let from = match (
            self.entries_available,
            self.entry_index.last()?,
            self.offset_index.last()?,
        ) {
            (true, Some(e), _) => u64::from(e.position),
            (_, _, Some(o)) => u64::from(o.position),
            _ => 0,
        };
        let mut next = self.base_offset;
        self.walk_headers(from, |_, h| {
            next = (h.last_offset() + 1) as u64;
            true
        })?;
        self.next_offset = next;
        if self.size > 0 {
            let mut first = None;
            self.walk_headers(0, |_, h| {
                first = Some(h.max_timestamp);
                false
            })?;
            self.rolling_base_timestamp = first;
        }
        Ok(())
    }

    pub(crate) fn base_offset(&self) -> u64 {
        self.base_offset
    }
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub(crate) fn offset_of_max_timestamp(&self) -> u64 {
        self.offset_of_max_timestamp
    }
    pub(crate) fn first_entry_index(&self) -> u64 {
        self.first_entry_index
    }
    pub(crate) fn set_first_entry_index(&mut self, first: u64) -> Result<()> {
        self.first_entry_index = first;
        let flags = if self.entries_available {
            0
        } else {
            ENTRIES_UNAVAILABLE
        };
        self.entry_index
            .write_header(&entry_index_header(first, flags))
    }
    pub(crate) fn entries_available(&self) -> bool {
        self.entries_available
    }
    pub(crate) fn entry_count(&self) -> usize {
        self.entry_index.len()
    }
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }
    pub(crate) fn index_entry_count(&self) -> usize {
        self.offset_index
            .len()
            .max(self.time_index.len())
            .max(self.entry_index.len())
    }

    /// How long this segment has been accumulating data, Kafka's way: by record timestamps
    /// when it has any, else by the clock since it was created or opened.
    pub(crate) fn time_waited_for_roll(&self, now_ms: i64, batch_max_timestamp: i64) -> i64 {
        match self.rolling_base_timestamp {
            Some(base) if base >= 0 && batch_max_timestamp >= 0 => batch_max_timestamp - base,
            _ => now_ms - self.created_ms,
        }
    }

    /// Largest timestamp for time retention; falls back to the file's modification time when
    /// no record carries a timestamp (as Kafka does).
    pub(crate) fn largest_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        std::fs::metadata(&self.log_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(i64::MAX)
    }

    fn file(&self) -> Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = open_log_file(&self.log_path, false)?;
        Ok(self.file.get_or_init(|| f))
    }

    /// Records a batch just written (or found by recovery) at `position` in the indexes.
    fn track_batch(&mut self, position: u64, h: &BatchHeader) {
        let base = h.base_offset as u64;
        let relative = (base - self.base_offset) as u32;
        // Raft no-ops carry the broker's clock, not record time: they never set the max.
        if h.max_timestamp > self.max_timestamp && !h.is_zero_width() {
            self.max_timestamp = h.max_timestamp;
            self.offset_of_max_timestamp = base;
        }
        if position - self.last_index_position > self.index_interval {
            self.offset_index.push(OffsetPosition {
                relative_offset: relative,
                position: position as u32,
            });
            self.last_index_position = position;
            self.maybe_append_time_entry();
        }
        if self.entries_available {
            self.entry_index.push(OffsetPosition {
                relative_offset: relative,
                position: position as u32,
            });
        }
        if self.rolling_base_timestamp.is_none() {
            self.rolling_base_timestamp = Some(h.max_timestamp);
        }
        self.next_offset = (h.last_offset() + 1) as u64;
        self.size = position + h.size() as u64;
    }

    fn maybe_append_time_entry(&mut self) {
        if self.max_timestamp > self.last_time_index_timestamp && self.max_timestamp >= 0 {
            let relative = (self.offset_of_max_timestamp - self.base_offset) as u32;
            self.time_index.push(TimestampOffset {
                timestamp: self.max_timestamp,
                relative_offset: relative,
            });
            self.last_time_index_timestamp = self.max_timestamp;
        }
    }

    /// Whether a batch spanning `last_offset` can still be indexed here (relative offsets are
    /// 32-bit).
    pub(crate) fn can_index(&self, last_offset: u64) -> bool {
        last_offset.saturating_sub(self.base_offset) <= u64::from(u32::MAX)
    }

    /// Appends one validated batch whose `baseOffset` the log has chosen; stamps offset and
    /// epoch into the header without touching the CRC'd range. One `writev`, no fsync. On a
    /// failed write the file is cut back so no partial batch stays behind.
    pub(crate) fn append(&mut self, raw: &[u8], header: &BatchHeader) -> Result<()> {
        let mut prefix = [0u8; 16];
        prefix[..8].copy_from_slice(&header.base_offset.to_be_bytes());
        prefix[8..12].copy_from_slice(&raw[8..12]);
        prefix[12..16].copy_from_slice(&header.partition_leader_epoch.to_be_bytes());
        let position = self.size;
        let file = self.file()?;
        let mut bufs = [IoSlice::new(&prefix), IoSlice::new(&raw[16..])];
        let mut slices: &mut [IoSlice<'_>] = &mut bufs;
        let mut writer = file;
        while !slices.is_empty() {
            match writer.write_vectored(slices) {
                Ok(0) => {
                    let err = std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "segment write returned 0",
                    );
                    return Err(self.undo_partial_write(position, err));
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.undo_partial_write(position, e)),
            }
        }
        self.track_batch(position, header);
        Ok(())
    }

    fn undo_partial_write(&self, position: u64, cause: std::io::Error) -> StorageError {
        if let Ok(file) = self.file() {
            if let Err(e) = file.set_len(position) {
                tracing::error!(path = %self.log_path.display(), error = %e, "could not cut back a failed append");
            }
        }
        StorageError::Io {
            path: self.log_path.clone(),
            source: cause,
        }
    }

    /// Writes pending index entries and fsyncs the log file and the transaction index (which
    /// costs nothing unless an abort was appended).
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.offset_index.write_pending()?;
        self.time_index.write_pending()?;
        self.entry_index.write_pending()?;
        self.txn_index.sync()?;
        self.file()?.sync_data().at(&self.log_path)
    }

    /// Makes data and indexes durable (for a recovery point).
    pub(crate) fn sync_all(&mut self) -> Result<()> {
        self.offset_index.sync()?;
        self.time_index.sync()?;
        self.entry_index.sync()?;
        self.txn_index.sync()?;
        self.file()?.sync_data().at(&self.log_path)
    }

    /// The aborted transactions whose ABORT marker is in this segment, in marker order.
    pub(crate) fn aborted_txns(&self) -> &[AbortedTxn] {
        self.txn_index.entries()
    }

    /// Indexes an aborted transaction whose marker was just appended (or replayed) here.
    pub(crate) fn append_aborted_txn(&mut self, txn: AbortedTxn) {
        self.txn_index.append(txn);
    }

    /// Drops the aborted transactions whose marker is at or after `offset`.
    pub(crate) fn truncate_aborted_txns_from(&mut self, offset: u64) -> Result<()> {
        self.txn_index.truncate_from(offset)
    }

    /// fsyncs the transaction index if it changed.
    pub(crate) fn sync_txn_index(&mut self) -> Result<()> {
        self.txn_index.sync()
    }

    /// Why this segment's transaction index cannot be trusted, if it cannot: damage found when
    /// loading it, or an entry whose marker lies outside the segment. Call after recovery. The
    /// active segment's entries past its end (a crash cut the log, not the index) are not a
    /// problem: the producer-state replay drops them.
    pub(crate) fn txn_index_problem(&self, active: bool) -> Option<String> {
        if let Some(damage) = self.txn_index.damage() {
            return Some(damage.to_string());
        }
        let outside = self.aborted_txns().iter().find(|t| {
            t.last_offset < self.base_offset || (!active && t.last_offset >= self.next_offset)
        })?;
        Some(format!(
            "marker offset {} of {} lies outside the segment [{}, {})",
            outside.last_offset,
            self.txn_index.path().display(),
            self.base_offset,
            self.next_offset
        ))
    }

    /// Turns the active segment into a sealed one: final time index entry, everything fsynced.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.maybe_append_time_entry();
        self.sync_all()
    }

    /// Rebuilds the indexes and in-memory state from `from_position`: index entries at or after
    /// the last offset index entry before `from_position` are dropped and the batches from
    /// there are scanned again, each checked (length, magic, CRC, offsets). Returns where the
    /// valid data ends; the caller decides whether what follows is a torn tail or corruption.
    pub(crate) fn recover_from(
        &mut self,
        from_position: u64,
        on_batch: &mut dyn FnMut(&BatchHeader),
    ) -> Result<ScanEnd> {
        let from_position = from_position.min(self.size);
        // Restart at an index point: the state there is derivable from the indexes alone.
        let keep = self
            .offset_index
            .count_below(from_position, |e| u64::from(e.position))?;
        let restart = if keep == 0 {
            None
        } else {
            Some(self.offset_index.get(keep - 1)?)
        };
        let (start, restart_relative) = match restart {
            Some(e) => (u64::from(e.position), e.relative_offset),
            None => (0, 0),
        };
        self.offset_index.truncate(keep.saturating_sub(1))?;
        let keep_entries = self
            .entry_index
            .count_below(start, |e| u64::from(e.position))?;
        self.entry_index.truncate(keep_entries)?;
        let keep_times = if start == 0 {
            0
        } else {
            self.time_index
                .count_below(restart_relative, |e| e.relative_offset)?
        };
        self.time_index.truncate(keep_times)?;
        self.last_index_position = match self.offset_index.last()? {
            Some(e) => u64::from(e.position),
            None => 0,
        };
        match self.time_index.last()? {
            Some(t) => {
                self.max_timestamp = t.timestamp;
                self.offset_of_max_timestamp = self.base_offset + u64::from(t.relative_offset);
                self.last_time_index_timestamp = t.timestamp;
            }
            None => {
                self.max_timestamp = batch::NO_TIMESTAMP;
                self.offset_of_max_timestamp = self.base_offset;
                self.last_time_index_timestamp = i64::MIN;
            }
        }
        self.next_offset = self.base_offset + u64::from(restart_relative);
        if start == 0 {
            self.rolling_base_timestamp = None;
        }
        self.scan(start, on_batch)
    }

    fn scan(&mut self, from: u64, on_batch: &mut dyn FnMut(&BatchHeader)) -> Result<ScanEnd> {
        let file_len = self.file()?.metadata().at(&self.log_path)?.len();
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = from;
        let mut pos = from;
        self.size = from;
        let problem = loop {
            if pos >= file_len {
                break None;
            }
            let remaining = file_len - pos;
            if remaining < HEADER_SIZE as u64 {
                break Some(format!(
                    "{remaining} bytes at position {pos} are too few for a batch header"
                ));
            }
            self.fill(&mut buf, &mut buf_start, pos, HEADER_SIZE, file_len)?;
            let header = match BatchHeader::parse(&buf[(pos - buf_start) as usize..]) {
                Ok(h) => h,
                Err(e) => break Some(format!("at position {pos}: {e}")),
            };
            let size = match header.check_length(remaining.min(i32::MAX as u64) as usize) {
                Ok(s) => s,
                Err(e) => break Some(format!("at position {pos}: {e}")),
            };
            self.fill(&mut buf, &mut buf_start, pos, size, file_len)?;
            let raw = &buf[(pos - buf_start) as usize..(pos - buf_start) as usize + size];
            if let Err(e) = header
                .validate()
                .and_then(|_| batch::verify_crc(raw, &header))
            {
                break Some(format!("at position {pos}: {e}"));
            }
            let base = header.base_offset;
            if base < 0
                || (base as u64) < self.next_offset
                || !self.can_index(header.next_offset().max(base) as u64)
            {
                break Some(format!(
                    "at position {pos}: batch base offset {base} does not follow offset {} in segment {}",
                    self.next_offset, self.base_offset
                ));
            }
            self.track_batch(pos, &header);
            on_batch(&header);
            pos += size as u64;
        };
        Ok(ScanEnd {
            valid_end: pos,
            file_len,
            problem,
        })
    }

    fn fill(
        &self,
        buf: &mut Vec<u8>,
        buf_start: &mut u64,
        pos: u64,
        need: usize,
        file_len: u64,
    ) -> Result<()> {
        let have_from = pos.checked_sub(*buf_start).map(|o| o as usize);
        if let Some(off) = have_from {
            if off + need <= buf.len() {
                return Ok(());
            }
        }
        let len = need.max(SCAN_CHUNK).min((file_len - pos) as usize);
        buf.resize(len, 0);
        self.file()?.read_exact_at(buf, pos).at(&self.log_path)?;
        *buf_start = pos;
        Ok(())
    }

    /// Cuts the log file at `position` (a batch boundary found by [`LogSegment::locate`]) and
    /// rebuilds the in-memory state and index tails. fsyncs the cut.
    pub(crate) fn truncate_to_position(&mut self, position: u64) -> Result<()> {
        let file = self.file()?;
        file.set_len(position).at(&self.log_path)?;
        file.sync_data().at(&self.log_path)?;
        self.size = position;
        let end = self.recover_from(position, &mut |_| {})?;
        if let Some(problem) = end.problem {
            return Err(StorageError::Corrupt {
                path: self.log_path.clone(),
                reason: problem,
            });
        }
        Ok(())
    }

    /// Cuts a torn tail found by recovery.
    pub(crate) fn cut_torn_tail(&mut self, valid_end: u64) -> Result<()> {
        let file = self.file()?;
        file.set_len(valid_end).at(&self.log_path)?;
        file.sync_data().at(&self.log_path)?;
        self.size = valid_end;
        Ok(())
    }

    /// Visits batch headers from `from` (a batch boundary) in order until `f` returns false or
    /// the segment ends.
    pub(crate) fn walk_headers(
        &self,
        from: u64,
        mut f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<()> {
        let mut pos = from;
        let mut buf = vec![0u8; WALK_CHUNK];
        while pos + HEADER_SIZE as u64 <= self.size {
            let len = ((self.size - pos) as usize).min(WALK_CHUNK);
            let chunk = &mut buf[..len];
            self.file()?.read_exact_at(chunk, pos).at(&self.log_path)?;
            let mut off = 0usize;
            while off + HEADER_SIZE <= len {
                let header = BatchHeader::parse(&chunk[off..])?;
                let size = header.size();
                if size < HEADER_SIZE {
                    return Err(StorageError::Corrupt {
                        path: self.log_path.clone(),
                        reason: format!(
                            "batch at position {} has length {}",
                            pos + off as u64,
                            header.batch_length
                        ),
                    });
                }
                if !f(pos + off as u64, &header) {
                    return Ok(());
                }
                off += size;
            }
            pos += off as u64;
        }
        Ok(())
    }

    /// The position and header of the first batch whose last offset is `>= offset`.
    pub(crate) fn locate(&self, offset: u64) -> Result<Option<(u64, BatchHeader)>> {
        self.locate_where(offset, |_| true)
    }

    /// The position and header of the first batch clients may see (not zero-width) whose last
    /// offset is `>= offset`: where a read starts.
    pub(crate) fn locate_data(&self, offset: u64) -> Result<Option<(u64, BatchHeader)>> {
        self.locate_where(offset, |h| !h.is_zero_width())
    }

    fn locate_where(
        &self,
        offset: u64,
        wanted: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>> {
        let start = if offset <= self.base_offset {
            0
        } else {
            let relative = (offset - self.base_offset).min(u64::from(u32::MAX)) as u32;
            match self
                .offset_index
                .largest_at_most(relative, |e| e.relative_offset)?
            {
                Some((_, e)) => u64::from(e.position),
                None => 0,
            }
        };
        let mut found = None;
        self.walk_headers(start, |pos, h| {
            if h.last_offset() >= offset as i64 && wanted(h) {
                found = Some((pos, *h));
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    pub(crate) fn read_at(&self, position: u64, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        self.file()?
            .read_exact_at(&mut buf, position)
            .at(&self.log_path)?;
        Ok(buf.freeze())
    }

    /// Reads whole batches from `position` while they fit in `max_bytes` and end before
    /// `max_offset`; the first batch is returned even if larger (`min_one`), as Kafka does so
    /// consumers always make progress. Returns the bytes and the next offset after them.
    pub(crate) fn read_batches(
        &self,
        position: u64,
        max_bytes: usize,
        min_one: bool,
        max_offset: u64,
    ) -> Result<(Bytes, Option<u64>)> {
        if position + HEADER_SIZE as u64 > self.size {
            return Ok((Bytes::new(), None));
        }
        let first = BatchHeader::parse(&self.read_at(position, HEADER_SIZE)?)?;
        if first.next_offset() > max_offset as i64 {
            return Ok((Bytes::new(), None));
        }
        let want = if min_one {
            max_bytes.max(first.size())
        } else {
            max_bytes
        };
        let want = want.min((self.size - position) as usize);
        if want < first.size() {
            return Ok((Bytes::new(), None));
        }
        let data = self.read_at(position, want)?;
        let mut end = 0usize;
        let mut next = None;
        for (at, h) in batch::BatchIter::new(&data) {
            if h.next_offset() > max_offset as i64 {
                break;
            }
            end = at + h.size();
            next = Some(h.next_offset() as u64);
        }
        Ok((data.slice(..end), next))
    }

    /// Position of entry `k` of this segment (0-based), and where it ends.
    pub(crate) fn entry_span(&self, k: usize) -> Result<(OffsetPosition, u64)> {
        let e = self.entry_index.get(k)?;
        let end = if k + 1 < self.entry_index.len() {
            u64::from(self.entry_index.get(k + 1)?.position)
        } else {
            self.size
        };
        Ok((e, end))
    }

    /// First position of a batch whose base offset is `>= offset` at an index point at or
    /// before it, for time lookups.
    pub(crate) fn time_lookup_start(&self, timestamp: i64) -> Result<u64> {
        // Entries with a smaller max timestamp cover only batches that cannot match.
        let Some((_, entry)) = self
            .time_index
            .largest_at_most(timestamp.saturating_sub(1), |e| e.timestamp)?
        else {
            return Ok(0);
        };
        match self
            .offset_index
            .largest_at_most(entry.relative_offset, |e| e.relative_offset)?
        {
            Some((_, e)) => Ok(u64::from(e.position)),
            None => Ok(0),
        }
    }

    /// Deletes the segment's files.
    pub(crate) fn delete_files(dir: &Path, base_offset: u64) -> Result<()> {
        for suffix in SEGMENT_SUFFIXES {
            let path = dir.join(file_name(base_offset, suffix));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io { path, source: e }),
            }
        }
        Ok(())
    }

    /// Marks the entry index file of segment `base_offset` as given up, keeping its first
    /// entry index, without opening the segment (finishing an interrupted cleaner swap).
    pub(crate) fn mark_entry_index_file_unavailable(dir: &Path, base_offset: u64) -> Result<()> {
        let path = dir.join(file_name(base_offset, ENTRY_INDEX_SUFFIX));
        let first = std::fs::read(&path)
            .ok()
            .and_then(|raw| raw.get(..16).and_then(|h| <[u8; 16]>::try_from(h).ok()))
            .and_then(|h| parse_entry_index_header(&path, &h).ok())
            .map(|(first, _)| first);
        let Some(first) = first else {
            // Without a header the log resolves the numbering from the neighbours.
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StorageError::Io { path, source: e })
                }
                _ => Ok(()),
            };
        };
        let f = OpenOptions::new().write(true).open(&path).at(&path)?;
        f.set_len(ENTRY_INDEX_HEADER_LEN).at(&path)?;
        f.write_all_at(&entry_index_header(first, ENTRIES_UNAVAILABLE), 0)
            .at(&path)?;
        f.sync_all().at(&path)
    }

    /// Marks the entry index as given up (after the cleaner rewrote the segment).
    pub(crate) fn mark_entries_unavailable(&mut self) -> Result<()> {
        self.entries_available = false;
        self.entry_index.truncate(0)?;
        self.entry_index.write_header(&entry_index_header(
            self.first_entry_index,
            ENTRIES_UNAVAILABLE,
        ))?;
        self.entry_index.sync()
    }
}
