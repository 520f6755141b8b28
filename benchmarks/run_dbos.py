"""DBOS Transact side of the benchmarks.

``python -m benchmarks.run_dbos W1 --n 2000`` prints one JSON line per result on stdout.

DBOS is used with its defaults and a SQLite system database
(``system_database_url="sqlite:///<fresh dir>/dbos.sqlite"``), as in
``shared/reference/peer-measurements.md``: rollback journal + ``synchronous=FULL``, unbounded
executor threads, one thread per started workflow. ``DBOS.launch()`` is outside the timed region.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl

try:
    from dbos import DBOS
except ImportError:  # pragma: no cover - exercised only where dbos is missing
    print(
        "dbos is not installed: `pip install dbos` (the benchmarks were written against 3.4.0)",
        file=sys.stderr,
    )
    raise SystemExit(3) from None

SYSTEM = "dbos"


# --------------------------------------------------------------------------- steps and workflows


@DBOS.step()
def one() -> int:
    return 1


@DBOS.step()
def two() -> int:
    return 2


@DBOS.step()
def add(a: int, b: int) -> int:
    return a + b


@DBOS.workflow()
def w1(i: int) -> int:
    a = one()
    b = two()
    return add(a, b)


@DBOS.workflow()
def w2(steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += one()
    return total


@DBOS.workflow()
def w3(i: int) -> int:
    return one()


# --------------------------------------------------------------------------- lifecycle


@contextmanager
def launched(db_dir: Path) -> Iterator[None]:
    """Configure DBOS with a fresh SQLite system database, launch it, and shut it down after."""
    url = f"sqlite:///{db_dir / 'dbos.sqlite'}"
    DBOS(config={"name": "bench", "system_database_url": url})
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


def version() -> str:
    return metadata.version("dbos")


# --------------------------------------------------------------------------- workloads


def run_w1(db_dir: Path, n: int) -> dict[str, Any]:
    """Start ``n`` workflows back to back, then wait for every result."""
    with launched(db_dir):
        t0 = wl.now()
        handles = [DBOS.start_workflow(w1, i) for i in range(n)]
        t_started = wl.now()
        results = [handle.get_result() for handle in handles]
        seconds = wl.now() - t0
    if results != [3] * n:
        raise RuntimeError(f"W1: expected {n} results of 3, got {len(results)} ({set(results)})")
    record = wl.throughput_record(
        wl.W1, SYSTEM, runs=n, steps=n * wl.STEPS_PER_RUN_W1, seconds=seconds
    )
    record["send_seconds"] = round(t_started - t0, 4)
    return record


def run_w2(db_dir: Path, steps: int) -> dict[str, Any]:
    """One workflow of ``steps`` sequential steps, timed from start to result."""
    with launched(db_dir):
        t0 = wl.now()
        result = DBOS.start_workflow(w2, steps).get_result()
        seconds = wl.now() - t0
    if result != steps:
        raise RuntimeError(f"W2: expected {steps}, got {result!r}")
    record = wl.throughput_record(wl.W2, SYSTEM, runs=1, steps=steps, seconds=seconds)
    record["steps"] = steps
    return record


def run_w3(db_dir: Path, n: int) -> dict[str, Any]:
    """``n`` one-step workflows in sequence; each timed from start to result."""
    latencies: list[float] = []
    with launched(db_dir):
        for i in range(-wl.W3_WARMUP_RUNS, n):
            t0 = wl.now()
            result = DBOS.start_workflow(w3, i).get_result()
            elapsed = wl.now() - t0
            if result != 1:
                raise RuntimeError(f"W3: expected 1, got {result!r}")
            if i >= 0:
                latencies.append(elapsed)
    return wl.latency_record(
        wl.W3, SYSTEM, latencies_s=latencies, steps_per_run=wl.STEPS_PER_RUN_W3
    )


RUNNERS = {wl.W1: run_w1, wl.W2: run_w2, wl.W3: run_w3}


def main() -> int:
    return wl.child_main(SYSTEM, version, RUNNERS)


if __name__ == "__main__":
    raise SystemExit(main())
