"""Run semantics as properties, on the synchronous Engine, against every backend.

Hypothesis generates functions as sequences of steps, each with a failure plan (succeeds; fails
k times then succeeds; fails for ever; raises NonRetriableError, possibly after k retriable
failures; retriable failures raised as ValueError or RetryAfterError; a step may be wrapped by
the function in ``try/except StepError``), plus an optional failure of the code outside steps,
and checks:

a. an uninterrupted run ends as a plain-Python reference model of the semantics says (outcome,
   every step's output or error, failure counters, how many attempts each step body got), and
   replays only after a suspension (invocations = 1 + retries waited for);
b. a crash at any commit (before or after the store made it durable, in the first engine or
   again during recovery) and a recovery by a new Engine on the same store ends exactly as the
   uninterrupted run; no step attempt whose entry was in the log at a crash runs again after it;
   the log records each step attempt once (exactly-once observation); retries keep their time;
c. after every invocation, the state folded from the log equals the live state the invocation
   ended with;
d. the projections equal a rebuild from the log, and the ``runs`` row agrees with the outcome.

The failure plans depend only on ``ctx.attempt`` (which the log determines), never on counters
kept in memory, so a crash cannot change what the code does on its next attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from steplog.engine import (
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
from steplog.engine.invocation import Outcome
from steplog.engine.state import RunState, fold
from steplog.eventstore import EventStore, MemoryEventStore, SqliteEventStore, parse_time

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BACKOFF = timedelta(seconds=1)
RETRY_AFTER = timedelta(seconds=3)
EVENT_NAME = "test/go"
MAX_WAKES = 200
BACKENDS = ["memory", "sqlite"]
# Each example opens its own SQLite files: in memory-backed /dev/shm when there is one (creating a
# database costs ~3x more on disk), which changes nothing of what is tested.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# The default profile gets a budget that keeps this file well under a minute; the ci and long
# profiles (tests/conftest.py) set their own number of examples.
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
MODEL_EXAMPLES = 200 if _PROFILE == "default" else settings().max_examples
CRASH_EXAMPLES = 200 if _PROFILE == "default" else settings().max_examples


# -- generated functions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    id: str
    failures: int
    """Retriable failures before the final behaviour."""
    final: str
    """``ok`` (returns), ``nonretriable`` (raises NonRetriableError) or ``forever`` (keeps failing)."""
    retry_after: bool
    """Retriable failures raise RetryAfterError(…, RETRY_AFTER) instead of ValueError."""
    caught: bool
    """The function catches this step's StepError and goes on."""
    value: Any = None
    """Part of the step's output: any value JSON can encode, tuples and int keys included."""


@dataclass(frozen=True)
class FunctionPlan:
    steps: tuple[StepPlan, ...]
    retries: int
    outer_at: int
    """The code outside steps may fail just before step ``outer_at`` (len(steps): after the last)."""
    outer_failures: int
    """It fails while ``ctx.attempt`` is below this (0: never)."""
    outer_nonretriable: bool
    """It raises NonRetriableError (once) instead."""
    is_async: bool
    outer_retry_after: bool = False
    """Its retriable failures raise RetryAfterError(…, RETRY_AFTER) instead of ValueError."""


step_plans = st.builds(
    StepPlan,
    id=st.sampled_from(["a", "b", "c"]),  # repeats exercise the occurrence counter (a, a:1, ...)
    failures=st.sampled_from([0, 0, 1, 2, 3]),
    final=st.sampled_from(["ok", "ok", "ok", "ok", "nonretriable", "forever"]),
    retry_after=st.booleans(),
    caught=st.booleans(),
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=4),
        lambda children: (
            st.lists(children, max_size=3)
            | st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), children, max_size=3)
        ),
        max_leaves=6,
    ),
)


@st.composite
def function_plans(draw: st.DrawFn) -> FunctionPlan:
    steps = tuple(draw(st.lists(step_plans, max_size=5)))
    outer_failures = draw(st.sampled_from([0, 0, 1, 2, 3]))
    return FunctionPlan(
        steps=steps,
        retries=draw(st.integers(0, 3)),
        outer_at=draw(st.integers(0, len(steps))),
        outer_failures=outer_failures,
        outer_nonretriable=outer_failures > 0 and draw(st.booleans()),
        is_async=draw(st.booleans()),
        outer_retry_after=draw(st.booleans()),
    )


def step_keys(plan: FunctionPlan) -> list[str]:
    """Step keys as the semantics define them: the id, then ``id:1``, ``id:2`` for repeats."""
    seen: Counter[str] = Counter()
    keys = []
    for step in plan.steps:
        keys.append(step.id if seen[step.id] == 0 else f"{step.id}:{seen[step.id]}")
        seen[step.id] += 1
    return keys


def step_output(key: str, attempt: int, value: Any = None) -> dict[str, Any]:
    return {"key": key, "attempt": attempt, "value": value}


def as_json(value: Any) -> Any:
    """A value as the log gives it back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value))


def seen(value: Any) -> dict[str, Any]:
    """What the function records of a step's result: the value and its exact Python shape (so that
    a replay handing back a tuple where the first execution gave a list shows up)."""
    return {"value": value, "repr": repr(value)}


def retriable_message(key: str, attempt: int) -> str:
    return f"boom {key} attempt {attempt}"


def final_message(key: str, attempt: int) -> str:
    return f"stop {key} attempt {attempt}"


# -- the reference model -----------------------------------------------------------------------------


@dataclass
class Expected:
    status: str
    output: Any = None
    error: tuple[str, str] | None = None
    memo: dict[str, tuple[str, Any]] = field(default_factory=dict)
    """key -> ("output", value) or ("error", (name, message))."""
    step_failures: dict[str, int] = field(default_factory=dict)
    run_failures: int = 0
    attempts: set[tuple[str, int]] = field(default_factory=set)
    """(key, attempt) of every step body execution."""
    suspensions: int = 0


def model(plan: FunctionPlan, n: int) -> Expected:
    """What a run of ``plan`` must end with, computed without the engine."""
    expected = Expected("running")
    results: list[Any] = []

    def fail(error: tuple[str, str]) -> Expected:
        expected.status, expected.error = "failed", error
        return expected

    def outer() -> tuple[str, str] | None:
        if plan.outer_failures == 0:
            return None
        if plan.outer_nonretriable:
            return ("NonRetriableError", "outer gives up")
        while expected.run_failures < plan.outer_failures:
            if expected.run_failures + 1 > plan.retries:
                name = "RetryAfterError" if plan.outer_retry_after else "ValueError"
                return (name, f"outer attempt {expected.run_failures}")
            expected.run_failures += 1
            expected.suspensions += 1
        return None

    for index, (key, step) in enumerate(zip(step_keys(plan), plan.steps)):
        if index == plan.outer_at and (error := outer()) is not None:
            return fail(error)
        for attempt in itertools.count():
            expected.attempts.add((key, attempt))
            retriable = attempt < step.failures or step.final == "forever"
            if not retriable and step.final == "ok":
                output = as_json(step_output(key, attempt, step.value))
                expected.memo[key] = ("output", output)
                results.append(seen(output))
                break
            if retriable:
                name = "RetryAfterError" if step.retry_after else "ValueError"
                error = (name, retriable_message(key, attempt))
                if attempt + 1 <= plan.retries:
                    expected.step_failures[key] = attempt + 1
                    expected.suspensions += 1
                    continue
            else:
                error = ("NonRetriableError", final_message(key, attempt))
            expected.memo[key] = ("error", error)
            if not step.caught:
                return fail(("StepError", f"step {key!r} failed: {error[0]}: {error[1]}"))
            results.append({"caught": key, "name": error[0]})
            break
    if plan.outer_at == len(plan.steps) and (error := outer()) is not None:
        return fail(error)
    expected.status, expected.output = "completed", {"n": n, "results": results}
    return expected


# -- the function under test -------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every execution of a step body: (generation of the engine that ran it, key, attempt)."""

    generation: int = 0
    calls: list[tuple[int, str, int]] = field(default_factory=list)

    def attempts(self, generations: range | None = None) -> Counter[tuple[str, int]]:
        return Counter((k, a) for g, k, a in self.calls if generations is None or g in generations)


def build_function(plan: FunctionPlan, ledger: Ledger) -> FunctionDef:
    keys = step_keys(plan)

    def body(ctx: Any, key: str, step: StepPlan) -> Any:
        attempt = ctx.attempt
        ledger.calls.append((ledger.generation, key, attempt))
        if attempt < step.failures or step.final == "forever":
            if step.retry_after:
                raise RetryAfterError(retriable_message(key, attempt), RETRY_AFTER)
            raise ValueError(retriable_message(key, attempt))
        if step.final == "nonretriable":
            raise NonRetriableError(final_message(key, attempt))
        return step_output(key, attempt, step.value)

    async def async_body(ctx: Any, key: str, step: StepPlan) -> Any:
        await asyncio.sleep(0)
        return body(ctx, key, step)

    def outer(ctx: Any) -> None:
        if plan.outer_failures == 0:
            return
        if plan.outer_nonretriable:
            raise NonRetriableError("outer gives up")
        if ctx.attempt < plan.outer_failures:
            if plan.outer_retry_after:
                raise RetryAfterError(f"outer attempt {ctx.attempt}", RETRY_AFTER)
            raise ValueError(f"outer attempt {ctx.attempt}")

    def handler(ctx: Any) -> Any:
        results = []
        for index, (key, step) in enumerate(zip(keys, plan.steps)):
            if index == plan.outer_at:
                outer(ctx)
            try:
                results.append(seen(ctx.step.run(step.id, body, ctx, key, step)))
            except StepError as error:
                if not step.caught:
                    raise
                results.append({"caught": error.step_id, "name": error.name})
        if plan.outer_at == len(plan.steps):
            outer(ctx)
        return {"n": ctx.event.data["n"], "results": results}

    async def async_handler(ctx: Any) -> Any:
        results = []
        for index, (key, step) in enumerate(zip(keys, plan.steps)):
            if index == plan.outer_at:
                outer(ctx)
            try:
                results.append(seen(await ctx.step.run(step.id, async_body, ctx, key, step)))
            except StepError as error:
                if not step.caught:
                    raise
                results.append({"caught": error.step_id, "name": error.name})
        if plan.outer_at == len(plan.steps):
            outer(ctx)
        return {"n": ctx.event.data["n"], "results": results}

    policy = RetryPolicy(retries=plan.retries, backoff=[BACKOFF], jitter=0)
    return define_function(
        async_handler if plan.is_async else handler,
        fn_id="generated",
        trigger=TriggerEvent(event=EVENT_NAME),
        retries=policy,
    )


# -- engines, stores and crashes ---------------------------------------------------------------------


class Crash(Exception):
    """The simulated death of the process at a commit (an Exception: it travels like a store failure)."""


@dataclass(frozen=True)
class CrashPoint:
    at: int
    """The commit (1-based, counted per engine) at which the process dies."""
    durable: bool
    """True: the commit reached the store before the crash; False: it was lost."""


class RecordingEngine(Engine):
    """An Engine that checks, after every invocation that returns, that the live state equals the fold."""

    def __init__(self, store: EventStore, **options: Any) -> None:
        super().__init__(store, **options)
        self.outcomes: list[Outcome] = []

    def invoke(self, run_id: str, state: RunState | None = None) -> Outcome:
        state = state if state is not None else self.load(run_id)
        outcome = super().invoke(run_id, state)
        folded = fold(run_id, self.store.read_stream(r.run_stream(run_id)))
        assert attrs.asdict(folded) == attrs.asdict(state), "state folded from the log != live state"
        assert outcome.status == state.status
        if outcome.status == "completed":
            assert outcome.output == state.output
        self.outcomes.append(outcome)
        return outcome


def crashing_committer(store: EventStore, clock: ManualClock, crash: CrashPoint | None) -> Any:
    count = 0

    def commit(appends: Any) -> Any:
        nonlocal count
        count += 1
        if crash is not None and count == crash.at and not crash.durable:
            raise Crash(f"crash before commit {count}")
        results = store.commit(appends, now=clock.now())
        if crash is not None and count == crash.at:
            raise Crash(f"crash after commit {count}")
        return results

    commit.count = lambda: count  # type: ignore[attr-defined]
    return commit


@dataclass
class World:
    """One example: a store (reopened for each engine), a clock, the function, its ledger."""

    backend: str
    directory: Path
    plan: FunctionPlan
    n: int
    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    ledger: Ledger = field(default_factory=Ledger)
    store: EventStore | None = None
    sent: bool = False
    commits: int = 0
    invocations: int = 0
    crashes: list[set[tuple[str, int]]] = field(default_factory=list)
    """For each crash, the (key, attempt) of every step entry in the log at that moment."""
    last_engine: RecordingEngine | None = None

    def __post_init__(self) -> None:
        self.function = build_function(self.plan, self.ledger)
        self.event = {"name": EVENT_NAME, "id": f"evt-{self.n}", "data": {"n": self.n}}

    def open_store(self) -> EventStore:
        if self.backend == "memory":
            if self.store is None:
                self.store = MemoryEventStore(RunProjector())
            return self.store
        if self.store is not None:
            self.store.close()
        self.store = SqliteEventStore(self.directory / "runs.db", RunProjector(), synchronous="OFF")
        return self.store

    def run_engine(self, crash: CrashPoint | None) -> bool:
        """One process's life: start (recover), send if no send was acknowledged, run to the end.

        Returns True if it crashed.
        """
        store = self.open_store()
        registry = FunctionRegistry()
        registry.add(self.function)
        committer = crashing_committer(store, self.clock, crash)
        engine = RecordingEngine(store, registry=registry, clock=self.clock, committer=committer)
        self.last_engine = engine
        try:
            engine.start()
            if not self.sent:
                engine.send(self.event)
                self.sent = True
            engine.run_until_idle()
            for _ in range(MAX_WAKES):
                due = engine.next_timer()
                if due is None:
                    break
                engine.advance(max(due - self.clock.now(), timedelta(0)))
            else:
                pytest.fail(f"the run was still waiting after {MAX_WAKES} wake-ups")
        except Crash:
            self.crashes.append(committed_attempts(store))
            return True
        finally:
            self.commits += committer.count()
            self.invocations += len(engine.outcomes)
        return False

    def run_id(self) -> str:
        assert self.store is not None
        runs = self.store.query("runs")
        assert len(runs) == 1, f"one event must start one run, found {len(runs)}"
        return str(runs[0]["run_id"])

    def entries(self) -> list[Any]:
        assert self.store is not None
        return self.store.read_stream(r.run_stream(self.run_id()))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@contextmanager
def world(backend: str, plan: FunctionPlan, n: int = 7) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="steplog-props-", dir=SCRATCH) as directory:
        w = World(backend, Path(directory), plan, n)
        try:
            yield w
        finally:
            w.close()


def committed_attempts(store: EventStore) -> set[tuple[str, int]]:
    steps = (r.STEP_COMPLETED, r.STEP_ERRORED, r.STEP_FAILED)
    return {(e.data["step"], e.data["attempt"]) for e in store.read_all(types=steps)}


# -- checks ------------------------------------------------------------------------------------------


def summary(state: RunState) -> dict[str, Any]:
    """A run's state, with errors reduced to name and message (stacks differ between replays)."""

    def error(info: Any) -> Any:
        return None if info is None else (info["name"], info["message"])

    return {
        "status": state.status,
        "output": state.output,
        "error": error(state.error),
        "memo": {
            key: ("output", rec.output) if rec.error is None else ("error", error(rec.error))
            for key, rec in state.memo.items()
        },
        "step_failures": state.step_failures,
        "run_failures": state.run_failures,
    }


def expected_summary(expected: Expected) -> dict[str, Any]:
    return {
        "status": expected.status,
        "output": expected.output,
        "error": expected.error,
        "memo": expected.memo,
        "step_failures": expected.step_failures,
        "run_failures": expected.run_failures,
    }


def check_log(w: World) -> None:
    """The log of the run is well formed, whatever crashed: each step attempt recorded once, the
    attempts of a step numbered 0, 1, 2 ..., one start, one end and nothing after it, and every
    retry started no earlier than its retry_at."""
    entries = w.entries()
    types = [e.type for e in entries]
    assert types[0] == r.RUN_SCHEDULED
    assert types.count(r.RUN_SCHEDULED) == 1 and types.count(r.RUN_STARTED) == 1
    ends = [i for i, t in enumerate(types) if t in (r.RUN_COMPLETED, r.RUN_FAILED)]
    assert len(ends) == 1 and ends[0] == len(entries) - 1, f"one end, last: {types}"
    attempts: dict[str, list[int]] = {}
    retry_at: dict[str, datetime] = {}
    run_retry_at: datetime | None = None
    for entry in entries:
        data = entry.data
        if entry.type in (r.STEP_COMPLETED, r.STEP_ERRORED, r.STEP_FAILED):
            key = data["step"]
            seen = attempts.setdefault(key, [])
            assert data["attempt"] == len(seen), f"step {key}: attempts {seen} then {data['attempt']}"
            seen.append(data["attempt"])
            if key in retry_at:
                assert parse_time(data["started_at"]) >= retry_at.pop(key), f"step {key} retried early"
            if entry.type == r.STEP_ERRORED:
                retry_at[key] = parse_time(data["retry_at"])
        elif entry.type == r.RUN_ERRORED:
            run_retry_at = parse_time(data["retry_at"])
        elif entry.type == r.RUN_RESUMED and run_retry_at is not None:
            assert parse_time(data["at"]) >= run_retry_at, "run retried before its retry_at"
            run_retry_at = None
    assert not retry_at, f"steps errored and never retried: {retry_at}"
    finished = [e.data["step"] for e in entries if e.type in (r.STEP_COMPLETED, r.STEP_FAILED)]
    assert len(finished) == len(set(finished)), f"a step finished twice: {finished}"


def check_projections(w: World, state: RunState) -> None:
    assert w.store is not None
    assert w.store.rebuild_projections(apply=False) == []
    [row] = w.store.query("runs")
    assert row["status"] == state.status
    assert row["steps"] == len(state.memo)
    if state.status == "completed":
        assert json.loads(row["output"]) == state.output
    else:
        assert json.loads(row["error"]) == state.error
    assert w.store.query("queue") == [] and w.store.query("timers") == []


def final_state(w: World) -> RunState:
    return fold(w.run_id(), w.entries())


# -- properties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=MODEL_EXAMPLES)
@given(plan=function_plans(), n=st.integers(0, 1000))
def test_uninterrupted_run_matches_the_reference_model(backend: str, plan: FunctionPlan, n: int) -> None:
    expected = model(plan, n)
    note(f"expected: {expected}")
    event(f"run {expected.status}, {expected.suspensions} suspensions")
    with world(backend, plan, n) as w:
        assert w.run_engine(crash=None) is False
        state = final_state(w)
        assert summary(state) == expected_summary(expected)
        # the outcome the last invocation returned is the same
        outcome = w.last_engine.outcomes[-1]  # type: ignore[union-attr]
        assert outcome.status == expected.status
        if expected.status == "completed":
            assert outcome.output == expected.output
        else:
            assert outcome.error is not None and (outcome.error["name"], outcome.error["message"]) == expected.error
        # each step attempt ran exactly once; no other ran
        assert w.ledger.attempts() == Counter(expected.attempts)
        # the invocation continues after each commit: a new one starts only after a suspension
        assert w.invocations == 1 + expected.suspensions
        check_log(w)
        check_projections(w, state)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=CRASH_EXAMPLES)
@given(plan=function_plans(), data=st.data())
def test_any_crash_point_gives_the_uninterrupted_result(backend: str, plan: FunctionPlan, data: st.DataObject) -> None:
    with world(backend, plan) as clean:
        assert clean.run_engine(crash=None) is False
        reference = summary(final_state(clean))
        reference_attempts = clean.ledger.attempts()
        total_commits = clean.commits

    # each engine may die at one of its commits; the last one is left to finish
    crash_points = data.draw(
        st.lists(
            st.builds(CrashPoint, at=st.integers(1, total_commits), durable=st.booleans()), min_size=1, max_size=3
        ),
        label="crash points",
    )
    with world(backend, plan) as w:
        for generation, crash in enumerate([*crash_points, None]):
            w.ledger.generation = generation
            if not w.run_engine(crash):
                break
        note(f"crashes: {len(w.crashes)}, commits {w.commits} (clean: {total_commits})")
        event(f"{len(w.crashes)} crashes")
        for crash, _ in zip(crash_points, w.crashes):
            event("a durable commit was lost to its caller" if crash.durable else "a commit was lost")
        state = final_state(w)
        # b. the same outcome, outputs, errors and counters as the uninterrupted run
        assert summary(state) == reference
        # b. every attempt of the clean run ran, and no other
        assert set(w.ledger.attempts()) == set(reference_attempts)
        # b. no step attempt in the log at a crash ran again after it
        for crash_index, committed in enumerate(w.crashes):
            later = set(w.ledger.attempts(range(crash_index + 1, len(w.crashes) + 1)))
            assert not later & committed, f"committed attempts re-ran after crash {crash_index}: {later & committed}"
        # b. a step attempt ran at most once per engine that lived (at-least-once, never more)
        for attempt, count in w.ledger.attempts().items():
            assert count <= 1 + len(w.crashes), f"step attempt {attempt} ran {count} times"
        check_log(w)
        check_projections(w, state)


def test_the_model_covers_each_kind_of_ending() -> None:
    """The reference model itself, on hand-written plans (so that a wrong model cannot pass silently)."""
    ok = StepPlan("a", 0, "ok", False, False)
    shaped = StepPlan("c", 0, "ok", False, False, value=(1, {2: None}))
    flaky = StepPlan("a", 2, "ok", False, False)
    doomed = StepPlan("b", 0, "forever", True, False)
    stop = StepPlan("a", 1, "nonretriable", False, True)
    plan = FunctionPlan((ok, flaky), retries=2, outer_at=2, outer_failures=1, outer_nonretriable=False, is_async=False)
    expected = model(plan, 1)
    assert expected.status == "completed"
    assert expected.output == {"n": 1, "results": [seen(step_output("a", 0)), seen(step_output("a:1", 2))]}
    assert expected.step_failures == {"a:1": 2} and expected.run_failures == 1 and expected.suspensions == 3

    plan = FunctionPlan((doomed, ok), retries=1, outer_at=0, outer_failures=0, outer_nonretriable=False, is_async=True)
    expected = model(plan, 1)
    message = f"step 'b' failed: RetryAfterError: {retriable_message('b', 1)}"
    assert expected.status == "failed" and expected.error == ("StepError", message)
    assert expected.memo == {"b": ("error", ("RetryAfterError", retriable_message("b", 1)))}
    assert expected.attempts == {("b", 0), ("b", 1)}

    plan = FunctionPlan((stop, ok), retries=3, outer_at=2, outer_failures=3, outer_nonretriable=False, is_async=False)
    expected = model(plan, 1)
    assert expected.status == "completed" and expected.run_failures == 3
    assert expected.output["results"][0] == {"caught": "a", "name": "NonRetriableError"}

    plan = FunctionPlan((ok,), retries=1, outer_at=1, outer_failures=2, outer_nonretriable=False, is_async=False)
    assert model(plan, 1).error == ("ValueError", "outer attempt 1")

    plan = FunctionPlan((shaped,), retries=0, outer_at=0, outer_failures=0, outer_nonretriable=False, is_async=False)
    assert model(plan, 1).output["results"] == [seen({"key": "c", "attempt": 0, "value": [1, {"2": None}]})]
