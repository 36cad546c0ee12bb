//! The configuration file (`--config FILE` or `QUERN_CONFIG`): TOML whose
//! keys are the long flags' names with `_` for `-`. A value from the file
//! replaces the built-in default of its flag, so precedence is: flag, then
//! environment variable, then file, then default. The file's values go
//! through the flags' own parsers, so `memory = "128MiB"` means exactly
//! what `--memory 128MiB` does.
//!
//! ```toml
//! data = "/var/lib/quern"
//! metrics = "127.0.0.1:9898"
//!
//! [ingest]
//! memory = "128MiB"
//! threads = 2
//! shutdown_timeout = "30s"
//!
//! [cert]
//! dir = "/etc/quern/ca"
//!
//! [coordinator]
//! id = 1
//! listen = "10.0.0.5:7001"
//! data_dir = "/var/lib/quern/coordinator"
//! peers = { 1 = "10.0.0.5:7001", 2 = "10.0.0.6:7001", 3 = "10.0.0.7:7001" }
//!
//! [node]
//! id = 1
//! listen = "10.0.0.11:7101"
//! data_dir = "/var/lib/quern/node"
//! coordinators = ["10.0.0.5:7001", "10.0.0.6:7001", "10.0.0.7:7001"]
//! memory = "1GiB"
//! roots = ["/srv/logs"]
//!
//! [client]
//! coordinators = ["10.0.0.5:7001", "10.0.0.6:7001"]
//! cert_name = "ops"
//! wait_timeout = "4h"
//! ```
//!
//! `[coordinator] peers` is a table (id -> address), `[client]
//! coordinators`, `[node] coordinators` and `[node] roots` lists: the
//! file's forms of the repeatable `--peer`, `--coordinator` and `--root`
//! flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The flag naming the file, and its environment variable.
pub const FLAG: &str = "--config";
pub const ENV: &str = "QUERN_CONFIG";

/// A value as TOML may write it: sizes and durations are strings
/// ("128MiB", "10s") or plain integers (bytes).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Value {
    Integer(u64),
    Text(String),
}

impl Value {
    fn as_default(&self) -> String {
        match self {
            Value::Integer(n) => n.to_string(),
            Value::Text(s) => s.clone(),
        }
    }
}

/// Options of every command.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    data: Option<PathBuf>,
    metrics: Option<String>,
    #[serde(default)]
    ingest: IngestSection,
    #[serde(default)]
    cert: CertSection,
    #[serde(default)]
    coordinator: CoordinatorSection,
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    client: ClientSection,
}

/// Options of `quern ingest`, the ones that describe the machine or the
/// job's limits (inputs and dataset stay on the command line).
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct IngestSection {
    memory: Option<Value>,
    threads: Option<Value>,
    max_record: Option<Value>,
    partitions: Option<Value>,
    batch_bytes: Option<Value>,
    split_bytes: Option<Value>,
    max_open_runs: Option<Value>,
    sst_target: Option<Value>,
    shutdown_timeout: Option<Value>,
}

/// Options of `quern cert`.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct CertSection {
    dir: Option<PathBuf>,
}

/// Options of `quern coordinator`. `cert_dir` falls back to `[cert] dir`.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct CoordinatorSection {
    id: Option<u64>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    cert_name: Option<String>,
    /// id -> HOST:PORT, every voter (this replica included).
    #[serde(default)]
    peers: std::collections::BTreeMap<u64, String>,
}

/// Options of `quern node`. `cert_dir` falls back to `[cert] dir`.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    id: Option<u64>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    #[serde(default)]
    coordinators: Vec<String>,
    memory: Option<Value>,
    #[serde(default)]
    roots: Vec<PathBuf>,
}

/// Options of the client commands (`quern status`, `quern submit`, `quern
/// abort`, and `export`, `get`, `stats`, which read the cluster when
/// coordinators are given).
/// `cert_dir` falls back to `[cert] dir`; `wait_timeout` is `submit`'s.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct ClientSection {
    #[serde(default)]
    coordinators: Vec<String>,
    cert_dir: Option<PathBuf>,
    cert_name: Option<String>,
    wait_timeout: Option<Value>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("in the configuration file {}", path.display()))
    }

    /// The file named by `--config FILE` / `--config=FILE` in `args`, or
    /// else by `QUERN_CONFIG`. Read before clap parses, because the file
    /// supplies clap's defaults.
    pub fn path_from(args: &[OsString], env: Option<OsString>) -> Option<PathBuf> {
        let mut args = args.iter().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            if arg == FLAG {
                return args.next().map(PathBuf::from);
            }
            if let Some(value) = arg
                .to_str()
                .and_then(|a| a.strip_prefix(FLAG)?.strip_prefix('='))
            {
                return Some(PathBuf::from(value));
            }
        }
        env.map(PathBuf::from)
    }

    /// Makes the file's values the defaults of their flags in `command`.
    pub fn apply(&self, mut command: clap::Command) -> clap::Command {
        let global = [
            ("data", self.data.as_ref().map(|p| p.display().to_string())),
            ("metrics", self.metrics.clone()),
        ];
        for (id, value) in global {
            if let Some(value) = value {
                command = command.mut_arg(id, |arg| arg.default_value(value));
            }
        }
        let ingest = &self.ingest;
        let ingest_values = [
            ("memory", &ingest.memory),
            ("threads", &ingest.threads),
            ("max_record", &ingest.max_record),
            ("partitions", &ingest.partitions),
            ("batch_bytes", &ingest.batch_bytes),
            ("split_bytes", &ingest.split_bytes),
            ("max_open_runs", &ingest.max_open_runs),
            ("sst_target", &ingest.sst_target),
            ("shutdown_timeout", &ingest.shutdown_timeout),
        ];
        command = command.mut_subcommand("ingest", |mut sub| {
            for (id, value) in ingest_values {
                if let Some(value) = value {
                    sub = sub.mut_arg(id, |arg| arg.default_value(value.as_default()));
                }
            }
            sub
        });
        if let Some(dir) = &self.cert.dir {
            let dir = dir.display().to_string();
            command = command.mut_subcommand("cert", |sub| {
                sub.mut_arg("dir", |arg| arg.default_value(dir))
            });
        }
        let coordinator = &self.coordinator;
        let path = |p: &PathBuf| p.display().to_string();
        let coordinator_values = [
            ("id", coordinator.id.map(|id| id.to_string())),
            ("listen", coordinator.listen.clone()),
            ("data_dir", coordinator.data_dir.as_ref().map(path)),
            (
                "cert_dir",
                coordinator
                    .cert_dir
                    .as_ref()
                    .or(self.cert.dir.as_ref())
                    .map(path),
            ),
            ("cert_name", coordinator.cert_name.clone()),
        ];
        let peers: Vec<String> = coordinator
            .peers
            .iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect();
        command = command.mut_subcommand("coordinator", |mut sub| {
            sub = with_defaults(sub, coordinator_values);
            if !peers.is_empty() {
                sub = sub.mut_arg("peers", |arg| arg.default_values(peers));
            }
            sub
        });
        let node = &self.node;
        let node_values = [
            ("id", node.id.map(|id| id.to_string())),
            ("listen", node.listen.clone()),
            ("data_dir", node.data_dir.as_ref().map(path)),
            (
                "cert_dir",
                node.cert_dir.as_ref().or(self.cert.dir.as_ref()).map(path),
            ),
            ("memory", node.memory.as_ref().map(Value::as_default)),
        ];
        let roots: Vec<String> = node.roots.iter().map(path).collect();
        let node_coordinators = node.coordinators.clone();
        command = command.mut_subcommand("node", |mut sub| {
            sub = with_defaults(sub, node_values);
            if !node_coordinators.is_empty() {
                sub = sub.mut_arg("coordinators", |arg| arg.default_values(node_coordinators));
            }
            if !roots.is_empty() {
                sub = sub.mut_arg("roots", |arg| arg.default_values(roots));
            }
            sub
        });
        let client = &self.client;
        let client_values = [
            (
                "cert_dir",
                client
                    .cert_dir
                    .as_ref()
                    .or(self.cert.dir.as_ref())
                    .map(path),
            ),
            ("cert_name", client.cert_name.clone()),
        ];
        for name in ["status", "submit", "abort", "export", "get", "stats"] {
            command = command.mut_subcommand(name, |mut sub| {
                sub = with_defaults(sub, client_values.clone());
                if !client.coordinators.is_empty() {
                    let list = client.coordinators.clone();
                    sub = sub.mut_arg("coordinators", |arg| arg.default_values(list));
                }
                sub
            });
        }
        if let Some(timeout) = &client.wait_timeout {
            let timeout = timeout.as_default();
            command = command.mut_subcommand("submit", |sub| {
                sub.mut_arg("wait_timeout", |arg| arg.default_value(timeout))
            });
        }
        command
    }
}

/// Makes each present value the default of its flag in `sub`.
fn with_defaults<const N: usize>(
    mut sub: clap::Command,
    values: [(&'static str, Option<String>); N],
) -> clap::Command {
    for (id, value) in values {
        if let Some(value) = value {
            sub = sub.mut_arg(id, |arg| arg.default_value(value));
        }
    }
    sub
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::args::Cli;
    use clap::{CommandFactory, FromArgMatches};

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(file: &str, args: &[&str]) -> Result<Cli, clap::Error> {
        let file: ConfigFile = toml::from_str(file).unwrap();
        let matches = file.apply(Cli::command()).try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    fn ingest_args(cli: Cli) -> crate::args::IngestArgs {
        match cli.command {
            crate::args::Command::Ingest(args) => args,
            other => panic!("not ingest: {other:?}"),
        }
    }

    #[test]
    fn the_file_replaces_defaults_and_flags_replace_the_file() {
        let file = r#"
            data = "/srv/quern"
            [ingest]
            memory = "128MiB"
            threads = 3
            shutdown_timeout = "30s"
            batch_bytes = 65536
        "#;
        let cli = parse(file, &["quern", "ingest", "in"]).unwrap();
        assert_eq!(cli.data, PathBuf::from("/srv/quern"));
        let ingest = ingest_args(cli);
        assert_eq!(ingest.memory, 128 << 20);
        assert_eq!(ingest.threads, Some(3));
        assert_eq!(ingest.tuning.shutdown_timeout.as_secs(), 30);
        assert_eq!(ingest.tuning.batch_bytes, 65536);
        // Untouched keys keep the built-in defaults.
        assert_eq!(ingest.tuning.split_bytes, 64 << 20);

        let cli = parse(
            file,
            &["quern", "--data", "d", "ingest", "--memory", "1G", "in"],
        )
        .unwrap();
        assert_eq!(cli.data, PathBuf::from("d"));
        assert_eq!(ingest_args(cli).memory, 1 << 30);
    }

    #[test]
    fn the_cert_section_sets_the_ca_directory() {
        let cert_args = |cli: Cli| match cli.command {
            crate::args::Command::Cert(args) => args,
            other => panic!("not cert: {other:?}"),
        };
        let file = "[cert]\ndir = \"/etc/quern/ca\"";
        let cli = parse(file, &["quern", "cert", "issue", "--name", "n1"]).unwrap();
        assert_eq!(cert_args(cli).dir, PathBuf::from("/etc/quern/ca"));
        let cli = parse(file, &["quern", "cert", "init", "--dir", "here"]).unwrap();
        assert_eq!(cert_args(cli).dir, PathBuf::from("here"));
        let cli = parse("", &["quern", "cert", "init"]).unwrap();
        assert_eq!(cert_args(cli).dir, PathBuf::from("quern-certs"));
    }

    #[test]
    fn the_coordinator_and_client_sections_set_their_commands_defaults() {
        let file = r#"
            [cert]
            dir = "/etc/quern/certs"
            [coordinator]
            id = 2
            listen = "127.0.0.1:7002"
            data_dir = "/var/lib/quern/coord"
            peers = { 1 = "127.0.0.1:7001", 2 = "127.0.0.1:7002", 3 = "127.0.0.1:7003" }
            [client]
            coordinators = ["127.0.0.1:7001", "127.0.0.1:7003"]
            cert_name = "ops"
            wait_timeout = "90m"
        "#;
        let crate::args::Command::Coordinator(args) =
            parse(file, &["quern", "coordinator"]).unwrap().command
        else {
            panic!("not coordinator")
        };
        assert_eq!(args.id, Some(2));
        assert_eq!(args.listen, Some("127.0.0.1:7002".parse().unwrap()));
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/quern/coord")));
        assert_eq!(args.cert_dir, PathBuf::from("/etc/quern/certs"));
        let peers: Vec<_> = args
            .peers
            .iter()
            .map(|p| (p.id, p.address.as_str()))
            .collect();
        assert_eq!(
            peers,
            [
                (1, "127.0.0.1:7001"),
                (2, "127.0.0.1:7002"),
                (3, "127.0.0.1:7003")
            ]
        );

        let crate::args::Command::Status(args) = parse(file, &["quern", "status"]).unwrap().command
        else {
            panic!("not status")
        };
        assert_eq!(
            args.client.coordinators,
            ["127.0.0.1:7001", "127.0.0.1:7003"]
        );
        assert_eq!(args.client.cert_name, "ops");
        assert_eq!(args.client.cert_dir, PathBuf::from("/etc/quern/certs"));
        let crate::args::Command::Submit(args) = parse(
            file,
            &[
                "quern",
                "submit",
                "--dataset",
                "d",
                "--coordinator",
                "h:1",
                "dir",
            ],
        )
        .unwrap()
        .command
        else {
            panic!("not submit")
        };
        assert_eq!(args.client.coordinators, ["h:1"]);
        assert_eq!(args.wait_timeout, Duration::from_secs(90 * 60));
        let crate::args::Command::Submit(args) = parse(
            file,
            &[
                "quern",
                "submit",
                "--dataset",
                "d",
                "--wait",
                "--wait-timeout",
                "5s",
                "dir",
            ],
        )
        .unwrap()
        .command
        else {
            panic!("not submit")
        };
        assert!(args.wait);
        assert_eq!(args.wait_timeout, Duration::from_secs(5));
        let crate::args::Command::Submit(args) =
            parse("", &["quern", "submit", "--dataset", "d", "dir"])
                .unwrap()
                .command
        else {
            panic!("not submit")
        };
        assert!(!args.wait);
        assert_eq!(
            args.wait_timeout,
            humantime::parse_duration(crate::args::DEFAULT_WAIT_TIMEOUT).unwrap()
        );

        let err = parse(
            "[coordinator]
peers = { 1 = \"nonsense\" }",
            &["quern", "coordinator"],
        )
        .unwrap_err();
        assert!(err.to_string().contains("ID=HOST:PORT"), "{err}");
    }

    #[test]
    fn the_node_section_sets_quern_nodes_defaults() {
        let node_args = |cli: Cli| match cli.command {
            crate::args::Command::Node(args) => args,
            other => panic!("not node: {other:?}"),
        };
        let file = r#"
            [cert]
            dir = "/etc/quern/certs"
            [node]
            id = 3
            listen = "127.0.0.1:7103"
            data_dir = "/var/lib/quern/node-3"
            coordinators = ["127.0.0.1:7001", "127.0.0.1:7002"]
            memory = "128MiB"
            roots = ["/srv/a", "/srv/b"]
        "#;
        let args = node_args(parse(file, &["quern", "node"]).unwrap());
        assert_eq!(args.id, Some(3));
        assert_eq!(args.listen, Some("127.0.0.1:7103".parse().unwrap()));
        assert_eq!(args.data_dir, Some(PathBuf::from("/var/lib/quern/node-3")));
        assert_eq!(args.cert_dir, PathBuf::from("/etc/quern/certs"));
        assert_eq!(args.coordinators, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(args.memory, 128 << 20);
        assert_eq!(
            args.roots,
            [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
        );
        // Flags replace the file's values, lists included.
        let args = node_args(
            parse(
                file,
                &[
                    "quern", "node", "--id", "4", "--root", "/x", "--memory", "1G",
                ],
            )
            .unwrap(),
        );
        assert_eq!(args.id, Some(4));
        assert_eq!(args.roots, [PathBuf::from("/x")]);
        assert_eq!(args.memory, 1 << 30);
        let err = parse("[node]\nmemory = \"lots\"", &["quern", "node"]).unwrap_err();
        assert!(err.to_string().contains("lots"), "{err}");
    }

    #[test]
    fn values_in_the_file_are_checked_by_the_flags_parsers() {
        let err = parse("[ingest]\nmemory = \"12Q\"", &["quern", "ingest", "in"]).unwrap_err();
        assert!(err.to_string().contains("unknown size unit"), "{err}");
        let err = parse("[ingest]\nthreads = \"many\"", &["quern", "ingest", "in"]).unwrap_err();
        assert!(err.to_string().contains("many"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_them() {
        let err = toml::from_str::<ConfigFile>("[ingest]\nmemroy = \"1G\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `memroy`"), "{err}");
        let err = toml::from_str::<ConfigFile>("dta = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `dta`"), "{err}");
    }

    #[test]
    fn the_file_is_named_by_the_flag_before_the_environment() {
        let env = Some(OsString::from("env.toml"));
        assert_eq!(
            ConfigFile::path_from(&os(&["quern", "--config", "a.toml", "ingest"]), env.clone()),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            ConfigFile::path_from(&os(&["quern", "ingest", "--config=b.toml"]), env.clone()),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(
            ConfigFile::path_from(&os(&["quern", "ingest", "--", "--config"]), env.clone()),
            Some(PathBuf::from("env.toml"))
        );
        assert_eq!(ConfigFile::path_from(&os(&["quern", "ingest"]), None), None);
    }
}
