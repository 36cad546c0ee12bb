//! `quern dev`: one job through the cluster code in one process
//! (`embedded`), with the progress bar and summary of `quern ingest`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use embedded::{DEV_LEASE_MS, DevConfig, DevError};
use node::config::IngestConfig;
use node::counters::JobCounters;
use node::ingest::IngestError;
use node::leased_job::JobError;

use crate::args::DevArgs;
use crate::ingest::{self, EXIT_INTERRUPTED, EXIT_REJECTED};
use crate::logging::LogTarget;
use crate::progress::Progress;
use crate::report;

pub fn run(data: &Path, args: DevArgs, log: &LogTarget) -> anyhow::Result<ExitCode> {
    let ingest = IngestConfig {
        data_dir: data.to_path_buf(),
        dataset: ingest::dataset_name(args.dataset, args.sample),
        memory_bytes: args.memory,
        ..IngestConfig::default()
    };
    ingest.validate()?;
    std::fs::create_dir_all(data)?;
    let config = DevConfig {
        nodes: args.nodes,
        data_dir: data.to_path_buf(),
        ingest,
        inputs: if args.sample {
            vec![ingest::sample_input(data)?]
        } else {
            args.paths
        },
        lease_ms: DEV_LEASE_MS,
    };
    let counters = Arc::new(JobCounters::default());
    let interrupted = AtomicBool::new(false);
    let mut progress = None;
    let outcome = embedded::run(
        config,
        counters.clone(),
        async {
            let _ = tokio::signal::ctrl_c().await;
            interrupted.store(true, Ordering::Relaxed);
            "interrupted by Ctrl-C".to_string()
        },
        |submitted| {
            let c = submitted.counts;
            tell!(
                "quern: submitted job {}: {} files ({} new, {} changed, {} unchanged, {} gone), \
                 {} shards to read, in {}",
                submitted.submission,
                submitted.files,
                c.new,
                c.changed,
                c.unchanged,
                submitted.gone,
                submitted.pending_shards,
                data.display()
            );
            progress = Some(Progress::start(counters.clone(), !args.no_progress, log));
        },
    );
    if let Some(progress) = progress {
        progress.finish();
    }
    let code = match outcome {
        Ok(dev) => {
            let clean = report::ingest_summary(&dev.nodes[0].store, &dev.combined(), &counters)?;
            if clean { 0 } else { EXIT_REJECTED }
        }
        Err(DevError::Usage(reason)) => {
            tell!("quern: error: {reason}");
            crate::EXIT_USAGE
        }
        Err(DevError::Job(JobError::Ingest(
            e @ (IngestError::Failed { .. } | IngestError::Staged { .. }),
        ))) => {
            tell!("quern: {e}");
            if interrupted.load(Ordering::Relaxed) {
                EXIT_INTERRUPTED
            } else {
                1
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok(ExitCode::from(code))
}
