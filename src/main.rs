//! `quern`: the command-line front of Quern. Parsing, progress and output
//! live here; the work is done by the `node` crate.

mod args;
mod ingest;
mod logging;
mod metrics_endpoint;
mod progress;
mod query;
mod report;

use std::process::ExitCode;

use clap::Parser;

// mimalloc, counting live bytes per actor (see `node::memory::tracking`).
node::install_tracking_allocator!();

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let log = logging::init(cli.verbose);
    let _metrics = match cli.metrics.map(metrics_endpoint::serve).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("quern: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        args::Command::Ingest(args) => ingest::run(&cli.data, args, &log),
        args::Command::Export(args) => query::export(&cli.data, args),
        args::Command::Get(args) => query::get(&cli.data, args),
        args::Command::Stats(args) => report::stats(&cli.data, args),
    };
    result.unwrap_or_else(|e| {
        if is_broken_pipe(&e) {
            // The reader went away (`quern export | head`): stop quietly, as
            // `sort` would when killed by SIGPIPE.
            return ExitCode::from(EXIT_BROKEN_PIPE);
        }
        eprintln!("quern: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// 128 + SIGPIPE.
const EXIT_BROKEN_PIPE: u8 = 141;

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
