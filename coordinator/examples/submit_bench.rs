//! Submission throughput of three coordinator replicas in one process.
//!
//! Generates an inventory of N files (paths 60-110 bytes in a directory
//! tree, size, mtime, a 16-byte md5-sized checksum), in path order, and
//! submits it with `coordinator_client`'s submission protocol (the one
//! `quern submit` runs) to three replicas on the in-process router, then
//! re-submits it with 1% of the files changed. Prints files/s, the pending
//! shards the re-submission
//! created, and the process's anonymous RSS (now and peak, sampled), which
//! covers all three replicas. The inventory is generated as it is sent,
//! never held whole.
//!
//!     cargo run -p coordinator --example submit_bench -- FILES [WINDOW]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coordinator::client_api::ClientApi;
use coordinator::contacts::Contacts;
use coordinator::lease_desk::DEFAULT_LEASE_MS;
use coordinator::router::Router;
use coordinator::{LogStore, Member, Raft, ReplicaId, StateMachineStore};
use coordinator_client::CoordinatorClient;
use coordinator_client::submission::{self, SubmitError, SubmitOptions, Summary};
use proto_schema::command::{Command, DatasetFormat, DatasetSpec, FileEntry, KeySpec, NodeInfo};
use proto_schema::ids::NodeId;

/// SplitMix64: a seeded, dependency-free source of file attributes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Sorted, so that path order is file order.
const HOSTS: [&str; 4] = ["edge-eu-west", "edge-us-east-2", "ingest-a", "ingest-b"];
const KINDS: [&str; 3] = ["access", "application-events", "audit"];

/// File `i` of `n`, in path order; `changed` files get a newer mtime and
/// checksum.
fn file(i: u64, n: u64, changed: bool) -> FileEntry {
    let r = mix(i);
    // Directories nested host/kind/day/hour, 50 files each.
    let block = (i * (HOSTS.len() * KINDS.len()) as u64 / n) as usize;
    let host = HOSTS[block / KINDS.len()];
    let kind = KINDS[block % KINDS.len()];
    let dir = i / 50;
    let day = dir / 24;
    let hour = dir % 24;
    let pad = "x".repeat((r % 41) as usize);
    let path = format!(
        "/srv/archive/{host}/{kind}/{}-{:02}-{:02}/h{hour:02}/part-{i:010}-{pad}.log.zst",
        2025 + day / 336,
        day / 28 % 12 + 1,
        day % 28 + 1
    );
    let version = u64::from(changed);
    let sum = mix(r ^ version);
    FileEntry {
        path,
        size: r % (64 << 20),
        mtime_ns: 1_750_000_000_000_000_000 + (r % 1_000_000_000) as i64 + version as i64,
        checksum: Some([sum.to_le_bytes(), mix(sum).to_le_bytes()].concat()),
    }
}

/// A replica's member address, as clients and redirects name it.
fn address(id: ReplicaId) -> String {
    format!("replica-{id}")
}

fn anon_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(100_000, |a| a.parse().expect("FILES"));
    let window: usize = args.next().map_or(4, |a| a.parse().expect("WINDOW"));

    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(anon_rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let dir = tempfile::TempDir::new().unwrap();
    let router = Router::default();
    let config = Arc::new(coordinator::config::raft_config().unwrap());
    let mut rafts = BTreeMap::new();
    for id in 1..=3u64 {
        let base = dir.path().join(format!("replica-{id}"));
        let log = LogStore::open(&base.join("log")).unwrap();
        let state = StateMachineStore::open(&base.join("state")).unwrap();
        let raft = Raft::new(id, config.clone(), router.clone(), log, state.clone())
            .await
            .unwrap();
        let api = ClientApi::new(raft.clone(), state, DEFAULT_LEASE_MS, Contacts::default());
        router.add(id, address(id), api);
        rafts.insert(id, raft);
    }
    let members: BTreeMap<ReplicaId, Member> = (1..=3)
        .map(|id| (id, Member { addr: address(id) }))
        .collect();
    rafts[&1].initialize(members).await.unwrap();
    let mut client = CoordinatorClient::new(router.clone(), (1..=3).map(address).collect());
    let node = Command::RegisterNode(NodeInfo {
        id: NodeId(1),
        incarnation: 1,
        address: "10.0.0.1:7000".into(),
        cert_fingerprint: [1; 32],
    });
    client.write(&node).await.expect("the leader accepts");
    let spec = DatasetSpec {
        name: "inventory".into(),
        format: DatasetFormat::Lines,
        key: KeySpec::WholeLine,
        partitions: 64,
    };
    submission::ensure_dataset(&mut client, spec)
        .await
        .expect("the leader accepts");
    let options = SubmitOptions {
        chunks_in_flight: window,
        ..SubmitOptions::default()
    };
    println!(
        "{n} files, {window} chunks in flight, 3 replicas; anon RSS before: {:.0} MiB",
        mib(anon_rss())
    );

    let mut run = async |label: &'static str, changed_every: Option<u64>| {
        let started = Instant::now();
        let entries = (0..n).map(|i| Ok(file(i, n, changed_every.is_some_and(|k| i % k == 0))));
        let done: Summary =
            submission::submit(&mut client, "inventory", entries, &options, |_| {}).await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{label}: {secs:.1} s, {:.0} files/s; new {} changed {} unchanged {} gone {}, pending shards {}; anon RSS {:.0} MiB",
            n as f64 / secs,
            done.counts.new,
            done.counts.changed,
            done.counts.unchanged,
            done.gone,
            done.pending_shards,
            mib(anon_rss())
        );
        Ok::<_, SubmitError>(done)
    };
    let outcome = async {
        let first = run("first submission", None).await?;
        assert_eq!(first.counts.new, n);
        let second = run("1% changed", Some(100)).await?;
        assert_eq!(second.pending_shards, n.div_ceil(100));
        assert_eq!(second.counts.changed, second.pending_shards);
        Ok::<_, SubmitError>(())
    }
    .await;

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    println!(
        "peak anon RSS (3 replicas + generator): {:.0} MiB",
        mib(peak.load(Ordering::Relaxed))
    );
    for raft in rafts.values() {
        raft.shutdown().await.unwrap();
    }
    // Reported after the replicas and their directory are gone.
    if let Err(e) = outcome {
        drop(dir);
        eprintln!("submission failed: {e}");
        std::process::exit(1);
    }
}
