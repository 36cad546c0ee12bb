//! `quern ingest`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bytesize::ByteSize;
use node::config::{Format, IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::ingest::IngestError;
use node::store::{Access, Store};

use crate::args::{FormatArg, IngestArgs};
use crate::logging::LogTarget;
use crate::progress::Progress;
use crate::report;

/// Exit status of a job that committed but rejected some input.
pub const EXIT_REJECTED: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn run(data: &Path, args: IngestArgs, log: &LogTarget) -> anyhow::Result<ExitCode> {
    let defaults = IngestConfig::default();
    let config = IngestConfig {
        data_dir: data.to_path_buf(),
        dataset: dataset_name(args.dataset.clone(), args.sample),
        format: match args.format {
            FormatArg::Lines => Format::Lines,
            FormatArg::Tsv => Format::Tsv {
                key_field: args.key_field,
            },
        },
        memory_bytes: args.memory,
        threads: args.threads.unwrap_or(defaults.threads),
        partitions: args.partitions,
        max_record_bytes: args.max_record,
        batch_bytes: args.tuning.batch_bytes,
        split_bytes: args.tuning.split_bytes,
        follow_links: args.follow,
        max_open_runs: args.tuning.max_open_runs,
        sst_target_bytes: args.tuning.sst_target,
        shutdown_timeout: args.tuning.shutdown_timeout,
    };
    // `prepare` validates too; checking first refuses bad flags before the
    // store directory is created.
    config.validate()?;
    let store = Store::open(
        data,
        MemoryPlan::rocksdb_cache_bytes(config.memory_bytes),
        Access::ReadWrite,
    )
    .with_context(|| format!("opening the store at {}", data.display()))?;
    let store = Arc::new(store);
    let inputs = if args.sample {
        vec![sample_input(data)?]
    } else {
        args.paths
    };

    let counters = Arc::new(JobCounters::default());
    let prepared = node::ingest::prepare(store.clone(), config, inputs, counters.clone())?;
    tell!(
        "quern: ingesting into dataset {:?} (job {}, {} partitions) in {}",
        prepared.dataset().name,
        prepared.job().id,
        prepared.dataset().partitions,
        data.display()
    );
    tell!("quern: {}", prepared.plan());

    let interrupted = AtomicBool::new(false);
    let progress = Progress::start(counters.clone(), !args.no_progress, log);
    let outcome = node::ingest::run(prepared, async {
        let _ = tokio::signal::ctrl_c().await;
        interrupted.store(true, Ordering::Relaxed);
        "interrupted by Ctrl-C".to_string()
    });
    progress.finish();
    let code = match outcome {
        Ok(outcome) => {
            let clean = report::ingest_summary(&store, &outcome, &counters)?;
            if clean { 0 } else { EXIT_REJECTED }
        }
        Err(e @ IngestError::Failed { .. }) => {
            tell!("quern: {e}");
            if interrupted.load(Ordering::Relaxed) {
                EXIT_INTERRUPTED
            } else {
                1
            }
        }
        Err(e) => return Err(e.into()),
    };
    if Arc::strong_count(&store) > 1 {
        // A stage that would not stop still runs and holds the store. Exit
        // now, without the exit-time destructors: they tear down RocksDB's
        // globals, and a stage waking under them would abort the process
        // instead of letting it end with its status. Everything the job
        // committed is already durable.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once; nothing runs after it.
        unsafe { libc::_exit(i32::from(code)) }
    }
    Ok(ExitCode::from(code))
}

/// The dataset a job writes: as named, else `sample` for the generated
/// sample and `default` otherwise.
pub fn dataset_name(named: Option<String>, sample: bool) -> String {
    named.unwrap_or_else(|| if sample { "sample" } else { "default" }.to_string())
}

/// The generated sample input under the data directory, made on first use.
pub fn sample_input(data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("sample-input");
    let generated = bench::datagen::ensure_sample_dataset(&dir)
        .with_context(|| format!("generating sample data in {}", dir.display()))?;
    if let Some(generated) = generated {
        tell!(
            "quern: generated sample data: {} files, {} records, {} uncompressed, in {}",
            generated.files.len(),
            generated.records,
            ByteSize(generated.uncompressed_bytes).display().iec(),
            dir.display()
        );
    }
    Ok(dir)
}
