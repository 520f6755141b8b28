"""ctx.step.sleep and ctx.step.sleep_until on the synchronous engine: the deadline written once,
no slot held while sleeping, never early and exactly once, replay, occurrence keys, past
deadlines, bad input, the step limit, non-determinism, restarts, and an event's future ``ts``.

Every scenario ends with the projections matching the log (``rebuild_projections(apply=False)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from steplog.engine import (
    Context,
    Engine,
    FunctionDef,
    FunctionRegistry,
    Limits,
    ManualClock,
    RunProjector,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.eventstore import EventStore, MemoryEventStore, format_time

TRIGGER = TriggerEvent(event="app/go")
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
KINDS = ["def", "async def"]

Op = tuple[str, str, Any]
"""("run", id, body) | ("sleep", id, duration) | ("sleep_until", id, when)"""


def program(kind: str, ops: list[Op]) -> Callable[..., Any]:
    """A function, ``def`` or ``async def``, that performs ``ops`` in order and returns the run results."""
    if kind == "def":
        def handler(ctx: Context) -> list[Any]:
            out = []
            for op, step_id, arg in ops:
                value = getattr(ctx.step, op)(step_id, arg)
                if op == "run":
                    out.append(value)
                else:
                    assert value is None
            return out

        return handler

    async def async_handler(ctx: Context) -> list[Any]:
        out = []
        for op, step_id, arg in ops:
            value = await getattr(ctx.step, op)(step_id, arg)
            if op == "run":
                out.append(value)
            else:
                assert value is None
        return out

    return async_handler


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef, limits: Limits | None = None) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock, limits=limits)


def define(handler: Callable[..., Any], fn_id: str = "f", **options: Any) -> FunctionDef:
    return define_function(handler, fn_id=fn_id, trigger=TRIGGER, **options)


def start_one(engine: Engine, **event: Any) -> str:
    """Send one event that starts exactly one run; return the run id."""
    [run] = engine.accept({"name": "app/go", "data": {}, **event}).runs
    engine._ready.append(run.run_id)
    return run.run_id


def stream(store: EventStore, run_id: str) -> list[tuple[str, str | None]]:
    return [(e.type, e.data.get("step")) for e in store.read_stream(r.run_stream(run_id))]


def sleeping_entries(store: EventStore, run_id: str) -> list[dict[str, Any]]:
    return [e.data for e in store.read_stream(r.run_stream(run_id)) if e.type == r.STEP_SLEEPING]


def consistent(store: EventStore) -> None:
    assert store.rebuild_projections(apply=False) == []


class Calls(Counter[str]):
    """Counts step bodies: ``calls.body("a", value)`` is a body that counts and returns value."""

    def body(self, name: str, value: Any = None) -> Callable[[], Any]:
        def run() -> Any:
            self[name] += 1
            return name if value is None else value

        return run


def a_nap_b(calls: Calls, nap: Any = "1h") -> list[Op]:
    return [("run", "a", calls.body("a")), ("sleep", "nap", nap), ("run", "b", calls.body("b"))]


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- the deadline is written once; the run waits without a slot; never early, exactly once -------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_sleep_records_its_deadline_and_the_run_waits_on_a_timer(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    engine = make_engine(run_store, clock, define(program(kind, a_nap_b(calls))))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1

    wake = START + HOUR
    assert stream(run_store, run_id) == [
        (r.RUN_SCHEDULED, None), (r.RUN_STARTED, None), (r.STEP_COMPLETED, "a"), (r.STEP_SLEEPING, "nap"),
    ]
    [sleeping] = sleeping_entries(run_store, run_id)
    assert sleeping == {
        "step": "nap", "id": "nap", "kind": "sleep", "started_at": format_time(START), "wake_at": format_time(wake),
        "due_at": format_time(wake),
    }
    # the run holds nothing but rows: it is waiting, with a timer due at the deadline
    assert queries.get_run(run_store, run_id)["status"] == "waiting"
    assert run_store.query("timers") == [{"run_id": run_id, "due_at": format_time(wake), "reason": "sleep nap"}]
    assert run_store.query("queue") == []
    assert engine.next_timer() == wake
    assert not engine._ready
    assert calls == {"a": 1}
    consistent(run_store)


@pytest.mark.parametrize("kind", KINDS)
def test_a_sleep_never_wakes_early_and_wakes_exactly_once(run_store: EventStore, clock: ManualClock, kind: str) -> None:
    calls = Calls()
    engine = make_engine(run_store, clock, define(program(kind, a_nap_b(calls))))
    run_id = start_one(engine)
    engine.run_until_idle()

    assert engine.advance(HOUR - TICK) == 0  # just before the deadline: nothing runs
    assert calls == {"a": 1}
    assert queries.get_run(run_store, run_id)["status"] == "waiting"
    consistent(run_store)

    assert engine.advance(TICK) == 1  # at the deadline: one invocation, and the next step runs once
    assert calls == {"a": 1, "b": 1}
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "completed" and run["output"] == ["a", "b"] and run["steps"] == 3
    assert stream(run_store, run_id)[4:] == [
        (r.RUN_RESUMED, None), (r.STEP_COMPLETED, "nap"), (r.STEP_COMPLETED, "b"), (r.RUN_COMPLETED, None),
    ]
    assert run_store.query("timers") == []
    assert engine.next_timer() is None

    assert engine.advance(timedelta(days=2)) == 0  # it never fires again
    assert calls == {"a": 1, "b": 1}
    assert len(sleeping_entries(run_store, run_id)) == 1
    consistent(run_store)


def test_a_sleep_woken_early_waits_again_for_its_first_deadline(store: EventStore, clock: ManualClock) -> None:
    """Even if something invokes the run before its time, the recorded deadline holds: the sleep
    does not end early and a relative duration is not measured again from the later call."""
    calls = Calls()
    engine = make_engine(store, clock, define(program("def", a_nap_b(calls))))
    run_id = start_one(engine)
    engine.run_until_idle()
    before = stream(store, run_id)

    clock.advance(timedelta(minutes=30))
    outcome = engine.invoke(run_id)
    assert outcome.status == "waiting"
    assert outcome.wake_at == START + HOUR  # not 13:30, not 12:30
    assert stream(store, run_id) == before  # nothing written
    assert calls == {"a": 1}
    assert store.query("timers")[0]["due_at"] == format_time(START + HOUR)
    consistent(store)


def test_a_bare_except_cannot_skip_a_sleep(store: EventStore, clock: ManualClock) -> None:
    calls = Calls()

    def handler(ctx: Context) -> str:
        try:
            ctx.step.sleep("nap", "1h")
        except BaseException:  # noqa: BLE001, S110 - user code must not be able to cut a sleep short
            pass
        return ctx.step.run("b", calls.body("b"))

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert calls == {}
    assert queries.get_run(store, run_id)["status"] == "waiting"
    engine.advance(HOUR)
    assert calls == {"b": 1}
    assert queries.get_run(store, run_id)["output"] == "b"
    consistent(store)


@pytest.mark.parametrize("kind", KINDS)
def test_replay_after_the_wake_neither_reruns_earlier_steps_nor_sleeps_again(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    b_failures = [True]

    def b() -> str:
        calls["b"] += 1
        if b_failures and b_failures.pop():
            raise RuntimeError("b fails once")
        return "b"

    ops: list[Op] = [("run", "a", calls.body("a")), ("sleep", "nap", timedelta(hours=1)), ("run", "b", b)]
    engine = make_engine(run_store, clock, define(program(kind, ops), retries=1))
    run_id = start_one(engine)
    engine.run_until_idle()
    engine.advance(HOUR)  # wakes; b fails and waits for its retry
    assert calls == {"a": 1, "b": 1}
    assert run_store.query("timers")[0]["reason"] == "retry step b"

    due = engine.next_timer()
    assert due is not None and due > START + HOUR
    clock.set(due)
    assert engine.run_until_idle() == 1  # the replay passes a and the sleep from the log
    assert calls == {"a": 1, "b": 2}
    assert queries.get_run(run_store, run_id)["output"] == ["a", "b"]
    assert len(sleeping_entries(run_store, run_id)) == 1
    assert [key for t, key in stream(run_store, run_id) if t == r.STEP_COMPLETED] == ["a", "nap", "b"]
    consistent(run_store)


# -- occurrence keys, past deadlines, the forms of a duration and a time --------------------------------


def test_sleep_ids_count_occurrences_with_runs_too(run_store: EventStore, clock: ManualClock) -> None:
    calls = Calls()
    ops: list[Op] = [
        ("sleep", "nap", "1m"), ("sleep", "nap", "1m"),
        ("run", "nap", calls.body("nap", 3)), ("run", "b", calls.body("b")),
    ]
    engine = make_engine(run_store, clock, define(program("def", ops)))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert run_store.query("timers")[0]["reason"] == "sleep nap"
    engine.advance(timedelta(minutes=1))
    assert run_store.query("timers")[0]["reason"] == "sleep nap:1"
    assert run_store.query("timers")[0]["due_at"] == format_time(START + timedelta(minutes=2))
    assert calls == {}
    engine.advance(timedelta(minutes=1))
    assert calls == {"nap": 1, "b": 1}
    completed = [
        (e.data["step"], e.data["id"], e.data["kind"])
        for e in run_store.read_stream(r.run_stream(run_id)) if e.type == r.STEP_COMPLETED
    ]
    assert completed == [("nap", "nap", "sleep"), ("nap:1", "nap", "sleep"), ("nap:2", "nap", "run"), ("b", "b", "run")]
    assert queries.get_run(run_store, run_id)["output"] == [3, "b"]
    consistent(run_store)


@pytest.mark.parametrize(
    ("op", "arg"),
    [
        ("sleep", 0),
        ("sleep", timedelta(0)),
        ("sleep", "0s"),
        ("sleep_until", START),
        ("sleep_until", START - timedelta(days=3)),
        ("sleep_until", "2025-12-31T23:59:59Z"),
        ("sleep_until", "2026-01-01T13:00:00+02:00"),  # 11:00 UTC: an hour ago
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_a_deadline_already_past_completes_at_once(
    run_store: EventStore, clock: ManualClock, kind: str, op: str, arg: Any
) -> None:
    calls = Calls()
    ops: list[Op] = [("run", "a", calls.body("a")), (op, "nap", arg), ("run", "b", calls.body("b"))]
    engine = make_engine(run_store, clock, define(program(kind, ops)))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    assert calls == {"a": 1, "b": 1}
    assert sleeping_entries(run_store, run_id) == []
    assert [t for t, _ in stream(run_store, run_id)] == [
        r.RUN_SCHEDULED, r.RUN_STARTED, r.STEP_COMPLETED, r.STEP_COMPLETED, r.STEP_COMPLETED, r.RUN_COMPLETED,
    ]
    [nap] = [s for s in queries.run_history(run_store, run_id).steps if s.step == "nap"]
    assert (nap.kind, nap.status, nap.output) == ("sleep", "completed", None)
    assert run_store.query("timers") == []
    assert engine.next_timer() is None
    consistent(run_store)


def test_a_past_deadline_as_the_first_step_starts_the_run(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, define(program("def", [("sleep", "nap", 0)])))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert stream(store, run_id) == [
        (r.RUN_SCHEDULED, None), (r.RUN_STARTED, None), (r.STEP_COMPLETED, "nap"), (r.RUN_COMPLETED, None),
    ]
    consistent(store)


@pytest.mark.parametrize(
    ("op", "arg", "wake"),
    [
        ("sleep", timedelta(minutes=90), START + timedelta(minutes=90)),
        ("sleep", 5400, START + timedelta(minutes=90)),
        ("sleep", 0.5, START + timedelta(milliseconds=500)),
        ("sleep", "30s", START + timedelta(seconds=30)),
        ("sleep", "1h30m", START + timedelta(minutes=90)),
        ("sleep", "2d", START + timedelta(days=2)),
        ("sleep", "366d", START + timedelta(days=366)),  # the longest sleep allowed
        ("sleep_until", START + HOUR, START + HOUR),
        ("sleep_until", datetime(2026, 1, 1, 15, 0, tzinfo=timezone(timedelta(hours=2))), START + HOUR),
        ("sleep_until", "2026-01-01T13:00:00Z", START + HOUR),
        ("sleep_until", "2026-01-01T13:00:00.250+00:00", START + timedelta(hours=1, milliseconds=250)),
        ("sleep_until", " 2026-01-01T08:00:00-05:00 ", START + HOUR),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_each_form_of_a_duration_or_a_time_sets_the_deadline(
    store: EventStore, clock: ManualClock, kind: str, op: str, arg: Any, wake: datetime
) -> None:
    calls = Calls()
    ops: list[Op] = [(op, "nap", arg), ("run", "b", calls.body("b"))]
    engine = make_engine(store, clock, define(program(kind, ops)))
    run_id = start_one(engine)
    engine.run_until_idle()
    [sleeping] = sleeping_entries(store, run_id)
    assert sleeping["wake_at"] == format_time(wake)
    assert engine.next_timer() == wake
    engine.advance(wake - START - TICK)
    assert calls == {}
    engine.advance(TICK)
    assert calls == {"b": 1}
    assert queries.get_run(store, run_id)["status"] == "completed"
    consistent(store)


# -- misuse fails the run at once, naming the step --------------------------------------------------------

NAIVE = datetime(2026, 1, 2, 12, 0)


@pytest.mark.parametrize(
    ("op", "arg", "says"),
    [
        ("sleep", "soon", "cannot read 'soon'"),
        ("sleep", "", "cannot read"),
        ("sleep", "10 parsecs", "cannot read"),
        ("sleep", -5, "negative"),
        ("sleep", timedelta(seconds=-1), "negative"),
        ("sleep", True, "not a duration"),
        ("sleep", None, "not a duration"),
        ("sleep", float("nan"), "out of range"),
        ("sleep", "367d", "366 days"),
        ("sleep", timedelta(days=366, microseconds=1), "366 days"),
        ("sleep", "3000000d", "366 days"),  # past datetime.max: still a SleepError, not retried or caught
        ("sleep", timedelta.max, "366 days"),
        ("sleep_until", NAIVE, "no time zone"),
        ("sleep_until", "2026-01-02T12:00:00", "no time zone"),
        ("sleep_until", "2026-01-02", "no time zone"),
        ("sleep_until", "tomorrow", "not an ISO 8601 time"),
        ("sleep_until", "2026-01-02T12:00:00+25:00", "not an ISO 8601 time"),
        ("sleep_until", 1767355200000, "datetime or ISO 8601 text"),
        ("sleep_until", None, "datetime or ISO 8601 text"),
        ("sleep_until", START + timedelta(days=367), "366 days"),
        ("sleep_until", "2027-12-31T00:00:00Z", "366 days"),
    ],
    ids=lambda value: repr(value)[:30],
)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_sleep_fails_the_run_at_once_naming_the_step(
    run_store: EventStore, clock: ManualClock, kind: str, op: str, arg: Any, says: str
) -> None:
    calls = Calls()

    def body_then_catch_all(ctx: Context) -> Any:
        ctx.step.run("a", calls.body("a"))
        try:
            getattr(ctx.step, op)("nap", arg)
        except Exception as error:  # noqa: BLE001 - user code must not be able to swallow it
            return f"swallowed {error!r}"
        return "slept"

    async def async_body_then_catch_all(ctx: Context) -> Any:
        await ctx.step.run("a", calls.body("a"))
        try:
            await getattr(ctx.step, op)("nap", arg)
        except Exception as error:  # noqa: BLE001
            return f"swallowed {error!r}"
        return "slept"

    handler = body_then_catch_all if kind == "def" else async_body_then_catch_all
    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "SleepError"
    assert run["error"]["message"].startswith("step 'nap': ")
    assert says in run["error"]["message"]
    # not retried: no timer, nothing more ever runs
    assert run_store.query("timers") == []
    assert engine.next_timer() is None
    assert sleeping_entries(run_store, run_id) == []
    assert engine.advance(timedelta(days=400)) == 0
    assert calls == {"a": 1}
    consistent(run_store)


def test_a_bad_repeat_of_a_sleep_names_its_occurrence(store: EventStore, clock: ManualClock) -> None:
    def handler(ctx: Context) -> None:
        ctx.step.sleep("nap", 0)
        ctx.step.sleep("nap", "forever")

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    error = queries.get_run(store, run_id)["error"]
    assert error["name"] == "SleepError" and error["message"].startswith("step 'nap:1': ")
    consistent(store)


def test_a_bad_sleep_after_a_wake_fails_the_run_then(store: EventStore, clock: ManualClock) -> None:
    def handler(ctx: Context) -> None:
        ctx.step.sleep("first", "1h")
        ctx.step.sleep_until("second", "next tuesday")

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert queries.get_run(store, run_id)["status"] == "waiting"
    engine.advance(HOUR)
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed" and run["error"]["name"] == "SleepError"
    assert "'second'" in run["error"]["message"]
    assert engine.next_timer() is None
    consistent(store)


# -- the step limit counts sleeps -------------------------------------------------------------------------


@pytest.mark.parametrize("nap", [0, "1h"], ids=["past", "future"])
def test_the_step_limit_counts_sleeps(run_store: EventStore, clock: ManualClock, nap: Any) -> None:
    calls = Calls()
    engine = make_engine(run_store, clock, define(program("def", a_nap_b(calls, nap))), limits=Limits(steps_per_run=2))
    run_id = start_one(engine)
    engine.run_until_idle()
    engine.advance(HOUR)
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed" and run["error"]["name"] == "StepLimitError"
    assert "step limit of 2" in run["error"]["message"]
    assert calls == {"a": 1}  # a and nap made two steps; b was the third
    assert run["steps"] == 2
    consistent(run_store)


def test_a_sleep_over_the_step_limit_fails_before_it_begins(store: EventStore, clock: ManualClock) -> None:
    calls = Calls()
    engine = make_engine(store, clock, define(program("def", a_nap_b(calls))), limits=Limits(steps_per_run=1))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed" and run["error"]["name"] == "StepLimitError"
    assert sleeping_entries(store, run_id) == []
    assert engine.next_timer() is None
    consistent(store)


def test_a_run_exactly_at_the_step_limit_with_sleeps_completes(store: EventStore, clock: ManualClock) -> None:
    calls = Calls()
    engine = make_engine(store, clock, define(program("def", a_nap_b(calls))), limits=Limits(steps_per_run=3))
    run_id = start_one(engine)
    engine.run_until_idle()
    engine.advance(HOUR)
    run = queries.get_run(store, run_id)
    assert run["status"] == "completed" and run["steps"] == 3
    consistent(store)


# -- non-determinism: a step id that changes kind between a run's invocations -----------------------------


def nondeterministic(
    store: EventStore, clock: ManualClock, before: Callable[..., Any], after: Callable[..., Any]
) -> tuple[str, dict[str, Any]]:
    """Run ``before`` into a sleep, then wake it with ``after`` on a new engine over the same store."""
    first = make_engine(store, clock, define(before))
    run_id = start_one(first)
    first.run_until_idle()
    assert queries.get_run(store, run_id)["status"] == "waiting"
    second = make_engine(store, clock, define(after))
    second.start()
    second.advance(HOUR)
    return run_id, queries.get_run(store, run_id)


@pytest.mark.parametrize("kind", KINDS)
def test_a_recorded_run_step_that_comes_back_as_a_sleep_fails_the_run(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    before = program("def", [("run", "x", calls.body("x")), ("sleep", "hold", "1h")])
    after = program(kind, [("sleep", "x", 0), ("sleep", "hold", "1h"), ("run", "b", calls.body("b"))])
    _, run = nondeterministic(run_store, clock, before, after)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NondeterminismError"
    message = run["error"]["message"]
    assert "'x'" in message and "'run'" in message and "'sleep'" in message
    assert calls == {"x": 1}
    assert run_store.query("timers") == []
    consistent(run_store)


@pytest.mark.parametrize("kind", KINDS)
def test_a_completed_sleep_that_comes_back_as_a_run_step_fails_the_run(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    before = program("def", [("sleep", "x", 0), ("sleep", "hold", "1h")])
    after = program(kind, [("run", "x", calls.body("x")), ("sleep", "hold", "1h")])
    _, run = nondeterministic(run_store, clock, before, after)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NondeterminismError"
    assert "'x'" in run["error"]["message"] and "'sleep'" in run["error"]["message"]
    assert calls == {}
    consistent(run_store)


@pytest.mark.parametrize("kind", KINDS)
def test_a_begun_sleep_that_comes_back_as_a_run_step_fails_the_run(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    """The log records that step "x" began as a sleep (step.sleeping); code that now asks for a
    ``run`` step "x" no longer matches the run and must not run that body as if it were new."""
    calls = Calls()
    before = program("def", [("sleep", "x", "1h")])
    after = program(kind, [("run", "x", calls.body("x"))])
    _, run = nondeterministic(run_store, clock, before, after)
    assert calls == {}
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NondeterminismError"
    assert "'x'" in run["error"]["message"] and "'sleep'" in run["error"]["message"]
    consistent(run_store)


# -- restarts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_restart_while_sleeping_keeps_the_deadline_and_wakes_once(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    function = define(program(kind, a_nap_b(calls)))
    first = make_engine(run_store, clock, function)
    run_id = start_one(first)
    first.run_until_idle()
    clock.advance(timedelta(minutes=20))  # the first engine is gone; time passes

    second = make_engine(run_store, clock, function)
    second.start()
    assert second.next_timer() == START + HOUR  # the recorded deadline, not 20 minutes later
    assert second.run_until_idle() == 0
    assert second.advance(timedelta(minutes=40) - TICK) == 0
    assert calls == {"a": 1}
    assert second.advance(TICK) == 1
    assert calls == {"a": 1, "b": 1}
    assert second.advance(timedelta(days=1)) == 0
    assert queries.get_run(run_store, run_id)["output"] == ["a", "b"]
    consistent(run_store)


def test_a_restart_with_the_engine_down_past_the_deadline_fires_at_start(
    run_store: EventStore, clock: ManualClock
) -> None:
    calls = Calls()
    function = define(program("def", a_nap_b(calls)))
    first = make_engine(run_store, clock, function)
    run_id = start_one(first)
    first.run_until_idle()
    clock.advance(timedelta(hours=5))

    second = make_engine(run_store, clock, function)
    second.start()
    assert second.run_until_idle() == 1
    assert calls == {"a": 1, "b": 1}
    entries = run_store.read_stream(r.run_stream(run_id))
    [resumed] = [e for e in entries if e.type == r.RUN_RESUMED]
    assert resumed.data["at"] == format_time(START + timedelta(hours=5))
    [nap] = [e for e in entries if e.type == r.STEP_COMPLETED and e.data["step"] == "nap"]
    assert nap.data["started_at"] == format_time(START)
    assert nap.data["ended_at"] == format_time(START + timedelta(hours=5))
    assert queries.get_run(run_store, run_id)["status"] == "completed"
    consistent(run_store)


# -- an event's ts in the future delays the run's start ------------------------------------------------------


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.mark.parametrize("kind", KINDS)
def test_an_event_ts_in_the_future_delays_the_start(run_store: EventStore, clock: ManualClock, kind: str) -> None:
    calls = Calls()
    starts = Counter[str]()

    def sync_handler(ctx: Context) -> Any:
        starts["handler"] += 1
        return ctx.step.run("a", calls.body("a"))

    async def async_handler(ctx: Context) -> Any:
        starts["handler"] += 1
        return await ctx.step.run("a", calls.body("a"))

    engine = make_engine(run_store, clock, define(sync_handler if kind == "def" else async_handler))
    ts = START + timedelta(seconds=90, milliseconds=250)
    run_id = start_one(engine, ts=millis(ts))
    engine.run_until_idle()

    assert starts == {} and calls == {}
    assert stream(run_store, run_id) == [(r.RUN_SCHEDULED, None)]
    assert queries.get_run(run_store, run_id)["status"] == "queued"
    assert run_store.query("queue")[0]["ready_at"] == format_time(ts)
    assert engine.next_timer() == ts
    assert engine.advance(ts - START - timedelta(milliseconds=1)) == 0
    assert starts == {}
    consistent(run_store)

    assert engine.advance(timedelta(milliseconds=1)) == 1
    assert starts == {"handler": 1} and calls == {"a": 1}
    started = [e for e in run_store.read_stream(r.run_stream(run_id)) if e.type == r.RUN_STARTED]
    assert [e.data["at"] for e in started] == [format_time(ts)]
    assert queries.get_run(run_store, run_id)["status"] == "completed"
    assert run_store.query("queue") == []
    consistent(run_store)


def test_an_event_ts_in_the_past_or_now_starts_at_once(store: EventStore, clock: ManualClock) -> None:
    calls = Calls()
    engine = make_engine(store, clock, define(program("def", [("run", "a", calls.body("a"))])))
    past = start_one(engine, ts=millis(START - timedelta(days=1)))
    now = start_one(engine, ts=millis(START))
    assert engine.run_until_idle() == 2
    assert calls == {"a": 2}
    assert queries.get_run(store, past)["status"] == queries.get_run(store, now)["status"] == "completed"
    consistent(store)


def test_a_delayed_start_survives_a_restart(run_store: EventStore, clock: ManualClock) -> None:
    calls = Calls()
    function = define(program("def", a_nap_b(calls, "1m")))
    ts = START + timedelta(minutes=10)
    first = make_engine(run_store, clock, function)
    [run] = first.accept({"name": "app/go", "ts": millis(ts)}).runs  # recorded; the process dies
    clock.advance(timedelta(minutes=3))

    second = make_engine(run_store, clock, function)
    second.start()
    assert second.run_until_idle() == 1  # looked at, not started
    assert calls == {}
    assert second.next_timer() == ts
    assert second.advance(timedelta(minutes=7) - TICK) == 0
    assert calls == {}
    assert second.advance(TICK) == 1
    assert calls == {"a": 1}  # started at ts, then went to sleep for a minute from ts
    assert second.next_timer() == ts + timedelta(minutes=1)
    second.advance(timedelta(minutes=1))
    assert calls == {"a": 1, "b": 1}
    assert queries.get_run(run_store, run.run_id)["status"] == "completed"
    consistent(run_store)


# -- what the history shows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_run_history_shows_a_begun_sleep_and_then_the_completed_one(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Calls()
    engine = make_engine(run_store, clock, define(program(kind, a_nap_b(calls))))
    run_id = start_one(engine)
    engine.run_until_idle()

    history = queries.run_history(run_store, run_id)
    assert history.run["status"] == "waiting"
    assert [(s.step, s.kind, s.status) for s in history.steps] == [
        ("a", "run", "completed"), ("nap", "sleep", "sleeping"),
    ]
    nap = history.steps[1]
    assert nap.wake_at == format_time(START + HOUR)
    assert nap.started_at == format_time(START)
    assert nap.ended_at is None

    engine.advance(HOUR)
    history = queries.run_history(run_store, run_id)
    assert [(s.step, s.kind, s.status) for s in history.steps] == [
        ("a", "run", "completed"), ("nap", "sleep", "sleeping"),
        ("nap", "sleep", "completed"), ("b", "run", "completed"),
    ]
    done = history.steps[2]
    assert (done.started_at, done.ended_at) == (format_time(START), format_time(START + HOUR))
    assert done.output is None and done.wake_at is None and done.attempt == 0
    assert history.to_dict()["steps"][1]["wake_at"] == format_time(START + HOUR)
    consistent(run_store)


def test_many_sleeping_runs_wake_each_at_its_own_time(store: EventStore, clock: ManualClock) -> None:
    woke: list[int] = []

    def handler(ctx: Context) -> int:
        minutes = ctx.event.data["minutes"]
        ctx.step.sleep("nap", timedelta(minutes=minutes))
        return ctx.step.run("woke", lambda: woke.append(minutes) or minutes)

    engine = make_engine(store, clock, define(handler))
    for minutes in (30, 10, 20):
        start_one(engine, data={"minutes": minutes})
    assert engine.run_until_idle() == 3
    assert len(store.query("timers")) == 3
    assert {row["status"] for row in queries.list_runs(store)} == {"waiting"}
    for expected in ([10], [10, 20], [10, 20, 30]):
        assert engine.advance(timedelta(minutes=10)) == 1
        assert woke == expected
    assert store.query("timers") == []
    consistent(store)
