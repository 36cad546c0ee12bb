"""Shared by the scripts in bench/: building the release binaries,
generating datasets with quern-datagen, and sampling a process's resident
memory from /proc."""

import hashlib
import os
import re
import shutil
import subprocess
import time
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
    generate(bins, out, ["lines", "--files", files, "--size", f"{size}B", "--dup", "0.3",
                         "--seed", "1"])


def generate_inventory(bins, out, files, records):
    """`files` inventory files (path, size, mtime, md5) of `records` records
    in all, 10% relisted paths, seed 1."""
    generate(bins, out, ["inventory", "--files", files, "--records", records // files,
                         "--relisted", "0.1", "--seed", "1"])


def inputs(directory):
    return sorted(p for p in Path(directory).iterdir() if not p.name.startswith("."))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def run_measured(cmd, stdout=None, env=None):
    """Runs `cmd` to its end; returns (exit code, wall seconds, CPU seconds,
    peak RSS bytes, stderr), CPU and peak from the kernel's rusage (wait4)."""
    start = time.monotonic()
    child = subprocess.Popen([str(c) for c in cmd], stdout=stdout or subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env)
    # Read stderr while the child runs, so a chatty child cannot block.
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return (child.returncode, wall, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024, stderr)
