//! The QUIC RPC transport over loopback with certificates from a cluster
//! CA: round trips, refusals of peers outside the cluster (logged and
//! counted), size limits, timeouts, concurrency and shutdown.
//!
//! Its own test binary: it installs the process's global metrics recorder
//! and log subscriber.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use proto_schema::quic::{
    Handler, PEER_REFUSED_METRIC, Peer, RpcClient, RpcConfig, RpcConnection, RpcError, RpcServer,
};
use proto_schema::tls::{ALPN, TlsIdentity, provider};
use rustls::pki_types::pem::PemObject;

#[path = "support/captured_log.rs"]
mod captured_log;
#[path = "support/cluster_ca.rs"]
mod cluster_ca;
use captured_log::warnings;
use cluster_ca::Cluster;

const SERVER_NAME: &str = "coord-1";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The refusal counter's value for one reason and role.
fn refusals(reason: &str, role: &str) -> u64 {
    let text = metrics().render();
    text.lines()
        .find(|line| {
            line.starts_with(PEER_REFUSED_METRIC)
                && line.contains(&format!("reason=\"{reason}\""))
                && line.contains(&format!("role=\"{role}\""))
        })
        .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Answers with the caller's fingerprint followed by the request, so a
/// test sees both what arrived and who the server thought sent it.
async fn echo(peer: Peer, request: Vec<u8>) -> Vec<u8> {
    let mut out = peer.fingerprint.0.to_vec();
    out.extend_from_slice(&request);
    out
}

/// A server of `handler` presenting the `SERVER_NAME` certificate.
fn serve(cluster: &Cluster, config: RpcConfig, handler: impl Handler) -> (RpcServer, TlsIdentity) {
    let identity = cluster.identity(SERVER_NAME);
    let server = RpcServer::bind(
        any_port(),
        identity.server_config().unwrap(),
        config,
        handler,
    )
    .unwrap();
    (server, identity)
}

fn serve_echo(cluster: &Cluster, config: RpcConfig) -> (RpcServer, TlsIdentity) {
    serve(cluster, config, echo)
}

/// A client with certificate `name`, connected to `server`. The client is
/// returned too: dropping it closes its endpoint.
async fn connect(
    cluster: &Cluster,
    name: &str,
    config: RpcConfig,
    server: &RpcServer,
) -> (RpcClient, RpcConnection) {
    let client = client(&cluster.identity(name), config);
    let conn = client
        .connect(server.local_addr(), SERVER_NAME)
        .await
        .unwrap();
    (client, conn)
}

fn client(identity: &TlsIdentity, config: RpcConfig) -> RpcClient {
    RpcClient::new(any_port(), identity.client_config().unwrap(), config).unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn requests_of_several_sizes_round_trip_with_both_identities_known() {
    let cluster = Cluster::new();
    let (server, server_identity) = serve_echo(&cluster, RpcConfig::default());
    let client_identity = cluster.identity("node-1");
    let client = client(&client_identity, RpcConfig::default());
    let conn = client
        .connect(server.local_addr(), SERVER_NAME)
        .await
        .unwrap();
    assert_eq!(
        conn.server_fingerprint(),
        Some(server_identity.fingerprint())
    );
    for len in [0, 1, 1000, 65_537, 4 << 20] {
        let request = pattern(len);
        let response = conn.request(&request).await.unwrap();
        assert_eq!(
            &response[..32],
            &client_identity.fingerprint().0,
            "len {len}"
        );
        assert!(response[32..] == request[..], "len {len}: payload differs");
    }
    client.shutdown().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_counted() {
    let cluster = Cluster::new();
    let (server, _) = serve_echo(&cluster, RpcConfig::default());
    // Trusts the cluster CA, but presents no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(cluster.ca.cert_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let client = RpcClient::new(any_port(), tls, RpcConfig::default()).unwrap();

    let before = refusals("no_certificate", "server");
    // TLS 1.3: the client may finish its handshake before the server has
    // judged it, so the refusal can surface on the first request.
    let result = async {
        let conn = client.connect(server.local_addr(), SERVER_NAME).await?;
        conn.request(b"hello").await
    }
    .await;
    match result {
        Err(RpcError::RefusedByPeer { reason, .. }) => {
            assert!(reason.contains("no_certificate"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    wait_for(|| refusals("no_certificate", "server") == before + 1).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused_and_counted() {
    let cluster = Cluster::new();
    let (server, _) = serve_echo(&cluster, RpcConfig::default());
    // Trusts our CA, but its certificate comes from another one.
    let issued = Cluster::new().ca.issue("node-1", &[], 1).unwrap();
    let stranger =
        TlsIdentity::from_pem(cluster.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let client = client(&stranger, RpcConfig::default());

    let before = refusals("unknown_ca", "server");
    warnings();
    let result = async {
        let conn = client.connect(server.local_addr(), SERVER_NAME).await?;
        conn.request(b"hello").await
    }
    .await;
    match result {
        Err(RpcError::RefusedByPeer { reason, .. }) => {
            assert!(reason.contains("unknown_ca"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    wait_for(|| refusals("unknown_ca", "server") == before + 1).await;
    let log = warnings();
    let line = log
        .lines()
        .find(|l| l.contains("role=\"server\"") && l.contains("reason=\"unknown_ca\""))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("WARN")
            && line.contains("refused a peer without a certificate from the cluster CA")
            && line.contains("remote=127.0.0.1:"),
        "{line}"
    );

    // The server still serves members of the cluster.
    let (_member, conn) = connect(&cluster, "node-2", RpcConfig::default(), &server).await;
    assert!(
        conn.request(b"still here")
            .await
            .unwrap()
            .ends_with(b"still here")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certificates_are_refused_and_counted() {
    let cluster = Cluster::new();
    let (server, _) = serve_echo(&cluster, RpcConfig::default());
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    for (not_before, not_after) in [(now - 10 * day, now - day), (now + day, now + 10 * day)] {
        let issued = cluster
            .ca
            .issue_valid("node-1", &[], not_before, not_after)
            .unwrap();
        let identity =
            TlsIdentity::from_pem(cluster.ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
                .unwrap();
        let client = client(&identity, RpcConfig::default());
        let before = refusals("expired", "server");
        let result = async {
            let conn = client.connect(server.local_addr(), SERVER_NAME).await?;
            conn.request(b"hello").await
        }
        .await;
        match result {
            Err(RpcError::RefusedByPeer { reason, .. }) => {
                assert!(reason.contains("expired"), "{reason}")
            }
            other => panic!("valid {not_before:?} to {not_after:?}: {other:?}"),
        }
        wait_for(|| refusals("expired", "server") == before + 1).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_with_a_certificate_from_another_ca_is_refused_by_the_client() {
    let cluster = Cluster::new();
    let (server, _) = serve_echo(&Cluster::new(), RpcConfig::default());
    let client = client(&cluster.identity("node-1"), RpcConfig::default());

    let before = refusals("unknown_ca", "client");
    let err = client
        .connect(server.local_addr(), SERVER_NAME)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RpcError::PeerRefused { .. }), "{err}");
    assert!(err.to_string().contains("not from the cluster CA"), "{err}");
    assert_eq!(refusals("unknown_ca", "client"), before + 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_connection_keeps_serving() {
    let cluster = Cluster::new();
    let small = RpcConfig {
        max_message: 1 << 20,
        ..RpcConfig::default()
    };
    let (server, _) = serve_echo(&cluster, small.clone());
    // A client with a larger limit than the server's.
    let (_client, conn) = connect(&cluster, "node-1", RpcConfig::default(), &server).await;

    let err = conn.request(&pattern(3 << 20)).await.unwrap_err();
    assert!(matches!(err, RpcError::Refused { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("request of 3145728 bytes is over the limit of 1048576 bytes"),
        "{err}"
    );
    assert!(conn.request(b"next").await.unwrap().ends_with(b"next"));
    server.shutdown().await.unwrap();

    // A response over the client's own limit: the echo of 1 MiB is 32
    // bytes longer than a 1 MiB client accepts.
    let (server, _) = serve_echo(&cluster, RpcConfig::default());
    let (_strict, conn) = connect(&cluster, "node-2", small, &server).await;
    let err = conn.request(&pattern(1 << 20)).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::TooLarge {
                what: "response",
                ..
            }
        ),
        "{err}"
    );
    // And a request over it is refused before anything is sent.
    let err = conn.request(&pattern((1 << 20) + 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::TooLarge {
                what: "request",
                ..
            }
        ),
        "{err}"
    );
    assert!(conn.request(b"fine").await.unwrap().ends_with(b"fine"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_to_an_unresponsive_handler_times_out() {
    let cluster = Cluster::new();
    let handler = |_peer: Peer, request: Vec<u8>| async move {
        if request == b"hang" {
            std::future::pending::<()>().await;
        }
        request
    };
    let (server, _) = serve(&cluster, RpcConfig::default(), handler);
    let config = RpcConfig {
        request_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let (_client, conn) = connect(&cluster, "node-1", config, &server).await;
    let started = Instant::now();
    let err = conn.request(b"hang").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(
        err.to_string().starts_with("no response from 127.0.0.1:")
            && err.to_string().ends_with("within 300ms"),
        "{err}"
    );
    assert_eq!(conn.request(b"ok").await.unwrap(), b"ok");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_fails_its_request_at_once_and_nothing_else() {
    let cluster = Cluster::new();
    let handler = |_peer: Peer, request: Vec<u8>| async move {
        assert_ne!(request, b"boom", "this handler panics on purpose");
        request
    };
    let (server, _) = serve(&cluster, RpcConfig::default(), handler);
    let (_client, conn) = connect(&cluster, "node-1", RpcConfig::default(), &server).await;
    let started = Instant::now();
    let err = conn.request(b"boom").await.unwrap_err();
    assert!(matches!(err, RpcError::Stream { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(conn.request(b"ok").await.unwrap(), b"ok");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection() {
    let cluster = Cluster::new();
    let handler = |_peer: Peer, request: Vec<u8>| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        request
    };
    let (server, _) = serve(&cluster, RpcConfig::default(), handler);
    let (_client, conn) = connect(&cluster, "node-1", RpcConfig::default(), &server).await;
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..50u32 {
        let conn = conn.clone();
        requests.spawn(async move {
            let request = i.to_le_bytes().repeat(i as usize + 1);
            assert_eq!(conn.request(&request).await.unwrap(), request);
        });
    }
    while let Some(done) = requests.join_next().await {
        done.unwrap();
    }
    // One after another they would take 5 s.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let cluster = Cluster::new();
    let config = RpcConfig {
        max_connections: 1,
        ..RpcConfig::default()
    };
    let (server, _) = serve_echo(&cluster, config);
    let (_first, conn) = connect(&cluster, "node-1", RpcConfig::default(), &server).await;
    assert!(conn.request(b"a").await.is_ok());
    let second = client(&cluster.identity("node-2"), RpcConfig::default());
    let err = second
        .connect(server.local_addr(), SERVER_NAME)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RpcError::Handshake { .. }), "{err}");
    assert!(conn.request(b"b").await.is_ok());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_joins_every_task_within_its_bound() {
    let cluster = Cluster::new();
    let handler = |_peer: Peer, request: Vec<u8>| async move {
        if request == b"hang" {
            std::future::pending::<()>().await;
        }
        request
    };
    let config = RpcConfig {
        shutdown_timeout: Duration::from_secs(2),
        ..RpcConfig::default()
    };
    let (server, _) = serve(&cluster, config, handler);
    let addr = server.local_addr();
    let client = client(&cluster.identity("node-1"), RpcConfig::default());
    let conn = client.connect(addr, SERVER_NAME).await.unwrap();
    assert_eq!(conn.request(b"up").await.unwrap(), b"up");
    // A request stuck in its handler, and an idle second connection.
    let stuck = tokio::spawn({
        let conn = conn.clone();
        async move { conn.request(b"hang").await }
    });
    let _idle = client.connect(addr, SERVER_NAME).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    server.shutdown().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    // The stuck request learns at once that the server went away.
    let err = tokio::time::timeout(Duration::from_secs(1), stuck)
        .await
        .expect("the in-flight request ends")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err}");
    // Nobody answers any more.
    let short = RpcConfig {
        connect_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    assert!(
        self::client(&cluster.identity("node-2"), short)
            .connect(addr, SERVER_NAME)
            .await
            .is_err()
    );
}

/// Not a check, a figure: 64 MiB as 1 MiB requests on one connection,
/// one at a time, then 8 in flight
/// (`cargo test -p proto-schema --test rpc throughput -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_a_64_mib_stream_of_requests() {
    let cluster = Cluster::new();
    let handler = |_peer: Peer, request: Vec<u8>| async move {
        (request.len() as u32).to_le_bytes().to_vec()
    };
    let (server, _) = serve(&cluster, RpcConfig::default(), handler);
    let (_client, conn) = connect(&cluster, "node-1", RpcConfig::default(), &server).await;
    let request = Arc::new(pattern(1 << 20));
    for in_flight in [1, 8] {
        let started = Instant::now();
        let mut senders = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let (conn, request) = (conn.clone(), request.clone());
            senders.spawn(async move {
                for _ in 0..64 / in_flight {
                    let ack = conn.request(&request).await.unwrap();
                    assert_eq!(ack, (1u32 << 20).to_le_bytes());
                }
            });
        }
        while let Some(done) = senders.join_next().await {
            done.unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "64 MiB as 1 MiB requests, {in_flight} in flight: {seconds:.3} s, {:.0} MiB/s",
            64.0 / seconds
        );
    }
    server.shutdown().await.unwrap();
}

/// Waits up to 5 s for a condition set by another task.
async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
