"""Counts work in flight, so that callers can wait until the engine is idle or a run has ended."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

RECENT_OUTCOMES = 10_000


class Activity:
    """Runs that are scheduled or executing; a condition that wakes waiters when it changes."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._in_flight = 0
        self._failure: BaseException | None = None
        self._outcomes: OrderedDict[str, Any] = OrderedDict()

    def begin(self, count: int = 1) -> None:
        with self._condition:
            self._in_flight += count

    def end(self, count: int = 1) -> None:
        with self._condition:
            self._in_flight -= count
            self._condition.notify_all()

    def run_finished(self, run_id: str, outcome: Any) -> None:
        """Remember a run's final outcome (the latest few thousand) and wake its waiters."""
        with self._condition:
            self._outcomes[run_id] = outcome
            if len(self._outcomes) > RECENT_OUTCOMES:
                self._outcomes.popitem(last=False)
            self._condition.notify_all()

    def outcome(self, run_id: str) -> Any:
        """The final outcome of a run that ended in this process, if it is still remembered."""
        return self._outcomes.get(run_id)

    def changed(self) -> None:
        """Wake every waiter (a run ended, or the engine failed)."""
        with self._condition:
            self._condition.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._condition:
            self._failure = error
            self._condition.notify_all()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def wait_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``done()`` is true (checked under the lock), the engine fails, or time runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not done():
                if self._failure is not None:
                    raise self._failure
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def wait_idle(self, timeout: float | None) -> bool:
        return self.wait_until(lambda: self._in_flight <= 0, timeout)
