"""Durable sleeps on the threaded client, ``steplog.Steplog``, with a manual clock: a sleeping run
holds no worker, wakes once and never early, keeps its deadline across a restart, fires at start
if the deadline passed while stopped; an event's future ``ts`` delays the start, across a restart
too; and the ``steplog run`` command shows a sleeping run.

No test sleeps: waiting is ``run_until_idle``, ``advance`` and ``RunHandle.result(timeout=...)``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import records as r
from steplog.eventstore import format_time

import steplog

WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
EVENT = "app/nap"


def napper(client: steplog.Steplog, calls: Counter[str], kind: str = "def", nap: Any = "1h") -> steplog.FunctionDef:
    """A function that runs "a", sleeps "nap", then runs "b"; ``calls`` counts the step bodies."""

    def body(name: str) -> Callable[[], str]:
        def run() -> str:
            calls[name] += 1
            return name

        return run

    if kind == "def":
        @client.create_function(fn_id="napper", trigger=steplog.TriggerEvent(event=EVENT))
        def sync_napper(ctx: steplog.Context) -> list[str]:
            a = ctx.step.run("a", body("a"))
            ctx.step.sleep("nap", nap)
            return [a, ctx.step.run("b", body("b"))]

        return sync_napper

    @client.create_function(fn_id="napper", trigger=steplog.TriggerEvent(event=EVENT))
    async def async_napper(ctx: steplog.Context) -> list[str]:
        a = await ctx.step.run("a", body("a"))
        await ctx.step.sleep("nap", nap)
        return [a, await ctx.step.run("b", body("b"))]

    return async_napper


def only_run(client: steplog.Steplog, event_id: str) -> steplog.RunHandle:
    [handle] = client.runs_for_event(event_id)
    return handle


def timers(client: steplog.Steplog) -> list[dict[str, Any]]:
    return client.store.query("timers", order_by="due_at")


def consistent(client: steplog.Steplog) -> None:
    assert client.rebuild_projections(apply=False) == []


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture(params=["file", "memory"])
def db(request: pytest.FixtureRequest, db_path: Path) -> str | Path:
    return db_path if request.param == "file" else ":memory:"


# -- sleeping and waking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_sleep_waits_on_a_timer_and_wakes_once_never_early(
    db: str | Path, clock: steplog.ManualClock, kind: str
) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)
    napper(client, calls, kind)
    with client:
        [event_id] = client.send({"name": EVENT})
        assert client.run_until_idle(timeout=WAIT)
        handle = only_run(client, event_id)
        assert handle.status == "waiting"
        assert handle.wait(timeout=0) is False
        assert timers(client) == [
            {"run_id": handle.run_id, "due_at": format_time(START + HOUR), "reason": "sleep nap"}
        ]
        assert client.next_timer() == START + HOUR
        assert calls == {"a": 1}
        consistent(client)

        client.advance(HOUR - TICK)  # just before the deadline: nothing runs
        assert calls == {"a": 1}
        assert handle.status == "waiting"

        client.advance(TICK)  # at the deadline: the next step runs, once
        assert handle.result(timeout=WAIT) == ["a", "b"]
        assert calls == {"a": 1, "b": 1}
        assert timers(client) == []
        assert client.next_timer() is None

        client.advance(timedelta(days=3))
        assert calls == {"a": 1, "b": 1}
        entries = client.run_history(handle.run_id).entries
        assert [e.type for e in entries].count(r.STEP_SLEEPING) == 1
        assert [e.type for e in entries].count(r.RUN_RESUMED) == 1
        consistent(client)


def test_sleeping_runs_hold_no_worker_and_no_slot(clock: steplog.ManualClock) -> None:
    """One worker thread and one active run per function: if a sleeping run held either, the
    second run could not start until the first woke, and run_until_idle would time out."""
    calls = Counter[str]()
    client = steplog.Steplog(db=":memory:", clock=clock, max_workers=1, max_active_runs=1)
    napper(client, calls)
    with client:
        event_ids = client.send([{"name": EVENT, "data": {"i": i}} for i in range(6)])
        assert client.run_until_idle(timeout=WAIT) is True
        handles = [only_run(client, event_id) for event_id in event_ids]
        assert [h.status for h in handles] == ["waiting"] * 6
        assert calls == {"a": 6}
        assert len(timers(client)) == 6
        client.advance(HOUR)
        assert [h.result(timeout=WAIT) for h in handles] == [["a", "b"]] * 6
        assert calls == {"a": 6, "b": 6}
        consistent(client)


def test_several_sleeps_in_a_row_wake_in_turn(clock: steplog.ManualClock) -> None:
    woke: list[str] = []
    client = steplog.Steplog(db=":memory:", clock=clock)

    @client.create_function(fn_id="steps", trigger=steplog.TriggerEvent(event=EVENT))
    async def steps(ctx: steplog.Context) -> list[str]:
        for i in range(3):
            await ctx.step.sleep("tick", "10m")
            await ctx.step.run("note", lambda i=i: woke.append(f"note{i}"))
        await ctx.step.sleep_until("end", "2026-01-01T13:00:00Z")
        return woke

    with client:
        [event_id] = client.send({"name": EVENT})
        client.run_until_idle(timeout=WAIT)
        handle = only_run(client, event_id)
        assert [row["reason"] for row in timers(client)] == ["sleep tick"]
        client.advance(timedelta(minutes=10))
        assert woke == ["note0"]
        assert [row["reason"] for row in timers(client)] == ["sleep tick:1"]
        client.advance(timedelta(minutes=20))  # woken late at 12:30: the next 10 minutes count from then
        assert woke == ["note0", "note1"]
        assert timers(client) == [
            {"run_id": handle.run_id, "due_at": format_time(START + timedelta(minutes=40)), "reason": "sleep tick:2"}
        ]
        client.advance(timedelta(minutes=10))
        assert woke == ["note0", "note1", "note2"]
        assert timers(client) == [{"run_id": handle.run_id, "due_at": format_time(START + HOUR), "reason": "sleep end"}]
        client.advance(timedelta(minutes=20) - TICK)
        assert handle.status == "waiting"
        client.advance(TICK)
        assert handle.result(timeout=WAIT) == ["note0", "note1", "note2"]
        consistent(client)


def test_a_bad_sleep_fails_the_run_at_once(clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=":memory:", clock=clock)
    napper(client, calls, nap="a while")
    with client:
        [event_id] = client.send({"name": EVENT})
        handle = only_run(client, event_id)
        with pytest.raises(steplog.RunFailedError) as raised:
            handle.result(timeout=WAIT)
        assert raised.value.error["name"] == "SleepError"
        assert raised.value.error["message"].startswith("step 'nap': ")
        assert timers(client) == []
        assert client.next_timer() is None
        assert calls == {"a": 1}
        consistent(client)


# -- restarts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_restart_while_sleeping_keeps_the_deadline_and_wakes_once(
    db_path: Path, clock: steplog.ManualClock, kind: str
) -> None:
    calls = Counter[str]()
    first = steplog.Steplog(db=db_path, clock=clock)
    napper(first, calls, kind)
    with first:
        [event_id] = first.send({"name": EVENT})
        first.run_until_idle(timeout=WAIT)
        run_id = only_run(first, event_id).run_id
    clock.advance(timedelta(minutes=20))  # while no engine is running

    second = steplog.Steplog(db=db_path, clock=clock)
    napper(second, calls, kind)
    with second:
        handle = second.run(run_id)
        assert second.run_until_idle(timeout=WAIT)
        assert second.next_timer() == START + HOUR  # the recorded deadline, not 20 minutes later
        assert handle.status == "waiting"
        second.advance(timedelta(minutes=40) - TICK)
        assert calls == {"a": 1}
        second.advance(TICK)
        assert handle.result(timeout=WAIT) == ["a", "b"]
        second.advance(timedelta(days=1))
        assert calls == {"a": 1, "b": 1}
        consistent(second)


def test_a_deadline_that_passed_while_stopped_fires_right_after_start(
    db_path: Path, clock: steplog.ManualClock
) -> None:
    calls = Counter[str]()
    first = steplog.Steplog(db=db_path, clock=clock)
    napper(first, calls)
    with first:
        [event_id] = first.send({"name": EVENT})
        first.run_until_idle(timeout=WAIT)
        run_id = only_run(first, event_id).run_id
    clock.advance(timedelta(hours=6))

    second = steplog.Steplog(db=db_path, clock=clock)
    napper(second, calls)
    with second:
        assert second.run(run_id).result(timeout=WAIT) == ["a", "b"]  # no advance needed
        assert calls == {"a": 1, "b": 1}
        [resumed] = [e for e in second.run_history(run_id).entries if e.type == r.RUN_RESUMED]
        assert resumed.data["at"] == format_time(START + timedelta(hours=6))
        consistent(second)


# -- an event's ts in the future delays the run's start ------------------------------------------------------


def test_an_event_ts_in_the_future_delays_the_start(db: str | Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)
    napper(client, calls, nap=0)
    ts = START + timedelta(minutes=5, milliseconds=7)
    with client:
        [event_id] = client.send({"name": EVENT, "ts": millis(ts)})
        assert client.run_until_idle(timeout=WAIT)
        handle = only_run(client, event_id)
        assert handle.status == "queued"
        assert client.next_timer() == ts
        assert calls == {}
        client.advance(ts - START - timedelta(milliseconds=1))
        assert calls == {}
        assert handle.status == "queued"
        client.advance(timedelta(milliseconds=1))
        assert handle.result(timeout=WAIT) == ["a", "b"]
        assert handle.info()["started_at"] == format_time(ts)
        assert calls == {"a": 1, "b": 1}
        consistent(client)


def test_a_delayed_start_survives_a_restart(db_path: Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    ts = START + timedelta(hours=2)
    first = steplog.Steplog(db=db_path, clock=clock)
    napper(first, calls)
    with first:
        [event_id] = first.send({"name": EVENT, "ts": millis(ts)})
        first.run_until_idle(timeout=WAIT)
        run_id = only_run(first, event_id).run_id
    clock.advance(HOUR)
    assert calls == {}

    second = steplog.Steplog(db=db_path, clock=clock)
    napper(second, calls)
    with second:
        handle = second.run(run_id)
        assert second.run_until_idle(timeout=WAIT)
        assert handle.status == "queued"
        assert second.next_timer() == ts
        second.advance(HOUR - TICK)
        assert calls == {}
        second.advance(TICK)  # starts at ts, runs "a", sleeps an hour from ts
        assert calls == {"a": 1}
        assert handle.status == "waiting"
        assert second.next_timer() == ts + HOUR
        second.advance(HOUR)
        assert handle.result(timeout=WAIT) == ["a", "b"]
        consistent(second)


# -- the steplog command ----------------------------------------------------------------------------------------


def steplog_cli(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "steplog", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def step_rows(output: str) -> list[list[str]]:
    """The step table of ``steplog run``: each row's STEP, ATTEMPT and STATUS."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STEP"))
    return [line.split()[:3] for line in lines[header + 1:] if line.strip()]


def test_the_run_command_shows_a_sleeping_run(db_path: Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db_path, clock=clock)
    napper(client, calls)
    with client:
        [event_id] = client.send({"name": EVENT})
        client.run_until_idle(timeout=WAIT)
        run_id = only_run(client, event_id).run_id

    sleeping = steplog_cli("run", run_id, "--db", db_path)
    assert "waiting" in sleeping
    assert "sleeping until 2026-01-01 13:00:00" in sleeping
    assert step_rows(sleeping) == [["a", "1", "completed"], ["nap", "1", "sleeping"]]

    with client:
        client.advance(HOUR)
        assert client.run(run_id).result(timeout=WAIT) == ["a", "b"]
    woke = steplog_cli("run", run_id, "--db", db_path)
    assert step_rows(woke) == [
        ["a", "1", "completed"], ["nap", "1", "sleeping"], ["nap", "1", "completed"], ["b", "1", "completed"],
    ]
