//! Incremental fetch sessions (KIP-227): the broker remembers each session's partitions so
//! consumers send only what changed and get back only what changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// `max.incremental.fetch.session.cache.slots`.
const MAX_SESSIONS: usize = 1000;

/// A partition of a session, keyed by topic name, topic id, partition.
pub(crate) type PartitionKey = (String, uuid::Uuid, i32);

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionPartition {
    pub(crate) fetch_offset: i64,
    pub(crate) max_bytes: i32,
    pub(crate) current_leader_epoch: i32,
    /// What the last response told the client, to decide what changed.
    pub(crate) last_high_watermark: i64,
    pub(crate) last_log_start_offset: i64,
}

#[derive(Debug)]
struct Session {
    next_epoch: i32,
    partitions: BTreeMap<PartitionKey, SessionPartition>,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    next_id: i32,
}

#[derive(Debug, Default)]
pub(crate) struct FetchSessionCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionError {
    NotFound,
    InvalidEpoch,
}

impl FetchSessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new session over `partitions`; returns its id.
    pub(crate) fn create(&self, partitions: BTreeMap<PartitionKey, SessionPartition>) -> i32 {
        let mut inner = self.lock();
        if inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                inner.sessions.remove(&id);
            }
        }
        let mut id = inner.next_id.max(1);
        while inner.sessions.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        inner.next_id = id.checked_add(1).unwrap_or(1);
        inner.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions,
                last_used: Instant::now(),
            },
        );
        id
    }

    pub(crate) fn remove(&self, id: i32) {
        self.lock().sessions.remove(&id);
    }

    /// Applies an incremental request: checks the epoch, updates and forgets partitions, and
    /// returns every partition of the session.
    pub(crate) fn update(
        &self,
        id: i32,
        epoch: i32,
        updates: Vec<(PartitionKey, SessionPartition)>,
        forgotten: &[PartitionKey],
    ) -> Result<BTreeMap<PartitionKey, SessionPartition>, SessionError> {
        let mut inner = self.lock();
        let session = inner.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        if session.next_epoch != epoch {
            return Err(SessionError::InvalidEpoch);
        }
        session.next_epoch = epoch.checked_add(1).unwrap_or(1);
        session.last_used = Instant::now();
        for key in forgotten {
            session.partitions.remove(key);
        }
        for (key, mut p) in updates {
            if let Some(old) = session.partitions.get(&key) {
                p.last_high_watermark = old.last_high_watermark;
                p.last_log_start_offset = old.last_log_start_offset;
            }
            session.partitions.insert(key, p);
        }
        Ok(session.partitions.clone())
    }

    /// Records what was sent for a partition, so the next incremental response can skip it
    /// if nothing changed.
    pub(crate) fn sent(
        &self,
        id: i32,
        key: &PartitionKey,
        high_watermark: i64,
        log_start_offset: i64,
    ) {
        let mut inner = self.lock();
        if let Some(p) = inner
            .sessions
            .get_mut(&id)
            .and_then(|s| s.partitions.get_mut(key))
        {
            p.last_high_watermark = high_watermark;
            p.last_log_start_offset = log_start_offset;
        }
    }
}
