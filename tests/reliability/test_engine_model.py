"""The whole engine against a plain-Python reference model, as a hypothesis state machine.

Issue 6 ("Reliability"), item 3. The machine drives the synchronous engine (``steplog.testing.TestEngine``)
on a manual clock, once on the in-memory store and once on SQLite, with two functions triggered by
the same event ``app/order``:

- ``pipeline``: step ``a``; a durable sleep ``nap`` (``data.nap`` seconds, none if 0); a
  ``wait_for_event`` ``reply`` for an ``app/reply`` with the same ``data.k`` (``data.wait`` seconds of
  timeout, none if 0); step ``b``. It returns ``{"a", "b", "reply"}`` (the reply's ``tag`` or None).
  2 retries per step, 10 s then 60 s apart, no jitter.
- ``echo``: step ``echo``; 1 retry, 5 s later.

Each event carries its own failure plan: ``data.fail[step]`` failed attempts before the step
succeeds (more failures than retries fail the run), ``data.crash[step]`` times the process dies
in the middle of the step's body (the body ran, nothing was committed). The step bodies count
their calls in test memory, which survives crashes.

Rules: send orders and replies (new ids, repeated ids within and after the 24 h dedupe window,
no id at all), alone or several in one send; send an event no function listens to; reply to a
listening run, also with the clock set to its deadline (or a microsecond short) before the timer
fired; advance the clock (by generated durations, exactly to the next due time or a microsecond
short of it, or to the edge of an id's dedupe window); cancel a run (live, ended, or just
scheduled); crash and reopen from the log (with downtime; right after a send was acknowledged; or
crash, then reply or cancel before anything ran).

The reference model (``EngineModel``) knows nothing of the engine: from the rules alone it says
which events are duplicates, which runs exist, and for each run its status, step attempts, body
calls, when it is next due (retry, sleep wake, wait expiry), what its wait received, its output
and its start and end times. After every rule:

- the live projections equal the projections rebuilt from the log (``rebuild_projections``);
- the ``runs``, ``events``, ``timers``, ``waits``, ``wakeups`` and ``queue`` tables equal the model;
- the log holds each step attempt once, numbered 0, 1, 2... as the model counts them;
- every step body ran exactly as often as the model says (attempts plus mid-step crashes): a
  completed step is never executed again;
- the engine's next timer is the model's next due time.

The ``tier`` (``--tier`` / ``STEPLOG_TIER``, or ``HYPOTHESIS_PROFILE=long``) sets how many examples
run: ``ci`` keeps the file to a minute or two, ``long`` runs thousands.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from steplog.engine import Context, FunctionDef, RetryPolicy, TriggerEvent, define_function
from steplog.engine import records as r
from steplog.eventstore import parse_time

from steplog.testing import TestEngine
from steplog.testing.harness import DEFAULT_START
from steplog.testing.strategies import durations
from steplog.testing.stubs import SimulatedCrash

# -- the functions under test ------------------------------------------------------------------

ORDER, REPLY, NOISE = "app/order", "app/reply", "app/noise"
KEYS = ("x", "y")
EVENT_IDS = ("id-1", "id-2")
TICK = timedelta(microseconds=1)
DEDUPE_WINDOW = timedelta(hours=24)
"""docs/architecture.md: an event whose id was recorded within 24 hours is a duplicate."""
PIPELINE_BACKOFF = (timedelta(seconds=10), timedelta(seconds=60))
ECHO_BACKOFF = (timedelta(seconds=5),)

BODY_CALLS: Counter[tuple[str, str]] = Counter()
"""(run id, step id) -> how many times the step's body was entered. Test memory: a crash keeps it.
Module-level, as the functions are; each example clears it."""


def step_body(ctx: Context, step: str) -> Callable[[], str]:
    """The body of a ``step.run`` step: dies mid-step ``data.crash[step]`` times, then fails
    ``data.fail[step]`` attempts, then returns ``step:n:attempt``."""
    data = ctx.event.data

    def body() -> str:
        calls = BODY_CALLS[(ctx.run_id, step)]
        BODY_CALLS[(ctx.run_id, step)] += 1
        crashes = data["crash"].get(step, 0)
        if calls < crashes:
            raise SimulatedCrash(f"the process dies in the middle of step {step!r}")
        attempt = calls - crashes
        if attempt < data["fail"].get(step, 0):
            raise RuntimeError(f"planned failure of {step!r}, attempt {attempt}")
        return f"{step}:{data['n']}:{attempt}"

    return body


def pipeline(ctx: Context) -> dict[str, Any]:
    data = ctx.event.data
    a = ctx.step.run("a", step_body(ctx, "a"))
    if data["nap"]:
        ctx.step.sleep("nap", data["nap"])
    reply = None
    if data["wait"]:
        reply = ctx.step.wait_for_event("reply", event=REPLY, match="data.k", timeout=data["wait"])
    b = ctx.step.run("b", step_body(ctx, "b"))
    return {"a": a, "b": b, "reply": None if reply is None else reply.data["tag"]}


def echo(ctx: Context) -> str:
    said: str = ctx.step.run("echo", step_body(ctx, "echo"))
    return said


FUNCTIONS: list[FunctionDef] = [
    define_function(pipeline, fn_id="pipeline", trigger=TriggerEvent(event=ORDER),
                    retries=RetryPolicy(retries=2, backoff=PIPELINE_BACKOFF, jitter=0)),
    define_function(echo, fn_id="echo", trigger=TriggerEvent(event=ORDER),
                    retries=RetryPolicy(retries=1, backoff=ECHO_BACKOFF, jitter=0)),
]

# -- the reference model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step a function takes: ``run`` a body, ``sleep`` or ``wait`` (for ``seconds``)."""

    kind: Literal["run", "sleep", "wait"]
    step: str
    seconds: int = 0


@dataclass(frozen=True)
class FunctionModel:
    """What the model knows of a function: its retries and which stages an event's data makes it take."""

    fn_id: str
    retries: int
    backoff: tuple[timedelta, ...]
    stages: Callable[[dict[str, Any]], list[Stage]]
    output: Callable[[dict[str, Any]], Any]

    def retry_delay(self, failures: int) -> timedelta | None:
        """How long after the ``failures``-th failure (1-based) the step runs again; None: it failed."""
        if failures > self.retries:
            return None
        return self.backoff[min(failures, len(self.backoff)) - 1]


def _pipeline_stages(data: dict[str, Any]) -> list[Stage]:
    stages = [Stage("run", "a")]
    if data["nap"]:
        stages.append(Stage("sleep", "nap", data["nap"]))
    if data["wait"]:
        stages.append(Stage("wait", "reply", data["wait"]))
    return [*stages, Stage("run", "b")]


MODEL_FUNCTIONS = (
    FunctionModel("pipeline", 2, PIPELINE_BACKOFF, _pipeline_stages,
                  lambda out: {"a": out["a"], "b": out["b"], "reply": out.get("reply")}),
    FunctionModel("echo", 1, ECHO_BACKOFF, lambda data: [Stage("run", "echo")], lambda out: out["echo"]),
)
"""The functions an ``app/order`` starts, in the model."""


@dataclass
class ModelEvent:
    internal_id: str
    user_id: str
    name: str
    data: dict[str, Any]
    duplicate: bool
    received_at: datetime


@dataclass
class ModelRun:
    """One run as it should be."""

    run_id: str
    function: FunctionModel
    data: dict[str, Any]
    due: datetime
    """When the engine must next invoke it (while live)."""
    status: str = "queued"
    stage: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    """Committed attempts per ``run`` step (what the log numbers 0, 1, 2...)."""
    crashes: Counter[str] = field(default_factory=Counter)
    """Mid-step crashes per ``run`` step (body calls that left no trace)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    wake_at: datetime | None = None
    expires_at: datetime | None = None
    listening: bool = False
    reply: dict[str, Any] | None = None
    """The data of the reply that resolved the wait."""
    signalled: bool = False
    """A wait was resolved: the run keeps a ``wakeups`` row until it ends."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    failed_step: str | None = None

    @property
    def live(self) -> bool:
        return self.status in ("queued", "waiting")

    @property
    def stages(self) -> list[Stage]:
        return self.function.stages(self.data)

    def body_calls(self, step: str) -> int:
        return self.attempts[step] + self.crashes[step]


class EngineModel:
    """The engine as it should behave, in plain Python: events, dedupe, runs, retries, sleeps, waits,
    cancels and crashes. It never calls the engine."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.events: dict[str, ModelEvent] = {}
        self.key_recorded_at: dict[str, datetime] = {}
        """Each event id's last accepted (not duplicate) send: the start of its dedupe window."""
        self.runs: dict[str, ModelRun] = {}
        """In the order they were scheduled."""

    # -- events --------------------------------------------------------------------------------

    def receive(self, internal_id: str, event: dict[str, Any]) -> bool:
        """Record an event accepted now; True if it is a duplicate (its id was accepted within the window)."""
        user_id = event.get("id")
        earlier = self.key_recorded_at.get(user_id) if user_id is not None else None
        duplicate = earlier is not None and self.now - earlier < DEDUPE_WINDOW
        if user_id is not None and not duplicate:
            self.key_recorded_at[user_id] = self.now
        self.events[internal_id] = ModelEvent(internal_id, user_id or internal_id, event["name"], event["data"],
                                              duplicate, self.now)
        return duplicate

    def functions_started_by(self, event: dict[str, Any], duplicate: bool) -> tuple[FunctionModel, ...]:
        return MODEL_FUNCTIONS if event["name"] == ORDER and not duplicate else ()

    def schedule(self, run_id: str, function: FunctionModel, data: dict[str, Any]) -> ModelRun:
        run = ModelRun(run_id, function, data, due=self.now)
        self.runs[run_id] = run
        return run

    def deliver(self, data: dict[str, Any]) -> list[ModelRun]:
        """A reply accepted now resolves every wait listening for its key whose deadline has not come."""
        resolved = []
        for run in self.runs.values():
            if run.listening and run.data["k"] == data["k"] and run.expires_at is not None and self.now < run.expires_at:
                run.listening, run.reply, run.signalled, run.due = False, data, True, self.now
                resolved.append(run)
        return resolved

    def cancel(self, run_id: str) -> bool:
        """A cancel request: a live run ends cancelled at once (it is woken to cancel); False if it had ended."""
        run = self.runs[run_id]
        if not run.live:
            return False
        run.status, run.ended_at, run.listening = "cancelled", self.now, False
        return True

    # -- time ----------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        return min((run.due for run in self.runs.values() if run.live), default=None)

    def run_until(self, until: datetime) -> None:
        """Let time pass to ``until``: each run invoked at each of its due times (overdue ones, after a
        crash with downtime, at once)."""
        start = self.now
        for run in self.runs.values():
            while run.live and run.due <= until:
                self.invoke(run, max(run.due, start))
        self.now = until

    def crash(self, downtime: timedelta) -> None:
        """Memory is lost, the log is kept: nothing changes but the time that passes while down."""
        self.now += downtime

    # -- one invocation ------------------------------------------------------------------------

    def invoke(self, run: ModelRun, at: datetime) -> None:
        if run.started_at is None:
            run.started_at = at
        stages = run.stages
        while run.stage < len(stages):
            if not self._take(run, stages[run.stage], at):
                return
            run.stage += 1
        run.status, run.ended_at = "completed", at

    def _take(self, run: ModelRun, stage: Stage, at: datetime) -> bool:
        """Take one stage at ``at``: True if it completed and the run goes on."""
        if stage.kind == "run":
            return self._attempt(run, stage.step, at)
        if stage.kind == "sleep":
            if run.wake_at is None:
                run.wake_at = at + timedelta(seconds=stage.seconds)
            return at >= run.wake_at or self._suspend(run, run.wake_at)
        if run.expires_at is None:
            run.expires_at, run.listening = at + timedelta(seconds=stage.seconds), True
            return self._suspend(run, run.expires_at)
        if run.reply is not None:
            run.outputs[stage.step] = run.reply["tag"]
            return True
        if at >= run.expires_at:
            run.listening = False
            run.outputs[stage.step] = None
            return True
        return self._suspend(run, run.expires_at)

    def _attempt(self, run: ModelRun, step: str, at: datetime) -> bool:
        run.crashes[step] = run.data["crash"].get(step, 0)  # each planned crash: the body runs, the process dies
        attempt = run.attempts[step]
        run.attempts[step] += 1
        if attempt >= run.data["fail"].get(step, 0):
            run.outputs[step] = f"{step}:{run.data['n']}:{attempt}"
            return True
        delay = run.function.retry_delay(attempt + 1)
        if delay is None:
            run.status, run.ended_at, run.failed_step = "failed", at, step
            return False
        return self._suspend(run, at + delay)

    @staticmethod
    def _suspend(run: ModelRun, due: datetime) -> bool:
        run.status, run.due = "waiting", due
        return False

    def expected_output(self, run: ModelRun) -> Any:
        return run.function.output(run.outputs) if run.status == "completed" else None


# -- the state machine -------------------------------------------------------------------------

SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
FAILS = st.one_of(st.just(0), st.just(0), st.integers(1, 3))
CRASHES = st.one_of(st.just(0), st.just(0), st.just(0), st.just(1))
PLANS = st.fixed_dictionaries({
    "fail": st.fixed_dictionaries({"a": FAILS, "b": FAILS, "echo": FAILS}),
    "crash": st.fixed_dictionaries({"a": CRASHES, "b": CRASHES, "echo": CRASHES}),
    "nap": st.sampled_from([0, 0, 5, 60]),
    "wait": st.sampled_from([0, 30, 30, 120]),
    "k": st.sampled_from(KEYS),
})
MAYBE_IDS = st.one_of(st.none(), st.sampled_from(EVENT_IDS))
POINTS = [timedelta(seconds=s) for s in (5, 10, 30, 60, 120)] + [DEDUPE_WINDOW]
ADVANCES = durations(timedelta(minutes=3), points=POINTS)
DOWNTIMES = st.sampled_from([timedelta(0), timedelta(0), timedelta(seconds=10), timedelta(seconds=90)])
STEP_ATTEMPTS = (r.STEP_COMPLETED, r.STEP_ERRORED, r.STEP_FAILED)


class EngineModelMachine(RuleBasedStateMachine):
    """Rules drive a TestEngine and the model side by side; the invariant compares them."""

    store_kind: ClassVar[Literal["memory", "sqlite"]] = "memory"

    def __init__(self) -> None:
        super().__init__()
        BODY_CALLS.clear()
        self._directory = tempfile.TemporaryDirectory(prefix="steplog-model-", dir=SCRATCH)
        path = Path(self._directory.name) / "steplog.db" if self.store_kind == "sqlite" else None
        self.engine = TestEngine(FUNCTIONS, store=self.store_kind, path=path, seed=0)
        self.model = EngineModel(self.engine.now)
        self.sent = 0
        self.tags = 0

    def teardown(self) -> None:
        self._record_statistics()
        self.engine.close()
        self._directory.cleanup()

    # -- helpers -------------------------------------------------------------------------------

    def _order(self, plan: dict[str, Any], event_id: str | None) -> dict[str, Any]:
        self.sent += 1
        return self._with_id({"name": ORDER, "data": {"n": self.sent, **plan}}, event_id)

    def _reply(self, key: str, event_id: str | None) -> dict[str, Any]:
        self.tags += 1
        return self._with_id({"name": REPLY, "data": {"k": key, "tag": self.tags}}, event_id)

    @staticmethod
    def _with_id(event: dict[str, Any], event_id: str | None) -> dict[str, Any]:
        return event if event_id is None else {**event, "id": event_id}

    def _send(self, sent: dict[str, Any]) -> str:
        """Send one event to the engine and the model (nothing runs yet); check the runs it started."""
        [internal_id] = self._send_all([sent])
        return internal_id

    def _send_all(self, events: list[dict[str, Any]]) -> list[str]:
        """Send events in one call (one commit), then take them in the model one by one, in order."""
        internal_ids = self.engine.send(events)
        assert len(internal_ids) == len(events)
        for internal_id, sent in zip(internal_ids, events, strict=True):
            self._accepted(internal_id, sent)
        return internal_ids

    def _accepted(self, internal_id: str, sent: dict[str, Any]) -> None:
        seen_before, near_the_edge = sent.get("id") in self.model.key_recorded_at, self._window_edge(sent)
        duplicate = self.model.receive(internal_id, sent)
        event("a duplicate event" if duplicate else "an event with an id" if "id" in sent else "an event without id")
        if seen_before and not duplicate:
            event("an id sent again after its 24 h window: accepted")
        if duplicate and near_the_edge:
            event("a duplicate in the last second of its window")
        for function in self.model.functions_started_by(sent, duplicate):
            runs = self.engine.runs_for(internal_id, function_id=function.fn_id)
            assert len(runs) == 1, f"{sent} started {len(runs)} {function.fn_id} runs, expected 1"
            self.model.schedule(runs[0].run_id, function, sent["data"])
        started = len(self.engine.runs_for(internal_id))
        expected = len(self.model.functions_started_by(sent, duplicate))
        assert started == expected, f"{sent} started {started} runs, expected {expected} (duplicate: {duplicate})"
        if sent["name"] == REPLY and not duplicate:
            resolved = self.model.deliver(sent["data"])
            if resolved:
                event("a reply resolved a wait")

    def _window_edge(self, sent: dict[str, Any]) -> bool:
        recorded = self.model.key_recorded_at.get(sent["id"]) if "id" in sent else None
        return recorded is not None and self.model.now - recorded >= DEDUPE_WINDOW - timedelta(seconds=1)

    def _run_now(self) -> None:
        self.engine.run_until_idle()
        self.model.run_until(self.model.now)

    def _crash(self, downtime: timedelta) -> None:
        self.engine.crash(downtime=downtime)
        self.model.crash(downtime)
        event("a crash" + (" with downtime" if downtime else ""))

    def _live(self) -> list[ModelRun]:
        return [run for run in self.model.runs.values() if run.live]

    def _listening(self) -> list[ModelRun]:
        return [run for run in self.model.runs.values() if run.listening]

    # -- rules: events -------------------------------------------------------------------------

    @rule(plan=PLANS, event_id=MAYBE_IDS)
    def send_order(self, plan: dict[str, Any], event_id: str | None) -> None:
        self._send(self._order(plan, event_id))
        self._run_now()

    @rule(key=st.sampled_from(KEYS), event_id=MAYBE_IDS)
    def send_reply(self, key: str, event_id: str | None) -> None:
        self._send(self._reply(key, event_id))
        self._run_now()

    @precondition(lambda self: bool(self._listening()))
    @rule(index=st.integers(0, 9), event_id=MAYBE_IDS)
    def reply_to_a_listening_run(self, index: int, event_id: str | None) -> None:
        listening = self._listening()
        self._send(self._reply(listening[index % len(listening)].data["k"], event_id))
        self._run_now()

    @rule(kinds=st.lists(st.sampled_from([ORDER, REPLY, NOISE]), min_size=2, max_size=4), plan=PLANS,
          key=st.sampled_from(KEYS), event_ids=st.lists(MAYBE_IDS, min_size=4, max_size=4))
    def send_several_at_once(self, kinds: list[str], plan: dict[str, Any], key: str,
                             event_ids: list[str | None]) -> None:
        """Events sent together: taken in order (a repeated id in the same send is a duplicate), and the
        runs they start have not begun when the replies among them arrive."""
        events = [self._order(plan, event_id) if kind == ORDER else self._reply(key, event_id) if kind == REPLY
                  else self._with_id({"name": NOISE, "data": {}}, event_id)
                  for kind, event_id in zip(kinds, event_ids, strict=False)]
        event("several events in one send")
        self._send_all(events)
        self._run_now()

    @rule(event_id=MAYBE_IDS)
    def send_noise(self, event_id: str | None) -> None:
        """An event no function is triggered by: recorded, starts nothing (and takes its id's window)."""
        self._send(self._with_id({"name": NOISE, "data": {}}, event_id))
        self._run_now()

    # -- rules: time ---------------------------------------------------------------------------

    @rule(delta=ADVANCES)
    def advance(self, delta: timedelta) -> None:
        self.engine.advance(delta)
        self.model.run_until(self.model.now + delta)

    @precondition(lambda self: self.model.next_due() is not None)
    @rule(short=st.booleans())
    def advance_to_next_due(self, short: bool) -> None:
        """Exactly to the model's next due time, or a microsecond short of it."""
        due = self.model.next_due()
        assert due is not None
        moment = max(due - TICK, self.model.now) if short else due
        self.engine.advance_to(moment)
        self.model.run_until(moment)

    @precondition(lambda self: bool(self._listening()))
    @rule(index=st.integers(0, 9), short=st.booleans(), event_id=MAYBE_IDS)
    def reply_at_a_deadline_before_its_timer_fires(self, index: int, short: bool, event_id: str | None) -> None:
        """The clock jumps to a listening wait's deadline (or a microsecond short of it) and nothing runs
        yet; then its reply arrives: at the deadline it is too late, even though the timeout has not
        fired. Other timers that came due on the way fire after the reply, at the new time."""
        listening = self._listening()
        run = listening[index % len(listening)]
        assert run.expires_at is not None
        moment = max(run.expires_at - TICK, self.model.now) if short else run.expires_at
        event("a reply at a wait's deadline" if moment == run.expires_at else "a reply just before a deadline")
        self.engine.clock.set(moment)
        self.model.now = moment
        self._send(self._reply(run.data["k"], event_id))
        self._run_now()

    @precondition(lambda self: bool(self.model.key_recorded_at))
    @rule(which=st.sampled_from(EVENT_IDS), offset=st.sampled_from([-TICK, timedelta(0), TICK]))
    def advance_to_the_dedupe_edge(self, which: str, offset: timedelta) -> None:
        """To where an id's 24 h dedupe window closes, a microsecond either side of it."""
        recorded = self.model.key_recorded_at.get(which) or min(self.model.key_recorded_at.values())
        moment = max(recorded + DEDUPE_WINDOW + offset, self.model.now)
        self.engine.advance_to(moment)
        self.model.run_until(moment)

    # -- rules: cancel -------------------------------------------------------------------------

    @precondition(lambda self: bool(self.model.runs))
    @rule(index=st.integers(0, 99), live_only=st.booleans())
    def cancel(self, index: int, live_only: bool) -> None:
        runs = self._live() if live_only else list(self.model.runs.values())
        if not runs:
            return
        run = runs[index % len(runs)]
        expected = self.model.cancel(run.run_id)
        event("a cancel of a live run" if expected else "a cancel of an ended run")
        assert self.engine.cancel(run.run_id) is expected, f"cancel of {run.run_id} ({run.status})"
        self.model.run_until(self.model.now)

    @precondition(lambda self: bool(self.model.runs))
    @rule(index=st.integers(0, 99), downtime=DOWNTIMES)
    def crash_then_cancel_before_anything_runs(self, index: int, downtime: timedelta) -> None:
        """A cancel request accepted after a restart, before the overdue timers fire: it wins."""
        self._crash(downtime)
        runs = list(self.model.runs.values())
        run = runs[index % len(runs)]
        expected = self.model.cancel(run.run_id)
        event("a cancel after a restart, before anything ran" + (" (of a live run)" if expected else ""))
        assert self.engine.engine.cancel(run.run_id) is expected, f"cancel of {run.run_id} ({run.status})"
        self._run_now()

    @rule(plan=PLANS, event_id=MAYBE_IDS)
    def send_order_and_cancel_before_it_runs(self, plan: dict[str, Any], event_id: str | None) -> None:
        internal_id = self._send(self._order(plan, event_id))
        for run in self.engine.runs_for(internal_id):
            assert self.model.cancel(run.run_id), f"{run.run_id} just scheduled is not live in the model"
            assert self.engine.engine.cancel(run.run_id), f"{run.run_id} just scheduled could not be cancelled"
            event("a cancel of a queued run")
        self._run_now()

    # -- rules: crashes ------------------------------------------------------------------------

    @rule(downtime=DOWNTIMES)
    def crash_and_reopen(self, downtime: timedelta) -> None:
        self._crash(downtime)
        self._run_now()

    @rule(order=st.booleans(), plan=PLANS, key=st.sampled_from(KEYS), event_id=MAYBE_IDS, downtime=DOWNTIMES)
    def send_then_crash(self, order: bool, plan: dict[str, Any], key: str, event_id: str | None,
                        downtime: timedelta) -> None:
        """The send is acknowledged; the process dies before anything runs."""
        self._send(self._order(plan, event_id) if order else self._reply(key, event_id))
        self._crash(downtime)
        self._run_now()

    @rule(key=st.sampled_from(KEYS), event_id=MAYBE_IDS, downtime=DOWNTIMES)
    def crash_then_reply_before_anything_runs(self, key: str, event_id: str | None, downtime: timedelta) -> None:
        """Time passed while down: a reply accepted before the overdue timers fire is too late for a
        wait whose deadline passed meanwhile, and in time for one whose deadline has not."""
        self._crash(downtime)
        self._send(self._reply(key, event_id))
        self._run_now()

    # -- the invariant ---------------------------------------------------------------------------

    @invariant()
    def engine_and_model_agree(self) -> None:
        assert self.engine.now == self.model.now, f"clock {self.engine.now}, model {self.model.now}"
        differences = self.engine.store.rebuild_projections(apply=False)
        assert differences == [], f"live projections differ from the log: {differences}"
        self._check_runs()
        self._check_events()
        self._check_timers_waits_and_wakeups()
        self._check_step_attempts()
        self._check_body_calls()
        assert self.engine.next_timer() == self.model.next_due(), (
            f"engine's next timer {self.engine.next_timer()}, model's {self.model.next_due()}")

    def _check_runs(self) -> None:
        rows = {row["run_id"]: row for row in self.engine.store.query("runs")}
        assert set(rows) == set(self.model.runs), f"runs {sorted(rows)}, model {sorted(self.model.runs)}"
        for run_id, run in self.model.runs.items():
            row = rows[run_id]
            seen = (row["function_id"], row["status"], _time(row["ended_at"]), _json(row["output"]))
            expected = (run.function.fn_id, run.status, run.ended_at, self.model.expected_output(run))
            assert seen == expected, f"run {run_id}: {seen}, model {expected}\n{self.engine.run(run_id).describe()}"
            if run.started_at is not None:
                assert _time(row["started_at"]) == run.started_at, f"run {run_id} started {row['started_at']}"
            if run.status == "failed":
                error = json.loads(row["error"])
                assert error["name"] == "StepError" and f"'{run.failed_step}'" in error["message"], error

    def _check_events(self) -> None:
        rows = {row["internal_id"]: row for row in self.engine.store.query("events")}
        seen = {key: (row["id"], row["name"], bool(row["duplicate"]), json.loads(row["data"]),
                      _time(row["received_at"])) for key, row in rows.items()}
        expected = {key: (e.user_id, e.name, e.duplicate, e.data, e.received_at) for key, e in self.model.events.items()}
        assert seen == expected

    def _check_timers_waits_and_wakeups(self) -> None:
        store, runs = self.engine.store, self.model.runs.values()
        timers = {row["run_id"]: _time(row["due_at"]) for row in store.query("timers")}
        assert timers == {run.run_id: run.due for run in runs if run.status == "waiting"}
        waits = {(row["run_id"], row["step"]): _time(row["expires_at"]) for row in store.query("waits")}
        assert waits == {(run.run_id, "reply"): run.expires_at for run in runs if run.listening}
        wakeups = {row["run_id"] for row in store.query("wakeups")}
        assert wakeups == {run.run_id for run in runs if run.live and run.signalled}
        assert store.query("queue") == []

    def _check_step_attempts(self) -> None:
        """Each ``run`` step attempt is in the log once, numbered from 0, as many as the model counts;
        no step of any kind completes twice."""
        logged: dict[tuple[str, str], list[int]] = {}
        completions: Counter[tuple[str, str]] = Counter()
        for entry in self.engine.store.read_all(types=STEP_ATTEMPTS):
            if entry.type == r.STEP_COMPLETED:
                completions[(r.stream_id(entry.stream), entry.data["step"])] += 1
            if entry.data["kind"] == "run":
                logged.setdefault((r.stream_id(entry.stream), entry.data["step"]), []).append(entry.data["attempt"])
        expected = {(run.run_id, step): list(range(count))
                    for run in self.model.runs.values() for step, count in run.attempts.items() if count}
        assert logged == expected
        assert all(count == 1 for count in completions.values()), f"steps completed twice: {+completions}"

    def _check_body_calls(self) -> None:
        """Bodies ran once per attempt plus once per mid-step crash: a completed step never runs again."""
        expected = {(run.run_id, step): run.body_calls(step)
                    for run in self.model.runs.values() for step in set(run.attempts) | set(run.crashes)
                    if run.body_calls(step)}
        assert dict(+BODY_CALLS) == expected

    # -- statistics ------------------------------------------------------------------------------

    def _record_statistics(self) -> None:
        for run in self.model.runs.values():
            event(f"a run of {run.function.fn_id}: {run.status}")
            if any(count > 1 for count in run.attempts.values()):
                event("a step was retried")
            if any(run.crashes.values()):
                event("a step crashed mid-body")
            if run.expires_at is not None:
                outcome = ("resolved" if run.reply is not None else "expired" if "reply" in run.outputs
                           else "cancelled" if run.status == "cancelled" else "pending")
                event(f"a wait {outcome}")
        if self.engine.crashes and currently_in_test_context():
            note(f"{self.engine.crashes} crashes")


def event(label: str) -> None:
    """Count ``label`` in hypothesis's statistics; nothing when a regression test replays rules by hand."""
    if currently_in_test_context():
        hypothesis_event(label)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# -- the two stores and the tiers ----------------------------------------------------------------


class MemoryStoreMachine(EngineModelMachine):
    store_kind = "memory"


class SqliteStoreMachine(EngineModelMachine):
    store_kind = "sqlite"


TIERS: dict[str, dict[str, tuple[int, int]]] = {
    # store -> (max_examples, stateful_step_count)
    "ci": {"memory": (150, 40), "sqlite": (75, 40)},
    "long": {"memory": (3000, 60), "sqlite": (1500, 60)},
}


def tier_settings(tier: str, store: str) -> settings:
    examples, steps = TIERS[tier][store]
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def default_tier() -> str:
    """STEPLOG_TIER, or ``long`` under HYPOTHESIS_PROFILE=long; ``ci`` otherwise."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "long":
        return "long"
    return os.environ.get("STEPLOG_TIER", "ci")


MemoryStoreMachine.TestCase.settings = tier_settings(default_tier(), "memory")
SqliteStoreMachine.TestCase.settings = tier_settings(default_tier(), "sqlite")
TestEngineModelOnMemory = MemoryStoreMachine.TestCase
TestEngineModelOnSqlite = SqliteStoreMachine.TestCase


@pytest.fixture(autouse=True, scope="module")
def _settings_for_the_tier(tier: str) -> Iterator[None]:
    """``--tier long`` on the command line wins over the environment (a TestCase reads its settings
    when it runs)."""
    if default_tier() != "long":
        MemoryStoreMachine.TestCase.settings = tier_settings(tier, "memory")
        SqliteStoreMachine.TestCase.settings = tier_settings(tier, "sqlite")
    yield


# -- regressions: counterexamples the machine found, replayed rule by rule --------------------------


def plan(*, fail: dict[str, int] | None = None, crash: dict[str, int] | None = None, nap: int = 0, wait: int = 0,
         k: str = "x") -> dict[str, Any]:
    """An order's plan as the machine draws it: no failures, crashes, sleep or wait unless told."""
    return {"fail": {"a": 0, "b": 0, "echo": 0, **(fail or {})}, "crash": {"a": 0, "b": 0, "echo": 0, **(crash or {})},
            "nap": nap, "wait": wait, "k": k}


def replay_rules(machine: type[EngineModelMachine], rules: Callable[[EngineModelMachine], Iterator[None]]) -> None:
    """Apply the rules one by one (each ``yield`` ends one), checking the invariant after each, as
    hypothesis does."""
    state = machine()
    try:
        state.engine_and_model_agree()
        for _ in rules(state):
            state.engine_and_model_agree()
    finally:
        state.teardown()


@pytest.mark.parametrize("machine", [MemoryStoreMachine, SqliteStoreMachine], ids=["memory", "sqlite"])
def test_a_restart_never_retries_a_step_before_its_retry_time(machine: type[EngineModelMachine]) -> None:
    """Found by the machine. A run's resolved wait leaves a ``wakeups`` row until the run ends. Step ``b``
    then fails and must wait 10 s; a restart wakes the run at once for the old signal, and the engine
    ran ``b``'s second attempt right away (its third 60 s later): the invocation tried a step whose
    ``retry_at`` had not come. Now it suspends again until then (``Invocation.wait_for_retry``)."""

    def rules(state: EngineModelMachine) -> Iterator[None]:
        state.send_order(event_id=None, plan=plan(fail={"b": 3}, wait=30))
        yield
        state.reply_to_a_listening_run(event_id=None, index=0)  # b fails at once: retry in 10 s
        yield
        state.crash_and_reopen(downtime=timedelta(0))  # the restart acts on the wait's old wakeup
        yield
        assert [run.attempts["b"] for run in state.model.runs.values() if run.function.fn_id == "pipeline"] == [1]
        state.advance(delta=timedelta(seconds=10))  # now the retry runs, and fails again: next in 60 s
        yield

    replay_rules(machine, rules)


def _fails_outside_steps_after_its_wait(ctx: Context) -> None:
    ctx.step.wait_for_event("reply", event=REPLY, match="data.k", timeout="1m")
    raise RuntimeError("the code outside steps fails")


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_restart_never_reruns_failed_code_before_its_retry_time(store: Literal["memory", "sqlite"]) -> None:
    """The same root cause outside steps: after a resolved wait the code outside steps fails (retry
    in 10 s); a restart acting on the wait's old wakeup ran the code again at once and recorded a
    second failure. Now the invocation waits for the run's ``retry_at`` (``RunState.run_retry_at``)."""
    function = define_function(_fails_outside_steps_after_its_wait, fn_id="fails-outside",
                               trigger=TriggerEvent(event="app/go"),
                               retries=RetryPolicy(retries=3, backoff=("10s",), jitter=0))
    with TestEngine(function, store=store) as engine:
        run = engine.trigger("app/go", {"k": "x"})
        engine.send({"name": REPLY, "data": {"k": "x"}})
        engine.run_until_idle()
        assert len(run.function_errors) == 1
        engine.crash()
        engine.run_until_idle()
        assert len(run.function_errors) == 1, run.describe()
        assert engine.next_timer() == DEFAULT_START + timedelta(seconds=10)
        engine.advance("10s")
        assert len(run.function_errors) == 2, run.describe()
