//! `quern cert init` and `quern cert issue` make files a server and a
//! client load and complete a mutual-TLS handshake with; keys are private;
//! nothing is overwritten without --force; bad files are named.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{quern, run};
use proto_schema::quic::{RpcClient, RpcConfig, RpcServer};
use proto_schema::tls::{CertPaths, Fingerprint, TlsIdentity};

fn cert(dir: &Path, args: &[&str], status: i32) -> (String, String) {
    let data = dir.join("data");
    let out = run(quern(&data).arg("cert").args(args), status);
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn printed_fingerprint(stdout: &str) -> Fingerprint {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .expect("a fingerprint line")
        .parse()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn issued_certificates_complete_a_mutual_tls_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let ca = ca_dir.to_str().unwrap();

    let (stdout, _) = cert(tmp.path(), &["init", "--dir", ca], 0);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    let ca_fingerprint = printed_fingerprint(&stdout);

    // Not again without --force; with it, a new CA.
    let (_, stderr) = cert(tmp.path(), &["init", "--dir", ca], 1);
    assert!(
        stderr.contains("ca.pem exists") && stderr.contains("--force"),
        "{stderr}"
    );
    let (stdout, _) = cert(tmp.path(), &["init", "--dir", ca, "--force"], 0);
    let ca_fingerprint_2 = printed_fingerprint(&stdout);
    assert_ne!(ca_fingerprint, ca_fingerprint_2);

    let (stdout, _) = cert(
        tmp.path(),
        &[
            "issue",
            "--dir",
            ca,
            "--name",
            "coord-1",
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
        ],
        0,
    );
    assert!(
        stdout.contains("names: coord-1, 127.0.0.1, localhost")
            && stdout.contains("role: coordinator replica 1: Raft RPCs"),
        "{stdout}"
    );
    let server_fingerprint = printed_fingerprint(&stdout);
    assert_eq!(mode(&ca_dir.join("coord-1.key")), 0o600);

    // A client's certificate in a directory of its own, with the CA's
    // certificate copied beside it (and never its key).
    let node_dir = tmp.path().join("node-1");
    let (stdout, _) = cert(
        tmp.path(),
        &[
            "issue",
            "--dir",
            ca,
            "--name",
            "node-1",
            "--out",
            node_dir.to_str().unwrap(),
        ],
        0,
    );
    let client_fingerprint = printed_fingerprint(&stdout);
    assert!(
        stdout.contains("role: node 1: registers, heartbeats, finds its work"),
        "{stdout}"
    );
    let (stdout, _) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "alice"], 0);
    assert!(
        stdout.contains("role: operator: creates datasets"),
        "{stdout}"
    );
    // A name shaped like a node's that is not one gives no role: refused.
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "node-x"], 1);
    assert!(stderr.contains("\"node-x\" gives no role"), "{stderr}");
    assert!(!ca_dir.join("node-x.pem").exists());
    assert!(!node_dir.join("ca.key").exists());
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "coord-1"], 1);
    assert!(stderr.contains("coord-1.pem exists"), "{stderr}");

    let server = TlsIdentity::load(&CertPaths::in_dir(&ca_dir, "coord-1")).unwrap();
    let client = TlsIdentity::load(&CertPaths::in_dir(&node_dir, "node-1")).unwrap();
    assert_eq!(server.fingerprint(), server_fingerprint);
    assert_eq!(client.fingerprint(), client_fingerprint);
    assert_eq!(client.ca_fingerprint(), ca_fingerprint_2);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handler = |peer: proto_schema::quic::Peer, _request: Vec<u8>| async move {
            peer.fingerprint.0.to_vec()
        };
        let server = RpcServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            server.server_config().unwrap(),
            RpcConfig::default(),
            handler,
        )
        .unwrap();
        let client = RpcClient::new(
            "127.0.0.1:0".parse().unwrap(),
            client.client_config().unwrap(),
            RpcConfig::default(),
        )
        .unwrap();
        // Dialled by the IP address in its subject alternative names.
        let conn = client
            .connect(server.local_addr(), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(conn.server_fingerprint(), Some(server_fingerprint));
        assert_eq!(
            conn.request(b"who am I").await.unwrap(),
            client_fingerprint.0
        );
        client.shutdown().await;
        server.shutdown().await.unwrap();
    });
}

#[test]
fn bad_or_missing_ca_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let ca = dir.to_str().unwrap();
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "n1"], 1);
    assert!(
        stderr.contains("cannot read") && stderr.contains("ca.pem"),
        "{stderr}"
    );

    cert(tmp.path(), &["init", "--dir", ca], 0);
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "n1"], 1);
    assert!(stderr.contains("ca.pem"), "{stderr}");

    cert(tmp.path(), &["init", "--dir", ca, "--force"], 0);
    std::fs::write(dir.join("ca.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "n1"], 1);
    assert!(
        stderr.contains("ca.key") && stderr.contains("private key"),
        "{stderr}"
    );

    // A bad name is refused before anything is written.
    cert(tmp.path(), &["init", "--dir", ca, "--force"], 0);
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "../x"], 1);
    assert!(stderr.contains("not a usable certificate name"), "{stderr}");
}

/// A symbolic link planted where a key goes is never written through:
/// refused without --force (even a dangling one), replaced with --force.
#[test]
fn keys_are_never_written_through_a_symbolic_link() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let ca = dir.to_str().unwrap();
    cert(tmp.path(), &["init", "--dir", ca], 0);
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();

    symlink(&victim, dir.join("n1.key")).unwrap();
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "n1"], 1);
    assert!(stderr.contains("n1.key exists"), "{stderr}");
    let elsewhere = tmp.path().join("made-through-a-link");
    std::fs::remove_file(dir.join("n1.key")).unwrap();
    symlink(&elsewhere, dir.join("n1.key")).unwrap();
    let (_, stderr) = cert(tmp.path(), &["issue", "--dir", ca, "--name", "n1"], 1);
    assert!(stderr.contains("n1.key"), "{stderr}");
    assert!(
        !elsewhere.exists(),
        "a key was written through a dangling link"
    );

    symlink(&victim, dir.join("n2.key")).unwrap();
    cert(
        tmp.path(),
        &["issue", "--dir", ca, "--name", "n2", "--force"],
        0,
    );
    let key = dir.join("n2.key");
    assert!(!std::fs::symlink_metadata(&key).unwrap().is_symlink());
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    TlsIdentity::load(&CertPaths::in_dir(&dir, "n2")).unwrap();
}
