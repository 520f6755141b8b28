"""Concurrency limits on the threaded client, ``steplog.Steplog``: a stateful test against a model,
and plain tests of priority, crashes, cancels and waits.

The state machine drives a real engine on a SQLite file with a manual clock. Its step bodies block
until the test tells them to finish or to sleep; a sampler in every body checks, as it enters,
that no key has more runs inside than its limit. Between rules the test waits until the engine is
quiescent (the bodies inside, the slots held and the runs queued agree with the model) and then
compares with the model: per key, the runs executing are the first ``limit`` ready runs in the
order admission saw them become ready (single constraint), or, with a second constraint of scope
"env" shared with a second function, every run that waits is held back by a full key or queued
behind one that is.

No test sleeps: waiting is on one condition, notified by the bodies and by the slots (an
instrumented ``Slots``), with timeouts only as safety nets that fail the test.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import pytest
import steplog.actors.runtime as runtime_module
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from steplog.actors.slots import Slots

import steplog

WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds
BLOCK = 120.0  # seconds: how long a body waits for the test's word before it gives up (a safety net)
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TICK = timedelta(milliseconds=1)
NAP = timedelta(hours=1)
MAX_ACTIVE = runtime_module.DEFAULT_MAX_ACTIVE

CHANGED = threading.Condition()
"""Notified whenever a body enters or leaves and whenever a slot is taken or given back."""


class Crash(BaseException):
    """Stands for the process dying in the middle of a step body (no step error is recorded)."""


class ObservedSlots(Slots):
    """The engine's slots, telling the test whenever they change (nothing else differs)."""

    def offer(self, run_id: str, owner: str, constraints: Any, rank: float) -> bool:
        admitted = super().offer(run_id, owner, constraints, rank)
        with CHANGED:
            CHANGED.notify_all()
        return admitted

    def release(self, run_id: str) -> list[tuple[str, str]]:
        started = super().release(run_id)
        with CHANGED:
            CHANGED.notify_all()
        return started


@pytest.fixture(autouse=True)
def _observed_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "Slots", ObservedSlots)


def wait_until(predicate: Callable[[], bool], what: Callable[[], str] | str, timeout: float = WAIT) -> None:
    with CHANGED:
        if CHANGED.wait_for(predicate, timeout=timeout):
            return
        message = what() if callable(what) else what
    raise AssertionError(f"not within {timeout} s: {message}")


def flush(client: steplog.Steplog) -> None:
    """Let every supervisor and the timer handle the messages already sent to them.

    Uses the runtime's internals: a supervisor ignores a message it does not know, and asking it
    one returns once everything queued before it was handled (a sleeping run's timer armed, a run
    woken by an event or the timer offered to admission).
    """
    supervisors = list(client._supervisors.values())
    for _ in range(2):  # twice: a release by one supervisor may tell another to start a run
        for supervisor in supervisors:
            supervisor.ask(object(), timeout=WAIT)
        client.next_timer()


# -- the state machine -------------------------------------------------------------------------------


@dataclass
class Run:
    fn: str
    k: str
    g: str
    created: int
    slept: int = -1
    """The order of its latest sleep, so of its timer's due time."""
    done: bool = False


@dataclass(frozen=True)
class Inside:
    fn: str
    k: str
    g: str
    thread: threading.Thread


class Bodies:
    """Step bodies that block until the test gives their run a command: "finish", "sleep", or
    "abandon" (raise Crash: the engine that ran it was stopped). Keyed by (generation, run): each
    client built on the file is a generation."""

    def __init__(self, sampler: Callable[[int, steplog.Steplog, str], list[str]]) -> None:
        self.sampler = sampler
        self.inside: dict[tuple[int, str], Inside] = {}
        self.commands: dict[tuple[int, str], str] = {}
        self.auto: str | None = None
        self.finished: Counter[str] = Counter()
        self.violations: list[str] = []

    def enter(self, gen: int, client: steplog.Steplog, run_id: str, fn: str, k: str, g: str) -> str:
        key = (gen, run_id)
        with CHANGED:
            if key in self.inside:
                self.violations.append(f"run {run_id} entered a body while already inside one")
            self.inside[key] = Inside(fn, k, g, threading.current_thread())
            self.violations.extend(self.sampler(gen, client, run_id))
            CHANGED.notify_all()
            released = CHANGED.wait_for(lambda: key in self.commands or self.auto is not None, timeout=BLOCK)
            if not released:
                self.violations.append(f"the body of {run_id} was never released")
            command = self.commands.pop(key, None) or self.auto or "finish"
            del self.inside[key]
            if command == "finish":
                self.finished[run_id] += 1
            CHANGED.notify_all()
        if command == "abandon":
            raise Crash()
        return command

    def command(self, gen: int, run_id: str, command: str) -> None:
        with CHANGED:
            assert (gen, run_id) in self.inside, f"{run_id} is not inside a body"
            self.commands[(gen, run_id)] = command
            CHANGED.notify_all()

    def abandon(self, gen: int) -> None:
        """Make every body of generation ``gen`` raise Crash; wait until they left and their threads ended."""
        with CHANGED:
            left = [key for key in self.inside if key[0] == gen]
            threads = [self.inside[key].thread for key in left]
            for key in left:
                self.commands[key] = "abandon"
            CHANGED.notify_all()
            gone = CHANGED.wait_for(lambda: not any(key[0] == gen for key in self.inside), timeout=WAIT)
        assert gone, "abandoned bodies did not leave"
        for thread in threads:
            thread.join(WAIT)  # the old engine's workers end; nothing of theirs reaches the file

    def release_all(self) -> None:
        with CHANGED:
            self.auto = "finish"
            CHANGED.notify_all()


class ConcurrencyMachine(RuleBasedStateMachine):
    """Function "f": ``Concurrency(limit=L, key="event.data.k")``, and optionally a second
    constraint ``Concurrency(limit=E_f, key="event.data.g", scope="env")`` shared with function "g"
    (``Concurrency(limit=E_g, key="event.data.g", scope="env")``).

    Model: ``ready`` holds the runs that are neither finished nor sleeping, in the order admission
    saw them become ready (sends at one clock time tie on rank and go by arrival; every sleep moves the
    clock 1 ms, so that each sleeper has its own due time); ``sleeping`` holds the sleepers in the
    order of their timers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="steplog-concurrency-"))
        self.db = self.dir / "steplog.db"
        self.clock = steplog.ManualClock(START)
        self.bodies = Bodies(self.sample)
        self.client: steplog.Steplog | None = None
        self.gen = 0
        self.limit = 1
        self.env: tuple[int, int] | None = None
        self.runs: dict[str, Run] = {}
        self.ready: list[str] = []
        self.sleeping: list[str] = []
        self.sleeps = 0
        self.settled: set[str] = set()
        self.broken = False
        self.peak: Counter[str] = Counter()

    # -- the engine ------------------------------------------------------------------------------

    def start_client(self) -> None:
        """Build and start a client on the file (a new generation of bodies)."""
        self.gen += 1
        gen = self.gen
        bodies = self.bodies
        client = steplog.Steplog(db=self.db, clock=self.clock, synchronous="NORMAL")

        def work(ctx: steplog.Context, fn: str) -> str:
            i = 0
            data = ctx.event.data
            while ctx.step.run(f"work-{i}", bodies.enter, gen, client, ctx.run_id, fn, data["k"], data["g"]) == "sleep":
                ctx.step.sleep(f"nap-{i}", NAP)
                i += 1
            return ctx.run_id

        concurrency = [steplog.Concurrency(limit=self.limit, key="event.data.k")]
        if self.env is not None:
            concurrency.append(steplog.Concurrency(limit=self.env[0], key="event.data.g", scope="env"))

        @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="app/f"), concurrency=concurrency)
        def f(ctx: steplog.Context) -> str:
            return work(ctx, "f")

        if self.env is not None:
            shared = [steplog.Concurrency(limit=self.env[1], key="event.data.g", scope="env")]

            @client.create_function(fn_id="g", trigger=steplog.TriggerEvent(event="app/g"), concurrency=shared)
            def g(ctx: steplog.Context) -> str:
                return work(ctx, "g")

        self.client = client
        client.start()

    # -- keys and limits -------------------------------------------------------------------------

    def keys_of(self, fn: str, k: str, g: str) -> list[tuple[str, int]]:
        """The (admission key, limit) pairs a run of ``fn`` holds while it executes."""
        if fn == "g":
            assert self.env is not None
            return [("max:g", MAX_ACTIVE), (f"env:{g}", self.env[1])]
        keys = [("max:f", MAX_ACTIVE), (f"fn:f:0:{k}", self.limit)]
        if self.env is not None:
            keys.append((f"env:{g}", self.env[0]))
        return keys

    def bound(self, key: str) -> int:
        """The most runs that may ever hold ``key`` at once."""
        if key.startswith("max:"):
            return MAX_ACTIVE
        if key.startswith("fn:"):
            return self.limit
        assert self.env is not None
        return max(self.env)

    def held(self, run_ids: Iterator[str] | list[str] | set[str]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for run_id in run_ids:
            run = self.runs[run_id]
            counts.update(key for key, _ in self.keys_of(run.fn, run.k, run.g))
        return dict(counts)

    # -- the sampler (in the worker threads, under CHANGED) -------------------------------------------

    def sample(self, gen: int, client: steplog.Steplog, entering: str) -> list[str]:
        inside = [body for (g, _), body in self.bodies.inside.items() if g == gen]
        counts: Counter[str] = Counter()
        for body in inside:
            counts.update(key for key, _ in self.keys_of(body.fn, body.k, body.g))
        problems = []
        for key, count in counts.items():
            self.peak[key] = max(self.peak[key], count)
            if count > self.bound(key):
                problems.append(f"{entering} entered: {count} bodies inside for {key} (limit {self.bound(key)})")
        for key, count in client.slots.counts().items():
            if count > self.bound(key):
                problems.append(f"{entering} entered: {count} slots held for {key} (limit {self.bound(key)})")
        return problems

    # -- the model -------------------------------------------------------------------------------------

    def expected_executing(self) -> list[str]:
        """Single constraint: per key, the first ``limit`` ready runs."""
        taken: Counter[str] = Counter()
        executing = []
        for run_id in self.ready:
            k = self.runs[run_id].k
            if taken[k] < self.limit:
                taken[k] += 1
                executing.append(run_id)
        return executing

    def current(self) -> set[str]:
        return {run_id for (g, run_id) in self.bodies.inside if g == self.gen}

    def quiescent(self) -> bool:
        assert self.client is not None
        current = self.current()
        ready = set(self.ready)
        if self.env is None:
            if current != set(self.expected_executing()):
                return False
        elif not current <= ready:
            return False
        slots = self.client.slots
        if slots.counts() != self.held(current) or slots.waiting_count() != len(ready - current):
            return False
        return self.env is None or self.every_wait_justified(current)

    def every_wait_justified(self, current: set[str]) -> bool:
        """Each waiting run has a full key (for its own limit), or shares a key with a run that
        waits justly (it queues behind it): nothing waits while it could run."""
        held = self.held(current)
        waiting = [run_id for run_id in self.ready if run_id not in current]
        keys = {run_id: self.keys_of(self.runs[run_id].fn, self.runs[run_id].k, self.runs[run_id].g) for run_id in waiting}
        justified = {r for r in waiting if any(held.get(key, 0) >= limit for key, limit in keys[r])}
        blocked_keys = {key for r in justified for key, _ in keys[r]}
        grew = True
        while grew:
            grew = False
            for r in waiting:
                if r not in justified and any(key in blocked_keys for key, _ in keys[r]):
                    justified.add(r)
                    blocked_keys.update(key for key, _ in keys[r])
                    grew = True
        return len(justified) == len(waiting)

    def describe(self) -> str:
        assert self.client is not None
        names = {run_id: f"#{run.created}({run.fn},{run.k},{run.g})" for run_id, run in self.runs.items()}
        return (
            f"limit={self.limit} env={self.env}\n"
            f"  ready (model order)={[names[r] for r in self.ready]}\n"
            f"  expected executing={[names[r] for r in self.expected_executing()] if self.env is None else '-'}\n"
            f"  inside={sorted(names.get(r, r) for r in self.current())}\n"
            f"  sleeping={[names[r] for r in self.sleeping]}\n"
            f"  slots={self.client.slots.counts()} waiting={self.client.slots.waiting_count()}\n"
            f"  violations={self.bodies.violations}"
        )

    def settle(self) -> None:
        """Wait until the engine is quiescent and agrees with the model; fail if it never does."""
        assert self.client is not None
        with CHANGED:
            settled = CHANGED.wait_for(self.quiescent, timeout=WAIT)
        if settled:
            flush(self.client)
            with CHANGED:
                settled = CHANGED.wait_for(self.quiescent, timeout=WAIT)
        with CHANGED:
            self.broken = not settled or bool(self.bodies.violations)
            assert settled, f"the engine never agreed with the model:\n{self.describe()}"
            assert not self.bodies.violations, self.describe()
            self.settled = set(self.expected_executing()) if self.env is None else self.current()

    def executing(self) -> list[str]:
        """The runs executing at the last settle, in the order they were sent (the model's, with one
        constraint; as observed, with an env-scoped one)."""
        return sorted(self.settled, key=lambda run_id: self.runs[run_id].created)

    # -- rules ---------------------------------------------------------------------------------------

    @initialize(limit=st.integers(1, 3), shared=st.booleans(), env=st.tuples(st.integers(1, 3), st.integers(1, 3)))
    def setup(self, limit: int, shared: bool, env: tuple[int, int]) -> None:
        self.limit, self.env = limit, env if shared else None
        self.start_client()

    @rule(fn=st.sampled_from(["f", "g"]), k=st.sampled_from(["a", "a", "b"]), g=st.sampled_from(["x", "x", "y"]))
    def send(self, fn: str, k: str, g: str) -> None:
        assert self.client is not None
        if self.env is None:
            fn = "f"
        [event_id] = self.client.send({"name": f"app/{fn}", "data": {"k": k, "g": g}})
        [handle] = self.client.runs_for_event(event_id)
        self.runs[handle.run_id] = Run(fn, k, g, created=len(self.runs))
        self.ready.append(handle.run_id)
        self.settle()

    @precondition(lambda self: bool(self.executing()))
    @rule(index=st.integers(0, 5))
    def finish(self, index: int) -> None:
        executing = self.executing()
        run_id = executing[index % len(executing)]
        self.bodies.command(self.gen, run_id, "finish")
        self.ready.remove(run_id)
        self.runs[run_id].done = True
        self.settle()

    @precondition(lambda self: bool(self.executing()))
    @rule(index=st.integers(0, 5))
    def sleep(self, index: int) -> None:
        """The run sleeps an hour: it gives its slots back, and takes them again when it wakes."""
        assert self.client is not None
        executing = self.executing()
        run_id = executing[index % len(executing)]
        self.client.advance(TICK, wait=False)  # each sleeper has its own due time
        self.bodies.command(self.gen, run_id, "sleep")
        self.ready.remove(run_id)
        self.sleeping.append(run_id)
        self.runs[run_id].slept = self.sleeps
        self.sleeps += 1
        self.settle()

    @precondition(lambda self: bool(self.sleeping))
    @rule()
    def wake(self) -> None:
        """Every sleeper wakes; the timer offers them in the order of their due times."""
        assert self.client is not None
        self.client.advance(2 * NAP, wait=False)
        self.ready.extend(self.sleeping)
        self.sleeping.clear()
        self.settle()

    @precondition(lambda self: bool(self.ready or self.sleeping))
    @rule()
    def restart(self) -> None:
        """The process dies with bodies blocked (stop without waiting), and a new client takes over
        the file; the sleepers keep their timers.

        An invocation records its start (run.started, run.resumed) with its first commit, here the
        step's result: so a run interrupted in its body is still "queued" in the log if it never
        slept, and "waiting" on its past-due timer if it did, exactly like a ready run that had no
        slot yet. Recovery offers the queued ones first (by queue position, so by send), then the
        due timers (by due time, so by sleep).
        """
        assert self.client is not None
        event(f"restart with {len(self.current())} bodies inside and {len(self.ready)} ready runs")
        self.client.stop(timeout=0)
        self.bodies.abandon(self.gen)
        self.client = None
        never_slept = sorted((r for r in self.ready if self.runs[r].slept < 0), key=lambda r: self.runs[r].created)
        woken = sorted((r for r in self.ready if self.runs[r].slept >= 0), key=lambda r: self.runs[r].slept)
        self.ready = never_slept + woken
        self.start_client()
        self.settle()

    # -- the end ---------------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.client is not None and not self.broken:  # else the failure is reported as it is
                self.drain_and_check()
        finally:
            self.bodies.release_all()
            if self.client is not None:
                self.client.stop(timeout=WAIT)
            shutil.rmtree(self.dir, ignore_errors=True)

    def drain_and_check(self) -> None:
        client = self.client
        assert client is not None
        self.bodies.release_all()
        client.advance(2 * NAP, wait=False)
        assert client.run_until_idle(timeout=WAIT), "the engine did not become idle once every body was released"
        assert client.slots.counts() == {}
        assert client.slots.waiting_count() == 0
        rows = client.list_runs(limit=None)
        assert sorted(row["run_id"] for row in rows) == sorted(self.runs)
        assert {row["run_id"]: (row["status"], row["output"]) for row in rows} == {
            run_id: ("completed", run_id) for run_id in self.runs
        }
        assert self.bodies.finished == Counter(dict.fromkeys(self.runs, 1)), "a run did not finish exactly once"
        assert not self.bodies.violations
        event("env-scoped key shared by two functions" if self.env is not None else "one key per value")
        full = [key for key, count in self.peak.items() if count >= self.bound(key) and not key.startswith("max:")]
        event("a key reached its limit" if full else "no key reached its limit")


def test_concurrency_limits_against_a_model() -> None:
    run_state_machine_as_test(
        ConcurrencyMachine,
        settings=settings(
            max_examples=25, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


# -- plain tests -------------------------------------------------------------------------------------


class Gate:
    """Step bodies that block until the test releases them by name; the order they entered."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.inside: set[str] = set()
        self.released: set[str] = set()
        self.open = False

    def body(self, name: str) -> str:
        with CHANGED:
            self.entered.append(name)
            self.inside.add(name)
            CHANGED.notify_all()
            CHANGED.wait_for(lambda: name in self.released or self.open, timeout=BLOCK)
            self.inside.discard(name)
            CHANGED.notify_all()
        return name

    def wait_entered(self, count: int, timeout: float = WAIT) -> list[str]:
        wait_until(
            lambda: len(self.entered) >= count, lambda: f"{count} bodies entered; entered: {self.entered}", timeout
        )
        with CHANGED:
            return list(self.entered)

    def release(self, name: str) -> None:
        with CHANGED:
            self.released.add(name)
            CHANGED.notify_all()

    def open_all(self) -> None:
        with CHANGED:
            self.open = True
            CHANGED.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.open_all()  # before the client stops: a failed test must leave no body blocked


@pytest.fixture
def gate() -> Gate:
    return Gate()


def run_of(client: steplog.Steplog, event_id: str) -> str:
    [handle] = client.runs_for_event(event_id)
    return handle.run_id


def test_priority_orders_the_queue_then_arrival(db_path: Path, clock: steplog.ManualClock, gate: Gate) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(
        fn_id="p", trigger=steplog.TriggerEvent(event="app/p"),
        concurrency=[steplog.Concurrency(limit=1, key="event.data.k")], priority=steplog.Priority(run="event.data.p"),
    )
    def p(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    def event(name: str, priority: int) -> dict[str, Any]:
        return {"name": "app/p", "data": {"k": "u", "p": priority, "name": name}}

    with client, gate:
        client.send(event("first", 0))
        assert gate.wait_entered(1) == ["first"]
        queued = [("low", -30), ("a0", 0), ("hi1", 60), ("mid", 10), ("hi2", 60), ("b0", 0), ("top", 600),
                  ("clipped", 5000)]
        for name, priority in queued:
            client.send(event(name, priority))
        client.advance(30, wait=False)
        client.send(event("late", 60))  # ready 30 s after the others, 60 s of priority: ahead of p < 30
        # another key is not held back by the queue of "u"
        client.send({"name": "app/p", "data": {"k": "v", "p": -600, "name": "other-key"}})
        assert gate.wait_entered(2) == ["first", "other-key"]
        gate.release("other-key")
        wait_until(
            lambda: client.slots.waiting_count() == len(queued) + 1 and client.slots.counts() == {"fn:p:0:u": 1, "max:p": 1},
            lambda: f"every run of key u queued, other-key ended: {client.slots.counts()}",
        )

        expected = ["top", "clipped", "hi1", "hi2", "late", "mid", "a0", "b0", "low"]
        previous = "first"
        for position, name in enumerate(expected, start=3):
            gate.release(previous)
            assert gate.wait_entered(position)[-1] == name
            with CHANGED:
                assert gate.inside == {name}, "one run of key u at a time"
            previous = name
        gate.release(previous)
        assert client.run_until_idle(timeout=WAIT)
        assert client.slots.counts() == {}
        assert gate.entered == ["first", "other-key", *expected]
        assert {row["status"] for row in client.list_runs(limit=None)} == {"completed"}


@pytest.mark.parametrize("failure", ["step error", "crash"])
def test_a_failing_body_gives_its_slot_back_and_runs_again_later(
    db_path: Path, clock: steplog.ManualClock, gate: Gate, failure: str
) -> None:
    """A step error suspends the run for its retry; a crash (a BaseException out of user code)
    makes the supervisor restart it. Either way its slot goes to the next run at once, and the
    failed run queues for a slot again."""
    attempts: Counter[str] = Counter()
    client = steplog.Steplog(db=db_path, clock=clock)

    def body(name: str) -> str:
        attempts[name] += 1
        if name == "flaky" and attempts[name] == 1:
            if failure == "crash":
                raise Crash()
            raise ConnectionError("upstream down")
        return gate.body(name)

    @client.create_function(
        fn_id="c", trigger=steplog.TriggerEvent(event="app/c"),
        concurrency=[steplog.Concurrency(limit=1, key="event.data.k")],
    )
    def c(ctx: steplog.Context) -> str:
        return ctx.step.run("work", body, ctx.event.data["name"])

    with client, gate:
        [flaky_event, next_event] = client.send([
            {"name": "app/c", "data": {"k": "u", "name": "flaky"}},
            {"name": "app/c", "data": {"k": "u", "name": "next"}},
        ])
        flaky, following = run_of(client, flaky_event), run_of(client, next_event)
        assert gate.wait_entered(1) == ["next"]  # the slot of the failed attempt went to the next run
        assert attempts == {"flaky": 1, "next": 1}
        if failure == "step error":
            wait_until(lambda: client.slots.waiting_count() == 0, "nothing queued while flaky waits for its retry")
            assert client.get_run(flaky)["status"] == "waiting"
            client.advance(timedelta(minutes=2), wait=False)  # its retry is due: it queues behind "next"
        wait_until(lambda: client.slots.waiting_count() == 1, "flaky queued again")
        assert client.slots.counts() == {"fn:c:0:u": 1, "max:c": 1}
        assert attempts == {"flaky": 1, "next": 1}

        gate.release("next")
        assert gate.wait_entered(2) == ["next", "flaky"]
        gate.release("flaky")
        assert client.run(following).result(timeout=WAIT) == "next"
        assert client.run(flaky).result(timeout=WAIT) == "flaky"
        assert client.run_until_idle(timeout=WAIT)
        assert client.slots.counts() == {} and client.slots.waiting_count() == 0
        assert attempts == {"flaky": 2, "next": 1}


def test_cancelling_a_queued_run_takes_no_slot_from_others(
    db_path: Path, clock: steplog.ManualClock, gate: Gate
) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(
        fn_id="q", trigger=steplog.TriggerEvent(event="app/q"),
        concurrency=[steplog.Concurrency(limit=1, key="event.data.k")],
    )
    def q(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    with client, gate:
        ids = client.send([{"name": "app/q", "data": {"k": "u", "name": name}} for name in ("a", "b", "c")])
        a, b, c = (run_of(client, event_id) for event_id in ids)
        assert gate.wait_entered(1) == ["a"]
        wait_until(lambda: client.slots.waiting_count() == 2, "b and c queued")

        assert client.cancel(b) is True
        flush(client)
        # the cancel is recorded; b ends as cancelled when it is invoked, which, queued behind a
        # key at its limit, happens at its turn (its body does not run)
        assert client.get_run(b)["status"] in ("queued", "cancelled")
        assert client.slots.counts() == {"fn:q:0:u": 1, "max:q": 1}  # a keeps its slot; c does not start
        with CHANGED:
            assert gate.entered == ["a"]

        gate.release("a")
        assert gate.wait_entered(2) == ["a", "c"]  # the queue moved on past the cancelled run
        assert client.slots.counts() == {"fn:q:0:u": 1, "max:q": 1}
        gate.release("c")
        assert client.run_until_idle(timeout=WAIT)
        assert client.slots.counts() == {} and client.slots.waiting_count() == 0
        assert gate.entered == ["a", "c"]  # b's body never ran
        assert [client.get_run(run_id)["status"] for run_id in (a, b, c)] == ["completed", "cancelled", "completed"]


def test_a_run_waiting_for_an_event_holds_no_slot(db_path: Path, clock: steplog.ManualClock, gate: Gate) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(
        fn_id="w", trigger=steplog.TriggerEvent(event="app/w"),
        concurrency=[steplog.Concurrency(limit=1, key="event.data.k")],
    )
    def w(ctx: steplog.Context) -> Any:
        if ctx.event.data["name"] == "waiter":
            paid = ctx.step.wait_for_event("paid", event="app/paid", timeout="1h")
            return [paid is not None, ctx.step.run("after", gate.body, "waiter")]
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    with client, gate:
        [waiter_event] = client.send({"name": "app/w", "data": {"k": "u", "name": "waiter"}})
        waiter = run_of(client, waiter_event)
        assert client.run_until_idle(timeout=WAIT)
        assert client.get_run(waiter)["status"] == "waiting"
        assert client.slots.counts() == {}

        client.send({"name": "app/w", "data": {"k": "u", "name": "other"}})
        assert gate.wait_entered(1) == ["other"]  # same key, limit 1: it starts while the waiter waits

        client.send({"name": "app/paid"})  # the waiter wakes and must queue for the slot
        wait_until(lambda: client.slots.waiting_count() == 1, "the woken waiter queued")
        assert client.slots.counts() == {"fn:w:0:u": 1, "max:w": 1}
        with CHANGED:
            assert gate.entered == ["other"]

        gate.release("other")
        assert gate.wait_entered(2) == ["other", "waiter"]
        gate.release("waiter")
        assert client.run(waiter).result(timeout=WAIT) == [True, "waiter"]
        assert client.run_until_idle(timeout=WAIT)
        assert client.slots.counts() == {} and client.slots.waiting_count() == 0


@pytest.mark.parametrize("releasing", ["first", "second"])
def test_a_release_starts_the_run_it_admits_of_another_function(
    db_path: Path, clock: steplog.ManualClock, gate: Gate, releasing: str
) -> None:
    """Two functions share an env-scoped key with limit 1. When a run of one ends, the queued run
    of the other takes the slot and must start. (Regression: the supervisor built first kept a
    private empty mapping of supervisors, ``supervisors or {}``, and dropped the message that
    starts another function's run, which then held its slot forever.)"""
    client = steplog.Steplog(db=db_path, clock=clock)
    shared = [steplog.Concurrency(limit=1, key="event.data.g", scope="env")]

    @client.create_function(fn_id="first", trigger=steplog.TriggerEvent(event="app/first"), concurrency=shared)
    def first(ctx: steplog.Context) -> str:  # defined first: its supervisor is built first
        return ctx.step.run("work", gate.body, "first")

    @client.create_function(fn_id="second", trigger=steplog.TriggerEvent(event="app/second"), concurrency=shared)
    def second(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, "second")

    waiting = "second" if releasing == "first" else "first"
    client.start()
    try:
        client.send({"name": f"app/{releasing}", "data": {"g": "x"}})
        assert gate.wait_entered(1) == [releasing]
        client.send({"name": f"app/{waiting}", "data": {"g": "x"}})
        wait_until(lambda: client.slots.waiting_count() == 1, f"the run of {waiting} queued")

        gate.release(releasing)
        assert gate.wait_entered(2, timeout=2.0) == [releasing, waiting]
        assert client.slots.counts() == {"env:x": 1, f"max:{waiting}": 1}
        gate.release(waiting)
        assert client.run_until_idle(timeout=WAIT)
        assert client.slots.counts() == {}
        assert {row["status"] for row in client.list_runs(limit=None)} == {"completed"}
    finally:
        gate.open_all()
        client.stop(timeout=1.0)  # if the admitted run never starts, stop must not wait long


def test_a_shared_key_serves_its_waiting_runs_first_in_first_out(
    db_path: Path, clock: steplog.ManualClock, gate: Gate
) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(
        fn_id="f", trigger=steplog.TriggerEvent(event="app/f"),
        concurrency=[
            steplog.Concurrency(limit=1, key="event.data.k"),
            steplog.Concurrency(limit=1, key="event.data.g", scope="env"),
        ],
    )
    def f(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    @client.create_function(
        fn_id="g", trigger=steplog.TriggerEvent(event="app/g"),
        concurrency=[steplog.Concurrency(limit=1, key="event.data.g", scope="env")],
    )
    def g(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    client.start()
    try:
        client.send({"name": "app/f", "data": {"k": "a", "g": "x", "name": "f1"}})
        assert gate.wait_entered(1) == ["f1"]
        client.send({"name": "app/g", "data": {"g": "x", "name": "g1"}})  # waits for env:x
        client.send({"name": "app/f", "data": {"k": "a", "g": "x", "name": "f2"}})  # waits for fn:f:a, then env:x
        wait_until(lambda: client.slots.waiting_count() == 2, "g1 and f2 queued")

        gate.release("f1")  # frees fn:f:a and env:x: g1 queued first for env:x, which both need
        assert gate.wait_entered(2)[-1] == "g1"
    finally:
        gate.open_all()
        client.stop(timeout=1.0)


def test_two_constraints_of_a_function_with_equal_values_count_apart(
    db_path: Path, clock: steplog.ManualClock, gate: Gate
) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(
        fn_id="f", trigger=steplog.TriggerEvent(event="app/f"),
        concurrency=[
            steplog.Concurrency(limit=2, key="event.data.user"),
            steplog.Concurrency(limit=3, key="event.data.org"),
        ],
    )
    def f(ctx: steplog.Context) -> str:
        return ctx.step.run("work", gate.body, ctx.event.data["name"])

    client.start()
    try:
        # user "acme" of org "acme": 2 runs may execute (limit 2 per user, 3 per org)
        client.send([{"name": "app/f", "data": {"user": "acme", "org": "acme", "name": n}} for n in ("r1", "r2")])
        assert sorted(gate.wait_entered(2, timeout=2.0)) == ["r1", "r2"]  # both at once, in either order
    finally:
        gate.open_all()
        client.stop(timeout=1.0)
