//! Small durable files beside a log: replaced atomically (write a temporary file, fsync it,
//! rename it over the old one, fsync the directory), so a crash leaves the old or the new
//! version, never a mix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, StorageError};

pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point-checkpoint";
pub(crate) const LOG_START_OFFSET_FILE: &str = "log-start-offset-checkpoint";
pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
pub(crate) const CLEANER_FILE: &str = "cleaner-offset-checkpoint";
pub(crate) const HARD_STATE_FILE: &str = "raft-hard-state";
/// The Raft index and leader epoch of the last entry before the first one the log holds.
pub(crate) const PREV_ENTRY_FILE: &str = "prev-entry-checkpoint";

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(contents).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    std::fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A single offset in Kafka's text checkpoint style: `0\n1\n<offset>\n`.
pub(crate) fn write_offset(dir: &Path, name: &str, offset: u64) -> Result<()> {
    write_atomic(dir, name, format!("0\n1\n{offset}\n").as_bytes())
}

pub(crate) fn read_offset(dir: &Path, name: &str) -> Result<Option<u64>> {
    let path = dir.join(name);
    let Some(line) = read_versioned_line(&path)? else {
        return Ok(None);
    };
    let offset = line
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| corrupt(&path, "missing offset"))?;
    Ok(Some(offset))
}

/// The line after the `0\n1\n` header of a small checkpoint file: `None` without the
/// file, `Some(None)` when the line is missing.
fn read_versioned_line(path: &Path) -> Result<Option<Option<String>>> {
    let Some(raw) = read_optional(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8(raw).map_err(|_| corrupt(path, "not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some("0") || lines.next() != Some("1") {
        return Err(corrupt(path, "unknown checkpoint version"));
    }
    Ok(Some(lines.next().map(str::to_string)))
}

/// An entry index and its leader epoch: `0\n1\n<index> <epoch>\n`.
pub(crate) fn write_entry(dir: &Path, name: &str, index: u64, epoch: i32) -> Result<()> {
    write_atomic(dir, name, format!("0\n1\n{index} {epoch}\n").as_bytes())
}

pub(crate) fn read_entry(dir: &Path, name: &str) -> Result<Option<(u64, i32)>> {
    let path = dir.join(name);
    let Some(line) = read_versioned_line(&path)? else {
        return Ok(None);
    };
    let line = line.ok_or_else(|| corrupt(&path, "missing entry"))?;
    let mut parts = line.split_whitespace();
    let index = parts.next().and_then(|v| v.parse().ok());
    let epoch = parts.next().and_then(|v| v.parse().ok());
    match (index, epoch) {
        (Some(i), Some(e)) => Ok(Some((i, e))),
        _ => Err(corrupt(&path, "expected `<index> <epoch>`")),
    }
}

/// Where recovery starts: everything before `position` in segment `segment_base` (data and
/// indexes), and every earlier segment, was fsynced when this was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryPoint {
    pub(crate) segment_base: u64,
    pub(crate) position: u64,
}

const RECOVERY_POINT_LEN: usize = 1 + 2 * 8 + 4;

impl RecoveryPoint {
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        let mut b = Vec::with_capacity(RECOVERY_POINT_LEN);
        b.push(1u8);
        b.extend_from_slice(&self.segment_base.to_be_bytes());
        b.extend_from_slice(&self.position.to_be_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        write_atomic(dir, RECOVERY_POINT_FILE, &b)
    }

    /// The stored recovery point; `None` when absent or unreadable (recovery then scans the
    /// whole last segment, which is always safe).
    pub(crate) fn load(dir: &Path) -> Result<Option<RecoveryPoint>> {
        let path = dir.join(RECOVERY_POINT_FILE);
        let Some(b) = read_optional(&path)? else {
            return Ok(None);
        };
        if b.len() != RECOVERY_POINT_LEN || b[0] != 1 {
            tracing::warn!(path = %path.display(), "ignoring malformed recovery point");
            return Ok(None);
        }
        let crc = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
        if crc32c::crc32c(&b[..17]) != crc {
            tracing::warn!(path = %path.display(), "ignoring recovery point with bad CRC");
            return Ok(None);
        }
        let u = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(a)
        };
        Ok(Some(RecoveryPoint {
            segment_base: u(1),
            position: u(9),
        }))
    }
}

/// Raft's hard state. Runnel's replication layer persists it here; storage treats it as
/// three opaque numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

const SLOT_LEN: u64 = 40;

/// The hard state file: two CRC'd slots written alternately with an increasing sequence
/// number, each store one write and one fsync. A torn write destroys at most the slot being
/// written; the other still holds the previous state.
#[derive(Debug)]
pub struct HardStateFile {
    path: PathBuf,
    file: File,
    seq: u64,
    current: HardState,
}

impl HardStateFile {
    pub fn open(dir: &Path) -> Result<HardStateFile> {
        let path = dir.join(HARD_STATE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        let mut best: Option<(u64, HardState)> = None;
        for slot in 0..2u64 {
            let mut b = [0u8; SLOT_LEN as usize];
            if file.read_exact_at(&mut b, slot * SLOT_LEN).is_err() {
                continue;
            }
            let crc = u32::from_be_bytes([b[32], b[33], b[34], b[35]]);
            if crc32c::crc32c(&b[..32]) != crc {
                continue;
            }
            let u = |at: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[at..at + 8]);
                u64::from_be_bytes(a)
            };
            let (seq, state) = (
                u(0),
                HardState {
                    term: u(8),
                    vote: u(16),
                    commit: u(24),
                },
            );
            if seq > 0 && best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, state));
            }
        }
        let (seq, current) = best.unwrap_or_default();
        Ok(HardStateFile {
            path,
            file,
            seq,
            current,
        })
    }

    pub fn get(&self) -> HardState {
        self.current
    }

    /// Durably replaces the hard state (one write, one fsync).
    pub fn store(&mut self, state: HardState) -> Result<()> {
        let seq = self.seq + 1;
        let mut b = [0u8; SLOT_LEN as usize];
        b[..8].copy_from_slice(&seq.to_be_bytes());
        b[8..16].copy_from_slice(&state.term.to_be_bytes());
        b[16..24].copy_from_slice(&state.vote.to_be_bytes());
        b[24..32].copy_from_slice(&state.commit.to_be_bytes());
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_be_bytes());
        self.file
            .write_all_at(&b, (seq % 2) * SLOT_LEN)
            .at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.seq = seq;
        self.current = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_survives_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = HardStateFile::open(dir.path()).expect("open");
        assert_eq!(f.get(), HardState::default());
        for term in 1..=5 {
            f.store(HardState {
                term,
                vote: 2,
                commit: term * 10,
            })
            .expect("store");
        }
        drop(f);
        let f = HardStateFile::open(dir.path()).expect("reopen");
        assert_eq!(
            f.get(),
            HardState {
                term: 5,
                vote: 2,
                commit: 50
            }
        );
        // Tear the newest slot (seq 5 lives in slot 1): the previous state must come back.
        let path = dir.path().join(HARD_STATE_FILE);
        let mut raw = std::fs::read(&path).expect("read");
        raw[SLOT_LEN as usize + 10] ^= 0xff;
        std::fs::write(&path, raw).expect("write");
        let f = HardStateFile::open(dir.path()).expect("reopen");
        assert_eq!(
            f.get(),
            HardState {
                term: 4,
                vote: 2,
                commit: 40
            }
        );
    }

    #[test]
    fn recovery_point_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rp = RecoveryPoint {
            segment_base: 10,
            position: 4096,
        };
        rp.store(dir.path()).expect("store");
        assert_eq!(RecoveryPoint::load(dir.path()).expect("load"), Some(rp));
        let path = dir.path().join(RECOVERY_POINT_FILE);
        let mut raw = std::fs::read(&path).expect("read");
        raw[5] ^= 1;
        std::fs::write(&path, raw).expect("write");
        assert_eq!(RecoveryPoint::load(dir.path()).expect("load"), None);
    }

    #[test]
    fn offset_checkpoint_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_offset(dir.path(), LOG_START_OFFSET_FILE).expect("read"),
            None
        );
        write_offset(dir.path(), LOG_START_OFFSET_FILE, 12345).expect("write");
        assert_eq!(
            read_offset(dir.path(), LOG_START_OFFSET_FILE).expect("read"),
            Some(12345)
        );
    }
}
