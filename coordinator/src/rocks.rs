//! RocksDB options with bounded memory for the coordinator's two databases.
//!
//! Both the log store and the state machine open their own DB; each gets one
//! small LRU block cache and a WriteBufferManager charged to that cache, so
//! memtables and blocks together stay under the DB's budget however many
//! column families it has and however large the catalogue grows.

use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteBufferManager};

/// Memory for one DB: block cache, with memtables charged inside it.
pub(crate) struct Budget {
    pub cache_bytes: usize,
    pub memtable_bytes: usize,
}

pub(crate) fn open(path: &Path, budget: Budget, cfs: &[&str]) -> Result<DB, rocksdb::Error> {
    let cache = Cache::new_lru_cache(budget.cache_bytes);
    let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
        budget.memtable_bytes,
        false,
        cache.clone(),
    );
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_block_size(16 * 1024);
    table.set_cache_index_and_filter_blocks(true);
    table.set_bloom_filter(10.0, false);

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_write_buffer_manager(&write_buffers);
    db_opts.set_max_background_jobs(2);
    db_opts.set_max_open_files(256);
    db_opts.set_keep_log_file_num(2);
    db_opts.set_max_log_file_size(4 << 20);
    db_opts.set_max_total_wal_size(64 << 20);

    // Every column family's memtable is charged to the shared manager; a
    // single memtable is at most half the budget.
    let memtable = (budget.memtable_bytes / 2).max(1 << 20);
    let descriptors = cfs.iter().map(|name| {
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(memtable);
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(*name, opts)
    });
    DB::open_cf_descriptors(&db_opts, path, descriptors)
}
