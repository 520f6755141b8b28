"""Counts work in flight, so that callers can wait until the engine is idle or a run has ended.

Two conditions share one lock: "idle" is signalled only when the count reaches zero, and "a run
ended" only when someone waits for a run. Waking every waiter on every change would cost a
thread switch per run on the hot path.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

RECENT_OUTCOMES = 10_000


class Activity:
    """Runs that are scheduled or executing, the latest outcomes, and the engine's failure if any."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._idle = threading.Condition(lock)
        self._run_ended = threading.Condition(lock)
        self._run_waiters = 0
        self._in_flight = 0
        self._failure: BaseException | None = None
        self._outcomes: OrderedDict[str, Any] = OrderedDict()

    def begin(self, count: int = 1) -> None:
        with self._idle:
            self._in_flight += count

    def end(self, count: int = 1) -> None:
        with self._idle:
            self._in_flight -= count
            if self._in_flight <= 0:
                self._idle.notify_all()
            if self._run_waiters:
                self._run_ended.notify_all()  # a run read from the store may have ended too

    def run_finished(self, run_id: str, outcome: Any) -> None:
        """Remember a run's final outcome (the latest few thousand) and wake its waiters."""
        with self._idle:
            self._outcomes[run_id] = outcome
            if len(self._outcomes) > RECENT_OUTCOMES:
                self._outcomes.popitem(last=False)
            if self._run_waiters:
                self._run_ended.notify_all()

    def run_refused(self, run_id: str, error: BaseException) -> None:
        """Remember that a run was refused (its log is damaged): its waiters get ``error``."""
        self.run_finished(run_id, error)

    def outcome(self, run_id: str) -> Any:
        """The final outcome of a run that ended in this process (or the error that refused it),
        if it is still remembered."""
        return self._outcomes.get(run_id)

    def fail(self, error: BaseException) -> None:
        with self._idle:
            self._failure = error
            self._idle.notify_all()
            self._run_ended.notify_all()

    def wait_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``done()`` is true (checked whenever a run ends), the engine fails, or time runs out."""
        with self._run_ended:
            self._run_waiters += 1
            try:
                return self._wait(self._run_ended, done, timeout)
            finally:
                self._run_waiters -= 1

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is queued or executing; raise the engine's failure if it failed, even
        if the work in flight has ended since (a run whose last commit failed ends, unfinished)."""
        with self._idle:
            return self._wait(self._idle, lambda: self._failure is None and self._in_flight <= 0, timeout)

    def _wait(self, condition: threading.Condition, done: Callable[[], bool], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if self._failure is not None:
                raise self._failure
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            condition.wait(remaining)
        return True
