"""What a function receives: ``ctx.event``, ``ctx.events``, ``ctx.run_id``, ``ctx.attempt``,
``ctx.step`` and ``ctx.logger``, in the shape of Inngest's Python SDK.

``ctx.step.run`` is a plain call in a ``def`` function and a coroutine in an ``async def`` one.
Step bodies may be plain or ``async`` in either.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import StepError
from steplog.engine.events import Event
from steplog.engine.ids import StepKeys
from steplog.engine.invocation import RUN_KIND, SEND_KIND, SLEEP_KIND, Invocation


def _logger(invocation: Invocation) -> logging.LoggerAdapter[logging.Logger]:
    logger = logging.getLogger(f"steplog.function.{invocation.function.id}")
    adapter = _QuietLogger(logger, {"run_id": invocation.state.run_id})
    adapter.invocation = invocation
    return adapter


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    invocation: Invocation

    def isEnabledFor(self, level: int) -> bool:
        return not self.invocation.replaying and self.logger.isEnabledFor(level)


class _StepCore:
    """The step logic both flavours share: memo lookup, running the body, committing."""

    def __init__(self, invocation: Invocation) -> None:
        # No reference back to the Context: without a cycle, an invocation's objects are freed
        # as soon as it ends, and the garbage collector has nothing to do on the hot path.
        self._invocation = invocation
        self._keys = StepKeys()

    def _key(self, step_id: str) -> str:
        if not isinstance(step_id, str) or not step_id:
            raise self._invocation.abort("StepIdError", f"a step id must be a non-empty string, got {step_id!r}")
        return self._keys.next(step_id)

    def _begin(self, step_id: str) -> tuple[str, Any, bool]:
        key = self._key(step_id)
        record = self._invocation.memoized(key, RUN_KIND)
        if record is not None:
            return key, record, True
        self._invocation.check_step_limit()
        self._invocation.attempt = self._invocation.step_attempt(key)
        self._invocation.in_step = True
        return key, None, False

    def _replayed(self, key: str, record: Any) -> Any:
        if record.error is not None:
            error = record.error
            raise StepError(key, error["name"], error["message"], error.get("stack"))
        return record.output

    def _sleep(self, step_id: str, wake_at: Callable[[], datetime]) -> None:
        key = self._key(step_id)
        if self._invocation.memoized(key, SLEEP_KIND) is not None:
            return
        self._invocation.check_step_limit()
        try:
            deadline = wake_at()
        except OverflowError:  # now + a duration past datetime.max
            raise self._invocation.abort("SleepError", f"step {key!r}: a sleep may last at most 366 days") from None
        except ValueError as error:
            raise self._invocation.abort("SleepError", f"step {key!r}: {error}") from None
        if deadline - self._invocation.clock.now() > MAX_SLEEP:
            raise self._invocation.abort("SleepError", f"step {key!r}: a sleep may last at most 366 days")
        self._invocation.sleep_until(key, step_id, deadline)

    def _send_event(self, step_id: str, events: Any) -> list[str]:
        key = self._key(step_id)
        record = self._invocation.memoized(key, SEND_KIND)
        if record is not None:
            return list(self._replayed(key, record))
        self._invocation.check_step_limit()
        items = [events] if isinstance(events, (Event, dict)) else list(events)
        as_dicts = [item.to_dict() if isinstance(item, Event) else dict(item) for item in items]
        return list(self._invocation.send_events(key, step_id, as_dicts))

    def _after(self, duration: Duration) -> Callable[[], datetime]:
        return lambda: self._invocation.clock.now() + parse_duration(duration, what="sleep duration")

    def _finish(self, key: str, step_id: str, started: Any, outcome: tuple[bool, Any]) -> Any:
        self._invocation.in_step = False
        self._invocation.attempt = self._invocation.state.run_failures
        ok, value = outcome
        if ok:
            return self._invocation.record_output(key, step_id, RUN_KIND, value, started)
        self._invocation.record_failure(key, step_id, RUN_KIND, value, started)


_NOT_YET = ("wait_for_event", "invoke")
MAX_SLEEP = timedelta(days=366)


class _Roadmap:
    """Inngest step tools steplog does not have yet fail the run at once with a clear message,
    rather than as an AttributeError retried like any other error."""

    _invocation: Invocation

    def __getattr__(self, name: str) -> Any:
        if name in _NOT_YET:
            message = (
                f"ctx.step.{name} is not available in this version of steplog"
                " (ctx.step.run, sleep, sleep_until and send_event are)"
            )
            raise self._invocation.abort("UnsupportedStepError", message)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class Step(_Roadmap, _StepCore):
    """Steps for ``def`` functions."""

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Sleep durably for ``duration`` (timedelta, seconds, or text like "1h30m"); no thread is held."""
        self._sleep(step_id, self._after(duration))

    def sleep_until(self, step_id: str, when: datetime | str) -> None:
        """Sleep durably until ``when`` (an aware datetime or ISO 8601 text); a past time returns at once."""
        self._sleep(step_id, lambda: wake_time(when))

    def send_event(self, step_id: str, events: Event | dict[str, Any] | list[Any]) -> list[str]:
        """Send events as a step; returns their ids. A replay returns the same ids and sends nothing."""
        return self._send_event(step_id, events)

    def run(self, step_id: str, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``handler(*args, **kwargs)`` once as a retriable step; return its committed result."""
        key, record, done = self._begin(step_id)
        if done:
            return self._replayed(key, record)
        started = self._invocation.clock.now()
        try:
            value = handler(*args, **kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            outcome: tuple[bool, Any] = (True, value)
        except Exception as error:  # noqa: BLE001 - any error of the step body is the step's failure
            outcome = (False, error)
        return self._finish(key, step_id, started, outcome)


class AsyncStep(_Roadmap, _StepCore):
    """Steps for ``async def`` functions: each method is awaited."""

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Sleep durably for ``duration`` (timedelta, seconds, or text like "1h30m"); no thread is held."""
        self._sleep(step_id, self._after(duration))

    async def sleep_until(self, step_id: str, when: datetime | str) -> None:
        """Sleep durably until ``when`` (an aware datetime or ISO 8601 text); a past time returns at once."""
        self._sleep(step_id, lambda: wake_time(when))

    async def send_event(self, step_id: str, events: Event | dict[str, Any] | list[Any]) -> list[str]:
        """Send events as a step; returns their ids. A replay returns the same ids and sends nothing."""
        return self._send_event(step_id, events)

    async def run(self, step_id: str, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``handler(*args, **kwargs)`` once as a retriable step; return its committed result."""
        key, record, done = self._begin(step_id)
        if done:
            return self._replayed(key, record)
        started = self._invocation.clock.now()
        try:
            value = handler(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            outcome: tuple[bool, Any] = (True, value)
        except Exception as error:  # noqa: BLE001 - any error of the step body is the step's failure
            outcome = (False, error)
        return self._finish(key, step_id, started, outcome)


def wake_time(when: datetime | str) -> datetime:
    """An aware datetime from a datetime or ISO 8601 text; ValueError otherwise."""
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{when!r} is not an ISO 8601 time") from None
    if not isinstance(when, datetime):
        raise ValueError(f"sleep_until needs a datetime or ISO 8601 text, got {type(when).__name__}")
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone; give an aware datetime or a UTC offset")
    return when


async def _await(awaitable: Any) -> Any:
    return await awaitable


@attrs.define(eq=False)
class Context:
    """The context of one invocation of a run."""

    event: Event
    events: list[Event]
    run_id: str
    function_id: str
    step: Any = None
    _invocation: Invocation | None = None
    _logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def attempt(self) -> int:
        """The attempt, from 0, of the step running now; outside steps, of the function's code."""
        assert self._invocation is not None
        return self._invocation.attempt

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger named ``steplog.function.<id>`` that stays quiet while the function replays."""
        if self._logger is None:
            assert self._invocation is not None
            self._logger = _logger(self._invocation)
        return self._logger


def make_context(invocation: Invocation) -> Context:
    """The context handed to the function for this invocation."""
    events = [Event.from_dict(raw) for raw in invocation.state.events]
    context = Context(
        event=events[0] if events else Event(name=""),
        events=events,
        run_id=invocation.state.run_id,
        function_id=invocation.function.id,
        invocation=invocation,
    )
    step_class = AsyncStep if invocation.function.is_async else Step
    context.step = step_class(invocation)
    return context
