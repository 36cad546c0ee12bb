//! The Raft log in its own RocksDB: openraft's `RaftLogStorage`.
//!
//! Two column families: `log` (big-endian index -> encoded entry, so index
//! order is key order) and `meta` (vote, committed log id, last purged log
//! id). Entries are encoded by hand rather than with serde: a command's
//! rkyv bytes go in as they are, so a 1 MiB submission chunk costs 1 MiB, and
//! reading an entry's log id needs only its fixed-size header.
//!
//! Appends are group-committed: `append` writes the entries (visible to
//! readers at once) and hands the flush to the store's flusher thread,
//! which syncs the WAL once for every append queued meanwhile and then
//! reports them persisted, in order. Raft goes on replicating and
//! appending while the disk syncs, and one fsync covers many appends.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::rocks::{self, Budget, Kind};
use crate::{CommandBytes, ReplicaId, TypeConfig};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 8 + 8;

type StorageResult<T> = Result<T, StorageError<ReplicaId>>;

/// A log entry whose bytes do not decode.
#[derive(Debug, thiserror::Error)]
#[error("corrupt log entry at key {key:02x?}: {reason}")]
struct CorruptEntry {
    key: Vec<u8>,
    reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Rocks(#[from] rocksdb::Error),
    #[error("starting the log flusher thread: {0}")]
    Flusher(std::io::Error),
}

/// The log store; clones share one DB (openraft reads through a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Appends waiting for the WAL sync; the flusher thread ends when the
    /// last clone is dropped.
    unsynced: mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Syncs the WAL for every append queued since the last sync, then reports
/// them persisted in the order they were appended. It holds the DB only
/// while syncing, so dropping the last `LogStore` closes the DB at once
/// (a restarted replica can reopen it).
fn run_flusher(db: Weak<DB>, queue: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let waiting: Vec<_> = std::iter::once(first).chain(queue.try_iter()).collect();
        let synced = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("log store closed".to_string()),
        };
        for callback in waiting {
            callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log DB in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let budget = Budget {
            cache_bytes: 8 << 20,
            memtable_bytes: 8 << 20,
        };
        let db = Arc::new(rocks::open(dir, Kind::Log, budget, &[CF_LOG, CF_META])?);
        let (unsynced, queue) = mpsc::channel();
        let flusher_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_flusher(flusher_db, queue))
            .map_err(OpenError::Flusher)?;
        Ok(Self { db, unsynced })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| StorageIOError::read(&e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        self.db
            .put_cf_opt(self.cf(CF_META), key, bytes, &synced())
            .map_err(|e| StorageIOError::write(&e).into())
    }
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    let membership;
    let (kind, payload): (u8, &[u8]) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, &[]),
        EntryPayload::Normal(cmd) => (KIND_NORMAL, &cmd.0),
        EntryPayload::Membership(m) => {
            membership = serde_json::to_vec(m)?;
            (KIND_MEMBERSHIP, &membership)
        }
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(kind);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn decode_log_id(key: &[u8], bytes: &[u8]) -> Result<LogId<ReplicaId>, CorruptEntry> {
    let corrupt = |reason: &str| CorruptEntry {
        key: key.to_vec(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let log_id = LogId::new(CommittedLeaderId::new(word(1), word(9)), word(17));
    if key != index_key(log_id.index) {
        return Err(corrupt("index does not match its key"));
    }
    Ok(log_id)
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry<TypeConfig>, CorruptEntry> {
    let log_id = decode_log_id(key, bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let payload = match bytes[0] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(CommandBytes(payload.to_vec())),
        KIND_MEMBERSHIP => {
            EntryPayload::Membership(serde_json::from_slice(payload).map_err(|e| CorruptEntry {
                key: key.to_vec(),
                reason: format!("membership: {e}"),
            })?)
        }
        kind => {
            return Err(CorruptEntry {
                key: key.to_vec(),
                reason: format!("unknown kind {kind}"),
            });
        }
    };
    Ok(Entry { log_id, payload })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let start_key = index_key(start);
        for item in self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start_key, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry = decode_entry(&key, &value).map_err(|e| StorageIOError::read_logs(&e))?;
            if !range.contains(&entry.log_id.index) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.get_meta::<LogId<ReplicaId>>(KEY_LAST_PURGED)?;
        let last = match self
            .db
            .iterator_cf(self.cf(CF_LOG), IteratorMode::End)
            .next()
        {
            None => None,
            Some(item) => {
                let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Some(decode_log_id(&key, &value).map_err(|e| StorageIOError::read_logs(&e))?)
            }
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<ReplicaId>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<ReplicaId>>) -> StorageResult<()> {
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<ReplicaId>>> {
        Ok(self
            .get_meta::<Option<LogId<ReplicaId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode_entry(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(self.cf(CF_LOG), index_key(entry.log_id.index), bytes);
        }
        match self.db.write(batch) {
            Ok(()) => {
                // The flusher outlives every clone's sender, so this fails
                // only if its thread died; report that as an I/O error.
                if let Err(mpsc::SendError(callback)) = self.unsynced.send(callback) {
                    callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        batch.delete_cf(self.cf(CF_LOG), index_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        let purged = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write(&e))?;
        batch.put_cf(self.cf(CF_META), KEY_LAST_PURGED, purged);
        batch.delete_range_cf(self.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    use crate::StateMachineStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachineStore)> {
            let dir = TempDir::new().expect("temp dir");
            let log = LogStore::open(&dir.path().join("log")).expect("open log");
            let sm = StateMachineStore::open(&dir.path().join("state")).expect("open state");
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite, over both stores.
    #[test]
    fn passes_openraft_storage_suite() -> StorageResult<()> {
        let started = std::time::Instant::now();
        Suite::test_all(Builder)?;
        eprintln!("openraft storage suite: {:?}", started.elapsed());
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn any_entry_round_trips(term: u64, node: u64, index: u64, payload: Vec<u8>, kind in 0..3u8) {
            let log_id = LogId::new(CommittedLeaderId::new(term, node), index);
            let payload = match kind {
                0 => EntryPayload::Blank,
                1 => EntryPayload::Normal(CommandBytes(payload)),
                _ => EntryPayload::Membership(openraft::Membership::new(vec![[node, 1].into()], None)),
            };
            let entry = Entry::<TypeConfig> { log_id, payload };
            let back = decode_entry(&index_key(index), &encode_entry(&entry).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, entry);
        }
    }

    #[test]
    fn entries_round_trip_and_corruption_is_an_error() {
        let cmd = CommandBytes(vec![1, 2, 3]);
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), 9),
            payload: EntryPayload::Normal(cmd.clone()),
        };
        let bytes = encode_entry(&entry).unwrap();
        let back = decode_entry(&index_key(9), &bytes).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        assert!(matches!(back.payload, EntryPayload::Normal(c) if c == cmd));
        assert!(
            decode_entry(&index_key(10), &bytes).is_err(),
            "key/index mismatch"
        );
        assert!(
            decode_entry(&index_key(9), &bytes[..5]).is_err(),
            "truncated"
        );
        let mut bad_kind = bytes.clone();
        bad_kind[0] = 9;
        assert!(
            decode_entry(&index_key(9), &bad_kind).is_err(),
            "unknown kind"
        );
    }
}
