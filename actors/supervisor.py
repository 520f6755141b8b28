"""One supervisor per function: starts its runs on the worker pool when admission lets them (at
most ``max_active`` of them executing, and the function's concurrency limits), hands suspended
runs to the timer, and restarts a run that crashed.

A run holds its slots for one invocation: from the moment it is admitted until the invocation
ends (or crashes). A run whose start time has not come (throttle, an event's future ``ts``) is
armed on the timer without taking a slot.

A crashed run never stops the engine: the supervisor restarts the run from the log, up to
``MAX_RESTARTS`` times, and then fails the run with the error, so that it stays visible. A run
whose log is damaged (``CorruptEntryError``) is neither restarted nor failed: it is refused, the
error is logged and handed to whoever waits for the run, and nothing is written to its stream.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import Admitted, Arm, ArmAll, Disarm, RunCrashed, RunEnded, StartRun
from steplog.actors.run import ExecuteRun, WorkerPool
from steplog.actors.slots import Slots
from steplog.engine import Engine, ManualClock
from steplog.engine.coordination import StaleRunError
from steplog.engine.flow import Constraint
from steplog.engine.flow.gcra import Gcra
from steplog.engine.invocation import Outcome
from steplog.engine.state import RunState
from steplog.eventstore import CorruptEntryError, StorageError, parse_time

MAX_RESTARTS = 3
PACERS_KEPT = 10_000
PACE = "~pace:"
"""Timer ids of throttle keys (no run id starts with ``~``)."""
log = logging.getLogger("steplog.supervisor")


class FunctionSupervisor(Actor):
    """Admits the runs of one function and watches over their actors."""

    def __init__(
        self,
        function_id: str,
        engine: Engine,
        timer: pykka.ActorRef[Any],
        pool: WorkerPool,
        activity: Activity,
        on_storage_failure: Callable[[StorageError], None],
        max_active: int,
        slots: Slots | None = None,
        supervisors: Mapping[str, pykka.ActorRef[Any]] | None = None,
    ) -> None:
        super().__init__()
        self._function_id = function_id
        self._engine = engine
        self._timer = timer
        self._pool = pool
        self._activity = activity
        self._on_storage_failure = on_storage_failure
        self._slots = slots or Slots()
        self._supervisors = supervisors if supervisors is not None else {}
        function = engine.registry.get(function_id)
        self._rules = function.flow.concurrency if function is not None else ()
        self._ranked = function is not None and function.flow.priority is not None
        self._own_limit: Constraint = (f"max:{function_id}", max_active)
        throttle = function.flow.throttle if function is not None else None
        # On a manual clock a jump fires every run due meanwhile at once, as if each had started on
        # its time (which the flow gate decided); pacing is for the lateness of a real clock.
        paced = throttle is not None and not isinstance(engine.clock, ManualClock)
        self._pacing = Gcra.of(throttle.limit, throttle.period, throttle.burst) if paced and throttle else None
        self._pacers: dict[str, float] = {}
        """Throttle key -> GCRA time of the starts this supervisor let happen (``_pace``)."""
        self._unpaced: dict[str, str] = {}
        """Throttled runs not started yet -> their throttle key."""
        self._waiting_for: dict[str, datetime] = {}
        """Runs armed for their start time (throttle, a future ts): that time."""
        self._due_by_key: dict[str, deque[tuple[str, RunState | None]]] = {}
        """Throttled runs whose time has come, per key, in order, waiting for the throttle's pace."""
        self._active: set[str] = set()
        self._states: dict[str, RunState | None] = {}
        """Runs waiting for a slot, with their state if known."""
        self._flows: dict[str, dict[str, Any]] = {}
        """The flow data (concurrency keys, priority) of this function's live runs, when it has rules."""
        self._restarts: dict[str, int] = {}
        self._rewake: set[str] = set()
        """Runs woken (a wait ended, a cancel) while they were executing: run them again when they suspend."""
        self._armed: set[str] = set()
        """Runs with a timer armed: their end disarms it."""

    def on_receive(self, message: Any) -> Any:
        try:
            self._handle(message)
        except Exception:
            log.exception("supervisor of %r failed on %r", self._function_id, message)
        return None

    def _handle(self, message: Any) -> None:
        if isinstance(message, StartRun):
            self._admit(message)
        elif isinstance(message, Admitted):
            self._start(message.run_id, self._states.pop(message.run_id, None))
        elif isinstance(message, ArmAll):  # recovery's timers pass here, so that the run's end disarms them
            for arm in message.arms:
                self._arm(arm)
        elif isinstance(message, RunEnded):
            self._ended(message.run_id, message.outcome)
        elif isinstance(message, RunCrashed):
            self._crashed(message.run_id, message.error)

    def _admit(self, request: StartRun) -> None:
        run_id, state = request.run_id, request.state
        if run_id.startswith(PACE):  # a throttle key's timer: its next due run may start now
            self._activity.end()
            self._pace(run_id.removeprefix(PACE))
            return
        if run_id in self._active:
            self._rewake.add(run_id)
            self._activity.end()
            return
        if run_id in self._states:
            self._activity.end()
            return
        if self._pacing is not None and state is not None and not state.started and "throttle" in state.flow:
            self._unpaced[run_id] = state.flow["throttle"]
        ready_at = self._not_ready_until(state)
        if ready_at is not None:  # throttled, or an event from the future: it takes no slot until then
            self._waiting_for[run_id] = ready_at
            self._arm(Arm(min(ready_at, self._start_deadline(state)), run_id, self._function_id))
            self._activity.end()
            return
        waited = self._waiting_for.pop(run_id, None)
        if waited is not None and waited > self._engine.clock.now():
            self._offer(run_id, state)  # woken at its start timeout, before its time: it cancels itself
            return
        key = self._unpaced.pop(run_id, None)
        if key is not None:  # a throttled run whose time came: it starts in its key's order and pace
            self._due_by_key.setdefault(key, deque()).append((run_id, state))
            self._activity.end()
            self._pace(key)
            return
        self._offer(run_id, state)

    def _start_deadline(self, state: RunState | None) -> datetime:
        """When the run's ``timeouts.start`` cancels it, if it has one."""
        function = self._engine.registry.get(self._function_id)
        timeouts = function.timeouts if function is not None else None
        deadline = timeouts.start_deadline(state.scheduled_at) if timeouts and state else None
        return deadline or datetime.max.replace(tzinfo=UTC)

    def _not_ready_until(self, state: RunState | None) -> Any:
        if state is None or state.started or state.ready_at is None:
            return None
        ready_at = parse_time(state.ready_at)
        return ready_at if ready_at > self._engine.clock.now() else None

    def _pace(self, key: str) -> None:
        """Start the throttled runs of ``key`` that are due, as fast as the throttle allows *now*.

        The flow gate gave each run its start time, but a run's start message can come late (a
        flood of sends ahead of it in this mailbox); the late ones would then start together.
        So the same GCRA is applied again to the starts as they happen: the runs of a key go in
        order, and when the next may not start yet, one timer per key comes back for it.
        """
        assert self._pacing is not None
        queue = self._due_by_key.get(key)
        now = self._engine.clock.now().timestamp()
        while queue:
            tat = self._pacers.get(key)
            if not self._pacing.allows(tat, now):
                due = datetime.fromtimestamp(self._pacing.earliest(tat, now), tz=UTC)
                self._timer.tell(Arm(due, PACE + key, self._function_id))
                return
            self._pacers[key] = self._pacing.after(tat, now)
            run_id, state = queue.popleft()
            self._activity.begin()
            self._offer(run_id, state)
        self._due_by_key.pop(key, None)
        if len(self._pacers) > PACERS_KEPT:
            self._pacers = {k: tat for k, tat in self._pacers.items() if tat > now}

    def _offer(self, run_id: str, state: RunState | None) -> None:
        constraints, priority = self._constraints(run_id, state)
        rank = self._engine.clock.now().timestamp() - priority
        if self._slots.offer(run_id, self._function_id, constraints, rank):
            self._start(run_id, state)
        else:
            self._states[run_id] = state

    def _constraints(self, run_id: str, state: RunState | None) -> tuple[tuple[Constraint, ...], float]:
        if not self._rules and not self._ranked:
            return (self._own_limit,), 0.0
        flow = self._flow_of(run_id, state)
        keys = flow.get("concurrency", [])
        constraints = (self._own_limit, *((key, rule.limit) for key, rule in zip(keys, self._rules)))
        return constraints, float(flow.get("priority", 0))

    def _flow_of(self, run_id: str, state: RunState | None) -> dict[str, Any]:
        flow = self._flows.get(run_id)
        if flow is None:
            flow = state.flow if state is not None else self._engine.run_flow(run_id)
            self._flows[run_id] = flow
        return flow

    def _release(self, run_id: str) -> None:
        for owner, admitted in self._slots.release(run_id):
            if owner == self._function_id:
                self._start(admitted, self._states.pop(admitted, None))
            elif owner in self._supervisors:
                self._supervisors[owner].tell(Admitted(admitted))

    def _arm(self, arm: Arm) -> None:
        self._armed.add(arm.run_id)
        self._timer.tell(arm)

    def _start(self, run_id: str, state: RunState | None) -> None:
        self._active.add(run_id)
        self._pool.submit(ExecuteRun(run_id, state, self.actor_ref))

    def _ended(self, run_id: str, outcome: Outcome) -> None:
        self._active.discard(run_id)
        self._restarts.pop(run_id, None)
        rewake = run_id in self._rewake
        self._rewake.discard(run_id)
        self._release(run_id)
        if outcome.wake_at is not None:
            self._arm(Arm(outcome.wake_at, run_id, self._function_id))
            if rewake:
                self._activity.begin()
                self._offer(run_id, None)
        else:
            self._forget(run_id)
        self._activity.end()

    def _forget(self, run_id: str) -> None:
        """The run ended (or is refused): drop what this supervisor holds for it."""
        self._rewake.discard(run_id)
        self._flows.pop(run_id, None)
        self._unpaced.pop(run_id, None)
        self._waiting_for.pop(run_id, None)
        if run_id in self._armed:  # a timer left for it (a wait's timeout) must not wake it
            self._armed.discard(run_id)
            self._timer.tell(Disarm(run_id))

    def _crashed(self, run_id: str, error: BaseException) -> None:
        self._active.discard(run_id)
        self._release(run_id)
        if isinstance(error, StorageError):
            self._on_storage_failure(error)
            self._activity.end()
            return
        if isinstance(error, StaleRunError):
            self._activity.end()
        elif isinstance(error, CorruptEntryError):
            self._refuse(run_id, error)
        else:
            self._restart_or_fail(run_id, error)

    def _refuse(self, run_id: str, error: CorruptEntryError) -> None:
        """Never run from a damaged history: no restart (it would read the same bytes), no
        ``run.failed`` (an end written after entries that cannot be read); the other runs go on."""
        self._restarts.pop(run_id, None)
        self._forget(run_id)
        log.error("run %s is refused: %s", run_id, error)
        self._activity.run_refused(run_id, error)
        self._activity.end()

    def _restart_or_fail(self, run_id: str, error: BaseException) -> None:
        restarts = self._restarts.get(run_id, 0) + 1
        self._restarts[run_id] = restarts
        if restarts <= MAX_RESTARTS:
            self._offer(run_id, None)
            return
        self._restarts.pop(run_id, None)
        self._flows.pop(run_id, None)
        log.error("run %s crashed %d times; failing it: %r", run_id, restarts, error)
        try:
            self._engine.fail_run(run_id, error)
        finally:
            self._activity.end()
