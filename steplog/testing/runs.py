"""A run as a test sees it: status, output, error, steps, and assertions that explain themselves."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from steplog.engine import queries
from steplog.engine import records as r
from steplog.engine.queries import RunHistory, StepAttempt
from steplog.eventstore import parse_time

if TYPE_CHECKING:
    from steplog.testing.harness import TestEngine

__all__ = ["TestRun", "describe_history"]

ANY: Any = object()
"""A marker for "whatever it is": ``assert_completed()`` with no output checks only the status."""


class TestRun:
    """A live view of one run: every property reads the log again, so it stays true across ``crash()``.
    Its assertions set ``__tracebackhide__``, so pytest points at the test's line, not theirs."""

    __test__ = False  # not a pytest test class

    def __init__(self, engine: TestEngine, run_id: str) -> None:
        self._engine = engine
        self.run_id = run_id

    def __repr__(self) -> str:
        row = self.row
        return f"<TestRun {self.run_id} of {row['function_id']!r}: {row['status']}>"

    # -- what the run is ---------------------------------------------------------------------

    @property
    def row(self) -> dict[str, Any]:
        """The run's summary row (``steplog run`` shows the same)."""
        return queries.get_run(self._engine.store, self.run_id)

    @property
    def function_id(self) -> str:
        return str(self.row["function_id"])

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``waiting``, ``completed``, ``failed``, ``cancelled`` or ``skipped``."""
        return str(self.row["status"])

    @property
    def output(self) -> Any:
        return self.row["output"]

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"name", "message", "stack"}`` for a failed or cancelled run."""
        error = self.row["error"]
        return error if isinstance(error, dict) else None

    @property
    def event(self) -> dict[str, Any]:
        """The event that started the run (the first one, for a batch)."""
        return self.events[0]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events that started the run: one, or a batch's."""
        return list(self._engine.first_entry(self.run_id).data["events"])

    @property
    def scheduled_at(self) -> datetime:
        return parse_time(self.row["scheduled_at"])

    @property
    def started_at(self) -> datetime | None:
        """When the run first started (None if it has not)."""
        return _time_or_none(self.row["started_at"])

    @property
    def ended_at(self) -> datetime | None:
        return _time_or_none(self.row["ended_at"])

    @property
    def history(self) -> RunHistory:
        return queries.run_history(self._engine.store, self.run_id)

    @property
    def attempts(self) -> list[StepAttempt]:
        """Every step attempt, in order, each as it stands now (a sleep or wait that began and then
        completed is one attempt, ``completed``)."""
        return latest_per_attempt(self.history.steps)

    def step_attempts(self, step_id: str) -> list[StepAttempt]:
        """The attempts of one step, in order. A step id used more than once names its first use;
        ``"item:1"`` is the second, ``"item:2"`` the third (the keys the log records)."""
        return [attempt for attempt in self.attempts if attempt.step == step_id]

    def step_output(self, step_id: str) -> Any:
        """The committed output of a completed step; AssertionError if it has not completed."""
        __tracebackhide__ = True
        done = [a for a in self.step_attempts(step_id) if a.status == "completed"]
        if not done:
            raise AssertionError(f"step {step_id!r} of {self} has not completed\n{self.describe()}")
        return done[-1].output

    @property
    def function_errors(self) -> list[dict[str, Any]]:
        """Errors raised by the function's own code outside any step, each retried as the run's attempt:
        ``{"attempt", "error", "retry_at"}``, in order. A final one is the run's ``error``."""
        return [
            {"attempt": entry.data["attempt"], "error": entry.data["error"], "retry_at": entry.data["retry_at"]}
            for entry in self._engine.store.read_stream(r.run_stream(self.run_id)) if entry.type == r.RUN_ERRORED
        ]

    @property
    def completed_steps(self) -> list[str]:
        """The ids of the steps that completed, in order."""
        return [a.id for a in self.attempts if a.status == "completed"]

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "skipped")

    def describe(self) -> str:
        """The run and its steps, one line each: what an assertion shows when it fails."""
        return describe_history(self.history)

    # -- assertions ------------------------------------------------------------------------------

    def assert_completed(self, output: Any = ANY) -> TestRun:
        """The run completed (with ``output``, if given)."""
        __tracebackhide__ = True
        self._expect_status("completed")
        if output is not ANY and self.output != output:
            self._fail(f"returned {_json(self.output)}, expected {_json(output)}")
        return self

    def assert_failed(self, name: str | None = None, message: str | None = None) -> TestRun:
        """The run failed (with an error of this ``name``, whose message contains ``message``)."""
        __tracebackhide__ = True
        self._expect_status("failed")
        self._expect_error(name, message)
        return self

    def assert_cancelled(self, reason: str | None = None) -> TestRun:
        """The run was cancelled (with ``reason`` in its message, if given)."""
        __tracebackhide__ = True
        self._expect_status("cancelled")
        self._expect_error(None, reason)
        return self

    def assert_waiting(self) -> TestRun:
        """The run is waiting: sleeping, or waiting for an event, an invoked run or a retry. (A run not
        started yet, throttled or held by concurrency, is ``queued``.)"""
        __tracebackhide__ = True
        self._expect_status("waiting")
        return self

    def assert_step(self, step_id: str, *, output: Any = ANY, attempts: int | None = None) -> TestRun:
        """A step completed (with ``output``), after exactly ``attempts`` attempts if given."""
        __tracebackhide__ = True
        tried = self.step_attempts(step_id)
        found = self.step_output(step_id)
        if output is not ANY and found != output:
            self._fail(f"step {step_id!r} returned {_json(found)}, expected {_json(output)}")
        if attempts is not None and len(tried) != attempts:
            self._fail(f"step {step_id!r} took {len(tried)} attempts, expected {attempts}")
        return self

    def assert_step_failed(
        self, step_id: str, *, name: str | None = None, message: str | None = None, attempts: int | None = None
    ) -> TestRun:
        """A step failed for good (no retry left, or NonRetriableError), with an error of this ``name``
        whose message contains ``message``, after exactly ``attempts`` attempts if given."""
        __tracebackhide__ = True
        tried = self.step_attempts(step_id)
        final = [attempt for attempt in tried if attempt.status == "failed"]
        if not final:
            self._fail(f"step {step_id!r} did not fail for good (its attempts: {[a.status for a in tried]})")
        error = final[-1].error or {}
        if name is not None and error.get("name") != name:
            self._fail(f"step {step_id!r} failed with {error.get('name')}, expected {name}")
        if message is not None and message not in str(error.get("message")):
            self._fail(f"step {step_id!r} failed with message {error.get('message')!r}, expected it to contain {message!r}")
        if attempts is not None and len(tried) != attempts:
            self._fail(f"step {step_id!r} took {len(tried)} attempts, expected {attempts}")
        return self

    def assert_no_step(self, step_id: str) -> TestRun:
        """The run never took the step."""
        __tracebackhide__ = True
        if self.step_attempts(step_id):
            self._fail(f"took step {step_id!r}, expected it not to")
        return self

    def _expect_status(self, status: str) -> None:
        __tracebackhide__ = True
        if self.status != status:
            error = self.error
            why = f" ({error['name']}: {error['message']})" if error else ""
            self._fail(f"is {self.status}{why}, expected {status}")

    def _expect_error(self, name: str | None, message: str | None) -> None:
        __tracebackhide__ = True
        error = self.error or {}
        if name is not None and error.get("name") != name:
            self._fail(f"failed with {error.get('name')}, expected {name}")
        if message is not None and message not in str(error.get("message")):
            self._fail(f"failed with message {error.get('message')!r}, expected it to contain {message!r}")

    def _fail(self, what: str) -> None:
        __tracebackhide__ = True
        raise AssertionError(f"run {self.run_id} of {self.function_id!r} {what}\n{self.describe()}")


def latest_per_attempt(attempts: list[StepAttempt]) -> list[StepAttempt]:
    """One entry per (step, attempt): its latest, in the order the attempts began."""
    latest: dict[tuple[str, int], StepAttempt] = {}
    for attempt in attempts:
        latest[(attempt.step, attempt.attempt)] = attempt
    return list(latest.values())


def _time_or_none(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


MAX_LINES = 60


def describe_history(history: RunHistory) -> str:
    """The run's status, then one line per step attempt (at most ``MAX_LINES``: its first and last
    ones), then how it ended."""
    run = history.run
    lines = [f"run {run['run_id']} of {run['function_id']!r}: {run['status']}"]
    attempts = [_attempt_line(attempt) for attempt in latest_per_attempt(history.steps)]
    if len(attempts) > MAX_LINES:
        half = MAX_LINES // 2
        attempts = [*attempts[:half], f"... {len(attempts) - 2 * half} more attempts ...", *attempts[-half:]]
    lines.extend("  " + line for line in attempts)
    error = run.get("error")
    if isinstance(error, dict):
        lines.append(f"  -> {error.get('name')}: {error.get('message')}")
    elif run["status"] == "completed":
        lines.append(f"  -> returned {_json(run.get('output'))}")
    return "\n".join(lines)


def _attempt_line(attempt: StepAttempt) -> str:
    head = f"{attempt.kind} {attempt.step!r} attempt {attempt.attempt + 1}: {attempt.status}"
    if attempt.error:
        head += f" - {attempt.error.get('name')}: {attempt.error.get('message')}"
    elif attempt.status == "completed":
        head += f" -> {_json(attempt.output)}"
    if attempt.retry_at:
        head += f" (retry at {attempt.retry_at})"
    if attempt.wake_at and attempt.status not in ("completed", "failed"):
        head += f" (until {attempt.wake_at})"
    if attempt.waiting_for and attempt.status not in ("completed", "failed"):
        head += f" (for {attempt.waiting_for})"
    return head


def _json(value: Any, width: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= width else text[: width - 1] + "…"
