//! `quern dev --serve`: a local cluster in one process, kept up for
//! `quern submit`, `quern status` and metrics until Ctrl-C or SIGTERM.
//! It runs the cluster's own code over loopback QUIC: a one-member
//! coordinator on `--listen` (as `quern coordinator` serves it) and N
//! nodes (as `quern node` runs them, each with its data channel and its
//! store `DIR/node-N`, so `quern export --data DIR` reads their job
//! results as one dataset). Certificates are made once under
//! `DIR/serve/certs`, and `DIR/serve/client.toml` points client commands
//! at the coordinator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use coordinator::service::{Service, ServiceConfig};
use embedded::{DEV_LEASE_MS, MAX_DEV_NODES, node_dir};
use node::input::roots::Roots;
use proto_schema::cert_role::node_name;
use proto_schema::ids::NodeId;
use proto_schema::tls::{CertPaths, TlsIdentity};
use tokio::sync::watch;

use crate::args::DevArgs;
use crate::metrics_endpoint::MetricsEndpoint;
use crate::node_cmd::{Node, NodeSetup, stop_on_signal};

/// The coordinator's replica id and certificate.
const REPLICA: u64 = 1;
const COORDINATOR_CERT: &str = "coord-1";
/// The certificate `client.toml` names.
const CLIENT_CERT: &str = "client";
/// How long the coordinator may take to elect itself.
const LEADER_WITHIN: Duration = Duration::from_secs(30);
/// The coordinator's own shutdown, after the nodes'.
const COORDINATOR_SHUTDOWN: Duration = Duration::from_secs(10);

pub fn run(
    data: &Path,
    args: DevArgs,
    metrics: Option<&MetricsEndpoint>,
) -> anyhow::Result<ExitCode> {
    node::memory::configure_for_service();
    if args.nodes == 0 || args.nodes > MAX_DEV_NODES {
        tell!(
            "quern: error: --nodes {}: from 1 to {MAX_DEV_NODES} nodes",
            args.nodes
        );
        return Ok(ExitCode::from(crate::EXIT_USAGE));
    }
    let serve_dir = data.join("serve");
    let certs = serve_dir.join("certs");
    let nodes: Vec<NodeId> = (1..=args.nodes as u64).map(NodeId).collect();
    let mut names = vec![COORDINATOR_CERT.to_string(), CLIENT_CERT.to_string()];
    names.extend(nodes.iter().map(|&n| node_name(n)));
    let host = args.listen.ip().to_string();
    crate::cert::local_certificates(&certs, &names, &[host, "localhost".into()])?;
    let roots = if args.roots.is_empty() {
        vec![std::env::current_dir().context("the current directory")?]
    } else {
        args.roots
    };
    let roots = Roots::new(&roots).context("resolving the roots")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quern-dev-coordinator")
        .enable_all()
        .build()?;
    let service = runtime.block_on(start_coordinator(&serve_dir, &certs, args.listen))?;
    let address = service.local_addr();
    let client_config = serve_dir.join("client.toml");
    write_client_config(&client_config, address, &certs)?;
    if let Some(metrics) = metrics {
        metrics.show_status(service.local_status());
    }

    let (stop, stopping) = watch::channel(None);
    runtime.spawn(stop_on_signal("quern dev".into(), stop));
    let mut threads = Vec::new();
    for &id in &nodes {
        let setup = NodeSetup {
            id,
            listen: SocketAddr::new(args.listen.ip(), 0),
            data_dir: node_dir(data, id),
            identity: TlsIdentity::load(&CertPaths::in_dir(&certs, &node_name(id)))?,
            coordinators: vec![address.to_string()],
            memory: args.memory,
            roots: roots.clone(),
        };
        let stopping = stopping.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("quern-dev-node-{id}"))
                .spawn(move || -> anyhow::Result<()> {
                    let mut node = Node::start(setup, stopping)?;
                    let served = node.serve();
                    node.shut_down();
                    served.with_context(|| format!("node {id}"))
                })?,
        );
    }
    tell!(
        "quern dev: serving a coordinator on {address} and {} node(s), stores under {}; \
         try `quern --config {} submit --wait --dataset NAME PATH...` and `quern --config {} \
         status`; Ctrl-C stops",
        nodes.len(),
        data.display(),
        client_config.display(),
        client_config.display()
    );
    let mut failed = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(_) => failed.push("a node's thread panicked".into()),
        }
    }
    let stopped = runtime
        .block_on(async { tokio::time::timeout(COORDINATOR_SHUTDOWN, service.shutdown()).await });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    match stopped {
        Ok(result) => result.context("shutting the coordinator down")?,
        Err(_) => bail!("the coordinator did not shut down within {COORDINATOR_SHUTDOWN:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The one-member coordinator, once it leads.
async fn start_coordinator(
    serve_dir: &Path,
    certs: &Path,
    listen: SocketAddr,
) -> anyhow::Result<Service> {
    let identity = TlsIdentity::load(&CertPaths::in_dir(certs, COORDINATOR_CERT))?;
    let service = Service::start(ServiceConfig {
        id: REPLICA,
        listen,
        peers: BTreeMap::from([(REPLICA, listen.to_string())]),
        data_dir: serve_dir.join("coordinator"),
        identity,
        raft: Arc::new(coordinator::config::raft_config()?),
        lease_ms: DEV_LEASE_MS,
    })
    .await
    .with_context(|| format!("starting the coordinator on {listen}"))?;
    let mut metrics = service.raft().metrics();
    let elected = metrics.wait_for(|m| m.current_leader == Some(REPLICA));
    match tokio::time::timeout(LEADER_WITHIN, elected).await {
        Ok(Ok(_)) => Ok(service),
        _ => bail!("the coordinator did not become leader within {LEADER_WITHIN:?}"),
    }
}

/// `[client]` settings for `quern --config FILE status|submit|...`.
fn write_client_config(path: &Path, address: SocketAddr, certs: &Path) -> anyhow::Result<()> {
    let certs: PathBuf = std::path::absolute(certs)?;
    let quoted = |text: String| toml::Value::String(text).to_string();
    let text = format!(
        "# Written by `quern dev --serve`: client commands against its coordinator.\n\
         [client]\ncoordinators = [{}]\ncert_dir = {}\ncert_name = {}\n",
        quoted(address.to_string()),
        quoted(certs.display().to_string()),
        quoted(CLIENT_CERT.into())
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
