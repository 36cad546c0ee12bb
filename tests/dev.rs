//! `quern dev` end to end through the binary: a job through the cluster
//! code (an embedded coordinator, a node leasing shards) gives what
//! `quern ingest` gives: the export equals `LC_ALL=C sort -u`, the counters
//! are the same and reconcile, and every key's first sighting is the same
//! file and offset.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::*;

fn dev(data: &Path, args: &[&str], inputs: &[&Path], expected: i32) -> std::process::Output {
    let mut cmd = quern(data);
    cmd.args(["dev", "--no-progress"]).args(args).args(inputs);
    run(&mut cmd, expected)
}

fn get(data: &Path, key: &[u8]) -> Vec<u8> {
    run(
        quern(data)
            .args(["get", "--dataset", "lines", "--"])
            .arg(OsStr::from_bytes(key)),
        0,
    )
    .stdout
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

    // Every 50th key, and the duplicated ones: the same record, file and
    // offset.
    let keys: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    for key in keys.iter().step_by(50).filter(|k| !k.is_empty()) {
        assert_eq!(
            String::from_utf8_lossy(&get(dev_data.path(), key)),
            String::from_utf8_lossy(&get(ingest_data.path(), key)),
            "key {}",
            key.escape_ascii()
        );
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
