//! Log compaction (Kafka's `LogCleaner`) for `cleanup.policy=compact` and `compact,delete`.
//!
//! A pass keeps the latest record of every key and drops older ones, in three phases so the
//! log is locked only briefly:
//!
//! 1. [`Log::clean_plan`] (log borrowed): picks the cleanable sealed segments: below the
//!    caller's bound (the last stable offset) and never past the first unstable offset, never
//!    the active segment, not younger than `min.compaction.lag.ms`; skips the pass while the
//!    dirty share is below `min.cleanable.dirty.ratio`. It also takes the aborted transactions
//!    touching those segments from the aborted-transaction index.
//! 2. [`CleanPlan::build`] (no log access): reads those segments through its own file handles
//!    (sealed segments never change), builds the key -> latest offset map over the dirty part
//!    within a memory budget, and writes a `.cleaned` copy of each segment that loses records.
//!    Reads are throttled to `io_max_bytes_per_second`.
//! 3. [`Log::install_clean`] (log borrowed mutably): swaps each copy in crash-safely
//!    (`.cleaned` -> `.swap` -> `.log`) if its segment is unchanged, and rebuilds its indexes.
//!
//! Offsets never change (gaps are fine), control batches stay, and batches of idempotent
//! producers that lose every record stay as empty batches so producer state survives.
//!
//! Transactions, as Kafka's cleaner handles them: records of aborted transactions are never
//! visible to `read_committed` consumers, so they are discarded and never enter the key map
//! (an aborted write must not shadow an earlier committed value of its key). Their batches stay
//! as empty batches, so replaying the log still finds where each transaction began.
//! End-transaction markers are always kept: unlike Kafka, Runnel does not remove them after
//! `delete.retention.ms`.
//! Tombstones (null values) are removed once they have been through one cleaning and their
//! batch timestamp is older than `delete.retention.ms`. Cleaned segments give up their
//! entry (Raft) positions: compaction is Raft log compaction of that prefix.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::checkpoint::{self, CLEANER_FILE};
use crate::compression;
use crate::error::{IoContext, Result, StorageError};
use crate::log::{Log, MAX_DECOMPRESSED_BATCH_BYTES};
use crate::segment::{self, LogSegment};

/// Cleaner settings, Kafka's broker-level `log.cleaner.*` configs.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerConfig {
    /// `log.cleaner.dedupe.buffer.size`: memory for the key -> offset map.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.io.max.bytes.per.second`; infinite means unthrottled.
    pub io_max_bytes_per_second: f64,
    /// Largest decompressed batch the cleaner opens; larger ones are kept as they are.
    pub max_decompressed_batch_bytes: usize,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            dedupe_buffer_bytes: 128 * 1024 * 1024,
            io_max_bytes_per_second: f64::INFINITY,
            max_decompressed_batch_bytes: MAX_DECOMPRESSED_BATCH_BYTES,
        }
    }
}

/// What a cleaning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_scanned: usize,
    pub segments_rewritten: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Records discarded because their transaction was aborted (also in `records_removed`).
    pub aborted_records_removed: u64,
    pub batches_kept_whole: u64,
    /// Where the next pass's dirty section starts.
    pub cleaned_up_to: u64,
}

/// The segments one pass will look at, captured while the log was borrowed.
#[derive(Debug, Clone)]
pub struct CleanPlan {
    dir: PathBuf,
    segments: Vec<(u64, u64)>,
    first_dirty_offset: u64,
    clean_bound: u64,
    now_ms: i64,
    delete_retention_ms: i64,
    aborted: AbortedRanges,
}

/// The offset ranges `[first offset, ABORT marker]` of aborted transactions, per producer. A
/// producer has at most one transaction open at a time, so its transactional batches inside
/// one of its ranges are exactly that aborted transaction's batches.
#[derive(Debug, Clone, Default)]
struct AbortedRanges(HashMap<i64, Vec<(u64, u64)>>);

impl AbortedRanges {
    /// Ranges of the aborted transactions touching `[from, to)`.
    fn collect(log: &Log, from: u64, to: u64) -> AbortedRanges {
        let mut ranges: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
        for seg in &log.segments {
            for txn in seg.aborted_txns() {
                if txn.last_offset >= from && txn.first_offset < to {
                    ranges
                        .entry(txn.producer_id)
                        .or_default()
                        .push((txn.first_offset, txn.last_offset));
                }
            }
        }
        AbortedRanges(ranges)
    }

    /// Whether `h` is a data batch of an aborted transaction.
    fn contains(&self, h: &BatchHeader) -> bool {
        if !h.is_transactional() || h.is_control() {
            return false;
        }
        let Some(ranges) = self.0.get(&h.producer_id) else {
            return false;
        };
        let base = h.base_offset.max(0) as u64;
        let i = ranges.partition_point(|r| r.0 <= base);
        i > 0 && base <= ranges[i - 1].1
    }
}

/// Output of [`CleanPlan::build`]: the `.cleaned` files to swap in.
#[derive(Debug)]
pub struct CleanOutput {
    rewrites: Vec<Rewrite>,
    stats: CleanStats,
}

#[derive(Debug)]
struct Rewrite {
    base_offset: u64,
    original_size: u64,
    cleaned_path: PathBuf,
}

struct Throttler {
    max_per_second: f64,
    started: Instant,
    bytes: u64,
}

impl Throttler {
    fn new(max_per_second: f64) -> Throttler {
        Throttler {
            max_per_second,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn account(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        if !self.max_per_second.is_finite() || self.max_per_second <= 0.0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.max_per_second);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Reads the batches of one sealed segment file sequentially, in large chunks.
struct SegmentReader {
    path: PathBuf,
    file: File,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl SegmentReader {
    fn open(path: PathBuf) -> Result<SegmentReader> {
        let file = File::open(&path).at(&path)?;
        let len = file.metadata().at(&path)?.len();
        Ok(SegmentReader {
            path,
            file,
            len,
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
        })
    }

    fn ensure(&mut self, need: usize) -> Result<()> {
        let off = (self.pos - self.buf_start) as usize;
        if self.pos >= self.buf_start && off + need <= self.buf.len() {
            return Ok(());
        }
        let len = need.max(1 << 20).min((self.len - self.pos) as usize);
        self.buf.resize(len, 0);
        self.file
            .read_exact_at(&mut self.buf, self.pos)
            .at(&self.path)?;
        self.buf_start = self.pos;
        Ok(())
    }

    /// The next batch, or `None` at the end. Batches were validated when appended; a bad one
    /// here is corruption.
    fn next_batch(&mut self) -> Result<Option<(BatchHeader, &[u8])>> {
        if self.pos + HEADER_SIZE as u64 > self.len {
            return Ok(None);
        }
        self.ensure(HEADER_SIZE)?;
        let off = (self.pos - self.buf_start) as usize;
        let header = BatchHeader::parse(&self.buf[off..])?;
        let size = header
            .check_length((self.len - self.pos) as usize)
            .map_err(|e| StorageError::Corrupt {
                path: self.path.clone(),
                reason: format!("at position {}: {e}", self.pos),
            })?;
        self.ensure(size)?;
        let off = (self.pos - self.buf_start) as usize;
        self.pos += size as u64;
        Ok(Some((header, &self.buf[off..off + size])))
    }
}

/// Records of one batch: `(offset, key, is_tombstone, raw, timestamp)`.
type Decoded<'a> = Vec<(u64, Option<&'a [u8]>, bool, &'a [u8], i64)>;

fn decode<'a>(h: &BatchHeader, body: &'a Bytes) -> Result<Decoded<'a>> {
    let records = batch::parse_records(body, h.records_count)?;
    Ok(records
        .into_iter()
        .map(|r| {
            (
                h.base_offset as u64 + r.offset_delta as u64,
                r.key,
                r.value.is_none(),
                r.raw,
                h.base_timestamp + r.timestamp_delta,
            )
        })
        .collect())
}

impl Log {
    /// The first offset not yet cleaned (`cleaner-offset-checkpoint`).
    fn first_dirty_offset(&self) -> Result<u64> {
        let stored = checkpoint::read_offset(&self.dir, CLEANER_FILE)?.unwrap_or(0);
        Ok(stored.max(self.log_start_offset))
    }

    /// Phase 1: what a pass would clean, or `None` when compaction is off for this log or
    /// there is not enough dirty data to be worth it.
    pub fn clean_plan(&self, upper_bound: u64) -> Result<Option<CleanPlan>> {
        if !self.config.cleanup_policy.compacts() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let lag_bound = now.saturating_sub(self.config.min_compaction_lag_ms);
        // Undecided transactions are never cleaned, whatever bound the caller passes.
        let bound = upper_bound.min(self.log_end_offset());
        let bound = self
            .first_unstable_offset()
            .map_or(bound, |unstable| bound.min(unstable));
        let n = self.segments.len();
        let cleanable = (0..n.saturating_sub(1))
            .take_while(|&i| {
                let seg = &self.segments[i];
                self.segments[i + 1].base_offset() <= bound
                    && (self.config.min_compaction_lag_ms <= 0 || seg.max_timestamp() <= lag_bound)
            })
            .count();
        if cleanable == 0 {
            return Ok(None);
        }
        let first_dirty = self.first_dirty_offset()?;
        let clean_bound = self.segments[cleanable].base_offset();
        if first_dirty >= clean_bound {
            return Ok(None);
        }
        let segments: Vec<(u64, u64)> = self.segments[..cleanable]
            .iter()
            .map(|s| (s.base_offset(), s.size()))
            .collect();
        let total: u64 = segments.iter().map(|s| s.1).sum();
        let dirty: u64 = segments
            .iter()
            .enumerate()
            .filter(|(i, _)| segments.get(i + 1).is_none_or(|next| next.0 > first_dirty))
            .map(|(_, s)| s.1)
            .sum();
        if total == 0 || (dirty as f64) / (total as f64) < self.config.min_cleanable_dirty_ratio {
            return Ok(None);
        }
        let aborted = AbortedRanges::collect(self, segments[0].0, clean_bound);
        Ok(Some(CleanPlan {
            dir: self.dir.clone(),
            segments,
            first_dirty_offset: first_dirty,
            clean_bound,
            now_ms: now,
            delete_retention_ms: self.config.delete_retention_ms,
            aborted,
        }))
    }

    /// Phase 3: swaps in the cleaned segments that are still as planned. Crash-safe at every
    /// step: the entry index is given up first, then `.cleaned` becomes `.swap` (which
    /// [`Log::open`] finishes) and finally `.log`.
    pub fn install_clean(&mut self, output: CleanOutput) -> Result<CleanStats> {
        let mut stats = output.stats;
        for rewrite in output.rewrites {
            let idx = self
                .segments
                .iter()
                .position(|s| s.base_offset() == rewrite.base_offset);
            let still_there = idx.filter(|&i| {
                i + 1 < self.segments.len() && self.segments[i].size() == rewrite.original_size
            });
            let Some(i) = still_there else {
                let _ = std::fs::remove_file(&rewrite.cleaned_path);
                stats.segments_rewritten -= 1;
                continue;
            };
            self.segments[i].mark_entries_unavailable()?;
            // The rebuilt segment reads its transaction index back from the file.
            self.segments[i].sync_txn_index()?;
            let log_path = self
                .dir
                .join(segment::file_name(rewrite.base_offset, segment::LOG_SUFFIX));
            let swap_path = self.dir.join(format!(
                "{}.swap",
                segment::file_name(rewrite.base_offset, segment::LOG_SUFFIX)
            ));
            std::fs::rename(&rewrite.cleaned_path, &swap_path).at(&swap_path)?;
            checkpoint::sync_dir(&self.dir)?;
            std::fs::rename(&swap_path, &log_path).at(&log_path)?;
            checkpoint::sync_dir(&self.dir)?;
            let now = self.clock.now_ms();
            self.segments[i] = LogSegment::rebuild_cleaned(
                &self.dir,
                rewrite.base_offset,
                self.config.index_interval_bytes,
                now,
            )?;
        }
        checkpoint::write_offset(&self.dir, CLEANER_FILE, stats.cleaned_up_to)?;
        Ok(stats)
    }

    /// One whole cleaning pass with the log borrowed throughout (tests and tools; the
    /// background cleaner runs the phases separately).
    pub fn compact(&mut self, config: &CleanerConfig, upper_bound: u64) -> Result<CleanStats> {
        match self.clean_plan(upper_bound)? {
            None => Ok(CleanStats::default()),
            Some(plan) => {
                let output = plan.build(config)?;
                self.install_clean(output)
            }
        }
    }

    /// Whether a pass would do anything now.
    pub fn needs_cleaning(&self, upper_bound: u64) -> bool {
        matches!(self.clean_plan(upper_bound), Ok(Some(_)))
    }
}

impl CleanPlan {
    fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment::file_name(base, segment::LOG_SUFFIX))
    }

    /// Phase 2: builds the offset map and writes cleaned copies. Touches only files.
    pub fn build(&self, config: &CleanerConfig) -> Result<CleanOutput> {
        let mut throttler = Throttler::new(config.io_max_bytes_per_second);
        let mut stats = CleanStats::default();
        let (map, map_end) = self.build_offset_map(config, &mut throttler, &mut stats)?;
        stats.cleaned_up_to = map_end;
        let mut rewrites = Vec::new();
        for &(base, size) in &self.segments {
            if base >= map_end {
                break;
            }
            stats.segments_scanned += 1;
            if let Some(rewrite) =
                self.clean_segment(base, size, &map, config, &mut throttler, &mut stats)?
            {
                stats.segments_rewritten += 1;
                rewrites.push(rewrite);
            }
        }
        Ok(CleanOutput { rewrites, stats })
    }

    /// Maps every key in the dirty section to its latest offset, stopping at a batch boundary
    /// when the budget is spent. Returns the map and the offset it covers up to.
    fn build_offset_map(
        &self,
        config: &CleanerConfig,
        throttler: &mut Throttler,
        stats: &mut CleanStats,
    ) -> Result<(HashMap<Vec<u8>, u64>, u64)> {
        let mut map: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut used = 0usize;
        let mut covered = self.first_dirty_offset;
        for (i, &(base, _)) in self.segments.iter().enumerate() {
            let next_base = self.segments.get(i + 1).map_or(self.clean_bound, |s| s.0);
            if next_base <= self.first_dirty_offset {
                continue;
            }
            let mut reader = SegmentReader::open(self.segment_path(base))?;
            while let Some((h, raw)) = reader.next_batch()? {
                throttler.account(raw.len());
                stats.bytes_read += raw.len() as u64;
                if h.next_offset() <= self.first_dirty_offset as i64 {
                    continue;
                }
                if h.is_control() || self.aborted.contains(&h) {
                    covered = (h.last_offset() + 1) as u64;
                    continue;
                }
                let Ok(body) = batch::records_body(raw, &h, config.max_decompressed_batch_bytes)
                else {
                    covered = (h.last_offset() + 1) as u64;
                    continue;
                };
                let Ok(records) = decode(&h, &body) else {
                    covered = (h.last_offset() + 1) as u64;
                    continue;
                };
                let new_keys: usize = records
                    .iter()
                    .filter_map(|r| r.1)
                    .filter(|k| !map.contains_key(*k))
                    .map(|k| k.len() + 64)
                    .sum();
                if used + new_keys > config.dedupe_buffer_bytes && covered > self.first_dirty_offset
                {
                    return Ok((map, covered));
                }
                used += new_keys;
                for (offset, key, _, _, _) in records {
                    if let Some(k) = key {
                        map.insert(k.to_vec(), offset);
                    }
                }
                covered = (h.last_offset() + 1) as u64;
            }
            covered = covered.max(next_base);
        }
        Ok((map, covered.min(self.clean_bound)))
    }

    /// Writes a cleaned copy of one segment if it loses anything.
    fn clean_segment(
        &self,
        base: u64,
        size: u64,
        map: &HashMap<Vec<u8>, u64>,
        config: &CleanerConfig,
        throttler: &mut Throttler,
        stats: &mut CleanStats,
    ) -> Result<Option<Rewrite>> {
        let path = self.segment_path(base);
        let cleaned_path = self.dir.join(format!(
            "{}.cleaned",
            segment::file_name(base, segment::LOG_SUFFIX)
        ));
        let mut reader = SegmentReader::open(path)?;
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&cleaned_path).at(&cleaned_path)?,
        );
        let mut changed = false;
        let mut written = 0u64;
        let tombstone_cutoff = self.now_ms.saturating_sub(self.delete_retention_ms);
        while let Some((h, raw)) = reader.next_batch()? {
            throttler.account(raw.len());
            stats.bytes_read += raw.len() as u64;
            let kept = if h.is_control() {
                None
            } else if self.aborted.contains(&h) {
                discard_aborted(&h, stats)?
            } else {
                match batch::records_body(raw, &h, config.max_decompressed_batch_bytes) {
                    Err(_) => {
                        stats.batches_kept_whole += 1;
                        None
                    }
                    Ok(body) => match decode(&h, &body) {
                        Err(_) => {
                            stats.batches_kept_whole += 1;
                            None
                        }
                        Ok(records) => {
                            let mut retained: Vec<(&[u8], i64)> = Vec::with_capacity(records.len());
                            for (offset, key, tombstone, raw_record, ts) in &records {
                                let superseded = key.is_some_and(|k| {
                                    map.get(k).is_some_and(|&latest| latest > *offset)
                                });
                                let expired_tombstone = *tombstone
                                    && *offset < self.first_dirty_offset
                                    && h.max_timestamp < tombstone_cutoff;
                                if superseded || expired_tombstone {
                                    stats.records_removed += 1;
                                    if *tombstone {
                                        stats.tombstones_removed += 1;
                                    }
                                } else {
                                    retained.push((raw_record, *ts));
                                }
                            }
                            if retained.len() == records.len() {
                                None
                            } else {
                                Some(rebuild_batch(&h, &retained)?)
                            }
                        }
                    },
                }
            };
            let bytes: &[u8] = match &kept {
                None => raw,
                Some(None) => {
                    changed = true;
                    continue;
                }
                Some(Some(rebuilt)) => {
                    changed = true;
                    rebuilt
                }
            };
            out.write_all(bytes).at(&cleaned_path)?;
            written += bytes.len() as u64;
        }
        if reader.len != size {
            // The segment changed under us; leave it for the next pass.
            changed = false;
        }
        let file = out.into_inner().map_err(|e| StorageError::Io {
            path: cleaned_path.clone(),
            source: e.into_error(),
        })?;
        if !changed {
            drop(file);
            std::fs::remove_file(&cleaned_path).at(&cleaned_path)?;
            return Ok(None);
        }
        file.sync_all().at(&cleaned_path)?;
        stats.bytes_written += written;
        Ok(Some(Rewrite {
            base_offset: base,
            original_size: size,
            cleaned_path,
        }))
    }
}

/// An aborted transaction's batch without its records (`None`: already empty, keep it).
fn discard_aborted(h: &BatchHeader, stats: &mut CleanStats) -> Result<Option<Option<Bytes>>> {
    if h.records_count <= 0 {
        return Ok(None);
    }
    let removed = h.records_count as u64;
    stats.records_removed += removed;
    stats.aborted_records_removed += removed;
    rebuild_batch(h, &[]).map(Some)
}

/// The batch with only `retained` records (raw encodings, unchanged because base offset and
/// base timestamp stay), or `None` when it should disappear. Idempotent producers' batches stay
/// as empty batches so their sequence state is not lost.
fn rebuild_batch(h: &BatchHeader, retained: &[(&[u8], i64)]) -> Result<Option<Bytes>> {
    if retained.is_empty() && !h.has_producer_id() {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(retained.iter().map(|r| r.0.len()).sum());
    for (raw, _) in retained {
        body.extend_from_slice(raw);
    }
    let mut header = *h;
    header.records_count = retained.len() as i32;
    if !h.is_log_append_time() {
        header.max_timestamp = retained
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(h.base_timestamp);
    }
    let section = compression::compress(h.compression()?, &body)?;
    Ok(Some(batch::assemble(&header, &section)))
}

impl LogSegment {
    /// Opens a segment whose `.log` the cleaner just replaced: indexes rebuilt from scratch,
    /// entries marked unavailable, everything fsynced.
    pub(crate) fn rebuild_cleaned(
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<LogSegment> {
        for suffix in [segment::INDEX_SUFFIX, segment::TIME_INDEX_SUFFIX] {
            let path = dir.join(segment::file_name(base_offset, suffix));
            std::fs::write(&path, []).at(&path)?;
        }
        let (mut seg, _) = LogSegment::open(dir, base_offset, index_interval, now_ms)?;
        let end = seg.recover_from(0, &mut |_| {})?;
        if let Some(problem) = end.problem {
            return Err(StorageError::Corrupt {
                path: seg.log_path().to_path_buf(),
                reason: problem,
            });
        }
        seg.seal()?;
        Ok(seg)
    }
}
