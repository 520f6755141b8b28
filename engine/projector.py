"""The engine's projections: current state derived from the log, kept in the same transaction.

| table  | key         | what it holds                                                        |
|--------|-------------|----------------------------------------------------------------------|
| runs   | run_id      | every run: function, status, first event, times, output or error     |
| events | internal_id | every received event (duplicates too): name, user id, ts, data      |
| queue  | run_id      | runs scheduled and not yet started, in order, with when they are ready |
| timers | run_id      | runs waiting for a time (retry backoff, a sleep, a wait's timeout, a signal), with when they are due |
| waits  | run_id, step | pauses: runs listening for an event (waits, invokes, cancel rules)  |
| wakeups| run_id      | runs sent a signal (a wait resolved, a cancel) since they were last woken for one, until they end |
| buckets| function_id, kind, key | GCRA state of throttles and rate limits: the theoretical arrival time; ``started``: a throttle key's latest start |
| debounces | function_id, key | pending debounces: the latest event, and when it is due          |
| batched| function_id, key, internal_id | events waiting in a batch, in order, with when the batch is due |
| crons  | function_id | where each cron function's schedule resumes: the latest scheduled time fired (or when it began), that tick's fire time and event id |

Steps change no projection: the step path writes one log row and nothing else. The runs table
counts a run's steps when it ends.

JSON values (output, error, data) are stored as JSON text so that sqlite-utils and Datasette
show them as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from steplog.engine import records as r
from steplog.eventstore import Change, Delete, Entry, Table, Upsert, parse_time

RUNS = Table(
    "runs",
    key=("run_id",),
    columns={
        "run_id": str, "function_id": str, "status": str, "event_id": str, "scheduled_at": str,
        "started_at": str, "ended_at": str, "updated_at": str, "steps": int, "output": str, "error": str,
        "flow": str,
    },
    indexes=(("function_id", "status"), ("status",), ("event_id",), ("scheduled_at",)),
)
EVENTS = Table(
    "events",
    key=("internal_id",),
    columns={
        "internal_id": str, "id": str, "name": str, "ts": int, "received_at": str,
        "position": int, "duplicate": int, "data": str, "flow": str,
    },
    indexes=(("name", "received_at"), ("received_at",), ("id",)),
)
QUEUE = Table(
    "queue",
    key=("run_id",),
    columns={"run_id": str, "function_id": str, "ready_at": str, "position": int},
    indexes=(("function_id", "position"),),
)
TIMERS = Table(
    "timers",
    key=("run_id",),
    columns={"run_id": str, "due_at": str, "reason": str},
    indexes=(("due_at",),),
)
WAITS = Table(
    "waits",
    key=("run_id", "step"),
    columns={
        "run_id": str, "step": str, "function_id": str, "kind": str, "event": str, "expression": str,
        "trigger": str, "expires_at": str, "created_at": str,
    },
    indexes=(("event",),),
)
WAKEUPS = Table(
    "wakeups",
    key=("run_id",),
    columns={"run_id": str, "at": str, "reason": str},
)
"""Kept apart from ``timers``: a signal that lands while the run executes must still wake it after a
crash, whatever the run records meanwhile about its next time."""
BUCKETS = Table(
    "buckets",
    key=("function_id", "kind", "key"),
    columns={"function_id": str, "kind": str, "key": str, "tat": float},
)
DEBOUNCES = Table(
    "debounces",
    key=("function_id", "key"),
    columns={"function_id": str, "key": str, "internal_id": str, "event": str, "started_at": float, "due_at": float},
)
BATCHED = Table(
    "batched",
    key=("function_id", "key", "internal_id"),
    columns={"function_id": str, "key": str, "internal_id": str, "event": str, "position": int, "due_at": float},
    indexes=(("position",),),
)
CRONS = Table(
    "crons",
    key=("function_id",),
    columns={"function_id": str, "scheduled_at": str, "fire_at": str, "event_id": str, "schedule": str},
)
PAUSE_KINDS = ("wait", "invoke")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RunProjector:
    """Maps each engine entry to row changes in runs, events, queue and timers."""

    tables: Sequence[Table] = (RUNS, EVENTS, QUEUE, TIMERS, WAITS, WAKEUPS, BUCKETS, DEBOUNCES, BATCHED, CRONS)

    def project(self, entry: Entry) -> Iterable[Change]:
        handler = _HANDLERS.get(entry.type)
        return () if handler is None else handler(entry, r.stream_id(entry.stream))


def _event(entry: Entry, duplicate: bool) -> list[Change]:
    event = entry.data["event"]
    row = {
        "internal_id": entry.data["internal_id"], "id": event["id"], "name": event["name"], "ts": event["ts"],
        "received_at": entry.recorded_at, "position": entry.position, "duplicate": int(duplicate),
        "data": _json(event.get("data", {})), "flow": _json(entry.data["flow"]) if "flow" in entry.data else None,
    }
    return [Upsert("events", row)]


def _scheduled(entry: Entry, run_id: str) -> list[Change]:
    data = entry.data
    event_ids = data.get("event_ids") or [None]
    run = {
        "run_id": run_id, "function_id": data["function_id"], "status": "queued", "event_id": event_ids[0],
        "scheduled_at": entry.recorded_at, "updated_at": entry.recorded_at, "steps": 0,
        "flow": _json(data["flow"]) if "flow" in data else None,
    }
    queued = {"run_id": run_id, "function_id": data["function_id"], "ready_at": data["ready_at"],
              "position": entry.position}
    pauses = [_pause_row(pause, entry.recorded_at) for pause in data.get("cancel", ())]
    return [Upsert("runs", run), Upsert("queue", queued), *pauses, *_buckets(data)]


def _buckets(data: dict[str, Any]) -> list[Change]:
    return [
        Upsert("buckets", {"function_id": function_id, "kind": kind, "key": key, "tat": tat})
        for function_id, kind, key, tat in data.get("buckets", ())
    ]


def _skipped(entry: Entry, run_id: str) -> list[Change]:
    data = entry.data
    error = {"name": "Skipped", "message": data["message"], "reason": data["reason"]}
    run = {
        "run_id": run_id, "function_id": data["function_id"], "status": "skipped", "event_id": data["event_ids"][0],
        "scheduled_at": entry.recorded_at, "ended_at": data["at"], "updated_at": entry.recorded_at, "steps": 0,
        "error": _json(error), "flow": None,
    }
    return [Upsert("runs", run), *_buckets(data)]


def _debounce_pushed(entry: Entry, _id: str) -> list[Change]:
    data = entry.data
    row = {"function_id": data["function_id"], "key": data["key"], "internal_id": data["internal_id"],
           "event": _json(data["event"]), "started_at": data["started_at"], "due_at": data["due_at"]}
    return [Upsert("debounces", row), *_buckets(data)]


def _debounce_fired(entry: Entry, _id: str) -> list[Change]:
    return [Delete("debounces", {"function_id": entry.data["function_id"], "key": entry.data["key"]})]


def _batch_added(entry: Entry, _id: str) -> list[Change]:
    data = entry.data
    row = {"function_id": data["function_id"], "key": data["key"], "internal_id": data["internal_id"],
           "event": _json(data["event"]), "position": entry.position, "due_at": data["due_at"]}
    return [Upsert("batched", row)]


def _batch_flushed(entry: Entry, _id: str) -> list[Change]:
    data = entry.data
    return [
        Delete("batched", {"function_id": data["function_id"], "key": data["key"], "internal_id": internal_id})
        for internal_id in data["internal_ids"]
    ]


def _cron_row(data: dict[str, Any]) -> dict[str, Any]:
    return {column: data.get(column) for column in ("function_id", "scheduled_at", "fire_at", "event_id", "schedule")}


def _pause_row(pause: dict[str, Any], recorded_at: str) -> Upsert:
    row = {
        "run_id": pause["run_id"], "step": pause["step"], "function_id": pause["function_id"],
        "kind": pause["kind"], "event": pause["event"], "expression": pause["expression"],
        "trigger": _json(pause["trigger"]), "expires_at": pause["expires_at"], "created_at": recorded_at,
    }
    return Upsert("waits", row)


def _started(entry: Entry, run_id: str) -> list[Change]:
    run = {"run_id": run_id, "status": "running", "started_at": entry.data["at"], "updated_at": entry.recorded_at}
    changes: list[Change] = [Upsert("runs", run), Delete("queue", {"run_id": run_id})]
    if "throttle" in entry.data:  # a throttled run's start: the latest start of its key, for restarts
        function_id, key = entry.data["throttle"]
        at = parse_time(entry.data["at"]).timestamp()
        changes.append(Upsert("buckets", {"function_id": function_id, "kind": "started", "key": key, "tat": at}))
    return changes


def _resumed(entry: Entry, run_id: str) -> list[Change]:
    run = {"run_id": run_id, "status": "running", "updated_at": entry.recorded_at}
    # not the wakeups row: a signal may have landed after this invocation read the run's state
    # (run.resumed is written with its first commit); a restart wakes the run once more, harmlessly
    return [Upsert("runs", run), Delete("timers", {"run_id": run_id})]


def _sleeping(entry: Entry, run_id: str) -> list[Change]:
    run = {"run_id": run_id, "status": "waiting", "updated_at": entry.recorded_at}
    due = entry.data.get("due_at") or entry.data["wake_at"]
    timer = {"run_id": run_id, "due_at": due, "reason": f"sleep {entry.data['step']}"}
    return [Upsert("runs", run), Upsert("timers", timer)]


def _waiting(entry: Entry, run_id: str) -> list[Change]:
    run = {"run_id": run_id, "status": "waiting", "updated_at": entry.recorded_at}
    timer = {"run_id": run_id, "due_at": entry.data["due_at"], "reason": f"wait {entry.data['step']}"}
    return [Upsert("runs", run), Upsert("timers", timer), _pause_row(entry.data["pause"], entry.recorded_at)]


def _suspended(entry: Entry, run_id: str) -> list[Change]:
    run = {"run_id": run_id, "status": "waiting", "updated_at": entry.recorded_at}
    timer = {"run_id": run_id, "due_at": entry.data["due_at"], "reason": "suspended"}
    return [Upsert("runs", run), Upsert("timers", timer)]


def _step_ended(entry: Entry, run_id: str) -> list[Change]:
    if entry.data.get("kind") not in PAUSE_KINDS:
        return []
    return [Delete("waits", {"run_id": run_id, "step": entry.data["step"]})]


def _wait_signal(wake: bool) -> Any:
    def project(entry: Entry, run_id: str) -> list[Change]:
        changes: list[Change] = [Delete("waits", {"run_id": run_id, "step": entry.data["step"]})]
        if wake:  # the run must resume even if this process dies before it does
            reason = f"wait {entry.data['step']} resolved"
            changes.append(Upsert("wakeups", {"run_id": run_id, "at": entry.recorded_at, "reason": reason}))
        return changes

    return project


def _cancel_requested(entry: Entry, run_id: str) -> list[Change]:
    return [Upsert("wakeups", {"run_id": run_id, "at": entry.recorded_at, "reason": "cancel"})]


def _errored(entry: Entry, run_id: str) -> list[Change]:
    reason = f"retry step {entry.data['step']}" if "step" in entry.data else "retry run"
    run = {"run_id": run_id, "status": "waiting", "updated_at": entry.recorded_at}
    timer = {"run_id": run_id, "due_at": entry.data.get("due_at") or entry.data["retry_at"], "reason": reason}
    return [Upsert("runs", run), Upsert("timers", timer)]


def _ended(status: str, column: str) -> Any:
    def project(entry: Entry, run_id: str) -> list[Change]:
        run = {
            "run_id": run_id, "status": status, "ended_at": entry.data["at"], "updated_at": entry.recorded_at,
            "steps": entry.data.get("steps", 0), column: _json(entry.data.get(column)),
        }
        released = [Delete("waits", {"run_id": run_id, "step": step}) for step in entry.data.get("release", ())]
        return [Upsert("runs", run), Delete("timers", {"run_id": run_id}), Delete("queue", {"run_id": run_id}),
                Delete("wakeups", {"run_id": run_id}), *released]

    return project


_HANDLERS: dict[str, Any] = {
    r.EVENT_RECEIVED: lambda entry, _id: _event(entry, False),
    r.EVENT_DUPLICATE: lambda entry, _id: _event(entry, True),
    r.RUN_SCHEDULED: _scheduled,
    r.RUN_SKIPPED: _skipped,
    "debounce.pushed": _debounce_pushed,
    "debounce.fired": _debounce_fired,
    "batch.added": _batch_added,
    "batch.flushed": _batch_flushed,
    "cron.ticked": lambda entry, _id: [Upsert("crons", _cron_row(entry.data))],
    "cron.armed": lambda entry, _id: [Upsert("crons", _cron_row(entry.data))],
    "cron.disarmed": lambda entry, _id: [Delete("crons", {"function_id": entry.data["function_id"]})],
    r.RUN_STARTED: _started,
    r.RUN_RESUMED: _resumed,
    r.STEP_ERRORED: _errored,
    r.STEP_SLEEPING: _sleeping,
    r.STEP_WAITING: _waiting,
    r.STEP_COMPLETED: _step_ended,
    r.STEP_FAILED: _step_ended,
    r.RUN_SUSPENDED: _suspended,
    r.RUN_ERRORED: _errored,
    r.RUN_COMPLETED: _ended("completed", "output"),
    r.RUN_FAILED: _ended("failed", "error"),
    r.RUN_CANCELLED: _ended("cancelled", "error"),
    r.WAIT_RESOLVED: _wait_signal(wake=True),
    r.WAIT_EXPIRED: _wait_signal(wake=False),
    r.CANCEL_REQUESTED: _cancel_requested,
}
