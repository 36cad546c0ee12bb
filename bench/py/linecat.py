#!/usr/bin/env python3
"""The lines quern reads from PATHs, as bytes on stdout: the `sort -u`
peer's input for a tree of real files.

    python3 bench/py/linecat.py [--counts FILE] PATH...

Files come in quern's manifest order (see quernbench.manifest). Each is
decoded as quern's scanner decodes it: by its magic bytes, not its name,
gzip (all members, as zcat reads them) or zstd (through `zstd -dc`, for
its frames), anything else (xz, bzip2, text) as the bytes on disk. A file
whose decoded bytes do not end in a newline gets one, because quern counts
an unterminated last line as a line of its own; `zcat -f` over many files
would glue it to the next file's first line. With --counts, writes to
FILE as JSON the files (and how many were gzip and zstd), the decoded
bytes (before added newlines) and the lines.
"""

import argparse
import json
import os
import subprocess
import sys
import zlib

from quernbench import manifest

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zlib's window bits for a gzip header and trailer.
GZIP_WBITS = 31
CHUNK = 1 << 20


def detect(path):
    """"gzip", "zstd" or "plain", by the file's magic bytes."""
    with open(path, "rb") as f:
        head = f.read(len(ZSTD_MAGIC))
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "plain"


def decoded(path, kind):
    """The file's bytes as quern decodes them, in chunks."""
    if kind == "zstd":
        yield from unzstd(path)
        return
    with open(path, "rb") as f:
        if kind == "gzip":
            yield from gunzip(f)
        else:
            yield from iter(lambda: f.read(CHUNK), b"")


def gunzip(f):
    """Every gzip member of `f`, one after the other. zlib directly: the
    gzip module's reader costs more than the inflating on small files."""
    data, member, pending = f.read(CHUNK), zlib.decompressobj(GZIP_WBITS), False
    while data:
        yield member.decompress(data)
        pending = not member.eof
        if member.eof:
            data = member.unused_data or f.read(CHUNK)
            member = zlib.decompressobj(GZIP_WBITS)
        else:
            data = f.read(CHUNK)
    if pending:
        raise ValueError("truncated gzip member")


def unzstd(path):
    child = subprocess.Popen(["zstd", "-dcq", "--", path], stdout=subprocess.PIPE)
    yield from iter(lambda: child.stdout.read(CHUNK), b"")
    if child.wait() != 0:
        raise RuntimeError(f"zstd -dc {path!r} failed with exit {child.returncode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", help="write files, bytes and lines here as JSON")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    out = sys.stdout.buffer
    counts = {"files": 0, "gzip": 0, "zstd": 0, "bytes": 0, "lines": 0}
    for path in manifest(args.paths):
        last = None
        try:
            kind = detect(path)
            for chunk in decoded(path, kind):
                if chunk:
                    out.write(chunk)
                    last = chunk[-1:]
                    counts["bytes"] += len(chunk)
                    counts["lines"] += chunk.count(b"\n")
        except (OSError, ValueError, RuntimeError, zlib.error) as e:
            sys.exit(f"linecat: {os.fsdecode(path)}: {e}")
        if last not in (None, b"\n"):
            out.write(b"\n")
            counts["lines"] += 1
        counts["files"] += 1
        counts[kind] = counts.get(kind, 0) + 1
    out.flush()
    if args.counts:
        with open(args.counts, "w") as f:
            json.dump(counts, f)


if __name__ == "__main__":
    main()
