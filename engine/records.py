"""The entries the engine writes to the log, by type, and how their streams are named.

A run is the stream ``run/<run_id>``; an event is the stream ``event/<internal id>``. What other
parties tell a run (a matching event arrived for its wait, a wait expired, cancel it) goes to
``signal/<run_id>``, written only by the coordinator: the run's own stream has a single writer,
the run's invocation, and signals never race with it.

| type            | data                                                                  |
|-----------------|-----------------------------------------------------------------------|
| event.received  | internal_id, event, trigger_errors [{function_id, error}]             |
| event.duplicate | internal_id, event (its id was seen within the deduplication window)  |
| run.scheduled   | run_id, function_id, event_ids, events, ready_at, flow?, buckets?, cancel? |
| run.skipped     | run_id, function_id, event_ids, events, reason, message, at (flow control: never starts) |
| run.started     | at                                                                    |
| run.resumed     | at (the first entry of an invocation after a wait)                    |
| step.completed  | step, id, kind, n, attempt, output, started_at, ended_at              |
| step.errored    | step, id, kind, attempt, error, retry_at, started_at, ended_at        |
| step.failed     | step, id, kind, n, attempt, error, started_at, ended_at               |
| step.sleeping   | step, id, kind, started_at, wake_at, due_at (a durable sleep began)   |
| step.waiting    | step, id, kind, started_at, pause (a wait for an event began), due_at |
| run.suspended   | due_at (the run waits again with nothing new to record)              |
| run.errored     | attempt, error, retry_at                                              |
| run.completed   | output, at, steps, release                                            |
| run.failed      | error, at, steps, release                                             |
| run.cancelled   | reason, at, steps, release                                            |
| wait.resolved   | step, event (in signal/<run_id>: the event that ended the wait)       |
| wait.expired    | step (in signal/<run_id>: the wait timed out)                         |
| cancel.requested| reason (in signal/<run_id>)                                           |

Flow control writes ``debounce/<function>/<key hash>`` (debounce.pushed: the pending event and
when it is due; debounce.fired: it started a run) and ``batch/<function>/<key hash>``
(batch.added, batch.flushed). ``flow`` on run.scheduled holds the run's concurrency keys, priority
and singleton key; ``buckets`` the GCRA times (throttle, rate limit) its scheduling moved.

``due_at`` is when the run must next be woken: the earliest of its pending sleeps, waits and
timeouts. ``release`` lists the run's pauses (waits and cancel listeners) that its end removes.
``step`` is the step key (the user's id, then ``id:1``, ``id:2`` for repeats); ``n`` counts the
run's finished steps; errors are ``{name, message, stack}``; times are ISO 8601 UTC.
"""

from __future__ import annotations

import traceback
from typing import Any

from steplog.engine.errors import StepError
from steplog.engine.jsonvalues import as_unicode

EVENT_RECEIVED = "event.received"
EVENT_DUPLICATE = "event.duplicate"
RUN_SCHEDULED = "run.scheduled"
RUN_SKIPPED = "run.skipped"
RUN_STARTED = "run.started"
RUN_RESUMED = "run.resumed"
STEP_COMPLETED = "step.completed"
STEP_ERRORED = "step.errored"
STEP_FAILED = "step.failed"
STEP_SLEEPING = "step.sleeping"
STEP_WAITING = "step.waiting"
RUN_SUSPENDED = "run.suspended"
RUN_ERRORED = "run.errored"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
WAIT_RESOLVED = "wait.resolved"
WAIT_EXPIRED = "wait.expired"
CANCEL_REQUESTED = "cancel.requested"

ErrorInfo = dict[str, Any]


def run_stream(run_id: str) -> str:
    return f"run/{run_id}"


def event_stream(internal_id: str) -> str:
    return f"event/{internal_id}"


def signal_stream(run_id: str) -> str:
    return f"signal/{run_id}"


def stream_id(stream: str) -> str:
    """The id part of a stream name: ``run/abc`` -> ``abc``."""
    return stream.partition("/")[2]


def error_info(error: BaseException, *, with_stack: bool = True) -> ErrorInfo:
    """An exception as recorded: its class name, message and formatted stack."""
    message = getattr(error, "message", None)
    if isinstance(error, StepError):
        message = f"step {error.step_id!r} failed: {error.name}: {error.message}"
    if not isinstance(message, str) or not message:
        try:
            message = str(error)
        except Exception:  # noqa: BLE001 - a user's exception with a broken __str__ must still be recorded
            message = f"<unprintable {type(error).__name__}>"
    stack = as_unicode("".join(traceback.format_exception(error))) if with_stack else None
    # a message may hold text the log cannot (an undecodable file name): it is recorded escaped
    return {"name": type(error).__name__, "message": as_unicode(message), "stack": stack}
