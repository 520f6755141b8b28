"""One invocation of a run: the function called with its memo, committing each new step as it goes.

The invocation is the hot path. When a step body returns, its result is committed (the host's
``commit`` blocks until the entry is durable) and the same call of the function continues: a run
is replayed from the start only when a new invocation begins after a suspension or a crash.

Control flow that must get past user code's ``except Exception`` travels as BaseException
subclasses (``_Suspend``, ``_Abort``); the invocation catches every one of them, so nothing
escapes into the actor that hosts it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import attrs
from steplog.engine import records as r
from steplog.engine.clock import Clock
from steplog.engine.errors import NondeterminismError, NonRetriableError, StepError
from steplog.engine.functions import FunctionDef
from steplog.engine.jsonvalues import NotJSONError, encode, size_of
from steplog.engine.limits import Limits
from steplog.engine.records import ErrorInfo, error_info
from steplog.engine.state import RunState, StepRecord
from steplog.eventstore import NewEntry, format_time, parse_time

Commit = Callable[[Sequence[NewEntry]], None]
Send = Callable[[list[dict[str, Any]]], list[str]]
"""Sends events as the engine's ``send`` does and returns their ids once they are committed."""
RUN_KIND = "run"
SLEEP_KIND = "sleep"
SEND_KIND = "send_event"


class _Suspend(BaseException):
    """The run waits for a time; the invocation ends here."""

    def __init__(self, wake_at: datetime) -> None:
        self.wake_at = wake_at


class _HostFailure(BaseException):
    """Committing failed (the store broke, or another invocation owns the run): stop at once.

    A BaseException so that user code's ``except Exception`` cannot swallow it.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Abort(BaseException):
    """The run fails now, whatever the function's code does about it."""

    def __init__(self, error: ErrorInfo) -> None:
        self.error = error


@attrs.frozen
class Outcome:
    """How an invocation ended: ``completed``/``failed`` (final) or ``waiting`` until ``wake_at``."""

    status: str
    output: Any = None
    error: ErrorInfo | None = None
    wake_at: datetime | None = None


class Invocation:
    """Runs a function once against a run's state, committing through ``commit``."""

    def __init__(
        self,
        function: FunctionDef,
        state: RunState,
        *,
        commit: Commit,
        clock: Clock,
        limits: Limits,
        send: Send | None = None,
    ) -> None:
        self.function = function
        self.state = state
        self.clock = clock
        self.limits = limits
        self._commit = commit
        self.send = send
        self._pending_start = not state.started
        self._pending_resume = state.started and state.status == "waiting"
        self.memo_hits = 0
        self.live = False
        """Set once the function reaches a step that is not in the log: nothing after it is a replay."""
        self.in_step = False
        self.attempt = state.run_failures
        """What ``ctx.attempt`` says: the running step's attempt, or the function code's."""
        self._interrupt: BaseException | None = None

    def _interrupted(self, interrupt: BaseException) -> BaseException:
        """Remember an interrupt so that a bare ``except:`` in user code cannot make it vanish."""
        self._interrupt = interrupt
        return interrupt

    def check_interrupt(self) -> None:
        """Raise the pending interrupt again, if user code swallowed it."""
        if self._interrupt is not None:
            raise self._interrupt

    @property
    def replaying(self) -> bool:
        """True while the function is passing through steps already in the log."""
        return not self.live and self.memo_hits < len(self.state.memo)

    # -- committing ------------------------------------------------------------------------

    def commit(self, *entries: NewEntry) -> None:
        """Make entries durable in the run's stream (with run.started first, if it is not yet there)."""
        batch = list(entries)
        if self._pending_start:
            batch.insert(0, NewEntry(r.RUN_STARTED, {"at": format_time(self.clock.now())}))
        elif self._pending_resume:
            batch.insert(0, NewEntry(r.RUN_RESUMED, {"at": format_time(self.clock.now())}))
        try:
            self._commit(batch)
        except Exception as error:
            raise self._interrupted(_HostFailure(error)) from error
        self._pending_start = self._pending_resume = False
        for entry in batch:
            self.state.apply(entry.type, entry.data)

    # -- steps -----------------------------------------------------------------------------

    def memoized(self, key: str, kind: str) -> StepRecord | None:
        """The recorded result of a step, after checking that it is the same kind of step."""
        self.check_interrupt()
        record = self.state.memo.get(key)
        if record is None:
            if kind != SLEEP_KIND and key in self.state.sleeps:  # begun as a sleep, not yet completed
                changed = NondeterminismError(key, SLEEP_KIND, kind)
                raise self._interrupted(_Abort(error_info(changed, with_stack=False)))
            self.live = True
            return None
        if record.kind != kind:
            raise self._interrupted(_Abort(error_info(NondeterminismError(key, record.kind, kind), with_stack=False)))
        self.memo_hits += 1
        return record

    def abort(self, name: str, message: str) -> BaseException:
        """An interrupt that fails the run now: for misuse that no retry can fix."""
        return self._interrupted(_Abort({"name": name, "message": message, "stack": None}))

    def check_step_limit(self) -> None:
        if self.in_step:
            nested = {"name": "NestedStepError", "message": "steps cannot run inside a step body", "stack": None}
            raise self._interrupted(_Abort(nested))
        if len(self.state.memo) >= self.limits.steps_per_run:
            message = (
                f"the run exceeded its step limit of {self.limits.steps_per_run} steps"
                " (raise it with Steplog(max_steps_per_run=...) or Limits(steps_per_run=...))"
            )
            raise self._interrupted(_Abort({"name": "StepLimitError", "message": message, "stack": None}))

    def step_attempt(self, key: str) -> int:
        return self.state.step_failures.get(key, 0)

    def record_output(self, key: str, step_id: str, kind: str, output: Any, started: datetime) -> Any:
        """Commit a step's result; return it as the function will see it on any later replay."""
        try:
            text = self._encode_output(output, f"the output of step {key!r}")
        except NotJSONError as error:
            self.record_failure(key, step_id, kind, NonRetriableError(str(error)), started)
        base = self._step_base(key, step_id, kind, started)
        # the log holds its own JSON copy: what any backend gives back on replay, shared with no one
        recorded = _json_copy(output, text)
        self.commit(NewEntry(r.STEP_COMPLETED, {**base, "n": len(self.state.memo) + 1, "output": recorded}))
        return _json_copy(output, text)

    def record_failure(
        self, key: str, step_id: str, kind: str, error: BaseException, started: datetime
    ) -> NoReturn:
        """Commit a failed attempt; suspend for the retry, or raise StepError into the function."""
        info = error_info(error)
        failures = self.step_attempt(key) + 1
        retry_at = self._retry_at(error, failures, key)
        base = {**self._step_base(key, step_id, kind, started), "error": info}
        if retry_at is not None:
            self.commit(NewEntry(r.STEP_ERRORED, {**base, "retry_at": format_time(retry_at)}))
            raise self._interrupted(_Suspend(retry_at))
        self.commit(NewEntry(r.STEP_FAILED, {**base, "n": len(self.state.memo) + 1}))
        raise StepError(key, info["name"], info["message"], info["stack"]) from error

    def sleep_until(self, key: str, step_id: str, wake_at: datetime) -> None:
        """A durable sleep. The deadline is written once, at the first call; the run then waits
        with no thread, and this step completes on the first invocation at or after it."""
        now = self.clock.now()
        planned = self.state.sleeps.get(key)
        if planned is None and wake_at > now:
            data = {"step": key, "id": step_id, "kind": SLEEP_KIND, "started_at": format_time(now),
                    "wake_at": format_time(wake_at)}
            self.commit(NewEntry(r.STEP_SLEEPING, data))
            raise self._interrupted(_Suspend(wake_at))
        if planned is not None and parse_time(planned) > now:
            raise self._interrupted(_Suspend(parse_time(planned)))  # woken early: wait again, never run early
        started = parse_time(self._sleep_started(key)) if planned is not None else now
        base = self._step_base(key, step_id, SLEEP_KIND, started)
        self.commit(NewEntry(r.STEP_COMPLETED, {**base, "n": len(self.state.memo) + 1, "output": None}))

    def send_events(self, key: str, step_id: str, events: list[dict[str, Any]]) -> Any:
        """Send events as a step: committed before the call returns, never sent twice.

        Events without an ``id`` get one made of the run, the step and their position, so that a
        replay after a crash between the send and the step's commit is deduplicated (24 h).
        """
        started = self.clock.now()
        if self.send is None:
            raise self.abort("UnsupportedStepError", "this engine has no way to send events")
        stamped = [{**event, "id": event.get("id") or f"{self.state.run_id}:{key}:{index}"}
                   for index, event in enumerate(events)]
        try:
            ids = self.send(stamped)
        except (ValueError, TypeError) as error:  # a bad event: no retry can fix it
            self.record_failure(key, step_id, SEND_KIND, NonRetriableError(str(error)), started)
        except Exception as error:
            raise self._interrupted(_HostFailure(error)) from error
        return self.record_output(key, step_id, SEND_KIND, list(ids), started)

    def _sleep_started(self, key: str) -> str:
        return self.state.sleeps_started.get(key) or format_time(self.clock.now())

    def _now(self) -> str:
        return format_time(self.clock.now())

    def _step_base(self, key: str, step_id: str, kind: str, started: datetime) -> dict[str, Any]:
        return {
            "step": key, "id": step_id, "kind": kind, "attempt": self.step_attempt(key),
            "started_at": format_time(started), "ended_at": format_time(self.clock.now()),
        }

    def _retry_at(self, error: BaseException, failures: int, scope: str) -> datetime | None:
        rng = random.Random(f"{self.state.run_id}:{scope}:{failures}")
        return self.function.retry.retry_at(error, failures, self.clock.now(), rng)

    def _encode_output(self, value: Any, what: str) -> str:
        text = encode(value, what=what)
        if size_of(text) > self.limits.step_output_bytes:
            raise NotJSONError(f"{what} is {size_of(text)} bytes; the limit is {self.limits.step_output_bytes} bytes")
        return text

    # -- the whole invocation ----------------------------------------------------------------

    def run(self, context: Any) -> Outcome:
        """Call the function and commit how it ended.

        Raises only when committing fails (the error of the store or of the stale write),
        never for anything user code does.
        """
        try:
            return self._run(context)
        except _HostFailure as failure:
            raise failure.error from None

    def _run(self, context: Any) -> Outcome:
        if self.state.finished:
            return Outcome(self.state.status, self.state.output, self.state.error)
        if not self.state.started and self.state.ready_at is not None:
            ready_at = parse_time(self.state.ready_at)
            if ready_at > self.clock.now():  # an event's ts in the future: not before then
                return Outcome("waiting", wake_at=ready_at)
        try:
            output = self._call(context)
        except BaseException as raised:  # noqa: BLE001 - every way out of user code is decided here
            return self._conclude(self._interrupt or raised)
        if self._interrupt is not None:
            return self._conclude(self._interrupt)
        return self._complete(output)

    def _conclude(self, raised: BaseException) -> Outcome:
        if isinstance(raised, _Suspend):
            return Outcome("waiting", wake_at=raised.wake_at)
        if isinstance(raised, _Abort):
            return self._fail(raised.error)
        if isinstance(raised, (StepError, NonRetriableError)):
            return self._fail(error_info(raised))
        if isinstance(raised, Exception):
            return self._function_errored(raised)
        raise raised  # _HostFailure, and SystemExit or KeyboardInterrupt from user code

    def _call(self, context: Any) -> Any:
        if self.function.is_async:
            return asyncio.run(self.function.handler(context))
        return self.function.handler(context)

    def _complete(self, output: Any) -> Outcome:
        try:
            text = self._encode_output(output, f"the output of function {self.function.id!r}")
        except NotJSONError as error:
            return self._fail({"name": "OutputError", "message": str(error), "stack": None})
        recorded = _json_copy(output, text)
        self.commit(NewEntry(r.RUN_COMPLETED, {"output": recorded, "at": self._now(), "steps": len(self.state.memo)}))
        return Outcome("completed", output=_json_copy(output, text))

    def _fail(self, error: ErrorInfo) -> Outcome:
        self.commit(NewEntry(r.RUN_FAILED, {"error": error, "at": self._now(), "steps": len(self.state.memo)}))
        return Outcome("failed", error=error)

    def _function_errored(self, error: Exception) -> Outcome:
        retry_at = self._retry_at(error, self.state.run_failures + 1, "run")
        if retry_at is None:
            return self._fail(error_info(error))
        data = {"attempt": self.state.run_failures, "error": error_info(error), "retry_at": format_time(retry_at)}
        self.commit(NewEntry(r.RUN_ERRORED, data))
        return Outcome("waiting", wake_at=retry_at)


_SCALARS = (str, int, float, bool, type(None))


def _json_copy(value: Any, text: str) -> Any:
    """The value as JSON gives it back: what the function will also see on any replay."""
    if type(value) in _SCALARS:
        return value
    return json.loads(text)
