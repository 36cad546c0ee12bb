//! Two nodes' pipelines in one process, shuffling over loopback QUIC: each
//! reads every other file and owns half the partitions; together their
//! stores export byte-identical to `LC_ALL=C sort -u` of the input, the
//! counts reconcile across the two, and repeats a scanner drops early
//! cross as counts, not records.
//!
//! Its own test binary: it installs the tracking allocator.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bench::datagen::{LinesSpec, write_lines_dataset};
use node::actors::LaneMap;
use node::actors::feed::walk::WalkFeed;
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::shuffle::inbound::node_certificate_name;
use node::shuffle::{Inbound, RemoteRange, ShuffleJob, channel_config};
use node::store::{Access, Store};
use proto_schema::ca::ClusterCa;
use proto_schema::quic::channel::{ChannelEndpoint, Link};
use proto_schema::shuffle::PartitionRange;
use proto_schema::tls::TlsIdentity;
use proto_schema::{Epoch, JobId, NodeId, partition_of};

node::install_tracking_allocator!();

const PARTITIONS: u16 = 64;
const THREADS: usize = 2;
const MEMORY: u64 = 64 << 20;

fn sort_u(files: &[PathBuf]) -> Vec<u8> {
    let mut child = Command::new("sort")
        .env("LC_ALL", "C")
        .arg("-u")
        .args(files)
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU sort is installed");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}

fn identity(ca: &ClusterCa, node: u64) -> TlsIdentity {
    let issued = ca
        .issue(
            &node_certificate_name(NodeId(node)),
            &["127.0.0.1".into()],
            1,
        )
        .unwrap();
    TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn config(data: &Path) -> IngestConfig {
    IngestConfig {
        data_dir: data.to_path_buf(),
        memory_bytes: MEMORY,
        threads: THREADS,
        partitions: Some(PARTITIONS),
        ..IngestConfig::default()
    }
}

/// What two shuffling nodes' job came to.
struct TwoNodes {
    /// Both stores' records, one line each, in byte order.
    export: Vec<u8>,
    /// Read, unique, duplicates and rejected, summed over the nodes.
    sums: [u64; 4],
    /// Records each node's lanes took from the other's streams.
    received: [u64; 2],
}

#[test]
fn two_nodes_shuffle_to_the_export_of_sort_u() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let spec = LinesSpec {
        files: 8,
        bytes_per_file: 512 << 10,
        compression: Vec::new(),
        ..LinesSpec::sample()
    };
    write_lines_dataset(&input, &spec).unwrap();
    let run = shuffle_two_nodes(dir.path(), &input);
    check_oracle_and_counts(&run, &input);
    assert!(run.received.iter().all(|&r| r > 0), "{:?}", run.received);
}

/// A scanner's early dedup drops a repeat whichever node owns it: a
/// repeat bound for the other node crosses as a count in a batch, not as
/// a record, and the owner counts it, so the counts still reconcile.
#[test]
fn repeats_bound_for_the_other_node_cross_as_counts() {
    const KEYS: usize = 2_000;
    const REPEATS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    for file in 0..4 {
        let mut text = String::new();
        for key in 0..KEYS {
            // Half the keys are in every file, half in this one only.
            let line = if key % 2 == 0 {
                format!("shared-{key}\n")
            } else {
                format!("file-{file}-{key}\n")
            };
            text.push_str(&line.repeat(REPEATS));
        }
        std::fs::write(input.join(format!("{file}.txt")), text).unwrap();
    }
    let run = shuffle_two_nodes(dir.path(), &input);
    check_oracle_and_counts(&run, &input);
    let [read, _, duplicates, _] = run.sums;
    assert_eq!(read, (4 * KEYS * REPEATS) as u64);
    assert_eq!(duplicates, read - (KEYS / 2 + 4 * KEYS / 2) as u64);
    // Each file's keys cross at most once each; the repeats would have
    // made ten times as many.
    let received: u64 = run.received.iter().sum();
    assert!(received > 0);
    assert!(
        received <= (4 * KEYS) as u64,
        "{received} records crossed for {} keys read",
        4 * KEYS
    );
}

fn check_oracle_and_counts(run: &TwoNodes, input: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let expected = sort_u(&files);
    assert_eq!(run.export.len(), expected.len());
    assert!(
        run.export == expected,
        "the two stores' export differs from sort -u"
    );
    let [read, unique, duplicates, rejected] = run.sums;
    assert_eq!(
        read,
        unique + duplicates + rejected,
        "counts reconcile across the nodes"
    );
}

/// Runs one job on two nodes over `input`: each reads every other file
/// and owns half the partitions.
fn shuffle_two_nodes(dir: &Path, input: &Path) -> TwoNodes {
    let input = input.to_path_buf();

    // Node 1 owns partitions 0..32, node 2 32..64; each splits its own
    // into two lanes, and streams to each of the other's.
    let owned = [
        PartitionRange::new(0, PARTITIONS / 2).unwrap(),
        PartitionRange::new(PARTITIONS / 2, PARTITIONS).unwrap(),
    ];
    let lanes = |node: usize| {
        let map = LaneMap::over(owned[node], THREADS);
        (0..map.lanes).map(move |l| map.range_of(l))
    };
    let ca = ClusterCa::generate(1).unwrap();
    let plan = MemoryPlan::shuffling(MEMORY, THREADS, 2 * THREADS, config(dir).batch_bytes);
    let channel = channel_config(&plan, &config(dir));
    let net = tokio::runtime::Runtime::new().unwrap();
    let inbound = [Inbound::new(), Inbound::new()];
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoints: Vec<ChannelEndpoint> = net.block_on(async {
        (0..2)
            .map(|n| {
                ChannelEndpoint::bind(
                    any,
                    &identity(&ca, n + 1),
                    channel.clone(),
                    inbound[n as usize].clone(),
                )
                .unwrap()
            })
            .collect()
    });
    let links: Vec<Link> = net.block_on(async {
        let mut links = Vec::new();
        for (from, to) in [(0, 1), (1, 0)] {
            let name = node_certificate_name(NodeId(to as u64 + 1));
            let addr = endpoints[to].local_addr();
            links.push(endpoints[from].connect(addr, &name).await.unwrap());
        }
        links
    });

    let (mut jobs, mut prepared) = (Vec::new(), Vec::new());
    for node in 0..2 {
        let other = 1 - node;
        let data = dir.join(format!("data-{node}"));
        let store = Arc::new(
            Store::open(
                &data,
                MemoryPlan::rocksdb_cache_bytes(MEMORY),
                Access::ReadWrite,
            )
            .unwrap(),
        );
        let shuffle = ShuffleJob {
            job: JobId(1),
            epoch: Epoch(1),
            node: NodeId(node as u64 + 1),
            owned: owned[node],
            remote: lanes(other)
                .map(|partitions| RemoteRange {
                    partitions,
                    link: links[node].clone(),
                })
                .collect(),
            inbound: inbound[node].clone(),
            expected_streams: lanes(node).count() as u64,
        };
        let counters = Arc::new(JobCounters::default());
        let feed = Arc::new(WalkFeed::share(vec![input.clone()], node as u32, 2));
        prepared.push(
            node::ingest::prepare_part(
                store.clone(),
                config(&data),
                vec![input.display().to_string()],
                feed,
                counters.clone(),
                node::ingest::Owned::Shuffled(shuffle),
            )
            .unwrap(),
        );
        jobs.push((store, counters));
    }
    // Both run at once: each one's lanes wait for the other's streams.
    let ran: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = prepared
            .into_iter()
            .map(|job| scope.spawn(move || node::ingest::run(job, std::future::pending())))
            .collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut sums = [0u64; 4];
    let mut received = [0u64; 2];
    for (node, (outcome, (store, counters))) in ran.into_iter().zip(&jobs).enumerate() {
        received[node] = JobCounters::get(&counters.received);
        let outcome = outcome.unwrap();
        let mut out = Vec::new();
        node::export::export(store, &outcome.dataset, &mut out).unwrap();
        // One record per line; an empty record is an empty line.
        if let Some(records) = out.strip_suffix(b"\n") {
            for key in records.split(|&b| b == b'\n') {
                // Each node holds its own partitions' keys, from either's files.
                assert!(owned[node].contains(partition_of(key, PARTITIONS)));
                lines.push(key.to_vec());
            }
        }
        let get = |c: &std::sync::atomic::AtomicU64| JobCounters::get(c);
        for (sum, value) in sums.iter_mut().zip([
            get(&counters.read),
            get(&counters.unique),
            get(&counters.duplicates),
            get(&counters.rejected),
        ]) {
            *sum += value;
        }
        assert!(outcome.totals.unique > 0);
    }
    lines.sort();
    let mut export = lines.join(&b'\n');
    export.push(b'\n');
    net.block_on(async {
        drop(links);
        for e in endpoints {
            e.shutdown().await.unwrap();
        }
    });
    TwoNodes {
        export,
        sums,
        received,
    }
}
