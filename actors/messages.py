"""Messages between the actors: frozen values, one class per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import attrs
from steplog.eventstore import Append


class Reply:
    """A one-shot answer that one thread waits for and another gives.

    Lighter than a pykka future (which builds a queue.Queue per answer): a plain lock, taken at
    creation and released by the answer. Every step commit waits on one of these.
    """

    __slots__ = ("_error", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._lock.release()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def get(self, timeout: float | None = None) -> Any:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"no answer after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Commit:
    """Writer: record these appends in the next group commit, then answer on ``reply``."""

    appends: Sequence[Append]
    reply: Reply


@attrs.frozen
class StartRun:
    """Supervisor: start (or resume) a run."""

    run_id: str
    state: Any = None
    """The run's state when the sender already has it (a run just scheduled); else it is read from the log."""


@attrs.frozen
class Admitted:
    """Supervisor: admission gave this waiting run its slots (another function's run released them)."""

    run_id: str


@attrs.frozen
class SetFlowTarget:
    """Timer: whom to tell when the flow gate's next debounce or batch is due."""

    target: Callable[[], None]


@attrs.frozen
class RunEnded:
    """Supervisor: a run actor's invocation ended with this outcome."""

    run_id: str
    outcome: Any


@attrs.frozen
class RunCrashed:
    """Supervisor: a run actor died of an unexpected error."""

    run_id: str
    error: BaseException


@attrs.frozen
class Arm:
    """Timer: wake this run at this time."""

    due: datetime
    run_id: str
    function_id: str


@attrs.frozen
class ArmAll:
    """Supervisor: arm these timers of its runs (found at start)."""

    arms: Sequence[Arm]


@attrs.frozen
class Disarm:
    """Timer: this run ended; forget its timer."""

    run_id: str


@attrs.frozen
class Tick:
    """Timer: start every run that is due now."""
