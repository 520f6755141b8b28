"""kill -9 harness (issue 6, item 2): a mixed workload in a real child process (kill_app.py) is
SIGKILLed at random points, restarted, many times, and finally let finish.

The workload has plain steps, steps that fail and are retried after a short backoff, a durable
sleep, waits answered by events (and waits that time out), invokes of a child function, a final
failure, a keyed throttle and a keyed concurrency limit. The parent sees into the child only
through its files: the LEDGER (each step body's enter and exit, with pid, attempt and time), the
ACKS file (the ids of every event whose ``send`` returned) and the SQLite log, read read-only after
each kill (and polled, briefly and bounded, to pick kill points). Then it checks:

- the child finished by itself after the last restart, and every run ended once, with the status
  and output its event implies (``kill_app.expected``); nothing is left queued, on a timer or in a
  wait;
- every acknowledged event is in the log, once;
- every step attempt in the log (step.completed, step.errored, step.failed) ran: its body's exit
  line is in the ledger; the log records each attempt once, numbered 0, 1, ...;
- a body ran again only when a kill interrupted it before its commit: no process ran an attempt
  twice, and no body of an attempt already in the log at a kill ran after that kill (at least one
  kill must have landed inside a body, or this saw nothing);
- retries and sleeps kept their times across kills: no retry's body ran before its ``retry_at``,
  no step after the sleep before its ``wake_at`` (by the ledger's wall clock);
- concurrency: the step bodies of each key (a killed process's open bodies end at its kill) never
  overlap more than the limit, and the limit was reached;
- throttle (docs/flow-control.md: at most ``limit + burst`` starts in any window of one period,
  restarts included, since recovery spaces again the runs that came due while the engine was
  down): the start times the gate gave (``ready_at``) keep the events' order and that bound
  exactly; no run started (``run.started`` ``at``) before its time; and the recorded starts keep
  the bound up to the lag between deciding a start and recording it (``START_LATENCY_S``; the
  lag needed is in the summary);
- the projections equal a rebuild from the log, and ``PRAGMA integrity_check`` is ok.

The tier (``--tier``, env STEPLOG_TIER) sets the size: ci = at least 20 kills over at least 200
runs (a couple of minutes); long = at least 200 kills over at least 2,000 runs. A summary line is
printed (see it with ``-s``) and, when env STEPLOG_RELIABILITY_REPORT names a file, appended to it
as one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import RunProjector
from steplog.eventstore import SqliteEventStore, parse_time

APP = Path(__file__).with_name("kill_app.py")
POLL_S = 0.01
KILL_WAIT_S = (0.2, 1.5)
"""A kill point not reached within a random time in this range: kill wherever the child is."""
FINISH_TIMEOUT_S = 180.0
STARTUP_TIMEOUT_S = 60.0
START_LATENCY_S = 0.3
"""How long a throttled run's recorded start may lag the decision to start it (see check_throttle).
Seen: 0-50 ms on 2 busy cores, most at a restart, where every interrupted run resumes at once. A
real breach (runs that came due while the engine was down all starting at the restart, or pacing
that forgets the starts before a kill) puts limit + burst + 1 starts within a few hundred ms, well
inside the window this leaves."""
EPSILON_S = 1e-5
"""Log times have microseconds; ledger times are rounded to them."""
BODY_STEPS = frozenset({"a", "b", "c", "e", "twice", "record", "go", "one", "two"})
"""The step keys whose bodies write the ledger (the others are sleeps, waits and invokes)."""
STEP_ENTRIES = ("step.completed", "step.errored", "step.failed")


def _load_app() -> Any:
    spec = importlib.util.spec_from_file_location("steplog_kill_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kill_app = _load_app()


@dataclass(frozen=True)
class Tier:
    rounds: int
    kills: int
    """How many kills the parent aims for."""
    min_kills: int
    min_runs: int


TIERS = {
    "ci": Tier(rounds=48, kills=28, min_kills=20, min_runs=200),
    "long": Tier(rounds=400, kills=260, min_kills=200, min_runs=2000),
}


@dataclass(frozen=True)
class Line:
    pid: int
    what: str
    function: str
    run_id: str
    key: str
    step: str
    attempt: int
    at: float
    offset: int
    """Where the line starts in the ledger file: lines at or after a kill's ``ledger_bytes`` came after it."""


Attempt = tuple[str, str, int]
"""(run_id, step, attempt)"""


@dataclass
class Kill:
    """What was durable when a child died."""

    pid: int
    point: str
    at: float
    ledger_bytes: int
    """The ledger's size when the child died: the lines that start there or later came after the kill."""
    committed: set[Attempt]


@dataclass
class Run:
    run_id: str
    function_id: str
    data: dict[str, Any]
    ready_at: float | None
    started: list[float] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    tmp: Path
    rounds: int
    db: Path = field(init=False)
    ledger: Path = field(init=False)
    acks: Path = field(init=False)
    kills: list[Kill] = field(default_factory=list)
    starts: int = 0
    spawned_at: int = 0
    """The ledger's size when the latest child was started: its lines come after."""
    throttle_lag: float = 0.0
    """The most a recorded throttled start had to lag its decision to explain the starts (check_throttle)."""

    def __post_init__(self) -> None:
        self.db = self.tmp / "app.db"
        self.ledger = self.tmp / "ledger.txt"
        self.acks = self.tmp / "acks.txt"
        self.ledger.touch()
        self.acks.touch()

    # -- the child --------------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.spawned_at = self.ledger.stat().st_size
        with open(self.tmp / f"child-{self.starts}.log", "wb") as output:
            return subprocess.Popen(
                [sys.executable, str(APP), str(self.db), str(self.ledger), str(self.acks), str(self.rounds)],
                stdout=output, stderr=subprocess.STDOUT,
            )

    def child_output(self, last: int = 3) -> str:
        first = max(1, self.starts - last + 1)
        return "\n".join(
            f"--- child {i} ---\n" + (self.tmp / f"child-{i}.log").read_text(errors="replace")[-4000:]
            for i in range(first, self.starts + 1)
        )

    def wait_for(self, child: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float) -> str:
        """Poll the child's files until ``condition`` ("reached") or ``timeout`` ("timed out");
        "exited" if the child exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.poll() is not None:
                return "exited"
            if condition():
                return "reached"
            time.sleep(POLL_S)  # polling another process's files: there is nothing to wait on
        return "exited" if child.poll() is not None else "timed out"

    def engine_started(self, child: subprocess.Popen[bytes]) -> Callable[[], bool]:
        """Whether the child's engine runs (its recovery started what was due): its marker line is in the ledger."""
        marker = f"\n{child.pid} started ".encode()

        def started() -> bool:
            with open(self.ledger, "rb") as file:
                file.seek(max(0, self.spawned_at - 1))
                return marker in b"\n" + file.read()

        return started

    def kill(self, child: subprocess.Popen[bytes], point: str) -> None:
        os.kill(child.pid, signal.SIGKILL)
        at = time.time()
        child.wait()
        committed = {(run_id, step, attempt) for run_id, step, attempt, _ in self.step_entries()}
        self.kills.append(Kill(child.pid, point, at, self.ledger.stat().st_size, committed))

    def finish(self, child: subprocess.Popen[bytes]) -> None:
        try:
            code = child.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail(f"the child did not finish in {FINISH_TIMEOUT_S} s\n{self.unfinished()}\n{self.child_output()}")
        assert code == 0, f"the child exited with {code}\n{self.unfinished()}\n{self.child_output()}"

    def unfinished(self) -> str:
        """The runs that have not ended, each with its log: the diagnostics of a stuck workload."""
        rows = self.query(
            "SELECT run_id, function_id, status FROM runs WHERE status IN ('queued', 'running', 'waiting')"
        )
        out = [f"{len(rows)} runs unfinished"]
        for run_id, function_id, status in rows[:10]:
            out.append(f"run {run_id} ({function_id}) is {status}:")
            history = self.query(
                "SELECT position, type, data FROM log WHERE stream IN (?, ?) ORDER BY position",
                (f"run/{run_id}", f"signal/{run_id}"),
            )
            out += [f"  {position} {type_} {data[:300]}" for position, type_, data in history]
        return "\n".join(out)

    # -- kill points ----------------------------------------------------------------------------

    KILL_POINTS = (
        "starting", "after some bodies", "after some sends", "inside a body", "a retry pending",
        "throttled runs queued", "waits open",
    )

    def kill_condition(self, point: str, rng: random.Random, child: subprocess.Popen[bytes]) -> Callable[[], bool]:
        """When the child is at ``point`` (one of KILL_POINTS), counting from now."""
        ledger_size, acks_size = self.ledger.stat().st_size, self.acks.stat().st_size
        lock = Path(f"{self.db}.lock")

        def progressed() -> bool:
            """The child did something since: a kill then lands in its work, not right at its start."""
            return self.ledger.stat().st_size > ledger_size or self.acks.stat().st_size > acks_size

        def inside_a_body() -> bool:
            """A body of the child entered and not exited, among the ledger's last lines."""
            with open(self.ledger, "rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - 2000))
                tail = file.read().decode(errors="replace").splitlines()[1:]
            inside: set[tuple[str, ...]] = set()
            for fields in (line.split() for line in tail):
                if len(fields) == 8 and fields[0] == str(child.pid) and fields[1] in ("enter", "exit"):
                    body = tuple(fields[3:7])
                    if fields[1] == "enter":
                        inside.add(body)
                    else:
                        inside.discard(body)
            return bool(inside)

        if point == "starting":  # it holds the lock: its recovery may be under way
            return lambda: lock.exists() and lock.read_text().strip() == str(child.pid)
        if point == "after some bodies":  # just after a line: often inside a body, or before its commit
            lines = rng.randint(1, 30)
            return lambda: _newlines_since(self.ledger, ledger_size) >= lines
        if point == "after some sends":
            ids = rng.randint(1, 20)
            return lambda: _newlines_since(self.acks, acks_size) >= ids
        if point == "inside a body":
            return lambda: progressed() and inside_a_body()
        if point == "a retry pending":
            return lambda: progressed() and self.count(
                "timers t JOIN runs r ON r.run_id = t.run_id", "r.function_id = 'pipeline' AND t.due_at > ?",
                (_now_text(),)) > 0
        if point == "throttled runs queued":
            return lambda: progressed() and self.count(
                "queue", "function_id = ? AND ready_at > ?", (kill_app.THROTTLED, _now_text())) > 0
        assert point == "waits open", point
        return lambda: progressed() and self.count("waits", "function_id = ?", (kill_app.WAITER,)) > 0

    # -- reading what the child left ---------------------------------------------------------------

    def ledger_lines(self) -> list[Line]:
        lines, offset = [], 0
        for raw_bytes in self.ledger.read_bytes().splitlines(keepends=True):
            start, offset = offset, offset + len(raw_bytes)
            raw = raw_bytes.decode(errors="replace")
            fields = raw.split()
            if not raw.endswith("\n") or len(fields) != 8 or len(fields[7].partition(".")[2]) != 6:
                continue  # cut short by a kill (the restart ended it with a newline)
            if fields[1] == "started":
                continue
            pid, what, function, run_id, key, step, attempt, at = fields
            lines.append(Line(int(pid), what, function, run_id, key, step, int(attempt), float(at), start))
        return lines

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise
        finally:
            conn.close()

    def count(self, table: str, where: str = "1", params: tuple[Any, ...] = ()) -> int:
        rows = self.query(f"SELECT count(*) FROM {table} WHERE {where}", params)
        return int(rows[0][0]) if rows else 0

    def step_entries(self) -> list[tuple[str, str, int, dict[str, Any]]]:
        """(run_id, step, attempt, entry) of every step entry of a body step, in log order."""
        rows = self.query(
            "SELECT stream, type, data FROM log WHERE type IN ('step.completed', 'step.errored', 'step.failed')"
            " ORDER BY position"
        )
        out = []
        for stream, type_, data in rows:
            entry = json.loads(data)
            if entry["step"] in BODY_STEPS:
                entry["type"] = type_
                out.append((stream.partition("/")[2], entry["step"], entry["attempt"], entry))
        return out

    def runs(self) -> dict[str, Run]:
        """Every run in the log, from its run.scheduled, with its starts and ends."""
        events = self.query("SELECT internal_id, data FROM events")
        data_of = {internal_id: json.loads(data) for internal_id, data in events}
        runs: dict[str, Run] = {}
        rows = self.query("SELECT stream, type, data FROM log WHERE stream LIKE 'run/%' ORDER BY position")
        for stream, type_, data in rows:
            run_id = stream.partition("/")[2]
            entry = json.loads(data)
            if type_ == "run.scheduled":
                assert run_id not in runs, f"run {run_id} was scheduled twice"
                ready_at = parse_time(entry["ready_at"]).timestamp() if entry.get("ready_at") else None
                runs[run_id] = Run(run_id, entry["function_id"], data_of[entry["event_ids"][0]], ready_at)
            elif type_ == "run.started":
                runs[run_id].started.append(parse_time(entry["at"]).timestamp())
            elif type_ in ("run.completed", "run.failed", "run.cancelled"):
                runs[run_id].ended.append(type_)
        return runs

    # -- the checks ------------------------------------------------------------------------------------

    def check(self) -> Counter[str]:
        """Every check of the module docstring; returns the numbers for the summary."""
        runs = self.runs()
        ledger = self.ledger_lines()
        self.check_events()
        self.check_runs(runs)
        duplicates = self.check_bodies(ledger)
        interrupted = self.interrupted_bodies(ledger)
        most = self.check_concurrency(ledger)
        self.check_throttle(runs)
        self.check_schedules(ledger)
        self.check_store()
        return Counter(
            kills=len(self.kills), runs=len(runs), events=self.count("events", "duplicate = 0"),
            duplicate_events=self.count("events", "duplicate = 1"), acked=len(kill_app.acknowledged(self.acks)),
            ledger_lines=len(ledger), bodies=sum(1 for line in ledger if line.what == "enter"),
            duplicate_bodies=duplicates, interrupted_bodies=interrupted,
            kills_at_their_point=sum(not kill.point.endswith("(timed out)") for kill in self.kills), max_concurrent=most, throttle_lag_ms=round(self.throttle_lag * 1000),
        )

    def check_events(self) -> None:
        """Every acknowledged event is in the log once; nothing came in that was not sent."""
        names = (kill_app.ORDER, kill_app.ASK, kill_app.REPLY, kill_app.TICK, kill_app.JOB)
        marks = ", ".join("?" * len(names))
        rows = self.query(f"SELECT id FROM events WHERE duplicate = 0 AND name IN ({marks})", names)
        received = Counter(id_ for (id_,) in rows)
        twice = sorted(id_ for id_, n in received.items() if n > 1)
        assert not twice, f"events received twice, not as duplicates: {twice[:20]}"
        acked = kill_app.acknowledged(self.acks)
        planned = {event["id"] for r in range(self.rounds) for event in kill_app.plan(r)}
        assert planned <= acked, f"rounds never acknowledged: {sorted(planned - acked)[:20]}"
        missing = sorted(acked - set(received))
        assert not missing, f"{len(missing)} acknowledged events are not in the log: {missing[:20]}"
        replies = {kill_app.reply_to(k)["id"] for k in range(self.rounds) if kill_app.replied(k)}
        assert set(received) <= planned | replies, sorted(set(received) - planned - replies)[:20]

    def check_runs(self, runs: dict[str, Run]) -> None:
        """Each run started once (at most: a failed one may not) and ended once, as its event implies."""
        rows = self.query("SELECT run_id, status, output FROM runs")
        table = {run_id: (status, output) for run_id, status, output in rows}
        assert set(table) == set(runs), "the runs table and the log hold different runs"
        by_function = Counter(run.function_id for run in runs.values())
        assert by_function[kill_app.PIPELINE] == by_function[kill_app.WAITER] == self.rounds, by_function
        assert by_function[kill_app.DOUBLE] == sum(not kill_app.fails_finally(i) for i in range(self.rounds))
        for run in runs.values():
            assert len(run.started) == 1, f"run {run.run_id} ({run.function_id}) started {len(run.started)} times"
            status, output = table[run.run_id]
            want_status, want_output = kill_app.expected(run.function_id, run.data)
            assert run.ended == [f"run.{want_status}"], f"run {run.run_id} ({run.function_id}) ended {run.ended}"
            assert status == want_status, (run.run_id, run.function_id, status)
            if want_status == "completed":
                assert json.loads(output) == want_output, (run.run_id, run.function_id, output, want_output)

    def check_bodies(self, ledger: list[Line]) -> int:
        """Committed attempts ran; bodies ran again only after kills that came before their commit.
        Returns how many bodies ran again (an attempt's enters beyond its first)."""
        entries = self.step_entries()
        exits = {(line.run_id, line.step, line.attempt) for line in ledger if line.what == "exit"}
        numbered: dict[tuple[str, str], list[int]] = defaultdict(list)
        for run_id, step, attempt, _ in entries:
            assert (run_id, step, attempt) in exits, f"{run_id} {step} attempt {attempt}: in the log, not the ledger"
            seen = numbered[(run_id, step)]
            assert attempt == len(seen), f"{run_id} {step}: attempt {attempt} recorded after {seen}"
            seen.append(attempt)
        enters = [line for line in ledger if line.what == "enter"]
        per_process = Counter((line.pid, line.run_id, line.step, line.attempt) for line in enters)
        twice = [key for key, n in per_process.items() if n > 1]
        assert not twice, f"a process ran an attempt's body twice: {twice[:10]}"
        for number, kill in enumerate(self.kills, 1):
            after = {(line.run_id, line.step, line.attempt) for line in enters if line.offset >= kill.ledger_bytes}
            again = after & kill.committed
            assert not again, (
                f"attempts committed before kill {number} ({kill.point}) ran after it: {sorted(again)[:10]}"
            )
        killed = {kill.pid for kill in self.kills}
        per_attempt: dict[Attempt, list[int]] = defaultdict(list)
        for line in enters:
            per_attempt[(line.run_id, line.step, line.attempt)].append(line.pid)
        for ran, pids in per_attempt.items():
            assert set(pids[:-1]) <= killed, f"{ran} ran in processes that were not killed: {pids}"
        return sum(len(pids) - 1 for pids in per_attempt.values())

    def interrupted_bodies(self, ledger: list[Line]) -> int:
        """How many bodies a kill interrupted (entered, never exited); at least one, or the harness
        never tested what a kill inside a body leaves."""
        exited = {(line.pid, line.run_id, line.step, line.attempt) for line in ledger if line.what == "exit"}
        entered = [line for line in ledger if line.what == "enter"]
        interrupted = [line for line in entered if (line.pid, line.run_id, line.step, line.attempt) not in exited]
        assert interrupted, "no kill landed inside a step body: the checks of bodies run again saw nothing"
        return len(interrupted)

    def check_concurrency(self, ledger: list[Line]) -> int:
        """At most the limit of bodies of one key at once; a killed process's open bodies end at its
        kill. Returns the most seen at once."""
        died = {kill.pid: kill.at for kill in self.kills}
        opened: dict[tuple[int, str, str], tuple[str, float]] = {}
        intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for line in ledger:
            if line.function != kill_app.LIMITED:
                continue
            body = (line.pid, line.run_id, line.step)
            if line.what == "enter":
                opened[body] = (line.key, line.at)
            else:
                intervals[line.key].append((opened.pop(body)[1], line.at))
        for (pid, _run_id, _step), (key, start) in opened.items():
            assert pid in died, f"process {pid} left a body open and was not killed"
            intervals[key].append((start, died[pid]))
        most = 0
        for key, spans in intervals.items():
            # exits (-1) sort before enters (+1) at the same time
            points = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
            inside = 0
            for at, step in points:
                inside += step
                assert inside <= kill_app.CONCURRENCY_LIMIT, f"key {key}: {inside} bodies at once at {at:.6f}"
                most = max(most, inside)
        assert most == kill_app.CONCURRENCY_LIMIT, f"the limit was never reached ({most}): the check saw nothing"
        return most

    def check_throttle(self, runs: dict[str, Run]) -> None:
        """Per key: the start times the gate gave (``ready_at``) keep the events' order and the GCRA
        bound exactly; the runs started no earlier than those times, and at the throttled rate, kills
        and restarts included (runs that came due while the engine was down are spaced again).

        The gate decides a start; ``run.started`` records it a moment later (admission, a worker, the
        commit). Decisions within the bound in every window of one period put the recorded starts
        within it in every window of ``period - lag`` if no start lags its decision by more than
        ``lag``; the smallest such ``lag`` must not exceed START_LATENCY_S (the summary reports it)."""
        bound = kill_app.THROTTLE_LIMIT + kill_app.THROTTLE_BURST
        period = kill_app.THROTTLE_PERIOD_S
        ready: dict[str, list[float]] = defaultdict(list)
        starts: dict[str, list[float]] = defaultdict(list)
        for run in runs.values():  # in log order of run.scheduled: the events' order
            if run.function_id != kill_app.THROTTLED:
                continue
            assert run.ready_at is not None, run
            assert run.started[0] >= run.ready_at - EPSILON_S, (
                f"throttled run {run.run_id} started {run.ready_at - run.started[0]:.3f} s before its time"
            )
            ready[run.data["k"]].append(run.ready_at)
            starts[run.data["k"]].append(run.started[0])
        assert set(starts) == {"a", "b"}, set(starts)
        kills = [_iso(kill.at) for kill in self.kills]
        for key, times in starts.items():
            given = ready[key]
            assert given == sorted(given), f"throttle key {key}: start times out of the events' order"
            most, at = _busiest_window(given, period - EPSILON_S)
            assert most <= bound, f"throttle key {key}: the gate gave {most} start times in the period from {_iso(at)}"
            started = sorted(times)
            lag, at = _lag_needed(started, bound, period)
            assert lag <= START_LATENCY_S, (
                f"throttle key {key}: {bound + 1} runs started within {period - lag:.3f} s from {_iso(at)}"
                f" (bound {bound} per {period} s); kills at {kills}"
            )
            self.throttle_lag = max(self.throttle_lag, lag)

    def check_schedules(self, ledger: list[Line]) -> None:
        """Retries and sleeps keep their times across kills, by the ledger's wall clock: no body of a
        retry ran before the retry_at of the attempt before it, and no step after a sleep before its wake_at."""
        first_enter: dict[Attempt, float] = {}
        for line in ledger:
            if line.what == "enter":
                first_enter.setdefault((line.run_id, line.step, line.attempt), line.at)
        not_before: dict[Attempt, tuple[str, float]] = {}
        for stream, type_, data in self.query(
            "SELECT stream, type, data FROM log WHERE type IN ('step.errored', 'step.sleeping')"
        ):
            run_id, entry = stream.partition("/")[2], json.loads(data)
            if type_ == "step.errored":
                retry_at = parse_time(entry["retry_at"]).timestamp()
                not_before[(run_id, entry["step"], entry["attempt"] + 1)] = ("retry_at", retry_at)
            else:
                not_before[(run_id, "c", 0)] = ("wake_at", parse_time(entry["wake_at"]).timestamp())
        assert len(not_before) >= self.rounds, "few retries and sleeps: the check sees nothing"
        for attempt, (what, due) in not_before.items():
            ran = first_enter.get(attempt)
            assert ran is not None, f"{attempt} never ran after its {what}"
            assert ran >= due - EPSILON_S, f"{attempt} ran {due - ran:.3f} s before its {what}"

    def check_store(self) -> None:
        assert self.query("PRAGMA integrity_check") == [("ok",)]
        assert self.count("queue") == 0 and self.count("timers") == 0, "work left queued or on a timer"
        assert self.count("waits", "kind != 'cancel'") == 0, "waits left open"
        store = SqliteEventStore(self.db, RunProjector())
        try:
            assert store.rebuild_projections(apply=False) == []
        finally:
            store.close()


def _busiest_window(times: list[float], period: float) -> tuple[int, float]:
    """The most of the sorted ``times`` in any window [t, t + period), and where it starts."""
    most, at, first = 0, 0.0, 0
    for last, t in enumerate(times):
        while times[first] <= t - period:
            first += 1
        if last - first + 1 > most:
            most, at = last - first + 1, times[first]
    return most, at


def _lag_needed(times: list[float], bound: int, period: float) -> tuple[float, float]:
    """The least ``lag`` such that the sorted ``times`` hold at most ``bound`` in every window of
    ``period - lag``, and where the tightest window starts."""
    lag, at = 0.0, 0.0
    for first, last in zip(times, times[bound:]):
        if period - (last - first) > lag:
            lag, at = period - (last - first), first
    return lag, at


def _newlines_since(path: Path, offset: int) -> int:
    """How many lines were ended in the file at ``path`` after byte ``offset``."""
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read().count(b"\n")


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")


def _report(numbers: Counter[str], seconds: float, tier: str) -> None:
    summary = {"test": "kill9", "tier": tier, **numbers, "seconds": round(seconds, 1)}
    print(
        f"\nkill9 [{tier}]: {numbers['kills']} kills, {numbers['runs']} runs, {numbers['events']} events"
        f" ({numbers['acked']} acknowledged, {numbers['duplicate_events']} duplicates), {numbers['ledger_lines']}"
        f" ledger lines, {numbers['bodies']} bodies ({numbers['interrupted_bodies']} interrupted by kills),"
        f" {numbers['duplicate_bodies']} ran again after kills,"
        f" throttle lag {numbers['throttle_lag_ms']} ms,"
        f" {seconds:.1f} s"
    )
    path = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(summary) + "\n")


def test_kill9_mixed_workload_loses_nothing_repeats_no_committed_step_and_keeps_limits(
    tmp_path: Path, tier: str
) -> None:
    plan = TIERS[tier]
    seed = int(os.environ.get("STEPLOG_KILL9_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"kill9 seed {seed} (set STEPLOG_KILL9_SEED to repeat the kill points)")
    began = time.monotonic()
    scenario = Scenario(tmp_path, plan.rounds)
    child = scenario.spawn()
    while len(scenario.kills) < plan.kills:
        point = rng.choice(Scenario.KILL_POINTS)
        if point != "starting":  # the others count from the engine's start, however slow the imports
            outcome = scenario.wait_for(child, scenario.engine_started(child), STARTUP_TIMEOUT_S)
            if outcome == "timed out":
                scenario.kill(child, "a child that never started")
                pytest.fail(f"the child did not start in {STARTUP_TIMEOUT_S} s\n{scenario.child_output()}")
            if outcome == "exited":
                break
        condition = scenario.kill_condition(point, rng, child)
        outcome = scenario.wait_for(child, condition, rng.uniform(*KILL_WAIT_S))
        if outcome == "exited":
            break  # the child finished its work before this kill point
        scenario.kill(child, point if outcome == "reached" else f"{point} (timed out)")
        child = scenario.spawn()
    scenario.finish(child)
    numbers = scenario.check()
    _report(numbers, time.monotonic() - began, tier)
    assert numbers["kills"] >= plan.min_kills, f"seed {seed}: only {numbers['kills']} kills landed"
    assert numbers["runs"] >= plan.min_runs, f"seed {seed}: only {numbers['runs']} runs"
