//! `ops/` against the real tools: the alert rules pass `promtool`'s
//! checks and unit tests and name only metrics Quern records, the Grafana
//! dashboard has the shape Grafana imports and queries only recorded
//! metrics in PromQL promtool parses, and a real Prometheus (Debian's,
//! installed by scripts/bootstrap) scrapes three coordinators, a node
//! running their job and a running ingest, sees the key series move
//! (the leader's job progress among them) and evaluates every dashboard
//! query.

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

/// Every use of a `quern_*` name in `text`: the text before it and the name.
fn metric_uses(text: &str) -> Vec<(&str, &str)> {
    let mut uses = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("quern_").map(|at| from + at) {
        let len = text[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len() - at);
        uses.push((&text[..at], &text[at..at + len]));
        from = at + len;
    }
    uses
}

/// Every `quern_*` name in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    metric_uses(text)
        .into_iter()
        .map(|(_, name)| name.to_string())
        .collect()
}

fn recorded_metrics() -> BTreeSet<&'static str> {
    node::metric_catalog::names()
        .chain(coordinator::metric_names())
        .collect()
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

    let recorded = recorded_metrics();
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

/// Grafana's own variables with the values the dashboard's queries are
/// checked with (the dashboard's variables become `.*`, as "All" does).
const GRAFANA_BUILTINS: [(&str, &str); 3] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1h"),
];

/// What the dashboard must chart (issue 17): memory by kind and actor,
/// back-pressure per edge and link, job progress (the nodes' and the
/// leader's), rejected records, Raft health, refusals and the data
/// directories' space.
const DASHBOARD_MUST_CHART: &[&str] = &[
    "quern_process_anon_rss_bytes",
    "quern_process_file_rss_bytes",
    "quern_allocator_live_bytes",
    "quern_actor_live_bytes",
    "quern_memory_budget_bytes",
    "quern_edge_wait_seconds",
    "quern_shuffle_send_blocked_seconds",
    "quern_shuffle_receive_blocked_seconds",
    "quern_job_bytes",
    "quern_job_records",
    "quern_job_files",
    "quern_jobs_running",
    "quern_job_progress_age_seconds",
    "quern_job_progress_total",
    "quern_data_dir_available_bytes",
    "quern_data_dir_size_bytes",
    "quern_raft_term",
    "quern_raft_is_leader",
    "quern_raft_has_leader",
    "quern_raft_leader_changes_total",
    "quern_raft_replication_lag_entries",
    "quern_raft_quorum_ack_age_seconds",
    "quern_shuffle_refused_total",
    "quern_tls_peer_refused_total",
    "quern_raft_rpc_refused_total",
];

/// Grafana's grid is 24 columns wide.
const GRAFANA_COLUMNS: u64 = 24;

/// Every panel of a dashboard, those inside collapsed rows included.
fn grafana_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let top = dashboard["panels"].as_array().expect("a panels list");
    top.iter()
        .chain(top.iter().filter_map(|p| p["panels"].as_array()).flatten())
        .collect()
}

/// `query` with the dashboard's variables and Grafana's replaced by
/// values PromQL accepts; panics on a variable nobody defines.
fn with_variables(query: &str, variables: &[&str]) -> String {
    let mut query = query.to_string();
    let values = GRAFANA_BUILTINS
        .iter()
        .copied()
        .chain(variables.iter().map(|&v| (v, ".*")));
    for (name, value) in values {
        query = query
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!query.contains('$'), "an undefined variable in {query}");
    query
}

fn grafana_dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(ops("grafana/quern-overview.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (a name for it, the query) for every panel target's expression, with
/// the variables replaced as Prometheus would see them.
fn grafana_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let variables = dashboard["templating"]["list"].as_array();
    let names: Vec<&str> = variables
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut exprs = Vec::new();
    for panel in grafana_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let reference = target["refId"].as_str().unwrap_or_default();
                let name = format!("panel_{}_{reference}", panel["id"]);
                exprs.push((name, with_variables(expr, &names)));
            }
        }
    }
    exprs
}

#[test]
fn the_grafana_dashboard_imports_anywhere_and_queries_only_recorded_metrics() {
    let dashboard = grafana_dashboard();
    for key in ["title", "uid"] {
        assert!(
            dashboard[key].as_str().is_some_and(|v| !v.is_empty()),
            "no {key}"
        );
    }
    assert!(dashboard["schemaVersion"].is_u64(), "no schemaVersion");
    assert!(
        dashboard["id"].is_null(),
        "a stored id makes an import overwrite whichever dashboard has it"
    );

    // The data source is a variable, so the dashboard imports into any
    // Grafana whatever its Prometheus data source is called.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let source = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let source = format!("${{{}}}", source["name"].as_str().unwrap());
    // (where, query) for every query the dashboard sends.
    let mut queries = Vec::new();
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], source.as_str(), "variable {v}");
        let query = v["query"].as_str().or(v["query"]["query"].as_str());
        queries.push((format!("variable {}", v["name"]), query.unwrap()));
    }

    let panels = grafana_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in &panels {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let place = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            place[k]
                .as_u64()
                .unwrap_or_else(|| panic!("panel {id}: gridPos.{k}"))
        });
        assert!(
            h >= 1 && w >= 1 && x + w <= GRAFANA_COLUMNS,
            "panel {id}: {place}"
        );
        for cell in (x..x + w).flat_map(|c| (y..y + h).map(move |r| (c, r))) {
            assert!(
                cells.insert(cell),
                "panel {id} overlaps another at {cell:?}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], source.as_str(), "panel {id}");
        let targets = panel["targets"].as_array().expect("a panel's targets");
        assert!(!targets.is_empty(), "panel {id} has no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let reference = target["refId"].as_str().expect("a target's refId");
            assert!(
                refs.insert(reference),
                "panel {id}: refId {reference} twice"
            );
            if !target["datasource"].is_null() {
                assert_eq!(target["datasource"]["uid"], source.as_str(), "panel {id}");
            }
            let expr = target["expr"].as_str().filter(|e| !e.is_empty());
            let expr = expr.unwrap_or_else(|| panic!("panel {id} target {reference}: no expr"));
            queries.push((format!("panel {id} target {reference}"), expr));
        }
    }
    assert!(panels.len() >= 20, "only {} panels", panels.len());

    // Every expression parses: promtool checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs = grafana_exprs(&dashboard);
    for (record, expr) in &exprs {
        let expr = serde_json::to_string(expr).unwrap();
        rules += &format!("      - record: dashboard:{record}\n        expr: {expr}\n");
    }
    let dir = tempdir();
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);

    // Every metric named is recorded, counters (`_total`, Prometheus's
    // convention) are read through rate() or increase() and gauges never.
    let recorded = recorded_metrics();
    let mut named = BTreeSet::new();
    for (place, query) in &queries {
        for (before, name) in metric_uses(query) {
            assert!(
                recorded.contains(name),
                "{place} names {name}, which nobody records: {query}"
            );
            let rated = before.ends_with("rate(") || before.ends_with("increase(");
            assert_eq!(
                rated,
                name.ends_with("_total"),
                "{place}: rate() and increase() are for counters, and counters need them: {query}"
            );
            named.insert(name);
        }
    }
    let missing: Vec<_> = DASHBOARD_MUST_CHART
        .iter()
        .filter(|m| !named.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not chart {missing:?}"
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
        let reply = self.api("query", &[format!("query={query}")])?;
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

    /// `query` evaluated once a second over the last ten minutes.
    fn query_range(&self, query: &str) -> Option<serde_json::Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.api(
            "query_range",
            &[
                format!("query={query}"),
                format!("start={}", now - 600),
                format!("end={now}"),
                "step=1".to_string(),
            ],
        )
    }

    /// The JSON reply to a call of Prometheus's HTTP API (an error is a
    /// reply too), or None while Prometheus is not answering.
    fn api(&self, path: &str, params: &[String]) -> Option<serde_json::Value> {
        let mut curl = Command::new("curl");
        curl.args(["-s", "--max-time", "5", "--get"])
            .arg(format!("http://{}/api/v1/{path}", self.address));
        for param in params {
            curl.arg("--data-urlencode").arg(param);
        }
        let out = curl.output().expect("curl runs");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
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

/// A child process killed when dropped, so a failing test leaves none.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_sees_the_coordinators_a_node_and_a_running_job() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    let dir = tempdir();
    let ingest_metrics = format!("127.0.0.1:{}", free_port());
    let node_metrics = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(
        dir.path(),
        &[
            ("quern-coordinator", cluster.metrics.clone()),
            ("quern-node", vec![node_metrics.clone()]),
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
    // Each sees its data directory's file system.
    prometheus.wait_for(
        r#"quern_data_dir_available_bytes{job="quern-coordinator"} / quern_data_dir_size_bytes"#,
        3,
        |v| v > 0.0 && v <= 1.0,
        minute,
    );

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

    // No node runs it: the leader counts it running, and its clock
    // without progress climbs.
    prometheus.wait_for("max(quern_jobs_running)", 1, |v| v == 1.0, minute);
    prometheus.wait_for(
        "max(quern_job_progress_age_seconds)",
        1,
        |v| v >= 5.0,
        minute,
    );

    // A node takes it: the leader hears its shards and its stage, the job
    // commits and the clock stops.
    let certs = cluster.path("certs");
    common::cluster::issue(&certs, "node-1");
    let _node = Killed(
        common::cluster::node(
            1,
            &certs,
            &dir.path().join("node-1"),
            &cluster.addresses,
            &inputs.canonicalize().unwrap(),
        )
        .arg("--metrics")
        .arg(&node_metrics)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node-1.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let two_minutes = 2 * minute;
    prometheus.wait_for(r#"up{job="quern-node"}"#, 1, |v| v == 1.0, minute);
    prometheus.wait_for("max(quern_jobs_running)", 1, |v| v == 0.0, two_minutes);
    // (Heartbeats that move a shard's offset come every few seconds: this
    // job may end between two.)
    for (event, at_least) in [("shard_done", 8.0), ("committed", 1.0)] {
        let query = format!(r#"sum(quern_job_progress_total{{event="{event}"}})"#);
        prometheus.wait_for(&query, 1, |v| v >= at_least, minute);
    }
    prometheus.wait_for(
        "max(quern_job_progress_age_seconds)",
        1,
        |v| v == 0.0,
        minute,
    );
    // The node's own series: its certificate, its data directory.
    prometheus.wait_for(
        r#"quern_certificate_expiry_days{job="quern-node"}"#,
        1,
        |v| v > 300.0,
        minute,
    );
    prometheus.wait_for(
        r#"quern_data_dir_available_bytes{job="quern-node"} / quern_data_dir_size_bytes"#,
        1,
        |v| v > 0.0 && v <= 1.0,
        minute,
    );

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

    // Every query of the Grafana dashboard evaluates over what was scraped
    // (vector matching fails only here, not in promtool's check), and shows
    // data whenever the series it names exist (a wrong label shows here).
    let scraped = |name: &String| {
        let query = format!("count_over_time({name}[10m])");
        prometheus.query(&query).is_some_and(|r| !r.is_empty())
    };
    let mut empty = Vec::new();
    for (panel, expr) in grafana_exprs(&grafana_dashboard()) {
        let reply = prometheus.query_range(&expr).expect("prometheus answers");
        assert_eq!(reply["status"], "success", "{panel}: {expr}: {reply}");
        if reply["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            assert!(
                !metric_names_in(&expr).iter().all(scraped),
                "{panel} shows nothing although its series were scraped: {expr}"
            );
            empty.push(panel);
        }
    }
    eprintln!("dashboard queries without series to show (nothing recorded them): {empty:?}");
}

/// The unit file `ops/systemd/NAME`, verified by `systemd-analyze verify`
/// with the binary it names replaced by the one under test.
fn verified_unit(name: &str) -> String {
    let unit = std::fs::read_to_string(ops(&format!("systemd/{name}"))).unwrap();
    let dir = tempdir();
    let installed = dir.path().join(name);
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
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{name}: {said}"
    );
    unit
}

/// The value of `key=` in a unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

fn unit_seconds(unit: &str, key: &str) -> Duration {
    let value = unit_value(unit, key);
    let seconds = value.strip_suffix('s').and_then(|v| v.parse().ok());
    Duration::from_secs(seconds.unwrap_or_else(|| panic!("{key}={value} is not Ns")))
}

/// A size in the units' and the CLI's binary suffixes (M, MiB, G, GiB).
fn binary_size(text: &str) -> u64 {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: u64 = digits.parse().unwrap_or_else(|_| panic!("size {text}"));
    let shift = match text[digits.len()..].trim_end_matches("iB") {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        other => panic!("size suffix {other} in {text}"),
    };
    number << shift
}

/// A `NAME: Duration = Duration::from_secs(N)` or `NAME = N * MIB`
/// constant's number, read from the source that defines it (it is private
/// to the binary or a script, and the unit must follow it when it
/// changes).
fn constant_in(path: &str, name: &str) -> u64 {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let line = source
        .lines()
        .find(|l| l.contains(&format!("{name}:")) || l.starts_with(&format!("{name} =")))
        .unwrap_or_else(|| panic!("no {name} in {path}"));
    let digits: String = line
        .split('=')
        .nth(1)
        .unwrap()
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line}"))
}

#[test]
fn the_coordinators_systemd_unit_verifies_and_outwaits_the_shutdown_bound() {
    let unit = verified_unit("quern-coordinator.service");
    let bound = 2 * coordinator::service::RAFT_SHUTDOWN_TIMEOUT;
    assert!(
        unit_seconds(&unit, "TimeoutStopSec") > bound,
        "systemd would kill a coordinator still inside its shutdown bound ({bound:?})"
    );
}

/// Memory the node unit allows above `--memory` besides the stated fixed
/// overhead, for what the comment in the unit lists (mimalloc's retained
/// pages, SST readers, stacks) before the kernel throttles.
const NODE_UNIT_SLACK: u64 = 96 << 20;

#[test]
fn the_nodes_systemd_unit_verifies_and_leaves_the_budget_its_overhead() {
    let unit = verified_unit("quern-node.service");
    let bound = Duration::from_secs(constant_in("src/node_cmd.rs", "SHUTDOWN_BOUND"));
    assert!(
        unit_seconds(&unit, "TimeoutStopSec") > bound,
        "systemd would kill a node still inside its shutdown bound ({bound:?})"
    );
    let exec = unit_value(&unit, "ExecStart");
    assert!(exec.contains(" node "), "{exec}");
    let memory = exec
        .split_whitespace()
        .skip_while(|w| *w != "--memory")
        .nth(1)
        .expect("ExecStart gives --memory beside MemoryMax");
    let budget = binary_size(memory);
    // bench/memory-proof's bound on anonymous RSS above the budget.
    let overhead = constant_in("bench/memory-proof", "OVERHEAD_GOAL") << 20;
    let high = binary_size(unit_value(&unit, "MemoryHigh"));
    let max = binary_size(unit_value(&unit, "MemoryMax"));
    assert!(
        high >= budget + overhead + NODE_UNIT_SLACK,
        "MemoryHigh {high} throttles a node within its budget {budget} + {overhead} overhead"
    );
    assert!(
        max > high,
        "MemoryMax {max} must be above MemoryHigh {high}"
    );
    let files: u64 = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    assert!(
        files >= 4096,
        "LimitNOFILE={files}: a store's SST files alone pass 1024"
    );
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
}

/// The runbooks issue 17 asks for, each linked from the alerts it serves.
const RUNBOOKS: [&str; 6] = [
    "memory.md",
    "stalled-job.md",
    "replace-node.md",
    "replace-coordinator.md",
    "disk-full.md",
    "rotate-certificates.md",
];

fn runbooks() -> Vec<(String, String)> {
    RUNBOOKS
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(ops(&format!("runbooks/{name}")))
                .unwrap_or_else(|e| panic!("ops/runbooks/{name}: {e}"));
            (name.to_string(), text)
        })
        .collect()
}

#[test]
fn every_alert_names_a_runbook_that_exists() {
    let rules = std::fs::read_to_string(ops("prometheus/rules.yml")).unwrap();
    let alerts = rules.matches("- alert: ").count();
    let linked: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
        .collect();
    assert_eq!(linked.len(), alerts, "an alert without a runbook:\n{rules}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for link in &linked {
        assert!(
            root.join(link).is_file(),
            "an alert links {link}, which does not exist"
        );
    }
    // And every runbook serves at least one alert.
    for name in RUNBOOKS {
        assert!(
            linked.iter().any(|l| l.ends_with(&format!("/{name}"))),
            "no alert links {name}"
        );
    }
}

#[test]
fn the_runbooks_name_recorded_metrics_and_commands_that_parse() {
    let recorded = recorded_metrics();
    let script = std::fs::read_to_string(ops("example/cluster")).unwrap();
    let actions: Vec<&str> = script
        .lines()
        .skip_while(|l| !l.starts_with("case \"$action\""))
        .filter_map(|l| l.trim().split_once(") ").map(|(a, _)| a))
        .filter(|a| a.chars().all(|c| c.is_ascii_lowercase()))
        .collect();
    assert!(actions.contains(&"up"), "{actions:?}");
    // Client commands name config files the example cluster writes: any
    // file will do for parsing.
    let dir = tempdir();
    for config in ["coord-1.toml", "node-1.toml"] {
        std::fs::write(dir.path().join(config), "").unwrap();
    }
    for (name, text) in runbooks() {
        // Metrics: each a recorded one; a prefix (`quern_process_` in a
        // grep pattern) names at least one.
        let named = metric_names_in(&text);
        assert!(!named.is_empty(), "{name} names no metric");
        for metric in &named {
            let known = match metric.strip_suffix('_') {
                Some(_) => recorded.iter().any(|r| r.starts_with(metric.as_str())),
                None => recorded.contains(metric.as_str()),
            };
            assert!(known, "{name} names {metric}, which nobody records");
        }
        // Links to files beside it.
        for link in text.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if !link.contains("://") {
                assert!(
                    ops("runbooks").join(link).is_file(),
                    "{name} links {link}, which does not exist"
                );
            }
        }
        // Commands in its shell blocks: `quern ...` parses with the flags
        // given, `ops/example/cluster ACTION` is an action the script has.
        let mut commands = 0;
        let mut in_block = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_block = line == "```sh";
                continue;
            }
            if !in_block {
                continue;
            }
            let line = line.split(" #").next().unwrap();
            for part in line.split(['&', ';', '|']).map(str::trim) {
                let words: Vec<&str> = part.split_whitespace().collect();
                match words.first() {
                    Some(&"quern") => {
                        let out = Command::new(env!("CARGO_BIN_EXE_quern"))
                            .args(&words[1..])
                            .arg("--help")
                            .current_dir(dir.path())
                            .output()
                            .unwrap();
                        assert!(
                            out.status.success(),
                            "{name}: `{part}` does not parse: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        commands += 1;
                    }
                    Some(&"ops/example/cluster") => {
                        let action = words.get(1).copied().unwrap_or_default();
                        assert!(actions.contains(&action), "{name}: `{part}`");
                        commands += 1;
                    }
                    _ => {}
                }
            }
        }
        assert!(commands >= 2, "{name} names {commands} commands to run");
    }
}
