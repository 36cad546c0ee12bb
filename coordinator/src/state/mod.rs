//! The replicated state machine, kept in its own RocksDB: openraft's
//! `RaftStateMachine` and `RaftSnapshotBuilder`, plus the reads the
//! coordinator's services make.
//!
//! The catalogue lives on disk, not in a map: applying a command touches
//! only the keys it names. Snapshots are files: building one iterates the
//! state column families from a RocksDB snapshot into a record stream;
//! installing one clears those column families and streams the records
//! back in bounded write batches. Neither holds the state in memory.
//!
//! Crash consistency: applied entries are written without RocksDB's WAL.
//! The Raft log is the state machine's WAL: every applied entry is in the
//! synced log, and each entry's write batch carries its log id as
//! `last_applied`. The state column families flush atomically, so after a
//! crash the state is exactly as it was after some applied entry, and
//! openraft re-applies the committed entries after `last_applied` from the
//! log (applying is deterministic). The log is purged only up to a
//! snapshot, and building a snapshot flushes the state it read, so the
//! entries a restart re-applies are never purged ones.

pub mod apply;
mod digested;
pub mod keys;
pub mod listed;
pub mod path_list;
pub mod records;
pub mod snapshot_file;
mod sorted_lookup;
mod status_reads;

use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use proto_schema::command::{self, CommandError, Response};
use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId, ShardId};
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use self::keys::{CF_FILES, CF_JOBS, CF_RAFT, CF_SHARDS, STATE_CFS};
use self::listed::Listing;
use self::path_list::CorruptPathList;
use self::records::{CorruptRecord, Dataset, Job, Shard, ShardState, Stored};
use self::snapshot_file::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::rocks::{self, Budget, Kind};
use crate::{Applied, Member, ReplicaId, TypeConfig};

/// Most bytes of records one install write batch holds.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// The layout of the state this build reads and writes. Layout 2: a file
/// listed again unchanged is no longer restamped, submissions' listings
/// say what they saw (`listed`). Layout 3: shards carry their file's
/// number, jobs their owners' staged counts, nodes their incarnation.
/// Layout 4: jobs and shards carry the job's attempt (`RestartJob`).
/// Layout 5: a listing record starts with its entries' digest
/// (`SubmitRanges`). Layout 6: a listing record points at its range's
/// paths, kept apart and written once (`listed`). Layout 7: jobs carry
/// their recovery of a lost owner's partitions (`RecoverJob`).
const LAYOUT: u64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error(transparent)]
    CorruptList(#[from] CorruptPathList),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot record names column family {0}, which does not exist")]
    UnknownColumnFamily(u8),
    #[error("state metadata: {0}")]
    Meta(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    #[error(
        "the state holds layout {found}, written by an older quern; this one reads layout \
         {LAYOUT} only and does not convert it: remove the data directories of all \
         coordinators, start them afresh and submit the manifests again"
    )]
    OlderLayout { found: u64 },
    #[error(
        "job {job} is not its dataset's last finished submission: only that one's gone \
         files are listed"
    )]
    GoneListingExpired { job: JobId },
    #[error(
        "snapshot id {0:?} is not 1 to {MAX_SNAPSHOT_ID} letters, digits and '-': it names no \
         snapshot of ours"
    )]
    BadSnapshotId(String),
}

/// Most bytes of a snapshot id (ours are `TERM-INDEX-SEQ`).
pub const MAX_SNAPSHOT_ID: usize = 64;

/// Checks that a snapshot id is one we could have made: a plain file name,
/// never a path (`/`, `..`) nor anything long.
pub fn check_snapshot_id(id: &str) -> Result<(), StateError> {
    let plain = id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain && !id.is_empty() && id.len() <= MAX_SNAPSHOT_ID {
        Ok(())
    } else {
        Err(StateError::BadSnapshotId(
            id.chars().take(MAX_SNAPSHOT_ID).collect(),
        ))
    }
}

type StorageResult<T> = Result<T, StorageError<ReplicaId>>;

/// What a snapshot build wrote, for logs and measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStats {
    pub records: u64,
    pub bytes: u64,
}

/// A snapshot file just written: the log position and membership it
/// reflects, and its size.
type Written = (
    Option<LogId<ReplicaId>>,
    StoredMembership<ReplicaId, Member>,
    SnapshotStats,
);

/// A digest of the replicated state: equal digests, equal states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDigest {
    pub records: u64,
    pub hash: u64,
}

struct Inner {
    db: DB,
    snapshot_dir: PathBuf,
    /// Held for writing while a snapshot installs, for reading while a
    /// build takes its RocksDB snapshot: a build never sees half an install.
    install: RwLock<()>,
    incoming: AtomicU64,
    last_build: std::sync::Mutex<Option<SnapshotStats>>,
}

/// The state machine; clones share one DB (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<ReplicaId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    /// Opens (or creates) the state DB and snapshot directory under `dir`.
    /// A snapshot install that a crash interrupted is rolled back to an
    /// empty state, which Raft then refills. A state kept in another
    /// layout is refused (`OlderLayout`), never read.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let snapshot_dir = dir.join("snapshots");
        fs::create_dir_all(&snapshot_dir)?;
        let mut cfs = vec![CF_RAFT];
        cfs.extend(STATE_CFS);
        let budget = Budget {
            cache_bytes: 64 << 20,
            memtable_bytes: 32 << 20,
        };
        let db = rocks::open(&dir.join("db"), Kind::State, budget, &cfs)?;
        if db.get_cf(cf(&db, CF_RAFT), keys::INSTALLING)?.is_some() {
            tracing::warn!("an interrupted snapshot install left partial state: clearing it");
            clear_state(&db)?;
            let mut batch = WriteBatch::default();
            for key in [
                keys::INSTALLING,
                keys::LAST_APPLIED,
                keys::MEMBERSHIP,
                keys::SNAPSHOT_META,
            ] {
                batch.delete_cf(cf(&db, CF_RAFT), key);
            }
            db.write(batch)?;
        }
        check_layout(&db)?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                snapshot_dir,
                install: RwLock::new(()),
                incoming: AtomicU64::new(0),
                last_build: std::sync::Mutex::new(None),
            }),
        };
        store.remove_stale_snapshot_files()?;
        Ok(store)
    }

    /// Deletes snapshot files a crash left behind: partial ones, and any
    /// but the current snapshot.
    fn remove_stale_snapshot_files(&self) -> Result<(), StateError> {
        let current = self
            .current_snapshot_meta()?
            .map(|m| self.snapshot_path(&m.snapshot_id))
            .transpose()?;
        for entry in fs::read_dir(&self.inner.snapshot_dir)? {
            let path = entry?.path();
            if Some(&path) != current.as_ref() {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn db(&self) -> &DB {
        &self.inner.db
    }

    fn get<T: Stored>(&self, cf_name: &str, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.db().get_pinned_cf(cf(self.db(), cf_name), key)? {
            Some(bytes) => Ok(Some(T::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        match self.db().get_pinned_cf(cf(self.db(), CF_RAFT), key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn node(&self, id: NodeId) -> Result<Option<records::Node>, StateError> {
        self.get(keys::CF_NODES, &keys::id(id))
    }

    /// Every registered node, lost or not (one record per node).
    pub fn nodes(&self) -> Result<Vec<records::Node>, StateError> {
        self.db()
            .iterator_cf(cf(self.db(), keys::CF_NODES), IteratorMode::Start)
            .map(|item| Ok(records::Node::decode(&item?.1)?))
            .collect()
    }

    pub fn dataset(&self, name: &str) -> Result<Option<Dataset>, StateError> {
        self.get(keys::CF_DATASETS, name.as_bytes())
    }

    pub fn job(&self, id: JobId) -> Result<Option<Job>, StateError> {
        self.get(CF_JOBS, &keys::id(id))
    }

    pub fn shard(&self, id: ShardId) -> Result<Option<Shard>, StateError> {
        self.get(CF_SHARDS, &keys::id(id))
    }

    /// The catalogue's entry for a file, as it counts (an entry rewritten
    /// by an aborted submission counts as what it replaced).
    pub fn catalog_entry(
        &self,
        dataset: DatasetId,
        path: &str,
    ) -> Result<Option<records::CatalogEntry>, StateError> {
        match self.get(CF_FILES, &keys::file(dataset, path))? {
            Some(entry) => apply::Aborted::new(self.db()).settle(entry),
            None => Ok(None),
        }
    }

    /// A dataset's partition map, if one was assigned.
    pub fn partition_map(
        &self,
        dataset: DatasetId,
    ) -> Result<Option<proto_schema::PartitionMap>, StateError> {
        self.get(keys::CF_PARTITIONS, &keys::dataset_prefix(dataset))
    }

    /// The epoch of `dataset`'s partition map (0 before it has one).
    pub fn map_epoch(&self, dataset: DatasetId) -> Result<Epoch, StateError> {
        Ok(self.partition_map(dataset)?.map_or(Epoch(0), |m| m.epoch))
    }

    /// One page of the files a dataset's last finished submission found
    /// gone: listed by the submission before it, not by it. Paths after
    /// `after`, at most `limit`; memory is bounded by the page, not the
    /// catalogue. Older jobs' are refused: their listings are forgotten.
    pub fn gone_files(
        &self,
        job: &Job,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let last = self
            .datasets()?
            .into_iter()
            .find(|d| d.id == job.dataset_id)
            .map(|d| d.last_finished);
        if last != Some(job.id) {
            return Err(StateError::GoneListingExpired { job: job.id });
        }
        let prefix = keys::dataset_prefix(job.dataset_id);
        let start = match after {
            Some(path) => {
                let mut k = keys::file(job.dataset_id, path);
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let db = self.db();
        let mut before = Listing::new(db, job.dataset_id, job.previous_finished);
        let mut now = Listing::new(db, job.dataset_id, job.id);
        let mut aborted = apply::Aborted::new(db);
        let mut out = Vec::new();
        let iter = db.iterator_cf(
            cf(db, CF_FILES),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || out.len() == limit {
                break;
            }
            let entry = records::CatalogEntry::decode(&value)?;
            // As the job left it: a version catalogued since, by an open or
            // an aborted submission, counts as what it replaced.
            let entry = if entry.since > job.id {
                entry.replaced()
            } else {
                aborted.settle(entry)?
            };
            let Some(entry) = entry else { continue };
            let path = keys::file_path(&key);
            if before.lists(&entry, path)? && !now.lists(&entry, path)? {
                out.push(String::from_utf8_lossy(path).into_owned());
            }
        }
        Ok(out)
    }

    /// One page of leased shards as `(shard, node, epoch)`, from shard ids
    /// above `after`: what a new leader loads into its lease table.
    /// Up to `limit` shards with ids above `after`, in id order.
    pub fn shards_after(&self, after: ShardId, limit: usize) -> Result<Vec<Shard>, StateError> {
        let start = keys::id(after.get().saturating_add(1));
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        self.db()
            .iterator_cf(cf(self.db(), CF_SHARDS), mode)
            .take(limit)
            .map(|item| Ok(Shard::decode(&item?.1)?))
            .collect()
    }

    pub fn leased_shards(
        &self,
        after: ShardId,
        limit: usize,
    ) -> Result<Vec<(ShardId, NodeId, Epoch)>, StateError> {
        let start = keys::id(after.get().saturating_add(1));
        let mut out = Vec::new();
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        for item in self
            .db()
            .iterator_cf(cf(self.db(), keys::CF_LEASED), mode)
            .take(limit)
        {
            let (key, _) = item?;
            let shard = keys::decode_u64(&key)
                .map(|id| self.shard(ShardId(id)))
                .transpose()?
                .flatten();
            match shard {
                Some(Shard {
                    id,
                    holder: Some(node),
                    epoch,
                    state: ShardState::Leased,
                    ..
                }) => out.push((id, node, epoch)),
                _ => {
                    return Err(StateError::Inconsistent(format!(
                        "lease index key {key:02x?}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Digest of every state column family, read from one RocksDB snapshot.
    pub fn digest(&self) -> Result<StateDigest, StateError> {
        Ok(self.applied_digest()?.1)
    }

    /// The digest and the index of the last entry applied to the state it
    /// covers, both read from one RocksDB snapshot (never half an install):
    /// replicas at the same index must have the same digest. Reads the
    /// whole state.
    pub fn applied_digest(&self) -> Result<(Option<u64>, StateDigest), StateError> {
        let guard = self.inner.install.read().expect("not poisoned");
        let snap = self.db().snapshot();
        drop(guard);
        let last_applied: Option<LogId<ReplicaId>> =
            match snap.get_cf(cf(self.db(), CF_RAFT), keys::LAST_APPLIED)? {
                Some(b) => serde_json::from_slice(&b)?,
                None => None,
            };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut records = 0;
        for (i, name) in STATE_CFS.iter().enumerate() {
            for item in snap.iterator_cf(cf(self.db(), name), IteratorMode::Start) {
                let (key, value) = item?;
                hasher.update(&[i as u8]);
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(&key);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(&value);
                records += 1;
            }
        }
        let digest = StateDigest {
            records,
            hash: hasher.digest(),
        };
        Ok((last_applied.map(|l| l.index), digest))
    }

    /// Size of the last snapshot this replica built.
    pub fn last_snapshot_stats(&self) -> Option<SnapshotStats> {
        *self.inner.last_build.lock().expect("not poisoned")
    }

    /// The file of snapshot `id`, once `id` is checked to be a plain file
    /// name: an id comes from the leader's InstallSnapshot too.
    fn snapshot_path(&self, id: &str) -> Result<PathBuf, StateError> {
        check_snapshot_id(id)?;
        Ok(self.inner.snapshot_dir.join(format!("{id}.snap")))
    }

    fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta<ReplicaId, Member>>, StateError> {
        self.get_json(keys::SNAPSHOT_META)
    }

    /// Records `meta` as the current snapshot (file already in place) and
    /// deletes the file of the one it replaces.
    fn set_current_snapshot(
        &self,
        meta: &SnapshotMeta<ReplicaId, Member>,
        batch: &mut WriteBatch,
    ) -> Result<(), StateError> {
        let previous = self.current_snapshot_meta()?;
        batch.put_cf(
            cf(self.db(), CF_RAFT),
            keys::SNAPSHOT_META,
            serde_json::to_vec(meta)?,
        );
        self.db().write_opt(std::mem::take(batch), &synced())?;
        if let Some(prev) = previous
            && prev.snapshot_id != meta.snapshot_id
        {
            let _ = fs::remove_file(self.snapshot_path(&prev.snapshot_id)?);
        }
        Ok(())
    }

    /// Writes a snapshot of the state as of now into `path`.
    fn write_snapshot(&self, path: &Path) -> Result<Written, StateError> {
        let db = self.db();
        let guard = self.inner.install.read().expect("not poisoned");
        let snap = db.snapshot();
        drop(guard);
        // Make what the snapshot holds durable before it lets Raft purge
        // the entries that produced it.
        flush_state(db)?;
        let raft_cf = cf(db, CF_RAFT);
        let last_applied: Option<LogId<ReplicaId>> =
            match snap.get_cf(raft_cf, keys::LAST_APPLIED)? {
                Some(b) => serde_json::from_slice(&b)?,
                None => None,
            };
        let membership: StoredMembership<ReplicaId, Member> =
            match snap.get_cf(raft_cf, keys::MEMBERSHIP)? {
                Some(b) => serde_json::from_slice(&b)?,
                None => StoredMembership::default(),
            };
        let file = fs::File::create(path)?;
        let mut writer = SnapshotWriter::new(BufWriter::with_capacity(256 << 10, file))?;
        for (i, name) in STATE_CFS.iter().enumerate() {
            let mut opts = ReadOptions::default();
            opts.fill_cache(false);
            for item in snap.iterator_cf_opt(cf(db, name), opts, IteratorMode::Start) {
                let (key, value) = item?;
                writer.record(i as u8, &key, &value)?;
            }
        }
        let (out, records, bytes) = writer.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok((last_applied, membership, SnapshotStats { records, bytes }))
    }

    /// Replaces the state with the snapshot read from `input`, copying the
    /// bytes into `keep` (the replica's own copy of the snapshot).
    fn install_from(
        &self,
        input: impl Read,
        keep: &Path,
        meta: &SnapshotMeta<ReplicaId, Member>,
    ) -> Result<(), StateError> {
        let db = self.db();
        let _guard = self.inner.install.write().expect("not poisoned");
        let partial = keep.with_extension("part");
        let mut kept = BufWriter::with_capacity(256 << 10, fs::File::create(&partial)?);
        let mut reader = SnapshotReader::new(Tee {
            input,
            copy: &mut kept,
        })?;

        db.put_cf_opt(cf(db, CF_RAFT), keys::INSTALLING, b"1", &synced())?;
        clear_state(db)?;
        let mut batch = WriteBatch::default();
        while let Some(index) = reader.next_record()? {
            let name = STATE_CFS
                .get(index as usize)
                .ok_or(StateError::UnknownColumnFamily(index))?;
            batch.put_cf(cf(db, name), &reader.key, &reader.value);
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                db.write(std::mem::take(&mut batch))?;
            }
        }
        drop(reader);
        kept.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&partial, keep)?;

        let raft_cf = cf(db, CF_RAFT);
        batch.put_cf(
            raft_cf,
            keys::LAST_APPLIED,
            serde_json::to_vec(&meta.last_log_id)?,
        );
        batch.put_cf(
            raft_cf,
            keys::MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership)?,
        );
        batch.delete_cf(raft_cf, keys::INSTALLING);
        flush_state(db)?;
        db.flush_wal(true)?;
        self.set_current_snapshot(meta, &mut batch)
    }

    fn apply_entry(&self, entry: Entry<TypeConfig>) -> Result<Response, StateError> {
        let db = self.db();
        let mut tx = apply::Tx::new(db);
        let response = match entry.payload {
            EntryPayload::Blank => Response::Nothing,
            EntryPayload::Normal(bytes) => {
                match command::check_encoded_len(bytes.0.len()).map(|()| bytes.decode()) {
                    Err(out_of_bounds) => Response::Error(out_of_bounds),
                    Ok(Ok(cmd)) => apply::apply(&mut tx, cmd)?,
                    Ok(Err(e)) => Response::Error(CommandError::Malformed {
                        reason: e.to_string(),
                    }),
                }
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership);
                tx.batch.put_cf(
                    cf(db, CF_RAFT),
                    keys::MEMBERSHIP,
                    serde_json::to_vec(&stored)?,
                );
                Response::Nothing
            }
        };
        tx.batch.put_cf(
            cf(db, CF_RAFT),
            keys::LAST_APPLIED,
            serde_json::to_vec(&Some(entry.log_id))?,
        );
        db.write_opt(tx.batch, &without_wal())?;
        Ok(response)
    }
}

/// Applied entries skip the WAL: the Raft log already holds them.
fn without_wal() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

/// Flushes every column family's memtable, atomically (see `rocks`).
fn flush_state(db: &DB) -> Result<(), rocksdb::Error> {
    let handles: Vec<_> = std::iter::once(CF_RAFT)
        .chain(STATE_CFS)
        .map(|name| cf(db, name))
        .collect();
    db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Accepts a state in this build's `LAYOUT`, and marks a new one as such.
fn check_layout(db: &DB) -> Result<(), StateError> {
    let raft = cf(db, CF_RAFT);
    match db.get_cf(raft, keys::LAYOUT)?.as_deref() {
        Some(found) => match keys::decode_u64(found) {
            Some(LAYOUT) => Ok(()),
            Some(found) => Err(StateError::OlderLayout { found }),
            None => Err(StateError::Inconsistent(format!("layout {found:02x?}"))),
        },
        // Layout 1 did not record itself.
        None if has_state(db)? => Err(StateError::OlderLayout { found: 1 }),
        None => Ok(db.put_cf_opt(raft, keys::LAYOUT, keys::id(LAYOUT), &synced())?),
    }
}

/// Whether anything was ever applied to or installed in this state.
fn has_state(db: &DB) -> Result<bool, rocksdb::Error> {
    if db.get_cf(cf(db, CF_RAFT), keys::LAST_APPLIED)?.is_some() {
        return Ok(true);
    }
    for name in STATE_CFS {
        if db
            .iterator_cf(cf(db, name), IteratorMode::Start)
            .next()
            .transpose()?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes every key of every state column family, as range deletions.
fn clear_state(db: &DB) -> Result<(), rocksdb::Error> {
    let mut batch = WriteBatch::default();
    for name in STATE_CFS {
        let handle = cf(db, name);
        let first = db
            .iterator_cf(handle, IteratorMode::Start)
            .next()
            .transpose()?;
        let last = db
            .iterator_cf(handle, IteratorMode::End)
            .next()
            .transpose()?;
        if let (Some((first, _)), Some((last, _))) = (first, last) {
            batch.delete_range_cf(handle, &first, &last);
            batch.delete_cf(handle, &last);
        }
    }
    db.write(batch)
}

/// A reader that copies what it reads.
struct Tee<'a, R, W> {
    input: R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Runs blocking RocksDB and file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io_err)?
        .map_err(io_err)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let this = self.clone();
        let (meta, path) = blocking(move || {
            let seq = this.get_json::<u64>(keys::SNAPSHOT_SEQ)?.unwrap_or(0) + 1;
            this.db().put_cf(cf(this.db(), CF_RAFT), keys::SNAPSHOT_SEQ, serde_json::to_vec(&seq)?)?;
            let partial = this.inner.snapshot_dir.join(format!("building-{seq}.part"));
            let started = std::time::Instant::now();
            let (last_log_id, last_membership, stats) = this.write_snapshot(&partial)?;
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
                None => format!("none-{seq}"),
            };
            let path = this.snapshot_path(&snapshot_id)?;
            fs::rename(&partial, &path)?;
            tracing::info!(snapshot_id, stats.records, stats.bytes, elapsed = ?started.elapsed(), "snapshot built");
            *this.inner.last_build.lock().expect("not poisoned") = Some(stats);
            let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
            this.set_current_snapshot(&meta, &mut WriteBatch::default())?;
            Ok((meta, path))
        })
        .await?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<ReplicaId>>,
        StoredMembership<ReplicaId, Member>,
    )> {
        let this = self.clone();
        blocking(move || {
            let last_applied = this
                .get_json::<Option<LogId<ReplicaId>>>(keys::LAST_APPLIED)?
                .flatten();
            let membership = this.get_json(keys::MEMBERSHIP)?.unwrap_or_default();
            Ok((last_applied, membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || {
            let mut responses = Vec::with_capacity(entries.len());
            for entry in entries {
                responses.push(Applied(this.apply_entry(entry)?));
            }
            Ok(responses)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        // The receiving file is unlinked at once: it lives as long as its
        // handle, and a crash leaves nothing behind.
        let n = self.inner.incoming.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.snapshot_dir.join(format!("incoming-{n}.part"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| fs::remove_file(&path).map(|_| f))
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let mut file = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || {
            file.seek(SeekFrom::Start(0))?;
            let keep = this.snapshot_path(&meta.snapshot_id)?;
            let started = std::time::Instant::now();
            this.install_from(BufReader::with_capacity(256 << 10, file), &keep, &meta)?;
            tracing::info!(snapshot_id = meta.snapshot_id, elapsed = ?started.elapsed(), "snapshot installed");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let meta = self
            .current_snapshot_meta()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(meta) = meta else { return Ok(None) };
        let path = self
            .snapshot_path(&meta.snapshot_id)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Applying commands to a lone state machine, as Raft would.
#[cfg(test)]
pub(crate) mod test_support {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use proto_schema::command::{
        Command, DatasetFormat, DatasetSpec, FileEntry, KeySpec, LeaseGrant, NodeInfo, Response,
        ShardDone,
    };

    use super::*;
    use crate::CommandBytes;
    use coordinator_client::InventoryChunks;

    pub struct Applier {
        sm: StateMachineStore,
        next_index: u64,
        _dir: tempfile::TempDir,
    }

    impl Applier {
        pub fn new() -> Self {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let sm = StateMachineStore::open(dir.path()).expect("open state");
            Self {
                sm,
                next_index: 1,
                _dir: dir,
            }
        }

        pub fn state(&self) -> &StateMachineStore {
            &self.sm
        }

        /// Log entries applied so far, as the state machine records it.
        pub fn applied_count(&self) -> u64 {
            let applied: Option<LogId<ReplicaId>> =
                self.sm.get_json(keys::LAST_APPLIED).unwrap().flatten();
            applied.map_or(0, |id| id.index)
        }

        pub async fn apply_bytes(&mut self, bytes: Vec<u8>) -> Response {
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index),
                payload: EntryPayload::Normal(CommandBytes(bytes)),
            };
            self.next_index += 1;
            let mut responses = self.sm.apply([entry]).await.expect("storage works");
            responses.pop().expect("one response").0
        }

        pub async fn apply(&mut self, cmd: Command) -> Response {
            self.apply_bytes(cmd.to_bytes().to_vec()).await
        }

        /// Begins a submission and sends a whole manifest in chunks, without
        /// finishing it; returns the submission id.
        pub async fn send(&mut self, dataset: &str, files: Vec<FileEntry>) -> JobId {
            self.send_chunks(dataset, InventoryChunks::new(files.into_iter()))
                .await
        }

        /// Begins a submission and sends these chunks, in this order; each
        /// is numbered from its place among the chunks in path order.
        pub async fn send_chunks(
            &mut self,
            dataset: &str,
            chunks: impl IntoIterator<Item = Vec<FileEntry>>,
        ) -> JobId {
            let begin = Command::BeginSubmission {
                dataset: dataset.into(),
                now_ms: 1,
            };
            let Response::SubmissionBegun { submission } = self.apply(begin).await else {
                panic!("begin refused")
            };
            let chunks: Vec<Vec<FileEntry>> = chunks.into_iter().collect();
            let least = |c: &Vec<FileEntry>| c.iter().map(|f| f.path.clone()).min();
            let mut in_order: Vec<_> = chunks.iter().map(|c| (least(c), c.len())).collect();
            in_order.sort();
            for files in chunks {
                let first = least(&files);
                let first_file = in_order
                    .iter()
                    .take_while(|(path, _)| *path < first)
                    .map(|(_, len)| *len as u64)
                    .sum();
                let chunk = Command::SubmitChunk {
                    dataset: dataset.into(),
                    submission,
                    first_file,
                    files,
                };
                let resp = self.apply(chunk).await;
                assert!(matches!(resp, Response::ChunkApplied { .. }), "{resp:?}");
            }
            submission
        }

        /// Sends a manifest and aborts the submission; returns its id.
        pub async fn send_and_abort(&mut self, dataset: &str, files: Vec<FileEntry>) -> JobId {
            let submission = self.send(dataset, files).await;
            let abort = Command::AbortSubmission {
                dataset: dataset.into(),
                submission,
            };
            assert_eq!(
                self.apply(abort).await,
                Response::SubmissionAborted { submission }
            );
            submission
        }

        /// Submits a whole manifest in chunks; returns the submission id.
        pub async fn submit(&mut self, dataset: &str, files: Vec<FileEntry>) -> JobId {
            let submission = self.send(dataset, files).await;
            self.finish(dataset, submission).await;
            submission
        }

        /// Leases `shards` (never leased before) to `node` in one grant
        /// and completes them in one report.
        pub async fn lease_and_complete(&mut self, node: NodeId, shards: &[ShardId]) {
            let grant = Command::GrantLeases {
                node,
                shards: shards
                    .iter()
                    .map(|&shard| LeaseGrant {
                        shard,
                        expected_epoch: Epoch(0),
                    })
                    .collect(),
                deadline_ms: 9,
            };
            let Response::LeasesGranted {
                granted, passed, ..
            } = self.apply(grant).await
            else {
                panic!("grant refused")
            };
            assert!(passed.is_empty(), "{passed:?}");
            assert_eq!(granted.len(), shards.len());
            let done = Command::CompleteShards {
                node,
                shards: granted
                    .iter()
                    .map(|&(shard, epoch)| ShardDone { shard, epoch })
                    .collect(),
            };
            assert_eq!(
                self.apply(done).await,
                Response::ShardsCompleted {
                    completed: shards.to_vec(),
                    refused: vec![]
                }
            );
        }

        pub async fn finish(&mut self, dataset: &str, submission: JobId) {
            let finish = Command::FinishSubmission {
                dataset: dataset.into(),
                submission,
            };
            let resp = self.apply(finish).await;
            assert!(
                matches!(resp, Response::SubmissionFinished { .. }),
                "{resp:?}"
            );
        }
    }

    pub async fn setup_dataset(sm: &mut Applier, name: &str, nodes: &[u64]) {
        for &id in nodes {
            let node = NodeInfo {
                id: NodeId(id),
                incarnation: 1,
                address: format!("10.0.0.{id}:7000"),
                cert_fingerprint: [id as u8; 32],
            };
            assert_eq!(
                sm.apply(Command::RegisterNode(node)).await,
                Response::NodeRegistered {
                    id: NodeId(id),
                    incarnation: 1,
                    released: 0
                }
            );
        }
        let spec = DatasetSpec {
            name: name.into(),
            format: DatasetFormat::Lines,
            key: KeySpec::WholeLine,
            partitions: 64,
        };
        assert!(matches!(
            sm.apply(Command::CreateDataset(spec)).await,
            Response::DatasetCreated { .. }
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proto_schema::command::{FileEntry, MAX_CHUNK_FILES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::test_support::{Applier, setup_dataset};
    use super::*;

    /// Copies a snapshot the way a transport does: in bounded chunks into
    /// the file the receiver handed out.
    async fn transfer(
        from: &mut StateMachineStore,
        to: &mut StateMachineStore,
    ) -> Snapshot<TypeConfig> {
        let mut snapshot = from
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        let mut receiving = to.begin_receiving_snapshot().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = snapshot.snapshot.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            receiving.write_all(&buf[..n]).await.unwrap();
        }
        receiving.flush().await.unwrap();
        snapshot.snapshot = receiving;
        snapshot
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_streams_the_whole_state_to_another_replica() {
        const FILES: usize = 20_000;
        let mut source = Applier::new();
        setup_dataset(&mut source, "ds", &[1, 2]).await;
        let files = (0..FILES).map(|i| FileEntry {
            path: format!("/data/{:03}/file-{i:08}.log", i / 20),
            size: i as u64,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            checksum: Some(vec![(i % 251) as u8; 16]),
        });
        source.submit("ds", files.collect()).await;
        let mut leader = source.state().clone();

        let started = Instant::now();
        let built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let build_time = started.elapsed();
        let stats = leader.last_snapshot_stats().unwrap();
        // Catalogue and shard records, a listing record and its paths per
        // chunk, plus datasets, jobs, nodes, counters.
        let chunks = FILES.div_ceil(MAX_CHUNK_FILES) as u64;
        assert_eq!(stats.records, 2 * FILES as u64 + 2 * chunks + 1 + 1 + 2 + 3);

        let dir = tempfile::TempDir::new().unwrap();
        let mut follower = StateMachineStore::open(dir.path()).unwrap();
        let snapshot = transfer(&mut leader, &mut follower).await;
        let started = Instant::now();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        eprintln!(
            "snapshot of {FILES} files: {} records, {} bytes, built in {build_time:?}, installed in {:?}",
            stats.records,
            stats.bytes,
            started.elapsed()
        );

        assert_eq!(follower.digest().unwrap(), leader.digest().unwrap());
        assert_eq!(
            follower.applied_state().await.unwrap(),
            leader.applied_state().await.unwrap()
        );
        assert_eq!(
            built.meta.last_log_id,
            follower.applied_state().await.unwrap().0
        );
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(
            current.meta, built.meta,
            "the follower keeps the installed snapshot as its own"
        );

        // Installing over existing state replaces it, leaving nothing extra.
        let mut other = Applier::new();
        setup_dataset(&mut other, "other", &[9]).await;
        let mut other_sm = other.state().clone();
        let snapshot = transfer(&mut leader, &mut other_sm).await;
        other_sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other_sm.digest().unwrap(), leader.digest().unwrap());
        assert!(other_sm.dataset("other").unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_snapshot_fails_and_reopening_rolls_back_to_empty() {
        let mut source = Applier::new();
        setup_dataset(&mut source, "ds", &[1]).await;
        let mut leader = source.state().clone();
        let built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let full = leader.last_snapshot_stats().unwrap().bytes;

        let dir = tempfile::TempDir::new().unwrap();
        {
            let mut follower = StateMachineStore::open(dir.path()).unwrap();
            let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
            let mut original = leader
                .get_current_snapshot()
                .await
                .unwrap()
                .unwrap()
                .snapshot;
            let mut bytes = Vec::new();
            original.read_to_end(&mut bytes).await.unwrap();
            receiving
                .write_all(&bytes[..full as usize - 20])
                .await
                .unwrap();
            let err = follower
                .install_snapshot(&built.meta, receiving)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        let mut reopened = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(reopened.applied_state().await.unwrap().0, None);
        assert_eq!(reopened.digest().unwrap().records, 0);
        assert!(reopened.get_current_snapshot().await.unwrap().is_none());
    }

    #[test]
    fn snapshot_ids_are_plain_names() {
        for good in ["3-5000-2", "none-1", "a"] {
            check_snapshot_id(good).unwrap();
        }
        let long = "1".repeat(MAX_SNAPSHOT_ID + 1);
        for bad in ["", "../../etc/passwd", "a/b", "x.snap", "é", long.as_str()] {
            assert!(
                matches!(check_snapshot_id(bad), Err(StateError::BadSnapshotId(_))),
                "{bad:?}"
            );
        }
    }

    /// An InstallSnapshot naming a path is refused before anything is
    /// read or written under that name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_whose_id_is_a_path_is_refused() {
        let mut source = Applier::new();
        setup_dataset(&mut source, "ds", &[1]).await;
        let mut leader = source.state().clone();
        let mut built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let mut follower = StateMachineStore::open(&dir.path().join("state")).unwrap();
        let snapshot = transfer(&mut leader, &mut follower).await;
        built.meta.snapshot_id = "../../escaped".into();
        let err = follower
            .install_snapshot(&built.meta, snapshot.snapshot)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("names no snapshot"), "{err}");
        assert!(!dir.path().join("escaped.snap").exists());
        assert!(!dir.path().join("escaped.part").exists());
        assert_eq!(follower.digest().unwrap().records, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_in_an_older_layout_is_refused_not_read() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state");
        drop(StateMachineStore::open(&path).unwrap());
        // A fresh state is marked with this layout and opens again.
        let store = StateMachineStore::open(&path).unwrap();
        let mut sm = store.clone();
        sm.apply([openraft::Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Blank,
        }])
        .await
        .unwrap();
        // Layout 1 did not record itself.
        store
            .db()
            .delete_cf(cf(store.db(), CF_RAFT), keys::LAYOUT)
            .unwrap();
        drop((store, sm));
        let refused = StateMachineStore::open(&path).err().expect("refused");
        assert!(
            matches!(refused, StateError::OlderLayout { found: 1 }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("remove the data directories"),
            "{refused}"
        );
    }
}
