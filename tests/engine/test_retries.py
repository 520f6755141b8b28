"""Retries on the synchronous engine: per step and for code outside steps, the default policy with
Inngest's backoff and jitter, configurable policies, NonRetriableError, RetryAfterError, StepError."""

from __future__ import annotations

import random
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
    RetryAfterError,
    RetryPolicy,
    RunProjector,
    StepError,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.retry import INNGEST_BACKOFF, RETRY_AFTER_MAX, RETRY_AFTER_MIN
from steplog.eventstore import EventStore, MemoryEventStore, parse_time

JITTER = timedelta(seconds=30)
SECOND = timedelta(seconds=1)


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock)


def define(handler: Callable[..., Any], **options: Any) -> FunctionDef:
    return define_function(handler, fn_id="f", trigger=TriggerEvent(event="app/go"), **options)


def start_one(engine: Engine) -> str:
    accepted = engine.accept({"name": "app/go", "data": {}})
    engine._ready.extend(run.run_id for run in accepted.runs)
    [run] = accepted.runs
    return run.run_id


def run_to_the_end(engine: Engine, clock: ManualClock, run_id: str) -> list[datetime]:
    """Run, waking at each timer until the run ends; return the times of the waits' starts."""
    waits = []
    engine.run_until_idle()
    while queries.get_run(engine.store, run_id)["status"] == "waiting":
        waits.append(clock.now())
        due = engine.next_timer()
        assert due is not None
        clock.set(due)
        engine.run_until_idle()
    return waits


def stream(store: EventStore, run_id: str, *types: str) -> list[dict[str, Any]]:
    return [e.data for e in store.read_stream(r.run_stream(run_id)) if not types or e.type in types]


def delays(store: EventStore, run_id: str, entry_type: str) -> list[timedelta]:
    """For each errored entry: retry_at minus the time the failure was recorded."""
    out = []
    for entry in store.read_stream(r.run_stream(run_id)):
        if entry.type == entry_type:
            out.append(parse_time(entry.data["retry_at"]) - parse_time(entry.recorded_at))
    return out


class Always:
    """A callable that always raises, counting calls and the ctx.attempt it saw."""

    def __init__(self, error: Callable[[], BaseException] = lambda: RuntimeError("boom")) -> None:
        self.error = error
        self.attempts: list[int] = []

    def __call__(self, ctx: Context) -> Any:
        self.attempts.append(ctx.attempt)
        raise self.error()


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- the default policy -------------------------------------------------------------------------


def test_default_step_retries_follow_inngest_backoff_with_jitter(run_store: EventStore, clock: ManualClock) -> None:
    body = Always()
    caught: list[StepError] = []

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("call-api", body, ctx)
        except StepError as error:
            caught.append(error)
            raise

    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)

    assert body.attempts == [0, 1, 2, 3, 4]  # 4 retries = 5 attempts; ctx.attempt counts them
    errored = stream(run_store, run_id, r.STEP_ERRORED)
    assert [e["attempt"] for e in errored] == [0, 1, 2, 3]
    for backoff, delay in zip(INNGEST_BACKOFF, delays(run_store, run_id, r.STEP_ERRORED), strict=False):
        assert backoff <= delay <= backoff + JITTER
    assert len(delays(run_store, run_id, r.STEP_ERRORED)) == 4
    [failed] = stream(run_store, run_id, r.STEP_FAILED)
    assert failed["attempt"] == 4 and failed["error"]["message"] == "boom"

    [error] = caught
    assert (error.step_id, error.name, error.message) == ("call-api", "RuntimeError", "boom")
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "StepError"
    assert run["error"]["message"] == "step 'call-api' failed: RuntimeError: boom"
    assert "step 'call-api' failed: RuntimeError: boom" in run["error"]["stack"]
    assert run_store.query("timers") == []


def test_default_backoff_table_and_jitter_bounds() -> None:
    policy = RetryPolicy()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expected = [15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200]
    assert [b.total_seconds() for b in INNGEST_BACKOFF] == expected
    policy20 = RetryPolicy(retries=20)
    rng = random.Random(7)
    jitters = []
    for failures in range(1, 21):
        at = policy20.retry_at(RuntimeError(), failures, now, rng)
        assert at is not None
        base = timedelta(seconds=expected[min(failures - 1, len(expected) - 1)])  # the last one repeats
        assert now + base <= at <= now + base + JITTER
        jitters.append((at - now - base).total_seconds())
    assert len(set(jitters)) > 1  # the jitter is random, not a constant
    assert policy.retry_at(RuntimeError(), 5, now, rng) is None  # after the 5th failure: no more


def test_jitter_is_deterministic_per_run_and_failure(clock: ManualClock, store: EventStore) -> None:
    """A failure whose commit was lost gets the same retry time when it happens again: no reshuffle."""
    attempted: list[str] = []

    def committer(appends: Any) -> Any:
        errored = [e for a in appends for w in a.writes for e in w.entries if e.type == r.STEP_ERRORED]
        if errored and not attempted:
            attempted.append(errored[0].data["retry_at"])
            raise RuntimeError("the commit was lost")
        return store.commit(appends, now=clock.now())

    registry = FunctionRegistry()
    registry.add(define(lambda ctx: ctx.step.run("s", Always(), ctx)))
    engine = Engine(store, registry=registry, clock=clock, committer=committer)
    [run] = engine.accept({"name": "app/go"}).runs
    with pytest.raises(RuntimeError, match="the commit was lost"):
        engine.invoke(run.run_id)
    outcome = engine.invoke(run.run_id)
    [errored] = stream(store, run.run_id, r.STEP_ERRORED)
    assert errored["retry_at"] == attempted[0]
    assert outcome.wake_at == parse_time(attempted[0])
    delay = parse_time(errored["retry_at"]) - clock.now()
    assert INNGEST_BACKOFF[0] <= delay <= INNGEST_BACKOFF[0] + JITTER


def test_code_outside_steps_is_retried_with_the_same_policy(run_store: EventStore, clock: ManualClock) -> None:
    handler = Always(lambda: KeyError("missing"))
    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert handler.attempts == [0, 1, 2, 3, 4]
    errored = stream(run_store, run_id, r.RUN_ERRORED)
    assert [e["attempt"] for e in errored] == [0, 1, 2, 3]
    for backoff, delay in zip(INNGEST_BACKOFF, delays(run_store, run_id, r.RUN_ERRORED), strict=False):
        assert backoff <= delay <= backoff + JITTER
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "KeyError"
    assert "missing" in run["error"]["message"]
    assert run["error"]["stack"] and "KeyError" in run["error"]["stack"]


def test_a_waiting_run_is_in_the_timers_projection(run_store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(run_store, clock, define(lambda ctx: ctx.step.run("s", Always(), ctx)))
    run_id = start_one(engine)
    engine.run_until_idle()
    [timer] = run_store.query("timers")
    assert timer["run_id"] == run_id
    assert timer["reason"] == "retry step s"
    assert parse_time(timer["due_at"]) == engine.next_timer()
    assert queries.get_run(run_store, run_id)["status"] == "waiting"
    # nothing happens before the time comes
    clock.advance(INNGEST_BACKOFF[0] - SECOND)
    assert engine.run_until_idle() == 0


# -- step retries are per step, and apart from the function's -------------------------------------


def test_each_step_has_its_own_retry_budget(clock: ManualClock, store: EventStore) -> None:
    calls = {"a": 0, "b": 0}

    def flaky(name: str) -> str:
        calls[name] += 1
        if calls[name] <= 2:
            raise RuntimeError(f"{name} not yet")
        return name

    function = define(lambda ctx: [ctx.step.run("a", flaky, "a"), ctx.step.run("b", flaky, "b")], retries=2)
    engine = make_engine(store, clock, function)
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert queries.get_run(store, run_id)["output"] == ["a", "b"]
    assert calls == {"a": 3, "b": 3}


def test_step_and_function_retries_are_counted_apart(clock: ManualClock, store: EventStore) -> None:
    state = {"step": 0, "outside": 0}
    attempts: list[int] = []

    def step_body() -> str:
        state["step"] += 1
        if state["step"] <= 1:
            raise RuntimeError("step")
        return "ok"

    def handler(ctx: Context) -> str:
        attempts.append(ctx.attempt)
        value = ctx.step.run("s", step_body)
        state["outside"] += 1
        if state["outside"] <= 1:
            raise RuntimeError("outside")
        return value

    engine = make_engine(store, clock, define(handler, retries=1))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert queries.get_run(store, run_id)["status"] == "completed"
    assert state == {"step": 2, "outside": 2}
    # the function's attempt counter moved only when code outside steps failed
    assert attempts == [0, 0, 1]


def test_ctx_attempt_inside_a_step_counts_that_steps_attempts(clock: ManualClock, store: EventStore) -> None:
    seen: list[tuple[str, int]] = []

    def handler(ctx: Context) -> Any:
        def body(name: str, fail_until: int) -> str:
            seen.append((name, ctx.attempt))
            if ctx.attempt < fail_until:
                raise RuntimeError(name)
            return name

        ctx.step.run("a", body, "a", 2)
        ctx.step.run("b", body, "b", 1)
        seen.append(("outside", ctx.attempt))
        return "done"

    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert queries.get_run(store, run_id)["status"] == "completed"
    assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("outside", 0)]


# -- configurable policies -----------------------------------------------------------------------


def test_custom_backoff_list_without_jitter(run_store: EventStore, clock: ManualClock) -> None:
    policy = RetryPolicy(retries=4, backoff=["1s", timedelta(seconds=5), 60], jitter=0)
    body = Always()
    engine = make_engine(run_store, clock, define(lambda ctx: ctx.step.run("s", body, ctx), retries=policy))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert body.attempts == [0, 1, 2, 3, 4]
    assert delays(run_store, run_id, r.STEP_ERRORED) == [
        timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=60), timedelta(seconds=60)
    ]


def test_fixed_policy(clock: ManualClock, store: EventStore) -> None:
    handler = Always()
    engine = make_engine(store, clock, define(handler, retries=RetryPolicy.fixed(2, "10s")))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert handler.attempts == [0, 1, 2]
    assert delays(store, run_id, r.RUN_ERRORED) == [timedelta(seconds=10)] * 2
    assert queries.get_run(store, run_id)["status"] == "failed"


def test_fixed_policy_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy.fixed(3, timedelta(minutes=1), jitter="5s")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(1)
    for failures in (1, 2, 3):
        at = policy.retry_at(RuntimeError(), failures, now, rng)
        assert at is not None and now + timedelta(minutes=1) <= at <= now + timedelta(minutes=1, seconds=5)
    assert policy.retry_at(RuntimeError(), 4, now, rng) is None


def test_zero_retries_fail_at_the_first_error(clock: ManualClock, store: EventStore) -> None:
    body = Always()
    engine = make_engine(store, clock, define(lambda ctx: ctx.step.run("s", body, ctx), retries=0))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    assert body.attempts == [0]
    assert queries.get_run(store, run_id)["status"] == "failed"
    assert engine.next_timer() is None


# -- steering errors ------------------------------------------------------------------------------


def test_non_retriable_error_in_a_step_fails_at_once(run_store: EventStore, clock: ManualClock) -> None:
    body = Always(lambda: NonRetriableError("card declined"))
    engine = make_engine(run_store, clock, define(lambda ctx: ctx.step.run("charge", body, ctx)))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    assert body.attempts == [0]
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["message"] == "step 'charge' failed: NonRetriableError: card declined"
    assert "step 'charge' failed: NonRetriableError: card declined" in run["error"]["stack"]
    assert stream(run_store, run_id, r.STEP_ERRORED) == []
    assert engine.next_timer() is None


def test_non_retriable_error_outside_steps_fails_at_once(run_store: EventStore, clock: ManualClock) -> None:
    handler = Always(lambda: NonRetriableError("bad input"))
    engine = make_engine(run_store, clock, define(handler))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    assert handler.attempts == [0]
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "NonRetriableError" and run["error"]["message"] == "bad input"


def test_non_retriable_error_subclass_fails_at_once(clock: ManualClock, store: EventStore) -> None:
    class Declined(NonRetriableError):
        pass

    handler = Always(lambda: Declined("no"))
    engine = make_engine(store, clock, define(handler))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert handler.attempts == [0]
    assert queries.get_run(store, run_id)["error"]["name"] == "Declined"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (120_000, timedelta(seconds=120)),  # a number is milliseconds, as in Inngest's SDK
        (90_500.0, timedelta(seconds=90.5)),
        (timedelta(minutes=7), timedelta(minutes=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (999, RETRY_AFTER_MIN),
        (0, RETRY_AFTER_MIN),
        (timedelta(hours=48), RETRY_AFTER_MAX),
        ("3d", timedelta(hours=24)),
    ],
)
def test_retry_after_error_sets_the_retry_time(
    clock: ManualClock, store: EventStore, retry_after: Any, expected: timedelta
) -> None:
    body = Always(lambda: RetryAfterError("rate limited", retry_after))
    engine = make_engine(store, clock, define(lambda ctx: ctx.step.run("s", body, ctx)))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert delays(store, run_id, r.STEP_ERRORED) == [expected]
    assert engine.next_timer() == clock.now() + expected


def test_retry_after_error_with_a_datetime(clock: ManualClock, store: EventStore) -> None:
    moments = iter([clock.now() + timedelta(minutes=10), clock.now() - timedelta(hours=1)])
    body = Always(lambda: RetryAfterError("later", next(moments)))
    engine = make_engine(store, clock, define(lambda ctx: ctx.step.run("s", body, ctx)))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert engine.next_timer() == clock.now() + timedelta(minutes=10)
    clock.set(engine.next_timer())
    engine.run_until_idle()
    # a time in the past is clamped to one second from now
    assert delays(store, run_id, r.STEP_ERRORED) == [timedelta(minutes=10), RETRY_AFTER_MIN]


def test_retry_after_error_outside_steps(clock: ManualClock, store: EventStore) -> None:
    handler = Always(lambda: RetryAfterError("busy", 42_000))
    engine = make_engine(store, clock, define(handler, retries=1))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert delays(store, run_id, r.RUN_ERRORED) == [timedelta(seconds=42)]
    assert handler.attempts == [0, 1]  # RetryAfterError still counts against the retries
    assert queries.get_run(store, run_id)["status"] == "failed"


def test_an_unreadable_retry_after_falls_back_to_the_backoff_table() -> None:
    policy = RetryPolicy(jitter=0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for retry_after in (datetime(2026, 1, 1), "garbage"):
        at = policy.retry_at(RetryAfterError("x", retry_after), 1, now, random.Random(0))  # type: ignore[arg-type]
        assert at == now + timedelta(seconds=15)


# -- StepError inside the function ------------------------------------------------------------------


def test_a_failed_step_can_be_caught_and_the_run_continues(run_store: EventStore, clock: ManualClock) -> None:
    compensated: list[str] = []
    body = Always(lambda: ValueError("out of stock"))

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("reserve", body, ctx)
        except StepError as error:
            failed_step = error.step_id
            ctx.step.run("compensate", lambda: compensated.append(failed_step) or "refunded")
            return {"failed": error.step_id, "name": error.name, "message": error.message}
        return "reserved"

    engine = make_engine(run_store, clock, define(handler, retries=1))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"failed": "reserve", "name": "ValueError", "message": "out of stock"}
    assert compensated == ["reserve"]
    assert body.attempts == [0, 1]


def test_a_caught_step_error_is_replayed_the_same_way(run_store: EventStore, clock: ManualClock) -> None:
    """After a later suspension, the replay raises the recorded StepError again without running the step."""
    body = Always(lambda: ValueError("nope"))
    later = {"calls": 0}
    observed: list[tuple[str, str, str]] = []

    def flaky_later() -> str:
        later["calls"] += 1
        if later["calls"] == 1:
            raise RuntimeError("once")
        return "later ok"

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("a", body, ctx)
        except StepError as error:
            observed.append((error.step_id, error.name, error.message))
        return ctx.step.run("later", flaky_later)

    engine = make_engine(run_store, clock, define(handler, retries=1))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    assert queries.get_run(run_store, run_id)["output"] == "later ok"
    assert body.attempts == [0, 1]
    assert observed == [("a", "ValueError", "nope")] * 2


def test_step_error_history_lists_every_attempt(clock: ManualClock, store: EventStore) -> None:
    body = Always()
    engine = make_engine(store, clock, define(lambda ctx: ctx.step.run("s", body, ctx), retries=2))
    run_id = start_one(engine)
    run_to_the_end(engine, clock, run_id)
    history = queries.run_history(store, run_id)
    assert [(a.step, a.attempt, a.status) for a in history.steps] == [
        ("s", 0, "errored"), ("s", 1, "errored"), ("s", 2, "failed"),
    ]
    assert all(a.retry_at for a in history.steps[:2]) and history.steps[2].retry_at is None
