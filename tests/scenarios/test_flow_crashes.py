"""Flow control across SIGKILLs, with real processes: a child app (flow_app.py) on a SQLite file
sends rounds of events to seven functions (throttle, keyed concurrency, debounce, batching,
singleton, idempotency, rate limit), and is SIGKILLed at points chosen by watching its files, many
times, restarted, and finally let drain.

The parent knows which events were acknowledged (their round's ``send`` returned: the child's ACKS
file), which step bodies ran, in which process and when (the LEDGER), and what the log holds (read
from another process, read-only; the polls are short and bounded). Then it checks:

- every acknowledged event is in the log once; every received event reached its function: it
  started or skipped exactly one run (batched: is in exactly one batch run, of at most max_size);
- every run was scheduled once, started once and completed once; nothing is left queued, pending
  (debounces, batched), on a timer or in a wait, and the projections equal a rebuild from the log;
- throttle: the start times the gate gave each key never allow more than limit + burst + 1 starts
  in any 1 s window, keep the events' order, and no run started before its time; the actual starts
  keep the same bound, across restarts;
- concurrency: within each process's lifetime (a kill leaves bodies entered and never exited), no
  more than 2 runs of one key were inside a step body at once;
- debounce: each key's last event started a run; each run had the latest event of its key when it
  was scheduled; an event that started nothing was replaced in time (or across a restart);
- singleton: in log order, no run of a key was scheduled while another was active, and every skip
  happened while one was; idempotency and the rate limit: one run per key, the rest skipped.

A separate test checks, deterministically, that runs which came due while the engine was down do
not start all at once at the restart
(``test_throttled_runs_overdue_at_a_restart_still_start_at_the_throttled_rate``).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from steplog.engine import RunProjector
from steplog.eventstore import SqliteEventStore, parse_time

APP = Path(__file__).with_name("flow_app.py")
POLL_S = 0.01
KILL_WAIT_S = (0.3, 2.0)
"""A kill point not reached within a random time in this range: kill wherever the child is."""
STEP_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 120.0
EPSILON_S = 1e-5
"""Log times have microseconds; ledger times are rounded to them."""


def _load_app() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("steplog_flow_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flow_app = _load_app()
FN = {kind[0]: kind[1] for kind in flow_app.FUNCTIONS}
"""event name -> function id"""
THROTTLED, LIMITED, DEBOUNCED, BATCHED = (kind[1] for kind in flow_app.FUNCTIONS[:4])
SINGLE, IDEMPOTENT, RATED = (kind[1] for kind in flow_app.FUNCTIONS[4:])
THROTTLE_BOUND = flow_app.THROTTLE_LIMIT + flow_app.THROTTLE_BURST + 1


@dataclass(frozen=True)
class Line:
    pid: int
    function: str
    run_id: str
    key: str
    step: str
    what: str
    at: float


@dataclass(frozen=True)
class Event:
    internal_id: str
    id: str
    name: str
    key: str
    position: int
    received_at: float


@dataclass
class Run:
    run_id: str
    function_id: str
    event_ids: list[str]
    position: int
    skipped: bool
    data: dict[str, Any]
    started: int = 0
    ended: list[str] = field(default_factory=list)
    ended_at: int | None = None
    """Log position of the run's end."""


@dataclass
class Scenario:
    tmp: Path
    workload: str
    """The app's fourth argument: a number of rounds, or ``burst=N``."""
    db: Path = field(init=False)
    ledger: Path = field(init=False)
    acks: Path = field(init=False)
    pids: list[int] = field(default_factory=list)
    kills: list[tuple[str, float]] = field(default_factory=list)
    """(kill point, unix time of the kill)"""

    def __post_init__(self) -> None:
        self.db = self.tmp / "app.db"
        self.ledger = self.tmp / "ledger.txt"
        self.acks = self.tmp / "acks.txt"
        self.ledger.touch()
        self.acks.touch()

    # -- the child --------------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"child-{len(self.pids) + 1}.log", "wb") as output:
            child = subprocess.Popen(
                [sys.executable, str(APP), str(self.db), str(self.ledger), str(self.acks), self.workload],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.pids.append(child.pid)
        return child

    def child_output(self) -> str:
        return "\n".join(
            f"--- child {i} ---\n" + (self.tmp / f"child-{i}.log").read_text(errors="replace")
            for i in range(1, len(self.pids) + 1)
        )

    def wait_for(self, child: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float) -> bool:
        """Poll until ``condition`` or ``timeout`` (then the kill lands wherever the child is);
        False if the child exited first."""
        deadline = time.monotonic() + timeout
        while child.poll() is None:
            if time.monotonic() > deadline or condition():
                return child.poll() is None
            time.sleep(POLL_S)  # polling another process's files: there is nothing to wait on
        return False

    def kill(self, child: subprocess.Popen[bytes], point: str) -> None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        self.kills.append((point, time.time()))

    def finish(self, child: subprocess.Popen[bytes]) -> None:
        try:
            code = child.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail(f"the child did not finish in {FINISH_TIMEOUT_S} s\n{self.child_output()}")
        assert code == 0, f"the child exited with {code}\n{self.child_output()}"

    # -- what the child left ---------------------------------------------------------------

    def ledger_lines(self) -> list[Line]:
        lines = []
        for raw in self.ledger.read_text().splitlines(keepends=True):
            fields = raw.split()
            if not raw.endswith("\n") or len(fields) != 7 or len(fields[6].partition(".")[2]) != 6:
                continue  # cut short by a kill (the restart ended it with a newline)
            pid, function, run_id, key, step, what, at = fields
            lines.append(Line(int(pid), function, run_id, key, step, what, float(at)))
        return lines

    def acked_rounds(self) -> set[int]:
        return flow_app.acknowledged(self.acks)  # type: ignore[no-any-return]

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

    # -- kill points -------------------------------------------------------------------------

    KILL_POINTS = (
        "starting", "after some steps", "after some sends", "inside a step body", "a debounce pending",
        "a batch pending", "throttled runs queued", "a singleton run napping",
    )

    def engine_started(self, child: subprocess.Popen[bytes]) -> bool:
        """The child's engine has started: its marker line is in the ledger."""
        return f"\n{child.pid} - - - - started " in "\n" + self.ledger.read_text()

    def kill_condition(self, point: str, rng: random.Random, child: subprocess.Popen[bytes]) -> Callable[[], bool]:
        """When the child is at ``point`` (one of KILL_POINTS), counting from now."""
        ledger_size, acks_size = self.ledger.stat().st_size, self.acks.stat().st_size
        lock = Path(f"{self.db}.lock")

        def progressed() -> bool:
            """The child did something since: a kill then lands in its work, not right after its start."""
            return self.ledger.stat().st_size > ledger_size or self.acks.stat().st_size > acks_size

        def inside_a_body() -> bool:
            with open(self.ledger, "rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - 200))
                tail = file.read().decode(errors="replace").splitlines()
            return bool(tail) and tail[-1].startswith(f"{child.pid} ") and " enter " in tail[-1]

        if point == "starting":  # it holds the lock: its recovery may be under way
            return lambda: lock.exists() and lock.read_text().strip() == str(child.pid)
        if point == "after some steps":
            lines = rng.randint(1, 25)
            return lambda: self.ledger.read_text().count("\n", ledger_size) >= lines
        if point == "after some sends":
            rounds = rng.randint(1, 6)
            return lambda: self.acks.read_text().count("\n", acks_size) >= rounds
        if point == "inside a step body":
            return lambda: progressed() and inside_a_body()
        if point == "a debounce pending":
            return lambda: progressed() and self.count("debounces") > 0
        if point == "a batch pending":
            return lambda: progressed() and self.count("batched") > 0
        if point == "throttled runs queued":
            return lambda: progressed() and self.count(
                "queue", "function_id = ? AND ready_at > ?", (THROTTLED, _now_text())) > 0
        assert point == "a singleton run napping", point
        return lambda: progressed() and self.count("runs", "function_id = ? AND status = 'waiting'", (SINGLE,)) > 0

    # -- reading the log ----------------------------------------------------------------------

    def events(self) -> list[Event]:
        """The events received (not duplicates), in log order."""
        rows = self.query(
            "SELECT internal_id, id, name, position, data, received_at FROM events WHERE duplicate = 0"
            " ORDER BY position"
        )
        return [
            Event(internal_id, id_, name, json.loads(data)["k"], position, parse_time(at).timestamp())
            for internal_id, id_, name, position, data, at in rows
        ]

    def runs(self) -> dict[str, Run]:
        """Every run the log holds, from its run.scheduled or run.skipped, with its starts and ends."""
        runs: dict[str, Run] = {}
        rows = self.query("SELECT position, stream, type, data FROM log WHERE stream LIKE 'run/%' ORDER BY position")
        for position, stream, type_, data in rows:
            run_id = stream.partition("/")[2]
            entry = json.loads(data)
            if type_ in ("run.scheduled", "run.skipped"):
                assert run_id not in runs, f"run {run_id} was scheduled twice"
                runs[run_id] = Run(run_id, entry["function_id"], entry["event_ids"], position,
                                   type_ == "run.skipped", entry)
            elif type_ == "run.started":
                runs[run_id].started += 1
            elif type_ in ("run.completed", "run.failed", "run.cancelled"):
                runs[run_id].ended.append(type_)
                runs[run_id].ended_at = position
        return runs

    # -- the checks ----------------------------------------------------------------------------

    def check(self) -> None:
        events = self.events()
        runs = self.runs()
        ledger = self.ledger_lines()
        self.check_events(events)
        self.check_runs(runs, ledger)
        self.check_routing(events, runs)
        self.check_throttle(events, runs, ledger)
        self.check_concurrency(ledger)
        self.check_debounce(events, runs)
        self.check_singleton(events, runs)
        self.check_one_run_per_key(events, runs, IDEMPOTENT, "idempotency")
        self.check_one_run_per_key(events, runs, RATED, "rate_limit")
        self.check_drained()

    def check_events(self, events: list[Event]) -> None:
        """Every acknowledged event is in the log, once; nothing else came in."""
        received = Counter(event.id for event in events)
        twice = sorted(id_ for id_, n in received.items() if n > 1)
        assert not twice, f"events received twice, not as duplicates: {twice}"
        acked = self.acked_rounds()
        rounds = 1 if self.workload.startswith("burst=") else int(self.workload)
        assert acked == set(range(rounds)), f"rounds never acknowledged: {sorted(set(range(rounds)) - acked)}"
        expected = {event["id"] for r in acked for event in self.planned(r)}
        missing = sorted(expected - set(received))
        assert not missing, f"{len(missing)} acknowledged events are not in the log: {missing[:20]}"
        assert set(received) <= expected, sorted(set(received) - expected)
        # a duplicate is a round sent again after a kill that came between its commit and its acknowledgement
        duplicates = [id_ for (id_,) in self.query("SELECT id FROM events WHERE duplicate = 1")]
        assert set(duplicates) <= set(received), "a duplicate of an event never received"

    def planned(self, r: int) -> list[dict[str, Any]]:
        """The events of round r."""
        if self.workload.startswith("burst="):
            return flow_app.burst(int(self.workload.partition("=")[2]))  # type: ignore[no-any-return]
        return flow_app.plan(r)  # type: ignore[no-any-return]

    def check_runs(self, runs: dict[str, Run], ledger: list[Line]) -> None:
        """Each run was scheduled once (runs() checks), started once, ended once and completed; the
        runs table agrees; every run's body ran."""
        for run in runs.values():
            if run.skipped:
                assert (run.started, run.ended) == (0, []), f"skipped run {run.run_id} started or ended"
                continue
            assert run.started == 1, f"run {run.run_id} ({run.function_id}) started {run.started} times"
            assert run.ended == ["run.completed"], f"run {run.run_id} ({run.function_id}) ended {run.ended}"
        table = dict(self.query("SELECT run_id, status FROM runs"))
        assert set(table) == set(runs), "the runs table and the log hold different runs"
        for run_id, status in table.items():
            assert status == ("skipped" if runs[run_id].skipped else "completed"), (run_id, status)
        ran = {line.run_id for line in ledger if line.what == "exit"}
        never = sorted(run_id for run_id, run in runs.items() if not run.skipped and run_id not in ran)
        assert not never, f"runs completed without their bodies in the ledger: {never}"

    def check_routing(self, events: list[Event], runs: dict[str, Run]) -> None:
        """Every received event is in exactly one run of its function (scheduled or skipped), except
        debounced events, which are in at most one; batches hold 1..max_size events."""
        runs_of: dict[str, list[Run]] = defaultdict(list)
        for run in runs.values():
            for internal_id in run.event_ids:
                runs_of[internal_id].append(run)
        for event in events:
            function = FN[event.name]
            mine = runs_of.get(event.internal_id, [])
            assert all(run.function_id == function for run in mine), (event, mine)
            if function == DEBOUNCED:
                assert len(mine) <= 1, f"debounced event {event.id} started {len(mine)} runs"
            else:
                assert len(mine) == 1, f"event {event.id} is in {len(mine)} runs of {function}"
        for run in runs.values():
            if run.function_id == BATCHED:
                assert not run.skipped and 1 <= len(run.event_ids) <= flow_app.BATCH_SIZE, run
            else:
                assert len(run.event_ids) == 1, run

    def check_throttle(self, events: list[Event], runs: dict[str, Run], ledger: list[Line]) -> None:
        key_of = {event.internal_id: event.key for event in events}
        first_enter: dict[str, Line] = {}
        for line in ledger:
            if line.function == THROTTLED and line.what == "enter" and line.run_id not in first_enter:
                first_enter[line.run_id] = line
        by_key: dict[str, list[Run]] = defaultdict(list)
        for run in sorted(runs.values(), key=lambda run: run.position):
            if run.function_id == THROTTLED:
                assert not run.skipped, run
                by_key[key_of[run.event_ids[0]]].append(run)
        assert set(by_key) == {"a", "b"}, set(by_key)
        for key, key_runs in by_key.items():
            ready = [parse_time(run.data["ready_at"]).timestamp() for run in key_runs]
            # the gate's start times: in the events' order, within the bound in any 1 s window
            assert ready == sorted(ready), f"throttle key {key}: start times out of the events' order"
            most, at = _busiest_second(ready)
            assert most <= THROTTLE_BOUND, f"throttle key {key}: {most} start times in the second from {at:.3f}"
            # no run started before its time, across restarts
            for run, due in zip(key_runs, ready):
                started = first_enter[run.run_id].at
                assert started >= due - EPSILON_S, f"throttled run {run.run_id} started {due - started:.3f} s early"
            # and they started at the throttled rate, restarts included (runs that came due while
            # the engine was down are spaced again from the restart)
            most, at = _busiest_second([first_enter[run.run_id].at for run in key_runs])
            assert most <= THROTTLE_BOUND, f"throttle key {key}: {most} runs started in the second from {at:.3f}"

    def check_concurrency(self, ledger: list[Line]) -> None:
        """Within one process, at most 2 runs of a key inside a step body at once."""
        open_runs: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
        most = 0
        for line in ledger:
            if line.function != LIMITED:
                continue
            inside = open_runs[(line.pid, line.key)]
            if line.what == "enter":
                inside[line.run_id] += 1
                assert inside[line.run_id] == 1, f"run {line.run_id} entered two bodies at once"
                assert len(inside) <= flow_app.CONCURRENCY_LIMIT, (
                    f"process {line.pid}: {len(inside)} runs of key {line.key} inside bodies at {line.at:.6f}:"
                    f" {sorted(inside)}"
                )
                most = max(most, len(inside))
            else:
                inside.pop(line.run_id, None)
        assert most == flow_app.CONCURRENCY_LIMIT, f"the limit was never reached ({most}): the check saw nothing"

    def check_debounce(self, events: list[Event], runs: dict[str, Run]) -> None:
        debounced = [event for event in events if event.name == flow_app.DEBOUNCE[0]]
        ran = {run.event_ids[0]: run for run in runs.values() if run.function_id == DEBOUNCED}
        assert not any(run.skipped for run in ran.values())
        by_key: dict[str, list[Event]] = defaultdict(list)
        for event in debounced:
            by_key[event.key].append(event)
        assert set(by_key) == {"p", "q"}, set(by_key)
        kills = sorted(at for _, at in self.kills)
        period = flow_app.DEBOUNCE_PERIOD_S
        for key, key_events in by_key.items():
            last = key_events[-1]
            assert last.internal_id in ran, f"debounce key {key}: the last event {last.id} started no run"
            for event, later in pairwise(key_events):
                run = ran.get(event.internal_id)
                if run is not None:
                    # a run starts with its key's latest event: none came between it and the run
                    assert later.position > run.position, (
                        f"debounce key {key}: run {run.run_id} started with {event.id}, but {later.id} came before"
                    )
                    continue
                # an event that started nothing was replaced before its time came (or across a kill)
                replaced_in_time = later.received_at <= event.received_at + period + 0.5
                killed_between = bisect.bisect_left(kills, event.received_at) < bisect.bisect_left(
                    kills, later.received_at)
                assert replaced_in_time or killed_between, (
                    f"debounce key {key}: {event.id} started no run, and {later.id} came"
                    f" {later.received_at - event.received_at:.3f} s after it"
                )

    def check_singleton(self, events: list[Event], runs: dict[str, Run]) -> None:
        """In log order: no run scheduled while another of its key is active; skips only while one is."""
        key_of = {event.internal_id: event.key for event in events}
        moments: list[tuple[int, str, Run]] = []
        for run in runs.values():
            if run.function_id != SINGLE:
                continue
            moments.append((run.position, "skipped" if run.skipped else "scheduled", run))
            if not run.skipped:
                assert run.ended_at is not None
                moments.append((run.ended_at, "ended", run))
        active: dict[str, str] = {}
        skips = 0
        for _, what, run in sorted(moments, key=lambda moment: moment[0]):
            key = key_of[run.event_ids[0]]
            if what == "scheduled":
                assert key not in active, (
                    f"singleton key {key}: run {run.run_id} scheduled while {active[key]} was active"
                )
                active[key] = run.run_id
            elif what == "ended":
                assert active.pop(key) == run.run_id
            else:
                assert run.data["reason"] == "singleton", run.data
                assert key in active, f"singleton key {key}: event skipped while no run was active"
                skips += 1
        assert skips > 0, "no singleton event was skipped: the check saw nothing"

    def check_one_run_per_key(self, events: list[Event], runs: dict[str, Run], function: str, reason: str) -> None:
        key_of = {event.internal_id: event.key for event in events}
        started: Counter[str] = Counter()
        for run in runs.values():
            if run.function_id != function:
                continue
            if run.skipped:
                assert run.data["reason"] == reason, run.data
            else:
                started[key_of[run.event_ids[0]]] += 1
        keys = {event.key for event in events if FN[event.name] == function}
        assert keys and set(started) == keys, f"{function}: keys without a run: {sorted(keys - set(started))}"
        assert set(started.values()) == {1}, f"{function}: keys with several runs: {started}"

    def check_drained(self) -> None:
        store = SqliteEventStore(self.db, RunProjector())
        try:
            for table in ("queue", "debounces", "batched", "timers", "waits", "wakeups"):
                assert store.query(table) == [], f"{table} is not empty after the drain"
            assert store.rebuild_projections(apply=False) == []
        finally:
            store.close()


def _now_text() -> str:
    """Now, as the log writes times (so that text order is time order)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _busiest_second(times: Iterable[float]) -> tuple[int, float]:
    """The most times in any window [t, t + 1 s] (closed, as GCRA's bound counts), and where it begins."""
    ordered = sorted(times)
    best = (0, 0.0)
    for i, start in enumerate(ordered):
        n = bisect.bisect_right(ordered, start + 1.0 + EPSILON_S) - i
        best = max(best, (n, start))
    return best


def crash_loop(tmp: Path, rounds: int, kills: int, seed: int) -> Scenario:
    rng = random.Random(seed)
    scenario = Scenario(tmp, str(rounds))
    child = scenario.spawn()
    while len(scenario.kills) < kills:
        point = rng.choice(Scenario.KILL_POINTS)
        if point != "starting":  # the time given to reach the point counts from the engine's start
            if not scenario.wait_for(child, partial(scenario.engine_started, child), STEP_TIMEOUT_S):
                break  # it finished: the last one
            if not scenario.engine_started(child):
                child.kill()
                child.wait()
                pytest.fail(f"the child did not start in {STEP_TIMEOUT_S} s\n{scenario.child_output()}")
        condition = scenario.kill_condition(point, rng, child)
        if not scenario.wait_for(child, condition, rng.uniform(*KILL_WAIT_S)):
            break
        scenario.kill(child, point)
        child = scenario.spawn()
    scenario.finish(child)
    return scenario


def test_flow_control_holds_across_kills(tmp_path: Path) -> None:
    scenario = crash_loop(tmp_path, rounds=80, kills=12, seed=7)
    assert len(scenario.kills) >= 10, f"only {len(scenario.kills)} kills landed: {scenario.kills}"
    scenario.check()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flow_control_holds_across_many_kills(
    tmp_path: Path, seed: int, request: pytest.FixtureRequest, tier: str
) -> None:
    if "slow" not in (request.config.getoption("markexpr") or "") and tier != "long":
        pytest.skip("a long crash loop: run with -m slow or --tier long")
    scenario = crash_loop(tmp_path, rounds=200, kills=40, seed=seed)
    assert len(scenario.kills) >= 30, f"seed {seed}: only {len(scenario.kills)} kills landed"
    scenario.check()


class ThrottleExceeded(AssertionError):
    """More throttled runs started in one second than the throttle allows."""


BURST = 20
OVERDUE = 10


def test_throttled_runs_overdue_at_a_restart_still_start_at_the_throttled_rate(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, f"burst={BURST}")
    child = scenario.spawn()
    # the send of 20 events of one key returned: their runs are queued 0.2 s apart (5 per second)
    assert scenario.wait_for(child, lambda: scenario.acked_rounds() == {0}, STEP_TIMEOUT_S), scenario.child_output()
    assert scenario.acked_rounds() == {0}, f"the burst was not acknowledged\n{scenario.child_output()}"
    scenario.kill(child, "after the burst's send")

    # the process stays down until 10 queued runs are overdue (polled against the log's ready_at)
    def overdue() -> int:
        return scenario.count("queue", "function_id = ? AND ready_at <= ?", (THROTTLED, _now_text()))

    deadline = time.monotonic() + STEP_TIMEOUT_S
    while overdue() < OVERDUE:
        assert time.monotonic() < deadline, f"fewer than {OVERDUE} runs became overdue"
        time.sleep(POLL_S)  # the wall clock against the log: there is nothing to wait on
    scenario.finish(scenario.spawn())

    events, runs, ledger = scenario.events(), scenario.runs(), scenario.ledger_lines()
    scenario.check_events(events)
    scenario.check_runs(runs, ledger)
    ready = sorted(parse_time(run.data["ready_at"]).timestamp() for run in runs.values())
    assert len(ready) == BURST and _busiest_second(ready)[0] <= THROTTLE_BOUND, "the gate's start times"
    first_enter: dict[str, float] = {}
    for line in ledger:
        if line.what == "enter":
            first_enter.setdefault(line.run_id, line.at)
    busiest, at = _busiest_second(first_enter.values())
    if busiest > THROTTLE_BOUND:
        raise ThrottleExceeded(
            f"{busiest} runs of throttle key 'a' (limit {flow_app.THROTTLE_LIMIT}/s, burst"
            f" {flow_app.THROTTLE_BURST}) started in the second from {at:.3f}"
        )
