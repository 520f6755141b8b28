"""Run actors, hosted on a pool of worker threads.

Each run is an actor in the sense that matters: its state is its log stream, only one
invocation of it executes at a time, and it is reached only through messages. It is a *virtual*
actor, as in Orleans: while it executes it is hosted on a ``RunWorker`` (a pykka actor with a
thread); while it waits it holds no worker, no thread, nothing but its rows in the log.

Why not one pykka actor (one thread) per run: starting and stopping a pykka thread costs about
0.25 ms, more than a whole three-step run on the hot path. Workers are started on demand up to
``max_workers`` and then reused, so a burst of short runs pays for threads once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import attrs
import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import RunCrashed, RunEnded
from steplog.engine import Engine
from steplog.engine.state import RunState


@attrs.frozen
class ExecuteRun:
    """Worker: run one invocation of a run and report to its supervisor."""

    run_id: str
    state: RunState | None
    supervisor: pykka.ActorRef[Any]


class RunWorker(Actor):
    """Executes invocations, one at a time, for any function."""

    def __init__(self, engine: Engine, pool: WorkerPool, activity: Activity) -> None:
        super().__init__()
        self._engine = engine
        self._pool = pool
        self._activity = activity

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ExecuteRun):
            self._execute(message)
            self._pool.done(self.actor_ref)
        return None

    def _execute(self, message: ExecuteRun) -> None:
        try:
            outcome = self._engine.invoke(message.run_id, message.state)
        except BaseException as error:  # noqa: BLE001 - even SystemExit from user code must not stop every actor
            message.supervisor.tell(RunCrashed(message.run_id, error))
            return
        if outcome.wake_at is None:
            # Tell waiters at once; the supervisor's bookkeeping follows.
            self._activity.run_finished(message.run_id, outcome)
        message.supervisor.tell(RunEnded(message.run_id, outcome))


class WorkerPool:
    """Hands invocations to idle workers, starting workers on demand up to ``max_workers``."""

    def __init__(self, engine: Engine, activity: Activity, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._engine = engine
        self._activity = activity
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._idle: list[pykka.ActorRef[RunWorker]] = []
        self._backlog: deque[ExecuteRun] = deque()
        self._starting = 0
        self._stopped = False
        self.workers: list[pykka.ActorRef[RunWorker]] = []

    def submit(self, message: ExecuteRun) -> None:
        with self._lock:
            if self._stopped:  # the engine is stopping: the run resumes from its log at the next start
                return
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                if len(self.workers) + self._starting >= self._max_workers:
                    self._backlog.append(message)
                    return
                self._starting += 1
        if worker is None:
            # Starting a thread takes a while; other workers must not wait for it on the lock.
            worker = RunWorker.start(self._engine, self, self._activity)
            with self._lock:
                self._starting -= 1
                if self._stopped:  # stop() ran meanwhile and will not wait for this one
                    worker.stop(block=False)
                    return
                self.workers.append(worker)
        worker.tell(message)

    def done(self, worker: pykka.ActorRef[RunWorker]) -> None:
        with self._lock:
            if not self._backlog:
                self._idle.append(worker)
                return
            message = self._backlog.popleft()
        worker.tell(message)

    def stop(self, deadline: float) -> None:
        """Stop every worker, waiting for them until ``deadline`` (a time.monotonic() value). Work
        submitted from now on is dropped: it must not run on a store that is about to be closed."""
        with self._lock:
            self._stopped = True
            workers, self.workers, self._idle = list(self.workers), [], []
            self._backlog.clear()
        for worker in workers:
            worker.stop(block=False)
        for worker in workers:
            worker.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
