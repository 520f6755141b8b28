"""One supervisor per function: starts its runs on the worker pool, keeps at most ``max_active``
of them executing, hands suspended runs to the timer, and restarts a run that crashed.

A crashed run never stops the engine: the supervisor restarts the run from the log, up to
``MAX_RESTARTS`` times, and then fails the run with the error, so that it stays visible.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import Arm, ArmAll, Disarm, RunCrashed, RunEnded, StartRun
from steplog.actors.run import ExecuteRun, WorkerPool
from steplog.engine import Engine
from steplog.engine.coordination import StaleRunError
from steplog.engine.invocation import Outcome
from steplog.engine.state import RunState
from steplog.eventstore import StorageError

MAX_RESTARTS = 3
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
    ) -> None:
        super().__init__()
        self._function_id = function_id
        self._engine = engine
        self._timer = timer
        self._pool = pool
        self._activity = activity
        self._on_storage_failure = on_storage_failure
        self._max_active = max_active
        self._active: set[str] = set()
        self._waiting: deque[StartRun] = deque()
        self._queued: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._rewake: set[str] = set()
        self._armed: set[str] = set()
        """Runs woken (a wait ended, a cancel) while they were executing: run them again when they suspend."""

    def on_receive(self, message: Any) -> Any:
        try:
            self._handle(message)
        except Exception:
            log.exception("supervisor of %r failed on %r", self._function_id, message)
        return None

    def _handle(self, message: Any) -> None:
        if isinstance(message, StartRun):
            self._admit(message)
        elif isinstance(message, ArmAll):  # recovery's timers pass here, so that the run's end disarms them
            for arm in message.arms:
                self._armed.add(arm.run_id)
                self._timer.tell(arm)
        elif isinstance(message, RunEnded):
            self._ended(message.run_id, message.outcome)
        elif isinstance(message, RunCrashed):
            self._crashed(message.run_id, message.error)

    def _admit(self, request: StartRun) -> None:
        if request.run_id in self._active:
            self._rewake.add(request.run_id)
            self._activity.end()
            return
        if request.run_id in self._queued:
            self._activity.end()
            return
        self._waiting.append(request)
        self._queued.add(request.run_id)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and len(self._active) < self._max_active:
            request = self._waiting.popleft()
            self._queued.discard(request.run_id)
            self._start(request.run_id, request.state)

    def _start(self, run_id: str, state: RunState | None) -> None:
        self._active.add(run_id)
        self._pool.submit(ExecuteRun(run_id, state, self.actor_ref))

    def _ended(self, run_id: str, outcome: Outcome) -> None:
        self._active.discard(run_id)
        self._restarts.pop(run_id, None)
        rewake = run_id in self._rewake
        self._rewake.discard(run_id)
        if outcome.wake_at is not None:
            if rewake:
                self._activity.begin()
                self._waiting.append(StartRun(run_id))
                self._queued.add(run_id)
            self._timer.tell(Arm(outcome.wake_at, run_id, self._function_id))
            self._armed.add(run_id)
        elif run_id in self._armed:  # it ended: a timer left for it (a wait's timeout) must not wake it
            self._armed.discard(run_id)
            self._timer.tell(Disarm(run_id))
        self._activity.end()
        self._start_waiting()

    def _crashed(self, run_id: str, error: BaseException) -> None:
        self._active.discard(run_id)
        if isinstance(error, StorageError):
            self._on_storage_failure(error)
            self._activity.end()
            return
        if isinstance(error, StaleRunError):
            self._activity.end()
        else:
            self._restart_or_fail(run_id, error)
        self._start_waiting()

    def _restart_or_fail(self, run_id: str, error: BaseException) -> None:
        restarts = self._restarts.get(run_id, 0) + 1
        self._restarts[run_id] = restarts
        if restarts <= MAX_RESTARTS:
            self._start(run_id, None)
            return
        self._restarts.pop(run_id, None)
        log.error("run %s crashed %d times; failing it: %r", run_id, restarts, error)
        try:
            self._engine.fail_run(run_id, error)
        finally:
            self._activity.end()
