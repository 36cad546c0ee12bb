//! `quern`: the command-line front of Quern. Parsing, progress and output
//! live here; the work is done by the `node` crate (ingest) and the
//! `coordinator` and `coordinator-client` crates (the cluster).

// `println!` panics when stdout is a closed pipe (`quern submit | head`:
// Rust ignores SIGPIPE, so the write fails with EPIPE). Output goes
// through `writeln!` and `?` instead, and `main` ends quietly on a broken
// pipe.
#![deny(clippy::print_stdout)]
// `eprintln!` panics too when stderr is a closed pipe (`quern ingest 2>&1 |
// head -1`); messages go through `tell!`.
#![deny(clippy::print_stderr)]

/// Writes a line for the user to stderr, best effort: messages are not the
/// result, so a stderr nobody reads any more neither stops the work nor
/// changes the exit status.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod cert;
mod cluster_client;
mod config_file;
mod coordinator_cmd;
mod dev;
mod dev_serve;
mod ingest;
mod logging;
mod metrics_endpoint;
mod node_cmd;
mod open_files;
mod progress;
mod query;
mod report;
mod status;
mod status_page;
mod submit;
mod submit_wait;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use config_file::ConfigFile;

// mimalloc, counting live bytes per actor (see `node::memory::tracking`).
#[cfg(not(feature = "untracked-allocator"))]
node::install_tracking_allocator!();
// The same without accounting, to measure its cost (bench/allocator-overhead).
#[cfg(feature = "untracked-allocator")]
node::install_untracked_allocator!();

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            tell!("quern: error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log = logging::init(cli.verbose);
    open_files::raise_to_hard_limit();
    let metrics = match cli.metrics.map(metrics_endpoint::serve).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tell!("quern: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        args::Command::Ingest(args) => ingest::run(&cli.data, args, &log),
        args::Command::Export(args) => query::export(&cli.data, args),
        args::Command::Get(args) => query::get(&cli.data, args),
        args::Command::Stats(args) => report::stats(&cli.data, args),
        args::Command::Cert(args) => cert::run(args),
        args::Command::Coordinator(args) => coordinator_cmd::run(args, metrics.as_ref()),
        args::Command::Node(args) => node_cmd::run(args),
        args::Command::Status(args) => status::run(args),
        args::Command::Submit(args) => submit::run(args),
        args::Command::Abort(args) => submit::abort_open(args),
        args::Command::Dev(args) if args.serve => dev_serve::run(&cli.data, args, metrics.as_ref()),
        args::Command::Dev(args) => dev::run(&cli.data, args, &log),
    };
    result.unwrap_or_else(|e| {
        if is_broken_pipe(&e) {
            // The reader went away (`quern export | head`): stop quietly, as
            // `sort` would when killed by SIGPIPE.
            return ExitCode::from(EXIT_BROKEN_PIPE);
        }
        tell!("quern: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// Parses the command line over the defaults of the configuration file,
/// if one is named, and checks the rules clap cannot express. clap prints
/// its own errors and exits.
fn parse_command_line() -> anyhow::Result<args::Cli> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let file = match ConfigFile::path_from(&argv, std::env::var_os(config_file::ENV)) {
        Some(path) => ConfigFile::read(&path)?,
        None => ConfigFile::default(),
    };
    let matches = file.apply(args::Cli::command()).get_matches_from(argv);
    let cli = args::Cli::from_arg_matches(&matches)?;
    cli.check_usage().map_err(anyhow::Error::msg)?;
    Ok(cli)
}

/// Bad usage, as clap exits with.
pub const EXIT_USAGE: u8 = 2;

/// 128 + SIGPIPE.
const EXIT_BROKEN_PIPE: u8 = 141;

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
