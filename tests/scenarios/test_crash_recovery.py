"""Crash recovery with real processes: a child app (crash_app.py) on a SQLite file is SIGKILLed at
points chosen by watching its progress, restarted, and finally let finish.

The parent watches the child's ledger file and the SQLite log (the only way to see into another
process; the polls are short and bounded), and after each kill it records which step attempts the
log already held. Then it checks:

- every run completed with the expected output, and the restarts sent nothing again;
- no step attempt whose entry (step.completed, step.errored, step.failed) was in the log at a kill
  ran again after that kill; every committed attempt ran (its ledger line exists); an attempt
  ran at most once per process that lived (at-least-once bodies, never more);
- the log records each attempt of each step once, and each run started and ended once;
- retries keep their schedule across kills: the attempt after a step.errored started (in the
  log and in the ledger, by the wall clock) no earlier than its retry_at;
- the projections equal a rebuild from the log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from steplog.engine import RunProjector
from steplog.eventstore import SqliteEventStore, parse_time

APP = Path(__file__).with_name("crash_app.py")
POLL_S = 0.005
PROGRESS_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 90.0


def _load_app() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("steplog_crash_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash_app = _load_app()


@dataclass(frozen=True)
class LedgerLine:
    run_id: str
    step: str
    attempt: int
    at: float


@dataclass
class Kill:
    """What was durable when the child died."""

    ledger_lines: int
    """How many ledger lines were written before the kill; later lines are after it."""
    committed: set[tuple[str, str, int]]
    """(run_id, step, attempt) of every step entry in the log."""


@dataclass
class Scenario:
    tmp: Path
    n: int
    db: Path = field(init=False)
    ledger: Path = field(init=False)
    kills: list[Kill] = field(default_factory=list)
    starts: int = 0

    def __post_init__(self) -> None:
        self.db = self.tmp / "app.db"
        self.ledger = self.tmp / "ledger.txt"
        self.ledger.touch()

    # -- the child ------------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with open(self.tmp / f"child-{self.starts}.log", "wb") as output:
            return subprocess.Popen(
                [sys.executable, str(APP), str(self.db), str(self.ledger), str(self.n)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def child_output(self) -> str:
        return "\n".join(
            f"--- child {i} ---\n" + (self.tmp / f"child-{i}.log").read_text(errors="replace")
            for i in range(1, self.starts + 1)
        )

    def wait_for(self, child: subprocess.Popen[bytes], what: str, condition: Callable[[], bool]) -> bool:
        """Poll the child's files until ``condition``; False if the child exited first."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while not condition():
            if child.poll() is not None:
                return False
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                pytest.fail(f"no progress ({what}) after {PROGRESS_TIMEOUT_S} s\n{self.child_output()}")
            time.sleep(POLL_S)
        return True

    def kill(self, child: subprocess.Popen[bytes]) -> None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        committed = {(run, step, attempt) for run, step, attempt, _ in self.step_entries()}
        self.kills.append(Kill(len(self.ledger_lines()), committed))

    def finish(self, child: subprocess.Popen[bytes]) -> None:
        try:
            code = child.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail(f"the child did not finish in {FINISH_TIMEOUT_S} s\n{self.child_output()}")
        assert code == 0, f"the child exited with {code}\n{self.child_output()}"

    # -- what the child left ------------------------------------------------------------------

    def ledger_lines(self) -> list[LedgerLine]:
        lines = []
        for raw in self.ledger.read_text().splitlines(keepends=True):
            fields = raw.split()
            if not raw.endswith("\n") or len(fields) != 4:
                continue  # a line a kill cut short: its body had not returned, so nothing was committed
            run_id, step, attempt, at = fields
            lines.append(LedgerLine(run_id, step, int(attempt), float(at)))
        return lines

    def log(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise
        finally:
            conn.close()

    def step_entries(self) -> list[tuple[str, str, int, dict[str, Any]]]:
        """(run_id, step, attempt, entry) of every step entry, in log order."""
        rows = self.log(
            "SELECT stream, type, data FROM log WHERE type IN ('step.completed', 'step.errored', 'step.failed')"
            " ORDER BY position"
        )
        out = []
        for stream, type_, data in rows:
            entry = json.loads(data)
            entry["type"] = type_
            out.append((stream.partition("/")[2], entry["step"], entry["attempt"], entry))
        return out

    def count(self, entry_type: str) -> int:
        rows = self.log("SELECT count(*) FROM log WHERE type = ?", (entry_type,))
        return int(rows[0][0]) if rows else 0

    def retry_in_flight(self) -> bool:
        """A step.errored whose retry time has not come yet."""
        now = time.time()
        for _, _, _, entry in self.step_entries():
            if entry["type"] == "step.errored" and parse_time(entry["retry_at"]).timestamp() > now:
                return True
        return False

    # -- the checks -----------------------------------------------------------------------------

    def check(self) -> None:
        ledger = self.ledger_lines()
        entries = self.step_entries()

        # every run completed with its output; the restarts sent nothing again
        runs = self.log("SELECT run_id, status, output, event_id FROM runs")
        assert len(runs) == self.n, f"{len(runs)} runs for {self.n} events"
        events = self.log("SELECT id, duplicate, data FROM events")
        assert sorted(e[0] for e in events) == sorted(f"order-{i}" for i in range(self.n))
        assert all(duplicate == 0 for _, duplicate, _ in events), "a restart sent its events again"
        for run_id, status, output, _ in runs:
            assert status == "completed", f"run {run_id} is {status}"
            result = json.loads(output)
            assert result == crash_app.expected_output(result["i"])
        assert sorted(json.loads(o)["i"] for _, _, o, _ in runs) == list(range(self.n))

        # no attempt in the log at a kill ran after it
        for number, kill in enumerate(self.kills, 1):
            after = {(line.run_id, line.step, line.attempt) for line in ledger[kill.ledger_lines :]}
            again = after & kill.committed
            assert not again, f"step attempts committed before kill {number} ran again after it: {sorted(again)}"

        # every committed attempt ran; none ran more often than there were processes
        ran = Counter((line.run_id, line.step, line.attempt) for line in ledger)
        for run_id, step, attempt, _ in entries:
            assert ran[(run_id, step, attempt)] >= 1, (
                f"{run_id} {step} attempt {attempt} is in the log, not in the ledger"
            )
        assert max(ran.values()) <= self.starts

        # the log: each attempt once, numbered 0, 1, ...; one start and one end per run
        attempts: dict[tuple[str, str], list[int]] = {}
        for run_id, step, attempt, _ in entries:
            seen = attempts.setdefault((run_id, step), [])
            assert attempt == len(seen), f"{run_id} {step}: attempt {attempt} after {seen}"
            seen.append(attempt)
        assert self.count("run.started") == self.n
        assert self.count("run.completed") == self.n and self.count("run.failed") == 0
        completed = [(run, step) for run, step, _, entry in entries if entry["type"] == "step.completed"]
        assert len(completed) == len(set(completed)) == self.n * 5

        # retries kept their schedule, in the log and by the ledger's wall clock
        retry_at: dict[tuple[str, str, int], datetime] = {}
        for run_id, step, attempt, entry in entries:
            due = retry_at.pop((run_id, step, attempt), None)
            if due is not None:
                assert parse_time(entry["started_at"]) >= due, f"{run_id} {step} attempt {attempt} started early"
            if entry["type"] == "step.errored":
                retry_at[(run_id, step, attempt + 1)] = parse_time(entry["retry_at"])
        assert not retry_at, f"errored steps never retried: {retry_at}"
        for run_id, step, attempt, entry in entries:
            if entry["type"] == "step.errored":
                due_ts = parse_time(entry["retry_at"]).timestamp()
                for line in ledger:
                    if (line.run_id, line.step, line.attempt) == (run_id, step, attempt + 1):
                        early = due_ts - line.at
                        assert early <= 0, f"{run_id} {step} attempt {attempt + 1} ran {early:.3f} s early"

        # the projections are what the log says
        store = SqliteEventStore(self.db, RunProjector())
        try:
            assert store.rebuild_projections(apply=False) == []
            assert store.query("queue") == [] and store.query("timers") == []
        finally:
            store.close()


def ledger_grew(scenario: Scenario, since: int, by: int) -> Callable[[], bool]:
    return lambda: len(scenario.ledger_lines()) >= since + by


def test_kills_at_three_points_lose_nothing_and_repeat_no_committed_step(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, n=8)

    # 1. while a retry is scheduled and not yet due (every run's 'charge' fails once, retry in 1 s)
    child = scenario.spawn()
    assert scenario.wait_for(child, "a step.errored with its retry time ahead", scenario.retry_in_flight)
    scenario.kill(child)
    assert scenario.count("run.scheduled") == scenario.n, "the send was acknowledged before any step ran"

    # 2. in the middle of the steps, soon after the restart
    child = scenario.spawn()
    start = len(scenario.ledger_lines())
    assert scenario.wait_for(child, "three more ledger lines", ledger_grew(scenario, start, 3))
    scenario.kill(child)

    # 3. once some run has completed, others not
    child = scenario.spawn()
    if scenario.wait_for(child, "a completed run", lambda: scenario.count("run.completed") >= 1):
        scenario.kill(child)
        child = scenario.spawn()
    scenario.finish(child)

    assert len(scenario.kills) >= 2
    scenario.check()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_kills_at_random_points(
    tmp_path: Path, seed: int, request: pytest.FixtureRequest, tier: str
) -> None:
    if "slow" not in (request.config.getoption("markexpr") or "") and tier != "long":
        pytest.skip("a long crash loop: run with -m slow or --tier long")
    rng = random.Random(seed)
    scenario = Scenario(tmp_path, n=12)
    child = scenario.spawn()
    # the first kill lands before the first send (as soon as the log file exists) or just after it
    # committed; either way the events must be sent exactly once in all
    if seed % 2:
        first_kill = scenario.db.exists
    else:
        first_kill = lambda: scenario.count("event.received") > 0
    if scenario.wait_for(child, "the first kill point", first_kill):
        scenario.kill(child)
        child = scenario.spawn()
    for _ in range(10):
        start = len(scenario.ledger_lines())
        if not scenario.wait_for(child, "more ledger lines", ledger_grew(scenario, start, rng.randint(1, 8))):
            break
        scenario.kill(child)
        child = scenario.spawn()
    scenario.finish(child)
    assert len(scenario.kills) >= 3, f"seed {seed}: only {len(scenario.kills)} kills landed"
    scenario.check()
