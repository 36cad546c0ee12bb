//! The coordinators' status page in a real browser (Debian's `chromium`,
//! headless, installed by scripts/bootstrap): three `quern coordinator`
//! processes, a job submitted while no node runs, then one `quern node`
//! that ingests it. Chromium loads the leader's page before and after,
//! takes a screenshot and dumps the DOM each time: the job, its shard bar
//! and what it waits on are there, and the page shows the job's move to
//! committed. One node: several nodes sharing a job need the cluster's
//! shuffle (issue 15) before their job can be checked here.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, free_port, issue, text};
use common::{quern, tempdir};

/// One Chromium run (it starts in about 2 s here).
const BROWSER_WITHIN: Duration = Duration::from_secs(60);
const COMMIT_WITHIN: Duration = Duration::from_secs(120);
const FILES: usize = 3;

/// What headless Chromium made of `url`: the DOM after loading, and a
/// screenshot written to `png`.
fn browse(url: &str, profile: &Path, png: &Path) -> String {
    let chromium = |args: &[String]| {
        let mut child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium runs (scripts/bootstrap installs Debian's chromium)");
        let deadline = Instant::now() + BROWSER_WITHIN;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("chromium did not finish {args:?} within {BROWSER_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "chromium {args:?}: {:?}", out.status);
        text(&out.stdout)
    };
    chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1100,700".into(),
    ]);
    let shot = std::fs::read(png).expect("chromium wrote the screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    chromium(&["--dump-dom".into()])
}

fn leader(cluster: &mut Cluster) -> u64 {
    cluster.wait_for_leader(Duration::from_secs(30))["leader"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_browser_sees_a_job_wait_for_a_node_then_commit() {
    let mut cluster = Cluster::start();
    let leader = leader(&mut cluster);
    let page = format!("http://{}/", cluster.metrics[leader as usize - 1]);
    let work = tempdir();
    let profile = work.path().join("chromium");
    let input = work.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let input = input.canonicalize().unwrap();
    for i in 0..FILES {
        let lines: String = (0..1000).map(|n| format!("file {i} line {n}\n")).collect();
        std::fs::write(input.join(format!("part-{i}.txt")), lines).unwrap();
    }
    let submitted = cluster
        .client(&["submit", "--no-progress", "--dataset", "weblogs"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));

    // No node yet: the job waits for one, none of its shards done.
    let before_png = work.path().join("before.png");
    let before = browse(&page, &profile, &before_png);
    for expected in [
        "<p id=\"leader\">leader ",
        "weblogs",
        "<td>scanning</td>",
        &format!("0 / {FILES} shards done (0%)"),
        &format!("{FILES} shards pending, 0 leased"),
        "http-equiv=\"refresh\"",
    ] {
        assert!(before.contains(expected), "no {expected:?} in\n{before}");
    }

    // A node ingests it; the page follows.
    let certs = cluster.path("certs");
    issue(&certs, "node-1");
    let mut node = quern(&work.path().join("unused"));
    node.args(["node", "--id", "1", "--memory", "64M"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(work.path().join("node-1"))
        .arg("--cert-dir")
        .arg(&certs)
        .arg("--root")
        .arg(&input);
    for address in &cluster.addresses {
        node.arg("--coordinator").arg(address);
    }
    let mut node = node
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + COMMIT_WITHIN;
    while cluster.status()["jobs"][0]["phase"] != "committed" {
        assert!(Instant::now() < deadline, "{:#}", cluster.status());
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = node.kill();
    let _ = node.wait();

    let after_png = work.path().join("after.png");
    let after = browse(&page, &profile, &after_png);
    for expected in [
        "weblogs",
        "<td>committed</td>",
        "<table id=\"nodes\">",
        &format!("{FILES} / {FILES} shards done (100%)"),
        "class=\"done\" style=\"width:100.0%\"",
    ] {
        assert!(after.contains(expected), "no {expected:?} in\n{after}");
    }
    assert!(!after.contains("shards pending"), "{after}");
    assert_ne!(
        std::fs::read(&before_png).unwrap(),
        std::fs::read(&after_png).unwrap(),
        "the screenshot did not change as the job committed"
    );
    // A follower serves the page too, its own view, without the members'
    // health.
    let follower = if leader == 1 { 2 } else { 1 };
    let url = format!("http://{}/", cluster.metrics[follower - 1]);
    let theirs = browse(&url, &profile, &work.path().join("follower.png"));
    assert!(theirs.contains("a follower's view"), "{theirs}");
}
