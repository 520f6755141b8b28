"""Inngest's event API: ``POST /e/{event_key}`` with one event object or an array of them.

The answer, ``200 {"ids": [...], "status": 200}``, comes only after the events (and the runs they
start) are committed, because ``Steplog.send`` returns after the commit. Errors have Inngest's
shape, ``{"ids": [], "status": <code>, "error": "<message>"}``, and accept nothing: a send is
all-or-nothing. ``x-inngest-event-id-seed`` (sent by Inngest's SDKs) makes the ids deterministic,
so a retried request gets the same ids and starts nothing twice.

``GET /health`` answers ``{"status": "ok"}`` for load balancers and process managers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from steplog.actors import EngineStoppedError, Steplog
from steplog.engine import EventError
from steplog.engine.errors import EventTooLargeError
from steplog.engine.ids import seeded_ulids
from steplog.server.config import ServerConfig

log = logging.getLogger("steplog.server")

EVENT_ID_SEED_HEADER = "x-inngest-event-id-seed"
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
"""Routed to the endpoint, which answers all but POST with Inngest's error shape and a 405."""


class RequestRefused(Exception):
    """A request answered with an error status; the message says what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    """``POST /e/{event_key}`` (and ``/e`` without a key, refused), and ``GET /health``."""
    receive = _event_endpoint(client, config)
    return [
        Route("/e/{event_key}", receive, methods=_ANY_METHOD),
        Route("/e", receive, methods=_ANY_METHOD),
        Route("/e/", receive, methods=_ANY_METHOD),
        Route("/health", health, methods=["GET", "HEAD"]),
    ]


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _event_endpoint(client: Steplog, config: ServerConfig) -> Callable[[Request], Awaitable[Response]]:
    async def receive_events(request: Request) -> Response:
        try:
            ids = await _receive(request, client, config)
        except RequestRefused as refused:
            return refusal(refused.status, str(refused))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        return JSONResponse({"ids": ids, "status": 200})

    return receive_events


async def _receive(request: Request, client: Steplog, config: ServerConfig) -> list[str]:
    if request.method != "POST":
        raise RequestRefused(405, f"{request.method} is not allowed: send events with POST /e/{{event_key}}")
    _check_key(request.path_params.get("event_key"), config)
    seed = _seed_of(request)
    body = await read_body(request, config.max_body_bytes)
    return await run_in_threadpool(_parse_and_send, client, body, seed)  # parsing a big body must not stall the loop


def _parse_and_send(client: Steplog, body: bytes, seed: str | None) -> list[str]:
    events = parse_events(body)
    if len(events) > client.limits.events_per_send:
        raise RequestRefused(413, f"the body holds {len(events)} events; the limit is {client.limits.events_per_send}")
    return _send(client, events, seed)


def _check_key(key: str | None, config: ServerConfig) -> None:
    if not key:
        raise RequestRefused(401, "no event key: send events to /e/{event_key}")
    if not config.accepts_key(key):
        raise RequestRefused(401, "event key not accepted: it is not one of the keys the server was started with")


def _seed_of(request: Request) -> str | None:
    seed = request.headers.get(EVENT_ID_SEED_HEADER)
    if seed is None:
        return None
    try:
        seeded_ulids(seed, 1)
    except ValueError as error:
        raise RequestRefused(400, f"header {EVENT_ID_SEED_HEADER}: {error}") from None
    return seed


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refusing (413) one over ``limit`` bytes: by its Content-Length before
    reading anything, or while reading a chunked body, as soon as it goes past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(413, f"the body is {int(declared)} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_events(body: bytes) -> list[Any]:
    """The events of a body holding one JSON event object or an array of them (not yet checked)."""
    if not body.strip():
        raise RequestRefused(400, "the body is empty: send an event object or an array of events")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRefused(
            400, f"the body is not UTF-8: byte 0x{body[error.start]:02x} at offset {error.start} is invalid"
        ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise RequestRefused(
            400, f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError as error:
        raise RequestRefused(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise RequestRefused(400, "the body nests arrays or objects too deeply") from None
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise RequestRefused(400, f"the body must be an event object or an array of events, not {_json_type(value)}")
    if not value:
        raise RequestRefused(400, "the body is an empty array: send at least one event")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string"


def _send(client: Steplog, events: list[Any], seed: str | None) -> list[str]:
    """Send in a worker thread: ``send`` blocks until the commit, and concurrent sends share commits."""
    try:
        return list(client.send(events, id_seed=seed))
    except EventError as error:
        raise RequestRefused(413 if isinstance(error, EventTooLargeError) else 400, str(error)) from None
    except EngineStoppedError as error:
        raise RequestRefused(503, str(error)) from None
    except Exception as error:
        log.exception("sending %d event(s) failed", len(events))
        raise RequestRefused(500, f"internal error: {type(error).__name__}: {error}") from None


def refusal(status: int, message: str) -> JSONResponse:
    """Inngest's error answer. It closes the connection: the refused body may be left unread."""
    headers = {"connection": "close"}
    if status == 405:
        headers["allow"] = "POST"
    return JSONResponse({"ids": [], "status": status, "error": message}, status_code=status, headers=headers)
