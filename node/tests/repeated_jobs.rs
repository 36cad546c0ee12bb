//! Memory goes back after a job: in one long-running process (as the dev
//! server will be), twenty consecutive ingests leave anonymous RSS within
//! 10% of its level after the first ones, the tracked heap where it was,
//! and no thread of a job alive after it.
//!
//! RocksDB's block cache is the one part of a node's memory that a job
//! leaves behind on purpose: it holds the index and filter blocks of the
//! store's files, up to its capacity, a fixed part of the budget. While the
//! store grows, RSS grows with it, not with any job, so the twenty measured
//! jobs run once earlier jobs have brought the cache to its steady level;
//! from then on the comparison is on the whole anonymous RSS, the cache
//! included.
//!
//! Its own test binary, so no other test's allocations move the figures.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bench::datagen::{LinesSpec, write_lines_dataset};
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::memory::ProcessMemory;
use node::memory::tracking::Usage;
use node::store::{Access, Store};

node::install_tracking_allocator!();

const JOBS: usize = 20;
const MEMORY: u64 = 32 << 20;
/// Jobs the store gets to bring its block cache to a steady level.
const MAX_WARM_UP_JOBS: usize = 40;

fn config(data: &Path) -> IngestConfig {
    IngestConfig {
        data_dir: data.to_path_buf(),
        dataset: "repeat".into(),
        memory_bytes: MEMORY,
        threads: 2,
        ..IngestConfig::default()
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn block_cache_bytes(store: &Store) -> u64 {
    store
        .memory_usage()
        .into_iter()
        .find(|(name, _)| *name == "quern_rocksdb_block_cache_bytes")
        .unwrap()
        .1
}

/// One ingest of `input`, checked for having done real work within the
/// budget, and the compactions it set off.
fn ingest(store: &Arc<Store>, data: &Path, input: &Path, job: usize) {
    let prepared = node::ingest::prepare(
        store.clone(),
        config(data),
        vec![input.to_path_buf()],
        Arc::new(JobCounters::default()),
    )
    .unwrap();
    let outcome = node::ingest::run(prepared, std::future::pending()).unwrap();
    store.wait_for_compactions(Duration::from_secs(60)).unwrap();
    assert!(
        outcome.totals.read > 100_000,
        "job {job}: {:?}",
        outcome.totals
    );
    assert!(
        outcome.memory.heap > 0 && outcome.memory.heap <= MEMORY,
        "job {job}: heap peak {} outside (0, budget]",
        outcome.memory.heap
    );
}

#[test]
fn twenty_ingests_return_memory_to_the_level_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let spec = LinesSpec {
        files: 4,
        bytes_per_file: 8 << 20,
        compression: Vec::new(),
        ..LinesSpec::sample()
    };
    write_lines_dataset(&input, &spec).unwrap();
    let data = dir.path().join("data");
    let cache_capacity = MemoryPlan::rocksdb_cache_bytes(MEMORY);
    let store = Arc::new(Store::open(&data, cache_capacity, Access::ReadWrite).unwrap());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;

    // Warm up until three jobs in a row leave the cache no larger than it
    // has been: the store's repeated data is compacted away, so its cache
    // levels off (here at ~3.3 MiB) below its capacity.
    let mut warm_up = Vec::new();
    let (mut largest, mut level_jobs) = (0, 0);
    while level_jobs < 3 {
        assert!(
            warm_up.len() < MAX_WARM_UP_JOBS,
            "the block cache never levelled off: {warm_up:?} MiB after each job"
        );
        ingest(&store, &data, &input, warm_up.len());
        let cache = block_cache_bytes(&store);
        level_jobs = if cache <= largest { level_jobs + 1 } else { 0 };
        largest = largest.max(cache);
        warm_up.push(format!("{:.1}", mib(cache)));
    }
    eprintln!(
        "block cache after each warm-up job (MiB, capacity {:.1}): {}",
        mib(cache_capacity),
        warm_up.join(" ")
    );

    let mut anon = Vec::new();
    let mut heap = Vec::new();
    let mut thread_counts = Vec::new();
    for job in 0..JOBS {
        ingest(&store, &data, &input, job);
        let cache = block_cache_bytes(&store);
        assert!(
            cache <= cache_capacity,
            "job {job}: block cache {cache} over its capacity {cache_capacity}"
        );
        anon.push(ProcessMemory::read().unwrap().anon);
        heap.push(Usage::read().total());
        thread_counts.push(threads());
    }

    let shown: Vec<String> = anon.iter().map(|&a| format!("{:.1}", mib(a))).collect();
    eprintln!("anonymous RSS after each job (MiB): {}", shown.join(" "));
    let shown: Vec<String> = heap.iter().map(|&a| format!("{:.2}", mib(a))).collect();
    eprintln!("heap after each job (MiB): {}", shown.join(" "));
    eprintln!("threads after each job: {thread_counts:?}");
    // In a process of ~8 MiB, single readings jitter by up to ±8% from job
    // to job (RocksDB's file metadata and allocator pages come and go; every
    // few jobs a compaction leaves one reading ~0.8 MiB lower), so the level
    // after the first job is the median of the first five, and the median
    // of the last five must not have drifted from it: a job that left even
    // 100 KiB behind would show here as +1.5 MiB. (A store that gained one
    // SST file per job crept up by ~10 KiB a job, too little to fail here:
    // `publish`'s tests bound the store's files directly.)
    let median = |jobs: &[u64]| {
        let mut sorted = jobs.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    };
    let (first, last) = (median(&anon[..5]), median(&anon[JOBS - 5..]));
    assert!(
        last.abs_diff(first) * 10 <= first,
        "anonymous RSS {:.1} MiB over the last five jobs vs {:.1} MiB over the first five (medians)",
        mib(last),
        mib(first)
    );
    for (job, &a) in anon.iter().enumerate() {
        assert!(
            a.abs_diff(first) * 5 <= first,
            "after job {job}: {:.1} MiB anonymous vs {:.1} MiB over the first five",
            mib(a),
            mib(first)
        );
    }
    // The heap itself returns to within a little of where the first job
    // left it (RocksDB's and the runtime's small caches aside).
    for (job, &h) in heap.iter().enumerate() {
        assert!(
            h.abs_diff(heap[0]) < 1 << 20,
            "after job {job}: heap {h} vs {} after the first",
            heap[0]
        );
    }
    // Every job's threads are gone when it returns.
    assert!(
        thread_counts.iter().all(|&t| t == thread_counts[0]),
        "threads after each job: {thread_counts:?}"
    );
}
