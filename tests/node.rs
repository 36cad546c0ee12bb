//! `quern node` as a process against three `quern coordinator` processes:
//! it registers with its `node-1` certificate, finds the job `quern
//! submit --wait` made, ingests the shards it leases (reading only under
//! its roots) until the coordinators commit the job, when `submit --wait`
//! prints the job's summary and exits 0, and stops on SIGTERM with status
//! 0; its store then exports exactly `LC_ALL=C sort -u` of the inputs.
//! `quern status` lists the node with its partitions. Without a node,
//! `submit --wait` gives up at its timeout naming the shards the job waits
//! on. A node whose certificate names another node refuses to start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bench::oracle::{decompressed, sort_u};
use common::cluster::{Cluster, figure, issue, node, text, write_tsv};
use common::*;

/// `quern node`'s own shutdown bound, with room for a loaded machine.
const STOP_WITHIN: Duration = Duration::from_secs(40);
const COMMIT_WITHIN: Duration = Duration::from_secs(120);
/// The coordinators' lease time, short so that the node's idle time
/// before the submission spans several: only its heartbeats between jobs
/// keep it from being declared lost.
const LEASE_TIME: &str = "2s";
const IDLE_FOR: Duration = Duration::from_secs(5);

/// A manifest line for `path` (`path<TAB>size<TAB>mtime`).
fn manifest_line(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{}\t{}\t{mtime}\n", path.display(), meta.len())
}

/// Submits `manifest` into dataset `ds`: the job's id.
fn submit(cluster: &Cluster, manifest: &Path, files: usize) -> u64 {
    submit_to(cluster, "ds", manifest, files)
}

/// [`submit`] to `dataset`.
fn submit_to(cluster: &Cluster, dataset: &str, manifest: &Path, files: usize) -> u64 {
    let submitted = run(
        cluster
            .client(&[
                "submit",
                "--no-progress",
                "--dataset",
                dataset,
                "--manifest",
            ])
            .arg(manifest),
        0,
    );
    let summary = text(&submitted.stdout);
    assert_eq!(figure(&summary, "new"), files as u64, "{summary}");
    summary
        .strip_prefix("submission ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no submission id in {summary}"))
}

/// The nodes' logs, one after the other.
fn logs(nodes: &[(Child, PathBuf)]) -> String {
    nodes
        .iter()
        .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Waits until some shard of job `id` is leased (its shards are being
/// read), asserting it has not committed yet.
fn wait_until_leased(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + COMMIT_WITHIN;
    loop {
        let status = cluster.status();
        let job = job(&status, id).expect("the job is listed");
        assert!(job["phase"] != "committed", "committed too early: {job:#}");
        if job["shards_leased"].as_u64() > Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "no shard leased: {job:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the coordinators have committed job `id`, while every node
/// in `nodes` (with its log) keeps running: the job's status.
fn wait_for_commit(
    cluster: &Cluster,
    id: u64,
    nodes: &mut [(Child, PathBuf)],
) -> serde_json::Value {
    let deadline = Instant::now() + COMMIT_WITHIN;
    loop {
        let status = cluster.status();
        if let Some(job) = job(&status, id)
            && job["phase"] == "committed"
        {
            return job;
        }
        for (child, _) in nodes.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "a node exited:\n{}",
                logs(nodes)
            );
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not committed within {COMMIT_WITHIN:?}: {status:#}\nnode logs:\n{}",
            logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM to `child`: its exit status within the node's shutdown bound.
fn terminate(child: &mut Child) -> ExitStatus {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_for_exit(child, STOP_WITHIN)
}

fn wait_for_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The job with `id` in `quern status --json`.
fn job(status: &serde_json::Value, id: u64) -> Option<serde_json::Value> {
    status["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["id"].as_u64() == Some(id))
        .cloned()
}

#[test]
fn a_node_process_ingests_a_submitted_job_until_committed_and_stops_on_sigterm() {
    let mut cluster = Cluster::start_with(&["--lease-time", LEASE_TIME]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let certs = cluster.path("certs");
    issue(&certs, "node-1");
    let work = tempdir();
    let input = work.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let input = input.canonicalize().unwrap();
    let files = edge_case_dataset(&input, 5, 200_000, 23);
    // Named by the manifest but outside the node's root: never read.
    let outside = work.path().canonicalize().unwrap().join("outside.txt");
    std::fs::write(&outside, "SECRET outside the roots\n").unwrap();
    let manifest = work.path().join("manifest.tsv");
    let mut lines: Vec<String> = files.iter().map(|f| manifest_line(f)).collect();
    lines.push(manifest_line(&outside));
    std::fs::write(&manifest, lines.concat()).unwrap();

    let node_data = work.path().join("node-1");
    let log_path = cluster.path("node-1.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = node(1, &certs, &node_data, &cluster.addresses, &input)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let node_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    std::thread::sleep(IDLE_FOR);
    assert!(node_log().contains("node 1 registered"), "{}", node_log());

    let status = cluster.status();
    let listed = &status["nodes"][0];
    assert_eq!(
        (&listed["id"], &listed["state"]),
        (&1.into(), &"alive".into()),
        "{status:#}"
    );
    assert!(
        listed["memory_bytes"].as_u64().unwrap() > 0,
        "its heartbeats carry its memory: {status:#}"
    );

    // `submit --wait` returns once the node has ingested the job and the
    // coordinators committed it.
    let submitted = cluster
        .client(&["submit", "--no-progress", "--dataset", "ds", "--wait"])
        .arg("--wait-timeout")
        .arg(format!("{}s", COMMIT_WITHIN.as_secs()))
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let summary = text(&submitted.stdout);
    let job_id: u64 = summary
        .strip_prefix("submission ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no submission id in {summary}\n{}\nnode log:\n{}",
                text(&submitted.stderr),
                node_log()
            )
        });
    assert_eq!(figure(&summary, "new"), files.len() as u64 + 1, "{summary}");
    assert!(
        summary.contains(&format!("job {job_id} of dataset \"ds\" committed")),
        "{summary}\n{}\nnode log:\n{}",
        text(&submitted.stderr),
        node_log()
    );
    let status = cluster.status();
    let committed = job(&status, job_id).unwrap();
    assert_eq!(committed["phase"], "committed", "{committed:#}");
    assert_eq!(
        committed["shards_done"].as_u64(),
        Some(files.len() as u64 + 1),
        "{committed:#}"
    );
    // The summary's counts are the node's, and the exit status is as
    // `quern ingest`'s for them.
    let totals = &stats_json(&node_data, "ds", None)["jobs"][0]["totals"];
    for (label, key) in [
        ("records read", "read"),
        ("unique", "unique"),
        ("duplicates", "duplicates"),
        ("rejected", "rejected"),
    ] {
        assert_eq!(
            Some(counted(&summary, label)),
            totals[key].as_u64(),
            "{label}: {summary}\n{totals:#}"
        );
    }
    let rejected = totals["rejected"].as_u64().unwrap();
    assert_eq!(
        submitted.status.code(),
        Some(if rejected == 0 { 0 } else { 3 }),
        "{summary}"
    );
    let owned = &status["nodes"][0]["partitions"][0];
    assert_eq!(
        (&owned["dataset"], &owned["start"], &owned["end"]),
        (&"ds".into(), &0.into(), &64.into()),
        "one node owns every partition: {status:#}"
    );

    // SIGTERM: status 0 within the node's shutdown bound.
    let status = terminate(&mut child);
    let log_text = node_log();
    assert_eq!(status.code(), Some(0), "node log:\n{log_text}");
    assert!(
        log_text.contains(&format!("job {job_id} committed")),
        "{log_text}"
    );
    assert!(log_text.contains("terminated, shutting down"), "{log_text}");
    assert!(
        !log_text.contains("registered again"),
        "the idle node was declared lost: {log_text}"
    );

    let exported = export(&node_data, "ds");
    assert!(
        exported == sort_u(&files),
        "the node's export is not sort -u of the inputs"
    );
    // The file outside the root is a rejected file with its reason.
    let stats = stats_json(&node_data, "ds", None);
    let outside_file = stats["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == outside.to_str())
        .unwrap_or_else(|| panic!("no {outside:?} in {stats:#}"))
        .clone();
    assert_eq!(outside_file["read"].as_u64(), Some(0), "{outside_file:#}");
    let reason = outside_file["problems"][0]["message"].as_str().unwrap();
    assert!(reason.contains("outside the node's roots"), "{reason}");
}

/// Node processes with their logs, killed when dropped (a failing test
/// leaves none running).
struct Nodes(Vec<(Child, PathBuf)>);

impl std::ops::Deref for Nodes {
    type Target = Vec<(Child, PathBuf)>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Nodes {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Nodes 1..=3 as processes with their logs, stores under `stores`,
/// each registered before this returns.
fn start_nodes(cluster: &Cluster, stores: &Path, input: &Path) -> Nodes {
    let mut nodes = Nodes(Vec::new());
    for id in 1..=3u64 {
        issue(&cluster.path("certs"), &format!("node-{id}"));
        let store = stores.join(format!("node-{id}"));
        let log = cluster.path(&format!("node-{id}.log"));
        nodes.push(spawn_node(cluster, &store, input, id, log));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|(_, log)| registered(log)) {
        assert!(Instant::now() < deadline, "the nodes did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}

/// Node `id` (its certificate issued) as a process over `store`, logging
/// to `log`.
fn spawn_node(
    cluster: &Cluster,
    store: &Path,
    input: &Path,
    id: u64,
    log: PathBuf,
) -> (Child, PathBuf) {
    let child = node(id, &cluster.path("certs"), store, &cluster.addresses, input)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// Whether `log` comes to hold `text` within `within`.
fn wait_for_log(log: &Path, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if log_holds(log, text) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_holds(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(text))
}

fn registered(log: &Path) -> bool {
    log_holds(log, "registered (incarnation")
}

/// Input files under `work/input` and a manifest of them.
fn input_with_manifest(
    work: &Path,
    files: usize,
    bytes_per_file: u64,
) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    let input = work.join("input");
    std::fs::create_dir(&input).unwrap();
    let input = input.canonicalize().unwrap();
    let files = edge_case_dataset(&input, files, bytes_per_file, 29);
    let manifest = work.join("manifest.tsv");
    let lines: Vec<String> = files.iter().map(|f| manifest_line(f)).collect();
    std::fs::write(&manifest, lines.concat()).unwrap();
    (input, files, manifest)
}

/// Three `quern node` processes take one job together: each owns a third
/// of the partitions and shuffles the records of the shards it leased to
/// their owners over its data channel. Their stores, read as one (`quern
/// export --data` of the directory holding `node-1`..`node-3`), export
/// `LC_ALL=C sort -u` of the inputs.
#[test]
fn three_node_processes_shuffle_one_job_to_the_export_of_sort_u() {
    let mut cluster = Cluster::start_with(&["--lease-time", "5s"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 9, 300_000);
    let stores = work.path().join("stores");
    // Every node registered before the job: the map has three owners.
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let job_id = submit(&cluster, &manifest, files.len());
    let committed = wait_for_commit(&cluster, job_id, &mut nodes);
    assert_eq!(committed["shards_done"].as_u64(), Some(files.len() as u64));
    assert_eq!(committed["attempt"].as_u64(), Some(0), "{committed:#}");
    for (child, log) in nodes.iter_mut() {
        let status = terminate(child);
        let text = std::fs::read_to_string(&*log).unwrap();
        assert_eq!(status.code(), Some(0), "{text}");
        assert!(text.contains(&format!("job {job_id} committed")), "{text}");
    }
    let exported = export(&stores, "ds");
    assert!(
        exported == sort_u(&files),
        "the three nodes' export is not sort -u of the inputs"
    );
}

/// A node SIGKILLed while the job runs is declared lost once its lease
/// time passes: the job runs again (attempt 1) on the other two, under a
/// map of their own, and the export is still `sort -u` of the inputs.
#[test]
fn a_node_killed_mid_job_restarts_the_job_on_the_others() {
    let mut cluster = Cluster::start_with(&["--lease-time", "2s"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 12, 3_000_000);
    let stores = work.path().join("stores");
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let job_id = submit(&cluster, &manifest, files.len());
    // Killed once the job's shards are being read.
    wait_until_leased(&cluster, job_id);
    let (mut killed, _) = nodes.pop().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let committed = wait_for_commit(&cluster, job_id, &mut nodes);
    assert!(committed["attempt"].as_u64() >= Some(1), "{committed:#}");
    let cause = committed["restarted"].as_str().unwrap_or_default();
    assert!(
        cause.contains("node 3 was lost"),
        "{committed:#}\nnode logs:\n{}",
        logs(&nodes)
    );
    for (child, _) in nodes.iter_mut() {
        terminate(child);
    }
    let exported = export(&stores, "ds");
    assert!(
        exported == sort_u(&files),
        "after the kill, the export is not sort -u of the inputs"
    );
}

/// A node SIGSTOPped past its lease while the job runs is declared lost
/// (the job restarts on the other two); resumed, it is fenced: its late
/// completions and streams are refused, it registers again and the job
/// commits what `sort -u` prints.
#[test]
fn a_node_paused_past_its_lease_is_fenced_when_it_resumes() {
    let mut cluster = Cluster::start_with(&["--lease-time", "2s"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 12, 3_000_000);
    let stores = work.path().join("stores");
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let job_id = submit(&cluster, &manifest, files.len());
    wait_until_leased(&cluster, job_id);
    let paused = i32::try_from(nodes[2].0.id()).unwrap();
    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(paused, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(unsafe { libc::kill(paused, libc::SIGCONT) }, 0);
    let committed = wait_for_commit(&cluster, job_id, &mut nodes);
    assert!(committed["attempt"].as_u64() >= Some(1), "{committed:#}");
    // The other two may commit before the resumed node's next heartbeat,
    // which is when it registers again.
    let registered_again = wait_for_log(&nodes[2].1, "registered again", COMMIT_WITHIN);
    for (child, _) in nodes.iter_mut() {
        assert_eq!(terminate(child).code(), Some(0));
    }
    let paused_log = std::fs::read_to_string(&nodes[2].1).unwrap();
    assert!(
        registered_again,
        "the resumed node learned it was lost: {paused_log}"
    );
    let exported = export(&stores, "ds");
    assert!(
        exported == sort_u(&files),
        "after the pause, the export is not sort -u of the inputs"
    );
}

/// Sends `signal` to `child`.
fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Whether `store` holds a part staged for the coordinators' commit.
fn has_staged_part(store: &Path) -> bool {
    std::fs::read_dir(store.join("staged")).is_ok_and(|mut parts| parts.next().is_some())
}

/// An owner that has staged its part and reported it is stopped before
/// it publishes, and SIGKILLed once the others staged too and the
/// coordinators committed the job (its lease is long, so it is not
/// declared lost first). Restarted, the owner finds
/// its part staged, learns the job committed and publishes it: the
/// export is `sort -u` of the inputs (before, the committed job lacked
/// the killed owner's partitions for good).
#[test]
fn an_owner_killed_after_staging_publishes_its_part_when_it_restarts() {
    let mut cluster = Cluster::start_with(&["--lease-time", "30s"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 9, 600_000);
    let stores = work.path().join("stores");
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let job_id = submit(&cluster, &manifest, files.len());
    let store_of = |n: usize| stores.join(format!("node-{}", n + 1));
    let deadline = Instant::now() + COMMIT_WITHIN;
    let first = loop {
        if let Some(n) = (0..nodes.len()).find(|&n| has_staged_part(&store_of(n))) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no node staged:\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Every node is frozen the moment one has staged. The victim is then
    // an owner frozen with its part staged whose report the coordinators
    // already hold while another owner's is missing (so nothing commits
    // until the others resume), or, when the job committed in that
    // moment, one frozen before publishing. The others resume, stage,
    // and the job commits while the victim cannot publish; then it is
    // killed.
    for (child, _) in nodes.iter() {
        signal(child, libc::SIGSTOP);
    }
    let reported = |job: &serde_json::Value, n: usize| {
        let unstaged = job["unstaged"].as_array().expect("unstaged owners");
        job["phase"] == "committed"
            || job["phase"] == "staging"
                && !unstaged.iter().any(|u| u.as_u64() == Some(n as u64 + 1))
    };
    let job_now = || job(&cluster.status(), job_id).expect("the job is listed");
    let status = job_now();
    let victim =
        match (0..nodes.len()).find(|&n| reported(&status, n) && has_staged_part(&store_of(n))) {
            Some(n) => n,
            None => {
                // Nobody has reported: the first stager alone resumes until
                // its report is in, and the frozen others keep the job open.
                signal(&nodes[first].0, libc::SIGCONT);
                let deadline = Instant::now() + COMMIT_WITHIN;
                loop {
                    let status = job_now();
                    if reported(&status, first) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "node {} did not report its stage: {status:#}",
                        first + 1
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                signal(&nodes[first].0, libc::SIGSTOP);
                first
            }
        };
    let (mut killed, killed_log) = nodes.remove(victim);
    for (child, _) in nodes.iter() {
        signal(child, libc::SIGCONT);
    }
    let committed = wait_for_commit(&cluster, job_id, &mut nodes);
    assert_eq!(committed["attempt"].as_u64(), Some(0), "{committed:#}");
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(
        has_staged_part(&store_of(victim)),
        "the owner was killed with its part staged"
    );

    let id = victim as u64 + 1;
    let restarted_log = cluster.path(&format!("node-{id}-restarted.log"));
    let restarted = spawn_node(
        &cluster,
        &store_of(victim),
        &input,
        id,
        restarted_log.clone(),
    );
    nodes.push(restarted);
    let deadline = Instant::now() + COMMIT_WITHIN;
    while !std::fs::read_to_string(&restarted_log)
        .is_ok_and(|t| t.contains("it had staged (local job"))
    {
        assert!(
            Instant::now() < deadline,
            "the restarted node did not publish its part:\n{}\nbefore the kill:\n{}",
            std::fs::read_to_string(&restarted_log).unwrap_or_default(),
            std::fs::read_to_string(&killed_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (child, _) in nodes.iter_mut() {
        assert_eq!(terminate(child).code(), Some(0));
    }
    assert!(
        !has_staged_part(&store_of(victim)),
        "its staged files were removed"
    );
    let exported = export(&stores, "ds");
    assert!(
        exported == sort_u(&files),
        "after the owner's restart, the export is not sort -u of the inputs"
    );
}

/// Jobs submitted at most to see one owner staged while another is not.
const MOMENT_TRIES: usize = 4;

/// Watches the nodes' stores of job `id` for the moment one owner has
/// staged while another has not, freezes (SIGSTOP) the owners that have
/// not, and keeps frozen one of them that the coordinators still wait
/// for: returns its index. `None` (every node running) if the job went
/// past that moment unseen: every store staged at once, or the job
/// committed (a store without a staged part may have published it).
/// The stores are looked at every millisecond.
fn freeze_an_owner_before_it_stages(
    cluster: &Cluster,
    id: u64,
    nodes: &[(Child, PathBuf)],
    store_of: &dyn Fn(usize) -> PathBuf,
) -> Option<usize> {
    let deadline = Instant::now() + COMMIT_WITHIN;
    loop {
        let staged: Vec<bool> = (0..nodes.len())
            .map(|n| has_staged_part(&store_of(n)))
            .collect();
        if !staged.contains(&false) {
            return None;
        }
        if staged.contains(&true) {
            let frozen: Vec<usize> = (0..nodes.len()).filter(|&n| !staged[n]).collect();
            for &n in &frozen {
                signal(&nodes[n].0, libc::SIGSTOP);
            }
            let status = job(&cluster.status(), id).expect("the job is listed");
            let committed = status["phase"] == "committed";
            let unstaged = status["unstaged"].as_array().cloned().unwrap_or_default();
            let waited_for = |n: &usize| unstaged.iter().any(|u| u.as_u64() == Some(*n as u64 + 1));
            let victim = frozen
                .iter()
                .copied()
                .find(waited_for)
                .filter(|_| !committed);
            for &n in frozen.iter().filter(|&&n| Some(n) != victim) {
                signal(&nodes[n].0, libc::SIGCONT);
            }
            // Neither: each staged and reported meanwhile.
            if victim.is_some() || committed {
                return victim;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: no store staged within {COMMIT_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An owner killed once every shard was done, before it staged (its
/// peers' streams to it and its own to them are over: one owner has
/// staged already): its partitions alone are read again (lineage). Its
/// neighbour in partition order reads every shard again for them, the
/// other owners' parts stay, and the job commits as attempt 1 with the
/// export `sort -u` of the inputs.
#[test]
fn an_owner_killed_before_staging_has_its_partitions_read_again() {
    let mut cluster = Cluster::start_with(&["--lease-time", LEASE_TIME]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 12, 4_000_000);
    let stores = work.path().join("stores");
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let store_of = |n: usize| stores.join(format!("node-{}", n + 1));
    // The owners of a job stage within milliseconds of each other, and a
    // loaded machine may not look in between: a job that went past the
    // moment commits, and the same files go again as another dataset's.
    let (dataset, job_id, victim) = (0..MOMENT_TRIES)
        .find_map(|try_| {
            let dataset = format!("ds-{try_}");
            let job_id = submit_to(&cluster, &dataset, &manifest, files.len());
            match freeze_an_owner_before_it_stages(&cluster, job_id, &nodes, &store_of) {
                Some(victim) => Some((dataset, job_id, victim)),
                None => {
                    eprintln!("job {job_id} went past the moment unseen; another job");
                    wait_for_commit(&cluster, job_id, &mut nodes);
                    None
                }
            }
        })
        .unwrap_or_else(|| {
            panic!("in {MOMENT_TRIES} jobs, no moment with one owner staged and another not")
        });
    let (mut killed, _) = nodes.remove(victim);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let committed = wait_for_commit(&cluster, job_id, &mut nodes);
    let lost = victim as u64 + 1;
    let cause = committed["restarted"].as_str().unwrap_or_default();
    assert!(
        committed["attempt"] == 1 && cause.contains("read again"),
        "{committed:#}\nnode logs:\n{}",
        logs(&nodes)
    );
    let recovery = &committed["recovery"];
    assert_eq!(recovery["lost"].as_u64(), Some(lost), "{committed:#}");
    let heir = if lost == 1 { 2 } else { lost - 1 };
    assert_eq!(
        recovery["owner"].as_u64(),
        Some(heir),
        "its neighbour before it in partition order reads its partitions"
    );
    // The neighbour left its part of attempt 0 staged, not failed, to
    // run the recovery part, and publishes it after that part.
    let heir_log = std::fs::read_to_string(cluster.path(&format!("node-{heir}.log"))).unwrap();
    assert!(
        heir_log.contains("is staged; it stays so until the coordinators decide")
            && heir_log.contains(&format!("reads the partitions of lost node {lost} again"))
            && !heir_log.contains("nothing was committed"),
        "{heir_log}"
    );
    let deadline = Instant::now() + COMMIT_WITHIN;
    while (0..3).any(|n| n != victim && has_staged_part(&store_of(n))) {
        assert!(
            Instant::now() < deadline,
            "a part stayed staged:\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The lost node comes back (a read asks every node), its part of
    // attempt 0 left behind. The recovery part read every record again:
    // the job's reads are its reads, not those of every part.
    let log = cluster.path(&format!("node-{lost}-restarted.log"));
    nodes.push(spawn_node(&cluster, &store_of(victim), &input, lost, log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registered(&nodes.last().unwrap().1) {
        assert!(
            Instant::now() < deadline,
            "node {lost} did not register again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = cluster_stats(&cluster, &dataset);
    assert_counts_reconcile(&stats);
    assert_eq!(
        stats["jobs"][0]["totals"]["read"].as_u64(),
        committed["staged"]["read"].as_u64(),
        "{stats:#}\n{committed:#}"
    );
    for (child, _) in nodes.iter_mut() {
        assert_eq!(terminate(child).code(), Some(0));
    }
    let expected = sort_u(&files);
    let unique = expected.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(
        committed["staged"]["unique"].as_u64(),
        Some(unique),
        "{committed:#}"
    );
    let exported = export(&stores, &dataset);
    assert!(
        exported == expected,
        "after the owner's loss, the export is not sort -u of the inputs"
    );
}

/// `quern stats --json` of `dataset` over the cluster's nodes.
fn cluster_stats(cluster: &Cluster, dataset: &str) -> serde_json::Value {
    let stats = run(
        &mut cluster.client(&["stats", "--json", "--dataset", dataset]),
        0,
    );
    serde_json::from_slice(&stats.stdout).unwrap()
}

/// Every job of `stats` and every file of its last job: records read ==
/// unique + duplicates + rejected, and the files' reads add up to the
/// last job's.
fn assert_counts_reconcile(stats: &serde_json::Value) {
    let reconciles = |counts: &serde_json::Value| {
        let n = |key: &str| counts[key].as_u64().unwrap();
        assert_eq!(
            n("read"),
            n("unique") + n("duplicates") + n("rejected"),
            "{counts:#}\nin {stats:#}"
        );
        n("read")
    };
    let mut read = None;
    for job in stats["jobs"].as_array().unwrap() {
        read = Some(reconciles(&job["totals"]));
    }
    let files = stats["files"].as_array().unwrap();
    let files_read: u64 = files.iter().map(reconciles).sum();
    assert_eq!(Some(files_read), read, "{stats:#}");
}

/// The number after `label` in a summary, thousands separators and all.
fn counted(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {summary}"));
    line.trim().replace(',', "").parse().unwrap()
}

#[test]
fn submit_wait_gives_up_at_its_timeout_naming_the_shards_the_job_waits_on() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let manifest = work.path().join("manifest.tsv");
    write_tsv(&manifest, 3, &[]);
    let started = Instant::now();
    let out = run(
        cluster
            .client(&["submit", "--no-progress", "--dataset", "ds"])
            .args(["--wait", "--wait-timeout", "2s", "--manifest"])
            .arg(&manifest),
        1,
    );
    let waited = started.elapsed();
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "was not committed within 2s (--wait-timeout): scanning, waiting on 3 shards \
             pending, 0 leased"
        ),
        "{err}"
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(
        err.contains(": 0/3 shards done, scanning: waits on 3 shards pending, 0 leased"),
        "progress while waiting: {err}"
    );
    // The job goes on: no node has run it.
    let status = cluster.status();
    assert_eq!(status["jobs"][0]["phase"], "scanning", "{status:#}");
    assert_eq!(status["nodes"], serde_json::json!([]), "{status:#}");
}

#[test]
fn a_node_refuses_a_certificate_named_for_another_node() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    run(
        quern(&dir.path().join("unused"))
            .args(["cert", "init", "--dir"])
            .arg(&certs),
        0,
    );
    issue(&certs, "node-2");
    // node-2's certificate where node 1 looks for its own.
    for ext in ["pem", "key"] {
        std::fs::copy(
            certs.join(format!("node-2.{ext}")),
            certs.join(format!("node-1.{ext}")),
        )
        .unwrap();
    }
    let root: PathBuf = dir.path().to_path_buf();
    let out = run(
        &mut node(
            1,
            &certs,
            &dir.path().join("node-1"),
            &["127.0.0.1:9".to_string()],
            &root,
        ),
        2,
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("\"node-1\"") && err.contains("\"node-2\""),
        "{err}"
    );
}

/// Cluster reads: with coordinators (`[client] coordinators` in the
/// client's config file), `export`, `get` and `stats` read every node's
/// store over its data channel. After a job three nodes shared (`submit
/// --wait`), the cluster's export is `LC_ALL=C sort -u` of the inputs,
/// `get` names the file and offset a key was first seen at and the
/// coordinators' job, and `stats` sums the nodes' counters to the job's
/// summary, reconciling per job and per file. With a node down, every
/// read fails naming it and its address.
#[test]
fn export_get_and_stats_read_the_cluster_and_fail_naming_a_node_that_is_down() {
    let mut cluster = Cluster::start_with(&["--lease-time", "5s"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let work = tempdir();
    let (input, files, manifest) = input_with_manifest(work.path(), 6, 200_000);
    let stores = work.path().join("stores");
    let mut nodes = start_nodes(&cluster, &stores, &input);
    let submitted = cluster
        .client(&["submit", "--no-progress", "--dataset", "ds", "--wait"])
        .arg("--wait-timeout")
        .arg(format!("{}s", COMMIT_WITHIN.as_secs()))
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let summary = text(&submitted.stdout);
    assert!(
        summary.contains("committed"),
        "{summary}\n{}\n{}",
        text(&submitted.stderr),
        logs(&nodes)
    );
    let job_id: u64 = summary
        .strip_prefix("submission ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no submission id in {summary}"));

    // export: the nodes' streams merged, byte for byte sort -u.
    let exported = run(&mut cluster.client(&["export", "--dataset", "ds"]), 0).stdout;
    assert!(
        exported == sort_u(&files),
        "the cluster's export is not sort -u of the inputs ({} bytes)",
        exported.len()
    );

    // get: a key first seen at the start of the first file.
    let first = decompressed(&files[0]);
    let key = &first[..first.iter().position(|&b| b == b'\n').unwrap()];
    let key = std::str::from_utf8(key).expect("the first line is text");
    let found = text(
        &run(
            &mut cluster.client(&["get", "--dataset", "ds", "--", key]),
            0,
        )
        .stdout,
    );
    assert_eq!(
        found,
        format!(
            "{key}\n\tfirst seen at {}:0 (job {job_id} of the coordinators)\n",
            files[0].display()
        )
    );
    run(
        &mut cluster.client(&["get", "--dataset", "ds", "no such key \u{1}"]),
        1,
    );

    // stats: the nodes' parts summed, equal to the job's summary.
    let stats = cluster_stats(&cluster, "ds");
    assert_counts_reconcile(&stats);
    let job = &stats["jobs"][0];
    assert_eq!(job["id"].as_u64(), Some(job_id), "{stats:#}");
    assert_eq!(job["state"], "committed", "{stats:#}");
    assert_eq!(job["nodes"].as_array().unwrap().len(), 3, "{stats:#}");
    let totals = &job["totals"];
    let figure_of = |key: &str| totals[key].as_u64().unwrap();
    for (label, key) in [
        ("records read", "read"),
        ("unique", "unique"),
        ("duplicates", "duplicates"),
        ("rejected", "rejected"),
    ] {
        assert_eq!(
            counted(&summary, label),
            figure_of(key),
            "{label}: {summary}\n{totals:#}"
        );
    }
    let listed = stats["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len(), "{stats:#}");
    for (file, path) in listed.iter().zip(&files) {
        assert_eq!(file["path"].as_str(), path.to_str(), "{file:#}");
        let read = file["read"].as_u64().unwrap();
        assert_eq!(read > 0, !decompressed(path).is_empty(), "{file:#}");
    }
    let text_stats = text(&run(&mut cluster.client(&["stats", "--dataset", "ds"]), 0).stdout);
    assert!(
        text_stats.contains(&format!("files of job {job_id}:")),
        "{text_stats}"
    );

    // A node down: every read fails naming it, never a short answer.
    let status = cluster.status();
    let address = status["nodes"][2]["address"].as_str().unwrap().to_string();
    let (mut killed, _) = nodes.pop().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    for args in [
        &["export", "--dataset", "ds"][..],
        &["stats", "--dataset", "ds"],
        &["get", "--dataset", "ds", "no such key"],
    ] {
        let out = run(&mut cluster.client(args), 1);
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("node 3 at {address}")),
            "{args:?}: {err}"
        );
    }
    // The local read of the stores is unchanged.
    assert!(export(&stores, "ds") == exported);
}
