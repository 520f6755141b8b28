"""Errors of the engine, and the errors user code raises to steer retries.

    EngineError
    ├── DefinitionError         a function definition is invalid (raised when it is defined)
    ├── EventError              an event is malformed or too large (nothing of the send is accepted)
    ├── FunctionNotFoundError
    ├── RunNotFoundError
    ├── RunFailedError          raised by RunHandle.result() for a run that failed
    └── NondeterminismError     the code no longer matches the run's recorded steps
    StepError                   a step failed for good; raised inside the function, which may catch it
    NonRetriableError           raised by user code: fail now, do not retry
    RetryAfterError             raised by user code: retry, but not before the given time
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


class EngineError(Exception):
    """Root of the errors the engine raises to its caller."""


class DefinitionError(EngineError, ValueError):
    """A function definition is invalid; the message names the function and the option."""


class EventError(EngineError, ValueError):
    """An event is malformed or too large; the message names the event and the problem."""


class EventTooLargeError(EventError):
    """An event over the size limit, or a send of more events than allowed (HTTP 413)."""


class FunctionNotFoundError(EngineError, KeyError):
    """No function with this id is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "function not found"


class RunNotFoundError(EngineError, KeyError):
    """No run with this id is in the log."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class RunFailedError(EngineError):
    """A run ended in failure; ``error`` is its recorded error (name, message, stack)."""

    def __init__(self, run_id: str, error: dict[str, Any], status: str = "failed") -> None:
        self.run_id = run_id
        self.error = error
        self.status = status
        super().__init__(f"run {run_id} {status}: {error.get('name')}: {error.get('message')}")


class NondeterminismError(EngineError):
    """A recorded step id came back as a different kind of step."""

    def __init__(self, step_id: str, recorded: str, requested: str, *, run_id: str | None = None) -> None:
        self.step_id = step_id
        self.recorded = recorded
        self.requested = requested
        self.run_id = run_id
        in_run = f"run {run_id}: " if run_id else ""
        super().__init__(
            f"{in_run}non-deterministic step {step_id!r}: the log records a {recorded!r} step,"
            f" the code now asks for a {requested!r} step"
        )


class StepError(Exception):
    """A step failed after its last attempt. Raised inside the function, which may catch it."""

    def __init__(self, step_id: str, name: str, message: str, stack: str | None = None) -> None:
        self.step_id = step_id
        self.name = name
        self.message = message
        self.stack = stack
        super().__init__(f"step {step_id!r} failed: {name}: {message}")


class NonRetriableError(Exception):
    """Raise from a step or a function to fail without further retries."""

    def __init__(self, message: str = "", *, quiet: bool = False) -> None:
        self.message = message
        self.quiet = quiet
        super().__init__(message)


class RetryAfterError(Exception):
    """Raise to retry no sooner than ``retry_after``.

    As in Inngest's Python SDK, a number is milliseconds; a timedelta, a duration text such as
    ``"30s"`` or an aware datetime also work. The delay is clamped to 1 s .. 24 h.
    """

    def __init__(self, message: str, retry_after: float | timedelta | datetime, *, quiet: bool = False) -> None:
        self.message = message
        self.retry_after = retry_after
        self.quiet = quiet
        super().__init__(message)
