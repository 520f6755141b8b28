"""Reading what happened: events by name and time, runs by function and status, a run's history."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import attrs

from engine import records as r
from engine.errors import RunNotFoundError
from eventstore import Entry, EventStore, format_time


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
    ended_at: str
    output: Any = None
    error: dict[str, Any] | None = None
    retry_at: str | None = None


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


def _time_range(since: datetime | None, until: datetime | None) -> tuple[str | None, str | None]:
    return (format_time(since) if since else None, format_time(until) if until else None)


def list_events(
    store: EventStore,
    *,
    name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Received events, newest first, each with the runs it started."""
    where = {"name": name} if name else {}
    ranges = {"received_at": _time_range(since, until)} if since or until else {}
    rows = store.query("events", where=where, ranges=ranges, order_by="position", desc=True, limit=limit)
    events = []
    for row in rows:
        event = _decode(row, "data")
        event["duplicate"] = bool(event["duplicate"])
        event["runs"] = [run["run_id"] for run in store.query("runs", where={"event_id": row["internal_id"]})]
        events.append(event)
    return events


def list_runs(
    store: EventStore,
    *,
    function_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by function, status, triggering event and scheduling time."""
    where = {k: v for k, v in {"function_id": function_id, "status": status, "event_id": event_id}.items() if v}
    ranges = {"scheduled_at": _time_range(since, until)} if since or until else {}
    rows = store.query(
        "runs", where=where, ranges=ranges, order_by=("scheduled_at", "run_id"), desc=True, limit=limit
    )
    return [_decode(row, "output", "error") for row in rows]


def get_run(store: EventStore, run_id: str) -> dict[str, Any]:
    """A run's summary row; RunNotFoundError if there is none."""
    rows = store.query("runs", where={"run_id": run_id})
    if not rows:
        raise RunNotFoundError(f"no run {run_id!r} in the log")
    return _decode(rows[0], "output", "error")


def run_history(store: EventStore, run_id: str) -> RunHistory:
    """A run's summary and each step attempt, in order, from its stream."""
    run = get_run(store, run_id)
    entries = store.read_stream(r.run_stream(run_id))
    return RunHistory(run, [a for a in map(_attempt, entries) if a is not None], entries)


_ATTEMPT_STATUS = {r.STEP_COMPLETED: "completed", r.STEP_ERRORED: "errored", r.STEP_FAILED: "failed"}


def _attempt(entry: Entry) -> StepAttempt | None:
    status = _ATTEMPT_STATUS.get(entry.type)
    if status is None:
        return None
    data = entry.data
    return StepAttempt(
        step=data["step"], id=data["id"], kind=data["kind"], attempt=data["attempt"], status=status,
        started_at=data["started_at"], ended_at=data["ended_at"], output=data.get("output"),
        error=data.get("error"), retry_at=data.get("retry_at"),
    )
