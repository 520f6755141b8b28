"""Cancellation, timeouts and on_failure on the synchronous engine.

Cancel rules (``match`` or ``if_exp``) cancel only the runs they match, for as long as they listen;
``Engine.cancel`` stops a sleeping, waiting or queued run before its next step, never inside a step
body, and answers False for a run that ended; ``timeouts.start`` and ``timeouts.finish`` cancel with
their reason, exactly at their bounds; ``on_failure`` runs once after a final failure and never
after a cancellation; the engine's end events have Inngest's shape.

Every scenario ends with the projections matching the log (``rebuild_projections(apply=False)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import (
    Cancel,
    Context,
    DefinitionError,
    Engine,
    FunctionDef,
    FunctionRegistry,
    ManualClock,
    RunNotFoundError,
    RunProjector,
    Timeouts,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.system_events import CANCELLED, FAILED, FINISHED
from steplog.eventstore import EventStore, MemoryEventStore, SqliteEventStore, format_time

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
ORDER = "app/order"
CANCEL = "app/order.cancelled"


def order(calls: Counter[str], fn_id: str = "order", nap: str = "1h", **options: Any) -> FunctionDef:
    """Runs "a", sleeps ``nap``, runs "b", returns "done"; ``calls`` counts the step bodies."""

    def body(name: str) -> Callable[[], str]:
        def run() -> str:
            calls[name] += 1
            return name

        return run

    def handler(ctx: Context) -> str:
        ctx.step.run("a", body("a"))
        ctx.step.sleep("nap", nap)
        ctx.step.run("b", body("b"))
        return "done"

    return define_function(handler, fn_id=fn_id, trigger=TriggerEvent(event=ORDER), **options)


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock)


def start(engine: Engine, **data: Any) -> str:
    """Send one ``app/order`` that starts exactly one run (queued, not yet run); return its id."""
    [run] = engine.accept({"name": ORDER, "data": data}).runs
    engine._ready.append(run.run_id)
    return run.run_id


def run_row(store: EventStore, run_id: str) -> dict[str, Any]:
    return queries.get_run(store, run_id)


def types(store: EventStore, run_id: str) -> list[str]:
    return [e.type for e in store.read_stream(r.run_stream(run_id))]


def cancelled_entry(store: EventStore, run_id: str) -> dict[str, Any]:
    [data] = [e.data for e in store.read_stream(r.run_stream(run_id)) if e.type == r.RUN_CANCELLED]
    return data


def listener(seen: list[dict[str, Any]], *names: str, watched: str = "order") -> FunctionDef:
    """A function that records the engine's end events about ``watched``."""
    condition = f"event.data.function_id == '{watched}'"
    return define_function(
        lambda ctx: seen.append(ctx.event.to_dict()), fn_id="listener",
        trigger=[TriggerEvent(event=name, expression=condition) for name in names],
    )


def no_leftovers(store: EventStore) -> None:
    assert store.query("waits") == []
    assert store.query("timers") == []
    assert store.query("queue") == []
    assert store.rebuild_projections(apply=False) == []


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- cancel rules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        Cancel(event=CANCEL, match="data.order_id"),
        Cancel(event=CANCEL, if_exp="event.data.order_id == async.data.order_id && async.data.really"),
    ],
    ids=["match", "if_exp"],
)
def test_a_cancel_event_cancels_only_the_runs_it_matches(run_store: EventStore, clock: ManualClock, rule: Cancel) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls, cancel=[rule]))
    doomed, spared = start(engine, order_id=1), start(engine, order_id=2)
    engine.run_until_idle()
    assert len(run_store.query("waits")) == 2  # each run's cancel listener

    engine.send({"name": CANCEL, "data": {"order_id": 3, "really": True}})
    engine.send({"name": CANCEL, "data": {"order_id": 1, "really": False}} if rule.if_exp else {"name": "app/x"})
    assert engine.run_until_idle() == 0
    [event_id] = engine.send({"name": CANCEL, "data": {"order_id": 1, "really": True}})
    assert engine.run_until_idle() == 1

    run = run_row(run_store, doomed)
    assert run["status"] == "cancelled" and run["steps"] == 1
    assert run["error"] == {
        "name": "RunCancelled", "message": f"run cancelled: cancelled by event {CANCEL!r} ({event_id})", "stack": None,
    }
    entry = cancelled_entry(run_store, doomed)
    assert entry["reason"] == f"cancelled by event {CANCEL!r} ({event_id})" and entry["release"] == ["cancel:0"]
    assert [e.type for e in run_store.read_stream(r.signal_stream(doomed))] == [r.CANCEL_REQUESTED]
    assert run_row(run_store, spared)["status"] == "waiting"
    assert [row["run_id"] for row in run_store.query("waits")] == [spared]

    engine.advance(HOUR)
    assert run_row(run_store, spared)["output"] == "done"
    assert calls == {"a": 2, "b": 1}
    no_leftovers(run_store)


def test_a_cancel_event_sent_before_the_run_was_scheduled_does_not_cancel_it(
    store: EventStore, clock: ManualClock
) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls, cancel=[Cancel(event=CANCEL, match="data.order_id")]))
    engine.send({"name": CANCEL, "data": {"order_id": 1}})
    run_id = start(engine, order_id=1)
    engine.run_until_idle()
    engine.advance(HOUR)
    assert run_row(store, run_id)["output"] == "done"
    no_leftovers(store)


@pytest.mark.parametrize(("after", "cancelled"), [(timedelta(minutes=30) - TICK, True), (timedelta(minutes=30), False)])
def test_a_cancel_rule_listens_until_its_timeout(
    run_store: EventStore, clock: ManualClock, after: timedelta, cancelled: bool
) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls, cancel=[Cancel(event=CANCEL, timeout="30m")]))
    run_id = start(engine)
    engine.run_until_idle()
    clock.advance(after)
    engine.send({"name": CANCEL})
    engine.advance(HOUR)
    assert run_row(run_store, run_id)["status"] == ("cancelled" if cancelled else "completed")
    assert calls == ({"a": 1} if cancelled else {"a": 1, "b": 1})
    no_leftovers(run_store)


def test_several_cancel_rules_cancel_once(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    rules = [Cancel(event=CANCEL, match="data.order_id"), Cancel(event=CANCEL, if_exp="async.data.all == true")]
    engine = make_engine(store, clock, order(calls, cancel=rules))
    run_id = start(engine, order_id=1)
    engine.run_until_idle()
    engine.send({"name": CANCEL, "data": {"order_id": 1, "all": True}})  # both rules match
    engine.send({"name": CANCEL, "data": {"order_id": 1}})  # the listeners are gone
    engine.run_until_idle()
    assert run_row(store, run_id)["status"] == "cancelled"
    assert types(store, run_id).count(r.RUN_CANCELLED) == 1
    assert cancelled_entry(store, run_id)["release"] == ["cancel:0", "cancel:1"]
    assert len(engine.coordinator.pauses) == 0
    no_leftovers(store)


def test_an_event_matching_several_cancel_rules_writes_one_cancel_request(store: EventStore, clock: ManualClock) -> None:
    rules = [Cancel(event=CANCEL, match="data.order_id"), Cancel(event=CANCEL, if_exp="async.data.all == true")]
    engine = make_engine(store, clock, order(Counter(), cancel=rules))
    run_id = start(engine, order_id=1)
    engine.run_until_idle()
    accepted = engine.accept({"name": CANCEL, "data": {"order_id": 1, "all": True}})
    assert accepted.wakes == [(run_id, "order")]
    assert [e.type for e in store.read_stream(r.signal_stream(run_id))] == [r.CANCEL_REQUESTED]


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        pytest.param([Cancel(event="app/*")], "exact event name", id="wildcard"),
        pytest.param([Cancel(event=CANCEL, match="data.id", if_exp="true")], "not both", id="both"),
        pytest.param([Cancel(event=CANCEL, if_exp="async.data.(")], "cancel rule 0", id="bad-cel"),
        pytest.param([Cancel(event=CANCEL, timeout="367d")], "366 days", id="too-long"),
        pytest.param([Cancel(event=CANCEL)] * 6, "the limit is 5", id="too-many"),
        pytest.param(["app/x"], "not a steplog.Cancel", id="not-a-cancel"),
        pytest.param(
            [Cancel(event=CANCEL, match="data.id == 1")], "cancel rule 0", id="bad-match"
        ),
    ],
)
def test_bad_cancel_rules_are_refused_at_definition_naming_the_function(rules: list[Any], words: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        define_function(lambda ctx: None, fn_id="shop", trigger=TriggerEvent(event=ORDER), cancel=rules)
    assert "function 'shop'" in str(raised.value)
    assert words in str(raised.value)


@pytest.mark.parametrize("how", ["event", "api"])
def test_a_cancel_survives_a_restart(tmp_path: Path, clock: ManualClock, how: str) -> None:
    """A cancel rule listens again after a restart; a cancel requested before it is carried out."""
    calls = Counter[str]()
    path = tmp_path / "runs.db"
    rules = [Cancel(event=CANCEL, match="data.order_id")]
    store = SqliteEventStore(path, RunProjector())
    engine = make_engine(store, clock, order(calls, cancel=rules))
    run_id = start(engine, order_id=1)
    engine.run_until_idle()
    if how == "api":
        assert engine.cancel(run_id)  # the run would be cancelled next, but this engine "dies"
    store.close()

    store = SqliteEventStore(path, RunProjector())
    restarted = make_engine(store, clock, order(calls, cancel=rules))
    restarted.start()
    if how == "event":
        assert [p.step for p in restarted.coordinator.pauses] == ["cancel:0"]
        restarted.send({"name": CANCEL, "data": {"order_id": 1}})
    restarted.run_until_idle()
    assert run_row(store, run_id)["status"] == "cancelled"
    restarted.advance(timedelta(days=2))
    assert calls == {"a": 1}
    no_leftovers(store)
    store.close()


def test_a_duplicate_cancel_event_cancels_nothing(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls, cancel=[Cancel(event=CANCEL)]))
    engine.send({"name": CANCEL, "id": "c-1"})
    run_id = start(engine)
    engine.run_until_idle()
    engine.send({"name": CANCEL, "id": "c-1"})  # a duplicate of an event from before the run
    engine.advance(HOUR)
    assert run_row(store, run_id)["status"] == "completed"
    no_leftovers(store)


# -- cancelling through the engine ----------------------------------------------------------------------------------


def test_cancelling_a_sleeping_run_stops_it_before_its_next_step(run_store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls))
    run_id = start(engine)
    engine.run_until_idle()

    assert engine.cancel(run_id, reason="customer asked") is True
    assert engine.run_until_idle() == 1
    run = run_row(run_store, run_id)
    assert run["status"] == "cancelled" and run["ended_at"] == format_time(START)
    assert run["error"]["message"] == "run cancelled: customer asked"
    assert types(run_store, run_id)[-1] == r.RUN_CANCELLED
    assert cancelled_entry(run_store, run_id)["steps"] == 1
    assert [(e.type, e.data) for e in run_store.read_stream(r.signal_stream(run_id))] == [
        (r.CANCEL_REQUESTED, {"reason": "customer asked"})
    ]

    engine.advance(2 * HOUR)  # the sleep's timer finds the run ended
    assert calls == {"a": 1}
    assert types(run_store, run_id)[-1] == r.RUN_CANCELLED
    no_leftovers(run_store)


def test_cancelling_a_queued_run_never_starts_it(run_store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls))
    run_id = start(engine)
    assert engine.cancel(run_id) is True
    engine.run_until_idle()
    assert calls == {}
    assert types(run_store, run_id) == [r.RUN_SCHEDULED, r.RUN_CANCELLED]
    run = run_row(run_store, run_id)
    assert run["status"] == "cancelled" and run["started_at"] is None and run["steps"] == 0
    assert run["error"]["message"] == "run cancelled: cancelled by request"
    no_leftovers(run_store)


def test_cancelling_a_run_delayed_by_a_future_ts_ends_it_at_once(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls))
    later = int((START + HOUR).timestamp() * 1000)
    [run] = engine.accept({"name": ORDER, "ts": later}).runs
    engine._ready.append(run.run_id)
    engine.run_until_idle()
    assert run_row(store, run.run_id)["status"] == "queued"
    assert engine.cancel(run.run_id) is True
    engine.run_until_idle()
    assert run_row(store, run.run_id)["status"] == "cancelled"


def test_cancelling_a_run_waiting_for_an_event_releases_its_wait(store: EventStore, clock: ManualClock) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="app/paid", timeout="1h")

    engine = make_engine(store, clock, define_function(handler, fn_id="waiter", trigger=TriggerEvent(event=ORDER)))
    run_id = start(engine)
    engine.run_until_idle()
    assert len(store.query("waits")) == 1
    assert engine.cancel(run_id)
    engine.run_until_idle()
    assert run_row(store, run_id)["status"] == "cancelled"
    assert cancelled_entry(store, run_id)["release"] == ["w"]
    assert len(engine.coordinator.pauses) == 0
    engine.send({"name": "app/paid"})
    assert engine.run_until_idle() == 0
    assert [e.type for e in store.read_stream(r.signal_stream(run_id))] == [r.CANCEL_REQUESTED]
    no_leftovers(store)


def test_an_event_that_both_resolves_a_wait_and_cancels_the_run_cancels_it(
    run_store: EventStore, clock: ManualClock
) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> Any:
        ctx.step.wait_for_event("w", event=CANCEL, timeout="1h")
        ctx.step.run("after", lambda: calls.update(["after"]))

    engine = make_engine(run_store, clock, define_function(
        handler, fn_id="waiter", trigger=TriggerEvent(event=ORDER), cancel=[Cancel(event=CANCEL)]
    ))
    run_id = start(engine)
    engine.run_until_idle()
    engine.send({"name": CANCEL})
    engine.run_until_idle()
    assert run_row(run_store, run_id)["status"] == "cancelled"
    assert sorted(e.type for e in run_store.read_stream(r.signal_stream(run_id))) == [
        r.CANCEL_REQUESTED, r.WAIT_RESOLVED
    ]
    assert calls == {}
    no_leftovers(run_store)


def test_cancelling_an_ended_run_answers_false_and_writes_nothing(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls, nap="0s"))
    run_id = start(engine)
    engine.run_until_idle()
    assert run_row(store, run_id)["status"] == "completed"
    assert engine.cancel(run_id) is False
    assert store.read_stream(r.signal_stream(run_id)) == []

    other = start(engine)
    assert engine.cancel(other) is True
    engine.run_until_idle()
    assert engine.cancel(other) is False  # cancelled already
    assert len(store.read_stream(r.signal_stream(other))) == 1
    no_leftovers(store)


def test_cancelling_an_unknown_run_raises_run_not_found(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, order(Counter()))
    with pytest.raises(RunNotFoundError):
        engine.cancel("01NOSUCHRUN0000000000000000")


def test_a_cancel_during_a_step_lets_the_step_commit_then_no_step_runs(
    run_store: EventStore, clock: ManualClock
) -> None:
    answers: list[bool] = []
    calls = Counter[str]()

    def handler(ctx: Context) -> str:
        def a() -> str:
            calls["a"] += 1
            answers.append(engine.cancel(ctx.run_id, reason="from inside"))
            return "a finished"

        ctx.step.run("a", a)
        ctx.step.run("b", lambda: calls.update(["b"]))
        return "done"

    engine = make_engine(run_store, clock, define_function(handler, fn_id="self", trigger=TriggerEvent(event=ORDER)))
    run_id = start(engine)
    engine.run_until_idle()

    assert answers == [True]
    assert calls == {"a": 1}
    history = queries.run_history(run_store, run_id)
    assert [(s.step, s.status, s.output) for s in history.steps] == [("a", "completed", "a finished")]
    assert types(run_store, run_id) == [r.RUN_SCHEDULED, r.RUN_STARTED, r.STEP_COMPLETED, r.RUN_CANCELLED]
    assert history.run["status"] == "cancelled" and history.run["steps"] == 1
    assert history.run["error"]["message"] == "run cancelled: from inside"
    no_leftovers(run_store)


# -- timeouts --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "cancelled"), [(timedelta(minutes=10), False), (timedelta(minutes=10) + TICK, True)])
def test_timeouts_start_cancels_a_run_that_did_not_start_in_time(
    run_store: EventStore, clock: ManualClock, delay: timedelta, cancelled: bool
) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls, nap="0s", timeouts=Timeouts(start="10m")))
    run_id = start(engine)
    clock.advance(delay)  # the run waited in the queue this long
    engine.run_until_idle()
    run = run_row(run_store, run_id)
    if cancelled:
        assert run["status"] == "cancelled" and calls == {}
        assert "timeouts.start" in run["error"]["message"]
        assert types(run_store, run_id) == [r.RUN_SCHEDULED, r.RUN_CANCELLED]
    else:
        assert run["status"] == "completed" and calls == {"a": 1, "b": 1}
    no_leftovers(run_store)


def test_timeouts_finish_wakes_a_sleeping_run_at_the_deadline_and_cancels_it(
    run_store: EventStore, clock: ManualClock
) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls, nap="2h", timeouts=Timeouts(finish="1h")))
    run_id = start(engine)
    engine.run_until_idle()
    [sleeping] = [e.data for e in run_store.read_stream(r.run_stream(run_id)) if e.type == r.STEP_SLEEPING]
    assert sleeping["wake_at"] == format_time(START + 2 * HOUR)
    assert sleeping["due_at"] == format_time(START + HOUR)
    assert run_store.query("timers")[0]["due_at"] == format_time(START + HOUR)

    assert engine.advance(HOUR - TICK) == 0
    assert run_row(run_store, run_id)["status"] == "waiting"
    assert engine.advance(TICK) == 1
    run = run_row(run_store, run_id)
    assert run["status"] == "cancelled" and run["ended_at"] == format_time(START + HOUR)
    assert "timeouts.finish" in cancelled_entry(run_store, run_id)["reason"]
    assert calls == {"a": 1}
    engine.advance(2 * HOUR)
    assert calls == {"a": 1}
    no_leftovers(run_store)


def test_timeouts_finish_cancels_a_run_waiting_for_an_event_and_releases_the_wait(
    store: EventStore, clock: ManualClock
) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="app/paid", timeout="2h")

    engine = make_engine(store, clock, define_function(
        handler, fn_id="waiter", trigger=TriggerEvent(event=ORDER), timeouts=Timeouts(finish="1h")
    ))
    run_id = start(engine)
    engine.run_until_idle()
    assert store.query("timers")[0]["due_at"] == format_time(START + HOUR)
    assert store.query("waits")[0]["expires_at"] == format_time(START + 2 * HOUR)
    engine.advance(HOUR)
    assert run_row(store, run_id)["status"] == "cancelled"
    assert cancelled_entry(store, run_id)["release"] == ["w"]
    engine.send({"name": "app/paid"})
    assert engine.run_until_idle() == 0
    assert store.read_stream(r.signal_stream(run_id)) == []
    no_leftovers(store)


def test_timeouts_finish_lets_a_run_that_ends_in_time_complete(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls, nap="59m", timeouts=Timeouts(start="1s", finish="1h")))
    run_id = start(engine)
    engine.run_until_idle()
    engine.advance(timedelta(minutes=59))
    assert run_row(store, run_id)["output"] == "done"
    no_leftovers(store)


def test_timeouts_finish_stops_a_run_between_steps_not_inside_one(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> str:
        for name in ("a", "b", "c"):
            def body(name: str = name) -> str:
                calls[name] += 1
                if name == "b":
                    clock.advance(2 * HOUR)  # a step body that outlasts the run's finish timeout
                return name

            ctx.step.run(name, body)
        return "done"

    engine = make_engine(store, clock, define_function(
        handler, fn_id="slow", trigger=TriggerEvent(event=ORDER), timeouts=Timeouts(finish="1h")
    ))
    run_id = start(engine)
    engine.run_until_idle()
    assert calls == {"a": 1, "b": 1}
    assert [s.step for s in queries.run_history(store, run_id).steps] == ["a", "b"]
    assert "timeouts.finish" in run_row(store, run_id)["error"]["message"]
    no_leftovers(store)


def test_timeouts_finish_counts_the_first_step(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> str:
        def slow() -> str:
            calls["a"] += 1
            clock.advance(2 * HOUR)
            return "a"

        ctx.step.run("a", slow)
        ctx.step.run("b", lambda: calls.update(["b"]))
        return "done"

    engine = make_engine(store, clock, define_function(
        handler, fn_id="slow", trigger=TriggerEvent(event=ORDER), timeouts=Timeouts(finish="1h")
    ))
    run_id = start(engine)
    engine.run_until_idle()
    assert run_row(store, run_id)["started_at"] == format_time(START)
    assert calls == {"a": 1}
    assert run_row(store, run_id)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("timeouts", "words"),
    [(Timeouts(start="0.5s"), "at least 1 second"), (Timeouts(finish="soon"), "timeouts.finish"), ("1h", "Timeouts")],
)
def test_bad_timeouts_are_refused_at_definition(timeouts: Any, words: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        define_function(lambda ctx: None, fn_id="shop", trigger=TriggerEvent(event=ORDER), timeouts=timeouts)
    assert "function 'shop'" in str(raised.value) and words in str(raised.value)


# -- on_failure ------------------------------------------------------------------------------------------------------


def failing(seen: list[dict[str, Any]], handler_error: Exception | None = None) -> FunctionDef:
    def boom(ctx: Context) -> None:
        ctx.step.run("a", lambda: "a")
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    def on_failure(ctx: Context) -> None:
        seen.append(ctx.event.to_dict())
        if handler_error is not None:
            raise handler_error

    return define_function(boom, fn_id="order", trigger=TriggerEvent(event=ORDER), retries=1, on_failure=on_failure)


def test_on_failure_runs_once_with_the_failed_run_error_and_trigger(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    engine = make_engine(run_store, clock, failing(seen))
    assert engine.registry.get("order-failure") is not None
    [trigger] = engine.accept({"name": ORDER, "data": {"order_id": 9}}).runs
    engine._ready.append(trigger.run_id)
    engine.run_until_idle()
    assert seen == []  # the first failure is retried
    due = engine.next_timer()
    assert due is not None
    clock.set(due)
    engine.run_until_idle()

    failed = run_row(run_store, trigger.run_id)
    assert failed["status"] == "failed"
    [event] = seen
    assert event["name"] == FAILED and event["id"] == trigger.run_id
    data = event["data"]
    assert data["function_id"] == "order" and data["run_id"] == trigger.run_id
    assert data["error"]["name"] == "RuntimeError" and data["error"]["message"] == "boom on attempt 1"
    assert data["error"] == failed["error"]
    assert data["event"]["name"] == ORDER and data["event"]["data"] == {"order_id": 9}
    assert data["_inngest"] == {"status": "failed"}
    [handler_run] = queries.list_runs(run_store, function_id="order-failure")
    assert handler_run["status"] == "completed"

    engine.advance(timedelta(days=1))
    assert len(seen) == 1
    no_leftovers(run_store)


def test_a_failing_on_failure_handler_does_not_trigger_itself(store: EventStore, clock: ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    engine = make_engine(store, clock, failing(seen, handler_error=RuntimeError("handler broke")))
    [run] = engine.accept({"name": ORDER}).runs
    engine._ready.append(run.run_id)
    engine.run_until_idle()
    while (due := engine.next_timer()) is not None and due <= START + timedelta(days=1):
        clock.set(due)
        engine.run_until_idle()
    assert len(seen) == 1
    [handler_run] = queries.list_runs(store, function_id="order-failure")
    assert handler_run["status"] == "failed"  # retries=0: one attempt
    no_leftovers(store)


def test_on_failure_does_not_run_for_a_cancelled_or_completed_run(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    calls = Counter[str]()
    engine = make_engine(run_store, clock, order(calls, on_failure=lambda ctx: seen.append(ctx.event.to_dict())))
    cancelled, completed = start(engine), start(engine)
    engine.run_until_idle()
    engine.cancel(cancelled)
    engine.advance(HOUR)
    assert run_row(run_store, cancelled)["status"] == "cancelled"
    assert run_row(run_store, completed)["status"] == "completed"
    assert seen == []
    assert queries.list_runs(run_store, function_id="order-failure") == []
    assert queries.list_events(run_store, name=FAILED) == []
    no_leftovers(run_store)


# -- the end events ---------------------------------------------------------------------------------------------------


def test_end_events_have_inngest_shape(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    calls = Counter[str]()

    def handler(ctx: Context) -> str:
        ctx.step.sleep("nap", "1h")
        if ctx.event.data["end"] == "fail":
            raise ValueError("failed on purpose")
        return "ok"

    function = define_function(handler, fn_id="order", trigger=TriggerEvent(event=ORDER), retries=0)
    engine = make_engine(run_store, clock, function, listener(seen, FINISHED, FAILED, CANCELLED))
    runs = {end: start(engine, end=end) for end in ("complete", "fail", "cancel")}
    engine.run_until_idle()
    engine.cancel(runs["cancel"], reason="stop")
    engine.advance(HOUR)
    assert calls == {}

    def of(name: str, end: str) -> dict[str, Any]:
        [event] = [e for e in seen if e["name"] == name and e["data"]["run_id"] == runs[end]]
        return event

    for end, status, extra in (("complete", "completed", "result"), ("fail", "failed", "error"),
                               ("cancel", "cancelled", "error")):
        finished = of(FINISHED, end)
        data = finished["data"]
        assert set(data) == {"function_id", "run_id", "event", "events", extra, "_inngest"}
        assert data["function_id"] == "order" and data["_inngest"] == {"status": status}
        assert data["event"]["name"] == ORDER and data["event"]["data"] == {"end": end}
        assert data["events"] == [data["event"]]
        assert finished["id"] not in runs.values()  # a generated id
    assert of(FINISHED, "complete")["data"]["result"] == "ok"
    assert of(FINISHED, "fail")["data"]["error"]["message"] == "failed on purpose"
    assert of(FINISHED, "cancel")["data"]["error"]["name"] == "RunCancelled"

    failed, cancelled = of(FAILED, "fail"), of(CANCELLED, "cancel")
    assert failed["id"] == runs["fail"] and cancelled["id"] == runs["cancel"]
    assert failed["data"] == of(FINISHED, "fail")["data"]
    assert cancelled["data"] == of(FINISHED, "cancel")["data"]
    assert cancelled["data"]["error"]["message"] == "run cancelled: stop"
    assert [e["name"] for e in seen].count(FAILED) == 1 and [e["name"] for e in seen].count(CANCELLED) == 1
    assert len(seen) == 5
    no_leftovers(run_store)


def test_end_events_are_recorded_only_when_something_listens(store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()
    engine = make_engine(store, clock, order(calls, nap="0s"))
    done, cancelled = start(engine), start(engine)
    engine.cancel(cancelled)
    engine.run_until_idle()
    assert run_row(store, done)["status"] == "completed"
    assert run_row(store, cancelled)["status"] == "cancelled"
    assert [e["name"] for e in queries.list_events(store)] == [ORDER, ORDER]
    assert "release" not in [e.data for e in store.read_stream(r.run_stream(done))][-1]
    no_leftovers(store)
