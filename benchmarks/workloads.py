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
W4 = "W4"
W6 = "W6"
W7 = "W7"
W8 = "W8"
W9 = "W9"
WORKLOADS: tuple[str, ...] = (W1, W2, W3, W4, W6, W7, W8, W9)

SYSTEMS: tuple[str, ...] = ("steplog", "dbos")

DESCRIPTIONS: dict[str, str] = {
    W1: "throughput: N runs x 3 trivial steps, all sent at once, until the last completes",
    W2: "long run: one run of S sequential trivial steps (us per step = wall / S)",
    W3: "latency: N one-step runs, each sent after the previous finished (send -> result)",
    W4: "sleeping runs: N runs sleep 60 s (manual clock) or 2 s (real clock), then run one step;"
    " deadline -> last completion, and RSS while they sleep",
    W6: "fan-in: W runs wait for their own reply event, then W replies are sent; reply -> last completion",
    W7: "keyed concurrency: N runs over 100 keys, at most 2 executing per key, one 5 ms step each;"
    " first send -> last completion, peak executing per key, admission cost per run",
    W8: "throttled flood: N events against a throttle of 100 starts/s; max starts in any 1 s window,"
    " runs dropped, cost per event accepted",
    W9: "ingest: 8 loopback HTTP clients post N events to POST /e/<key> in batches of 1 and of 100;"
    " events/s accepted and p50/p99 acknowledgement latency (each acknowledged event committed)",
}

#: W4 runs on two clocks: ``manual`` (steplog's ManualClock, advanced past the deadline at once)
#: and ``real`` (the wall clock). DBOS has no manual clock.
CLOCK_MANUAL = "manual"
CLOCK_REAL = "real"
W4_CLOCKS: tuple[str, ...] = (CLOCK_MANUAL, CLOCK_REAL)
W4_MANUAL_SLEEP_S = 60
W4_REAL_SLEEP_S = 2

#: Events per ``send`` (steplog's per-send limit) and messages per DBOS ``send_bulk`` in W4 and W6.
SEND_BATCH = 5000

#: Points a system cannot run, and why; the table shows n/a for them.
UNSUPPORTED: dict[tuple[str, str, str | None], str] = {
    ("dbos", W4, CLOCK_MANUAL): "DBOS has no manual clock (DBOS.sleep is time.sleep on the wall clock)",
}

STEPS_PER_RUN_W1 = 3
STEPS_PER_RUN_W3 = 1
STEPS_PER_RUN_W4 = 2  # the sleep and the step after it

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

#: Figures of the flow-control workloads (W7, W8), shown in the table after FIGURES; only W7 and W8
#: records carry them (see ``benchmarks.flow``).
FLOW_FIGURES: tuple[str, ...] = (
    "peak_executing_per_key",
    "us_admission_per_run",
    "max_starts_per_s",
    "dropped",
    "us_per_event",
)

#: Figures of the ingest workload (W9), shown in the table after FLOW_FIGURES; only W9 records carry
#: them (see ``benchmarks.ingest``). W9 records also carry ``p50_ms``, ``p99_ms`` and ``peak_rss_mb``.
INGEST_FIGURES: tuple[str, ...] = ("events_per_s",)

#: True where a larger figure is better (used to read the steplog/dbos ratio).
HIGHER_IS_BETTER: dict[str, bool] = {
    "runs_per_s": True,
    "steps_per_s": True,
    "us_per_step": False,
    "p50_ms": False,
    "p99_ms": False,
    "peak_rss_mb": False,
    "seconds": False,
    "peak_executing_per_key": False,  # a check: must be <= the limit (2)
    "us_admission_per_run": False,
    "max_starts_per_s": False,  # a check: must stay within the throttle's bound
    "dropped": False,  # a check: must be 0
    "us_per_event": False,
    "events_per_s": True,
}


@dataclass(frozen=True)
class Point:
    """One workload point: a size (N, S or W) and, for W4, the clock, or for W9, the events per request."""

    size: int
    clock: str | None = None
    batch: int | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the runner beyond ``(db_dir, size)``."""
        options: dict[str, Any] = {}
        if self.clock is not None:
            options["clock"] = self.clock
        if self.batch is not None:
            options["batch"] = self.batch
        return options


@dataclass(frozen=True)
class Sizes:
    """The sizes of one benchmark pass: N for W1, W3, W4 (per clock) and W7, the lists of S (W2) and
    W (W6), the events of W8, and the events of W9 with its batch sizes (events per request)."""

    w1_runs: int
    w2_steps: tuple[int, ...]
    w3_runs: int
    w4_manual_runs: int
    w4_real_runs: int
    w6_waits: tuple[int, ...]
    w7_runs: int
    w8_events: int
    w9_events: int = 20_000
    w9_batches: tuple[int, ...] = (1, 100)

    def points(self, workload: str) -> tuple[Point, ...]:
        """The points to run for ``workload``: one child process is started per point."""
        if workload == W1:
            return (Point(self.w1_runs),)
        if workload == W2:
            return tuple(Point(s) for s in self.w2_steps)
        if workload == W3:
            return (Point(self.w3_runs),)
        if workload == W4:
            return (Point(self.w4_manual_runs, CLOCK_MANUAL), Point(self.w4_real_runs, CLOCK_REAL))
        if workload == W6:
            return tuple(Point(w) for w in self.w6_waits)
        if workload == W7:
            return (Point(self.w7_runs),)
        if workload == W8:
            return (Point(self.w8_events),)
        if workload == W9:
            return tuple(Point(self.w9_events, batch=b) for b in self.w9_batches)
        raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")


FULL = Sizes(
    w1_runs=2000, w2_steps=(100, 1000, 5000), w3_runs=200,
    w4_manual_runs=100_000, w4_real_runs=1000, w6_waits=(1000, 5000, 10_000),
    w7_runs=10_000, w8_events=20_000, w9_events=20_000, w9_batches=(1, 100),
)
QUICK = Sizes(
    w1_runs=200, w2_steps=(100, 1000), w3_runs=50,
    w4_manual_runs=5000, w4_real_runs=200, w6_waits=(1000,),
    w7_runs=1000, w8_events=2000, w9_events=2000, w9_batches=(1, 100),
)

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


def current_rss_mb() -> float | None:
    """Resident set size of this process now, in MiB (``VmRSS``; None where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def batches(items: Sequence[Any], size: int = SEND_BATCH) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def sleep_record(
    system: str,
    *,
    runs: int,
    clock: str,
    seconds: float,
    rss_mb: float,
    sleeping_rss_mb: float | None,
    park_seconds: float,
    lateness_s: Sequence[float] = (),
    deadline_spread_s: float | None = None,
) -> dict[str, Any]:
    """A W4 record: ``seconds`` from the (latest) deadline until the last run finished."""
    record = _bare_record(W4, system, runs=runs, steps=runs * STEPS_PER_RUN_W4, seconds=seconds, rss_mb=rss_mb)
    record["clock"] = clock
    if clock == CLOCK_MANUAL:  # every run is due at once: a wake-up throughput
        record["runs_per_s"] = round(runs / seconds, 2)
    if lateness_s:
        record["p50_ms"] = round(percentile(lateness_s, 50) * 1e3, 3)
        record["p99_ms"] = round(percentile(lateness_s, 99) * 1e3, 3)
    record["sleeping_rss_mb"] = sleeping_rss_mb
    record["park_seconds"] = round(park_seconds, 4)
    if deadline_spread_s is not None:
        record["deadline_spread_s"] = round(deadline_spread_s, 4)
    return record


def fan_in_record(
    system: str, *, waits: int, seconds: float, send_seconds: float, park_seconds: float
) -> dict[str, Any]:
    """A W6 record: ``seconds`` from the first reply sent until the last waiting run finished."""
    record = _bare_record(W6, system, runs=waits, steps=waits, seconds=seconds, rss_mb=peak_rss_mb())
    record["waits"] = waits
    record["runs_per_s"] = round(waits / seconds, 2)
    record["send_seconds"] = round(send_seconds, 4)
    record["park_seconds"] = round(park_seconds, 4)
    return record


def _bare_record(
    workload: str, system: str, *, runs: int, steps: int, seconds: float, rss_mb: float
) -> dict[str, Any]:
    record: dict[str, Any] = {"workload": workload, "system": system, "runs": runs, "total_steps": steps}
    record.update(dict.fromkeys(FIGURES))
    record["peak_rss_mb"] = rss_mb
    record["seconds"] = round(seconds, 4)
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
    """Arguments of ``python -m benchmarks.run_<system> WORKLOAD [--n N[,N...]] [--clock C] [--batch B[,B...]]
    [--quick]``."""

    workload: str
    points: tuple[Point, ...]
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
        help="runs (W1, W3, W4, W7), steps per run (W2), waits (W6) or events (W8, W9);"
        " a comma-separated list runs each",
    )
    parser.add_argument(
        "--clock", choices=W4_CLOCKS, default=None, help="W4 only: manual or real (default: both)"
    )
    parser.add_argument(
        "--batch", type=_size_list, default=None, help="W9 only: events per request, a comma-separated list"
        " runs each (default: 1,100)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller default sizes")
    parser.add_argument("--keep-db", action="store_true", help="do not delete the database dir")
    ns = parser.parse_args(argv)
    if ns.clock is not None and ns.workload != W4:
        parser.error("--clock applies to W4 only")
    if ns.batch is not None and ns.workload != W9:
        parser.error("--batch applies to W9 only")
    points = (QUICK if ns.quick else FULL).points(ns.workload)
    if ns.clock is not None:
        points = tuple(p for p in points if p.clock == ns.clock)
    if ns.batch:
        points = tuple(Point(p.size, p.clock, b) for p in points[:1] for b in ns.batch)
    if ns.n:
        variants = tuple(dict.fromkeys((p.clock, p.batch) for p in points))
        points = tuple(Point(n, clock, batch) for clock, batch in variants for n in ns.n)
    points = tuple(p for p in points if (system, ns.workload, p.clock) not in UNSUPPORTED)
    if not points:
        parser.error(f"{system} cannot run {ns.workload} with --clock {ns.clock}: "
                     f"{UNSUPPORTED.get((system, ns.workload, ns.clock), 'no points')}")
    return ChildArgs(workload=ns.workload, points=points, keep_db=ns.keep_db)


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
    runners: Mapping[str, Callable[..., dict[str, Any]]],
    argv: Sequence[str] | None = None,
) -> int:
    """Shared ``main`` of the runners: a fresh db dir per point, one JSON line per result.

    A runner is called as ``runner(db_dir, size)``, plus ``clock=...`` for W4 and ``batch=...`` for W9.
    """
    args = parse_child_args(system, argv)
    runner = runners[args.workload]
    with results_stdout() as out:
        for point in args.points:
            with fresh_db_dir(system, keep=args.keep_db) as db_dir:
                record = runner(db_dir, point.size, **point.options())
            record.update(environment(version()))
            record["pid"] = os.getpid()
            emit(out, record)
    return 0


def now() -> float:
    return time.perf_counter()
