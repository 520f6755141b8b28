"""Waits across SIGKILLs, with real processes: runs park on a wait, the app is killed; the replies
are sent by a new process that is killed once a chosen number of waits has resolved (watched in the
log), and restarted, until one finishes.

Checks: every run completed with its own reply's data; each wait resolved exactly once (one
wait.resolved signal, one step.completed for the wait, one for the step after it); every reply is
in the log once, resent ones recorded as duplicates; the projections equal a rebuild from the log.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from steplog.engine import RunProjector
from steplog.eventstore import SqliteEventStore

APP = Path(__file__).with_name("wait_app.py")
N = 60
KILLS = 4
START_TIMEOUT_S = 30.0
POLL_S = 0.005


def launch(db: Path, phase: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(APP), str(db), phase, str(N)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def resolved(db: Path) -> int:
    """How many wait.resolved signals the log holds (read without disturbing the writer)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM log WHERE type = 'wait.resolved'").fetchall()
    conn.close()
    return int(count)


def watch_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"no progress before {what}"
        time.sleep(POLL_S)  # polling another process's file: there is nothing to wait on


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def test_waits_resolve_exactly_once_across_kills(tmp_path: Path) -> None:
    db = tmp_path / "waits.db"
    parker = launch(db, "park")
    assert parker.stdout is not None
    assert parker.stdout.readline().strip() == "parked", parker.stderr.read() if parker.stderr else ""
    kill(parker)

    rng = random.Random(3)
    landed = 0
    for kill_number in range(KILLS):
        replier = launch(db, "reply")
        # kill once a chosen number of waits has resolved (watched in the log), mid-way through the replies
        target = min(N - 1, resolved(db) + rng.randint(1, N // KILLS))
        watch_until(lambda p=replier, t=target: resolved(db) >= t or p.poll() is not None, f"kill {kill_number}")
        if replier.poll() is None:
            kill(replier)
            landed += 1
    assert landed >= KILLS // 2, f"only {landed} kills landed before the replies were all sent"
    final = launch(db, "reply")
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0 and out.strip().endswith("done"), err

    store = SqliteEventStore(str(db), RunProjector(), read_only=True)
    try:
        runs = store.query("runs", where={"function_id": "waiter"})
        assert len(runs) == N
        assert all(run["status"] == "completed" for run in runs), [r["status"] for r in runs]
        assert sorted(json.loads(run["output"])["k"] for run in runs) == list(range(N))
        assert all(json.loads(run["output"])["n"] == json.loads(run["output"])["k"] * 7 for run in runs)
        for run in runs:
            entries = store.read_stream(f"run/{run['run_id']}")
            completed = Counter(e.data["step"] for e in entries if e.type == "step.completed")
            assert completed == {"reply": 1, "record": 1}, completed
            signals = [e.type for e in store.read_stream(f"signal/{run['run_id']}")]
            assert signals == ["wait.resolved"], signals
        replies = store.query("events", where={"name": "test/reply", "duplicate": 0})
        assert sorted(row["id"] for row in replies) == sorted(f"reply-{i}" for i in range(N))
        assert store.query("waits") == [] and store.query("wakeups") == []
    finally:
        store.close()
    writer = SqliteEventStore(str(db), RunProjector())
    try:
        assert writer.rebuild_projections(apply=False) == []
    finally:
        writer.close()
