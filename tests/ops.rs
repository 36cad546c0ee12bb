//! `ops/` against the real tools: the alert rules pass `promtool`'s
//! checks and unit tests and name only metrics Quern records, and a real
//! Prometheus (Debian's, installed by scripts/bootstrap) scrapes three
//! coordinators and a running ingest and sees the key series move.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, free_port};
use common::{edge_case_dataset, quern, run, tempdir};

fn ops(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (scripts/bootstrap installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `quern_*` name in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("quern_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn alert_rules_pass_their_unit_tests_and_name_only_recorded_metrics() {
    let rules = ops("prometheus/rules.yml");
    promtool(&[
        "check",
        "config",
        ops("prometheus/prometheus.yml").to_str().unwrap(),
    ]);
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    let tested = promtool(&[
        "test",
        "rules",
        ops("prometheus/rules_test.yml").to_str().unwrap(),
    ]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let recorded: BTreeSet<&str> = node::metric_catalog::names()
        .chain(coordinator::metric_names())
        .collect();
    let named = metric_names_in(&std::fs::read_to_string(&rules).unwrap());
    assert!(
        named.len() >= 8,
        "the rules name too few metrics: {named:?}"
    );
    let unknown: Vec<_> = named
        .iter()
        .filter(|n| !recorded.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "rules name metrics nobody records: {unknown:?}"
    );
}

struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    /// Scrapes `targets` (job name -> addresses) every second.
    fn start(dir: &Path, targets: &[(&str, Vec<String>)]) -> Self {
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, addresses) in targets {
            config += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: {addresses:?}\n"
            );
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (scripts/bootstrap installs Debian's prometheus package)");
        Self { child, address }
    }

    /// The values of an instant query's result, by their `instance` and
    /// `job` labels (and any label in `by`), or None while Prometheus is
    /// not answering.
    fn query(&self, query: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--get"])
            .arg(format!("http://{}/api/v1/query", self.address))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .expect("curl runs");
        if !out.status.success() {
            return None;
        }
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let results = reply["data"]["result"].as_array()?;
        Some(
            results
                .iter()
                .map(|r| {
                    let value = r["value"][1].as_str().unwrap().parse().unwrap();
                    (r["metric"].clone(), value)
                })
                .collect(),
        )
    }

    /// Waits until `query` returns at least `series` results, each
    /// accepted by `ok`; panics naming the query after `within`.
    fn wait_for(
        &self,
        query: &str,
        series: usize,
        ok: impl Fn(f64) -> bool,
        within: Duration,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(results) = self.query(query) {
                if results.len() >= series && results.iter().all(|(_, v)| ok(*v)) {
                    return results;
                }
                last = Some(results);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("prometheus: {query} did not hold within {within:?}; last answer {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_sees_the_coordinators_and_a_running_job() {
    let cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    let dir = tempdir();
    let ingest_metrics = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(
        dir.path(),
        &[
            ("quern-coordinator", cluster.metrics.clone()),
            ("quern-ingest", vec![ingest_metrics.clone()]),
        ],
    );
    let minute = Duration::from_secs(60);

    // The coordinators: up, a term, and one leader among them.
    prometheus.wait_for(r#"up{job="quern-coordinator"}"#, 3, |v| v == 1.0, minute);
    prometheus.wait_for("quern_raft_term", 3, |v| v >= 1.0, minute);
    let leaders = prometheus.wait_for("sum(quern_raft_is_leader)", 1, |v| v == 1.0, minute);
    assert_eq!(leaders.len(), 1);
    let applied = |q: &str| prometheus.query(q).unwrap_or_default();
    let before = applied("max(quern_raft_applied_index)");

    // A submission moves every replica's applied index.
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let files = edge_case_dataset(&inputs, 8, 16 << 20, 17);
    run(
        &mut cluster.client(&["submit", "--dataset", "logs", inputs.to_str().unwrap()]),
        0,
    );
    let moved = before.first().map_or(0.0, |(_, v)| *v);
    prometheus.wait_for("min(quern_raft_applied_index)", 1, |v| v > moved, minute);

    // A job, slowed by a small budget, scraped while it runs: its progress
    // and its per-actor memory are there and move.
    let data = dir.path().join("store");
    let mut ingest = quern(&data);
    ingest
        .args(["ingest", "--memory", "16MiB", "--metrics", &ingest_metrics])
        .args(&files);
    let started = Instant::now();
    let mut job = ingest
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let scanned = prometheus.wait_for(
        r#"max_over_time(quern_job_bytes{phase="scanned"}[10m])"#,
        1,
        |v| v > 0.0,
        minute,
    );
    assert!(job.wait().unwrap().success(), "the ingest failed");
    let took = started.elapsed();
    let changes = prometheus.wait_for(
        r#"changes(quern_job_bytes{phase="scanned"}[10m])"#,
        1,
        |_| true,
        minute,
    );
    let listed: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(
        scanned[0].1 > 0.0 && scanned[0].1 <= listed as f64,
        "scanned {scanned:?} of {listed} bytes"
    );
    assert!(
        changes[0].1 >= 1.0,
        "the job ran {took:?} but its progress never moved between scrapes: {changes:?}"
    );
    eprintln!(
        "the job ran {took:?}; its progress changed {} times",
        changes[0].1
    );
    let actors = prometheus.wait_for(
        r#"count(max_over_time(quern_actor_live_bytes{job="quern-ingest"}[10m]))"#,
        1,
        |v| v >= 3.0,
        minute,
    );
    assert!(actors[0].1 >= 3.0, "per-actor memory series: {actors:?}");
    prometheus.wait_for(
        r#"count(max_over_time(quern_edge_wait_seconds{job="quern-ingest"}[10m]))"#,
        1,
        |v| v >= 1.0,
        minute,
    );
    prometheus.wait_for(
        r#"max_over_time(up{job="quern-ingest"}[10m])"#,
        1,
        |v| v == 1.0,
        minute,
    );
}

#[test]
fn the_coordinators_systemd_unit_verifies_and_outwaits_the_shutdown_bound() {
    let unit = std::fs::read_to_string(ops("systemd/quern-coordinator.service")).unwrap();
    let dir = tempdir();
    let installed = dir.path().join("quern-coordinator.service");
    std::fs::write(
        &installed,
        unit.replace("/usr/local/bin/quern", env!("CARGO_BIN_EXE_quern")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed)
        .output()
        .expect("systemd-analyze runs (scripts/bootstrap installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are only warnings: any word from it is a failure here.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let stop_wait: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec=Ns");
    let bound = 2 * coordinator::service::RAFT_SHUTDOWN_TIMEOUT;
    assert!(
        Duration::from_secs(stop_wait) > bound,
        "systemd would kill a coordinator still inside its shutdown bound ({bound:?})"
    );
}
