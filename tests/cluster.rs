//! The cluster commands as processes: three `quern coordinator`s from
//! config files with certificates from `quern cert`, `quern status`, and
//! `quern submit` of manifests and a directory; bad manifests rejected
//! with their line and nothing applied; the replicas agree on what they
//! applied; `quern abort` closes a submission whose `submit` was killed;
//! SIGTERM stops a coordinator within its bound; a coordinator whose Raft
//! stops on a fatal error exits failing, naming the cause, within a
//! bound; with two replicas down a submit fails within a bound instead of
//! hanging.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, figure, text, tsv_line, write_tsv};
use common::run;

#[test]
fn a_three_coordinator_cluster_takes_submissions_and_reports_status() {
    let mut cluster = Cluster::start();
    let status = cluster.wait_for_leader(Duration::from_secs(30));
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

    // A duplicate path is refused by name and lines. In a manifest in path
    // order it is found before anything is sent; in one that had to be
    // sorted, the two may meet only in the sort's final merge, while the
    // submission is sent: it is then aborted, and none of it counts.
    let line =
        |path: &str, size: u64| format!("{{\"path\":\"{path}\",\"size\":{size},\"mtime\":1}}\n");
    let dup_sorted = [line("/x", 1), line("/x", 2), line("/y", 1)];
    let dup_unsorted = [line("/x", 1), line("/a", 2), line("/x", 3)];
    for (name, lines, aborted) in [
        ("dup.jsonl", dup_sorted, false),
        ("dup-unsorted.jsonl", dup_unsorted, true),
    ] {
        let jobs_before = cluster.status()["jobs"].as_array().unwrap().len();
        let dup = cluster.path(name);
        std::fs::write(&dup, lines.concat()).unwrap();
        let out = run(
            cluster
                .client(&["submit", "--dataset", "other", "--manifest"])
                .arg(&dup),
            1,
        );
        let stderr = text(&out.stderr);
        let line_numbers = if aborted { (3, 1) } else { (2, 1) };
        let expected = format!(
            "{name}:{}: \"/x\" is listed twice in the manifest (first on line {})",
            line_numbers.0, line_numbers.1
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert_eq!(stderr.contains("was aborted"), aborted, "{stderr}");
        let jobs = cluster.status()["jobs"].as_array().unwrap().len();
        assert_eq!(jobs, jobs_before + usize::from(aborted));
    }

    // A manifest out of path order is sorted, in runs spilled to
    // --temp-dir when they outgrow --sort-memory.
    let unsorted = cluster.path("unsorted.jsonl");
    let files: Vec<String> = (0..20_000u64)
        .map(|n| line(&format!("/u/{}", n * 7919 % 20_000), n))
        .collect();
    std::fs::write(&unsorted, files.concat()).unwrap();
    let spill = cluster.path("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let out = run(
        cluster
            .client(&[
                "submit",
                "--dataset",
                "other",
                "--sort-memory",
                "1M",
                "--temp-dir",
            ])
            .arg(&spill)
            .arg("--manifest")
            .arg(&unsorted),
        0,
    );
    assert_eq!(figure(&text(&out.stdout), "new"), 20_000);
    assert_eq!(
        std::fs::read_dir(&spill).unwrap().count(),
        0,
        "runs left behind"
    );
    let out = run(
        cluster
            .client(&["submit", "--dataset", "other", "--manifest"])
            .arg(&unsorted),
        0,
    );
    assert_eq!(figure(&text(&out.stdout), "unchanged"), 20_000);

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

    // Every replica's own view: the same applied index and state.
    let replicas = cluster.wait_until_replicas_agree(Duration::from_secs(30));
    assert_eq!(replicas.len(), 3);
    assert!(replicas[0]["state_records"].as_u64().unwrap() > 20_000);
    let out = run(&mut cluster.client(&["status", "--replicas"]), 0);
    let shown = text(&out.stdout);
    assert!(shown.ends_with("replicas: agree\n"), "{shown}");
}

/// A `quern submit` killed mid-way leaves its submission open, and the
/// dataset refuses the next one, until `quern abort` closes it; what the
/// killed submit sent never counts.
#[test]
fn quern_abort_closes_a_submission_whose_submit_died() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    // Long paths, so the manifest takes many chunks and some seconds.
    let manifest = cluster.path("big.tsv");
    let lines: String = (0..100_000)
        .map(|i| tsv_line(i, 1_700_000_000, 200))
        .collect();
    std::fs::write(&manifest, lines).unwrap();
    let open_submission = || cluster.status()["datasets"][0]["open_submission"].as_u64();

    let mut submit = cluster
        .client(&["submit", "--no-progress", "--dataset", "big", "--manifest"])
        .arg(&manifest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let open = loop {
        if let Some(open) = open_submission() {
            break open;
        }
        assert!(
            submit.try_wait().unwrap().is_none(),
            "submit ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "no submission opened within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    submit.kill().unwrap();
    submit.wait().unwrap();

    let small = cluster.path("small.tsv");
    write_tsv(&small, 10, &[]);
    let out = run(
        cluster
            .client(&["submit", "--dataset", "big", "--manifest"])
            .arg(&small),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("open submission {open}")),
        "{stderr}"
    );

    let other = (open + 1).to_string();
    let out = run(
        &mut cluster.client(&["abort", "--dataset", "big", "--submission", &other]),
        1,
    );
    assert!(
        text(&out.stderr).contains("left alone"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(open_submission(), Some(open));

    let out = run(&mut cluster.client(&["abort", "--dataset", "big"]), 0);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("submission {open} of dataset \"big\" was aborted")),
        "{stderr}"
    );
    assert_eq!(open_submission(), None);
    let out = run(&mut cluster.client(&["abort", "--dataset", "big"]), 0);
    assert!(text(&out.stderr).contains("nothing to abort"));

    // Nothing the killed submit sent counts.
    let out = run(
        cluster
            .client(&["submit", "--dataset", "big", "--manifest"])
            .arg(&manifest),
        0,
    );
    let summary = text(&out.stdout);
    assert_eq!(figure(&summary, "new"), 100_000, "{summary}");
    assert_eq!(figure(&summary, "unchanged"), 0, "{summary}");
}

#[test]
fn sigterm_stops_a_coordinator_within_its_bound() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
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

/// A replica whose snapshots cannot be written stops its Raft at its next
/// snapshot; the process then exits with a failing status and says why,
/// rather than serving a frozen state. The others go on.
#[test]
fn a_coordinator_whose_raft_stops_exits_failing_within_a_bound() {
    let mut cluster = Cluster::start_with(&["--snapshot-every", "10"]);
    cluster.wait_for_leader(Duration::from_secs(30));
    let snapshots = cluster.path("coord-2/state/snapshots");
    std::fs::remove_dir_all(&snapshots).unwrap();
    std::fs::write(&snapshots, "not a directory").unwrap();

    // Each submission is several entries: a few pass the policy.
    let manifest = cluster.path("inventory.tsv");
    let started = Instant::now();
    let mut last_entry = Instant::now();
    let status = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "replica 2 never stopped"
        );
        if let Some(status) = cluster.exit_status(2) {
            break status;
        }
        if last_entry.elapsed() < Duration::from_secs(20) {
            write_tsv(&manifest, 20, &[]);
            let submitted = cluster
                .client(&["submit", "--no-progress", "--dataset", "inv", "--manifest"])
                .arg(&manifest)
                .output()
                .unwrap();
            if submitted.status.success() {
                last_entry = Instant::now();
            }
        }
        assert!(
            last_entry.elapsed() < Duration::from_secs(20),
            "replica 2 still runs 20 s after the last entry"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(cluster.path("coord-2.log")).unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        log.contains("coordinator 2: Raft stopped:") && log.contains("Not a directory"),
        "{log}"
    );
    eprintln!(
        "replica 2 exited {status:?} {:?} after the last entry",
        last_entry.elapsed()
    );
    // The other two still elect a leader and answer.
    let status = cluster.wait_for_leader(Duration::from_secs(30));
    assert_ne!(status["leader"], 2, "{status}");
}

/// Two of three replicas down: no quorum. A submit must not hang: it
/// fails within a bound, saying why; once a second replica is back, the
/// dataset works again and nothing was counted twice.
#[test]
fn with_two_replicas_down_submit_fails_within_a_bound_and_recovers() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    let manifest = cluster.path("inventory.tsv");
    write_tsv(&manifest, 1_000, &[]);
    let submit = |cluster: &Cluster, status: i32| {
        run(
            cluster
                .client(&["submit", "--no-progress", "--dataset", "inv", "--manifest"])
                .arg(&manifest),
            status,
        )
    };
    submit(&cluster, 0);

    cluster.kill(1);
    cluster.kill(2);
    let started = Instant::now();
    let out = submit(&cluster, 1);
    let waited = started.elapsed();
    let stderr = text(&out.stderr);
    eprintln!("without quorum, submit failed after {waited:?}: {stderr}");
    assert!(waited < Duration::from_secs(90), "submit took {waited:?}");
    assert!(
        stderr.contains("cannot reach any coordinator") || stderr.contains("no leader"),
        "{stderr}"
    );

    cluster.restart(1);
    cluster.wait_for_leader(Duration::from_secs(60));
    // A Begin sent without quorum may have been committed since: close it.
    run(&mut cluster.client(&["abort", "--dataset", "inv"]), 0);
    let out = submit(&cluster, 0);
    let summary = text(&out.stdout);
    assert_eq!(figure(&summary, "unchanged"), 1_000, "{summary}");
    assert_eq!(figure(&summary, "new"), 0, "{summary}");
}
