//! `--metrics ADDR`: the Prometheus text endpoint. Every metric the
//! command records (`quern_*`: a node's memory shares, per-actor heap,
//! edges, governor, RocksDB, process RSS; a coordinator's refused Raft
//! RPCs; the transport's refused peers) is served from it while it runs.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Keeps the endpoint's runtime alive; dropping it stops serving.
pub struct MetricsEndpoint {
    _runtime: tokio::runtime::Runtime,
}

pub fn serve(addr: SocketAddr) -> anyhow::Result<MetricsEndpoint> {
    // Its own small runtime, so the endpoint answers even while a job's
    // workers are busy, and whatever the command's own runtime does.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("quern-metrics")
        .enable_all()
        .build()
        .context("starting the metrics runtime")?;
    let (recorder, exporter) = {
        let _guard = runtime.enter();
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .build()
            .with_context(|| format!("serving metrics on {addr}"))?
    };
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    node::metric_catalog::describe();
    coordinator::raft_peers::describe_metrics();
    coordinator::raft_metrics::describe_metrics();
    coordinator::authorize::describe_metrics();
    coordinator::state_reads::describe_metrics();
    proto_schema::cert_expiry::describe_metrics();
    coordinator::lease_desk::describe_metrics();
    runtime.spawn(exporter);
    eprintln!("quern: metrics on http://{addr}/metrics");
    Ok(MetricsEndpoint { _runtime: runtime })
}
