"""The soak: a steady mixed load on the real threaded client for minutes, watched from outside.

The child (soak_app.py) runs the engine on a SQLite file with the real clock and sends the load.
This process samples every few seconds: the child's RSS (``VmRSS``), the stuck-run detector over
the database (read-only, ``steplog.stuck_runs``), runs completed and runs queued. After the load
the backlog must drain within a bounded time; then:

- no run was stuck at any sample (each is reported with its history);
- every run ended, none failed or was cancelled;
- every event ``send`` acknowledged is in the log;
- memory is flat after warm-up (see ``MAX_GROWTH``), and no container of the engine grows with the
  runs: the child reports its largest ones every 10 s and all of them at the end (``--census``);
- the projections equal a rebuild from the log;
- the load did what it claims: retries, resolved and timed-out waits, invokes, duplicates.

``--soak-minutes`` (default 10) sets the load's length. The summary is printed, and appended as
one JSON line to the file named by ``STEPLOG_RELIABILITY_REPORT`` if that is set.

``test_a_wedged_run_is_flagged_within_two_windows`` is the detector's positive control on the
same child: a step body blocked on purpose must be reported within two detector windows.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from steplog.engine import RunProjector, queries
from steplog.eventstore import SqliteEventStore, parse_time

import steplog

APP = Path(__file__).with_name("soak_app.py")
RATE = 30.0
"""Events a second the driver sends, besides the payments (about 8 % more)."""
STUCK_WINDOW = timedelta(seconds=60)
DRAIN_S = 120.0
START_S = 60.0
WARM_UP_SHARE = 0.2
MAX_GROWTH = 0.15
"""Memory is flat when the median RSS of the load's last fifth is at most this much above the
median of its second fifth. The first fifth is warm-up (worker threads start, SQLite's caches
fill); the engine's 10,000-entry caches (``BOUNDED_CACHES``) fill for about five minutes at this
rate, which is most of the growth allowed here. Measured on this load (10 minutes, ~38 events/s):
7.5 % (55.3 -> 59.5 MB), the RSS flat within 1 MB for the last five minutes; before the writer's
stream-version cache was bounded, 14 % (61.6 -> 70.3 MB) and still rising 0.7 MB a minute. So this
catches a gross leak; ``check_no_per_run_state_left`` catches a slow one, by name."""
ACTIVE = ("queued", "running", "waiting")
BOUNDED_CACHES = {  # the end of a container's path in the census: its bound
    "._recent_runs": 10_000,  # actors.runtime.RECENT_SENDS
    "._activity._outcomes": 10_000,  # actors.activity.RECENT_OUTCOMES
    "._store._versions": 10_000,  # eventstore.sqlite.VERSION_CACHE_STREAMS
}
AFTER_DRAIN_MAX = 1_100
"""Entries any other container of the engine may hold once every run has ended: per-run state must
be gone (the timer's heap may keep up to ``actors.timer.STALE_SLACK`` stale entries)."""
DURING_LOAD_MAX = 2_500
"""The same at the end of the load, with ~100 runs in flight: a structure that is emptied only when
the engine goes idle (as the timer's heap was) grows with the runs while it is busy, ~5,000 entries
in 10 minutes; bounded, the heap holds at most twice the live timers plus ``STALE_SLACK``."""


@attrs.define
class Sample:
    """What the parent saw at one moment."""

    at: float
    rss_mb: float
    completed: int
    backlog: int
    stuck: list[str]


@attrs.define
class Child:
    """The soak app running in its own process, and the files it writes."""

    process: subprocess.Popen[bytes]
    db: Path
    status: Path
    acks: Path

    def lines(self) -> list[dict[str, Any]]:
        if not self.status.exists():
            return []
        return [json.loads(line) for line in self.status.read_text(encoding="utf-8").splitlines() if line]

    def reported(self, key: str) -> dict[str, Any] | None:
        return next((line for line in self.lines() if key in line), None)

    def memory_reports(self) -> list[dict[str, Any]]:
        """The child's own memory reports: SQLite's allocator, Python's blocks, threads, largest containers."""
        return [line for line in self.lines() if "mem" in line]

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        """Bounded polling of the status file; fails if the child dies or is too slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.reported(key)
            if line is not None:
                return line
            assert self.process.poll() is None, f"the soak child exited ({self.process.returncode}) before {key!r}"
            time.sleep(0.1)
        raise AssertionError(f"the soak child did not report {key!r} within {timeout} s")

    def log_tail(self) -> str:
        return (self.db.parent / "child.log").read_text(encoding="utf-8", errors="replace")[-3000:]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_child(tmp_path: Path, *args: str) -> Child:
    db, status, acks = tmp_path / "soak.db", tmp_path / "status.jsonl", tmp_path / "acks.txt"
    census = tmp_path / "census.json"
    command = [sys.executable, str(APP), str(db), "--status", str(status), "--acks", str(acks),
               "--census", str(census), *args]
    log = (tmp_path / "child.log").open("wb")
    child = Child(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), db, status, acks)
    child.wait_for("ready", START_S)
    return child


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait(30)


def counts(db: Path) -> dict[str, int]:
    """Runs by status, through a read-only connection of this process."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    finally:
        conn.close()


def take_sample(child: Child, reader: SqliteEventStore) -> tuple[Sample, list[steplog.StuckRun]]:
    rss = child.rss_mb()
    stuck = steplog.stuck_runs(reader, now=datetime.now(UTC), window=STUCK_WINDOW)
    by_status = counts(child.db)
    sample = Sample(time.monotonic(), rss, by_status.get("completed", 0), by_status.get("queued", 0),
                    [s.run_id for s in stuck])
    return sample, stuck


def memory_growth(rss: list[float]) -> tuple[float, float, float]:
    """(median of the second fifth, median of the last fifth, their ratio - 1) of the load's samples."""
    fifth = max(1, len(rss) // 5)
    second = statistics.median(rss[fifth: 2 * fifth])
    last = statistics.median(rss[-fifth:])
    return second, last, last / second - 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def latencies(db: Path, function_id: str) -> list[float]:
    """Seconds from scheduling to end of a function's completed runs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT scheduled_at, ended_at FROM runs WHERE function_id = ? AND status = 'completed'",
                            (function_id,)).fetchall()
    finally:
        conn.close()
    return [(parse_time(end) - parse_time(start)).total_seconds() for start, end in rows]


def sample_interval(seconds: float) -> float:
    return min(5.0, max(1.0, seconds / 60))


def report(summary: dict[str, Any]) -> None:
    print("\nsoak summary: " + json.dumps(summary))
    target = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(summary) + "\n")


@attrs.define
class Observation:
    """Everything the parent saw of one soak."""

    samples: list[Sample] = attrs.Factory(list)
    stuck: dict[str, steplog.StuckRun] = attrs.Factory(dict)
    sent: int = 0
    load_seconds: float = 0.0
    drain_seconds: float = 0.0

    def sample(self, child: Child, reader: SqliteEventStore, *, during_load: bool) -> None:
        sample, stuck = take_sample(child, reader)
        if during_load:
            self.samples.append(sample)
        self.stuck.update((run.run_id, run) for run in stuck)


def observe_load(child: Child, reader: SqliteEventStore, seconds: float, seen: Observation) -> None:
    """Sample every few seconds until the child reports the end of its load."""
    started = time.monotonic()
    while (done := child.reported("load_done")) is None:
        assert child.process.poll() is None, f"the soak child died: {child.log_tail()}"
        seen.sample(child, reader, during_load=True)
        time.sleep(sample_interval(seconds))  # the pace of observation; no assertion depends on it
        assert time.monotonic() - started < seconds + START_S, "the load did not end in time"
    seen.sent, seen.load_seconds = int(done["sent"]), time.monotonic() - started


def observe_drain(child: Child, reader: SqliteEventStore, seen: Observation) -> None:
    """Keep sampling until no run is queued, running or waiting, within ``DRAIN_S``."""
    started = time.monotonic()
    while any(counts(child.db).get(status, 0) for status in ACTIVE):
        assert time.monotonic() - started < DRAIN_S, f"the backlog did not drain in {DRAIN_S} s: {counts(child.db)}"
        seen.sample(child, reader, during_load=False)
        time.sleep(1.0)
    seen.drain_seconds = time.monotonic() - started


def summarize(child: Child, seen: Observation) -> dict[str, Any]:
    by_status = counts(child.db)
    rss = [s.rss_mb for s in seen.samples]
    warm, end, growth = memory_growth(rss)
    ping = latencies(child.db, "soak-ping")
    runs = sum(by_status.values())
    return {
        "test": "soak", "seconds": round(seen.load_seconds, 1), "events": seen.sent, "runs": runs,
        "rss_mb_warm": round(warm, 1), "rss_mb_end": round(end, 1), "stuck": len(seen.stuck),
        "events_per_s": round(seen.sent / seen.load_seconds, 1), "runs_per_s": round(runs / seen.load_seconds, 1),
        "runs_by_status": by_status, "drain_s": round(seen.drain_seconds, 1), "rss_growth": round(growth, 3),
        "rss_mb_min": round(min(rss), 1), "rss_mb_max": round(max(rss), 1), "samples": len(rss),
        "ping_latency_p50_ms": round(statistics.median(ping) * 1000, 1) if ping else None,
        "ping_latency_p99_ms": round(percentile(ping, 0.99) * 1000, 1) if ping else None,
        "max_backlog": max(s.backlog for s in seen.samples),
        "child_memory_end": child.memory_reports()[-1] if child.memory_reports() else None,
    }


@pytest.mark.soak
def test_soak(tmp_path: Path, soak_seconds: float, children: list[Child]) -> None:
    child = start_child(tmp_path, "--seconds", str(soak_seconds), "--rate", str(RATE))
    children.append(child)
    reader = SqliteEventStore(child.db, RunProjector(), read_only=True)
    seen = Observation()
    observe_load(child, reader, soak_seconds, seen)
    observe_drain(child, reader, seen)
    reader.close()
    assert child.stop() == 0
    assert child.reported("stopped") is not None, "the child did not stop cleanly"

    summary = summarize(child, seen)
    report(summary)
    print("rss series (MB): " + " ".join(f"{s.rss_mb:.0f}" for s in seen.samples))
    assert not seen.stuck, "stuck runs:\n" + "\n\n".join(run.describe() for run in seen.stuck.values())
    assert set(summary["runs_by_status"]) <= {"completed"}, f"runs that did not complete: {summary['runs_by_status']}"
    check_acknowledged_events(child)
    check_the_mix(child.db)
    check_no_per_run_state_left(json.loads((tmp_path / "census.json").read_text(encoding="utf-8")), AFTER_DRAIN_MAX)
    check_no_per_run_state_left(last_census_of_the_load(child), DURING_LOAD_MAX)
    check_memory_flat([sample.rss_mb for sample in seen.samples])
    check_projections(child.db)


def check_memory_flat(rss: list[float]) -> None:
    warm, end, growth = memory_growth(rss)
    assert growth <= MAX_GROWTH, f"memory grew {growth:.1%} after warm-up ({warm:.1f} -> {end:.1f} MB): {rss}"


def check_projections(db: Path) -> None:
    writer = SqliteEventStore(db, RunProjector())
    try:
        assert writer.rebuild_projections(apply=False) == []
    finally:
        writer.close()


def check_acknowledged_events(child: Child) -> None:
    acked = set(child.acks.read_text(encoding="utf-8").split())
    conn = sqlite3.connect(f"file:{child.db}?mode=ro", uri=True)
    try:
        known = {row[0] for row in conn.execute("SELECT internal_id FROM events UNION SELECT id FROM events")}
    finally:
        conn.close()
    missing = sorted(acked - known)
    assert acked and not missing, f"{len(missing)} acknowledged events are not in the log, e.g. {missing[:10]}"


def last_census_of_the_load(child: Child) -> dict[str, int]:
    """The engine's largest containers in the child's last memory report before its load ended."""
    done = child.reported("load_done")
    assert done is not None
    reports = [report for report in child.memory_reports() if report["t"] <= done["t"]]
    assert reports, "the child sent no memory report during its load"
    largest: dict[str, int] = reports[-1]["largest"]
    return largest


def check_no_per_run_state_left(census: dict[str, int], limit: int) -> None:
    """The engine's caches are within their bounds and no other container holds more than ``limit``
    entries: one that grows with the runs (a leak, however slow) fails here by name."""
    too_large = {}
    for path, size in census.items():
        bound = next((b for suffix, b in BOUNDED_CACHES.items() if path.endswith(suffix)), None)
        if size > (bound if bound is not None else limit):
            too_large[path] = size
    assert census and not too_large, f"containers that grew with the runs: {too_large}"


def check_the_mix(db: Path) -> None:
    """The load exercised what it claims: retries, waits both ways, invokes, duplicates, every function."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        types = dict(conn.execute("SELECT type, count(*) FROM log GROUP BY type").fetchall())
        functions = {row[0] for row in conn.execute("SELECT DISTINCT function_id FROM runs")}
        paid = dict(conn.execute(
            "SELECT json_extract(output, '$.paid'), count(*) FROM runs WHERE function_id = 'soak-order' GROUP BY 1"
        ).fetchall())
    finally:
        conn.close()
    assert functions == {"soak-order", "soak-charge", "soak-throttled", "soak-keyed", "soak-ping"}
    for kind in ("step.errored", "event.duplicate", "wait.resolved", "wait.expired", "step.sleeping"):
        assert types.get(kind, 0) > 0, f"the load recorded no {kind}: {types}"
    assert paid.get(1, 0) > 0 and paid.get(0, 0) > 0, f"orders paid / timed out: {paid}"


def test_a_wedged_run_is_flagged_within_two_windows(tmp_path: Path, children: list[Child]) -> None:
    """Positive control: a step body blocked on purpose, among a light load, is reported (and
    nothing else is) within two detector windows of the moment the child was ready."""
    window = timedelta(seconds=3)
    child = start_child(tmp_path, "--seconds", "10", "--rate", "5", "--wedge")
    children.append(child)
    ready_seen = time.monotonic()
    reader = SqliteEventStore(child.db, RunProjector(), read_only=True)
    found: list[steplog.StuckRun] = []
    while not found:
        assert time.monotonic() - ready_seen < 2 * window.total_seconds(), "the wedged run was not flagged"
        found = steplog.stuck_runs(reader, now=datetime.now(UTC), window=window)
        time.sleep(0.1)
    [stuck] = found
    assert (stuck.function_id, stuck.reason, stuck.status) == ("soak-wedged", "running", "running")
    assert [e.type for e in stuck.history][-1] == "step.completed" and "run.started" in stuck.describe()
    assert datetime.now(UTC) - stuck.since >= window
    reader.close()
    assert child.stop() == 0  # the child releases the blocked step on SIGTERM and stops cleanly
    assert queries.get_run(SqliteEventStore(child.db, RunProjector(), read_only=True), stuck.run_id)["status"] == (
        "completed"
    )
