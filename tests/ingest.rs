//! End to end through the binary: the export equals `LC_ALL=C sort -u` of
//! the inputs, whatever the memory budget, thread count or batch size, and
//! ingesting again changes nothing.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bench::oracle::sort_u;
use common::*;

/// Compares exports without dumping megabytes on failure.
fn assert_same_lines(label: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&[u8]>, Vec<&[u8]>) = (
        got.split(|&b| b == b'\n').collect(),
        want.split(|&b| b == b'\n').collect(),
    );
    let first = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{label}: {} lines vs {} expected; first difference at line {first}: got {:?}, want {:?}",
        g.len(),
        w.len(),
        g.get(first).map(|l| l.escape_ascii().to_string()),
        w.get(first).map(|l| l.escape_ascii().to_string()),
    );
}

/// `quern get` output for a key: the record and where it was first seen.
fn provenance(data: &Path, dataset: &str, key: &[u8]) -> String {
    let out = run(
        quern(data)
            .args(["get", "--dataset", dataset, "--"])
            .arg(OsStr::from_bytes(key)),
        0,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs spilled and extra merge passes, from an ingest summary.
fn sort_work(summary: &str) -> (u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.contains("runs spilled"))
        .expect("summary reports sort work");
    // Counts are printed with thousands separators.
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .map(|s| s.replace(',', ""))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn export_is_byte_identical_to_sort_u() {
    let (input, data) = (tempdir(), tempdir());
    let files = edge_case_dataset(input.path(), 6, 400_000, 7);
    let out = ingest(data.path(), &["--dataset", "lines"], &[input.path()]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("committed job 1 of dataset \"lines\""),
        "{summary}"
    );
    assert!(
        summary.contains("memory budget 512 MiB"),
        "the plan is printed at start: {summary}"
    );

    let expected = sort_u(&files);
    assert_same_lines(
        "export vs sort -u",
        &export(data.path(), "lines"),
        &expected,
    );

    // The counters reconcile, and unique equals the exported line count.
    let stats = stats_json(data.path(), "lines", None);
    let totals = &stats["jobs"][0]["totals"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(
        n(&totals["read"]),
        n(&totals["unique"]) + n(&totals["duplicates"]) + n(&totals["rejected"])
    );
    assert_eq!(
        n(&totals["unique"]),
        expected.iter().filter(|&&b| b == b'\n').count() as u64
    );
    assert_eq!(n(&totals["rejected"]), 0);
    let files_json = stats["files"].as_array().unwrap();
    assert_eq!(files_json.len(), files.len());
    let summed: u64 = files_json.iter().map(|f| n(&f["unique"])).sum();
    assert_eq!(
        summed,
        n(&totals["unique"]),
        "per-file counts add up to the job's"
    );
    for f in files_json {
        assert_eq!(
            n(&f["read"]),
            n(&f["unique"]) + n(&f["duplicates"]) + n(&f["rejected"]),
            "{f}"
        );
    }
}

#[test]
fn budgets_threads_and_batch_sizes_do_not_change_the_result() {
    let input = tempdir();
    let files = edge_case_dataset(input.path(), 8, 3_000_000, 11);
    let expected = sort_u(&files);
    let configs: [&[&str]; 3] = [
        // Tiny: many spills, two-way merges in several passes, range shards.
        &[
            "--memory",
            "16M",
            "--threads",
            "1",
            "--batch-bytes",
            "4K",
            "--max-open-runs",
            "2",
            "--split-bytes",
            "1M",
        ],
        &["--memory", "512M", "--threads", "4"],
        &[
            "--memory",
            "48M",
            "--threads",
            "3",
            "--batch-bytes",
            "64K",
            "--split-bytes",
            "1M",
            "--partitions",
            "7",
        ],
    ];
    let mut results = Vec::new();
    for args in configs {
        let data = tempdir();
        let out = ingest(data.path(), args, &[input.path()]);
        let exported = export(data.path(), "default");
        assert_same_lines(&format!("{args:?}"), &exported, &expected);
        let stats = stats_json(data.path(), "default", None);
        let keys: Vec<&[u8]> = exported.split(|&b| b == b'\n').step_by(997).collect();
        let provenances: Vec<String> = keys
            .iter()
            .map(|k| provenance(data.path(), "default", k))
            .collect();
        results.push((
            args,
            String::from_utf8_lossy(&out.stderr).into_owned(),
            stats["files"].clone(),
            stats["jobs"][0]["totals"].clone(),
            provenances,
        ));
    }
    let (runs, passes) = sort_work(&results[0].1);
    assert!(
        runs > 4 && passes > 0,
        "the tiny budget should force spills and multi-pass merges: {}",
        results[0].1
    );
    let (_, _, files0, totals0, provenance0) = &results[0];
    for (args, _, files, totals, provenance) in &results[1..] {
        assert_eq!(files, files0, "per-file counters differ under {args:?}");
        assert_eq!(totals, totals0, "job totals differ under {args:?}");
        assert_eq!(
            provenance, provenance0,
            "first sightings differ under {args:?}"
        );
    }
}

#[test]
fn ingesting_again_changes_nothing_and_new_files_add_to_the_set() {
    let (first, second, data) = (tempdir(), tempdir(), tempdir());
    let first_files = edge_case_dataset(first.path(), 3, 200_000, 21);
    let second_files = edge_case_dataset(second.path(), 3, 200_000, 22);
    ingest(data.path(), &[], &[first.path()]);
    let once = export(data.path(), "default");
    let key = once.split(|&b| b == b'\n').nth(100).unwrap().to_vec();
    let seen_first = provenance(data.path(), "default", &key);
    assert!(seen_first.contains("(job 1)"), "{seen_first}");

    ingest(data.path(), &[], &[first.path()]);
    assert_same_lines("re-ingest", &export(data.path(), "default"), &once);
    assert_eq!(
        provenance(data.path(), "default", &key),
        seen_first,
        "a re-ingest must not move first sightings"
    );
    let stats = stats_json(data.path(), "default", Some(2));
    assert_eq!(stats["jobs"][1]["state"], "committed");
    assert_eq!(stats["jobs"][1]["write_mode"], "merge");

    ingest(data.path(), &[], &[second.path(), first.path()]);
    let all: Vec<_> = first_files.iter().chain(&second_files).cloned().collect();
    assert_same_lines("union", &export(data.path(), "default"), &sort_u(&all));
    assert_eq!(provenance(data.path(), "default", &key), seen_first);
}

#[test]
fn tsv_keeps_the_first_record_of_each_key() {
    let (input, data) = (tempdir(), tempdir());
    std::fs::write(input.path().join("a.tsv"), "k1\tfirst\nk2\tx\nk1\tsecond\n").unwrap();
    std::fs::write(input.path().join("b.tsv"), "k2\tlater\nk0\tz\n").unwrap();
    ingest(
        data.path(),
        &["--format", "tsv", "--key-field", "1", "--dataset", "t"],
        &[input.path()],
    );
    assert_eq!(export(data.path(), "t"), b"k0\tz\nk1\tfirst\nk2\tx\n");
    let found = provenance(data.path(), "t", b"k1");
    assert!(found.starts_with("k1\tfirst\n"), "{found}");
    assert!(found.contains("a.tsv:0 (job 1)"), "{found}");

    // A dataset keeps its format.
    let out = ingest_expecting(data.path(), &["--dataset", "t"], &[input.path()], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dataset \"t\" holds tsv (key field 1) records; this ingest reads lines"),
        "{err}"
    );
}

#[test]
fn the_sample_job_runs_and_readers_explain_themselves() {
    let data = tempdir();
    let out = run(
        quern(data.path()).args(["ingest", "--sample", "--no-progress"]),
        0,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("generated sample data: 8 files"), "{err}");
    let input = data.path().join("sample-input");
    assert_same_lines(
        "sample",
        &export(data.path(), "sample"),
        &sort_u(&files_in(&input)),
    );

    let missing = run(
        quern(data.path()).args(["get", "--dataset", "sample", "no such key"]),
        1,
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not in dataset \"sample\""));
    let unknown = run(quern(data.path()).args(["export", "--dataset", "nope"]), 1);
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no dataset \"nope\"; the store has: sample")
    );
    let text = run(quern(data.path()).args(["stats", "--dataset", "sample"]), 0);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("files of job 1:") && text.contains("part-00000.txt"),
        "{text}"
    );
}

#[test]
fn the_store_is_never_read_back_as_input() {
    let dir = tempdir();
    std::fs::write(dir.path().join("a.txt"), "x\ny\n").unwrap();
    let data = dir.path().join("quern-data");
    // Ingest the directory that holds the store, twice: the second walk
    // passes the store's RocksDB files and must skip them.
    ingest(&data, &[], &[dir.path()]);
    ingest(&data, &[], &[dir.path()]);
    assert_eq!(export(&data, "default"), b"x\ny\n");
    let stats = stats_json(&data, "default", None);
    assert_eq!(stats["jobs"][1]["totals"]["files"], 1, "{}", stats["files"]);
}

/// Lines of standard input in the stdin tests: more than `--split-bytes
/// 1M`, with duplicates, a key shared with a file before it and one with
/// a file after it, and a last line without a newline.
fn piped_lines() -> Vec<u8> {
    let mut lines: Vec<u8> = (0..150_000)
        .flat_map(|i| format!("piped-{:06}\n", i % 100_000).into_bytes())
        .collect();
    lines.extend_from_slice(b"shared-before\nshared-after\nno-newline-at-end");
    lines
}

#[test]
fn standard_input_is_read_whole_in_its_place_among_the_paths() {
    let (input, oracle) = (tempdir(), tempdir());
    let dir = input.path();
    std::fs::write(dir.join("before.txt"), "shared-before\nbefore-only\n").unwrap();
    // A file named `-`, matched by a glob: a file, not standard input.
    std::fs::write(dir.join("-"), "shared-after\nafter-only\n").unwrap();
    let piped = piped_lines();
    let piped_copy = oracle.path().join("piped");
    std::fs::write(&piped_copy, &piped).unwrap();
    let expected = sort_u(&[dir.join("before.txt"), piped_copy, dir.join("-")]);
    let zstd = zstd::encode_all(&piped[..], 3).unwrap();

    for (label, stdin) in [("plain", piped.clone()), ("zstd", zstd)] {
        let data = tempdir();
        let args = ["--split-bytes", "1M", "before.txt", "-", "[-]"];
        let out = ingest_piped(data.path(), dir, &args, stdin, 0);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(!summary.contains("changed while"), "{label}: {summary}");
        assert_same_lines(label, &export(data.path(), "default"), &expected);

        // Manifest order is argument order; standard input is `-`, size
        // unknown (0), and its records are counted like a file's.
        let stats = stats_json(data.path(), "default", None);
        let files = stats["files"].as_array().unwrap();
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["before.txt", "-", "./-"], "{label}");
        assert_eq!(n(&files[1]["size"]), 0, "{label}");
        assert_eq!(n(&files[1]["read"]), 150_003, "{label}");
        for f in files {
            assert_eq!(
                n(&f["read"]),
                n(&f["unique"]) + n(&f["duplicates"]) + n(&f["rejected"]),
                "{label}: {f}"
            );
        }
        let seen = |key: &[u8]| provenance(data.path(), "default", key);
        assert!(seen(b"shared-before").contains("first seen at before.txt:0"));
        let after_offset = piped.len() - "shared-after\nno-newline-at-end".len();
        assert!(
            seen(b"shared-after").contains(&format!("first seen at -:{after_offset} ")),
            "{label}: {}",
            seen(b"shared-after")
        );
    }
}

#[test]
fn standard_input_given_twice_is_bad_usage() {
    let (input, data) = (tempdir(), tempdir());
    let out = ingest_piped(data.path(), input.path(), &["-", "-"], b"x\n".to_vec(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("- (standard input) can be given only once"),
        "{err}"
    );
    let made: Vec<_> = std::fs::read_dir(data.path()).unwrap().collect();
    assert!(made.is_empty(), "bad usage opens no store: {made:?}");
}

#[test]
fn links_inside_directories_are_read_only_with_follow() {
    let (input, data) = (tempdir(), tempdir());
    let d = input.path();
    let (tree, elsewhere) = (d.join("tree"), d.join("elsewhere"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(tree.join("a.txt"), "a\nshared\n").unwrap();
    std::fs::write(elsewhere.join("e.txt"), "e\nshared\n").unwrap();
    std::fs::write(d.join("single.txt"), "single\n").unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, tree.join(name));
    link(&elsewhere, "dir-link").unwrap();
    link(&d.join("single.txt"), "file-link").unwrap();

    // Skipped and counted, but not input files: not listed, no records.
    let out = ingest(data.path(), &["--dataset", "skip"], &[&tree]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(
            "skipped 2 symbolic links inside directories (not input files); --follow reads them"
        ),
        "{summary}"
    );
    assert_eq!(export(data.path(), "skip"), sort_u(&[tree.join("a.txt")]));
    assert_eq!(
        stats_json(data.path(), "skip", None)["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A link named on the command line is read.
    ingest(
        data.path(),
        &["--dataset", "named"],
        &[&tree.join("file-link")],
    );
    assert_eq!(export(data.path(), "named"), b"single\n");

    // Followed, with a loop reported by its path and never walked again.
    link(&tree, "loop").unwrap();
    let out = ingest_expecting(
        data.path(),
        &["--dataset", "follow", "--follow"],
        &[&tree],
        3,
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    let loop_problem = format!(
        "problem: {}: cannot read: symbolic link loop: it leads back to {}, which is being walked",
        tree.join("loop").display(),
        tree.display()
    );
    assert!(summary.contains(&loop_problem), "{summary}");
    assert!(!summary.contains("skipped"), "{summary}");
    assert_eq!(
        export(data.path(), "follow"),
        sort_u(&[
            tree.join("a.txt"),
            elsewhere.join("e.txt"),
            d.join("single.txt")
        ])
    );
}
