//! Failures inside the pipeline, injected with fail points: a crashing
//! stage is named with its cause and the job fails cleanly; a file that
//! shrinks under the scanner is flagged and counted; a hung stage cannot
//! hold shutdown past its timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fail::FailScenario;
use node::config::IngestConfig;
use node::counters::JobCounters;
use node::ingest::{IngestError, IngestOutcome};
use node::store::catalog::JobState;
use node::store::{Access, Store};
use proto_schema::DatasetId;

fn lines_file(dir: &Path, name: &str, lines: usize) -> PathBuf {
    let path = dir.join(name);
    let text: String = (0..lines)
        .map(|i| format!("line {:06}\n", i % (lines / 2 + 1)))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn config(data: &Path) -> IngestConfig {
    IngestConfig {
        data_dir: data.to_path_buf(),
        memory_bytes: 16 << 20,
        threads: 2,
        batch_bytes: 4096,
        shutdown_timeout: Duration::from_secs(2),
        ..IngestConfig::default()
    }
}

fn run_job(
    store: &Arc<Store>,
    config: IngestConfig,
    inputs: Vec<PathBuf>,
    cancel_after: Option<Duration>,
) -> Result<IngestOutcome, IngestError> {
    let prepared = node::ingest::prepare(
        store.clone(),
        config,
        inputs,
        Arc::new(JobCounters::default()),
    )?;
    node::ingest::run(prepared, async move {
        match cancel_after {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
        "cancelled by the test".to_string()
    })
}

fn open(data: &Path) -> Arc<Store> {
    Arc::new(Store::open(data, 8 << 20, Access::ReadWrite).unwrap())
}

#[test]
fn a_crashing_stage_is_named_and_the_job_fails_cleanly() {
    let scenario = FailScenario::setup();
    let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Two files, so that even the per-shard fail point fires twice.
    let files = vec![
        lines_file(input.path(), "a.txt", 50_000),
        lines_file(input.path(), "b.txt", 50_000),
    ];
    let store = open(data.path());
    for (point, stage) in [
        ("scan-shard", "scan["),
        ("sort-merge-batch", "sort-merge["),
        ("dedup-batch", "dedup["),
        ("commit-batch", "commit["),
    ] {
        // Crash on the second message, once data is flowing.
        fail::cfg(point, "1*off->1*panic(injected crash)->off").unwrap();
        let err = run_job(&store, config(data.path()), files.clone(), None).unwrap_err();
        fail::remove(point);
        let message = err.to_string();
        assert!(
            message.contains(&format!("stage {stage}")) && message.contains("injected crash"),
            "{point}: {message}"
        );
        assert!(message.contains("nothing was committed"), "{message}");

        let job = store.jobs(DatasetId(1)).unwrap().pop().unwrap();
        assert!(
            matches!(&job.state, JobState::Failed { reason } if reason.contains("injected crash")),
            "{job:?}"
        );
        assert!(
            store.files(DatasetId(1), job.id).next().is_none(),
            "a failed job's ledger is removed"
        );
        let scratch: Vec<_> = std::fs::read_dir(store.tmp_dir()).unwrap().collect();
        assert!(
            scratch.is_empty(),
            "scratch left behind after {point}: {scratch:?}"
        );
    }
    // Nothing of the failed jobs is in the store, and the next job works.
    let mut exported = Vec::new();
    let dataset = store.existing_dataset("default").unwrap();
    assert_eq!(
        node::export::export(&store, &dataset, &mut exported).unwrap(),
        0
    );
    let outcome = run_job(&store, config(data.path()), files, None).unwrap();
    assert_eq!(
        (outcome.totals.unique, outcome.totals.duplicates),
        (25_001, 74_999)
    );
    scenario.teardown();
}

#[test]
fn a_file_that_shrinks_while_read_is_flagged_and_every_record_counted() {
    let scenario = FailScenario::setup();
    let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = lines_file(input.path(), "shrinking.txt", 1000);
    let victim = file.clone();
    // After listing, before the scan opens it: cut the file mid-line.
    fail::cfg_callback("scan-shard", move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap()
            .set_len(55)
            .unwrap();
    })
    .unwrap();
    let store = open(data.path());
    let outcome = run_job(&store, config(data.path()), vec![file], None).unwrap();
    fail::remove("scan-shard");

    let t = outcome.totals;
    // Lines are 12 bytes: 55 bytes hold four, then a 7-byte fragment that
    // is read and rejected as incomplete.
    assert_eq!(
        (t.read, t.unique, t.rejected, t.problem_files),
        (5, 4, 1, 1),
        "{t:?}"
    );
    let row = store.files(DatasetId(1), 1).next().unwrap().unwrap();
    let messages: Vec<_> = row.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        messages.iter().any(|m| m.contains(
            "file shrank while being read: it had 12000 bytes when listed, but ended at byte 55"
        )),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("12000 bytes when listed, 55 bytes now")),
        "{messages:?}"
    );
    let rejected = store.rejections(DatasetId(1), 1).next().unwrap().unwrap();
    assert_eq!(
        (
            rejected.offset,
            rejected
                .rejection
                .to_string()
                .contains("incomplete record of 7 bytes")
        ),
        (48, true)
    );
    scenario.teardown();
}

#[test]
fn a_hung_stage_cannot_hold_shutdown_past_its_timeout() {
    let scenario = FailScenario::setup();
    let (input, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = lines_file(input.path(), "in.txt", 200_000);
    let store = open(data.path());
    fail::cfg("dedup-batch", "pause").unwrap();
    let started = Instant::now();
    let mut cfg = config(data.path());
    cfg.shutdown_timeout = Duration::from_millis(500);
    let err = run_job(&store, cfg, vec![file], Some(Duration::from_millis(300))).unwrap_err();
    let elapsed = started.elapsed();
    fail::remove("dedup-batch"); // releases the paused stage
    // Once released, the stage finishes and lets go of everything it held:
    // nothing of the job outlives it (and the store is closed here, not
    // under the exit-time destructors of RocksDB's globals).
    let released = Instant::now();
    while Arc::strong_count(&store) > 1 {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "the released stage still holds the store"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(store);
    let message = err.to_string();
    assert!(message.contains("cancelled by the test"), "{message}");
    assert!(
        message.contains("did not stop in time: dedup["),
        "{message}"
    );
    // Cancel (0.3 s) + shutdown timeout (0.5 s) + the supervisor's grace
    // (1 s) + runtime teardown (1 s), with slack for a loaded machine.
    assert!(
        elapsed < Duration::from_secs(10),
        "shutdown took {elapsed:?}"
    );
    scenario.teardown();
}
