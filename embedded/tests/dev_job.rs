//! A job through the embedded cluster (coordinator, lease feed, staging,
//! commit) stores what a walk ingest of the same files stores: the same
//! totals, export and first sightings, with large plain files cut into
//! byte ranges; a second run over unchanged files leases nothing.

use std::future::pending;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bench::datagen::{Compression, LinesSpec, write_lines_dataset};
use embedded::{DevConfig, DevOutcome, node_dir, node_dirs};
use node::config::IngestConfig;
use node::counters::JobCounters;
use node::store::{Access, Store};

use bench::oracle::sort_u_dir as sort_u;

fn config(data: &Path) -> IngestConfig {
    IngestConfig {
        data_dir: data.to_path_buf(),
        dataset: "lines".into(),
        memory_bytes: 32 << 20,
        threads: 2,
        // The least allowed, so the plain files are read as byte ranges.
        split_bytes: 1 << 20,
        ..IngestConfig::default()
    }
}

fn dev(data: &Path, input: &Path) -> DevOutcome {
    dev_on(1, data, input)
}

fn dev_on(nodes: usize, data: &Path, input: &Path) -> DevOutcome {
    let config = DevConfig {
        nodes,
        data_dir: data.to_path_buf(),
        ingest: config(data),
        inputs: vec![input.to_path_buf()],
        lease_ms: 5_000,
    };
    let mut submitted = None;
    let outcome = embedded::run(
        config,
        Arc::new(JobCounters::default()),
        pending(),
        |summary| submitted = Some(*summary),
    )
    .expect("the job commits");
    assert_eq!(
        submitted.map(|s| s.submission),
        Some(outcome.submission.submission)
    );
    outcome
}

fn export(store: &Store, dataset: &str) -> Vec<u8> {
    let dataset = store.existing_dataset(dataset).unwrap();
    let mut out = Vec::new();
    node::export::export(store, &dataset, &mut out).unwrap();
    out
}

#[test]
fn a_dev_job_stores_what_a_walk_ingest_stores() {
    let (input, dev_data, walk_data) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let spec = LinesSpec {
        files: 4,
        bytes_per_file: 2_200_000,
        min_len: 0,
        max_len: 60,
        duplicate_ratio: 0.4,
        edge_cases: true,
        compression: vec![Compression::Plain, Compression::Gzip, Compression::Zstd],
        seed: 5,
    };
    write_lines_dataset(input.path(), &spec).unwrap();
    let input: PathBuf = input.path().canonicalize().unwrap();

    let first = dev(dev_data.path(), &input);
    let dev_totals = first.nodes[0].outcome.totals;
    assert!(dev_totals.reconciles());
    assert_eq!(
        node_dirs(dev_data.path()),
        vec![node_dir(dev_data.path(), proto_schema::ids::NodeId(1))]
    );

    let walk_store = Arc::new(Store::open(walk_data.path(), 8 << 20, Access::ReadWrite).unwrap());
    let prepared = node::ingest::prepare(
        walk_store.clone(),
        config(walk_data.path()),
        vec![input.clone()],
        Arc::new(JobCounters::default()),
    )
    .unwrap();
    let w = node::ingest::run(prepared, pending()).unwrap().totals;
    assert_eq!(
        (
            dev_totals.files,
            dev_totals.read,
            dev_totals.unique,
            dev_totals.duplicates
        ),
        (w.files, w.read, w.unique, w.duplicates)
    );
    assert!(w.duplicates > 0);
    assert_eq!(
        (dev_totals.problem_files, w.problem_files),
        (0, 0),
        "no file reported changed or refused"
    );

    let dev_store = first.nodes[0].store.clone();
    let cluster_job = first.submission.submission;
    drop(first);
    let exported = export(&dev_store, "lines");
    assert_eq!(exported, export(&walk_store, "lines"));
    let dev_dataset = dev_store.existing_dataset("lines").unwrap();
    let walk_dataset = walk_store.existing_dataset("lines").unwrap();
    for key in exported.split(|&b| b == b'\n').step_by(37) {
        let here = node::lookup::get(&dev_store, &dev_dataset, key)
            .unwrap()
            .unwrap();
        let there = node::lookup::get(&walk_store, &walk_dataset, key)
            .unwrap()
            .unwrap();
        assert_eq!(
            (here.record, here.first_seen, here.path),
            (there.record, there.first_seen, there.path),
            "key {}",
            key.escape_ascii()
        );
        assert_eq!(here.cluster_job, Some(cluster_job));
        assert_eq!(there.cluster_job, None);
    }
    drop(dev_store);

    // Nothing changed: nothing is leased, the job commits empty.
    let again = dev(dev_data.path(), &input);
    assert_eq!(again.submission.counts.unchanged, spec.files as u64);
    assert_eq!(again.submission.pending_shards, 0);
    let totals = again.nodes[0].outcome.totals;
    assert_eq!((totals.files, totals.read), (0, 0));
    assert_eq!(export(&again.nodes[0].store, "lines"), exported);
}

/// Three nodes in one process shuffle over loopback QUIC: together their
/// stores export what `sort -u` prints, each holds only the partitions
/// the map gave it, and the counts reconcile across them.
#[test]
fn three_dev_nodes_shuffle_to_the_export_of_sort_u() {
    let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = LinesSpec {
        files: 6,
        bytes_per_file: 1_500_000,
        min_len: 0,
        max_len: 60,
        duplicate_ratio: 0.4,
        edge_cases: true,
        compression: vec![Compression::Plain, Compression::Gzip, Compression::Zstd],
        seed: 11,
    };
    write_lines_dataset(input.path(), &spec).unwrap();
    let input: PathBuf = input.path().canonicalize().unwrap();

    let run = dev_on(3, data.path(), &input);
    assert_eq!(run.nodes.len(), 3);
    let combined = run.combined();
    assert!(combined.totals.reconciles(), "{:?}", combined.totals);
    assert_eq!(combined.totals.files, spec.files as u64);
    for part in &run.nodes {
        assert!(
            part.outcome.totals.unique > 0,
            "node {} owns keys",
            part.node
        );
    }
    let datasets: Vec<_> = run
        .nodes
        .iter()
        .map(|n| n.store.existing_dataset("lines").unwrap())
        .collect();
    let parts: Vec<_> = run.nodes.iter().map(|n| &*n.store).zip(&datasets).collect();
    let mut out = Vec::new();
    let written = node::export::export_all(&parts, &mut out).unwrap();
    assert_eq!(written, combined.totals.unique, "no key in two stores");
    assert!(out == sort_u(&input), "the export differs from sort -u");
    assert_eq!(node_dirs(data.path()).len(), 3);
}
