"""Supervision: a run whose execution crashes (an engine fault, not the user's code) is restarted
from its log; one that keeps crashing is failed visibly; the engine lives on either way.
A storage failure stops the engine and says why."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import steplog
from steplog.actors.supervisor import MAX_RESTARTS
from steplog.engine import Engine

WAIT = 10.0


def two_steps(client: steplog.Steplog, ran: list[str]) -> None:
    @client.create_function(fn_id="job", trigger=steplog.TriggerEvent(event="app/job"))
    def job(ctx: steplog.Context) -> int:
        a = ctx.step.run("a", lambda: ran.append("a") or 1)
        return a + ctx.step.run("b", lambda: ran.append("b") or 2)


def crash_invocations(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """Make the next ``times`` invocations die before running, as an engine bug would."""
    crashed: list[str] = []
    real_invoke = Engine.invoke

    def invoke(self: Engine, run_id: str, state: Any = None) -> Any:
        if len(crashed) < times:
            crashed.append(run_id)
            raise RuntimeError("engine fault")
        return real_invoke(self, run_id, state)

    monkeypatch.setattr(Engine, "invoke", invoke)
    return crashed


def test_a_crashed_run_is_restarted_from_its_log(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    client = steplog.Steplog(db=db_path)
    two_steps(client, ran)
    crashed = crash_invocations(monkeypatch, times=MAX_RESTARTS)
    with client:
        [event_id] = client.send({"name": "app/job"})
        assert client.runs_for_event(event_id)[0].result(timeout=WAIT) == 3
    assert len(crashed) == MAX_RESTARTS
    assert ran == ["a", "b"]


def test_a_run_that_keeps_crashing_is_failed_and_the_engine_goes_on(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    client = steplog.Steplog(db=db_path)
    two_steps(client, ran)
    crash_invocations(monkeypatch, times=MAX_RESTARTS + 1)
    with client:
        [doomed] = client.send({"name": "app/job"})
        with pytest.raises(steplog.RunFailedError, match="engine could not run this run: engine fault"):
            client.runs_for_event(doomed)[0].result(timeout=WAIT)
        [healthy] = client.send({"name": "app/job"})
        assert client.runs_for_event(healthy)[0].result(timeout=WAIT) == 3
    assert ran == ["a", "b"]


def test_a_storage_failure_stops_the_engine_with_the_reason(db_path: Path) -> None:
    client = steplog.Steplog(db=db_path)
    two_steps(client, [])
    with client:
        client.send({"name": "app/job"})
        client.run_until_idle(timeout=WAIT)
        store: Any = client.store
        store._writer.close()  # the file's connection dies under the writer, as on an I/O error
        with pytest.raises(steplog.EngineStoppedError, match="store failed"):
            client.send({"name": "app/job"})
            client.run_until_idle(timeout=WAIT)
        with pytest.raises(steplog.EngineStoppedError, match="store failed"):
            client.send({"name": "app/job"})
    rows = sqlite3.connect(db_path).execute("select count(*) from runs where status = 'completed'").fetchone()
    assert rows == (1,)


def test_a_second_engine_on_the_same_file_is_refused(db_path: Path) -> None:
    first = steplog.Steplog(db=db_path)
    two_steps(first, [])
    second = steplog.Steplog(db=db_path)
    two_steps(second, [])
    with first:
        with pytest.raises(steplog.DatabaseInUseError, match="one engine per database file"):
            second.start()
    with second:  # the first one's stop released the file
        [event_id] = second.send({"name": "app/job"})
        assert second.runs_for_event(event_id)[0].result(timeout=WAIT) == 3


def test_stop_gives_up_on_a_step_that_does_not_return_and_the_run_resumes_next_time(db_path: Path) -> None:
    import threading
    import time

    release = threading.Event()
    started = threading.Event()
    calls: list[int] = []

    def register(client: steplog.Steplog) -> None:
        @client.create_function(fn_id="slow", trigger=steplog.TriggerEvent(event="app/slow"))
        def slow(ctx: steplog.Context) -> str:
            return ctx.step.run("wait", wait_once)

    def wait_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(WAIT)  # the first attempt hangs until the test lets it go
        return "done"

    first = steplog.Steplog(db=db_path)
    register(first)
    first.start()
    [event_id] = first.send({"name": "app/slow"})
    assert started.wait(WAIT)
    began = time.monotonic()
    first.stop(timeout=0.3)
    assert time.monotonic() - began < 3  # one deadline for everything, not one per actor
    second = steplog.Steplog(db=db_path)
    register(second)
    with second:
        assert second.runs_for_event(event_id)[0].result(timeout=WAIT) == "done"
    release.set()
    assert len(calls) == 2
