"""Retries as a user sees them: per step and for code outside steps, the default policy with
Inngest's backoff and jitter, configurable policies, NonRetriableError, RetryAfterError, StepError.

Runs go through ``steplog.testing.TestEngine`` on virtual time, step failures are stubs
(``engine.stub(step, raises=..., fails=N)``) whose ``attempts`` say which attempts entered the body,
and retry timing is read from the run's step attempts (``retry_at`` against when each attempt ended
and when the next one began). What the toolkit does not show is read from the raw log
(``engine.store``): the ``run.errored`` entries of code outside steps and the timers projection.
The policy arithmetic is tested on ``RetryPolicy`` alone, and the lost-commit test needs the raw
``Engine`` (a committer that drops a commit).
"""

from __future__ import annotations

import itertools
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
)
from steplog.engine import records as r
from steplog.engine.retry import INNGEST_BACKOFF, RETRY_AFTER_MAX, RETRY_AFTER_MIN
from steplog.eventstore import EventStore, MemoryEventStore, parse_time

from steplog.testing import TestEngine, TestRun, assert_replays

JITTER = timedelta(seconds=30)
SECOND = timedelta(seconds=1)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both stores, for the tests that ran on every backend."""
    return str(request.param)


def define(handler: Callable[..., Any], **options: Any) -> FunctionDef:
    return define_function(handler, fn_id="f", trigger=TriggerEvent(event="app/go"), **options)


def engine_of(function: FunctionDef, *, store: str = "memory", spies_outside_steps: bool = False) -> TestEngine:
    """A test engine with ``function``. ``spies_outside_steps``: the handler records its calls in code
    outside steps; TestEngine's determinism check replays each run that ends, which calls the
    handler once more, so the check is left to ``replays`` at the end of the test, after the spies
    are read."""
    return TestEngine(function, store=store, check_determinism=not spies_outside_steps)  # type: ignore[arg-type]


def replays(engine: TestEngine, run: TestRun) -> None:
    """The determinism check TestEngine does by itself, for engines built with ``spies_outside_steps``."""
    assert_replays(engine.export(run.run_id), engine.registry)


def start(engine: TestEngine) -> tuple[TestRun, int]:
    """Send ``app/go`` and run until idle: the run, and how many invocations ran."""
    [event_id] = engine.send({"name": "app/go", "data": {}})
    ran = engine.run_until_idle()
    [run] = engine.runs_for(event_id)
    return run, ran


def step_delays(run: TestRun, step_id: str) -> list[timedelta]:
    """For each errored attempt of a step: its retry_at minus the time it ended. Also checks, on
    virtual time, that the next attempt began exactly at that retry_at, and no sooner."""
    tried = run.step_attempts(step_id)
    out = []
    for attempt, following in itertools.pairwise(tried):
        assert attempt.status == "errored", run.describe()
        assert attempt.retry_at is not None and attempt.ended_at is not None
        assert parse_time(following.started_at) == parse_time(attempt.retry_at), run.describe()
        out.append(parse_time(attempt.retry_at) - parse_time(attempt.ended_at))
    if tried and tried[-1].status == "errored":  # still waiting for its retry
        last = tried[-1]
        assert last.retry_at is not None and last.ended_at is not None
        out.append(parse_time(last.retry_at) - parse_time(last.ended_at))
    return out


def run_delays(store: EventStore, run_id: str) -> list[timedelta]:
    """For each ``run.errored`` entry (code outside steps): retry_at minus the time it was recorded.
    The toolkit shows step attempts only, so these come from the log."""
    return [
        parse_time(entry.data["retry_at"]) - parse_time(entry.recorded_at)
        for entry in store.read_stream(r.run_stream(run_id))
        if entry.type == r.RUN_ERRORED
    ]


def run_errored_attempts(store: EventStore, run_id: str) -> list[int]:
    return [e.data["attempt"] for e in store.read_stream(r.run_stream(run_id)) if e.type == r.RUN_ERRORED]


class Always:
    """A handler that always raises, recording the ctx.attempt of each call (code outside steps:
    step bodies are stubbed instead)."""

    def __init__(self, error: Callable[[], BaseException] = lambda: RuntimeError("boom")) -> None:
        self.error = error
        self.attempts: list[int] = []

    def __call__(self, ctx: Context) -> Any:
        self.attempts.append(ctx.attempt)
        raise self.error()


def raising(error: Callable[[], BaseException]) -> Callable[..., Any]:
    """A stub body raising a new ``error()`` each call (for errors ``raises=`` cannot copy; see the
    report on RetryAfterError)."""

    def body(*args: Any, **kwargs: Any) -> Any:
        raise error()

    return body


def one_step(step_id: str = "s") -> Callable[[Context], Any]:
    """A function of one step whose real body succeeds: the tests stub it to fail."""
    return lambda ctx: ctx.step.run(step_id, lambda: "ok")


# -- the default policy -------------------------------------------------------------------------


def test_default_step_retries_follow_inngest_backoff_with_jitter(backend: str) -> None:
    caught: list[StepError] = []

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("call-api", lambda: "ok")
        except StepError as error:
            caught.append(error)
            raise

    with engine_of(define(handler), store=backend, spies_outside_steps=True) as engine:
        body = engine.stub("call-api", raises=RuntimeError("boom"))
        run, _ = start(engine)
        engine.settle()

        assert body.attempts == [0, 1, 2, 3, 4]  # 4 retries = 5 attempts; ctx.attempt counts them
        tried = run.step_attempts("call-api")
        assert [(a.attempt, a.status) for a in tried] == [(0, "errored"), (1, "errored"), (2, "errored"),
                                                          (3, "errored"), (4, "failed")]
        delays = step_delays(run, "call-api")
        assert len(delays) == 4
        for backoff, delay in zip(INNGEST_BACKOFF, delays, strict=False):
            assert backoff <= delay <= backoff + JITTER
        assert tried[-1].error is not None and tried[-1].error["message"] == "boom"
        assert tried[-1].retry_at is None

        [error] = caught
        assert (error.step_id, error.name, error.message) == ("call-api", "RuntimeError", "boom")
        run.assert_failed("StepError")
        assert run.error is not None
        assert run.error["message"] == "step 'call-api' failed: RuntimeError: boom"
        assert "step 'call-api' failed: RuntimeError: boom" in run.error["stack"]
        assert engine.store.query("timers") == []
        assert engine.next_timer() is None
        replays(engine, run)


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


def test_jitter_is_deterministic_per_run_and_failure() -> None:
    """A failure whose commit was lost gets the same retry time when it happens again: no reshuffle.

    On the raw Engine: losing one commit (a committer that raises) is not something TestEngine can
    do, and a stub's simulated crash only follows a body that returned."""
    clock = ManualClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    store = MemoryEventStore(RunProjector())
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
    [errored] = [e.data for e in store.read_stream(r.run_stream(run.run_id)) if e.type == r.STEP_ERRORED]
    assert errored["retry_at"] == attempted[0]
    assert outcome.wake_at == parse_time(attempted[0])
    delay = parse_time(errored["retry_at"]) - clock.now()
    assert INNGEST_BACKOFF[0] <= delay <= INNGEST_BACKOFF[0] + JITTER


def test_code_outside_steps_is_retried_with_the_same_policy(backend: str) -> None:
    handler = Always(lambda: KeyError("missing"))
    with engine_of(define(handler), store=backend, spies_outside_steps=True) as engine:
        run, _ = start(engine)
        engine.settle()
        assert handler.attempts == [0, 1, 2, 3, 4]
        assert run_errored_attempts(engine.store, run.run_id) == [0, 1, 2, 3]
        delays = run_delays(engine.store, run.run_id)
        assert len(delays) == 4
        for backoff, delay in zip(INNGEST_BACKOFF, delays, strict=False):
            assert backoff <= delay <= backoff + JITTER
        run.assert_failed("KeyError", "missing")
        assert run.error is not None and run.error["stack"] and "KeyError" in run.error["stack"]
        replays(engine, run)


def test_a_waiting_run_is_in_the_timers_projection(backend: str) -> None:
    with engine_of(define(one_step()), store=backend) as engine:
        engine.stub("s", raises=RuntimeError("boom"))
        run, _ = start(engine)
        [timer] = engine.store.query("timers")
        assert timer["run_id"] == run.run_id
        assert timer["reason"] == "retry step s"
        assert parse_time(timer["due_at"]) == engine.next_timer()
        run.assert_waiting()
        # nothing happens before the time comes
        assert engine.advance(INNGEST_BACKOFF[0] - SECOND) == 0
        run.assert_waiting()
        assert [(a.attempt, a.status) for a in run.step_attempts("s")] == [(0, "errored")]


# -- step retries are per step, and apart from the function's -------------------------------------


def test_each_step_has_its_own_retry_budget() -> None:
    function = define(lambda ctx: [ctx.step.run("a", lambda: "a"), ctx.step.run("b", lambda: "b")], retries=2)
    with engine_of(function) as engine:
        a = engine.stub("a", fails=2)
        b = engine.stub("b", fails=2)
        run, _ = start(engine)
        engine.settle()
        run.assert_completed(["a", "b"]).assert_step("a", attempts=3).assert_step("b", attempts=3)
        assert (a.calls, b.calls) == (3, 3)


def test_step_and_function_retries_are_counted_apart() -> None:
    outside = {"calls": 0}
    attempts: list[int] = []

    def handler(ctx: Context) -> str:
        attempts.append(ctx.attempt)
        value: str = ctx.step.run("s", lambda: "ok")
        outside["calls"] += 1
        if outside["calls"] <= 1:
            raise RuntimeError("outside")
        return value

    with engine_of(define(handler, retries=1), spies_outside_steps=True) as engine:
        step = engine.stub("s", fails=1)
        run, _ = start(engine)
        engine.settle()
        run.assert_completed("ok").assert_step("s", output="ok", attempts=2)
        assert (step.calls, outside["calls"]) == (2, 2)
        # the function's attempt counter moved only when code outside steps failed
        assert attempts == [0, 0, 1]
        replays(engine, run)


def test_ctx_attempt_inside_a_step_counts_that_steps_attempts() -> None:
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

    with engine_of(define(handler), spies_outside_steps=True) as engine:
        spy_a, spy_b = engine.stub("a"), engine.stub("b")  # no stand-in: the real body runs, observed
        run, _ = start(engine)
        engine.settle()
        run.assert_completed("done").assert_step("a", attempts=3).assert_step("b", attempts=2)
        assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("outside", 0)]
        assert (spy_a.attempts, spy_b.attempts) == ([0, 1, 2], [0, 1])  # the harness counts as ctx.attempt does
        replays(engine, run)


# -- configurable policies -----------------------------------------------------------------------


def test_custom_backoff_list_without_jitter(backend: str) -> None:
    policy = RetryPolicy(retries=4, backoff=["1s", timedelta(seconds=5), 60], jitter=0)
    with engine_of(define(one_step(), retries=policy), store=backend) as engine:
        body = engine.stub("s", raises=RuntimeError("boom"))
        run, _ = start(engine)
        engine.settle()
        assert body.attempts == [0, 1, 2, 3, 4]
        assert step_delays(run, "s") == [
            timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=60), timedelta(seconds=60)
        ]
        run.assert_failed("StepError", "RuntimeError: boom")


def test_fixed_policy() -> None:
    handler = Always()
    with engine_of(define(handler, retries=RetryPolicy.fixed(2, "10s")), spies_outside_steps=True) as engine:
        run, _ = start(engine)
        began = engine.now
        engine.settle()
        assert handler.attempts == [0, 1, 2]
        assert run_delays(engine.store, run.run_id) == [timedelta(seconds=10)] * 2
        run.assert_failed("RuntimeError", "boom")
        assert run.ended_at == began + timedelta(seconds=20)  # on virtual time: two 10 s waits, no more
        replays(engine, run)


def test_fixed_policy_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy.fixed(3, timedelta(minutes=1), jitter="5s")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(1)
    for failures in (1, 2, 3):
        at = policy.retry_at(RuntimeError(), failures, now, rng)
        assert at is not None and now + timedelta(minutes=1) <= at <= now + timedelta(minutes=1, seconds=5)
    assert policy.retry_at(RuntimeError(), 4, now, rng) is None


def test_zero_retries_fail_at_the_first_error() -> None:
    with engine_of(define(one_step(), retries=0)) as engine:
        body = engine.stub("s", raises=RuntimeError("boom"))
        run, ran = start(engine)
        assert ran == 1
        assert body.attempts == [0]
        run.assert_failed("StepError", "RuntimeError: boom")
        assert [(a.attempt, a.status) for a in run.attempts] == [(0, "failed")]
        assert engine.next_timer() is None


# -- steering errors ------------------------------------------------------------------------------


def test_non_retriable_error_in_a_step_fails_at_once(backend: str) -> None:
    with engine_of(define(one_step("charge")), store=backend) as engine:
        body = engine.stub("charge", raises=NonRetriableError("card declined"))
        run, ran = start(engine)
        assert ran == 1
        assert body.attempts == [0]
        run.assert_failed("StepError")
        assert run.error is not None
        assert run.error["message"] == "step 'charge' failed: NonRetriableError: card declined"
        assert "step 'charge' failed: NonRetriableError: card declined" in run.error["stack"]
        assert [(a.attempt, a.status) for a in run.attempts] == [(0, "failed")]  # no errored attempt
        assert [e for e in engine.store.read_stream(r.run_stream(run.run_id)) if e.type == r.STEP_ERRORED] == []
        assert engine.next_timer() is None


def test_non_retriable_error_outside_steps_fails_at_once(backend: str) -> None:
    handler = Always(lambda: NonRetriableError("bad input"))
    with engine_of(define(handler), store=backend, spies_outside_steps=True) as engine:
        run, ran = start(engine)
        assert ran == 1
        assert handler.attempts == [0]
        run.assert_failed("NonRetriableError")
        assert run.error is not None and run.error["message"] == "bad input"
        assert engine.next_timer() is None
        replays(engine, run)


def test_non_retriable_error_subclass_fails_at_once() -> None:
    class Declined(NonRetriableError):
        pass

    handler = Always(lambda: Declined("no"))
    with engine_of(define(handler), spies_outside_steps=True) as engine:
        run, _ = start(engine)
        assert handler.attempts == [0]
        run.assert_failed("Declined", "no")
        replays(engine, run)


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
def test_retry_after_error_sets_the_retry_time(retry_after: Any, expected: timedelta) -> None:
    with engine_of(define(one_step())) as engine:
        # body=, not raises=RetryAfterError(...): the stub copies a raises= instance with copy.copy,
        # which cannot rebuild a RetryAfterError (its retry_after is not in args)
        engine.stub("s", body=raising(lambda: RetryAfterError("rate limited", retry_after)))
        run, _ = start(engine)
        assert step_delays(run, "s") == [expected]
        [attempt] = run.step_attempts("s")
        assert attempt.error is not None and attempt.error["name"] == "RetryAfterError"
        assert engine.next_timer() == engine.now + expected
        # on virtual time: no retry a microsecond early, the retry at the time
        assert engine.advance(expected - timedelta(microseconds=1)) == 0
        engine.advance(timedelta(microseconds=1))
        assert len(run.step_attempts("s")) == 2


def test_retry_after_error_with_a_datetime() -> None:
    with engine_of(define(one_step())) as engine:
        moments = iter([engine.now + timedelta(minutes=10), engine.now - timedelta(hours=1)])
        engine.stub("s", body=raising(lambda: RetryAfterError("later", next(moments))))
        run, _ = start(engine)
        assert engine.next_timer() == engine.now + timedelta(minutes=10)
        engine.advance_to_next_timer()
        # a time in the past is clamped to one second from now
        assert step_delays(run, "s") == [timedelta(minutes=10), RETRY_AFTER_MIN]


def test_retry_after_error_outside_steps() -> None:
    handler = Always(lambda: RetryAfterError("busy", 42_000))
    with engine_of(define(handler, retries=1), spies_outside_steps=True) as engine:
        run, _ = start(engine)
        engine.settle()
        assert run_delays(engine.store, run.run_id) == [timedelta(seconds=42)]
        assert handler.attempts == [0, 1]  # RetryAfterError still counts against the retries
        run.assert_failed("RetryAfterError", "busy")
        replays(engine, run)


def test_an_unreadable_retry_after_falls_back_to_the_backoff_table() -> None:
    policy = RetryPolicy(jitter=0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for retry_after in (datetime(2026, 1, 1), "garbage"):
        at = policy.retry_at(RetryAfterError("x", retry_after), 1, now, random.Random(0))  # type: ignore[arg-type]
        assert at == now + timedelta(seconds=15)


# -- StepError inside the function ------------------------------------------------------------------


def test_a_failed_step_can_be_caught_and_the_run_continues(backend: str) -> None:
    compensated: list[str] = []

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("reserve", lambda: "reserved")
        except StepError as error:
            failed_step = error.step_id
            ctx.step.run("compensate", lambda: compensated.append(failed_step) or "refunded")
            return {"failed": error.step_id, "name": error.name, "message": error.message}
        return "reserved"

    with engine_of(define(handler, retries=1), store=backend) as engine:
        body = engine.stub("reserve", raises=ValueError("out of stock"))
        run, _ = start(engine)
        engine.settle()
        run.assert_completed({"failed": "reserve", "name": "ValueError", "message": "out of stock"})
        run.assert_step("compensate", output="refunded", attempts=1)
        assert compensated == ["reserve"]
        assert body.attempts == [0, 1]


def test_a_caught_step_error_is_replayed_the_same_way(backend: str) -> None:
    """After a later suspension, the replay raises the recorded StepError again without running the step."""
    observed: list[tuple[str, str, str]] = []

    def handler(ctx: Context) -> Any:
        try:
            ctx.step.run("a", lambda: "a")
        except StepError as error:
            observed.append((error.step_id, error.name, error.message))
        return ctx.step.run("later", lambda: "later ok")

    with engine_of(define(handler, retries=1), store=backend, spies_outside_steps=True) as engine:
        body = engine.stub("a", raises=ValueError("nope"))
        later = engine.stub("later", fails=1)
        run, _ = start(engine)
        engine.settle()
        run.assert_completed("later ok").assert_step("later", attempts=2)
        assert body.attempts == [0, 1]
        assert later.calls == 2
        assert observed == [("a", "ValueError", "nope")] * 2
        replays(engine, run)


def test_step_error_history_lists_every_attempt() -> None:
    with engine_of(define(one_step(), retries=2)) as engine:
        engine.stub("s", raises=RuntimeError("boom"))
        run, _ = start(engine)
        engine.settle()
        assert [(a.step, a.attempt, a.status) for a in run.attempts] == [
            ("s", 0, "errored"), ("s", 1, "errored"), ("s", 2, "failed"),
        ]
        assert all(a.retry_at for a in run.attempts[:2]) and run.attempts[2].retry_at is None
