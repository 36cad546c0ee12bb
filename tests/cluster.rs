//! The cluster commands as processes: three `quern coordinator`s from
//! config files with certificates from `quern cert`, `quern status`, and
//! `quern submit` of manifests and a directory; bad manifests rejected
//! with their line and nothing applied; SIGTERM stops a coordinator
//! within its bound.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{quern, run};

struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let data = dir.path().join("data");
        run(quern(&data).args(["cert", "init", "--dir"]).arg(&certs), 0);
        for name in ["coord-1", "coord-2", "coord-3", "client"] {
            run(
                quern(&data)
                    .args([
                        "cert",
                        "issue",
                        "--san",
                        "127.0.0.1",
                        "--name",
                        name,
                        "--dir",
                    ])
                    .arg(&certs),
                0,
            );
        }
        let addresses: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{} = \"{a}\"", i + 1))
            .collect();
        let mut children = Vec::new();
        for id in 1..=3 {
            let config = dir.path().join(format!("coord-{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[cert]\ndir = {certs:?}\n[coordinator]\nid = {id}\nlisten = \"{}\"\ndata_dir = {:?}\npeers = {{ {} }}\n",
                    addresses[id - 1],
                    dir.path().join(format!("coord-{id}")),
                    peers.join(", ")
                ),
            )
            .unwrap();
            children.push(
                quern(&data)
                    .arg("--config")
                    .arg(&config)
                    .arg("coordinator")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let client_config = dir.path().join("client.toml");
        std::fs::write(
            &client_config,
            format!("[cert]\ndir = {certs:?}\n[client]\ncoordinators = {addresses:?}\n"),
        )
        .unwrap();
        Self { dir, children }
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut cmd = quern(&self.dir.path().join("data"));
        cmd.arg("--config")
            .arg(self.dir.path().join("client.toml"))
            .args(args);
        cmd
    }

    fn status(&self) -> serde_json::Value {
        let out = run(&mut self.client(&["status", "--json"]), 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number after `label` in `submit`'s summary.
fn figure(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {summary}"))
        .trim()
        .parse()
        .unwrap()
}

fn write_tsv(path: &Path, n: usize, changed: &[usize]) {
    let mut text = String::new();
    for i in 0..n {
        let mtime = if changed.contains(&i) {
            1_800_000_000
        } else {
            1_700_000_000
        };
        text.push_str(&format!(
            "/srv/data/{:03}/file-{i:06}.log\t{}\t{mtime}\t{:032x}\n",
            i % 37,
            100 + i,
            i
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_three_coordinator_cluster_takes_submissions_and_reports_status() {
    let cluster = Cluster::start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cluster.status();
        if !status["leader"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "no leader: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["members"].as_array().unwrap().len(), 3);

    // 10 000 files: more than one chunk.
    let manifest = cluster.path("inventory.tsv");
    write_tsv(&manifest, 10_000, &[]);
    let out = run(
        cluster
            .client(&["submit", "--dataset", "inv", "--manifest"])
            .arg(&manifest),
        0,
    );
    let summary = text(&out.stdout);
    assert_eq!(figure(&summary, "new"), 10_000, "{summary}");
    assert_eq!(figure(&summary, "pending shards"), 10_000, "{summary}");

    // 1% changed, one file gone: only the changed are pending.
    let changed: Vec<usize> = (0..100).map(|i| i * 97).collect();
    write_tsv(&manifest, 9_999, &changed);
    let out = run(
        cluster
            .client(&["submit", "--dataset", "inv", "--manifest"])
            .arg(&manifest),
        0,
    );
    let summary = text(&out.stdout);
    assert_eq!(figure(&summary, "changed"), 100, "{summary}");
    assert_eq!(figure(&summary, "unchanged"), 9_899, "{summary}");
    assert_eq!(figure(&summary, "gone"), 1, "{summary}");
    assert_eq!(figure(&summary, "pending shards"), 100, "{summary}");

    // A malformed line: named, and nothing applied (no new job).
    let jobs_before = cluster.status()["jobs"].as_array().unwrap().len();
    let bad = cluster.path("bad.tsv");
    std::fs::write(&bad, "/a\t1\t1\n/b\t1\t1\n/c\tnot-a-size\t1\n").unwrap();
    let out = run(
        cluster
            .client(&["submit", "--dataset", "inv", "--manifest"])
            .arg(&bad),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.tsv:3: size \"not-a-size\""),
        "{stderr}"
    );
    let status = cluster.status();
    assert_eq!(status["jobs"].as_array().unwrap().len(), jobs_before);

    // A duplicate path is refused by name.
    let dup = cluster.path("dup.jsonl");
    std::fs::write(
        &dup,
        "{\"path\":\"/x\",\"size\":1,\"mtime\":1}\n{\"path\":\"/x\",\"size\":2,\"mtime\":1}\n",
    )
    .unwrap();
    let out = run(
        cluster
            .client(&["submit", "--dataset", "other", "--manifest"])
            .arg(&dup),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("\"/x\" is listed twice"), "{stderr}");
    assert!(stderr.contains("was aborted"), "{stderr}");
    // The aborted submission neither counts nor blocks the next one.
    let fixed = cluster.path("fixed.jsonl");
    std::fs::write(&fixed, "{\"path\":\"/x\",\"size\":1,\"mtime\":1}\n").unwrap();
    let out = run(
        cluster
            .client(&["submit", "--dataset", "other", "--manifest"])
            .arg(&fixed),
        0,
    );
    assert_eq!(figure(&text(&out.stdout), "new"), 1);

    // A directory, walked.
    let tree = cluster.path("tree");
    for name in ["a/1.log", "a/2.log", "b/3.log"] {
        let path = tree.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, name).unwrap();
    }
    let out = run(
        cluster
            .client(&["submit", "--dataset", "tree", "--format", "tsv"])
            .arg(&tree),
        0,
    );
    assert_eq!(figure(&text(&out.stdout), "new"), 3);

    let status = cluster.status();
    let datasets: Vec<&str> = status["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(datasets, ["inv", "other", "tree"]);
    let newest = &status["jobs"][0];
    assert_eq!(
        (
            newest["dataset"].as_str(),
            newest["shards_pending"].as_u64()
        ),
        (Some("tree"), Some(3))
    );
    let out = run(&mut cluster.client(&["status"]), 0);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("leader ") && shown.contains("inv (lines): 9999 files"),
        "{shown}"
    );
}

#[test]
fn sigterm_stops_a_coordinator_within_its_bound() {
    let mut cluster = Cluster::start();
    std::thread::sleep(Duration::from_secs(2));
    let child = &mut cluster.children[0];
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    eprintln!("stopped in {:?}", started.elapsed());
}
