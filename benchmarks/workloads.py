"""Workload names, sizes and the result record shared by the runners and the CLI.

Nothing here imports a system under test, so the parent process (``python -m benchmarks``)
can import it without loading steplog or DBOS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

W1 = "W1"
W2 = "W2"
W3 = "W3"
WORKLOADS: tuple[str, ...] = (W1, W2, W3)

SYSTEMS: tuple[str, ...] = ("steplog", "dbos")

DESCRIPTIONS: dict[str, str] = {
    W1: "throughput: N runs x 3 trivial steps, all sent at once, until the last completes",
    W2: "long run: one run of S sequential trivial steps (us per step = wall / S)",
    W3: "latency: N one-step runs, each sent after the previous finished (send -> result)",
}

STEPS_PER_RUN_W1 = 3
STEPS_PER_RUN_W3 = 1

#: Every result record carries these figure keys (``None`` where a figure does not apply).
FIGURES: tuple[str, ...] = (
    "runs_per_s",
    "steps_per_s",
    "us_per_step",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "seconds",
)

#: True where a larger figure is better (used to read the steplog/dbos ratio).
HIGHER_IS_BETTER: dict[str, bool] = {
    "runs_per_s": True,
    "steps_per_s": True,
    "us_per_step": False,
    "p50_ms": False,
    "p99_ms": False,
    "peak_rss_mb": False,
    "seconds": False,
}


@dataclass(frozen=True)
class Sizes:
    """The sizes of one benchmark pass: N for W1 and W3, the list of S for W2."""

    w1_runs: int
    w2_steps: tuple[int, ...]
    w3_runs: int

    def points(self, workload: str) -> tuple[int, ...]:
        """The sizes to run for ``workload``: one child process is started per size."""
        if workload == W1:
            return (self.w1_runs,)
        if workload == W2:
            return self.w2_steps
        if workload == W3:
            return (self.w3_runs,)
        raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")


FULL = Sizes(w1_runs=2000, w2_steps=(100, 1000, 5000), w3_runs=200)
QUICK = Sizes(w1_runs=200, w2_steps=(100, 1000), w3_runs=50)

#: steplog's per-run step limit must be raised above its default (1,000) for W2.
MAX_STEPS_PER_RUN = 10_000

#: W3 runs this many unmeasured runs first (import/connection warm-up) on every system.
W3_WARMUP_RUNS = 1

RUN_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------- result records


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024.0, 1)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (as ``statistics.quantiles(..., method='inclusive')``)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def throughput_record(
    workload: str, system: str, *, runs: int, steps: int, seconds: float
) -> dict[str, Any]:
    """A record for a timed batch of ``runs`` runs with ``steps`` steps in total."""
    return {
        "workload": workload,
        "system": system,
        "runs": runs,
        "total_steps": steps,
        "runs_per_s": round(runs / seconds, 2),
        "steps_per_s": round(steps / seconds, 2),
        "us_per_step": round(seconds * 1e6 / steps, 2),
        "p50_ms": None,
        "p99_ms": None,
        "peak_rss_mb": peak_rss_mb(),
        "seconds": round(seconds, 4),
    }


def latency_record(
    workload: str, system: str, *, latencies_s: Sequence[float], steps_per_run: int
) -> dict[str, Any]:
    """A record for sequential runs, each timed from send to result."""
    seconds = sum(latencies_s)
    record = throughput_record(
        workload,
        system,
        runs=len(latencies_s),
        steps=len(latencies_s) * steps_per_run,
        seconds=seconds,
    )
    record["p50_ms"] = round(percentile(latencies_s, 50) * 1e3, 3)
    record["p99_ms"] = round(percentile(latencies_s, 99) * 1e3, 3)
    return record


def environment(system_version: str) -> dict[str, str]:
    """Versions that a reader needs to compare figures across machines."""
    return {
        "version": system_version,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


# --------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class ChildArgs:
    """Arguments of ``python -m benchmarks.run_<system> WORKLOAD [--n N[,N...]] [--quick]``."""

    workload: str
    sizes: tuple[int, ...]
    keep_db: bool


def parse_child_args(system: str, argv: Sequence[str] | None = None) -> ChildArgs:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run_{system}",
        description=f"Run one benchmark workload on {system}; print one JSON line per result.",
    )
    parser.add_argument("workload", choices=WORKLOADS, type=str.upper)
    parser.add_argument(
        "--n",
        type=_size_list,
        default=None,
        help="runs (W1, W3) or steps per run (W2); W2 takes a comma-separated list",
    )
    parser.add_argument("--quick", action="store_true", help="smaller default sizes")
    parser.add_argument("--keep-db", action="store_true", help="do not delete the database dir")
    ns = parser.parse_args(argv)
    default = (QUICK if ns.quick else FULL).points(ns.workload)
    return ChildArgs(workload=ns.workload, sizes=ns.n or default, keep_db=ns.keep_db)


def _size_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 2000 or 100,1000: {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers: {text!r}")
    return sizes


@contextlib.contextmanager
def fresh_db_dir(system: str, keep: bool = False) -> Iterator[Path]:
    """A new, empty directory for one run's database files (on the default temp filesystem)."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept database dir {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def results_stdout() -> Iterator[TextIO]:
    """Yield the real stdout for JSON lines; send anything else printed meanwhile to stderr.

    The parent parses the child's stdout: stray prints by a system under test must not land there.
    """
    real = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield real
    finally:
        sys.stdout = real


def emit(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, sort_keys=False) + "\n")
    out.flush()


def child_main(
    system: str,
    version: Callable[[], str],
    runners: Mapping[str, Callable[[Path, int], dict[str, Any]]],
    argv: Sequence[str] | None = None,
) -> int:
    """Shared ``main`` of the runners: a fresh db dir per size, one JSON line per result."""
    args = parse_child_args(system, argv)
    runner = runners[args.workload]
    with results_stdout() as out:
        for size in args.sizes:
            with fresh_db_dir(system, keep=args.keep_db) as db_dir:
                record = runner(db_dir, size)
            record.update(environment(version()))
            record["pid"] = os.getpid()
            emit(out, record)
    return 0


def now() -> float:
    return time.perf_counter()
