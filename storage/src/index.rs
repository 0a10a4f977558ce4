//! The per-segment index files, all of fixed-size entries, in Kafka's layouts where Kafka has
//! one:
//!
//! - `.index`: sparse offset index, `(relativeOffset: u32, position: u32)` per entry, one entry
//!   every `index.interval.bytes` of log, keyed by batch base offset.
//! - `.timeindex`: sparse time index, `(timestamp: i64, relativeOffset: u32)`, appended when the
//!   segment's max timestamp grows; the last entry holds the segment's max timestamp.
//! - `.entryindex` (Runnel's): one `(relativeOffset: u32, position: u32)` per log entry (one
//!   `Log::append`, one Raft entry), behind a 16-byte header carrying the segment's first entry
//!   index. Entry `first + k` is record `k`, so `entries(lo, hi)` and `term(i)` are direct reads.
//!
//! New entries wait in memory until the next flush; all others are read from the files with
//! positioned reads, so an idle log costs no memory for its indexes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{IoContext, Result, StorageError};

pub(crate) trait IndexEntry: Copy + std::fmt::Debug {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Self;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetPosition {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

impl IndexEntry for OffsetPosition {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetPosition {
            relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimestampOffset {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

impl IndexEntry for TimestampOffset {
    const SIZE: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimestampOffset {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// An index file. Entries appended since the last flush wait in `pending`; everything else is
/// read from the file with positioned reads (the page cache keeps hot entries cheap), so neither
/// an active nor a sealed segment holds its index in memory.
#[derive(Debug)]
pub(crate) struct IndexFile<E: IndexEntry> {
    path: PathBuf,
    header_len: u64,
    file: OnceLock<File>,
    /// Entries in the file.
    written: usize,
    pending: Vec<E>,
}

impl<E: IndexEntry> IndexFile<E> {
    /// A new, empty index whose file is created (or cut to its header) now.
    pub(crate) fn create(path: PathBuf, header: &[u8]) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .at(&path)?;
        file.write_all_at(header, 0).at(&path)?;
        let index = IndexFile {
            path,
            header_len: header.len() as u64,
            file: OnceLock::new(),
            written: 0,
            pending: Vec::new(),
        };
        let _ = index.file.set(file);
        Ok(index)
    }

    /// An index over an existing file. Fails (so the caller rebuilds it) when the file is
    /// missing or its length is not header + whole entries.
    pub(crate) fn open(path: PathBuf, header_len: u64) -> Result<Self> {
        let len = std::fs::metadata(&path).at(&path)?.len();
        if len < header_len || (len - header_len) % E::SIZE as u64 != 0 {
            return Err(StorageError::Corrupt {
                path,
                reason: format!(
                    "index length {len} is not a whole number of {}-byte entries",
                    E::SIZE
                ),
            });
        }
        let written = ((len - header_len) / E::SIZE as u64) as usize;
        Ok(IndexFile {
            path,
            header_len,
            file: OnceLock::new(),
            written,
            pending: Vec::new(),
        })
    }

    fn file(&self) -> Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .at(&self.path)?;
        Ok(self.file.get_or_init(|| f))
    }

    pub(crate) fn len(&self) -> usize {
        self.written + self.pending.len()
    }

    pub(crate) fn get(&self, i: usize) -> Result<E> {
        if i >= self.written {
            return self.pending.get(i - self.written).copied().ok_or_else(|| {
                StorageError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("index entry {i} past the end ({})", self.len()),
                }
            });
        }
        let mut buf = [0u8; 16];
        let buf = &mut buf[..E::SIZE];
        self.file()?
            .read_exact_at(buf, self.header_len + (i * E::SIZE) as u64)
            .at(&self.path)?;
        Ok(E::decode(buf))
    }

    pub(crate) fn last(&self) -> Result<Option<E>> {
        match self.len() {
            0 => Ok(None),
            n => self.get(n - 1).map(Some),
        }
    }

    /// The last entry whose key is `<= target` (keys must be non-decreasing), by binary search.
    pub(crate) fn largest_at_most<K: Ord>(
        &self,
        target: K,
        key: impl Fn(&E) -> K,
    ) -> Result<Option<(usize, E)>> {
        let (mut lo, mut hi) = (0usize, self.len());
        let mut found = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.get(mid)?;
            if key(&e) <= target {
                found = Some((mid, e));
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(found)
    }

    /// The number of leading entries whose key is `< target`.
    pub(crate) fn count_below<K: Ord>(&self, target: K, key: impl Fn(&E) -> K) -> Result<usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(&self.get(mid)?) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    pub(crate) fn push(&mut self, e: E) {
        self.pending.push(e);
    }

    /// Writes pending entries to the file. No fsync: indexes past the recovery point are
    /// rebuilt from the log after a crash.
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.pending.len() * E::SIZE);
        for e in &self.pending {
            e.encode(&mut buf);
        }
        let at = self.header_len + (self.written * E::SIZE) as u64;
        self.file()?.write_all_at(&buf, at).at(&self.path)?;
        self.written += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.write_pending()?;
        self.file()?.sync_data().at(&self.path)
    }

    /// Keeps the first `n` entries.
    pub(crate) fn truncate(&mut self, n: usize) -> Result<()> {
        if n >= self.written {
            self.pending.truncate(n - self.written);
            return Ok(());
        }
        self.pending.clear();
        self.written = n;
        let len = self.header_len + (n * E::SIZE) as u64;
        self.file()?.set_len(len).at(&self.path)
    }

    pub(crate) fn read_header(&self, buf: &mut [u8]) -> Result<()> {
        self.file()?.read_exact_at(buf, 0).at(&self.path)
    }

    pub(crate) fn write_header(&self, buf: &[u8]) -> Result<()> {
        self.file()?.write_all_at(buf, 0).at(&self.path)
    }
}

/// Header of an `.entryindex` file.
pub(crate) const ENTRY_INDEX_MAGIC: [u8; 4] = *b"RNEI";
pub(crate) const ENTRY_INDEX_HEADER_LEN: u64 = 16;
/// Set when the segment was rewritten by the cleaner: its entries' positions are gone.
pub(crate) const ENTRIES_UNAVAILABLE: u8 = 1;

pub(crate) fn entry_index_header(first_entry_index: u64, flags: u8) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&ENTRY_INDEX_MAGIC);
    h[4] = 1; // version
    h[5] = flags;
    h[8..].copy_from_slice(&first_entry_index.to_be_bytes());
    h
}

pub(crate) fn parse_entry_index_header(path: &Path, h: &[u8; 16]) -> Result<(u64, u8)> {
    if h[..4] != ENTRY_INDEX_MAGIC || h[4] != 1 {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: "bad entry index header".into(),
        });
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[8..]);
    Ok((u64::from_be_bytes(first), h[5]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_seal_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        let mut idx = IndexFile::<OffsetPosition>::create(path.clone(), &[]).expect("create");
        for i in 0..100u32 {
            idx.push(OffsetPosition {
                relative_offset: i * 10,
                position: i * 4096,
            });
        }
        idx.sync().expect("sync");
        let idx = IndexFile::<OffsetPosition>::open(path, 0).expect("open");
        assert_eq!(idx.len(), 100);
        assert_eq!(
            idx.get(42).expect("get"),
            OffsetPosition {
                relative_offset: 420,
                position: 42 * 4096
            }
        );
        let (i, e) = idx
            .largest_at_most(425, |e| e.relative_offset)
            .expect("search")
            .expect("found");
        assert_eq!((i, e.relative_offset), (42, 420));
        assert!(idx
            .largest_at_most(0, |e| e.relative_offset)
            .expect("search")
            .is_some());
    }

    #[test]
    fn torn_index_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.timeindex");
        std::fs::write(&path, [0u8; 13]).expect("write");
        assert!(IndexFile::<TimestampOffset>::open(path, 0).is_err());
    }

    #[test]
    fn truncate_keeps_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.entryindex");
        let header = entry_index_header(7, 0);
        let mut idx = IndexFile::<OffsetPosition>::create(path.clone(), &header).expect("create");
        for i in 0..10u32 {
            idx.push(OffsetPosition {
                relative_offset: i,
                position: i * 100,
            });
        }
        idx.sync().expect("sync");
        let mut idx =
            IndexFile::<OffsetPosition>::open(path.clone(), ENTRY_INDEX_HEADER_LEN).expect("open");
        idx.truncate(4).expect("truncate");
        assert_eq!(idx.len(), 4);
        idx.push(OffsetPosition {
            relative_offset: 99,
            position: 400,
        });
        idx.sync().expect("sync");
        let idx =
            IndexFile::<OffsetPosition>::open(path.clone(), ENTRY_INDEX_HEADER_LEN).expect("open");
        assert_eq!(idx.len(), 5);
        assert_eq!(idx.get(4).expect("get").relative_offset, 99);
        let mut h = [0u8; 16];
        idx.read_header(&mut h).expect("header");
        assert_eq!(parse_entry_index_header(&path, &h).expect("parse"), (7, 0));
    }
}
