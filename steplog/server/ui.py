"""The dev UI: a page, its static assets, and the JSON it reads under ``/api/``.

Pages (each serves static/index.html; static/app.js renders the view from the JSON)::

    /  /events  /events/{id}  /runs  /runs/{id}  /functions

JSON::

    GET  /api/changes                    {"position": the log's last position, "now": the engine's time}
    GET  /api/events?name=&limit=        events, newest first, each with the runs it started or resumed
    GET  /api/events/{id}                one event (its internal id, or the id its sender gave) and its runs
    GET  /api/runs?function=&status=&limit=
    GET  /api/runs/{id}                  a run, its trigger events and its timeline: each step and attempt,
                                         sleeps, waits and what matched them, invoked runs, signals
    GET  /api/functions                  each function's triggers, retries, cancel rules, timeouts, flow control
    POST /api/functions/{id}/invoke      run it now, whatever its triggers: {"data": {...}} (optional) sent as
                                         its ``inngest/function.invoked`` event; {"ids", "runs"}
    POST /api/events                     send one event (or a list): {"ids", "runs"}; 400 with the engine's message
    POST /api/runs/{id}/cancel           {"cancelled": false if it had already ended}
    POST /api/runs/{id}/rerun            {"run_id": the new run}

Errors are ``{"error": message}``: 400 for a bad filter or event, 404 for an unknown run, event or function, 415 for
a POST that is not JSON, 413 for a body over ``max_body_bytes``, 503 once the engine has stopped.

Refreshing: the page polls ``/api/changes`` about once a second and refetches its view only when the
position moved. Polling rather than server-sent events: the log has no change notification to forward,
so an SSE stream would poll the same position inside the server anyway while holding a connection per
open tab (which also delays a graceful shutdown); one indexed ``max(position)`` a second is cheaper, and
polling needs no reconnect logic across server restarts.

POSTs must say ``Content-Type: application/json``: another site open in the same browser cannot send
that without a CORS preflight, which this server never grants, so it cannot send events or cancel runs
through a UI listening on loopback. The pages are served with a strict Content-Security-Policy (no
inline script, nothing from another origin): the UI needs no network beyond this server.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from steplog.actors import EngineStoppedError, Steplog
from steplog.engine import RunNotFoundError, queries
from steplog.engine import records as r
from steplog.eventstore import Entry, EventStore
from steplog.server.config import ServerConfig

log = logging.getLogger("steplog.server")

STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
PAGE_PATHS = ("/", "/events", "/events/{event_id}", "/runs", "/runs/{run_id}", "/functions")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
APPEND_PAGE = 32
"""Entries read at a time past an event (or a wait) to find what its own append wrote."""
APPEND_PAGES = 16
TOUCHED_CACHE = 10_000
"""Events whose signalled runs are remembered: an append never changes once it can be read."""
STEP_ENTRIES = (r.STEP_COMPLETED, r.STEP_ERRORED, r.STEP_FAILED)
ATTEMPT_STATUS = {r.STEP_COMPLETED: "completed", r.STEP_ERRORED: "errored", r.STEP_FAILED: "failed"}
RUN_ENDS = {r.RUN_COMPLETED: "completed", r.RUN_FAILED: "failed", r.RUN_CANCELLED: "cancelled"}
FUNCTION_STEP = "(function)"
"""The timeline row of errors raised by a function's code outside its steps."""

Json = Any
Work = Callable[[Request, Json], Json]


class ApiError(Exception):
    """A request the API refuses: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    """The UI's pages, static files and JSON endpoints, for one started client."""
    api = UiApi(client)
    endpoint = _endpoint_factory(config.max_body_bytes)
    pages: list[BaseRoute] = [Route(path, _page, methods=["GET"]) for path in PAGE_PATHS]
    return [
        *pages,
        Route("/static/{name}", _static, methods=["GET"]),
        Route("/api/changes", endpoint(api.changes), methods=["GET"]),
        Route("/api/events", endpoint(api.events), methods=["GET"]),
        Route("/api/events", endpoint(api.send), methods=["POST"]),
        Route("/api/events/{event_id}", endpoint(api.event), methods=["GET"]),
        Route("/api/runs", endpoint(api.runs), methods=["GET"]),
        Route("/api/runs/{run_id}", endpoint(api.run), methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", endpoint(api.cancel), methods=["POST"]),
        Route("/api/runs/{run_id}/rerun", endpoint(api.rerun), methods=["POST"]),
        Route("/api/functions", endpoint(api.functions), methods=["GET"]),
        Route("/api/functions/{fn_id}/invoke", endpoint(api.invoke), methods=["POST"]),
    ]


# -- pages and static files --------------------------------------------------------------------


async def _page(request: Request) -> Response:
    return _static_file("index.html")


async def _static(request: Request) -> Response:
    name = str(request.path_params["name"])
    if name not in STATIC_TYPES or name == "index.html":
        return _json_response({"error": f"no static file {name!r}"}, 404)
    return _static_file(name)


def _static_file(name: str) -> Response:
    content = (STATIC_DIR / name).read_bytes()
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name == "index.html":
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["Referrer-Policy"] = "no-referrer"
    return Response(content, media_type=STATIC_TYPES[name], headers=headers)


# -- request plumbing --------------------------------------------------------------------------


def _endpoint_factory(max_body_bytes: int) -> Callable[[Work], Callable[[Request], Awaitable[Response]]]:
    def endpoint(work: Work) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                body = await _json_body(request, max_body_bytes) if request.method == "POST" else None
                payload = await run_in_threadpool(work, request, body)
            except Exception as error:  # noqa: BLE001 - every failure becomes a JSON answer
                status, message = _failure(error)
                return _json_response({"error": message}, status)
            return _json_response(payload, 200)

        return handle

    return endpoint


def _failure(error: Exception) -> tuple[int, str]:
    if isinstance(error, ApiError):
        return error.status, str(error)
    if isinstance(error, RunNotFoundError):
        return 404, str(error.args[0]) if error.args else "no such run"
    if isinstance(error, EngineStoppedError):
        return 503, str(error)
    if isinstance(error, ValueError):
        return 400, str(error)
    log.exception("the UI's API failed", exc_info=error)
    return 500, f"{type(error).__name__}: {error}"


async def _json_body(request: Request, max_bytes: int) -> Json:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "send JSON, with the header Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the body is over {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"the body is over {max_bytes} bytes")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body is not JSON this server reads: it is nested too deeply") from None


def _json_response(payload: Json, status: int) -> Response:
    content = json.dumps(payload, ensure_ascii=False, default=str, separators=(",", ":"))
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if status == 413:
        headers["Connection"] = "close"  # as the event API: the rest of a refused body is not read
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _limit(request: Request) -> int:
    text = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text!r}")
    return int(text)


def _param(request: Request, name: str) -> str | None:
    """A filter's value as given (names may hold spaces at either end), or None if blank."""
    value = request.query_params.get(name, "")
    return value if value.strip() else None


# -- the API -----------------------------------------------------------------------------------


class UiApi:
    """What each JSON endpoint answers, read from a client's log (called on worker threads)."""

    def __init__(self, client: Steplog) -> None:
        self.client = client
        self._touched: OrderedDict[str, list[tuple[str, str, str | None]]] = OrderedDict()
        self._touched_lock = threading.Lock()

    @property
    def store(self) -> EventStore:
        return self.client.store

    def changes(self, request: Request, body: Json) -> Json:
        return {"position": self.store.last_position(), "now": _iso(self.client.clock.now())}

    def events(self, request: Request, body: Json) -> Json:
        rows = self.client.list_events(name=_param(request, "name"), limit=_limit(request))
        return [self._event_view(row) for row in rows]

    def event(self, request: Request, body: Json) -> Json:
        event_id = str(request.path_params["event_id"])
        internal_ids = queries.event_internal_ids(self.store, event_id)
        rows = self.store.query("events", where={"internal_id": internal_ids[-1]}) if internal_ids else []
        if not rows:
            raise ApiError(404, f"no event {event_id!r} in the log")
        return self._event_view(_decoded_event(self.store, rows[0]))

    def runs(self, request: Request, body: Json) -> Json:
        rows = self.client.list_runs(
            function_id=_param(request, "function"), status=_param(request, "status"), limit=_limit(request)
        )
        names: dict[str, str | None] = {}
        return [self._run_row(row, names) for row in rows]

    def run(self, request: Request, body: Json) -> Json:
        history = self.client.run_history(str(request.path_params["run_id"]))
        return RunView(self.store, history, self.client).build()

    def functions(self, request: Request, body: Json) -> Json:
        now = self.client.clock.now()
        return [_described(function, now) for function in self.client.registry.all()]

    def send(self, request: Request, body: Json) -> Json:
        if not isinstance(body, (dict, list)) or not body:
            raise ApiError(400, 'send an event as a JSON object, e.g. {"name": "app/user.created", "data": {}}')
        ids = self.client.send(body)
        runs = [handle.run_id for event_id in ids for handle in self.client.runs_for_event(event_id)]
        return {"ids": list(ids), "runs": runs}

    def invoke(self, request: Request, body: Json) -> Json:
        """Start a run of a function now, as ``step.invoke`` would, whatever its triggers (a cron's too).
        """
        fn_id = str(request.path_params["fn_id"])
        if self.client.registry.get(fn_id) is None:
            raise ApiError(404, f"no function {fn_id!r}")
        if body is not None and not isinstance(body, dict):
            raise ApiError(400, 'send a JSON object, e.g. {"data": {}}')
        data = (body or {}).get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ApiError(400, "data must be a JSON object")
        ids = self.client.invoke(fn_id, data)
        runs = [handle.run_id for event_id in ids for handle in self.client.runs_for_event(event_id)]
        return {"ids": list(ids), "runs": runs}

    def cancel(self, request: Request, body: Json) -> Json:
        reason = body.get("reason") if isinstance(body, dict) else None
        reason = reason if isinstance(reason, str) and reason.strip() else "cancelled from the dev UI"
        return {"cancelled": self.client.cancel(str(request.path_params["run_id"]), reason=reason)}

    def rerun(self, request: Request, body: Json) -> Json:
        return {"run_id": self.client.rerun(str(request.path_params["run_id"]))}

    # -- views ---------------------------------------------------------------------------------

    def _event_view(self, row: dict[str, Any]) -> dict[str, Any]:
        event = {key: value for key, value in row.items() if key != "runs"}
        event["runs"] = [self._related(run_id, "started") for run_id in row["runs"]]
        if not row["duplicate"]:
            event["runs"] += [
                self._related(run_id, relation, step=step) for run_id, relation, step in self._touched_by(row)
            ]
        return event

    def _touched_by(self, event: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        with self._touched_lock:
            known = self._touched.get(event["internal_id"])
        if known is not None:
            return known
        touched = _touched_by(self.store, event)
        with self._touched_lock:
            self._touched[event["internal_id"]] = touched
            while len(self._touched) > TOUCHED_CACHE:
                self._touched.popitem(last=False)
        return touched

    def _related(self, run_id: str, relation: str, *, step: str | None = None) -> dict[str, Any]:
        rows = self.store.query("runs", where={"run_id": run_id})
        summary = rows[0] if rows else {}
        related = {"run_id": run_id, "relation": relation, "function_id": summary.get("function_id"),
                   "status": summary.get("status")}
        if step is not None:
            related["step"] = step
        return related

    def _run_row(self, row: dict[str, Any], names: dict[str, str | None]) -> dict[str, Any]:
        event_id = row.get("event_id")
        if event_id and event_id not in names:
            found = self.store.query("events", where={"internal_id": event_id})
            names[event_id] = found[0]["name"] if found else None
        return {**row, "event_name": names.get(event_id) if event_id else None,
                "duration_ms": duration_ms(row.get("started_at"), row.get("ended_at"))}


def _described(function: Any, now: datetime) -> dict[str, Any]:
    """A function's ``describe()``, each cron trigger with its next tick (before jitter) as ``next_at``."""
    described: dict[str, Any] = function.describe()
    next_ticks = {cron.trigger.cron: cron.schedule.next_after(now) for cron in getattr(function, "crons", ())}
    for trigger in described.get("triggers", []):
        if isinstance(trigger, dict) and trigger.get("cron") in next_ticks:
            trigger["next_at"] = _iso(next_ticks[trigger["cron"]])
    return described


def _decoded_event(store: EventStore, row: dict[str, Any]) -> dict[str, Any]:
    """An ``events`` row as ``queries.list_events`` gives it: JSON decoded, with the runs it started."""
    event = dict(row)
    for column in ("data", "flow"):
        if isinstance(event.get(column), str):
            event[column] = json.loads(event[column])
    event["duplicate"] = bool(event["duplicate"])
    event["flow"] = event.get("flow") or []
    event["runs"] = [run["run_id"] for run in store.query("runs", where={"event_id": row["internal_id"]})]
    return event


def _touched_by(store: EventStore, event: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(run id, ``resumed`` or ``cancelled``, step) for each run the event's own append signalled.

    The coordinator writes a matched wait's ``wait.resolved`` (and a cancel rule's ``cancel.requested``)
    in the same append as the event, so they follow its ``event.received`` in the same group commit.
    """
    touched: list[tuple[str, str, str | None]] = []
    for entry in _append_after(store, event["position"], event["received_at"]):
        if entry.type == r.WAIT_RESOLVED and entry.data.get("event", {}).get("id") == event["id"]:
            touched.append((r.stream_id(entry.stream), "resumed", entry.data.get("step")))
        elif entry.type == r.CANCEL_REQUESTED and str(entry.data.get("reason", "")).endswith(f"({event['id']})"):
            touched.append((r.stream_id(entry.stream), "cancelled", None))
    return touched


def _append_after(store: EventStore, position: int, recorded_at: str) -> list[Entry]:
    """The entries after ``position`` in the same group commit, up to the next event received."""
    found: list[Entry] = []
    for _ in range(APPEND_PAGES):
        page = store.read_all(after=position, limit=APPEND_PAGE)
        for entry in page:
            if entry.recorded_at != recorded_at or entry.type in (r.EVENT_RECEIVED, r.EVENT_DUPLICATE):
                return found
            found.append(entry)
        if len(page) < APPEND_PAGE:
            return found
        position = page[-1].position
    return found


# -- a run's timeline --------------------------------------------------------------------------


class RunView:
    """A run as the page shows it: summary, trigger events, steps with their attempts, and its log."""

    def __init__(self, store: EventStore, history: queries.RunHistory, client: Steplog) -> None:
        self.store = store
        self.history = history
        self.client = client
        self.steps: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []

    def build(self) -> dict[str, Any]:
        run = self.history.run
        first = self.history.entries[0].data if self.history.entries else {}
        for entry in self.history.entries:
            self._take(entry)
        function = self.client.registry.get(run["function_id"])
        events = [{"internal_id": internal_id, **event}
                  for internal_id, event in zip(first.get("event_ids", []), first.get("events", []))]
        return {
            "run": {**run, "duration_ms": duration_ms(run.get("started_at"), run.get("ended_at"))},
            "function": function.describe() if function is not None else None,
            "events": events,
            "rerun_of": first.get("rerun_of"),
            "invoked_by": _invoked_by(events),
            "skipped": {"reason": first.get("reason"), "message": first.get("message")}
            if run["status"] == "skipped" else None,
            "steps": [self._finish_step(step) for step in self.steps.values()],
            "log": self.log,
            "active": run["status"] in queries.ACTIVE_STATUSES,
        }

    def _take(self, entry: Entry) -> None:
        data = entry.data
        if entry.type in STEP_ENTRIES:
            self._attempt(entry)
        elif entry.type == r.STEP_SLEEPING:
            step = self._step(data["step"], data["id"], data["kind"], data["started_at"])
            step.update(status="sleeping", sleep={"until": data.get("wake_at")})
            self._note(entry, "sleeping", step=data["step"], until=data.get("wake_at"))
        elif entry.type == r.STEP_WAITING:
            self._waiting(entry)
        elif entry.type == r.WAIT_RESOLVED:
            self._resolved(entry)
        elif entry.type == r.WAIT_EXPIRED:
            self._expired(entry)
        elif entry.type == r.RUN_ERRORED:
            self._function_error(entry)
        else:
            self._run_entry(entry)

    def _step(self, key: str, step_id: str, kind: str, started_at: str) -> dict[str, Any]:
        if key not in self.steps:
            self.steps[key] = {
                "key": key, "id": step_id, "kind": kind, "status": "running", "started_at": started_at,
                "ended_at": None, "attempts": [], "output": None, "error": None, "sleep": None, "wait": None,
                "invoke": None,
            }
        return self.steps[key]

    def _attempt(self, entry: Entry) -> None:
        data = entry.data
        status = ATTEMPT_STATUS[entry.type]
        step = self._step(data["step"], data["id"], data["kind"], data["started_at"])
        step["attempts"].append({
            "attempt": int(data.get("attempt", 0)) + 1, "status": status, "started_at": data["started_at"],
            "ended_at": data.get("ended_at"), "duration_ms": duration_ms(data["started_at"], data.get("ended_at")),
            "output": data.get("output"), "error": data.get("error"), "retry_at": data.get("retry_at"),
        })
        step.update(status=status, ended_at=data.get("ended_at"), output=data.get("output"), error=data.get("error"))
        self._note(entry, f"step {status}", step=data["step"], attempt=int(data.get("attempt", 0)) + 1,
                   retry_at=data.get("retry_at"))

    def _waiting(self, entry: Entry) -> None:
        data = entry.data
        pause = data.get("pause", {})
        step = self._step(data["step"], data["id"], data["kind"], data["started_at"])
        step["status"] = "waiting"
        if data["kind"] == "invoke":
            step["invoke"] = self._invoked(pause, entry.position)
        else:
            step["wait"] = {"event": pause.get("event"), "if": pause.get("expression"),
                            "expires_at": pause.get("expires_at"), "matched": None, "timed_out": False}
        self._note(entry, "waiting", step=data["step"], event=pause.get("event"), until=pause.get("expires_at"))

    def _invoked(self, pause: dict[str, Any], position: int) -> dict[str, Any]:
        """The run an invoke started: the ``inngest/function.invoked`` event sent in its wait's append."""
        correlation = pause.get("trigger", {}).get("correlation_id")
        invoked: dict[str, Any] = {"function_id": None, "run_id": None, "status": None,
                                   "expires_at": pause.get("expires_at")}
        for entry in self.store.read_all(after=position, limit=APPEND_PAGE):
            data = entry.data.get("event", {}).get("data") if entry.type == r.EVENT_RECEIVED else None
            marks = data.get("_inngest") if isinstance(data, dict) else None
            if isinstance(marks, dict) and marks.get("correlation_id") == correlation:
                invoked["function_id"] = marks.get("fn_id")
                runs = self.store.query("runs", where={"event_id": entry.data["internal_id"]})
                if runs:
                    invoked.update(run_id=runs[0]["run_id"], status=runs[0]["status"])
                break
        return invoked

    def _resolved(self, entry: Entry) -> None:
        data = entry.data
        event = data.get("event") or {}
        step = self.steps.get(data["step"])
        if step is not None and step.get("invoke") is not None:
            finished = event.get("data", {})
            step["invoke"].update(function_id=finished.get("function_id") or step["invoke"]["function_id"],
                                  run_id=finished.get("run_id") or step["invoke"]["run_id"])
            if step["invoke"]["run_id"]:
                rows = self.store.query("runs", where={"run_id": step["invoke"]["run_id"]})
                step["invoke"]["status"] = rows[0]["status"] if rows else None
            self._note(entry, "invoked run ended", step=data["step"], run_id=step["invoke"]["run_id"])
            return
        if step is not None and step.get("wait") is not None:
            step["wait"]["matched"] = event
        self._note(entry, "event matched", step=data["step"], event=event.get("name"), event_id=event.get("id"))

    def _expired(self, entry: Entry) -> None:
        waited = self.steps.get(entry.data["step"])
        if waited is not None and waited.get("wait") is not None:
            waited["wait"]["timed_out"] = True
        self._note(entry, "wait expired", step=entry.data["step"])

    def _function_error(self, entry: Entry) -> None:
        data = entry.data
        step = self._step(FUNCTION_STEP, FUNCTION_STEP, "function", entry.recorded_at)
        attempt = int(data.get("attempt", 0)) + 1
        step["attempts"].append({
            "attempt": attempt, "status": "errored", "started_at": None, "ended_at": entry.recorded_at,
            "duration_ms": None, "output": None, "error": data.get("error"), "retry_at": data.get("retry_at"),
        })
        step.update(status="errored", ended_at=entry.recorded_at, error=data.get("error"))
        self._note(entry, "function errored", attempt=attempt, retry_at=data.get("retry_at"))

    def _run_entry(self, entry: Entry) -> None:
        data = entry.data
        if entry.type == r.RUN_SCHEDULED:
            self._note(entry, "scheduled", ready_at=data.get("ready_at"))
        elif entry.type == r.RUN_SKIPPED:
            self._note(entry, "skipped", reason=data.get("reason"), message=data.get("message"))
        elif entry.type == r.RUN_STARTED:
            self._note(entry, "started", at=data.get("at"))
        elif entry.type == r.RUN_RESUMED:
            self._note(entry, "resumed", at=data.get("at"))
        elif entry.type == r.CANCEL_REQUESTED:
            self._note(entry, "cancel requested", reason=data.get("reason"))
        elif entry.type in RUN_ENDS:
            self._note(entry, RUN_ENDS[entry.type], at=data.get("at"), reason=data.get("reason"))

    def _note(self, entry: Entry, what: str, **details: Any) -> None:
        at = details.pop("at", None) or entry.recorded_at
        self.log.append({"at": at, "what": what, **{k: v for k, v in details.items() if v is not None}})

    def _finish_step(self, step: dict[str, Any]) -> dict[str, Any]:
        ended = step["ended_at"] if step["status"] not in ("sleeping", "waiting", "running") else None
        if step["kind"] == "function":
            return {**step, "duration_ms": None}
        return {**step, "ended_at": ended, "duration_ms": duration_ms(step["started_at"], ended)}


def _invoked_by(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run and step that invoked this run, from its ``inngest/function.invoked`` trigger."""
    for event in events:
        data = event.get("data")
        if event.get("name") == "inngest/function.invoked" and isinstance(data, dict):
            correlation = str(data.get("_inngest", {}).get("correlation_id") or "")
            run_id, dot, step = correlation.partition(".")
            if dot:
                return {"run_id": run_id, "step": step}
    return None


# -- time --------------------------------------------------------------------------------------


def parse_iso(text: str | None) -> datetime | None:
    """An ISO 8601 time from the log, or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def duration_ms(started: str | None, ended: str | None) -> float | None:
    """Milliseconds from ``started`` to ``ended``; None unless both are known."""
    low, high = parse_iso(started), parse_iso(ended)
    if low is None or high is None:
        return None
    return round((high - low).total_seconds() * 1000, 3)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
