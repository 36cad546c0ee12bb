//! `quern coordinator`: one coordinator replica as a process. Reads its
//! identity (certificate named `coord-ID` by default) and peers, starts
//! the service, and on Ctrl-C or SIGTERM shuts it down within a bound. If
//! its Raft stops on a fatal error, it exits with a failing status naming
//! the cause. With `--metrics`, that address also serves the status page.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use coordinator::service::{Service, ServiceConfig};
use proto_schema::tls::{CertPaths, TlsIdentity};

use crate::args::CoordinatorArgs;
use crate::metrics_endpoint::MetricsEndpoint;

/// Shutdown gives up after this long (each step has its own smaller bound).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(15);

pub fn run(args: CoordinatorArgs, metrics: Option<&MetricsEndpoint>) -> anyhow::Result<ExitCode> {
    node::memory::configure_for_service();
    let id = args
        .id
        .context("no replica id: give --id or [coordinator] id")?;
    let listen = args
        .listen
        .context("no listen address: give --listen or [coordinator] listen")?;
    let data_dir = args
        .data_dir
        .context("no data directory: give --data-dir or [coordinator] data_dir")?;
    if args.peers.is_empty() {
        bail!("no peers: give --peer ID=HOST:PORT for every replica, or [coordinator] peers");
    }
    let mut peers = BTreeMap::new();
    for peer in args.peers {
        if let Some(first) = peers.insert(peer.id, peer.address.clone()) {
            bail!(
                "peer {} is given twice ({first} and {})",
                peer.id,
                peer.address
            );
        }
    }
    let name = args
        .cert_name
        .unwrap_or_else(|| coordinator::raft_peers::certificate_name(id));
    let identity =
        TlsIdentity::load(&CertPaths::in_dir(&args.cert_dir, &name)).with_context(|| {
            format!("loading certificate {name:?} (make one with `quern cert issue --name {name}`)")
        })?;
    let raft = Arc::new(coordinator::config::raft_config_snapshotting_every(
        args.snapshot_every,
    )?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let expiry = proto_schema::cert_expiry::publish_expiry(&identity);
    let space = node::data_dir_space::publish(data_dir.clone());
    let result = runtime.block_on(async move {
        tokio::spawn(expiry);
        let service = Service::start(ServiceConfig {
            id,
            listen,
            peers: peers.clone(),
            data_dir,
            identity,
            raft,
            lease_ms: args.lease_time.as_millis() as u64,
        })
        .await?;
        // Once the service has made the data directory.
        tokio::spawn(space);
        tell!(
            "coordinator {id} listening on {} (peers {peers:?})",
            service.local_addr()
        );
        if let Some(metrics) = metrics {
            metrics.show_status(service.local_status());
        }
        let stopped = tokio::select! {
            signal = stop_signal() => Ok(signal?),
            cause = service.raft_stopped() => Err(cause),
        };
        match stopped {
            Ok(signal) => tell!("coordinator {id}: {signal}, shutting down"),
            Err(cause) => {
                // Serving on would answer with a frozen state: stop, and
                // say why with a failing status.
                let _ = tokio::time::timeout(SHUTDOWN_BOUND, service.shutdown()).await;
                bail!("coordinator {id}: Raft stopped: {cause}");
            }
        }
        match tokio::time::timeout(SHUTDOWN_BOUND, service.shutdown()).await {
            Ok(result) => result.context("shutting down"),
            Err(_) => bail!("shutdown did not finish within {SHUTDOWN_BOUND:?}"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

/// Waits for Ctrl-C or SIGTERM; says which.
pub(crate) async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| "interrupted").map_err(Into::into),
        _ = term.recv() => Ok("terminated"),
    }
}
