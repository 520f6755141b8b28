"""One invocation of a run: the function called with its memo, committing each new step as it goes.

The invocation is the hot path. When a step body returns, its result is committed (the host's
``commit`` blocks until the entry is durable) and the same call of the function continues: a run
is replayed from the start only when a new invocation begins after a suspension or a crash.

Control flow that must get past user code's ``except Exception`` travels as BaseException
subclasses (``_Suspend``, ``_Abort``, ``_Cancel``); the invocation catches every one of them, so
nothing escapes into the actor that hosts it.

Inside ``group.parallel`` each branch has a ``Branch``: a branch that sleeps or waits suspends
only itself, and the others go on; the invocation suspends when every branch has finished or
suspended. Aborts and cancellation stop every branch.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

import attrs
from steplog.engine import records as r
from steplog.engine.clock import Clock
from steplog.engine.coordination import Accepted, Answer, Done, EndRun, ExpireWait, RegisterWait, Request, SendEvents
from steplog.engine.errors import EngineError, NondeterminismError, NonRetriableError, StepError
from steplog.engine.functions import FunctionDef, FunctionRegistry
from steplog.engine.jsonvalues import NotJSONError, encode, size_of
from steplog.engine.limits import Limits
from steplog.engine.pauses import INVOKE_KIND, WAIT_KIND, make_pause
from steplog.engine.records import ErrorInfo, error_info
from steplog.engine.state import RunState, StepRecord
from steplog.engine.system_events import END_EVENTS, correlation_id, end_events, trimmed
from steplog.eventstore import NewEntry, format_time, parse_time

Commit = Callable[[Sequence[NewEntry]], None]
Coordinate = Callable[[Request], Answer]
RUN_KIND = "run"
SLEEP_KIND = "sleep"
SEND_KIND = "send_event"
WAIT_STEP_KINDS = (WAIT_KIND, INVOKE_KIND)
_PENDING = object()


@attrs.define(eq=False)
class Branch:
    """One branch of ``group.parallel`` (or one task of ``asyncio.gather``): its step state and suspension."""

    in_step: bool = False
    attempt: int | None = None
    suspended: _Suspend | None = None
    explicit: bool = True
    """False for a task of asyncio.gather (its suspension is also noted on the invocation)."""
    on_keyed: Callable[[], None] | None = None
    """Called when the branch takes a step key, so that the next branch may start (sync parallel)."""


BRANCH: contextvars.ContextVar[Branch | None] = contextvars.ContextVar("steplog_branch", default=None)


def is_process_exit(error: BaseException | None) -> bool:
    """A BaseException that is none of the engine's interrupts: the process is going down
    (SystemExit, KeyboardInterrupt, a test harness's simulated crash). It wins over anything a
    run's code or its other branches did, and escapes the invocation with nothing committed."""
    return error is not None and not isinstance(error, (Exception, _Cancel, _Suspend, _HostFailure, _Abort))


class _Cancel(BaseException):
    """The run was cancelled; the invocation records it and ends."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


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
    """How an invocation ended: ``completed``/``failed``/``cancelled`` (final) or ``waiting`` until ``wake_at``."""

    status: str
    output: Any = None
    error: ErrorInfo | None = None
    wake_at: datetime | None = None


class StepHooks(Protocol):
    """What a test harness may observe and replace in an invocation (``steplog.testing``); None in
    production, where each hook costs one ``is None`` check per step."""

    def reached(self, invocation: Invocation, key: str, kind: str, record: StepRecord | None) -> None:
        """The function asked for step ``key``: ``record`` is its memoized result, None if it is new.
        It may raise ``invocation.abort(...)`` to stop the run there."""

    def body(self, invocation: Invocation, step_id: str, key: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """The body to run for a new attempt of ``step.run(step_id, handler)``: ``handler`` or a stand-in."""


class Invocation:
    """Runs a function once against a run's state, committing through ``commit``.

    ``coordinate`` reaches the coordinator (waits, sends, run ends that others listen for);
    ``cancelling`` maps runs asked to cancel to the reason; ``listens_for`` says whether an event
    name has listeners; ``registry`` finds functions for ``invoke``.
    """

    def __init__(
        self,
        function: FunctionDef,
        state: RunState,
        *,
        commit: Commit,
        clock: Clock,
        limits: Limits,
        coordinate: Coordinate | None = None,
        cancelling: Mapping[str, str] | None = None,
        listens_for: Callable[[str], bool] | None = None,
        registry: FunctionRegistry | None = None,
        hooks: StepHooks | None = None,
    ) -> None:
        self.function = function
        self.hooks = hooks
        self.quiet = False
        """Set by a harness whose invocation is a check, not a run: ``ctx.logger`` says nothing."""
        self.state = state
        self.clock = clock
        self.limits = limits
        self._commit = commit
        self.coordinate = coordinate
        self.cancelling: Mapping[str, str] = cancelling if cancelling is not None else {}
        self._listens_for = listens_for or (lambda _name: False)
        self.registry = registry
        self._lock = threading.RLock()
        self.main_task: Any = None
        self.step_tasks: dict[Any, Branch] = {}
        """The asyncio tasks that took steps (gathered, or branches), with their branches."""
        self._body_done: asyncio.Event | None = None
        self._suspended_tasks: list[_Suspend] = []
        """Suspensions of asyncio.gather tasks: the run waits even if the function's code goes on."""
        self._pending_start = not state.started
        self._began = clock.now()
        self._deferred: list[NewEntry] = []
        """When this invocation began: the run's start (or resume) time, whenever it is first recorded."""
        self._pending_resume = state.started and state.status == "waiting"
        self.memo_hits = 0
        self.live = False
        """Set once the function reaches a step that is not in the log: nothing after it is a replay."""
        self._in_step = False
        self._attempt = state.run_failures
        self._interrupt: BaseException | None = None

    def _interrupted(self, interrupt: BaseException) -> BaseException:
        """Remember an interrupt so that a bare ``except:`` in user code cannot make it vanish.

        A suspension inside a parallel branch belongs to that branch alone.
        """
        branch = BRANCH.get()
        if isinstance(interrupt, _Suspend) and branch is not None:
            branch.suspended = interrupt
            if not branch.explicit:
                self._suspended_tasks.append(interrupt)
        else:
            self._interrupt = interrupt
        return interrupt

    def check_interrupt(self) -> None:
        """Raise the pending interrupt again, if user code swallowed it.

        Outside branches, a gathered task's suspension counts too: code after an
        ``asyncio.gather(..., return_exceptions=True)`` must not go on with a missing result.
        """
        if self._interrupt is not None:
            raise self._interrupt
        branch = BRANCH.get()
        if branch is not None and branch.suspended is not None:
            raise branch.suspended
        if branch is None and self._suspended_tasks:
            raise self._suspended_tasks[0]

    # -- step state (per branch inside group.parallel) -------------------------------------------

    @property
    def in_step(self) -> bool:
        branch = BRANCH.get()
        return self._in_step if branch is None else branch.in_step

    @in_step.setter
    def in_step(self, value: bool) -> None:
        branch = BRANCH.get()
        if branch is None:
            self._in_step = value
        else:
            branch.in_step = value

    @property
    def attempt(self) -> int:
        """What ``ctx.attempt`` says: the running step's attempt, or the function code's."""
        branch = BRANCH.get()
        if branch is not None and branch.attempt is not None:
            return branch.attempt
        return self._attempt

    @attempt.setter
    def attempt(self, value: int) -> None:
        branch = BRANCH.get()
        if branch is None:
            self._attempt = value
        else:
            branch.attempt = value

    # -- cancellation and timeouts ---------------------------------------------------------------

    def check_cancel(self) -> None:
        """Stop here, before a new step, if the run was asked to cancel or is past a timeout."""
        reason = self.cancelling.get(self.state.run_id) or self.state.cancel_requested or self._timed_out()
        if reason is not None:
            raise self._interrupted(_Cancel(reason))

    def _timed_out(self) -> str | None:
        timeouts = self.function.timeouts
        if timeouts is None:
            return None
        now = self.clock.now()
        start_deadline = None if self.state.started else timeouts.start_deadline(self.state.scheduled_at)
        if start_deadline is not None and now >= start_deadline:
            return f"timeouts.start: the run did not start within {timeouts.start}"
        deadline = self._finish_deadline()
        if deadline is not None and now >= deadline:
            return f"timeouts.finish: the run did not finish within {timeouts.finish} of its start"
        return None

    def _started_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": format_time(self._began)}
        if "throttle" in self.state.flow:  # the projection keeps the key's latest start, for restarts
            data["throttle"] = [self.state.function_id, self.state.flow["throttle"]]
        return data

    def _finish_deadline(self) -> datetime | None:
        timeouts = self.function.timeouts
        if timeouts is None or timeouts.finish is None:
            return None
        started = parse_time(self.state.started_at) if self.state.started_at else self._began
        return started + timeouts.finish

    def next_wake(self, *candidates: datetime) -> datetime:
        """The earliest time the run must be woken: its pending sleeps, waits, and finish timeout."""
        done = {entry.data["step"] for entry in self._deferred}
        pending = self.state.pending_deadlines if not done else self.state.pending_deadlines_except(done)
        # a deadline already past when this invocation began, and not completed, is not reached by the code
        # (it changed, or the step is behind another branch's wait): waking for it again at once
        # would only spin
        times = [*candidates, *(t for t in map(parse_time, pending) if t > self._began)]
        deadline = self._finish_deadline()
        if deadline is not None:
            times.append(deadline)
        return min(times) if times else self.clock.now()

    @property
    def replaying(self) -> bool:
        """True while the function is passing through steps already in the log."""
        return not self.live and self.memo_hits < len(self.state.memo)

    # -- committing ------------------------------------------------------------------------

    def commit(self, *entries: NewEntry) -> None:
        """Make entries durable in the run's stream (with run.started first, if it is not yet there)."""
        with self._lock:
            batch = self._prefixed(entries)
            try:
                self._commit(batch)
            except Exception as error:
                raise self._interrupted(_HostFailure(error)) from error
            self._applied(batch)

    def defer(self, entry: NewEntry) -> None:
        """Record a step's completion with the run's next commit rather than in a commit of its own.

        Only for results that a replay derives again, identically, from what is already durable:
        a sleep whose deadline has passed (None), a wait whose outcome is in the signal stream.
        A woken run then commits its wake, its next step and so on together, not one by one.
        """
        with self._lock:
            self._deferred.append(entry)

    @property
    def finished_steps(self) -> int:
        """The run's finished steps, counting completions not yet committed."""
        return len(self.state.memo) + len(self._deferred)

    def _prefixed(self, entries: Sequence[NewEntry]) -> list[NewEntry]:
        batch = [*self._deferred, *entries] if self._deferred else list(entries)
        if self._pending_start:
            batch.insert(0, NewEntry(r.RUN_STARTED, self._started_data()))
        elif self._pending_resume:
            batch.insert(0, NewEntry(r.RUN_RESUMED, {"at": format_time(self._began)}))
        return batch

    def _applied(self, batch: Sequence[NewEntry]) -> None:
        self._pending_start = self._pending_resume = False
        self._deferred.clear()
        for entry in batch:
            self.state.apply(entry.type, entry.data)

    def _coordinated(self, make: Callable[[list[NewEntry]], Request], entries: Sequence[NewEntry]) -> Answer:
        """Commit run entries through the coordinator (ordered with events); StaleRunError stops the run."""
        with self._lock:
            batch = self._prefixed(entries)
            answer = self._ask(make(batch))
            if not isinstance(answer, Exception):
                self._applied(batch)
            return answer

    def _ask(self, request: Request) -> Answer:
        """The coordinator's answer; one an engine error (a bad event) is returned, any other failure
        (the store, a stale run) stops the invocation. Parallel branches ask one at a time."""
        if self.coordinate is None:
            raise self.abort("UnsupportedStepError", "this engine has no coordinator for waits and events")
        with self._lock:
            try:
                answer = self.coordinate(request)
            except Exception as error:
                raise self._interrupted(_HostFailure(error)) from error
        if isinstance(answer, Exception) and not isinstance(answer, EngineError):
            raise self._interrupted(_HostFailure(answer))
        return answer

    # -- steps -----------------------------------------------------------------------------

    def memoized(self, key: str, kind: str) -> StepRecord | None:
        """The recorded result of a step, after checking that it is the same kind of step."""
        self.check_interrupt()
        record = self.state.memo.get(key)
        if record is None:
            begun = SLEEP_KIND if key in self.state.sleeps else self.state.waits.get(key, {}).get("kind")
            # begun as a sleep or wait, or a step.run with failed attempts (only step.run retries)
            attempted = begun or (RUN_KIND if key in self.state.step_failures else None)
            if attempted is not None and attempted != kind:
                changed = NondeterminismError(key, attempted, kind, run_id=self.state.run_id)
                raise self._interrupted(_Abort(error_info(changed, with_stack=False)))
            if begun is None:
                self.check_cancel()
            self.live = True
            if self.hooks is not None:
                self.hooks.reached(self, key, kind, None)
            return None
        if record.kind != kind:
            changed = NondeterminismError(key, record.kind, kind, run_id=self.state.run_id)
            raise self._interrupted(_Abort(error_info(changed, with_stack=False)))
        self.memo_hits += 1
        if self.hooks is not None:
            self.hooks.reached(self, key, kind, record)
        return record

    def abort(self, name: str, message: str) -> BaseException:
        """An interrupt that fails the run now: for misuse that no retry can fix."""
        return self._interrupted(_Abort({"name": name, "message": message, "stack": None}))

    def check_step_limit(self) -> None:
        if self.in_step:
            nested = {"name": "NestedStepError", "message": "steps cannot run inside a step body", "stack": None}
            raise self._interrupted(_Abort(nested))
        if self.finished_steps >= self.limits.steps_per_run:
            message = (
                f"the run exceeded its step limit of {self.limits.steps_per_run} steps"
                " (raise it with Steplog(max_steps_per_run=...) or Limits(steps_per_run=...))"
            )
            raise self._interrupted(_Abort({"name": "StepLimitError", "message": message, "stack": None}))

    def step_attempt(self, key: str) -> int:
        return self.state.step_failures.get(key, 0)

    def wait_for_retry(self, key: str) -> None:
        """Woken before a failed step's retry time (a restart acting on an old wakeup, a signal to another
        branch): wait again, never retry early."""
        retry_at = self.state.step_retry_at.get(key)
        if retry_at is not None and parse_time(retry_at) > self.clock.now():
            raise self._interrupted(_Suspend(parse_time(retry_at)))

    def record_output(self, key: str, step_id: str, kind: str, output: Any, started: datetime) -> Any:
        """Commit a step's result; return it as the function will see it on any later replay."""
        try:
            text = self._encode_output(output, f"the output of step {key!r}")
        except NotJSONError as error:
            self.record_failure(key, step_id, kind, NonRetriableError(str(error)), started)
        base = self._step_base(key, step_id, kind, started)
        # the log holds its own JSON copy: what any backend gives back on replay, shared with no one
        recorded = _json_copy(output, text)
        self.commit(NewEntry(r.STEP_COMPLETED, {**base, "n": self.finished_steps + 1, "output": recorded}))
        return _json_copy(output, text)

    def record_failure(
        self, key: str, step_id: str, kind: str, error: BaseException, started: datetime
    ) -> NoReturn:
        """Commit a failed attempt; suspend for the retry, or raise StepError into the function."""
        info = error_info(error)
        failures = self.step_attempt(key) + 1
        retry_at = self._retry_at(error, failures, key)
        if retry_at is not None:
            base = {**self._step_base(key, step_id, kind, started), "error": info}
            due = format_time(self.next_wake(retry_at))
            self.commit(NewEntry(r.STEP_ERRORED, {**base, "retry_at": format_time(retry_at), "due_at": due}))
            raise self._interrupted(_Suspend(retry_at))
        self.fail_step(key, step_id, kind, info, started, cause=error)

    def fail_step(
        self, key: str, step_id: str, kind: str, info: ErrorInfo, started: datetime, cause: BaseException | None = None
    ) -> NoReturn:
        """Commit a step's final failure and raise it into the function as StepError."""
        base = {**self._step_base(key, step_id, kind, started), "error": info}
        self.commit(NewEntry(r.STEP_FAILED, {**base, "n": self.finished_steps + 1}))
        raise StepError(key, info["name"], info["message"], info.get("stack")) from cause

    def sleep_until(self, key: str, step_id: str, wake_at: datetime) -> None:
        """A durable sleep. The deadline is written once, at the first call; the run then waits
        with no thread, and this step completes on the first invocation at or after it."""
        now = self.clock.now()
        planned = self.state.sleeps.get(key)
        if planned is None and wake_at > now:
            data = {"step": key, "id": step_id, "kind": SLEEP_KIND, "started_at": format_time(now),
                    "wake_at": format_time(wake_at), "due_at": format_time(self.next_wake(wake_at))}
            self.commit(NewEntry(r.STEP_SLEEPING, data))
            raise self._interrupted(_Suspend(wake_at))
        if planned is not None and parse_time(planned) > now:
            raise self._interrupted(_Suspend(parse_time(planned)))  # woken early: wait again, never run early
        started = parse_time(self._sleep_started(key)) if planned is not None else now
        base = self._step_base(key, step_id, SLEEP_KIND, started)
        self.defer(NewEntry(r.STEP_COMPLETED, {**base, "n": self.finished_steps + 1, "output": None}))

    def send_events(self, key: str, step_id: str, events: list[dict[str, Any]]) -> Any:
        """Send events as a step: committed before the call returns, never sent twice.

        Events without an ``id`` get one made of the run, the step and their position, so that a
        replay after a crash between the send and the step's commit is deduplicated (24 h).
        """
        started = self.clock.now()
        stamped = [{**event, "id": event.get("id") or f"{self.state.run_id}:{key}:{index}"}
                   for index, event in enumerate(events)]
        answer = self._ask(SendEvents(stamped))
        if isinstance(answer, Exception):  # a bad event: no retry can fix it
            self.record_failure(key, step_id, SEND_KIND, NonRetriableError(str(answer)), started)
        assert isinstance(answer, Accepted)
        return self.record_output(key, step_id, SEND_KIND, list(answer.ids), started)

    # -- waits and invokes -------------------------------------------------------------------------

    def wait(
        self, key: str, step_id: str, *, kind: str, event: str, expression: str | None, timeout: timedelta,
        send: Sequence[dict[str, Any]] = (), trigger: dict[str, Any] | None = None,
    ) -> tuple[Any, datetime]:
        """Register a wait at its first call (and suspend); later, its result: the event, or None if it expired.

        Returns the result and when the wait began.
        """
        pending = self.state.waits.get(key)
        if pending is None:
            self._register(key, step_id, kind, event, expression, timeout, send, trigger)
        started = parse_time(pending["started_at"])
        result = self.state.wait_results.get(key, _PENDING)
        if result is _PENDING:
            expires = parse_time(pending["expires_at"])
            if expires > self.clock.now():
                raise self._interrupted(_Suspend(self.next_wake()))  # woken for something else: wait on
            result = self._expire(key)
        return result, started

    def _expire(self, key: str) -> Any:
        answer = self._ask(ExpireWait(self.state.run_id, key))
        assert isinstance(answer, Done)
        return answer.value

    def _register(
        self, key: str, step_id: str, kind: str, event: str, expression: str | None, timeout: timedelta,
        send: Sequence[dict[str, Any]], trigger: dict[str, Any] | None,
    ) -> NoReturn:
        now = self.clock.now()
        if trigger is None:
            trigger = self.state.events[0] if self.state.events else {}
        pause = make_pause(
            run_id=self.state.run_id, function_id=self.function.id, step=key, kind=kind, event=event,
            expression=expression, trigger_event=trigger, expires_at=format_time(now + timeout),
        )
        due = self.next_wake(now + timeout)
        data = {"step": key, "id": step_id, "kind": kind, "started_at": format_time(now), "pause": pause.to_dict(),
                "due_at": format_time(due)}
        answer = self._coordinated(
            lambda batch: RegisterWait(self.state.run_id, self.state.version, tuple(batch), pause, tuple(send)),
            [NewEntry(r.STEP_WAITING, data)],
        )
        if isinstance(answer, Exception):  # the invoked function's event was refused
            raise self.abort(type(answer).__name__, f"step {key!r}: {answer}")
        raise self._interrupted(_Suspend(due))

    def complete_wait(self, key: str, step_id: str, kind: str, output: Any, started: datetime) -> Any:
        """Record a wait's result as its step's output (with the next commit: see ``defer``)."""
        self.defer(NewEntry(r.STEP_COMPLETED, {**self._step_base(key, step_id, kind, started),
                                               "n": self.finished_steps + 1, "output": output}))
        return output

    def invoke_correlation(self, key: str) -> str:
        """The id that ties an invoked run's end to this run's step."""
        return f"{self.state.run_id}.{key}"

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
        try:
            self.check_cancel()
        except _Cancel as cancel:
            return self._conclude(cancel)
        if not self.state.started and self.state.ready_at is not None:
            ready_at = parse_time(self.state.ready_at)
            if ready_at > self.clock.now():  # throttled, or an event's ts in the future: not before then
                timeouts = self.function.timeouts
                deadline = timeouts.start_deadline(self.state.scheduled_at) if timeouts else None
                return Outcome("waiting", wake_at=min(ready_at, deadline or ready_at))
        retry_at = self.state.run_retry_at
        if retry_at is not None and parse_time(retry_at) > self.clock.now():
            return self._suspend(parse_time(retry_at))  # woken early (an old wakeup): never retry early
        try:
            output = self._call(context)
        except BaseException as raised:  # noqa: BLE001 - every way out of user code is decided here
            if is_process_exit(raised):
                raise
            self._raise_process_exit_of_a_task()
            return self._conclude(self._interrupt or self._task_suspension() or raised)
        self._raise_process_exit_of_a_task()
        pending = self._interrupt or self._task_suspension()
        if pending is not None:
            return self._conclude(pending)
        return self._complete(output)

    def _raise_process_exit_of_a_task(self) -> None:
        """A gathered task that ended the process (SystemExit, KeyboardInterrupt, a test's simulated
        crash) ends it even if another task's suspension or error reached the function first."""
        for task in self.step_tasks:
            if task.done() and not task.cancelled() and is_process_exit(task.exception()):
                raise task.exception()

    def _task_suspension(self) -> _Suspend | None:
        """The earliest suspension of a gathered task, if any: the run must wait for it."""
        if not self._suspended_tasks:
            return None
        return min(self._suspended_tasks, key=lambda suspend: suspend.wake_at)

    def _conclude(self, raised: BaseException) -> Outcome:
        if isinstance(raised, _Suspend):
            return self._suspend(raised.wake_at)
        if isinstance(raised, _Cancel):
            return self._cancel(raised.reason)
        if isinstance(raised, _Abort):
            return self._fail(raised.error)
        if isinstance(raised, (StepError, NonRetriableError)):
            return self._fail(error_info(raised))
        if isinstance(raised, Exception):
            return self._function_errored(raised)
        raise raised  # _HostFailure, and SystemExit or KeyboardInterrupt from user code

    def _call(self, context: Any) -> Any:
        if self.function.is_async:
            return asyncio.run(self._main(context))
        return self.function.handler(context)

    async def _main(self, context: Any) -> Any:
        self.main_task = asyncio.current_task()
        try:
            return await self.function.handler(context)
        finally:
            await self._step_tasks_done()  # gathered tasks go on (and commit) until each finishes or suspends

    async def _step_tasks_done(self) -> None:
        """Let the tasks that took steps go on until none is in a step body and none can take another
        step without the function's own code, which has ended; then cancel what is left.

        A task in a step body is waited for, so that its result is committed rather than lost. A task
        waiting for something only the ended code would give it (an event, a queue) is cancelled;
        its next steps run at the run's next invocation.
        """
        self._body_done = asyncio.Event()
        quiet_passes = 0
        while quiet_passes < QUIET_PASSES:
            live = [(task, branch) for task, branch in self.step_tasks.items() if not task.done()]
            if not live:
                return
            if any(branch.in_step for _, branch in live):
                self._body_done.clear()
                await self._body_done.wait()
                quiet_passes = 0
                continue
            await asyncio.sleep(0)  # one turn of the loop: a runnable task takes its next step or ends
            quiet_passes += 1
        for task, _ in live:
            task.cancel()
        await asyncio.gather(*(task for task, _ in live), return_exceptions=True)

    def body_finished(self) -> None:
        """An async step body ended (called on the event loop's thread)."""
        if self._body_done is not None:
            self._body_done.set()

    def _suspend(self, wake_at: datetime) -> Outcome:
        wake = self.next_wake(wake_at)
        if self.state.status != "waiting" or self._deferred:  # nothing recorded says so since it resumed
            self.commit(NewEntry(r.RUN_SUSPENDED, {"due_at": format_time(wake)}))
        return Outcome("waiting", wake_at=wake)

    def _complete(self, output: Any) -> Outcome:
        try:
            text = self._encode_output(output, f"the output of function {self.function.id!r}")
        except NotJSONError as error:
            return self._fail({"name": "OutputError", "message": str(error), "stack": None})
        recorded = _json_copy(output, text)
        data = {"output": recorded, "at": self._now(), "steps": self.finished_steps}
        self._end("completed", NewEntry(r.RUN_COMPLETED, data), output=recorded)
        return Outcome("completed", output=_json_copy(output, text))

    def _fail(self, error: ErrorInfo) -> Outcome:
        self._end("failed", NewEntry(r.RUN_FAILED, {"error": error, "at": self._now(), "steps": self.finished_steps}),
                  error=error)
        return Outcome("failed", error=error)

    def _cancel(self, reason: str) -> Outcome:
        error = {"name": "RunCancelled", "message": f"run cancelled: {reason}", "stack": None}
        data = {"reason": reason, "error": error, "at": self._now(), "steps": self.finished_steps}
        self._pending_start = False  # a run cancelled before it started never started
        self._end("cancelled", NewEntry(r.RUN_CANCELLED, data), error=error)
        return Outcome("cancelled", error=error)

    def _end(self, status: str, entry: NewEntry, *, output: Any = None, error: Any = None) -> None:
        """Record the run's end; with its end events, releasing its pauses or its singleton key, through the
        coordinator, if needed."""
        release = self.state.open_pauses
        if release:
            entry = NewEntry(entry.type, {**entry.data, "release": release})
        announce = correlation_id(self.state) is not None or any(self._listens_for(n) for n in END_EVENTS[status])
        if not release and not announce and self.function.flow.singleton is None:
            self.commit(entry)
            return
        events = tuple(end_events(self.state, status, output=output, error=error)) if announce else ()
        answer = self._end_through_coordinator(entry, events)
        if isinstance(answer, EngineError) and events:  # an end event refused: never let it block the end
            answer = self._end_through_coordinator(entry, tuple(trimmed(event, str(answer)) for event in events))
        if isinstance(answer, Exception):
            raise self._interrupted(_HostFailure(answer))

    def _end_through_coordinator(self, entry: NewEntry, events: tuple[dict[str, Any], ...]) -> Answer:
        return self._coordinated(
            lambda batch: EndRun(self.state.run_id, self.state.version, tuple(batch), events), [entry]
        )

    def _function_errored(self, error: Exception) -> Outcome:
        retry_at = self._retry_at(error, self.state.run_failures + 1, "run")
        if retry_at is None:
            return self._fail(error_info(error))
        wake = self.next_wake(retry_at)  # a finish timeout may come first
        data = {"attempt": self.state.run_failures, "error": error_info(error), "retry_at": format_time(retry_at),
                "due_at": format_time(wake)}
        self.commit(NewEntry(r.RUN_ERRORED, data))
        return Outcome("waiting", wake_at=wake)


QUIET_PASSES = 3
_SCALARS = (str, int, float, bool, type(None))


def _json_copy(value: Any, text: str) -> Any:
    """The value as JSON gives it back: what the function will also see on any replay."""
    if type(value) in _SCALARS:
        return value
    return json.loads(text)
