//! Three `quern coordinator` processes on loopback, from config files,
//! with certificates from `quern cert`; clients through `quern status` and
//! `quern submit`. Replicas can be SIGKILLed and restarted on their data
//! directories. Each replica's log is appended to `coord-ID.log`; a test
//! that panics keeps the cluster's directory and prints where it is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{quern, run};

pub struct Cluster {
    dir: tempfile::TempDir,
    /// Replica `id` is `children[id - 1]`.
    pub children: Vec<Child>,
    /// Replicas that ended as the test meant them to: killed, or seen
    /// exiting by [`Cluster::exit_status`] (until restarted).
    ended: std::collections::BTreeSet<u64>,
    /// Where replica `id` serves its metrics: `metrics[id - 1]`.
    pub metrics: Vec<String>,
    /// Replica `id`'s client address: `addresses[id - 1]`.
    pub addresses: Vec<String>,
    /// Flags every replica is started with.
    flags: Vec<String>,
}

/// `quern cert issue` of a certificate named `name` for 127.0.0.1, from
/// the CA in `certs`.
pub fn issue(certs: &Path, name: &str) {
    run(
        quern(&certs.join("unused"))
            .args([
                "cert",
                "issue",
                "--san",
                "127.0.0.1",
                "--name",
                name,
                "--dir",
            ])
            .arg(certs),
        0,
    );
}

/// `quern node --id ID` with these coordinators, store and root.
pub fn node(
    id: u64,
    certs: &Path,
    data_dir: &Path,
    coordinators: &[String],
    root: &Path,
) -> Command {
    let mut cmd = quern(&data_dir.join("unused"));
    cmd.args(["node", "--id", &id.to_string(), "--memory", "128M"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cert-dir")
        .arg(certs)
        .arg("--root")
        .arg(root);
    for address in coordinators {
        cmd.arg("--coordinator").arg(address);
    }
    cmd
}

/// Ports below Linux's ephemeral range (`ip_local_port_range` starts at
/// 32768): a port chosen there cannot become some client socket's
/// ephemeral port between now and the server's bind. A port the kernel
/// hands out (bind to port 0) can, and once did: a replica that could not
/// bind exited at start, and its cluster never elected a leader.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port free for both UDP (QUIC) and TCP (metrics) right now,
/// never the same twice in one test process. Test processes start at
/// different places in `TEST_PORTS`, by process id.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = TEST_PORTS.start + offset as u16;
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Three replicas, each started with `flags` after `coordinator`.
    pub fn start_with(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let data = dir.path().join("data");
        run(quern(&data).args(["cert", "init", "--dir"]).arg(&certs), 0);
        for name in ["coord-1", "coord-2", "coord-3", "client"] {
            issue(&certs, name);
        }
        let addresses: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{} = \"{a}\"", i + 1))
            .collect();
        for id in 1..=3 {
            std::fs::write(
                dir.path().join(format!("coord-{id}.toml")),
                format!(
                    "[cert]\ndir = {certs:?}\n[coordinator]\nid = {id}\nlisten = \"{}\"\ndata_dir = {:?}\npeers = {{ {} }}\n",
                    addresses[id - 1],
                    dir.path().join(format!("coord-{id}")),
                    peers.join(", ")
                ),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join("client.toml"),
            format!("[cert]\ndir = {certs:?}\n[client]\ncoordinators = {addresses:?}\n"),
        )
        .unwrap();
        let mut cluster = Self {
            dir,
            children: Vec::new(),
            ended: Default::default(),
            metrics: (0..3)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            addresses,
        };
        for id in 1..=3 {
            let child = cluster.spawn(id);
            cluster.children.push(child);
        }
        cluster
    }

    fn spawn(&self, id: u64) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("coord-{id}.log")))
            .unwrap();
        quern(&self.path("data"))
            .env("RUST_LOG", "warn,coordinator=info")
            .arg("--config")
            .arg(self.path(&format!("coord-{id}.toml")))
            .arg("coordinator")
            .arg("--metrics")
            .arg(&self.metrics[id as usize - 1])
            .args(&self.flags)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILLs replica `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let child = &mut self.children[id as usize - 1];
        child.kill().unwrap();
        child.wait().unwrap();
        self.ended.insert(id);
    }

    /// Starts replica `id` again on its data directory. Its metrics move
    /// to a fresh port: the old one, free since the kill, may have become
    /// another socket's ephemeral port meanwhile, and a coordinator that
    /// cannot serve its metrics does not start.
    pub fn restart(&mut self, id: u64) {
        let i = id as usize - 1;
        assert!(
            self.children[i].try_wait().unwrap().is_some(),
            "replica {id} is still running"
        );
        self.metrics[i] = format!("127.0.0.1:{}", free_port());
        self.children[i] = self.spawn(id);
        self.ended.remove(&id);
    }

    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = quern(&self.path("data"));
        cmd.arg("--config").arg(self.path("client.toml")).args(args);
        cmd
    }

    /// `quern status --json`: the leader's report.
    pub fn status(&self) -> serde_json::Value {
        let out = run(&mut self.client(&["status", "--json"]), 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The leader's status, once there is a leader. Fails at once, with
    /// its log, if a replica has exited.
    pub fn wait_for_leader(&mut self, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            let status = self.status();
            if !status["leader"].is_null() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Replica `id`'s exit status once it has exited, which the test
    /// then expects.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let status = self.children[id as usize - 1].try_wait().unwrap();
        if status.is_some() {
            self.ended.insert(id);
        }
        status
    }

    /// Panics with the log of the first replica found to have exited
    /// that the test did not end or expect to.
    fn assert_running(&mut self) {
        for (id, child) in (1..).zip(self.children.iter_mut()) {
            if self.ended.contains(&id) {
                continue;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read(self.dir.path().join(format!("coord-{id}.log")));
                panic!(
                    "replica {id} exited ({status}); its log:\n{}",
                    text(&log.unwrap_or_default())
                );
            }
        }
    }

    /// `quern status --replicas --json`: every replica's own view.
    pub fn replicas(&self) -> serde_json::Value {
        let out = run(&mut self.client(&["status", "--replicas", "--json"]), 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every replica's view once all three have applied the same index
    /// to equal states. Fails at once if two replicas at the same index
    /// hold different states.
    pub fn wait_until_replicas_agree(&self, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let replicas = self.replicas();
            match replicas["verdict"].as_str() {
                Some("agree") => return replicas["replicas"].as_array().unwrap().clone(),
                Some("diverged") => panic!("replicas diverged: {replicas:#}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not agree within {within:?}: {replicas:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept the cluster's files in {}", dir.keep().display());
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number after `label` in `submit`'s summary.
pub fn figure(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {summary}"))
        .trim()
        .parse()
        .unwrap()
}

/// A manifest line for file `i`: size `100 + i`, the given mtime, a
/// checksum, and a path that `pad` more bytes of directory name lengthen
/// (fewer files then fill a chunk's bytes).
pub fn tsv_line(i: usize, mtime: u64, pad: usize) -> String {
    format!(
        "/srv/data/{:03}{}/file-{i:06}.log\t{}\t{mtime}\t{:032x}\n",
        i % 37,
        "d".repeat(pad),
        100 + i,
        i
    )
}

/// Files `0..n`, those in `changed` with a later mtime.
pub fn write_tsv(path: &Path, n: usize, changed: &[usize]) {
    let text: String = (0..n)
        .map(|i| {
            let mtime = if changed.contains(&i) {
                1_800_000_000
            } else {
                1_700_000_000
            };
            tsv_line(i, mtime, 0)
        })
        .collect();
    std::fs::write(path, text).unwrap();
}
