//! RocksDB options with bounded memory for the coordinator's two databases.
//!
//! Both the log store and the state machine open their own DB; each gets one
//! small LRU block cache and a WriteBufferManager charged to that cache, so
//! memtables and blocks together stay under the DB's budget however many
//! column families it has and however large the catalogue grows.
//!
//! The two DBs differ in what they keep. Log entries are written once and
//! purged after the next snapshot, and submission chunks (paths, checksums)
//! barely compress: the log is not compressed. The state is long-lived and
//! is written without a WAL (see `state`), so its column families flush
//! atomically, and only the levels below L1 are compressed: flushes and
//! the first compactions, which rewrite the freshest data, spend no CPU on
//! LZ4.

use std::path::Path;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    Options, WriteBufferManager,
};

/// Target size of the state's base level (RocksDB's default: 256 MiB).
const STATE_BASE_LEVEL_BYTES: u64 = 16 << 20;
/// Target size of one of the state's SST files (RocksDB's default: 64 MiB).
const STATE_TARGET_FILE_BYTES: u64 = 4 << 20;

/// Memory for one DB: block cache, with memtables charged inside it.
pub(crate) struct Budget {
    pub cache_bytes: usize,
    pub memtable_bytes: usize,
}

/// Which of the coordinator's DBs is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log,
    State,
}

pub(crate) fn open(
    path: &Path,
    kind: Kind,
    budget: Budget,
    cfs: &[&str],
) -> Result<DB, rocksdb::Error> {
    let cache = Cache::new_lru_cache(budget.cache_bytes);
    let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
        budget.memtable_bytes,
        // The state's writes stall while memtables (mutable and waiting to
        // flush) are over budget; applying waits, nothing else does. The
        // log's appends run on the Raft core's task, and stalling them
        // delays heartbeats into elections: its memtables are bounded by
        // RocksDB's own limit instead (2 column families x 2 x half budget).
        kind == Kind::State,
        cache.clone(),
    );
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_bloom_filter(10.0, false);
    match kind {
        Kind::Log => table.set_block_size(16 * 1024),
        Kind::State => {
            // Point lookups (shards, jobs, a chunk's first catalogue key)
            // land anywhere in the state's files. With
            // whole-file filters and indexes, each lookup could load a
            // file's entire filter (hundreds of KiB) into a cache too small
            // to keep them all: 1M lookups read 19 GB. Partitioned, a
            // lookup loads one 4 KiB partition, the top levels stay pinned,
            // and small data blocks make a hit cost 4 KiB, not 16.
            table.set_block_size(4 * 1024);
            table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_metadata_block_size(4 * 1024);
            table.set_pin_top_level_index_and_filter(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
        }
    }

    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_write_buffer_manager(&write_buffers);
    db_opts.set_max_background_jobs(2);
    db_opts.set_max_open_files(256);
    db_opts.set_keep_log_file_num(2);
    db_opts.set_max_log_file_size(4 << 20);
    db_opts.set_max_total_wal_size(64 << 20);
    // Readahead is per compaction input file, and a compaction into a large
    // level reads many: keep it small so memory does not grow with the DB.
    db_opts.set_compaction_readahead_size(256 << 10);
    db_opts.set_atomic_flush(kind == Kind::State);
    // Read through mmap, a lookup or a compaction reads the page cache in
    // place instead of copying each block into the heap with pread: 1M
    // random-order files cost 25% less CPU and half the anonymous memory.
    // The mapped pages are file-backed, so the kernel reclaims them under
    // pressure.
    db_opts.set_allow_mmap_reads(kind == Kind::State);
    // Diffs step through the catalogue in path order (`sorted_lookup`):
    // let the kernel read ahead of the mapped pages they fault in, instead
    // of one synchronous 4 KiB read per block (RocksDB advises random
    // access by default).
    db_opts.set_advise_random_on_open(kind != Kind::State);

    // Every column family's memtable is charged to the shared manager; a
    // single memtable is at most half the budget.
    let memtable = (budget.memtable_bytes / 2).max(1 << 20);
    let descriptors = cfs.iter().map(|name| {
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(memtable);
        opts.set_max_write_buffer_number(2);
        match kind {
            Kind::Log => {
                opts.set_compression_type(DBCompressionType::None);
                // Entries live in blob files: compactions move keys and
                // blob references, not the payloads.
                opts.set_enable_blob_files(true);
                opts.set_min_blob_size(4096);
                opts.set_enable_blob_gc(true);
            }
            Kind::State => {
                let mut levels = [DBCompressionType::Lz4; 7];
                levels[..2].fill(DBCompressionType::None);
                opts.set_compression_per_level(&levels);
                // Most catalogue lookups of a first submission miss: a
                // Bloom filter over the memtables answers them without
                // walking two skip lists (~2% of the memtable budget).
                opts.set_memtable_whole_key_filtering(true);
                opts.set_memtable_prefix_bloom_ratio(0.02);
                // A re-submission's changed entries fall all over the
                // catalogue's key range: a flush of them overlaps every
                // file of the level it compacts into. With the default
                // 256 MiB base level, a catalogue under that size is that
                // level, rewritten whole by each re-submission; a small
                // base level takes the changes instead, and they move
                // down later, a level's worth at a time.
                opts.set_max_bytes_for_level_base(STATE_BASE_LEVEL_BYTES);
                opts.set_target_file_size_base(STATE_TARGET_FILE_BYTES);
            }
        }
        ColumnFamilyDescriptor::new(*name, opts)
    });
    DB::open_cf_descriptors(&db_opts, path, descriptors)
}
