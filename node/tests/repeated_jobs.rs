//! Memory goes back after a job: in one long-running process (as the dev
//! server will be), twenty consecutive ingests leave anonymous RSS within
//! 10% of its level after the first, the tracked heap where it was, and no
//! task of the runtime alive between jobs.
//!
//! Its own test binary, so no other test's allocations move the figures.

use std::path::Path;
use std::sync::Arc;

use bench::datagen::{LinesSpec, write_lines_dataset};
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::memory::ProcessMemory;
use node::memory::tracking::Usage;
use node::store::{Access, Store};

node::install_tracking_allocator!();

const JOBS: usize = 20;
const MEMORY: u64 = 32 << 20;

fn config(data: &Path) -> IngestConfig {
    IngestConfig {
        data_dir: data.to_path_buf(),
        dataset: "repeat".into(),
        memory_bytes: MEMORY,
        threads: 2,
        ..IngestConfig::default()
    }
}

#[test]
#[ignore = "fails today (issue 3): anonymous RSS grows ~5 MiB per job while the heap returns \
            to 0.1 MiB; the growth is in glibc arenas (RocksDB) and mimalloc's OS pages. \
            Run with --ignored."]
fn twenty_ingests_return_memory_to_the_level_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let spec = LinesSpec {
        files: 4,
        bytes_per_file: 4 << 20,
        compression: Vec::new(),
        ..LinesSpec::sample()
    };
    write_lines_dataset(&input, &spec).unwrap();
    let data = dir.path().join("data");
    let store = Arc::new(
        Store::open(
            &data,
            MemoryPlan::rocksdb_cache_bytes(MEMORY),
            Access::ReadWrite,
        )
        .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut anon = Vec::new();
    let mut heap = Vec::new();
    for job in 0..JOBS {
        let prepared = node::ingest::prepare(
            store.clone(),
            config(&data),
            vec![input.clone()],
            Arc::new(JobCounters::default()),
        )
        .unwrap();
        let outcome = runtime
            .block_on(node::ingest::run(prepared, std::future::pending()))
            .unwrap();
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
        assert_eq!(
            runtime.metrics().num_alive_tasks(),
            0,
            "job {job} left tasks running"
        );
        anon.push(ProcessMemory::read().unwrap().anon);
        heap.push(Usage::read().total());
    }

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let first = anon[0];
    let shown: Vec<String> = anon.iter().map(|&a| format!("{:.1}", mib(a))).collect();
    eprintln!("anonymous RSS after each job (MiB): {}", shown.join(" "));
    let shown: Vec<String> = heap.iter().map(|&a| format!("{:.2}", mib(a))).collect();
    eprintln!("heap after each job (MiB): {}", shown.join(" "));
    for (job, &a) in anon.iter().enumerate() {
        assert!(
            a.abs_diff(first) * 10 <= first,
            "after job {job}: {:.1} MiB anonymous vs {:.1} MiB after the first",
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
}
