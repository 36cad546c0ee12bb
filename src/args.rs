//! Command-line arguments. Many flags also read a `QUERN_*` environment
//! variable; the configuration file (`config_file`) can replace defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use node::input::listing::STDIN;

#[derive(Parser, Debug)]
#[command(
    name = "quern",
    version,
    about = "Turn huge collections of line-oriented files into a deduplicated, sorted, queryable store",
    after_help = "Sizes are binary: 512K, 128M (= 128 MiB), 1G, 1GiB.\n\
                  Exit status: 0 ok; 1 error (nothing committed); 2 bad usage; \
                  3 committed, but some records or files were rejected (see `quern stats`); \
                  130 interrupted."
)]
pub struct Cli {
    /// Read defaults from this TOML file (keys are the flags' names; see
    /// README). Flags and environment variables override it.
    #[arg(long, global = true, env = "QUERN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory holding the store.
    #[arg(long, global = true, env = "QUERN_DATA", default_value = "quern-data")]
    pub data: PathBuf,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9898) while
    /// the command runs.
    #[arg(long, global = true, env = "QUERN_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The rules of usage clap cannot express.
    pub fn check_usage(&self) -> Result<(), String> {
        match &self.command {
            Command::Ingest(ingest) => ingest.check_usage(),
            _ => Ok(()),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ingest files, directories, globs or standard input into a dataset.
    Ingest(IngestArgs),
    /// Write a dataset's records to stdout (or a file) in sorted order.
    Export(ExportArgs),
    /// Show a key's record and where it was first seen.
    Get(GetArgs),
    /// Show counters per job and per file, with rejected records.
    Stats(StatsArgs),
    /// Make the cluster's certificate authority and issue certificates.
    Cert(CertArgs),
    /// Run a coordinator replica: Raft and the client API over QUIC.
    Coordinator(CoordinatorArgs),
    /// Run a node: registers with the coordinators, heartbeats, and ingests
    /// each submitted job's shards into its store until stopped.
    Node(NodeArgs),
    /// Show the cluster: leader, term, members' health, datasets and jobs.
    Status(StatusArgs),
    /// Submit a manifest (or a directory's files) to the coordinators.
    Submit(SubmitArgs),
    /// Abort a dataset's open submission (one whose `quern submit` died):
    /// none of it counts, and the dataset takes submissions again.
    Abort(AbortArgs),
    /// Run a job through the cluster code in one process: a one-member
    /// coordinator and nodes, data under --data; exits once committed.
    Dev(DevArgs),
}

#[derive(Args, Debug)]
pub struct DatasetArg {
    /// Dataset name.
    #[arg(long, env = "QUERN_DATASET", default_value = "default")]
    pub dataset: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatArg {
    /// One record per line; the key is the whole line.
    Lines,
    /// Tab-separated fields; the key is --key-field, the value the record.
    Tsv,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files, directories (walked in name order), quoted globs, or `-` for
    /// standard input (at most once; a file named - is ./-). Symbolic links
    /// named here are read; links inside directories need --follow.
    #[arg(required_unless_present = "sample", conflicts_with = "sample")]
    pub paths: Vec<PathBuf>,

    /// Follow symbolic links inside directories (a link that leads back to
    /// a directory being walked is reported as a problem). Without it they
    /// are skipped, and the summary counts them.
    #[arg(short = 'L', long)]
    pub follow: bool,

    /// Ingest a small generated sample dataset (into dataset "sample"
    /// unless --dataset is given).
    #[arg(long)]
    pub sample: bool,

    /// Dataset name [default: default, or sample with --sample].
    #[arg(long, env = "QUERN_DATASET")]
    pub dataset: Option<String>,

    /// Memory budget for the whole node.
    #[arg(long, env = "QUERN_MEMORY", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    #[arg(long, value_enum, default_value_t = FormatArg::Lines)]
    pub format: FormatArg,

    /// The key field of tsv records (1-based).
    #[arg(long, default_value_t = 1)]
    pub key_field: usize,

    /// Longer records are rejected and quarantined.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub max_record: u64,

    /// Scan workers and sort lanes [default: number of cores].
    #[arg(long, env = "QUERN_THREADS")]
    pub threads: Option<usize>,

    /// Partitions of a new dataset [default: 64; fixed once created].
    #[arg(long)]
    pub partitions: Option<u16>,

    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub tuning: TuningArgs,
}

impl IngestArgs {
    /// Standard input can be read only once.
    fn check_usage(&self) -> Result<(), String> {
        let stdin = self.paths.iter().filter(|p| p.as_os_str() == STDIN);
        if stdin.count() > 1 {
            return Err(format!(
                "{STDIN} (standard input) can be given only once; name a file called {STDIN} as ./{STDIN}"
            ));
        }
        Ok(())
    }
}

/// Limits most jobs never need to change.
#[derive(Args, Debug)]
#[command(next_help_heading = "Tuning")]
pub struct TuningArgs {
    /// Target size of a batch between stages.
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    pub batch_bytes: u64,

    /// Plain files larger than this are scanned in parallel ranges.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub split_bytes: u64,

    /// Sorted runs merged at once (more runs mean extra merge passes).
    #[arg(long, default_value_t = node::config::DEFAULT_MAX_OPEN_RUNS)]
    pub max_open_runs: usize,

    /// Size at which a lane starts a new SST file.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub sst_target: u64,

    /// How long shutdown waits for stages before naming those that hang.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Files or directories (walked; every file is leased to a node by
    /// its path, in path order).
    #[arg(required_unless_present_any = ["sample", "serve"], conflicts_with_all = ["sample", "serve"])]
    pub paths: Vec<PathBuf>,

    /// Run the job on a small generated sample dataset (into dataset
    /// "sample" unless --dataset is given), as `quern ingest --sample`.
    #[arg(long)]
    pub sample: bool,

    /// Nodes in the process.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,

    /// Memory budget of each node.
    #[arg(long, env = "QUERN_MEMORY", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Dataset name [default: default, or sample with --sample].
    #[arg(long, env = "QUERN_DATASET")]
    pub dataset: Option<String>,

    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Keep the process up as a local cluster for `quern submit`, `quern
    /// status` and metrics (`--metrics`), until Ctrl-C: a coordinator on
    /// --listen and the nodes; certificates and a client configuration
    /// (`DIR/serve/client.toml`) are made under the data directory.
    #[arg(long, conflicts_with = "sample")]
    pub serve: bool,

    /// With --serve: the coordinator's address.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7400",
        requires = "serve"
    )]
    pub listen: std::net::SocketAddr,

    /// With --serve: a directory the nodes may read under (repeatable)
    /// [default: the current directory].
    #[arg(long = "root", value_name = "DIR", requires = "serve")]
    pub roots: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub dataset: DatasetArg,

    /// With coordinators, the cluster's nodes are read instead of --data.
    #[command(flatten)]
    pub client: ClientArgs,

    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub dataset: DatasetArg,

    /// With coordinators, the cluster's nodes are read instead of --data.
    #[command(flatten)]
    pub client: ClientArgs,

    /// The key (any bytes the shell can pass; after `--` if it starts with
    /// a dash).
    pub key: std::ffi::OsString,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub dataset: DatasetArg,

    /// With coordinators, the cluster's nodes are read instead of --data.
    #[command(flatten)]
    pub client: ClientArgs,

    /// The job whose files and rejected records to list (with
    /// coordinators, the coordinators' job id) [default: the latest].
    #[arg(long)]
    pub job: Option<u64>,

    /// Machine-readable output listing everything.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CertArgs {
    /// Directory of the cluster CA (ca.pem, ca.key).
    #[arg(
        long,
        global = true,
        env = "QUERN_CERT_DIR",
        default_value = "quern-certs"
    )]
    pub dir: PathBuf,

    /// Replace files that already exist.
    #[arg(long, global = true)]
    pub force: bool,

    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a new cluster CA: DIR/ca.pem and DIR/ca.key (keep the key
    /// off the nodes).
    Init(CertInitArgs),
    /// Issue a node or client certificate signed by the cluster CA:
    /// NAME.pem and NAME.key, beside a copy of ca.pem.
    Issue(CertIssueArgs),
}

#[derive(Args, Debug)]
pub struct CertInitArgs {
    /// Days the CA is valid.
    #[arg(long, default_value_t = proto_schema::ca::DEFAULT_CA_DAYS)]
    pub days: u32,
}

#[derive(Args, Debug)]
pub struct CertIssueArgs {
    /// The certificate's name: its common name, its first subject
    /// alternative name (the name peers dial it by), and its file names.
    #[arg(long)]
    pub name: String,

    /// Another name or IP address peers may use to reach it (repeatable),
    /// e.g. --san 127.0.0.1 --san localhost.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    pub sans: Vec<String>,

    /// Write the certificate here [default: DIR].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Days the certificate is valid.
    #[arg(long, default_value_t = proto_schema::ca::DEFAULT_CERT_DAYS)]
    pub days: u32,
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// This replica's id among the peers [config: [coordinator] id].
    #[arg(long)]
    pub id: Option<u64>,

    /// Address to listen on, e.g. 127.0.0.1:7001 [config: listen].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// A voter, ID=HOST:PORT; repeat for every replica, this one included.
    /// Its certificate must name HOST [config: [coordinator.peers]].
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    pub peers: Vec<PeerArg>,

    /// Directory of the Raft log and state [config: data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory holding ca.pem and this replica's NAME.pem / NAME.key.
    #[arg(long, env = "QUERN_CERT_DIR", default_value = "quern-certs")]
    pub cert_dir: PathBuf,

    /// The certificate's file name [default: coord-ID]. The certificate
    /// itself must be named coord-ID: peers take Raft RPCs from no other.
    #[arg(long)]
    pub cert_name: Option<String>,

    /// How long a node's lease of a shard lasts without a renewal; an
    /// expired lease is granted again, at the next epoch.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_time: std::time::Duration,

    /// Builds a snapshot (and compacts the Raft log behind it) after this
    /// many entries since the last one.
    #[arg(long, value_name = "ENTRIES", default_value_t = coordinator::config::SNAPSHOT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id; its certificate must be named node-ID [config:
    /// [node] id].
    #[arg(long)]
    pub id: Option<u64>,

    /// The node's data channel for the shuffle: bound, and registered
    /// with the coordinators so peers dial it [config: listen].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// Directory of the node's store [config: data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory holding ca.pem and node-ID.pem / node-ID.key.
    #[arg(long, env = "QUERN_CERT_DIR", default_value = "quern-certs")]
    pub cert_dir: PathBuf,

    /// A coordinator's HOST:PORT (repeatable, or comma-separated) [config:
    /// coordinators].
    #[arg(long = "coordinator", value_name = "HOST:PORT", value_delimiter = ',')]
    pub coordinators: Vec<String>,

    /// Memory budget for the whole node.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// A directory the node may read under (repeatable); a manifest's path
    /// outside every root is a rejected file, never read [config: roots].
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
}

/// One `--peer ID=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: u64,
    pub address: String,
}

fn parse_peer(text: &str) -> Result<PeerArg, String> {
    let bad = || format!("{text:?} is not ID=HOST:PORT (e.g. 1=127.0.0.1:7001)");
    let (id, address) = text.split_once('=').ok_or_else(bad)?;
    let id = id.trim().parse().map_err(|_| bad())?;
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(PeerArg {
            id,
            address: address.to_owned(),
        }),
        _ => Err(bad()),
    }
}

/// How a client command reaches the cluster.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// A coordinator's HOST:PORT (repeatable, or comma-separated); the
    /// leader is found from any of them.
    #[arg(
        long = "coordinator",
        env = "QUERN_COORDINATOR",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub coordinators: Vec<String>,

    /// Directory holding ca.pem and the client certificate.
    #[arg(long, env = "QUERN_CERT_DIR", default_value = "quern-certs")]
    pub cert_dir: PathBuf,

    /// The client certificate's name (NAME.pem, NAME.key).
    #[arg(long, default_value = "client")]
    pub cert_name: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,

    /// Ask every coordinator for its own view instead (applied index and a
    /// digest of its state), to check that the replicas agree. Reads each
    /// replica's whole state.
    #[arg(long)]
    pub replicas: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Dataset name (created if missing).
    #[arg(long, env = "QUERN_DATASET")]
    pub dataset: String,

    /// A manifest: TSV lines `path<TAB>size<TAB>mtime[<TAB>md5]`, or JSONL
    /// objects {"path","size","mtime","checksum"}; mtime in seconds.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "dir",
        required_unless_present = "dir"
    )]
    pub manifest: Option<PathBuf>,

    /// A directory whose files are listed instead (walked in name order).
    pub dir: Option<PathBuf>,

    /// Format of a new dataset's files.
    #[arg(long, value_enum, default_value_t = FormatArg::Lines)]
    pub format: FormatArg,

    /// The key field of a new tsv dataset (1-based).
    #[arg(long, default_value_t = 1)]
    pub key_field: u32,

    /// Manifest chunks (each at most 4096 files or 1 MiB) sent before the
    /// first is answered: the leader replicates and applies one while the
    /// next arrive. Client memory is about this many MiB.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub chunks_in_flight: u16,

    /// Memory for putting a manifest (or a walk) in path order before it
    /// is sent; more is spilled to --temp-dir in sorted runs. A manifest
    /// already in path order is not sorted.
    #[arg(long, env = "QUERN_SORT_MEMORY", default_value = "64M", value_parser = parse_sort_memory)]
    pub sort_memory: u64,

    /// Where the sort spills (default: the system's temporary directory).
    #[arg(long, env = "QUERN_TEMP_DIR", value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,

    /// Then wait until the nodes have ingested the job and the
    /// coordinators committed it (or it was aborted), showing its
    /// progress, and print its summary; the exit status is then as for
    /// `quern ingest`.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits before it gives up, naming what the job
    /// still waits on (the job goes on) [config: [client] wait_timeout].
    #[arg(long, default_value = DEFAULT_WAIT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,

    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `quern submit --wait`'s bound, unless configured.
pub const DEFAULT_WAIT_TIMEOUT: &str = "1h";

/// A sort memory of at least 1 MiB: smaller runs would only multiply
/// merge passes.
fn parse_sort_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 1 << 20 {
        return Err(format!("{text} is less than the 1M a sort needs"));
    }
    Ok(bytes)
}

#[derive(Args, Debug)]
pub struct AbortArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Dataset whose open submission is aborted.
    #[arg(long, env = "QUERN_DATASET")]
    pub dataset: String,

    /// Abort only if the open submission is this one (as `quern status`
    /// shows it), so a submission begun meanwhile is left alone.
    #[arg(long)]
    pub submission: Option<u64>,
}

/// Parses a size with an optional binary suffix: K, M, G, T, with or
/// without "iB"/"B" (all powers of 1024, as `sort -S` reads them).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 512K, 128M, 1GiB)"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size(" 2 KB "), Ok(2048));
        assert!(parse_size("12X").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("M").is_err());
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn peers_are_id_equals_host_and_port() {
        assert_eq!(
            parse_peer("2=coord-2.internal:7001"),
            Ok(PeerArg {
                id: 2,
                address: "coord-2.internal:7001".into()
            })
        );
        for bad in ["2", "x=h:1", "2=h", "2=:7001", "2=h:port"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn standard_input_is_given_at_most_once() {
        let check = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().check_usage();
        assert_eq!(check(&["quern", "ingest", "a", "-", "b", "./-"]), Ok(()));
        assert_eq!(check(&["quern", "ingest", "--follow", "-"]), Ok(()));
        let twice = check(&["quern", "ingest", "-", "a", "-"]).unwrap_err();
        assert!(twice.contains("can be given only once"), "{twice}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
