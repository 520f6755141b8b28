"""The stuck-run detector (engine/health.py) on the synchronous engine with a manual clock.

Each kind of stuck run is made for real by leaving out the one thing that would move it (the
engine never starts a queued run, never fires a due timer, never reacts to a signal, or a step
body does not return) and is reported once a whole window has passed, not before; runs that are
merely sleeping, waiting or done are never reported.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from steplog.engine import Context, Engine, FunctionRegistry, ManualClock, RunProjector, TriggerEvent, define_function
from steplog.engine import records as r
from steplog.engine.health import StuckRun, stuck_runs
from steplog.eventstore import EventStore, MemoryEventStore, SqliteEventStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
JUST_UNDER = WINDOW - timedelta(milliseconds=1)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> EventStore:
    if request.param == "memory":
        return MemoryEventStore(RunProjector())
    return SqliteEventStore(tmp_path / "health.db", RunProjector())


def engine_with(store: EventStore, clock: ManualClock, **handlers: Any) -> Engine:
    registry = FunctionRegistry()
    for fn_id, handler in handlers.items():
        registry.add(define_function(handler, fn_id=fn_id, trigger=TriggerEvent(event=f"app/{fn_id}")))
    return Engine(store, registry=registry, clock=clock)


def two_steps(ctx: Context) -> str:
    ctx.step.run("a", lambda: 1)
    return str(ctx.step.run("b", lambda: 2))


def nap(ctx: Context) -> str:
    ctx.step.run("a", lambda: 1)
    ctx.step.sleep("nap", 30)
    return "rested"


def listen(ctx: Context) -> Any:
    return ctx.step.wait_for_event("answer", event="app/answer", timeout="1h", match="data.id")


def only(found: list[StuckRun]) -> StuckRun:
    assert len(found) == 1, [s.describe() for s in found]
    return found[0]


def test_a_run_never_started_is_stuck_queued_after_a_window(store: EventStore) -> None:
    clock = ManualClock(START)
    engine = engine_with(store, clock, steps=two_steps)
    [run] = engine.accept({"name": "app/steps", "data": {}}).runs  # accepted, but nobody starts it

    assert stuck_runs(store, now=START + JUST_UNDER, window=WINDOW) == []
    stuck = only(stuck_runs(store, now=START + WINDOW, window=WINDOW))
    assert (stuck.run_id, stuck.reason, stuck.status, stuck.since) == (run.run_id, "queued", "queued", START)
    assert [e.type for e in stuck.history] == [r.RUN_SCHEDULED]
    assert run.run_id in stuck.describe() and "run.scheduled" in stuck.describe()

    engine._ready.append(run.run_id)
    engine.run_until_idle()  # started late, and done: no longer stuck
    assert stuck_runs(store, now=START + 10 * WINDOW, window=WINDOW) == []


def test_a_due_timer_never_fired_is_stuck_after_a_window(store: EventStore) -> None:
    clock = ManualClock(START)
    engine = engine_with(store, clock, nap=nap)
    engine.send({"name": "app/nap", "data": {}})
    engine.run_until_idle()
    wake = START + timedelta(seconds=30)
    # sleeping, long past the window since its last entry, but not yet due: not stuck
    assert stuck_runs(store, now=wake - timedelta(milliseconds=1), window=timedelta(seconds=10)) == []

    clock.advance(timedelta(seconds=30) + JUST_UNDER)  # the clock moves; the engine is not told
    assert stuck_runs(store, now=clock.now(), window=WINDOW) == []
    stuck = only(stuck_runs(store, now=wake + WINDOW, window=WINDOW))
    assert (stuck.reason, stuck.status, stuck.since, stuck.last_entry_at) == ("timer", "waiting", wake, START)
    assert "sleep nap" in stuck.detail

    engine.advance(timedelta(seconds=1))  # the timer fires now: the run ends
    assert stuck_runs(store, now=clock.now() + 10 * WINDOW, window=WINDOW) == []


def test_a_resolved_wait_the_run_never_reacts_to_is_stuck_woken(store: EventStore) -> None:
    clock = ManualClock(START)
    engine = engine_with(store, clock, listen=listen)
    [run_id] = [run.run_id for run in engine.accept({"name": "app/listen", "data": {"id": 7}}).runs]
    engine._ready.append(run_id)
    engine.run_until_idle()
    assert stuck_runs(store, now=START + 30 * WINDOW, window=WINDOW) == []  # waiting within its timeout

    clock.advance(timedelta(seconds=10))
    engine.accept({"name": "app/answer", "data": {"id": 7}})  # resolves the wait; the run is not woken
    assert stuck_runs(store, now=clock.now() + JUST_UNDER, window=WINDOW) == []
    stuck = only(stuck_runs(store, now=clock.now() + WINDOW, window=WINDOW))
    assert (stuck.run_id, stuck.reason, stuck.since) == (run_id, "woken", START + timedelta(seconds=10))
    assert r.WAIT_RESOLVED in [e.type for e in stuck.history]

    engine._ready.append(run_id)
    engine.run_until_idle()  # it reacts and ends; its wakeups row is gone with it
    assert stuck_runs(store, now=clock.now() + 10 * WINDOW, window=WINDOW) == []


def test_a_step_body_that_does_not_return_is_stuck_running(store: EventStore) -> None:
    clock = ManualClock(START)
    seen: dict[str, list[StuckRun]] = {}

    def wedged(ctx: Context) -> str:
        ctx.step.run("a", lambda: 1)

        def body() -> int:  # looks from inside a body "blocked" for a while
            seen["early"] = stuck_runs(store, now=clock.now() + JUST_UNDER, window=WINDOW)
            seen["late"] = stuck_runs(store, now=clock.now() + WINDOW, window=WINDOW)
            return 2

        return str(ctx.step.run("b", body))

    engine = engine_with(store, clock, wedged=wedged)
    engine.send({"name": "app/wedged", "data": {}})
    engine.run_until_idle()
    [run_id] = [row["run_id"] for row in store.query("runs")]

    assert seen["early"] == []
    stuck = only(seen["late"])
    assert (stuck.run_id, stuck.reason, stuck.status, stuck.since) == (run_id, "running", "running", START)
    assert [e.type for e in stuck.history] == [r.RUN_SCHEDULED, r.RUN_STARTED, r.STEP_COMPLETED]
    assert stuck_runs(store, now=clock.now() + 10 * WINDOW, window=WINDOW) == []  # it returned and ended


def test_healthy_runs_are_never_reported(store: EventStore) -> None:
    clock = ManualClock(START)
    engine = engine_with(store, clock, steps=two_steps, nap=nap, listen=listen)
    engine.send([{"name": "app/steps", "data": {}}, {"name": "app/nap", "data": {}},
                 {"name": "app/listen", "data": {"id": 1}}])
    engine.run_until_idle()
    for _ in range(120):  # two hours, a minute at a time: the sleep ends, the wait times out
        engine.advance(timedelta(minutes=1))
        assert stuck_runs(store, now=clock.now(), window=WINDOW) == []
    statuses = sorted(row["status"] for row in store.query("runs"))
    assert statuses == ["completed", "completed", "completed"]


def test_several_reasons_for_one_run_report_it_once_from_the_earliest(store: EventStore) -> None:
    clock = ManualClock(START)
    engine = engine_with(store, clock, listen=listen)
    [run_id] = [run.run_id for run in engine.accept({"name": "app/listen", "data": {"id": 3}}).runs]
    engine._ready.append(run_id)
    engine.run_until_idle()
    clock.advance(timedelta(minutes=5))
    engine.accept({"name": "app/answer", "data": {"id": 3}})  # woken at +5 min, never reacts
    stuck = only(stuck_runs(store, now=START + timedelta(hours=2), window=WINDOW))  # and its timer is due at 1 h
    assert (stuck.reason, stuck.since) == ("woken", START + timedelta(minutes=5))


def test_history_is_left_out_on_request_and_the_window_must_be_positive(store: EventStore) -> None:
    clock = ManualClock(START)
    engine_with(store, clock, steps=two_steps).accept({"name": "app/steps", "data": {}})
    stuck = only(stuck_runs(store, now=START + WINDOW, window=WINDOW, history=False))
    assert stuck.history == ()
    assert stuck.to_dict()["since"] == "2026-01-01T12:00:00.000000Z"
    with pytest.raises(ValueError, match="window must be positive"):
        stuck_runs(store, now=START, window=timedelta(0))
