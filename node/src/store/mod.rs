//! The node's RocksDB store: two column families (`data` for records and job
//! records, `meta` for the catalogue and per-file accounting), one LRU block
//! cache shared by both, and a WriteBufferManager charged to that cache, so
//! RocksDB's memory is one number sized from the node's budget.

pub mod catalog;
mod gather;
pub mod keys;
pub mod ledger;
pub mod merge_ops;
pub mod publish;
pub mod staged;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBufferManager,
};

const DATA_CF: &str = "data";
/// RocksDB requires a `default` column family; it holds the meta records.
const META_CF: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no store at {0} (run `quern ingest` first, or pass --data)")]
    Missing(PathBuf),
    #[error("{0}")]
    Catalog(String),
}

/// Whether the store is opened to write (exclusive) or only to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Takes RocksDB's lock; cleans up after any crashed job.
    ReadWrite,
    /// Reads alongside a running ingest, seeing the store as of opening.
    ReadOnly,
}

pub struct Store {
    db: DB,
    /// Kept to report usage; the DB holds its own references.
    cache: Cache,
    write_buffers: WriteBufferManager,
    root: PathBuf,
    /// Serialises id allocation in the catalogue.
    catalog_lock: Mutex<()>,
}

fn db_dir(root: &Path) -> PathBuf {
    root.join("db")
}

/// Target size of the ledger's (`meta`) SST files. A job's file entries
/// arrive in key order, but its job record sorts after them all, so with
/// RocksDB's 64 MiB default the bottom level was one file spanning the
/// whole job, and every compaction of a few flushed memtables rewrote it
/// whole: 281 MB of compaction input for 134 MB flushed over a million
/// small files, growing with the square of the file count. Cut smaller,
/// a compaction rewrites only the last file, the one the new keys fall
/// into.
const META_TARGET_FILE_BYTES: u64 = 4 << 20;

/// Block-based table settings shared by both column families and by the SST
/// files jobs write, so ingested files look like the ones RocksDB makes.
fn table_options(cache: Option<&Cache>) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_size(16 * 1024);
    table.set_bloom_filter(10.0, false);
    if let Some(cache) = cache {
        table.set_block_cache(cache);
        // Index and filter blocks live in the cache too, so they are bounded
        // by it instead of growing with the number of files.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    }
    table
}

/// Column family settings for `data`, minus memory-dependent parts.
fn data_cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_merge_operator_associative(merge_ops::FIRST_SEEN_NAME, merge_ops::keep_first_seen);
    opts
}

/// Column family settings for `meta`, minus memory-dependent parts.
fn meta_cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_target_file_size_base(META_TARGET_FILE_BYTES);
    // File counts are puts now (`ledger::LedgerWriter`); stores written
    // before hold them as merge operands, which this adds up.
    opts.set_merge_operator_associative(merge_ops::ADD_COUNTS_NAME, merge_ops::add_counts);
    opts
}

impl Store {
    /// Opens (creating if needed, when writing) the store under `root`,
    /// giving RocksDB `memory_bytes` in total.
    pub fn open(root: &Path, memory_bytes: u64, access: Access) -> Result<Self, StoreError> {
        let db_path = db_dir(root);
        if access == Access::ReadOnly && !db_path.join("CURRENT").exists() {
            return Err(StoreError::Missing(root.to_path_buf()));
        }
        std::fs::create_dir_all(root).map_err(|source| StoreError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let memory = memory_bytes as usize;
        let cache = Cache::new_lru_cache(memory);
        // Memtables get a quarter of RocksDB's share, charged to the cache so
        // the two together stay within `memory_bytes`.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            memory / 4,
            false,
            cache.clone(),
        );

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_write_buffer_manager(&write_buffers);
        db_opts.set_max_background_jobs(2);
        db_opts.set_max_open_files(1024);
        db_opts.set_keep_log_file_num(2);
        db_opts.set_max_log_file_size(8 << 20);

        let memtable = (memory / 8).clamp(1 << 20, 64 << 20);
        let mut data = data_cf_options();
        data.set_block_based_table_factory(&table_options(Some(&cache)));
        data.set_write_buffer_size(memtable);
        let mut meta = meta_cf_options();
        meta.set_block_based_table_factory(&table_options(Some(&cache)));
        meta.set_write_buffer_size(memtable);

        let cfs = [
            ColumnFamilyDescriptor::new(META_CF, meta),
            ColumnFamilyDescriptor::new(DATA_CF, data),
        ];
        let rocks = |source| StoreError::Rocks {
            path: db_path.clone(),
            source,
        };
        let db = match access {
            Access::ReadWrite => DB::open_cf_descriptors(&db_opts, &db_path, cfs).map_err(rocks)?,
            Access::ReadOnly => {
                DB::open_cf_descriptors_read_only(&db_opts, &db_path, cfs, false).map_err(rocks)?
            }
        };
        let store = Self {
            db,
            cache,
            write_buffers,
            root: root.to_path_buf(),
            catalog_lock: Mutex::new(()),
        };
        if access == Access::ReadWrite {
            store.reset_tmp_dir()?;
            store.recover_jobs()?;
        }
        Ok(store)
    }

    /// Scratch space for jobs (runs, SST files before ingestion). Emptied at
    /// every read-write open: anything there belongs to a job that did not
    /// finish, and we hold the lock, so no one else is using it.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn reset_tmp_dir(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        let io = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(&tmp).map_err(io)
    }

    /// RocksDB's memory as metric name and bytes: the block cache (which
    /// the memtables are charged to) and the memtables alone.
    pub fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        let table_readers: u64 = [self.meta_cf(), self.data_cf()]
            .into_iter()
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem")
                    .ok()
                    .flatten()
            })
            .sum();
        vec![
            (
                "quern_rocksdb_block_cache_bytes",
                self.cache.get_usage() as u64,
            ),
            (
                "quern_rocksdb_block_cache_pinned_bytes",
                self.cache.get_pinned_usage() as u64,
            ),
            (
                "quern_rocksdb_memtable_bytes",
                self.write_buffers.get_usage() as u64,
            ),
            ("quern_rocksdb_table_readers_bytes", table_readers),
        ]
    }

    /// Waits, up to `timeout`, for the compactions a job's ingest set off:
    /// until they finish, their threads' buffers are part of the process's
    /// memory.
    pub fn wait_for_compactions(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        let mut opts = rocksdb::WaitForCompactOptions::default();
        opts.set_timeout(timeout.as_micros().try_into().unwrap_or(u64::MAX));
        self.db
            .wait_for_compact(&opts)
            .map_err(|e| self.rocks_error(e))
    }

    /// RocksDB's own directory.
    pub fn db_dir(&self) -> PathBuf {
        db_dir(&self.root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn data_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(DATA_CF)
            .expect("data column family is opened with the store")
    }

    pub(crate) fn meta_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(META_CF)
            .expect("meta column family is opened with the store")
    }

    pub(crate) fn rocks_error(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.db_dir(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_open_of_a_missing_store_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("none"), 8 << 20, Access::ReadOnly)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("run `quern ingest` first"),
            "{err}"
        );
    }

    #[test]
    fn a_second_writer_is_refused_and_readers_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let _writer = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let err = Store::open(dir.path(), 8 << 20, Access::ReadWrite)
            .err()
            .unwrap();
        assert!(err.to_string().contains("lock"), "{err}");
        Store::open(dir.path(), 8 << 20, Access::ReadOnly).unwrap();
    }

    #[test]
    fn merge_operators_keep_the_first_position_and_add_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let (data, meta) = (store.data_cf(), store.meta_cf());
        let value = |job: u32, offset: u64, v: &[u8]| {
            let mut out = Vec::new();
            let first_seen = keys::FirstSeen {
                job,
                position: proto_schema::Position { file: 0, offset },
            };
            keys::data_value(first_seen, v, &mut out);
            out
        };
        store.db.merge_cf(data, b"k", value(2, 0, b"late")).unwrap();
        store
            .db
            .merge_cf(data, b"k", value(1, 9, b"first"))
            .unwrap();
        store
            .db
            .merge_cf(data, b"k", value(1, 10, b"second"))
            .unwrap();
        store.db.flush_cf(data).unwrap();
        store
            .db
            .merge_cf(data, b"k", value(1, 9, b"first"))
            .unwrap();
        assert_eq!(
            store.db.get_cf(data, b"k").unwrap().unwrap(),
            value(1, 9, b"first")
        );

        let counts = |c: [u64; 2]| c.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        store.db.merge_cf(meta, b"c", counts([1, 2])).unwrap();
        store.db.merge_cf(meta, b"c", counts([10, 20])).unwrap();
        assert_eq!(
            store.db.get_cf(meta, b"c").unwrap().unwrap(),
            counts([11, 22])
        );
    }
}
