//! `quern dev` end to end through the binary: a job through the cluster
//! code (an embedded coordinator, a node leasing shards) gives what
//! `quern ingest` gives: the export equals `LC_ALL=C sort -u`, the counters
//! are the same and reconcile, and every key's first sighting is the same
//! file and offset.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bench::oracle::sort_u;
use common::*;

fn dev(data: &Path, args: &[&str], inputs: &[&Path], expected: i32) -> std::process::Output {
    let mut cmd = quern(data);
    cmd.args(["dev", "--no-progress"]).args(args).args(inputs);
    run(&mut cmd, expected)
}

/// `quern get`'s record and first-seen file and offset, without the job
/// (a local job's number, or the coordinators' job).
fn get(data: &Path, key: &[u8]) -> String {
    let out = run(
        quern(data)
            .args(["get", "--dataset", "lines", "--"])
            .arg(OsStr::from_bytes(key)),
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rfind(" (job ") {
        Some(at) => text[..at].to_string(),
        None => panic!("no job in {text}"),
    }
}

#[test]
fn dev_gives_what_ingest_gives() {
    let (input, dev_data, ingest_data) = (tempdir(), tempdir(), tempdir());
    let files = edge_case_dataset(input.path(), 6, 300_000, 19);
    // Canonical, as the manifest names files, so `get` names them alike.
    let input_dir = input.path().canonicalize().unwrap();
    let out = dev(
        dev_data.path(),
        &["--dataset", "lines", "--memory", "64M"],
        &[&input_dir],
        0,
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!("{} files ({} new", files.len(), files.len())),
        "{summary}"
    );
    assert!(
        summary.contains("committed job 1 of dataset \"lines\""),
        "{summary}"
    );
    assert!(
        dev_data.path().join("coordinator").is_dir() && dev_data.path().join("node-1").is_dir(),
        "the coordinator's and the node's data under --data"
    );

    let expected = sort_u(&files);
    let exported = export(dev_data.path(), "lines");
    assert!(exported == expected, "dev export differs from sort -u");

    ingest(ingest_data.path(), &["--dataset", "lines"], &[&input_dir]);
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    let dev_stats = stats_json(dev_data.path(), "lines", None);
    let ingest_stats = stats_json(ingest_data.path(), "lines", None);
    let totals = &dev_stats["jobs"][0]["totals"];
    assert_eq!(
        n(&totals["read"]),
        n(&totals["unique"]) + n(&totals["duplicates"]) + n(&totals["rejected"])
    );
    for counter in ["files", "read", "unique", "duplicates", "rejected"] {
        assert_eq!(
            totals[counter], ingest_stats["jobs"][0]["totals"][counter],
            "{counter}"
        );
    }
    assert_eq!(
        dev_stats["files"], ingest_stats["files"],
        "per-file counters"
    );

    // Three nodes: each file is scanned by one node and its records go
    // to their owners, whose `get` finds the file in the scanner's
    // ledger.
    let dev3_data = tempdir();
    dev(
        dev3_data.path(),
        &["--dataset", "lines", "--memory", "64M", "--nodes", "3"],
        &[&input_dir],
        0,
    );
    assert!(export(dev3_data.path(), "lines") == expected);
    // `stats` reads the three stores as one: the nodes' parts summed per
    // job, and per file, as one node counts them.
    let dev3_stats = stats_json(dev3_data.path(), "lines", None);
    let job = &dev3_stats["jobs"][0];
    assert_eq!(job["state"], "committed", "{dev3_stats:#}");
    assert_eq!(job["nodes"].as_array().unwrap().len(), 3, "{dev3_stats:#}");
    for counter in ["files", "read", "unique", "duplicates", "rejected"] {
        assert_eq!(
            job["totals"][counter], ingest_stats["jobs"][0]["totals"][counter],
            "{counter}"
        );
    }
    let per_file = |stats: &serde_json::Value| -> Vec<Vec<serde_json::Value>> {
        let fields = ["seq", "path", "read", "unique", "duplicates", "rejected"];
        let files = stats["files"].as_array().unwrap();
        files
            .iter()
            .map(|f| fields.iter().map(|k| f[*k].clone()).collect())
            .collect()
    };
    assert_eq!(per_file(&dev3_stats), per_file(&ingest_stats));

    // Every 50th key, and the duplicated ones: the same record, file and
    // offset.
    let keys: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    for key in keys.iter().step_by(50).filter(|k| !k.is_empty()) {
        let single = get(ingest_data.path(), key);
        assert!(single.contains("first seen at /"), "{single}");
        for data in [dev_data.path(), dev3_data.path()] {
            assert_eq!(get(data, key), single, "key {}", key.escape_ascii());
        }
    }

    // The same inputs again: nothing new, changed or leased; the job
    // commits with nothing read and the export is unchanged.
    let again = dev(dev_data.path(), &["--dataset", "lines"], &[&input_dir], 0);
    let summary = String::from_utf8_lossy(&again.stderr);
    assert!(
        summary.contains(&format!("0 new, 0 changed, {} unchanged", files.len())),
        "{summary}"
    );
    assert!(export(dev_data.path(), "lines") == expected);
}

#[test]
fn dev_refuses_standard_input_and_missing_paths() {
    let data = tempdir();
    let out = dev(data.path(), &[], &[Path::new("-")], 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standard input"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = data.path().join("nope");
    let out = dev(data.path(), &[], &[&missing], 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The front door's job: `quern dev --sample` runs the generated sample
/// through the cluster code into dataset "sample", and stores what
/// `quern ingest --sample` stores.
#[test]
fn dev_runs_the_generated_sample() {
    let (dev_data, ingest_data) = (tempdir(), tempdir());
    let out = dev(dev_data.path(), &["--sample", "--memory", "64M"], &[], 0);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("committed job 1 of dataset \"sample\""),
        "{summary}"
    );
    run(
        quern(ingest_data.path()).args(["ingest", "--no-progress", "--sample", "--memory", "64M"]),
        0,
    );
    let exported = export(dev_data.path(), "sample");
    assert!(!exported.is_empty());
    assert!(exported == export(ingest_data.path(), "sample"));
    // Paths and --sample are one or the other.
    dev(dev_data.path(), &["--sample"], &[dev_data.path()], 2);
}

/// A `quern dev --serve` process, killed when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `quern dev --serve --nodes 2` on `data`, reading under `root`:
/// the process and its log, once it says it serves.
fn serve(data: &Path, root: &Path, port: u16) -> (Served, std::path::PathBuf) {
    let log = data.with_extension(format!("serve-{port}.log"));
    let child = quern(data)
        .args(["dev", "--serve", "--nodes", "2", "--memory", "64M"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--root")
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let served = Served(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("node(s), stores under")) {
        assert!(
            std::time::Instant::now() < deadline,
            "quern dev --serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (served, log)
}

/// A client command with the configuration `quern dev --serve` wrote.
fn client(data: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quern"));
    isolate(&mut cmd);
    cmd.arg("--config")
        .arg(data.join("serve/client.toml"))
        .args(args);
    cmd
}

/// Waits until `log` holds `needle` `times` times.
fn wait_for_log(log: &Path, needle: &str, times: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// SIGTERM: the process exits with status 0 within the nodes' bound.
fn stop(mut served: Served, log: &Path) {
    let pid = i32::try_from(served.0.id()).unwrap();
    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = served.0.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(exit.code(), Some(0), "{text}");
}

/// `quern dev --serve` keeps a local cluster up: `submit --wait` with the
/// client configuration it wrote runs a job on its two nodes, `status`
/// lists them, SIGTERM stops it with status 0, and the stores export `sort
/// -u` of the inputs. Served again from the same directory (its
/// certificates and coordinator kept), a second job adds to the dataset.
#[test]
fn dev_serve_runs_submitted_jobs_until_stopped() {
    let (input, data) = (tempdir(), tempdir());
    let input_dir = input.path().canonicalize().unwrap();
    let (first, second) = (input_dir.join("first"), input_dir.join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    let mut files = edge_case_dataset(&first, 4, 200_000, 23);
    let port = common::cluster::free_port();
    let submit = |dir: &Path| {
        let mut cmd = client(
            data.path(),
            &["submit", "--no-progress", "--wait", "--dataset", "ds"],
        );
        let out = run(cmd.arg(dir), 0);
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(summary.contains("committed"), "{summary}");
    };

    let (served, log) = serve(data.path(), &input_dir, port);
    submit(&first);
    let status = run(&mut client(data.path(), &["status", "--json"]), 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2, "{status:#}");
    // Each node publishes its part once it learns of the commit.
    wait_for_log(&log, "job 1 committed", 2);
    stop(served, &log);
    assert!(
        export(data.path(), "ds") == sort_u(&files),
        "export after the first job"
    );

    files.extend(edge_case_dataset(&second, 2, 100_000, 24));
    let (served, log) = serve(data.path(), &input_dir, port);
    submit(&second);
    wait_for_log(&log, "job 2 committed", 2);
    stop(served, &log);
    assert!(
        export(data.path(), "ds") == sort_u(&files),
        "export after the second job"
    );
}
