//! Micro benchmarks of the ingest's hot paths, each on the same generated
//! lines (one 16 MiB file of 20-120 byte lines, 30% duplicates, seed 7):
//! splitting records, building batches, sorting a run and reading it back
//! in order (what a spill does), merging runs, and writing SST files.
//!
//! `cargo bench -p node --bench hot_paths`; results and how they moved
//! are in bench/RESULTS.md.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use external_sort::MERGE_ORDER;
use external_sort::merge::{KMerge, SortedSource};
use external_sort::run::{RunBuffer, SortedRun};
use node::config::Format;
use node::input::read_buffers::ReadBuffer;
use node::input::records::{Event, RecordReader};
use node::store::publish::SstSink;
use node::store::{Access, Store};
use proto_schema::{BatchView, Position, Record, RecordBatch, partition_of};

const PARTITIONS: u16 = 64;
/// Runs the merge benchmark merges, as a 2 GB ingest at 128 MiB does per
/// lane.
const MERGED_RUNS: usize = 48;

fn generated_lines() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let spec = bench::datagen::LinesSpec {
        files: 1,
        bytes_per_file: 16 << 20,
        min_len: 20,
        max_len: 120,
        duplicate_ratio: 0.3,
        edge_cases: false,
        compression: Vec::new(),
        seed: 7,
    };
    let generated = bench::datagen::write_lines_dataset(dir.path(), &spec).expect("generate lines");
    std::fs::read(&generated.files[0].path).expect("read generated lines")
}

fn reader(data: &[u8]) -> RecordReader {
    RecordReader::new(
        Box::new(Cursor::new(data.to_vec())),
        0,
        false,
        None,
        None,
        1 << 20,
        ReadBuffer::unpooled(RecordReader::buffer_len(1 << 20, 1 << 20)),
    )
    .expect("reader over memory")
}

/// The records as one scanner would batch them.
fn batch_of(data: &[u8]) -> RecordBatch {
    let mut batch = RecordBatch::new();
    let mut records = reader(data);
    while let Some(event) = records.next_event().expect("in-memory read") {
        if let Event::Record { offset, bytes } = event {
            batch.push(Record {
                partition: partition_of(bytes, PARTITIONS),
                key: bytes,
                value: b"",
                position: Position { file: 0, offset },
            });
        }
    }
    batch
}

fn sorted_run(batch: &RecordBatch) -> SortedRun {
    let mut run = RunBuffer::default();
    run.push(batch);
    run.sort()
}

/// Reads a sorted source to its end, returning the record count.
fn drain(source: &mut impl SortedSource) -> usize {
    let mut n = 0;
    while let Some(record) = source.current() {
        black_box(record);
        n += 1;
        source.advance().expect("in-memory source");
    }
    n
}

fn hot_paths(c: &mut Criterion) {
    let data = generated_lines();
    let batch = batch_of(&data);
    let mut group = c.benchmark_group("hot_paths");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(data.len() as u64));

    group.bench_function("split_records", |b| {
        b.iter_batched(
            || reader(&data),
            |mut records| {
                let mut n = 0u64;
                while let Some(event) = records.next_event().expect("in-memory read") {
                    if let Event::Record { bytes, .. } = event {
                        n += bytes.len() as u64;
                    }
                }
                n
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("build_batch", |b| {
        let mut out = RecordBatch::new();
        b.iter(|| {
            out.clear();
            for i in 0..batch.len() {
                let r = batch.record(i);
                out.push(Record {
                    partition: partition_of(r.key, PARTITIONS),
                    ..r
                });
            }
            out.len()
        })
    });

    group.bench_function("sort_run_and_read_in_order", |b| {
        b.iter(|| drain(&mut sorted_run(&batch)))
    });

    group.bench_function("merge_runs", |b| {
        b.iter_batched(
            || {
                // The sorted records dealt round-robin into runs: each run
                // is sorted and its rows lie in order, like a run file's.
                let mut parts = vec![RecordBatch::new(); MERGED_RUNS];
                let mut all = sorted_run(&batch);
                let mut i = 0;
                while let Some(record) = all.current() {
                    parts[i % MERGED_RUNS].push(record);
                    i += 1;
                    all.advance().expect("in-memory run");
                }
                parts.iter().map(sorted_run).collect::<Vec<_>>()
            },
            |runs| drain(&mut KMerge::new(runs, MERGE_ORDER)),
            BatchSize::LargeInput,
        )
    });

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path(), 16 << 20, Access::ReadWrite).expect("open store");
    let dataset = store
        .open_dataset("bench", Format::Lines, Some(PARTITIONS))
        .expect("dataset");
    let job = store.begin_job(&dataset, vec![]).expect("job");
    // Unique records in store order, as dedup hands them to commit.
    let mut unique = Vec::new();
    let mut run = sorted_run(&batch);
    let mut last: Option<(u16, Vec<u8>)> = None;
    while let Some(r) = run.current() {
        if last.as_ref() != Some(&(r.partition, r.key.to_vec())) {
            unique.push((r.partition, r.key.to_vec(), r.position));
            last = Some((r.partition, r.key.to_vec()));
        }
        run.advance().expect("in-memory run");
    }
    group.bench_function("write_sst_files", |b| {
        b.iter(|| {
            let mut sink = SstSink::new(store.tmp_dir(), 0, &job, 64 << 20, 174_762);
            for (partition, key, position) in &unique {
                let record = Record {
                    partition: *partition,
                    key,
                    value: b"",
                    position: *position,
                };
                sink.write(&record).expect("write SST");
            }
            let (files, written) = sink.finish().expect("finish SST");
            for file in files {
                std::fs::remove_file(file).expect("remove SST");
            }
            written
        })
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
