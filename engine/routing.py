"""Routing: which functions an event starts, as the appends that record the event and its runs.

One event starts a function at most once, however many of its triggers match. An event whose
``id`` was seen in the last 24 hours is recorded as a duplicate and starts nothing. A trigger
expression that fails on an event is recorded on that event and does not start the function.
An ``inngest/function.invoked`` event, or a cron tick's ``inngest/scheduled.timer``, starts the
function it names, whatever the triggers say;
its flow control applies (as in Inngest, an invoke whose run is skipped ends at its timeout).
A function with flow control hands the event to the flow gate, which starts, skips or holds it.
A run of a function with cancel rules is scheduled with its cancel pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.crontab import CRON_EVENT, cron_function
from steplog.engine.events import ReceivedEvent
from steplog.engine.expressions import ExpressionError
from steplog.engine.flow.gate import Action, FlowGate, Hold, Journal, Skip, Start
from steplog.engine.functions import FunctionDef
from steplog.engine.ids import new_ulid
from steplog.engine.pauses import CANCEL_KIND, Pause, make_pause
from steplog.engine.state import RunState
from steplog.engine.system_events import invoked_function, skipped_invoke_event
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
class FiredEvent:
    """What a debounce or batch that fires is routed as: no new event, the first one its run starts with."""

    internal_id: str


@attrs.frozen
class Routed:
    """An event's append, and the runs it schedules unless it turns out to be a duplicate."""

    received: ReceivedEvent | FiredEvent
    append: Append
    runs: tuple[ScheduledRun, ...]
    skipped: tuple[ScheduledRun, ...] = ()
    """Runs recorded as skipped (rate limit, idempotency, singleton): they never start."""
    held: bool = False
    """A function holds the event (debounce, batch): a run may start with it later."""
    replaced: tuple[tuple[str, str, str], ...] = ()
    """(run_id, function_id, new run_id) of active runs that singleton's cancel mode replaces."""
    finished: tuple[dict[str, Any], ...] = ()
    """Events failing the invokes whose runs flow control skipped, to send with this one."""


def dedup_key(received: ReceivedEvent) -> str | None:
    if received.dedup_id is None:
        return None
    if received.event.name == CRON_EVENT:  # a reserved name: no user's event id can take a tick's key
        return f"tick:{received.dedup_id}"
    return f"event:{received.dedup_id}"


def route(
    received: ReceivedEvent, functions: Sequence[FunctionDef], now: datetime, *, duplicate: bool = False,
    gate: FlowGate | None = None, journal: Journal | None = None,
) -> Routed:
    """The append for one event: the event itself and what it does to each function it matches
    (a run.scheduled, a skipped run, or an entry of a debounce or batch that holds it).

    ``duplicate`` (the caller checked the event's id) records the event as a duplicate only.
    """
    event = received.event.to_dict()
    stream = r.event_stream(received.internal_id)
    if duplicate:
        duplicate_entry = NewEntry(r.EVENT_DUPLICATE, {"internal_id": received.internal_id, "event": event})
        return Routed(received, Append((StreamWrite(stream, (duplicate_entry,), expected_version=0),)), ())
    matched, errors = _match(event, functions)
    gate = gate or FlowGate()
    journal = journal or Journal()
    routed = _Routing()
    for function in matched:
        routed.add(function, _decide(function, received, event, now, gate, journal), now)
    record: dict[str, Any] = {"internal_id": received.internal_id, "event": event, "trigger_errors": errors}
    if routed.notes:
        record["flow"] = routed.notes
    writes = (StreamWrite(stream, (NewEntry(r.EVENT_RECEIVED, record),), expected_version=0),) + tuple(routed.writes)
    key = dedup_key(received)
    append = Append(writes, key=key, key_window_s=DEDUP_WINDOW.total_seconds() if key else None)
    return Routed(received, append, tuple(routed.runs), tuple(routed.skipped), routed.held, tuple(routed.replaced),
                  tuple(routed.finished))


def route_fired(action: Start | Skip, function: FunctionDef, now: datetime) -> Routed:
    """The append for a debounce or batch that fired: its run (started or skipped), as for an event."""
    routing = _Routing()
    routing.add(function, (action, []), now)
    return Routed(
        FiredEvent(action.received[0][0]), Append(tuple(routing.writes)), tuple(routing.runs),
        tuple(routing.skipped), replaced=tuple(routing.replaced), finished=tuple(routing.finished),
    )


def _decide(
    function: FunctionDef, received: ReceivedEvent, event: dict[str, Any], now: datetime, gate: FlowGate,
    journal: Journal,
) -> tuple[Action, list[str]]:
    errors: list[str] = []
    if not function.flow.any:
        ready = datetime.fromtimestamp(max(now.timestamp(), event["ts"] / 1000), tz=timezone.utc)
        return Start(new_ulid(now), function.id, ((received.internal_id, event),), ready, {}, []), errors
    return gate.admit(function.id, function.flow, (received.internal_id, event), now, journal, errors), errors


@attrs.define
class _Routing:
    """What one event does to the functions it matched, as writes and runs."""

    writes: list[StreamWrite] = attrs.Factory(list)
    runs: list[ScheduledRun] = attrs.Factory(list)
    skipped: list[ScheduledRun] = attrs.Factory(list)
    notes: list[dict[str, Any]] = attrs.Factory(list)
    replaced: list[tuple[str, str, str]] = attrs.Factory(list)
    finished: list[dict[str, Any]] = attrs.Factory(list)
    held: bool = False

    def add(self, function: FunctionDef, decided: tuple[Action, list[str]], now: datetime) -> None:
        action, errors = decided
        note: dict[str, Any] = {"function_id": function.id}
        if isinstance(action, Hold):
            self.held = True
            note["outcome"] = action.note
            if action.stream is not None and action.entry is not None:
                self.writes.append(StreamWrite(action.stream, (action.entry,)))
        else:
            run = realize(action, function, now)
            self.writes.extend(run_writes(run, action))
            if isinstance(action, Skip):
                self.skipped.append(run)
                note.update(outcome="skipped", reason=action.reason, message=action.message, run_id=action.run_id)
                failed_invoke = skipped_invoke_event(run.fresh_state(), action.message)
                if failed_invoke is not None:
                    self.finished.append(failed_invoke)
            else:
                self.runs.append(run)
                if action.replaces is not None:
                    self.replaced.append((action.replaces, function.id, action.run_id))
        if errors:
            note["errors"] = errors
        if len(note) > 1:
            self.notes.append(note)


def realize(action: Start | Skip, function: FunctionDef, now: datetime) -> ScheduledRun:
    """The run an action starts or skips, with its one entry."""
    event_ids = [internal_id for internal_id, _ in action.received]
    events = [event for _, event in action.received]
    if isinstance(action, Skip):
        data = {"run_id": action.run_id, "function_id": function.id, "event_ids": event_ids, "events": events,
                "reason": action.reason, "message": action.message, "at": format_time(now)}
        data.update(_flow_record(action.buckets, action.errors))
        return ScheduledRun(action.run_id, function.id, NewEntry(r.RUN_SKIPPED, data), event_ids[0])
    return _schedule(function, action, event_ids, events, now)


def run_writes(run: ScheduledRun, action: Start | Skip) -> list[StreamWrite]:
    """The run's stream write and the flow entries that go with it (a debounce fired, a batch flushed)."""
    writes = [StreamWrite(r.run_stream(run.run_id), (run.entry,), expected_version=0)]
    for stream, entry in action.writes:
        data = {**entry.data, "run_id": run.run_id}
        writes.append(StreamWrite(stream, (NewEntry(entry.type, data),)))
    return writes


def _flow_record(buckets: list[list[Any]], errors: tuple[str, ...]) -> dict[str, Any]:
    """The bucket times a run's scheduling (or skip) moved, and key errors met when a debounce or batch fired."""
    record: dict[str, Any] = {}
    if buckets:
        record["buckets"] = buckets
    if errors:
        record["flow_errors"] = list(errors)
    return record


def _match(event: dict[str, Any], functions: Sequence[FunctionDef]) -> tuple[list[FunctionDef], list[dict[str, Any]]]:
    invoked = invoked_function(event) or cron_function(event)
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


def _schedule(
    function: FunctionDef, action: Start, event_ids: list[str], events: list[dict[str, Any]], now: datetime
) -> ScheduledRun:
    run_id = action.run_id
    data: dict[str, Any] = {
        "run_id": run_id,
        "function_id": function.id,
        "event_ids": event_ids,
        "events": events,
        "ready_at": format_time(action.ready_at),
        "scheduled_at": format_time(now),
    }
    if action.flow:
        data["flow"] = action.flow
    data.update(_flow_record(action.buckets, action.errors))
    pauses = tuple(
        make_pause(
            run_id=run_id, function_id=function.id, step=f"cancel:{index}", kind=CANCEL_KIND, event=rule.event,
            expression=rule.expression, trigger_event=events[0], expires_at=format_time(now + rule.timeout),
        )
        for index, rule in enumerate(function.cancel)
    )
    if pauses:
        data["cancel"] = [pause.to_dict() for pause in pauses]
    return ScheduledRun(run_id, function.id, NewEntry(r.RUN_SCHEDULED, data), event_ids[0], pauses)
