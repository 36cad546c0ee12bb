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

/// A node that starts its part of a job after one of the job's shards is
/// done (its records went to an earlier run of the owners) does not stage
/// without them: the job runs again from its first shard, as attempt 1,
/// and commits whole.
#[test]
fn a_node_starting_after_a_shard_is_done_runs_the_job_again_whole() {
    use coordinator::embedded::EmbeddedCoordinator;
    use coordinator_client::inventory::read_walks;
    use coordinator_client::path_order::SortMemory;
    use coordinator_client::submission::{SubmitOptions, ensure_dataset, submit};
    use node::actors::feed::lease::LeaseTarget;
    use node::input::roots::Roots;
    use node::leased_job::{self, LeasedJob};
    use proto_schema::coordinator_api::LeaseReply;
    use proto_schema::ids::NodeId;

    let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = LinesSpec {
        files: 3,
        bytes_per_file: 10_000,
        compression: vec![Compression::Plain],
        ..LinesSpec::sample()
    };
    write_lines_dataset(input.path(), &spec).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let coordinator = runtime
        .block_on(EmbeddedCoordinator::start(
            &data.path().join("coordinator"),
            5_000,
        ))
        .unwrap();
    let mut client = coordinator.client();
    let ingest = config(&data.path().join("node-1"));
    let node = NodeId(1);
    let (incarnation, job) = runtime.block_on(async {
        let incarnation = leased_job::register(&mut client, node, "in-process".into(), [0; 32])
            .await
            .unwrap();
        ensure_dataset(&mut client, leased_job::spec_of(&ingest))
            .await
            .unwrap();
        let memory = SortMemory {
            run_bytes: 1 << 20,
            temp_dir: data.path().to_path_buf(),
        };
        let inventory = read_walks(&[input.path()], &memory).unwrap();
        let summary = submit(
            &mut client,
            "lines",
            inventory,
            &SubmitOptions::default(),
            |_| {},
        )
        .await
        .unwrap();
        // An earlier run of this node read one shard (of the only job).
        let LeaseReply::Leased(leased) = client.lease(node, 1, None).await.unwrap() else {
            panic!("nothing leased")
        };
        client
            .complete_shards(node, vec![(leased[0].shard, leased[0].epoch)])
            .await
            .unwrap();
        (incarnation, summary.submission)
    });
    let store = Arc::new(Store::open(&ingest.data_dir, 8 << 20, Access::ReadWrite).unwrap());
    let again = LeasedJob {
        client: coordinator.client(),
        target: LeaseTarget {
            node,
            incarnation,
            job,
        },
        roots: Roots::new(&[input.path().to_path_buf()]).unwrap(),
        ingest,
        heartbeat: std::time::Duration::from_secs(1),
        shown_inputs: Vec::new(),
        channel: None,
    };
    let outcome = leased_job::run(
        again,
        store.clone(),
        runtime.handle().clone(),
        Arc::new(JobCounters::default()),
        pending(),
    )
    .unwrap();
    let status = runtime.block_on(client.job(job)).unwrap().unwrap();
    assert_eq!(
        status.phase,
        proto_schema::coordinator_api::JobPhase::Committed
    );
    assert_eq!((status.attempt, status.shards_done), (1, 3));
    let cause = status.restarted.unwrap_or_default();
    assert!(cause.contains("node 1 started its part again"), "{cause}");
    assert_eq!(outcome.totals.files, 3, "every file read in attempt 1");
    assert!(
        export(&store, "lines") == sort_u(input.path()),
        "the export is not sort -u"
    );
    runtime.block_on(coordinator.shutdown()).unwrap();
}
