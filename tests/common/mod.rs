//! Helpers for driving the `quern` binary in tests.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod cluster;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bench::datagen::{Compression, LinesSpec};

/// A `quern` command on the store at `data`, isolated from the caller's
/// environment.
pub fn quern(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quern"));
    isolate(&mut cmd);
    cmd.arg("--data").arg(data);
    cmd
}

/// Removes the caller's `QUERN_*` settings from `cmd`'s environment and
/// logs warnings only.
pub fn isolate(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("QUERN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
}

/// Runs and returns the output, failing the test with stderr if the exit
/// status is not `expected`.
pub fn run(cmd: &mut Command, expected: i32) -> Output {
    let out = cmd.output().expect("quern runs");
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{cmd:?} exited {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn ingest(data: &Path, args: &[&str], inputs: &[&Path]) -> Output {
    ingest_expecting(data, args, inputs, 0)
}

pub fn ingest_expecting(data: &Path, args: &[&str], inputs: &[&Path], status: i32) -> Output {
    let mut cmd = quern(data);
    cmd.arg("ingest")
        .arg("--no-progress")
        .args(args)
        .args(inputs);
    run(&mut cmd, status)
}

/// `quern ingest` run in `cwd` with `stdin` written into its standard
/// input through a pipe, as `zcat big.gz | quern ingest -` does.
pub fn ingest_piped(
    data: &Path,
    cwd: &Path,
    args: &[&str],
    stdin: Vec<u8>,
    expected: i32,
) -> Output {
    let mut cmd = quern(data);
    cmd.current_dir(cwd)
        .args(["ingest", "--no-progress"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("quern runs");
    let mut pipe = child.stdin.take().unwrap();
    // Dropping the pipe at the end is the end of input. A quern that
    // stops reading early (bad usage) closes it: that is not our failure.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("quern runs");
    writer.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{cmd:?} exited {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn export(data: &Path, dataset: &str) -> Vec<u8> {
    run(quern(data).args(["export", "--dataset", dataset]), 0).stdout
}

pub fn stats_json(data: &Path, dataset: &str, job: Option<u32>) -> serde_json::Value {
    let mut cmd = quern(data);
    cmd.args(["stats", "--json", "--dataset", dataset]);
    if let Some(job) = job {
        cmd.args(["--job", &job.to_string()]);
    }
    serde_json::from_slice(&run(&mut cmd, 0).stdout).expect("stats --json is JSON")
}

/// Input files in `dir`, in the order quern lists them.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Generated lines with every edge case, duplicates within and across
/// files, and gzip and zstd members, plus a hand-written file of the
/// nastiest bytes.
pub fn edge_case_dataset(dir: &Path, files: usize, bytes_per_file: u64, seed: u64) -> Vec<PathBuf> {
    let spec = LinesSpec {
        files,
        bytes_per_file,
        min_len: 0,
        max_len: 80,
        duplicate_ratio: 0.3,
        edge_cases: true,
        compression: vec![
            Compression::Plain,
            Compression::Gzip,
            Compression::Plain,
            Compression::Zstd,
        ],
        seed,
    };
    bench::datagen::write_lines_dataset(dir, &spec).unwrap();
    let mut handmade = std::fs::File::create(dir.join("zz-handmade.txt")).unwrap();
    handmade
        .write_all(
            b"b\r\n\n\nA\0z\n\xff\xfe\n  spaced \n\t\nb\r\nb\nB\n\n\xff\xfe\nno-newline-at-end",
        )
        .unwrap();
    files_in(dir)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
