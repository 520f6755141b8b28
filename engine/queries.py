"""Reading what happened: events by name and time, runs by function and status, a run's history."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.clock import SystemClock
from steplog.engine.durations import parse_duration
from steplog.engine.errors import RunNotFoundError
from steplog.engine.expressions import Expression, ExpressionError, compile_expression
from steplog.eventstore import Entry, EventStore, format_time


@attrs.frozen
class StepAttempt:
    """One attempt of one step: when it ran and what came of it."""

    step: str
    id: str
    kind: str
    attempt: int
    status: str
    """``completed``, ``errored`` (will be retried) or ``failed`` (final)."""
    started_at: str
    ended_at: str | None
    output: Any = None
    error: dict[str, Any] | None = None
    retry_at: str | None = None
    wake_at: str | None = None
    """For a sleep that has begun: when it ends; for a wait: when it times out."""
    waiting_for: str | None = None
    """For a wait (or an invoke) that has begun: the event name it waits for."""


@attrs.frozen
class RunHistory:
    """A run's summary row and everything recorded in its stream."""

    run: dict[str, Any]
    steps: list[StepAttempt]
    entries: list[Entry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "steps": [attrs.asdict(s) for s in self.steps],
            "entries": [attrs.asdict(e) for e in self.entries],
        }


def _decode(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    out = dict(row)
    for column in columns:
        if isinstance(out.get(column), str):
            out[column] = json.loads(out[column])
    return out


STATUSES = ("queued", "running", "waiting", "completed", "failed", "cancelled", "skipped")
When = datetime | str | None
"""A point in time for a filter: an aware datetime, ISO 8601 text (UTC unless it has an offset),
or a duration ago such as ``"30m"``, ``"2h"``, ``"1d"``."""


def parse_when(value: When, *, now: datetime | None = None, what: str = "time") -> datetime | None:
    """A filter's time as an aware datetime; ValueError naming ``what`` if it cannot be read."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return (now or SystemClock().now()) - parse_duration(text, what=what)
        except ValueError:
            prefix = "" if what == "time" else f"{what}: "
            raise ValueError(
                f"{prefix}{value!r} is not a time: use ISO 8601 like 2026-01-31T12:00:00Z or 2026-01-31,"
                " or a duration ago like 30m, 2h, 1d"
            ) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _time_range(since: When, until: When, now: datetime | None) -> tuple[str | None, str | None]:
    low, high = parse_when(since, now=now, what="since"), parse_when(until, now=now, what="until")
    if low and high and low > high:
        raise ValueError(f"since ({format_time(low)}) is after until ({format_time(high)})")
    return (format_time(low) if low else None, format_time(high) if high else None)


def check_status(status: str | None) -> None:
    """ValueError naming the statuses, for a status that no run can have."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; statuses: {', '.join(STATUSES)}")


def event_internal_ids(store: EventStore, event_id: str) -> list[str]:
    """The internal ids of the events known by ``event_id``: an internal id, or the id the sender gave."""
    if store.query("events", where={"internal_id": event_id}):
        return [event_id]
    return [row["internal_id"] for row in store.query("events", where={"id": event_id}, order_by="position")]


def list_events(
    store: EventStore,
    *,
    name: str | None = None,
    since: When = None,
    until: When = None,
    limit: int | None = 100,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Received events, newest first, each with the runs it started."""
    where = {"name": name} if name else {}
    ranges = {"received_at": _time_range(since, until, now)} if since or until else {}
    rows = store.query("events", where=where, ranges=ranges, order_by="position", desc=True, limit=limit)
    events = []
    for row in rows:
        event = _decode(row, "data", "flow")
        event["duplicate"] = bool(event["duplicate"])
        event["flow"] = event.get("flow") or []  # per function: skipped (why), debounced, batched, key errors
        event["runs"] = [run["run_id"] for run in store.query("runs", where={"event_id": row["internal_id"]})]
        events.append(event)
    return events


def list_runs(
    store: EventStore,
    *,
    function_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    since: When = None,
    until: When = None,
    limit: int | None = 100,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by function, status, triggering event (its internal id or the
    id the sender gave) and scheduling time."""
    check_status(status)
    where = {k: v for k, v in {"function_id": function_id, "status": status}.items() if v}
    ranges = {"scheduled_at": _time_range(since, until, now)} if since or until else {}
    rows: list[dict[str, Any]] = []
    for event in [None] if event_id is None else event_internal_ids(store, event_id):
        selected = where if event is None else {**where, "event_id": event}
        rows.extend(store.query(
            "runs", where=selected, ranges=ranges, order_by=("scheduled_at", "run_id"), desc=True, limit=limit
        ))
    rows.sort(key=lambda row: (row["scheduled_at"], row["run_id"]), reverse=True)
    return [_decode(row, "output", "error", "flow") for row in (rows[:limit] if limit else rows)]


def get_run(store: EventStore, run_id: str) -> dict[str, Any]:
    """A run's summary row; RunNotFoundError if there is none."""
    rows = store.query("runs", where={"run_id": run_id})
    if not rows:
        raise RunNotFoundError(f"no run {run_id!r} in the log")
    return _decode(rows[0], "output", "error", "flow")


def run_history(store: EventStore, run_id: str) -> RunHistory:
    """A run's summary and each step attempt, in order, from its stream."""
    run = get_run(store, run_id)
    own = store.read_stream(r.run_stream(run_id))
    # what was sent to the run (matched events, expiries, cancel requests) interleaved in log order
    entries = sorted(own + store.read_stream(r.signal_stream(run_id)), key=lambda entry: entry.position)
    return RunHistory(run, [a for a in map(_attempt, own) if a is not None], entries)


def runs_to_cancel(
    store: EventStore,
    *,
    function_id: str,
    status: str | None = None,
    since: When = None,
    until: When = None,
    if_exp: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """The runs of a function that have not ended and match the filters, oldest first.

    ``if_exp`` is CEL over ``event``, the run's trigger; ValueError for a bad filter.
    """
    if status is not None and status not in ACTIVE_STATUSES:
        raise ValueError(f"only runs that have not ended can be cancelled; status must be one of {ACTIVE_STATUSES}")
    condition = None
    if if_exp is not None:
        try:
            condition = compile_expression(if_exp, names=("event",), result="bool")
        except ExpressionError as error:
            raise ValueError(f"if_exp: {error}") from None
    runs = []
    for wanted in [status] if status else ACTIVE_STATUSES:
        runs.extend(list_runs(store, function_id=function_id, status=wanted, since=since, until=until, limit=None,
                              now=now))
    runs.sort(key=lambda row: (row["scheduled_at"], row["run_id"]))
    return [run["run_id"] for run in runs if condition is None or _trigger_holds(store, run, condition)]


ACTIVE_STATUSES = ("queued", "running", "waiting")


def _trigger_holds(store: EventStore, run: dict[str, Any], condition: Expression) -> bool:
    rows = store.query("events", where={"internal_id": run["event_id"]}) if run.get("event_id") else []
    if not rows:
        return False
    row = rows[0]
    event = {"name": row["name"], "id": row["id"], "ts": row["ts"], "data": json.loads(row["data"])}
    try:
        return condition.evaluate({"event": event}) is True
    except ExpressionError:
        return False


_ATTEMPT_STATUS = {
    r.STEP_COMPLETED: "completed", r.STEP_ERRORED: "errored", r.STEP_FAILED: "failed", r.STEP_SLEEPING: "sleeping",
    r.STEP_WAITING: "waiting",
}


def _attempt(entry: Entry) -> StepAttempt | None:
    status = _ATTEMPT_STATUS.get(entry.type)
    if status is None:
        return None
    data = entry.data
    return StepAttempt(
        step=data["step"], id=data["id"], kind=data["kind"], attempt=data.get("attempt", 0), status=status,
        started_at=data["started_at"], ended_at=data.get("ended_at"), output=data.get("output"),
        error=data.get("error"), retry_at=data.get("retry_at"),
        wake_at=data.get("wake_at") or data.get("pause", {}).get("expires_at"),
        waiting_for=data.get("pause", {}).get("event"),
    )
