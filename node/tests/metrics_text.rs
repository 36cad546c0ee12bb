//! The metrics a job records, rendered as Prometheus text, name every
//! figure the memory governance promises and pass `promtool check metrics`
//! (the Prometheus project's own linter, installed by `scripts/bootstrap`).
//!
//! Its own test binary: it installs the process's global recorder.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bench::datagen::{LinesSpec, write_lines_dataset};
use metrics_exporter_prometheus::PrometheusBuilder;
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::store::{Access, Store};

node::install_tracking_allocator!();

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/bootstrap installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn run_small_job(dir: &Path) {
    let input = dir.join("input");
    let spec = LinesSpec {
        files: 2,
        bytes_per_file: 1 << 20,
        compression: Vec::new(),
        ..LinesSpec::sample()
    };
    write_lines_dataset(&input, &spec).unwrap();
    let data = dir.join("data");
    let memory = 32 << 20;
    let store = Arc::new(
        Store::open(
            &data,
            MemoryPlan::rocksdb_cache_bytes(memory),
            Access::ReadWrite,
        )
        .unwrap(),
    );
    let config = IngestConfig {
        data_dir: data,
        memory_bytes: memory,
        threads: 2,
        ..IngestConfig::default()
    };
    let prepared =
        node::ingest::prepare(store, config, vec![input], Arc::new(JobCounters::default()))
            .unwrap();
    node::ingest::run(prepared, std::future::pending()).unwrap();
}

#[test]
fn a_jobs_metrics_are_complete_and_pass_promtool() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    node::metric_catalog::describe();
    let dir = tempfile::tempdir().unwrap();
    run_small_job(dir.path());
    // Recorded by the transport (proto_schema::quic) when a peer is refused.
    metrics::counter!(
        proto_schema::quic::PEER_REFUSED_METRIC,
        "reason" => "unknown_ca",
        "role" => "server"
    )
    .increment(1);
    let text = handle.render();

    for family in [
        "quern_memory_budget_bytes",
        "quern_memory_share_bytes{share=\"rocksdb\"}",
        "quern_memory_share_bytes{share=\"sort\"}",
        "quern_memory_share_bytes{share=\"in_flight\"}",
        "quern_allocator_live_bytes",
        "quern_actor_live_bytes{actor=\"scan[0]\"}",
        "quern_actor_peak_bytes{actor=\"sort-merge[0]\"}",
        "quern_edge_capacity_bytes{edge=",
        "quern_edge_queued_bytes{edge=",
        "quern_edge_queued_messages{edge=",
        "quern_edge_wait_seconds{edge=",
        "quern_process_anon_rss_bytes",
        "quern_process_file_rss_bytes",
        "quern_rocksdb_block_cache_bytes",
        "quern_rocksdb_memtable_bytes",
        "# HELP quern_actor_live_bytes",
        "# HELP quern_tls_peer_refused_total",
        "quern_tls_peer_refused_total{reason=\"unknown_ca\",role=\"server\"} 1",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }

    let (ok, report) = promtool_check(&text);
    assert!(ok && report.trim().is_empty(), "promtool: {report}\n{text}");
    // The check can fail: a counter without `_total` is a lint problem.
    let (ok, report) = promtool_check("# TYPE quern_bad counter\nquern_bad 1\n");
    assert!(!ok, "promtool accepted a bad counter name: {report}");
}
