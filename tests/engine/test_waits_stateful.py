"""wait_for_event, sleeps and cancellation as a hypothesis state machine over the synchronous Engine.

The machine drives one Engine on a ManualClock and a real SQLite file (fresh per example) with
three functions:

- ``waiter``: ``wait_for_event("w", event="app/reply", match="data.k", timeout=<from the trigger>)``
  and returns the event's data (or None);
- ``if-waiter``: first sleeps ``pre`` seconds (0: not at all), then waits with
  ``if_exp="event.data.k == async.data.k && async.data.urgent == true"``, so its wait is
  registered later than the run starts: replies sent in between must not be seen;
- ``sleeper``: sleeps ``s`` seconds, then runs the step ``after`` (its body calls are counted).

Rules start runs, send replies, move the clock (by fixed amounts, to the next timer, or just
short of it), cancel runs, and crash: close the store and open a new store and Engine on the same
file (optionally after a reply or a cancel request was committed and before anything ran, and
optionally with time passing while the process is down), then ``start()``.

A plain-Python model says, for each run, when its wait was registered, its deadline, and what the
run must end with: the first matching reply committed after the registration and strictly
before the deadline, else None once the deadline has come; a sleeper completes once its
deadline has come; a cancel of a live run wins. After every rule (the engine run until idle) the
log, the projections, the pause index and the body counters must agree with the model.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from steplog.engine import (
    Context,
    Engine,
    FunctionDef,
    FunctionRegistry,
    ManualClock,
    RunProjector,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.eventstore import SqliteEventStore, parse_time

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
KEYS = ["a", "b", "c"]
TIMEOUTS = [1, 30, 60, 300]
PRE_SLEEPS = [0, 0, 10, 45]
SLEEPS = [0, 5, 30, 60]
TICK = timedelta(microseconds=1)
ADVANCES = [TICK, timedelta(seconds=1), timedelta(seconds=10), timedelta(seconds=29), timedelta(seconds=30),
            timedelta(seconds=31), timedelta(seconds=60), timedelta(seconds=120)]
DOWNTIMES = [timedelta(0), timedelta(0), timedelta(seconds=10), timedelta(seconds=60)]
IF_EXP = "event.data.k == async.data.k && async.data.urgent == true"
STEP_TYPES = (r.STEP_COMPLETED, r.STEP_ERRORED, r.STEP_FAILED, r.STEP_SLEEPING, r.STEP_WAITING)

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
EXAMPLES = 150 if _PROFILE == "default" else settings().max_examples


@dataclass
class ModelRun:
    """What the model knows of one run."""

    run_id: str
    kind: str
    """``match``, ``if`` or ``sleep``."""
    key: str
    started_at: datetime
    timeout: timedelta = timedelta(0)
    wake_at: datetime | None = None
    """When the run's sleep ends (the pre-sleep of ``if``, the sleep of ``sleep``)."""
    registered_at: datetime | None = None
    deadline: datetime | None = None
    resolved_by: dict[str, Any] | None = None
    """The data of the reply that ended the wait."""
    status: str = "waiting"
    output: Any = None
    ended_at: datetime | None = None
    cancelled: bool = False
    cancel_version: int | None = None
    """The length of the run's stream when its cancel was requested."""

    @property
    def live(self) -> bool:
        return self.status == "waiting"

    def listening(self) -> bool:
        """Registered, not resolved, not ended: its pause is in the index."""
        return self.live and self.registered_at is not None and self.resolved_by is None and not self.cancelled


def make_functions(after_calls: Counter[str]) -> list[FunctionDef]:
    def waiter(ctx: Context) -> Any:
        event = ctx.step.wait_for_event("w", event="app/reply", match="data.k", timeout=ctx.event.data["t"])
        return None if event is None else event.data

    def if_waiter(ctx: Context) -> Any:
        ctx.step.sleep("pre", ctx.event.data["pre"])
        event = ctx.step.wait_for_event("w", event="app/reply", if_exp=IF_EXP, timeout=ctx.event.data["t"])
        return None if event is None else event.data

    def sleeper(ctx: Context) -> str:
        ctx.step.sleep("nap", ctx.event.data["s"])

        def after() -> str:
            after_calls[ctx.run_id] += 1
            return "after"

        return ctx.step.run("after", after)

    return [
        define_function(waiter, fn_id="waiter", trigger=TriggerEvent(event="app/start")),
        define_function(if_waiter, fn_id="if-waiter", trigger=TriggerEvent(event="app/start-if")),
        define_function(sleeper, fn_id="sleeper", trigger=TriggerEvent(event="app/sleep")),
    ]


class WaitMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self._directory = tempfile.TemporaryDirectory(prefix="steplog-waits-", dir=SCRATCH)
        self.path = Path(self._directory.name) / "runs.db"
        self.clock = ManualClock(START)
        self.after_calls: Counter[str] = Counter()
        self.functions = make_functions(self.after_calls)
        self.model: dict[str, ModelRun] = {}
        self.tags = 0
        self.store: SqliteEventStore | None = None
        self.engine = self._open()

    def teardown(self) -> None:
        for run in self.model.values():
            if run.kind != "sleep":
                ending = "resolved" if run.output is not None else "expired" if run.status == "completed" else run.status
                event(f"a {run.kind} wait {ending}")
        self.close()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self._directory.cleanup()

    # -- the engine ---------------------------------------------------------------------------

    def _open(self) -> Engine:
        self.store = SqliteEventStore(self.path, RunProjector(), synchronous="OFF")
        registry = FunctionRegistry()
        for function in self.functions:
            registry.add(function)
        engine = Engine(self.store, registry=registry, clock=self.clock)
        engine.start()
        return engine

    def _crash(self, downtime: timedelta) -> None:
        """The process dies between two commits; time may pass before a new one starts."""
        assert self.store is not None
        self.store.close()
        self.store = None
        self.clock.advance(downtime)
        self.engine = self._open()

    def _entries(self, run_id: str) -> list[Any]:
        assert self.store is not None
        return self.store.read_stream(r.run_stream(run_id))

    def _signals(self, run_id: str) -> list[Any]:
        assert self.store is not None
        return self.store.read_stream(r.signal_stream(run_id))

    # -- the model ----------------------------------------------------------------------------

    def _model_reply(self, data: dict[str, Any], now: datetime) -> None:
        """A reply committed at ``now`` ends every listening wait it matches, if before the deadline."""
        for run in self.model.values():
            if not run.listening() or run.kind == "sleep":
                continue
            assert run.deadline is not None
            if data["k"] != run.key or now >= run.deadline:
                continue
            if run.kind == "if" and not data["urgent"]:
                continue
            run.resolved_by = data

    def _model_cancel(self, run_id: str) -> bool:
        run = self.model[run_id]
        if not run.live or run.cancelled:
            return False
        run.cancelled = True
        run.cancel_version = len(self._entries(run_id))
        return True

    def _model_settle(self) -> None:
        """What the engine must have done by now, once idle: the clock has reached ``now``."""
        now = self.clock.now()
        for run in self.model.values():
            if not run.live:
                continue
            if run.cancelled:
                run.status, run.ended_at = "cancelled", now
                continue
            if run.kind == "sleep":
                assert run.wake_at is not None
                if now >= run.wake_at:
                    run.status, run.output, run.ended_at = "completed", "after", now
                continue
            if run.registered_at is None:
                assert run.wake_at is not None
                if now < run.wake_at:
                    continue
                run.registered_at, run.deadline = now, now + run.timeout
            assert run.deadline is not None
            if run.resolved_by is not None:
                run.status, run.output, run.ended_at = "completed", run.resolved_by, now
            elif now >= run.deadline:
                run.status, run.output, run.ended_at = "completed", None, now

    # -- rules ------------------------------------------------------------------------------

    @rule(target=runs, kind=st.sampled_from(["match", "if", "sleep"]), key=st.sampled_from(KEYS),
          timeout=st.sampled_from(TIMEOUTS), pre=st.sampled_from(PRE_SLEEPS), sleep=st.sampled_from(SLEEPS))
    def start(self, kind: str, key: str, timeout: int, pre: int, sleep: int) -> str:
        now = self.clock.now()
        if kind == "match":
            event = {"name": "app/start", "data": {"k": key, "t": timeout}}
            run = ModelRun("", kind, key, now, timeout=timedelta(seconds=timeout), wake_at=now)
        elif kind == "if":
            event = {"name": "app/start-if", "data": {"k": key, "t": timeout, "pre": pre}}
            run = ModelRun("", kind, key, now, timeout=timedelta(seconds=timeout), wake_at=now + timedelta(seconds=pre))
        else:
            event = {"name": "app/sleep", "data": {"k": key, "s": sleep}}
            run = ModelRun("", kind, key, now, wake_at=now + timedelta(seconds=sleep))
        [event_id] = self.engine.send(event)
        assert self.store is not None
        [row] = self.store.query("runs", where={"event_id": event_id})
        run.run_id = row["run_id"]
        self.model[run.run_id] = run
        self.engine.run_until_idle()
        self._model_settle()
        return run.run_id

    def _send_reply(self, key: str, urgent: bool) -> None:
        self.tags += 1
        data = {"k": key, "tag": self.tags, "urgent": urgent}
        self.engine.send({"name": "app/reply", "data": data})
        self._model_reply(data, self.clock.now())

    @rule(key=st.sampled_from(KEYS), urgent=st.booleans())
    def reply(self, key: str, urgent: bool) -> None:
        self._send_reply(key, urgent)
        self.engine.run_until_idle()
        self._model_settle()

    @precondition(lambda self: any(run.listening() for run in self.model.values()))
    @rule(index=st.integers(0, 9), urgent=st.booleans())
    def reply_to_a_listening_run(self, index: int, urgent: bool) -> None:
        """A reply with the key of a run whose wait is registered (random keys rarely hit one)."""
        listening = [run for run in self.model.values() if run.listening()]  # in start order (ids are random)
        self._send_reply(listening[index % len(listening)].key, urgent)
        self.engine.run_until_idle()
        self._model_settle()

    @rule(delta=st.sampled_from(ADVANCES))
    def advance(self, delta: timedelta) -> None:
        self.engine.advance(delta)
        self._model_settle()

    @precondition(lambda self: self.engine.next_timer() is not None)
    @rule(short=st.booleans())
    def advance_to_next_timer(self, short: bool) -> None:
        """Exactly to the next timer, or one microsecond short of it."""
        due = self.engine.next_timer()
        assert due is not None
        delta = max(due - self.clock.now(), timedelta(0))
        if short and delta >= TICK:
            delta -= TICK
        self.engine.advance(delta)
        self._model_settle()

    @rule(run_id=runs)
    def cancel(self, run_id: str) -> None:
        expected = self._model_cancel(run_id)
        assert self.engine.cancel(run_id) is expected
        self.engine.run_until_idle()
        self._model_settle()

    @rule(run_id=runs, key=st.sampled_from(KEYS), urgent=st.booleans(), delta=st.sampled_from(ADVANCES))
    def reply_time_and_cancel_race(self, run_id: str, key: str, urgent: bool, delta: timedelta) -> None:
        """A reply, time passing and a cancel request, all before any run runs: the cancel of a
        live run wins; a wait the reply ended gets that reply however late the run resumes."""
        self._send_reply(key, urgent)
        self.clock.advance(delta)  # the clock moves; the engine runs nothing yet
        expected = self._model_cancel(run_id)
        assert self.engine.cancel(run_id) is expected
        self.engine.run_until_idle()
        self._model_settle()

    @rule(downtime=st.sampled_from(DOWNTIMES))
    def crash_and_reopen(self, downtime: timedelta) -> None:
        self._crash(downtime)
        self.engine.run_until_idle()
        self._model_settle()

    @rule(key=st.sampled_from(KEYS), urgent=st.booleans(), downtime=st.sampled_from(DOWNTIMES))
    def reply_then_crash(self, key: str, urgent: bool, downtime: timedelta) -> None:
        """The reply is committed; the process dies before the woken runs run."""
        self._send_reply(key, urgent)
        self._crash(downtime)
        self.engine.run_until_idle()
        self._model_settle()

    @rule(run_id=runs, downtime=st.sampled_from(DOWNTIMES))
    def cancel_then_crash(self, run_id: str, downtime: timedelta) -> None:
        """The cancel request is committed; the process dies before the run stops."""
        expected = self._model_cancel(run_id)
        assert self.engine.cancel(run_id) is expected
        self._crash(downtime)
        self.engine.run_until_idle()
        self._model_settle()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def idle(self) -> None:
        # every rule leaves the engine idle: running it again does nothing new
        before = {run_id: len(self._entries(run_id)) for run_id in self.model}
        self.engine.run_until_idle()
        assert {run_id: len(self._entries(run_id)) for run_id in self.model} == before

    @invariant()
    def runs_agree_with_the_model(self) -> None:
        assert self.store is not None
        for run in self.model.values():
            row = queries.get_run(self.store, run.run_id)
            assert row["status"] == run.status, run
            entries = self._entries(run.run_id)
            signals = self._signals(run.run_id)
            completed = Counter(e.data["step"] for e in entries if e.type == r.STEP_COMPLETED)
            assert all(count == 1 for count in completed.values()), f"a step completed twice: {completed}"
            ends = [e for e in entries if e.type in (r.RUN_COMPLETED, r.RUN_FAILED, r.RUN_CANCELLED)]
            assert len(ends) == (0 if run.live else 1)
            if not run.live:
                assert entries[-1].type == ends[0].type
                assert parse_time(row["ended_at"]) == run.ended_at
            if run.kind == "sleep":
                self._check_sleeper(run, row, entries)
            else:
                self._check_waiter(run, row, entries, signals, completed)
            if run.cancelled:
                assert run.cancel_version is not None
                later = [e.type for e in entries[run.cancel_version:]]
                assert not set(later) & set(STEP_TYPES), f"steps recorded after the cancel request: {later}"
                if run.status == "cancelled":
                    assert later[-1] == r.RUN_CANCELLED
                    assert [e.type for e in signals].count(r.CANCEL_REQUESTED) == 1

    def _check_waiter(self, run: ModelRun, row: dict[str, Any], entries: list[Any], signals: list[Any],
                      completed: Counter[str]) -> None:
        waiting = [e.data for e in entries if e.type == r.STEP_WAITING]
        endings = [e for e in signals if e.type in (r.WAIT_RESOLVED, r.WAIT_EXPIRED) and e.data["step"] == "w"]
        assert len(endings) <= 1, f"the wait ended {len(endings)} times"
        if run.registered_at is None:
            assert waiting == [] and endings == []
            return
        [registered] = waiting
        assert parse_time(registered["started_at"]) == run.registered_at
        assert run.deadline is not None
        assert parse_time(registered["pause"]["expires_at"]) == run.deadline
        if run.status == "completed":
            assert completed["w"] == 1
            assert row["output"] == run.output
            [ending] = endings
            if run.output is None:
                assert ending.type == r.WAIT_EXPIRED
                assert parse_time(row["ended_at"]) >= run.deadline, "a wait timed out early"
            else:
                assert ending.type == r.WAIT_RESOLVED and ending.data["event"]["data"] == run.output
                assert parse_time(row["ended_at"]) >= run.registered_at
        elif run.status == "cancelled":
            assert completed["w"] == 0
            assert row["output"] is None
        else:
            assert completed["w"] == 0
            assert endings == [] if run.resolved_by is None else len(endings) == 1

    def _check_sleeper(self, run: ModelRun, row: dict[str, Any], entries: list[Any]) -> None:
        assert run.wake_at is not None
        completed = {e.data["step"]: e.data for e in entries if e.type == r.STEP_COMPLETED}
        assert self.after_calls[run.run_id] == (1 if run.status == "completed" else 0)
        if "nap" in completed:
            assert parse_time(completed["nap"]["ended_at"]) >= run.wake_at, "a sleep ended early"
        if run.status == "completed":
            assert set(completed) == {"nap", "after"} and row["output"] == "after"
        else:
            assert "after" not in completed

    @invariant()
    def pauses_are_the_listening_waits(self) -> None:
        assert self.store is not None
        expected = {(run.run_id, "w") for run in self.model.values() if run.listening()}
        assert {(p.run_id, p.step) for p in self.engine.coordinator.pauses} == expected
        assert {(row["run_id"], row["step"]) for row in self.store.query("waits")} == expected

    @invariant()
    def timers_are_the_live_runs(self) -> None:
        assert self.store is not None
        live = {run.run_id for run in self.model.values() if run.live}
        assert {row["run_id"] for row in self.store.query("timers")} == live
        assert self.store.query("queue") == []

    @invariant()
    def projections_match_the_log(self) -> None:
        assert self.store is not None
        assert self.store.rebuild_projections(apply=False) == []


WaitMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None)
test_waits_sleeps_cancels_and_crashes = WaitMachine.TestCase


def test_the_model_times_a_wait_from_its_registration() -> None:
    """The reference model on its own: a reply before the registration, at the deadline, and after it."""
    machine = WaitMachine()
    try:
        run = ModelRun("r", "if", "a", START, timeout=timedelta(seconds=30), wake_at=START + timedelta(seconds=10))
        machine.model["r"] = run
        machine._model_reply({"k": "a", "tag": 1, "urgent": True}, START)  # not registered yet: unseen
        machine.clock.advance(10)
        machine._model_settle()
        assert run.registered_at == START + timedelta(seconds=10) and run.resolved_by is None
        machine._model_reply({"k": "a", "tag": 2, "urgent": False}, machine.clock.now())  # not urgent
        machine._model_reply({"k": "b", "tag": 3, "urgent": True}, machine.clock.now())  # another key
        machine._model_reply({"k": "a", "tag": 4, "urgent": True}, START + timedelta(seconds=40))  # at the deadline
        assert run.resolved_by is None
        machine.clock.advance(30)
        machine._model_settle()
        assert (run.status, run.output, run.ended_at) == ("completed", None, START + timedelta(seconds=40))
    finally:
        machine.close()
