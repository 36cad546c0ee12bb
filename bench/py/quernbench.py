"""Shared by the scripts in bench/ and chaos/: building the binaries,
generating datasets with quern-datagen, listing files in quern's manifest
order, the peers quern is measured beside (`sort -u`, DuckDB), sampling
processes' resident memory and CPU from /proc, scraping a metrics
endpoint, and running three `quern coordinator`s and `quern node`s on
loopback."""

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
MIB = 2**20


def parse_size(text):
    """A size with an optional binary suffix, as the quern CLI reads it."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text}")
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match.group(2).upper()]
    return int(match.group(1)) << shift


def mib(n):
    return f"{n / MIB:.1f} MiB"


def release_dir():
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/quern-target"))
    return Path(target) / "release"


def build(features=()):
    """Builds every binary of the workspace in release mode; returns their
    directory."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(release_dir().parent))
    cmd = ["cargo", "build", "--release", "--locked", "--workspace", "--bins"]
    if features:
        cmd += ["--features", ",".join(features)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return release_dir()


def binaries(debug):
    """Builds the workspace's binaries (release, or debug with `debug`);
    returns their directory. With QUERN_BINARIES set, builds nothing and
    returns that directory instead (to compare two builds kept apart)."""
    if os.environ.get("QUERN_BINARIES"):
        return Path(os.environ["QUERN_BINARIES"])
    if not debug:
        return build()
    subprocess.run(["cargo", "build", "--workspace", "--locked"], cwd=REPO, check=True)
    return release_dir().parent / "debug"


def generate(bins, out, args):
    """Runs `quern-datagen ARGS --out OUT`, unless OUT already holds what
    the same arguments made."""
    marker = out / ".complete"
    spec = " ".join(map(str, args))
    if marker.exists() and marker.read_text() == spec:
        return
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([bins / "quern-datagen", *map(str, args), "--out", out], check=True)
    marker.write_text(spec)


def generate_lines(bins, out, files, size):
    """`files` files of `size` bytes of lines, 30% duplicates, seed 1."""
    generate_shape(bins, out, "lines", files, size)


def generate_shape(bins, out, shape, files, size):
    """`files` plain files of `size` bytes of a line shape (lines, urls,
    paths, logs), 30% duplicates, seed 1."""
    generate(bins, out, [shape, "--files", files, "--size", f"{size}B", "--dup", "0.3",
                         "--seed", "1"])


def generate_small_files(bins, out, files):
    """`files` files of ~1 KiB of lines (30% duplicates, seed 1) under
    `out`, at most 1000 entries per directory."""
    generate(bins, out, ["smallfiles", "--files", files, "--size", "1KiB", "--dup", "0.3",
                         "--seed", "1"])


def generate_inventory(bins, out, files, records):
    """`files` inventory files (path, size, mtime, md5) of `records` records
    in all, 10% relisted paths, seed 1."""
    generate(bins, out, ["inventory", "--files", files, "--records", records // files,
                         "--relisted", "0.1", "--seed", "1"])


def inputs(directory):
    return sorted(p for p in Path(directory).iterdir() if not p.name.startswith("."))


def manifest(paths):
    """The files quern ingests for PATH arguments, in its manifest order:
    arguments in the order given (a symlink given as an argument is
    followed); directories walked depth first, each directory's entries
    sorted bytewise by name; symbolic links inside a walk skipped (quern
    skips and counts them unless --follow). Yields bytes paths; only the
    entries of the directories being walked are held."""
    for path in map(os.fsencode, paths):
        if os.path.isdir(path):
            yield from _walk(path)
        else:
            yield path


def _walk(directory):
    with os.scandir(directory) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        else:
            yield entry.path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


DUCKDB_VERSION = "1.4.4"
VENV = Path.home() / ".cache" / "quern-bench-venv"
DUCKDB_SCRIPT = r"""
import sys, duckdb
memory, temp, out, *files = sys.argv[1:]
con = duckdb.connect()
con.execute(f"SET memory_limit='{memory}'")
con.execute("SET threads=2")
con.execute(f"SET temp_directory='{temp}'")
con.execute("SET preserve_insertion_order=false")
# One VARCHAR column per line: generated lines are printable ASCII without
# \x01, and quoting and escaping are off.
paths = ", ".join(f"'{f}'" for f in files)
source = (f"read_csv([{paths}], columns={{'line': 'VARCHAR'}}, delim='\x01', quote='', "
          "escape='', header=false, auto_detect=false)")
con.execute(f"COPY (SELECT DISTINCT line FROM {source}) TO '{out}' "
            "(FORMAT csv, HEADER false, QUOTE '', DELIMITER '\x01')")
"""


def duckdb_python():
    """The venv's python with duckdb importable, or (None, reason)."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", f"import duckdb; assert duckdb.__version__ == '{DUCKDB_VERSION}'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, None
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True,
                       capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"duckdb=={DUCKDB_VERSION}"],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        return None, f"installing duckdb=={DUCKDB_VERSION} failed: {e.stderr.decode()[-300:]}"
    return python, None


def count_lines(path):
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))



def sort_u(memory, work, *rest):
    return ["sort", "-u", "-S", f"{memory // MIB}M", "--parallel=2", "-T", str(work), *rest]



def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def total_memory():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return "unknown"


def sort_version():
    return subprocess.run(["sort", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def read_rss(pid):
    """{"RssAnon": bytes, "RssFile": bytes} of a process, or None once it
    is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("RssAnon", "RssFile"):
                    fields[name] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return fields if len(fields) == 2 else None


class RssSampler:
    """Samples a child's RSS every `interval` seconds until it exits."""

    def __init__(self, interval, trace=None):
        self.interval = interval
        self.trace = trace
        self.peak_anon = self.peak_file = self.samples = 0
        self.longest_gap = 0.0

    def follow(self, child):
        start = last = time.monotonic()
        while child.poll() is None:
            status = read_rss(child.pid)
            now = time.monotonic()
            if status:
                self.samples += 1
                self.longest_gap = max(self.longest_gap, now - last)
                last = now
                self.peak_anon = max(self.peak_anon, status["RssAnon"])
                self.peak_file = max(self.peak_file, status["RssFile"])
                if self.trace:
                    self.trace.write(f"{now - start:.3f} {status['RssAnon']} {status['RssFile']}\n")
            time.sleep(self.interval)
        return time.monotonic() - start


def run_measured(cmd, stdout=None, env=None, watch=None):
    """Runs `cmd` to its end; returns (exit code, wall seconds, CPU seconds,
    peak RSS bytes, stderr), CPU and peak from the kernel's rusage (wait4).
    With `watch` (an RssWatch), the child's anonymous RSS is sampled too,
    under the name "cmd"."""
    start = time.monotonic()
    child = subprocess.Popen([str(c) for c in cmd], stdout=stdout or subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env)
    if watch:
        watch.add("cmd", child.pid)
    # Read stderr while the child runs, so a chatty child cannot block.
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    if watch:
        watch.remove("cmd")
    child.returncode = os.waitstatus_to_exitcode(status)
    return (child.returncode, wall, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024, stderr)


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` has used so far (its threads,
    not its children), from /proc/PID/stat; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces: the fields after it.
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # utime and stime are fields 14 and 15; fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """Samples the anonymous RSS of named processes every `interval`
    seconds from a thread, for processes this script does not wait on
    itself (long-running nodes) or waits on with wait4 (run_measured).
    `peaks` maps each name to its peak; `longest_gap` is the longest time
    between two samples, to show the sampling kept up."""

    def __init__(self, interval):
        self.interval = interval
        self.pids = {}
        self.peaks = {}
        self.longest_gap = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, name, pid):
        with self._lock:
            self.pids[name] = pid
            self.peaks.setdefault(name, 0)

    def remove(self, name):
        with self._lock:
            self.pids.pop(name, None)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        last = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                for name, pid in self.pids.items():
                    status = read_rss(pid)
                    if status:
                        self.peaks[name] = max(self.peaks[name], status["RssAnon"])
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self._stop.wait(self.interval)


def scrape(url):
    """The text a Prometheus endpoint serves, or None."""
    try:
        return urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None


def metric_sum(text, name):
    """The sum of metric `name` over all its label sets in a Prometheus
    text page, or None if the page has none."""
    total = None
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


# Ports below Linux's ephemeral range (which starts at 32768): a port
# chosen there cannot become some client socket's ephemeral port between
# now and the server's bind, as one the kernel hands out (bind to 0) can.
TEST_PORTS = range(20000, 32000)
_next_port = [os.getpid() * 7919 % len(TEST_PORTS)]


def free_port():
    """A loopback port free for both UDP (QUIC) and TCP (metrics) now,
    never the same twice in one process."""
    for _ in TEST_PORTS:
        port = TEST_PORTS[_next_port[0] % len(TEST_PORTS)]
        _next_port[0] += 1
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free loopback port in {TEST_PORTS}")


def figure(summary, label):
    """The number after `label` in `quern submit`'s summary."""
    for line in summary.splitlines():
        rest = line.strip()
        if rest.startswith(label):
            return int(rest[len(label):].strip())
    raise ValueError(f"no {label!r} in {summary}")


class Coordinators:
    """Three `quern coordinator`s on loopback ports under `run` (emptied
    first): a cluster CA and certificates from `quern cert`, one config,
    data directory and log (`coord-ID.log`, appended across restarts) per
    replica. `client` holds the flags client commands need; `flags` are
    given to every `quern coordinator` (e.g. `--lease-time 2s`)."""

    def __init__(self, quern, run, flags=()):
        self.quern = str(quern)
        self.run = Path(run)
        self.flags = [str(f) for f in flags]
        shutil.rmtree(self.run, ignore_errors=True)
        self.run.mkdir(parents=True)
        certs = self.run / "certs"
        subprocess.run([self.quern, "cert", "init", "--dir", certs], check=True,
                       stdout=subprocess.DEVNULL)
        for name in ["coord-1", "coord-2", "coord-3", "client"]:
            subprocess.run([self.quern, "cert", "issue", "--dir", certs, "--name", name,
                            "--san", "127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        peers = ", ".join(f'{i + 1} = "{a}"' for i, a in enumerate(addresses))
        for i in range(3):
            (self.run / f"coord-{i + 1}.toml").write_text(
                f'[cert]\ndir = "{certs}"\n[coordinator]\nid = {i + 1}\n'
                f'listen = "{addresses[i]}"\ndata_dir = "{self.run / f"coord-{i + 1}"}"\n'
                f"peers = {{ {peers} }}\n")
        self.addresses = addresses
        self.certs = certs
        self.client = ["--coordinator", ",".join(addresses), "--cert-dir", str(certs)]
        self.children = {}

    def start(self, replica):
        """Starts replica 1, 2 or 3 (again, on its data directory)."""
        with open(self.run / f"coord-{replica}.log", "a") as log:
            self.children[replica] = subprocess.Popen(
                [self.quern, "--config", self.run / f"coord-{replica}.toml", "coordinator",
                 *self.flags],
                stdout=log, stderr=log)
        return self.children[replica]

    def start_all(self):
        for replica in (1, 2, 3):
            self.start(replica)

    def kill(self, replica):
        """SIGKILLs a replica and reaps it."""
        child = self.children[replica]
        child.kill()
        child.wait()

    def stop(self):
        """SIGTERMs every running replica and waits for it."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            child.wait(timeout=30)

    def command(self, *args):
        return [self.quern, *map(str, args), *self.client]

    def status(self, *flags):
        """`quern status --json` (with `flags`), or None if it failed."""
        out = subprocess.run(self.command("status", "--json", *flags), capture_output=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait_for_leader(self, timeout):
        """The leader's status once there is a leader."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status and status["leader"] is not None:
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader within {timeout} s: {status}")
            time.sleep(0.2)


class Nodes:
    """`quern node`s 1..=`count` of `coordinators` (certificates `node-N`
    issued in its certificate directory), each with its store in
    `stores/node-N` (the layout `quern export --data STORES` reads as one
    dataset), reading under `roots`, serving its metrics on
    `metrics[N - 1]`, logging to `node-N.log` in the coordinators' run
    directory (appended across restarts)."""

    def __init__(self, coordinators, stores, roots, count=3, memory="128M"):
        self.coordinators = coordinators
        self.stores = Path(stores)
        self.roots = [str(r) for r in roots]
        self.ids = range(1, count + 1)
        self.memory = memory
        self.metrics = [f"127.0.0.1:{free_port()}" for _ in self.ids]
        self.children = {}
        # Registrations each running node's log should show once it is up.
        self.expected = {}
        for node in self.ids:
            subprocess.run([coordinators.quern, "cert", "issue", "--dir", coordinators.certs,
                            "--name", f"node-{node}", "--san", "127.0.0.1"], check=True,
                           stdout=subprocess.DEVNULL)

    def log(self, node):
        return self.coordinators.run / f"node-{node}.log"

    def start(self, node):
        """Starts node `node` (again, on its store: a new incarnation) on a
        fresh port."""
        cmd = [self.coordinators.quern, "--metrics", self.metrics[node - 1],
               "node", "--id", str(node), "--memory", self.memory,
               "--listen", f"127.0.0.1:{free_port()}",
               "--data-dir", str(self.stores / f"node-{node}"),
               "--cert-dir", str(self.coordinators.certs)]
        for root in self.roots:
            cmd += ["--root", root]
        for address in self.coordinators.addresses:
            cmd += ["--coordinator", address]
        self.expected[node] = self.registrations(node) + 1
        with open(self.log(node), "a") as log:
            log.write(f"--- started at {time.time():.3f}\n")
            log.flush()
            self.children[node] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        return self.children[node]

    def registrations(self, node):
        """How many times node `node`'s log says it registered."""
        try:
            return self.log(node).read_text(errors="replace").count("registered (incarnation")
        except FileNotFoundError:
            return 0

    def start_all(self, timeout):
        """Starts every node that is not running; returns once every
        running node has registered since its start, or raises after
        `timeout` seconds."""
        for node in self.ids:
            if node not in self.children or self.children[node].poll() is not None:
                self.start(node)
        deadline = time.monotonic() + timeout
        while True:
            waiting = [n for n in self.ids if self.registrations(n) < self.expected[n]]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {waiting} did not register within {timeout} s")
            time.sleep(0.1)

    def signal(self, node, sig):
        self.children[node].send_signal(sig)

    def kill(self, node):
        """SIGKILLs a node and reaps it."""
        child = self.children[node]
        child.kill()
        child.wait()

    def terminate(self, within):
        """SIGTERMs every running node; returns {node: exit code, or None
        if it was still running after `within` seconds (it is then
        SIGKILLed)}."""
        running = {n: c for n, c in self.children.items() if c.poll() is None}
        for child in running.values():
            child.send_signal(signal.SIGCONT)
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        codes = {}
        for node, child in running.items():
            try:
                codes[node] = child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[node] = None
                child.kill()
                child.wait()
        return codes


def with_section(results_file, section, title):
    """`results_file`'s text with `section` (a report whose first heading
    is `## `; its headings go one level down, that one stays) inserted
    above the file's first section: earlier runs stay below it. A new
    file gets `title`."""
    section = "\n".join("#" + line if line.startswith("## ") else line
                        for line in section.splitlines())
    # The run's own heading back up to a section of the file.
    section = section.replace("### ", "## ", 1) + "\n"
    if not results_file.exists():
        return f"# {title}\n\n{section}"
    text = results_file.read_text()
    first = text.find("\n## ")
    if first < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[:first + 1] + section + "\n" + text[first + 1:]
