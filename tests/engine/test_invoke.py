"""ctx.step.invoke on the synchronous engine: the child's output comes back as the step's result;
its failure, a timeout, an unknown function, bad data raise StepError in the parent without
retries; a child that sleeps or retries keeps the parent waiting; the replay invokes nothing
again; the child's ``inngest/function.finished`` event carries the correlation.

Every scenario ends with the projections matching the log (``rebuild_projections(apply=False)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from steplog.engine import (
    Context,
    Engine,
    FunctionDef,
    FunctionRegistry,
    ManualClock,
    NonRetriableError,
    RunProjector,
    StepError,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.pauses import INVOKE_KIND
from steplog.engine.system_events import FINISHED, INVOKED
from steplog.eventstore import EventStore, MemoryEventStore, format_time

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
KINDS = ["def", "async def"]


def parent_of(
    target: Any, *, kind: str = "def", data: dict[str, Any] | None = None, timeout: Any = None,
    calls: Counter[str] | None = None, **options: Any,
) -> FunctionDef:
    """A function that runs "before", invokes ``target`` with ``data`` and returns
    ``{"result": ...}``, or ``{"error": [name, message, step]}`` if the invoke raised StepError."""
    counted = calls if calls is not None else Counter[str]()

    def before() -> None:
        counted["before"] += 1

    if kind == "def":
        def handler(ctx: Context) -> dict[str, Any]:
            ctx.step.run("before", before)
            try:
                return {"result": ctx.step.invoke("call", function=target, data=data, timeout=timeout)}
            except StepError as error:
                return {"error": [error.name, error.message, error.step_id]}

        return define_function(handler, fn_id="parent", trigger=TriggerEvent(event="app/parent"), **options)

    async def async_handler(ctx: Context) -> dict[str, Any]:
        await ctx.step.run("before", before)
        try:
            return {"result": await ctx.step.invoke("call", function=target, data=data, timeout=timeout)}
        except StepError as error:
            return {"error": [error.name, error.message, error.step_id]}

    return define_function(async_handler, fn_id="parent", trigger=TriggerEvent(event="app/parent"), **options)


def child(handler: Callable[[Context], Any], fn_id: str = "child", **options: Any) -> FunctionDef:
    return define_function(handler, fn_id=fn_id, trigger=TriggerEvent(event="app/never-sent"), **options)


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock)


def start_parent(engine: Engine) -> str:
    [run] = engine.accept({"name": "app/parent"}).runs
    engine._ready.append(run.run_id)
    return run.run_id


def only_run(store: EventStore, function_id: str) -> dict[str, Any]:
    [run] = queries.list_runs(store, function_id=function_id)
    return run


def entries(store: EventStore, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in store.read_stream(r.run_stream(run_id))]


def consistent(store: EventStore) -> None:
    assert store.rebuild_projections(apply=False) == []


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- the result -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["definition", "id"])
@pytest.mark.parametrize("kind", KINDS)
def test_invoke_returns_the_output_of_the_invoked_run(
    run_store: EventStore, clock: ManualClock, kind: str, by: str
) -> None:
    seen: list[dict[str, Any]] = []

    def double(ctx: Context) -> dict[str, Any]:
        seen.append(ctx.event.to_dict())
        return {"doubled": ctx.event.data["n"] * 2}

    doubler = child(double)
    engine = make_engine(run_store, clock, doubler, parent_of(doubler if by == "definition" else "child", kind=kind,
                                                             data={"n": 21}))
    parent_id = start_parent(engine)
    engine.run_until_idle()

    assert queries.get_run(run_store, parent_id)["output"] == {"result": {"doubled": 42}}
    kid = only_run(run_store, "child")
    assert kid["status"] == "completed" and kid["output"] == {"doubled": 42}
    [trigger] = seen
    assert trigger["name"] == INVOKED
    assert trigger["data"] == {"n": 21, "_inngest": {"fn_id": "child", "correlation_id": f"{parent_id}.call"}}
    [waiting] = [d for t, d in entries(run_store, parent_id) if t == r.STEP_WAITING]
    assert waiting["kind"] == INVOKE_KIND and waiting["pause"]["event"] == FINISHED
    [done] = [d for t, d in entries(run_store, parent_id) if t == r.STEP_COMPLETED and d["step"] == "call"]
    assert done["kind"] == INVOKE_KIND and done["output"] == {"doubled": 42}
    assert run_store.query("waits") == [] and run_store.query("timers") == []
    consistent(run_store)


def test_the_child_finished_event_carries_the_correlation_and_the_result(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, child(lambda ctx: "ok"), parent_of("child", data={"x": 1}))
    parent_id = start_parent(engine)
    engine.run_until_idle()

    kid = only_run(store, "child")
    [invoked] = queries.list_events(store, name=INVOKED)
    [finished] = queries.list_events(store, name=FINISHED)
    assert invoked["runs"] == [kid["run_id"]]
    data = finished["data"]
    assert data["function_id"] == "child" and data["run_id"] == kid["run_id"]
    assert data["event"]["id"] == invoked["id"] and data["event"]["name"] == INVOKED
    assert data["events"] == [data["event"]]
    assert data["result"] == "ok" and "error" not in data
    assert data["correlation_id"] == f"{parent_id}.call"
    assert data["_inngest"] == {"status": "completed"}
    [resolved] = store.read_stream(r.signal_stream(parent_id))
    assert resolved.type == r.WAIT_RESOLVED and resolved.data["event"]["id"] == finished["id"]
    consistent(store)


def test_invoke_passes_user_and_empty_data(store: EventStore, clock: ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    engine = make_engine(store, clock, child(lambda ctx: seen.append(ctx.event.to_dict())))

    def handler(ctx: Context) -> Any:
        return ctx.step.invoke("call", function="child", user={"id": "u1"})

    engine.registry.add(define_function(handler, fn_id="parent", trigger=TriggerEvent(event="app/parent")))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    [trigger] = seen
    assert trigger["user"] == {"id": "u1"}
    assert set(trigger["data"]) == {"_inngest"}
    assert queries.get_run(store, parent_id)["status"] == "completed"
    consistent(store)


@pytest.mark.parametrize("kind", KINDS)
def test_invoking_a_child_that_sleeps_waits_for_it(run_store: EventStore, clock: ManualClock, kind: str) -> None:
    calls = Counter[str]()

    def sleeper(ctx: Context) -> str:
        ctx.step.sleep("nap", "1h")
        return "rested"

    engine = make_engine(run_store, clock, child(sleeper), parent_of("child", kind=kind, calls=calls))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    assert queries.get_run(run_store, parent_id)["status"] == "waiting"
    assert only_run(run_store, "child")["status"] == "waiting"
    # the parent's own deadline is the invoke's default year; the child's sleep is what wakes things
    assert engine.next_timer() == START + HOUR

    assert engine.advance(HOUR - TICK) == 0
    engine.advance(TICK)
    assert queries.get_run(run_store, parent_id)["output"] == {"result": "rested"}
    assert calls == {"before": 1}
    assert len(queries.list_runs(run_store, function_id="child")) == 1
    assert run_store.query("waits") == [] and run_store.query("timers") == []
    consistent(run_store)


def test_a_child_that_fails_then_succeeds_on_retry_gives_its_result(store: EventStore, clock: ManualClock) -> None:
    attempts: list[int] = []

    def flaky(ctx: Context) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 0:
            raise RuntimeError("first attempt fails")
        return "second time lucky"

    engine = make_engine(store, clock, child(flaky, retries=1), parent_of("child"))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    assert queries.get_run(store, parent_id)["status"] == "waiting"
    due = engine.next_timer()
    assert due is not None
    clock.set(due)
    engine.run_until_idle()
    assert attempts == [0, 1]
    assert queries.get_run(store, parent_id)["output"] == {"result": "second time lucky"}
    consistent(store)


def test_the_replay_after_an_invoke_invokes_nothing_again(run_store: EventStore, clock: ManualClock) -> None:
    ran = Counter[str]()

    def counted(ctx: Context) -> int:
        ran["child"] += 1
        return 5

    def handler(ctx: Context) -> int:
        got = ctx.step.invoke("call", function="child")
        ctx.step.sleep("nap", "1h")
        return int(got) + 1

    engine = make_engine(run_store, clock, child(counted))
    engine.registry.add(define_function(handler, fn_id="parent", trigger=TriggerEvent(event="app/parent")))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    engine.advance(HOUR)
    assert queries.get_run(run_store, parent_id)["output"] == 6
    assert ran == {"child": 1}
    assert len(queries.list_events(run_store, name=INVOKED)) == 1
    assert [t for t, _ in entries(run_store, parent_id)].count(r.STEP_WAITING) == 1
    consistent(run_store)


# -- failures ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_child_failure_raises_step_error_in_the_parent_with_the_child_error(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    def broken(ctx: Context) -> None:
        raise ValueError("bad child")

    engine = make_engine(run_store, clock, child(broken, retries=0), parent_of("child", kind=kind))
    parent_id = start_parent(engine)
    engine.run_until_idle()

    assert only_run(run_store, "child")["status"] == "failed"
    assert queries.get_run(run_store, parent_id)["output"] == {"error": ["ValueError", "bad child", "call"]}
    [failed] = [d for t, d in entries(run_store, parent_id) if t == r.STEP_FAILED]
    assert failed["kind"] == INVOKE_KIND and failed["error"]["name"] == "ValueError"
    assert r.STEP_ERRORED not in [t for t, _ in entries(run_store, parent_id)]  # no retry of the invoke
    consistent(run_store)


def test_an_uncaught_child_failure_fails_the_parent_without_retries(store: EventStore, clock: ManualClock) -> None:
    def broken(ctx: Context) -> None:
        raise NonRetriableError("no way")

    def handler(ctx: Context) -> Any:
        return ctx.step.invoke("call", function="child")

    engine = make_engine(store, clock, child(broken))
    engine.registry.add(define_function(handler, fn_id="parent", trigger=TriggerEvent(event="app/parent"), retries=3))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    run = queries.get_run(store, parent_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepError"
    assert run["error"]["message"] == "step 'call' failed: NonRetriableError: no way"
    assert r.RUN_ERRORED not in [t for t, _ in entries(store, parent_id)]
    assert store.query("timers") == [] and store.query("waits") == []
    consistent(store)


@pytest.mark.parametrize("kind", KINDS)
def test_an_invoke_times_out_with_inngest_invoke_timeout_error(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    def slow(ctx: Context) -> str:
        ctx.step.sleep("nap", "2h")
        return "too late"

    engine = make_engine(run_store, clock, child(slow), parent_of("child", kind=kind, timeout="1h"))
    parent_id = start_parent(engine)
    engine.run_until_idle()

    assert engine.advance(HOUR - TICK) == 0
    assert queries.get_run(run_store, parent_id)["status"] == "waiting"
    engine.advance(TICK)
    assert queries.get_run(run_store, parent_id)["output"] == {
        "error": ["InngestInvokeTimeoutError", "Timed out waiting for invoked function to complete", "call"]
    }
    [failed] = [d for t, d in entries(run_store, parent_id) if t == r.STEP_FAILED]
    assert failed["ended_at"] == format_time(START + HOUR)
    assert only_run(run_store, "child")["status"] == "waiting"  # the child is not cancelled
    parent_log = entries(run_store, parent_id)

    engine.advance(HOUR)  # the child finishes late: the parent is not touched again
    assert only_run(run_store, "child")["output"] == "too late"
    assert entries(run_store, parent_id) == parent_log
    assert [e.type for e in run_store.read_stream(r.signal_stream(parent_id))] == [r.WAIT_EXPIRED]
    assert run_store.query("waits") == []
    consistent(run_store)


@pytest.mark.parametrize(
    ("target", "data", "words"),
    [
        pytest.param("nobody", {}, "no function 'nobody' to invoke", id="unknown-id"),
        pytest.param(child(lambda ctx: None, fn_id="unregistered"), {}, "no function 'unregistered'", id="unregistered"),
        pytest.param("child", [1, 2], "invoke data must be a JSON object", id="data-not-a-dict"),
    ],
)
def test_a_bad_invoke_fails_the_step_with_invoke_error(
    run_store: EventStore, clock: ManualClock, target: Any, data: Any, words: str
) -> None:
    engine = make_engine(run_store, clock, child(lambda ctx: "never"), parent_of(target, data=data))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    [name, message, step] = queries.get_run(run_store, parent_id)["output"]["error"]
    assert (name, step) == ("InvokeError", "call")
    assert words in message
    assert queries.list_events(run_store, name=INVOKED) == []
    assert queries.list_runs(run_store, function_id="child") == []
    assert run_store.query("waits") == []
    consistent(run_store)


def test_a_bad_invoke_timeout_fails_the_run(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, child(lambda ctx: "never"), parent_of("child", timeout="367d"))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    run = queries.get_run(store, parent_id)
    assert run["status"] == "failed" and run["error"]["name"] == "InvokeError"
    assert "366 days" in run["error"]["message"]
    assert queries.list_runs(store, function_id="child") == []
    consistent(store)


def test_a_cancelled_child_fails_the_invoke_step(store: EventStore, clock: ManualClock) -> None:
    def sleeper(ctx: Context) -> str:
        ctx.step.sleep("nap", "1h")
        return "never"

    engine = make_engine(store, clock, child(sleeper), parent_of("child"))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    assert engine.cancel(only_run(store, "child")["run_id"], "not needed")
    engine.run_until_idle()
    [name, message, _] = queries.get_run(store, parent_id)["output"]["error"]
    assert name == "RunCancelled" and "not needed" in message
    consistent(store)


def test_a_nested_invoke_returns_through_every_level(store: EventStore, clock: ManualClock) -> None:
    def leaf(ctx: Context) -> int:
        ctx.step.sleep("nap", "1m")
        return int(ctx.event.data["n"]) + 1

    def middle(ctx: Context) -> int:
        return int(ctx.step.invoke("down", function="leaf", data={"n": ctx.event.data["n"] * 10}))

    engine = make_engine(store, clock, child(leaf, fn_id="leaf"), child(middle, fn_id="middle"),
                         parent_of("middle", data={"n": 4}))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    engine.advance(timedelta(minutes=1))
    assert queries.get_run(store, parent_id)["output"] == {"result": 41}
    consistent(store)


# -- large values --------------------------------------------------------------------------------------------------


def test_an_invoked_child_with_a_large_output_completes(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, child(lambda ctx: "x" * 300_000))

    def handler(ctx: Context) -> int:
        return len(ctx.step.invoke("call", function="child"))

    engine.registry.add(define_function(handler, fn_id="parent", trigger=TriggerEvent(event="app/parent")))
    parent_id = start_parent(engine)
    engine.run_until_idle()
    assert queries.get_run(store, parent_id)["output"] == 300_000


def test_a_run_with_a_large_trigger_ends_while_someone_listens_for_its_end(
    store: EventStore, clock: ManualClock
) -> None:
    engine = make_engine(store, clock)
    ended: list[str] = []
    engine.registry.add(define_function(
        lambda ctx: ended.append(ctx.event.data["run_id"]), fn_id="watcher",
        trigger=TriggerEvent(event=FINISHED, expression="event.data.function_id == 'big'"),
    ))
    engine.registry.add(define_function(lambda ctx: "done", fn_id="big", trigger=TriggerEvent(event="app/big")))
    engine.send({"name": "app/big", "data": {"blob": "y" * 150_000}})
    engine.run_until_idle()
    [run] = queries.list_runs(store, function_id="big")
    assert run["status"] == "completed" and ended == [run["run_id"]]
