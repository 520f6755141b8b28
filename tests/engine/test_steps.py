"""step.run on the synchronous engine: commit before return, memoization, replay, code changes,
non-determinism, sync and async, JSON-only results, and the size and count limits."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
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
    StepError,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.eventstore import EventStore, MemoryEventStore, NewEntry

TRIGGER = TriggerEvent(event="app/go")


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef, limits: Limits | None = None) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock, limits=limits)


def define(handler: Callable[..., Any], fn_id: str = "f", **options: Any) -> FunctionDef:
    return define_function(handler, fn_id=fn_id, trigger=TRIGGER, **options)


def start_one(engine: Engine, data: dict[str, Any] | None = None) -> str:
    """Send one event that starts exactly one run; return the run id."""
    accepted = engine.accept({"name": "app/go", "data": data or {}})
    engine._ready.extend(run.run_id for run in accepted.runs)
    [run] = accepted.runs
    return run.run_id


def wake(engine: Engine, clock: ManualClock) -> int:
    """Move the clock to the next timer and run what is due."""
    due = engine.next_timer()
    assert due is not None, "expected a run waiting for a time"
    clock.set(due)
    return engine.run_until_idle()


def entries(store: EventStore, run_id: str) -> list[tuple[str, str | None]]:
    return [(e.type, e.data.get("step")) for e in store.read_stream(r.run_stream(run_id))]


class FailTimes:
    """A step body that fails the first ``n`` calls, then returns ``value``."""

    def __init__(self, n: int, value: Any = "ok") -> None:
        self.n, self.value, self.calls = n, value, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls <= self.n:
            raise RuntimeError(f"failure {self.calls}")
        return self.value


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- commit before return; one invocation on the hot path ----------------------------------------


def test_step_result_is_committed_before_the_function_sees_it(run_store: EventStore, clock: ManualClock) -> None:
    observed: list[list[tuple[str, Any]]] = []

    def log_now(run_id: str) -> list[tuple[str, Any]]:
        return [(e.type, e.data.get("output")) for e in run_store.read_stream(r.run_stream(run_id))]

    def handler(ctx: Context) -> int:
        a = ctx.step.run("a", lambda: 41)
        observed.append(log_now(ctx.run_id))  # the very next line after step "a" returned
        b = ctx.step.run("b", lambda: log_now(ctx.run_id))  # and inside the next step
        observed.append(b)
        return a + 1

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    after_a, inside_b = observed
    assert after_a[-1] == (r.STEP_COMPLETED, 41)
    assert [t for t, _ in after_a] == [r.RUN_SCHEDULED, r.RUN_STARTED, r.STEP_COMPLETED]
    assert inside_b[-1] == [r.STEP_COMPLETED, 41]  # (a step result comes back as JSON)
    assert queries.get_run(run_store, run_id)["output"] == 42


def test_a_run_without_suspensions_is_one_invocation(run_store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> list[int]:
        calls["handler"] += 1
        return [ctx.step.run(f"s{i}", lambda i=i: i) for i in range(5)]

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    assert calls["handler"] == 1
    assert entries(run_store, run_id) == [
        (r.RUN_SCHEDULED, None), (r.RUN_STARTED, None),
        *[(r.STEP_COMPLETED, f"s{i}") for i in range(5)],
        (r.RUN_COMPLETED, None),
    ]
    run = queries.get_run(run_store, run_id)
    assert run["output"] == [0, 1, 2, 3, 4] and run["steps"] == 5


def test_step_passes_args_and_kwargs(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.run("add", lambda a, b, *, c: a + b + c, 1, 2, c=3)

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert queries.get_run(store, run_id)["output"] == 6


# -- memoization and replay -------------------------------------------------------------------------


def test_repeated_ids_get_occurrence_keys_and_replay_does_not_rerun(run_store: EventStore, clock: ManualClock) -> None:
    ran = Counter[str]()
    flaky = FailTimes(1, "late")

    def body(label: str) -> str:
        ran[label] += 1
        return label

    def handler(ctx: Context) -> list[str]:
        values = [ctx.step.run("item", body, f"v{i}") for i in range(3)]
        values.append(ctx.step.run("flaky", flaky))
        return values

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert queries.get_run(run_store, run_id)["status"] == "waiting"
    wake(engine, clock)

    assert queries.get_run(run_store, run_id)["output"] == ["v0", "v1", "v2", "late"]
    assert ran == {"v0": 1, "v1": 1, "v2": 1}
    assert flaky.calls == 2
    completed = [e.data for e in run_store.read_stream(r.run_stream(run_id)) if e.type == r.STEP_COMPLETED]
    assert [(d["step"], d["id"], d["n"]) for d in completed] == [
        ("item", "item", 1), ("item:1", "item", 2), ("item:2", "item", 3), ("flaky", "flaky", 4),
    ]


def test_replay_returns_the_same_values_and_skips_completed_bodies(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[tuple[Any, Any]] = []
    calls = Counter[str]()
    flaky = FailTimes(2)

    def handler(ctx: Context) -> Any:
        calls["handler"] += 1
        a = ctx.step.run("a", lambda: calls.update(["a"]) or {"n": 1})
        b = ctx.step.run("b", lambda: calls.update(["b"]) or [a["n"], 2])
        seen.append((a, b))
        ctx.step.run("c", flaky)
        return b

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    wake(engine, clock)
    wake(engine, clock)
    assert queries.get_run(run_store, run_id)["status"] == "completed"
    assert calls == {"handler": 3, "a": 1, "b": 1}
    assert seen == [({"n": 1}, [1, 2])] * 3
    types = [t for t, _ in entries(run_store, run_id)]
    assert types.count(r.RUN_RESUMED) == 2
    assert types.count(r.STEP_ERRORED) == 2


def test_logger_is_quiet_while_replaying(
    clock: ManualClock, store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FailTimes(1)

    def handler(ctx: Context) -> None:
        ctx.logger.info("before a")
        ctx.step.run("a", lambda: 1)
        ctx.logger.info("after a")
        ctx.step.run("b", flaky)
        ctx.logger.info("after b")

    engine = make_engine(store, clock, define(handler))
    start_one(engine)
    with caplog.at_level(logging.INFO, logger="steplog.function.f"):
        engine.run_until_idle()
        wake(engine, clock)
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "steplog.function.f"]
    # the replay passes "before a" quietly; from the end of the recorded steps on, the code runs
    # again for real (step "b" is retried), so "after a" is logged once per attempt of "b"
    assert messages == ["before a", "after a", "after a", "after b"]


def test_logs_after_new_steps_are_kept(clock: ManualClock, store: EventStore, caplog: pytest.LogCaptureFixture) -> None:
    def handler(ctx: Context) -> None:
        for i in range(3):
            ctx.step.run(f"s{i}", lambda i=i: i)
            ctx.logger.info("after s%d", i)

    engine = make_engine(store, clock, define(handler))
    start_one(engine)
    with caplog.at_level(logging.INFO, logger="steplog.function.f"):
        engine.run_until_idle()
    assert [rec.getMessage() for rec in caplog.records if rec.name == "steplog.function.f"] == [
        "after s0", "after s1", "after s2",
    ]


# -- code changes for runs in flight ------------------------------------------------------------------


def test_adding_and_removing_steps_is_safe_for_runs_in_flight(run_store: EventStore, clock: ManualClock) -> None:
    ran: list[str] = []

    def old_code(ctx: Context) -> Any:
        ctx.step.run("a", lambda: ran.append("old a") or "A")
        ctx.step.run("remove-me", lambda: ran.append("old remove-me") or "R")
        return ctx.step.run("b", FailTimes(1, "never"))

    old_engine = make_engine(run_store, clock, define(old_code))
    run_id = start_one(old_engine)
    old_engine.run_until_idle()
    assert queries.get_run(run_store, run_id)["status"] == "waiting"

    def new_code(ctx: Context) -> Any:
        a = ctx.step.run("a", lambda: ran.append("new a") or "A2")
        inserted = ctx.step.run("inserted", lambda: ran.append("new inserted") or "I")
        b = ctx.step.run("b", lambda: ran.append("new b") or "B")
        return [a, inserted, b]

    # a new process, with the changed function, over the same log
    new_engine = make_engine(run_store, clock, define(new_code))
    new_engine.start()
    wake(new_engine, clock)
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == ["A", "I", "B"]  # "a" comes from the log, not from the new body
    assert ran == ["old a", "old remove-me", "new inserted", "new b"]


def test_a_recorded_step_of_another_kind_fails_the_run_as_nondeterministic(
    run_store: EventStore, clock: ManualClock
) -> None:
    ran: list[str] = []
    first = FailTimes(1)

    def handler(ctx: Context) -> Any:
        ctx.step.run("first", first)
        try:
            return ctx.step.run("a", lambda: ran.append("a") or 1)
        except Exception as error:  # noqa: BLE001 - user code must not be able to swallow it
            return f"swallowed {error!r}"

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    stream = r.run_stream(run_id)
    crafted = {
        "step": "a", "id": "a", "kind": "sleep", "n": 1, "attempt": 0, "output": None,
        "started_at": "2026-01-01T12:00:00.000000Z", "ended_at": "2026-01-01T12:00:00.000000Z",
    }
    run_store.append(stream, [NewEntry(r.STEP_COMPLETED, crafted)], now=clock.now())

    wake(engine, clock)
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NondeterminismError"
    assert "'a'" in run["error"]["message"]
    assert "'sleep'" in run["error"]["message"] and "'run'" in run["error"]["message"]
    assert ran == []
    assert run_store.query("timers") == []
    assert engine.next_timer() is None


# -- sync and async ---------------------------------------------------------------------------------


def _sync_body(value: int) -> int:
    return value * 2


async def _async_body(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@pytest.mark.parametrize("body", [_sync_body, _async_body], ids=["sync-body", "async-body"])
@pytest.mark.parametrize("kind", ["def", "async def"])
def test_sync_and_async_functions_with_sync_and_async_bodies(
    run_store: EventStore, clock: ManualClock, kind: str, body: Callable[[int], Any]
) -> None:
    flaky = FailTimes(1, 100)
    if kind == "def":

        def handler(ctx: Context) -> Any:
            a = ctx.step.run("a", body, ctx.event.data["n"])
            b = ctx.step.run("b", flaky)
            return {"a": a, "b": b, "attempt": ctx.attempt}

    else:

        async def handler(ctx: Context) -> Any:  # type: ignore[misc]
            a = await ctx.step.run("a", body, ctx.event.data["n"])
            b = await ctx.step.run("b", flaky)
            return {"a": a, "b": b, "attempt": ctx.attempt}

    function = define(handler)
    assert function.is_async is (kind == "async def")
    engine = make_engine(run_store, clock, function)
    run_id = start_one(engine, {"n": 21})
    engine.run_until_idle()
    wake(engine, clock)
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"a": 42, "b": 100, "attempt": 0}
    assert flaky.calls == 2


def test_async_step_errors_are_retried_like_sync_ones(clock: ManualClock, store: EventStore) -> None:
    calls = Counter[str]()

    async def body() -> str:
        calls["body"] += 1
        if calls["body"] == 1:
            raise ValueError("async failure")
        return "fine"

    async def handler(ctx: Context) -> Any:
        return await ctx.step.run("a", body)

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    [errored] = [e.data for e in store.read_stream(r.run_stream(run_id)) if e.type == r.STEP_ERRORED]
    assert errored["error"]["name"] == "ValueError" and errored["error"]["message"] == "async failure"
    wake(engine, clock)
    assert queries.get_run(store, run_id)["output"] == "fine"


def test_a_step_inside_a_step_fails_the_run(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.run("outer", lambda: ctx.step.run("inner", lambda: 1))

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NestedStepError"


@pytest.mark.parametrize("step_id", ["", None, 3])
def test_a_step_id_must_be_a_non_empty_string(clock: ManualClock, store: EventStore, step_id: Any) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.run(step_id, lambda: 1)

    engine = make_engine(store, clock, define(handler))  # default retries: misuse is not retried
    run_id = start_one(engine)
    engine.run_until_idle()
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepIdError"
    assert "a step id must be a non-empty string" in run["error"]["message"]
    assert store.query("timers") == []


# -- JSON only --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes", float("inf")], ids=["set", "object", "bytes", "inf"])
def test_a_step_result_that_is_not_json_fails_the_run_without_retry(
    run_store: EventStore, clock: ManualClock, value: Any
) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> Any:
        return ctx.step.run("make-value", lambda: calls.update(["body"]) or value)

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert "'make-value'" in run["error"]["message"]
    assert "not JSON" in run["error"]["message"]
    assert calls["body"] == 1
    assert engine.next_timer() is None and run_store.query("timers") == []


def test_a_function_output_that_is_not_json_fails_the_run(run_store: EventStore, clock: ManualClock) -> None:
    def handler(ctx: Context) -> Any:
        return {"ids": {1, 2}}

    engine = make_engine(run_store, clock, define(handler, fn_id="bad-output"))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "OutputError"
    assert "'bad-output'" in run["error"]["message"] and "not JSON" in run["error"]["message"]
    assert engine.next_timer() is None


def test_tuples_come_back_as_lists_on_first_execution_and_on_replay(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[Any] = []
    flaky = FailTimes(1)

    def handler(ctx: Context) -> Any:
        value = ctx.step.run("pair", lambda: {"pair": (1, (2, 3)), 7: "int key"})
        seen.append(value)
        ctx.step.run("flaky", flaky)
        return value

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    wake(engine, clock)
    expected = {"pair": [1, [2, 3]], "7": "int key"}
    assert seen == [expected, expected]
    assert [type(v["pair"]) for v in seen] == [list, list]
    assert queries.get_run(run_store, run_id)["output"] == expected


def test_the_function_cannot_change_a_recorded_result_by_mutating_it(run_store: EventStore, clock: ManualClock) -> None:
    seen: list[Any] = []
    source = {"items": [1]}
    flaky = FailTimes(1)

    def handler(ctx: Context) -> Any:
        value = ctx.step.run("a", lambda: source)
        seen.append(list(value["items"]))
        value["items"].append("mutated by the function")
        source["items"].append("mutated by the body's owner")
        ctx.step.run("flaky", flaky)
        return None

    engine = make_engine(run_store, clock, define(handler))
    start_one(engine)
    engine.run_until_idle()
    wake(engine, clock)
    assert seen == [[1], [1]]


# -- limits -----------------------------------------------------------------------------------------


def test_step_output_over_the_limit_fails_the_run(run_store: EventStore, clock: ManualClock) -> None:
    calls = Counter[str]()

    def handler(ctx: Context) -> Any:
        ctx.step.run("small", lambda: "x" * 50)
        return ctx.step.run("big", lambda: calls.update(["big"]) or "x" * 200)

    engine = make_engine(run_store, clock, define(handler), limits=Limits(step_output_bytes=100))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    message = run["error"]["message"]
    assert "'big'" in message and "202 bytes" in message and "the limit is 100 bytes" in message
    assert calls["big"] == 1


def test_default_step_output_limit_is_4_mib(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        ok = ctx.step.run("under", lambda: "x" * (4 * 1024 * 1024 - 2))
        ctx.step.run("over", lambda: "x" * (4 * 1024 * 1024 - 1))
        return len(ok)

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed"
    assert "'over'" in run["error"]["message"] and "the limit is 4194304 bytes" in run["error"]["message"]


def test_function_output_over_the_limit_fails_the_run(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, define(lambda ctx: "x" * 500, fn_id="big"), limits=Limits(step_output_bytes=100))
    run_id = start_one(engine)
    engine.run_until_idle()
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed"
    assert "'big'" in run["error"]["message"] and "the limit is 100 bytes" in run["error"]["message"]


def test_step_limit_is_configurable(run_store: EventStore, clock: ManualClock) -> None:
    ran: list[int] = []

    def handler(ctx: Context) -> Any:
        for i in range(10):
            ctx.step.run("s", ran.append, i)
        return "done"

    engine = make_engine(run_store, clock, define(handler), limits=Limits(steps_per_run=3))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepLimitError"
    assert "step limit of 3 steps" in run["error"]["message"]
    assert ran == [0, 1, 2]
    assert run["steps"] == 3


def test_the_step_limit_cannot_be_caught(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        ctx.step.run("a", lambda: 1)
        try:
            ctx.step.run("b", lambda: 2)
        except BaseException as error:  # noqa: BLE001 - even this must not keep the run going
            return f"caught {type(error).__name__}"
        return "no limit"

    engine = make_engine(store, clock, define(handler), limits=Limits(steps_per_run=1))
    run_id = start_one(engine)
    engine.run_until_idle()
    # whatever the function does, the run is recorded as failed by the limit
    run = queries.get_run(store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepLimitError"


def test_default_step_limit_is_1000(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        for i in range(ctx.event.data["steps"]):
            ctx.step.run("s", lambda: None)
        return "done"

    engine = make_engine(store, clock, define(handler))
    ok = start_one(engine, {"steps": 1000})
    over = start_one(engine, {"steps": 1001})
    engine.run_until_idle()
    assert queries.get_run(store, ok)["status"] == "completed"
    run = queries.get_run(store, over)
    assert run["status"] == "failed" and "step limit of 1000 steps" in run["error"]["message"]


def test_a_failed_run_does_not_affect_others(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        if ctx.event.data["bad"]:
            return ctx.step.run("s", lambda: {1})
        return ctx.step.run("s", lambda: "fine")

    engine = make_engine(store, clock, define(handler))
    bad = start_one(engine, {"bad": True})
    good = start_one(engine, {"bad": False})
    engine.run_until_idle()
    assert queries.get_run(store, bad)["status"] == "failed"
    assert queries.get_run(store, good)["output"] == "fine"


def test_step_error_from_a_not_json_result_can_be_caught(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("s", lambda: {1})
        except StepError as error:
            return {"step": error.step_id, "name": error.name}
        return "unreachable"

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert queries.get_run(store, run_id)["output"] == {"step": "s", "name": "NonRetriableError"}


def test_a_bare_except_cannot_skip_a_step_retry(clock: ManualClock, store: EventStore) -> None:
    flaky = FailTimes(1, "A")
    ran: list[str] = []

    def handler(ctx: Context) -> Any:
        try:
            a = ctx.step.run("a", flaky)
        except:  # noqa: E722 - user code does this
            a = "skipped"
        return [a, ctx.step.run("b", lambda: ran.append("b") or "B")]

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    # step "a" failed once: the run must wait for its retry, not carry on past it
    assert queries.get_run(store, run_id)["status"] == "waiting"
    assert ran == []
    wake(engine, clock)
    assert queries.get_run(store, run_id)["output"] == ["A", "B"]


def test_an_unknown_step_attribute_is_a_plain_attribute_error(clock: ManualClock, store: EventStore) -> None:
    def handler(ctx: Context) -> Any:
        return ctx.step.no_such_tool

    engine = make_engine(store, clock, define(handler, retries=0))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert queries.get_run(store, run_id)["error"]["name"] == "AttributeError"
