"""Shared by the scripts in chaos/: their common flags, recording
violations, and the JSON report with its exit status. (Building, datagen
and running coordinators and nodes are in bench/py/quernbench.py.)"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "py"))
import quernbench  # noqa: E402,F401  (re-exported for the scripts)


def parser(doc, name, rounds):
    """An argument parser with the flags every chaos script takes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/quern-chaos" / name)
    p.add_argument("--report", type=Path, help="also write the JSON report to this file")
    p.add_argument("--debug", action="store_true", help="use the debug build")
    return p


class Violations(list):
    """The violations seen so far, each printed as it is found."""

    def add(self, text):
        print(f"  VIOLATION: {text}", file=sys.stderr)
        self.append(text)


def conclude(args, report, violations, logs):
    """Prints `report` (with the violations) as one JSON line, writes it to
    `--report` if given, and exits non-zero naming the violations if there
    were any."""
    report = {**report, "violations": list(violations), "ok": not violations}
    line = json.dumps(report)
    print(line)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(line + "\n")
    if violations:
        names = "; ".join(violations[:3]) + ("; ..." if len(violations) > 3 else "")
        raise SystemExit(f"{len(violations)} violation(s): {names}\nlogs in {logs}")
