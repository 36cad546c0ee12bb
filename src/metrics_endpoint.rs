//! `--metrics ADDR`: the command's HTTP address. `/metrics` is the
//! Prometheus text: every metric the command records (`quern_*`: a node's
//! memory shares, per-actor heap, edges, governor, RocksDB, process RSS; a
//! coordinator's Raft and lease figures and refusals; the transport's
//! refused peers). On `quern coordinator`, `/` is the status page
//! (`status_page`), built from the replica's own status report.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use coordinator::client_api::LocalStatus;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::status_page;

/// How often the recorder drains its histograms (the exporter's default).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A client that has not sent its request's head by then is dropped, so
/// idle or slow connections do not pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed accept (out of file descriptors), before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The label the page's state reads carry in
/// `quern_state_reads_refused_total` when refused as busy.
const PAGE_READ: &str = "status_page";

/// Keeps the endpoint's runtime alive; dropping it stops serving.
pub struct MetricsEndpoint {
    address: SocketAddr,
    status: Arc<OnceLock<LocalStatus>>,
    _runtime: tokio::runtime::Runtime,
}

impl MetricsEndpoint {
    /// Serves `status` as the page at `/` from now on.
    pub fn show_status(&self, status: LocalStatus) {
        if self.status.set(status).is_ok() {
            tell!("quern: status page on http://{}/", self.address);
        }
    }
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
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("serving metrics on {addr}"))?;
    let address = listener.local_addr()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    node::metric_catalog::describe();
    coordinator::raft_peers::describe_metrics();
    coordinator::raft_metrics::describe_metrics();
    coordinator::job_progress::describe_metrics();
    coordinator::authorize::describe_metrics();
    coordinator::state_reads::describe_metrics();
    coordinator::lease_desk::describe_metrics();
    let status = Arc::new(OnceLock::new());
    runtime.spawn(upkeep(handle.clone()));
    runtime.spawn(accept(listener, handle, status.clone()));
    tell!("quern: metrics on http://{address}/metrics");
    Ok(MetricsEndpoint {
        address,
        status,
        _runtime: runtime,
    })
}

async fn upkeep(handle: PrometheusHandle) {
    loop {
        tokio::time::sleep(UPKEEP_INTERVAL).await;
        handle.run_upkeep();
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    status: Arc<OnceLock<LocalStatus>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics endpoint: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (handle, status) = (handle.clone(), status.clone());
        let service = service_fn(move |request| answer(request, handle.clone(), status.clone()));
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("metrics endpoint: a connection ended: {e}");
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    handle: PrometheusHandle,
    status: Arc<OnceLock<LocalStatus>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET only\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/" => match status.get() {
            Some(status) => match status.report(PAGE_READ).await {
                Ok(report) => reply(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    status_page::render(&report),
                ),
                Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
            },
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "no status page here: coordinators serve it; metrics are at /metrics\n".into(),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: see /metrics\n".into(),
        ),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    // The only test in this binary that installs the global recorder.
    #[test]
    fn serves_metrics_refuses_a_page_it_has_not_and_drops_silent_clients() {
        let endpoint = serve("127.0.0.1:0".parse().unwrap()).unwrap();
        metrics::gauge!("quern_memory_budget_bytes").set(7.0);
        let metrics = get(endpoint.address, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("quern_memory_budget_bytes 7"), "{metrics}");
        // No status page until a coordinator gives one.
        let page = get(endpoint.address, "/");
        assert!(page.starts_with("HTTP/1.1 404"), "{page}");
        assert!(get(endpoint.address, "/other").starts_with("HTTP/1.1 404"));

        // A client that never sends its request is dropped at the bound.
        let mut silent = TcpStream::connect(endpoint.address).unwrap();
        silent
            .set_read_timeout(Some(HEADER_READ_TIMEOUT * 3))
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = silent.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited < HEADER_READ_TIMEOUT * 2,
            "a silent client was dropped after {waited:?}"
        );
    }
}
