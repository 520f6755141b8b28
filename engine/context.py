"""What a function receives: ``ctx.event``, ``ctx.events``, ``ctx.run_id``, ``ctx.attempt``,
``ctx.step``, ``ctx.group`` and ``ctx.logger``, in the shape of Inngest's Python SDK.

``ctx.step.run`` is a plain call in a ``def`` function and a coroutine in an ``async def`` one.
Step bodies may be plain or ``async`` in either.

Parallel steps: ``ctx.group.parallel((lambda: ..., ...))`` runs each branch concurrently (threads
in a ``def`` function, tasks in an ``async def`` one) and returns their results in order. Branches
start in order and each takes its first step id before the next starts, so repeated ids get the
same keys on every replay; give later steps of different branches distinct ids. A branch that
sleeps or waits suspends alone; the others go on. ``asyncio.gather`` over step calls also works:
steps run concurrently and are memoized each on its own; a task that sleeps, waits or retries
suspends alone, and the invocation ends once every task has finished or suspended.
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
from steplog.engine.invocation import BRANCH, RUN_KIND, SEND_KIND, SLEEP_KIND, Branch, Invocation
from steplog.engine.jsonvalues import NotJSONError, encode, is_unicode, size_of
from steplog.engine.options import pause_expression, pause_timeout
from steplog.engine.parallel import AsyncGroup, Group
from steplog.engine.pauses import INVOKE_KIND, WAIT_KIND
from steplog.engine.system_events import FINISHED, invoked_event

DEFAULT_INVOKE_TIMEOUT = timedelta(days=365)
INVOKE_EXPRESSION = "event.correlation_id == async.data.correlation_id"


def _logger(invocation: Invocation) -> logging.LoggerAdapter[logging.Logger]:
    logger = logging.getLogger(f"steplog.function.{invocation.function.id}")
    adapter = _QuietLogger(logger, {"run_id": invocation.state.run_id})
    adapter.invocation = invocation
    return adapter


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    invocation: Invocation

    def isEnabledFor(self, level: int) -> bool:
        return not (self.invocation.replaying or self.invocation.quiet) and self.logger.isEnabledFor(level)


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
        if not is_unicode(step_id):
            raise self._invocation.abort("StepIdError", f"step id {step_id!r} holds a lone surrogate: not Unicode text")
        key = self._keys.next(step_id)
        branch = BRANCH.get()
        if branch is not None and branch.on_keyed is not None:
            branch.on_keyed()
        return key

    def _begin(self, step_id: str) -> tuple[str, Any, bool]:
        key = self._key(step_id)
        record = self._invocation.memoized(key, RUN_KIND)
        if record is not None:
            return key, record, True
        self._invocation.check_step_limit()
        self._invocation.wait_for_retry(key)
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

    def _wait_for_event(
        self, step_id: str, event: str, timeout: Duration, if_exp: str | None, match: str | None
    ) -> Event | None:
        key = self._key(step_id)
        invocation = self._invocation
        record = invocation.memoized(key, WAIT_KIND)
        if record is not None:
            return _as_event(record.output)
        invocation.check_step_limit()
        expression, duration = None, timedelta(0)
        if key not in invocation.state.waits:  # its options are checked once, when it is registered
            where = f"step {key!r}: wait_for_event"
            try:
                if not isinstance(event, str) or not event.strip() or "*" in event or not is_unicode(event):
                    raise ValueError(f"{where}: event must be an exact event name (Unicode text), got {event!r}")
                expression = pause_expression(if_exp, match, where)
                duration = pause_timeout(timeout, where)
            except ValueError as error:
                raise invocation.abort("WaitError", str(error)) from None
        result, started = invocation.wait(
            key, step_id, kind=WAIT_KIND, event=event, expression=expression, timeout=duration
        )
        return _as_event(invocation.complete_wait(key, step_id, WAIT_KIND, result, started))

    def _invoke(self, step_id: str, function: Any, data: Any, timeout: Duration | None, user: Any) -> Any:
        key = self._key(step_id)
        invocation = self._invocation
        record = invocation.memoized(key, INVOKE_KIND)
        if record is not None:
            return self._replayed(key, record)
        invocation.check_step_limit()
        now = invocation.clock.now()
        function_id = getattr(function, "id", function)
        duration, event = timedelta(0), None
        if key not in invocation.state.waits:
            problem = self._invoke_problem(function_id, data)
            if problem is not None:
                invocation.fail_step(key, step_id, INVOKE_KIND, {"name": "InvokeError", "message": problem}, now)
            try:
                duration = pause_timeout(timeout, f"step {key!r}: invoke", DEFAULT_INVOKE_TIMEOUT)
            except ValueError as error:
                raise invocation.abort("InvokeError", str(error)) from None
            event = invoked_event(function_id, data or {}, invocation.invoke_correlation(key), user)
        correlation = {"correlation_id": invocation.invoke_correlation(key)}
        finished, started = invocation.wait(
            key, step_id, kind=INVOKE_KIND, event=FINISHED, expression=INVOKE_EXPRESSION, timeout=duration,
            send=(event,) if event is not None else (), trigger=correlation,
        )
        if finished is None:
            timed_out = {"name": "InngestInvokeTimeoutError",
                         "message": "Timed out waiting for invoked function to complete", "stack": None}
            invocation.fail_step(key, step_id, INVOKE_KIND, timed_out, started)
        outcome = finished.get("data", {})
        if outcome.get("error") is not None:
            invocation.fail_step(key, step_id, INVOKE_KIND, _child_error(outcome["error"]), started)
        return invocation.complete_wait(key, step_id, INVOKE_KIND, outcome.get("result"), started)

    def _invoke_problem(self, function_id: Any, data: Any) -> str | None:
        registry = self._invocation.registry
        if not isinstance(function_id, str) or registry is None or registry.get(function_id) is None:
            return f"no function {function_id!r} to invoke"
        if data is not None and not isinstance(data, dict):
            return f"invoke data must be a JSON object (dict), got {type(data).__name__}"
        try:
            size = size_of(encode(data or {}, what="invoke data"))
        except NotJSONError as error:
            return str(error)
        limit = self._invocation.limits.event_bytes
        return None if size <= limit else f"invoke data is {size} bytes; the limit is {limit} bytes (as for events)"

    def _after(self, duration: Duration) -> Callable[[], datetime]:
        return lambda: self._invocation.clock.now() + parse_duration(duration, what="sleep duration")

    def _finish(self, key: str, step_id: str, started: Any, outcome: tuple[bool, Any]) -> Any:
        self._invocation.in_step = False
        self._invocation.attempt = self._invocation.state.run_failures
        ok, value = outcome
        if ok:
            return self._invocation.record_output(key, step_id, RUN_KIND, value, started)
        self._invocation.record_failure(key, step_id, RUN_KIND, value, started)


MAX_SLEEP = timedelta(days=366)


def _as_event(raw: Any) -> Event | None:
    return None if raw is None else Event.from_dict(raw)


def _child_error(error: Any) -> dict[str, Any]:
    if not isinstance(error, dict):
        return {"name": "Error", "message": str(error), "stack": None}
    return {"name": error.get("name") or "Error", "message": error.get("message") or "", "stack": error.get("stack")}


class Step(_StepCore):
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

    def wait_for_event(
        self, step_id: str, *, event: str, timeout: Duration, if_exp: str | None = None, match: str | None = None
    ) -> Event | None:
        """Wait for the first event named ``event`` committed after this wait that satisfies ``match``
        (``"data.id"``: equal to the trigger's) or ``if_exp`` (CEL over ``event``, the trigger, and
        ``async``, the candidate). Returns it, or None after ``timeout``. Events sent before the wait
        began are not seen. The run holds no thread while it waits."""
        return self._wait_for_event(step_id, event, timeout, if_exp, match)

    def invoke(
        self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
        timeout: Duration | None = None, user: dict[str, Any] | None = None,
    ) -> Any:
        """Start a run of ``function`` (a FunctionDef or its id) with ``data`` and return its result.
        Its failure or ``timeout`` (default one year) raises StepError here, without retries."""
        return self._invoke(step_id, function, data, timeout, user)

    def run(self, step_id: str, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``handler(*args, **kwargs)`` once as a retriable step; return its committed result."""
        key, record, done = self._begin(step_id)
        if done:
            return self._replayed(key, record)
        if self._invocation.hooks is not None:
            handler = self._invocation.hooks.body(self._invocation, step_id, key, handler)
        started = self._invocation.clock.now()
        try:
            value = handler(*args, **kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            outcome: tuple[bool, Any] = (True, value)
        except Exception as error:  # noqa: BLE001 - any error of the step body is the step's failure
            outcome = (False, error)
        return self._finish(key, step_id, started, outcome)


class AsyncStep(_StepCore):
    """Steps for ``async def`` functions: each method is awaited."""

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Sleep durably for ``duration`` (timedelta, seconds, or text like "1h30m"); no thread is held."""
        await self._in_task(lambda: self._sleep(step_id, self._after(duration)))

    async def sleep_until(self, step_id: str, when: datetime | str) -> None:
        """Sleep durably until ``when`` (an aware datetime or ISO 8601 text); a past time returns at once."""
        await self._in_task(lambda: self._sleep(step_id, lambda: wake_time(when)))

    async def send_event(self, step_id: str, events: Event | dict[str, Any] | list[Any]) -> list[str]:
        """Send events as a step; returns their ids. A replay returns the same ids and sends nothing."""
        return await self._in_task(lambda: self._send_event(step_id, events))  # type: ignore[no-any-return]

    async def _in_task(self, call: Callable[[], Any]) -> Any:
        """Call a step tool, in a task of asyncio.gather with the task's own step state."""
        self._enter_task()
        return call()

    async def wait_for_event(
        self, step_id: str, *, event: str, timeout: Duration, if_exp: str | None = None, match: str | None = None
    ) -> Event | None:
        """Wait for the first matching event committed after this wait (see Step.wait_for_event)."""
        return await self._in_task(  # type: ignore[no-any-return]
            lambda: self._wait_for_event(step_id, event, timeout, if_exp, match)
        )

    async def invoke(
        self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
        timeout: Duration | None = None, user: dict[str, Any] | None = None,
    ) -> Any:
        """Start a run of ``function`` and return its result (see Step.invoke)."""
        return await self._in_task(lambda: self._invoke(step_id, function, data, timeout, user))

    async def run(self, step_id: str, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``handler(*args, **kwargs)`` once as a retriable step; return its committed result."""
        implicit = self._enter_task()
        key, record, done = self._begin(step_id)
        if done:
            return self._replayed(key, record)
        invocation = self._invocation
        if invocation.hooks is not None:
            handler = invocation.hooks.body(invocation, step_id, key, handler)
        started = invocation.clock.now()
        concurrent = implicit or BRANCH.get() is not None
        try:
            if concurrent and not inspect.iscoroutinefunction(handler):
                value = await asyncio.to_thread(handler, *args, **kwargs)  # other branches go on meanwhile
            else:
                value = handler(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            outcome: tuple[bool, Any] = (True, value)
        except Exception as error:  # noqa: BLE001 - any error of the step body is the step's failure
            outcome = (False, error)
        finally:
            invocation.body_finished()
        return self._finish(key, step_id, started, outcome)

    def _enter_task(self) -> bool:
        """In a task of asyncio.gather, give the task its own step state; True if it is such a task."""
        branch = BRANCH.get()
        if branch is not None:
            return not branch.explicit
        task = asyncio.current_task()
        if task is None or task is self._invocation.main_task:
            return False
        branch = Branch(explicit=False)
        BRANCH.set(branch)
        self._invocation.step_tasks[task] = branch
        return True


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
    group: Any = None
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
    if invocation.function.is_async:
        context.step, context.group = AsyncStep(invocation), AsyncGroup(invocation)
    else:
        context.step, context.group = Step(invocation), Group(invocation)
    return context
