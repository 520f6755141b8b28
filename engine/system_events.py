"""The events the engine itself sends, in Inngest's shapes.

| name                        | when                                  | id         |
|-----------------------------|---------------------------------------|------------|
| inngest/function.invoked    | ``step.invoke`` starts a run          | generated  |
| inngest/function.finished   | a run completed, failed or was cancelled | generated |
| inngest/function.failed     | a run failed for good                 | the run id |
| inngest/function.cancelled  | a run was cancelled                   | the run id |

``data`` holds ``function_id``, ``run_id``, ``event`` (the trigger), ``events``, then ``result``
or ``error``, ``correlation_id`` for an invoked run, and ``_inngest: {status}``.

steplog records a run's end events only when something can receive them: a function triggered by
that name, or a pause (a wait, an invoke) listening for it. A wait registered later could not see
them anyway, and the run's own log holds the same facts, so nothing observable is lost and runs
that no one listens to pay nothing for them.
"""

from __future__ import annotations

from typing import Any

from steplog.engine.state import RunState

INVOKED = "inngest/function.invoked"
FINISHED = "inngest/function.finished"
FAILED = "inngest/function.failed"
CANCELLED = "inngest/function.cancelled"
END_EVENTS = {"completed": (FINISHED,), "failed": (FINISHED, FAILED), "cancelled": (FINISHED, CANCELLED)}


def correlation_id(state: RunState) -> str | None:
    """The correlation id of an invoked run: the invoking run's key for the result."""
    if not state.events or state.events[0].get("name") != INVOKED:
        return None
    meta = state.events[0].get("data", {}).get("_inngest", {})
    value = meta.get("correlation_id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def end_events(state: RunState, status: str, *, output: Any = None, error: Any = None) -> list[dict[str, Any]]:
    """The events announcing a run's end with this status."""
    trigger = state.events[0] if state.events else {}
    data: dict[str, Any] = {
        "function_id": state.function_id, "run_id": state.run_id, "event": trigger, "events": state.events,
    }
    if status == "completed":
        data["result"] = output
    else:
        data["error"] = error
    correlation = correlation_id(state)
    if correlation is not None:
        data["correlation_id"] = correlation
    data["_inngest"] = {"status": status}
    events = []
    for name in END_EVENTS[status]:
        event: dict[str, Any] = {"name": name, "data": data}
        if name != FINISHED:
            event["id"] = state.run_id
        events.append(event)
    return events


def trimmed(event: dict[str, Any], refusal: str = "it is too large") -> dict[str, Any]:
    """An end event cut down to what is always accepted: the trigger reduced to its name, id and
    ts, no ``events``, a result replaced by an error saying why it could not be sent (``refusal``:
    too large, or nested too deeply), errors without stacks."""
    data = dict(event["data"])
    trigger = data.get("event") or {}
    data["event"] = {key: trigger[key] for key in ("name", "id", "ts") if key in trigger}
    data["events"] = []
    if "result" in data:
        del data["result"]
        data["error"] = {"name": "OutputTooLargeError", "stack": None,
                         "message": f"the run's result could not be sent in its end event: {refusal[:500]}"}
    elif isinstance(data.get("error"), dict):
        error = data["error"]
        data["error"] = {"name": error.get("name"), "message": str(error.get("message"))[:1000], "stack": None}
    return {**event, "data": data}


def invoked_event(function_id: str, data: Any, correlation: str, user: Any = None) -> dict[str, Any]:
    """The event that starts an invoked run; its ``data`` is what the caller passed."""
    payload = dict(data) if isinstance(data, dict) else {}
    payload["_inngest"] = {"fn_id": function_id, "correlation_id": correlation}
    event: dict[str, Any] = {"name": INVOKED, "data": payload}
    if user is not None:
        event["user"] = user
    return event


def invoked_function(event: dict[str, Any]) -> str | None:
    """The function an ``inngest/function.invoked`` event starts."""
    if event.get("name") != INVOKED:
        return None
    meta = event.get("data", {}).get("_inngest")
    value = meta.get("fn_id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def skipped_invoke_event(skipped: RunState, message: str) -> dict[str, Any] | None:
    """For a skipped run that ``step.invoke`` started: the finished event that fails the invoke at
    once (as Inngest does for an invoked function that is rate limited), else None."""
    correlation = correlation_id(skipped)
    if correlation is None:
        return None
    error = {"name": "InvokeSkippedError", "message": f"the invoked function skipped the run: {message}", "stack": None}
    data = {
        "function_id": skipped.function_id, "run_id": skipped.run_id, "event": skipped.events[0],
        "events": skipped.events, "error": error, "correlation_id": correlation, "_inngest": {"status": "skipped"},
    }
    return {"name": FINISHED, "data": data}
