//! Commands whose standard output is a pipe nobody reads any more
//! (`quern submit ... | head -0`) end quietly with 141 (128 + SIGPIPE, the
//! status a shell shows for `seq 1 1000000 | head -1`'s `seq`), without a
//! panic message, and having done their work. A standard error nobody
//! reads changes nothing: messages are not the result.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::Cluster;
use common::{edge_case_dataset, export, quern, tempdir};

/// 128 + SIGPIPE.
const BROKEN_PIPE: i32 = 141;

/// Runs `cmd` with its stdout a pipe whose reading end is already closed:
/// its first write fails with EPIPE.
fn with_stdout_closed(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer).output().expect("quern runs")
}

/// The same for stderr (`quern ingest ... 2>&1 | head -1`).
fn with_stderr_closed(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stderr(writer).output().expect("quern runs")
}

fn assert_quiet_broken_pipe(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(BROKEN_PIPE),
        "{what} exited {:?}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{what} said:\n{stderr}"
    );
}

#[test]
fn cert_commands_end_quietly_on_a_closed_stdout_after_writing_their_files() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let out = with_stdout_closed(quern(&data).args(["cert", "init", "--dir"]).arg(&certs));
    assert_quiet_broken_pipe("cert init", &out);
    let out = with_stdout_closed(
        quern(&data)
            .args(["cert", "issue", "--name", "client", "--dir"])
            .arg(&certs),
    );
    assert_quiet_broken_pipe("cert issue", &out);
    for file in ["ca.pem", "ca.key", "client.pem", "client.key"] {
        assert!(certs.join(file).is_file(), "{file} was not written");
    }
}

#[test]
fn submit_ends_quietly_on_a_closed_stdout_and_the_submission_stands() {
    let mut cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(30));
    let dir = tempdir();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::write(inputs.join("a.txt"), "one\ntwo\n").unwrap();
    let out = with_stdout_closed(
        cluster
            .client(&["submit", "--no-progress", "--dataset", "logs"])
            .arg(&inputs),
    );
    assert_quiet_broken_pipe("submit", &out);
    let status = cluster.status();
    let jobs = status["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{status:#}");
    assert_eq!(jobs[0]["new"], 1, "{status:#}");
    assert_eq!(jobs[0]["shards_pending"], 1, "{status:#}");
}

#[test]
fn ingest_commits_and_exits_0_when_nobody_reads_its_messages() {
    let dir = tempdir();
    let inputs = dir.path().join("inputs");
    let files = edge_case_dataset(&inputs, 4, 20_000, 7);
    let data = dir.path().join("data");
    // Without --no-progress: the progress lines, the plan and the summary
    // all go to the closed stderr.
    let out = with_stderr_closed(quern(&data).args(["ingest", "--dataset", "d"]).arg(&inputs));
    assert_eq!(out.status.code(), Some(0), "ingest exited {:?}", out.status);
    assert_eq!(export(&data, "d"), bench::oracle::sort_u(&files));
}
