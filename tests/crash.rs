//! SIGKILL in the middle of an ingest, then the same command again: the
//! store ends exactly as if the first run had never been interrupted, and the
//! killed run leaves nothing behind.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::oracle::sort_u;
use common::*;

/// True once a file with `extension` exists in any job scratch directory.
fn scratch_has(data: &Path, extension: &str) -> bool {
    let Ok(jobs) = std::fs::read_dir(data.join("tmp")) else {
        return false;
    };
    jobs.flatten().any(|job| {
        std::fs::read_dir(job.path())
            .map(|files| {
                files
                    .flatten()
                    .any(|f| f.path().extension().is_some_and(|e| e == extension))
            })
            .unwrap_or(false)
    })
}

fn kill_when(data: &Path, input: &Path, extension: &str) {
    let mut child = quern(data)
        .args([
            "ingest",
            "--no-progress",
            "--memory",
            "16M",
            "--threads",
            "2",
            "--max-open-runs",
            "4",
        ])
        .arg(input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !scratch_has(data, extension) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest ended before a .{extension} file appeared: enlarge the input"
        );
        assert!(Instant::now() < deadline, "no .{extension} file appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn a_killed_ingest_rerun_matches_an_uninterrupted_one() {
    let input = tempdir();
    let files = edge_case_dataset(input.path(), 4, 12_000_000, 3);
    let expected = sort_u(&files);

    // Killed while spilling runs (scan phase), and while writing SST files
    // (commit phase).
    for phase in ["qrun", "sst"] {
        let data = tempdir();
        kill_when(data.path(), input.path(), phase);
        assert!(
            scratch_has(data.path(), phase),
            "the killed run left its scratch files"
        );

        ingest(data.path(), &["--memory", "16M"], &[input.path()]);
        assert!(
            export(data.path(), "default") == expected,
            "export after kill in {phase} phase differs from sort -u"
        );
        let leftovers: Vec<_> = std::fs::read_dir(data.path().join("tmp"))
            .unwrap()
            .collect();
        assert!(
            leftovers.is_empty(),
            "scratch files survived: {leftovers:?}"
        );

        let stats = stats_json(data.path(), "default", None);
        assert_eq!(
            stats["jobs"][0]["state"], "interrupted",
            "{}",
            stats["jobs"]
        );
        assert_eq!(stats["jobs"][1]["state"], "committed");
        // The interrupted job left no data, so the re-run was alone and
        // could write with puts.
        assert_eq!(stats["jobs"][1]["write_mode"], "put");
        let t = &stats["jobs"][1]["totals"];
        assert_eq!(
            t["read"],
            t["unique"].as_u64().unwrap() + t["duplicates"].as_u64().unwrap()
        );
    }
}
