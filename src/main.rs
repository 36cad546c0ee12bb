//! `quern`: the command-line front of Quern. Parsing, progress and output
//! live here; the work is done by the `node` crate.

mod args;
mod ingest;
mod logging;
mod progress;
mod query;
mod report;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let log = logging::init(cli.verbose);
    let result = match cli.command {
        args::Command::Ingest(args) => ingest::run(&cli.data, args, &log),
        args::Command::Export(args) => query::export(&cli.data, args),
        args::Command::Get(args) => query::get(&cli.data, args),
        args::Command::Stats(args) => report::stats(&cli.data, args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("quern: error: {e:#}");
        ExitCode::FAILURE
    })
}
