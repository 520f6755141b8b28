"""Routing: which functions an event starts, as the appends that record the event and its runs.

One event starts a function at most once, however many of its triggers match. An event whose
``id`` was seen in the last 24 hours is recorded as a duplicate and starts nothing. A trigger
expression that fails on an event is recorded on that event and does not start the function.
An ``inngest/function.invoked`` event starts the function it names, whatever the triggers say.
A run of a function with cancel rules is scheduled with its cancel pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.events import ReceivedEvent
from steplog.engine.expressions import ExpressionError
from steplog.engine.functions import FunctionDef
from steplog.engine.ids import new_ulid
from steplog.engine.pauses import CANCEL_KIND, Pause, make_pause
from steplog.engine.state import RunState
from steplog.engine.system_events import invoked_function
from steplog.eventstore import Append, NewEntry, StreamWrite, format_time

DEDUP_WINDOW = timedelta(hours=24)


@attrs.frozen
class ScheduledRun:
    """A run that an event will start once its append is committed."""

    run_id: str
    function_id: str
    entry: NewEntry
    event_id: str = ""
    """The internal id of the event that starts it."""
    pauses: tuple[Pause, ...] = ()
    """Its cancel rules, listening from now on."""

    def fresh_state(self) -> RunState:
        """The run's state as its one entry makes it: what its first invocation needs, without a read."""
        state = RunState(self.run_id)
        state.apply(self.entry.type, self.entry.data)
        return state


@attrs.frozen
class Routed:
    """An event's append, and the runs it schedules unless it turns out to be a duplicate."""

    received: ReceivedEvent
    append: Append
    runs: tuple[ScheduledRun, ...]


def dedup_key(received: ReceivedEvent) -> str | None:
    return None if received.dedup_id is None else f"event:{received.dedup_id}"


def route(
    received: ReceivedEvent, functions: Sequence[FunctionDef], now: datetime, *, duplicate: bool = False
) -> Routed:
    """The append for one event: the event itself and a run.scheduled for each function it starts.

    ``duplicate`` (the caller checked the event's id) records the event as a duplicate only.
    """
    event = received.event.to_dict()
    stream = r.event_stream(received.internal_id)
    if duplicate:
        duplicate_entry = NewEntry(r.EVENT_DUPLICATE, {"internal_id": received.internal_id, "event": event})
        return Routed(received, Append((StreamWrite(stream, (duplicate_entry,), expected_version=0),)), ())
    matched, errors = _match(event, functions)
    runs = tuple(_schedule(fn, received, event, now) for fn in matched)
    record = {"internal_id": received.internal_id, "event": event, "trigger_errors": errors}
    writes = (StreamWrite(stream, (NewEntry(r.EVENT_RECEIVED, record),), expected_version=0),) + tuple(
        StreamWrite(r.run_stream(run.run_id), (run.entry,), expected_version=0) for run in runs
    )
    key = dedup_key(received)
    return Routed(received, Append(writes, key=key, key_window_s=DEDUP_WINDOW.total_seconds() if key else None), runs)


def _match(event: dict[str, Any], functions: Sequence[FunctionDef]) -> tuple[list[FunctionDef], list[dict[str, Any]]]:
    invoked = invoked_function(event)
    if invoked is not None:
        return [fn for fn in functions if fn.id == invoked], []
    matched, errors = [], []
    for function in functions:
        failures = []
        for trigger in function.triggers:
            if not trigger.matches_name(event["name"]):
                continue
            try:
                if trigger.condition_holds(event):
                    matched.append(function)
                    break
            except ExpressionError as error:
                failures.append({"function_id": function.id, "error": str(error)})
        else:
            errors.extend(failures)
    return matched, errors


def _event_time(event: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(event["ts"] / 1000, tz=timezone.utc)


def _schedule(function: FunctionDef, received: ReceivedEvent, event: dict[str, Any], now: datetime) -> ScheduledRun:
    run_id = new_ulid(now)
    data: dict[str, Any] = {
        "run_id": run_id,
        "function_id": function.id,
        "event_ids": [received.internal_id],
        "events": [event],
        "ready_at": format_time(max(now, _event_time(event))),
        "scheduled_at": format_time(now),
    }
    pauses = tuple(
        make_pause(
            run_id=run_id, function_id=function.id, step=f"cancel:{index}", kind=CANCEL_KIND, event=rule.event,
            expression=rule.expression, trigger_event=event, expires_at=format_time(now + rule.timeout),
        )
        for index, rule in enumerate(function.cancel)
    )
    if pauses:
        data["cancel"] = [pause.to_dict() for pause in pauses]
    return ScheduledRun(run_id, function.id, NewEntry(r.RUN_SCHEDULED, data), received.internal_id, pauses)
