"""Webhooks over HTTP: ``POST /webhooks/{name}`` runs the webhook's transform on the request and
sends the events it returns.

    200  {"ids": [...], "status": 200}   after the events (and the runs they start) are committed
    400  the body is not what its content type says, the transform raised or returned something
         that is not events, or the engine refused an event (nothing of the request is accepted)
    401  a signed webhook's request is unsigned, stale, replayed or tampered
    404  no webhook has this name
    405  not a POST
    413  the body is over ``ServerConfig.max_body_bytes``
    503  the engine has stopped

Errors have the event API's shape, ``{"ids": [], "status": <code>, "error": "<message>"}``.
Signatures are checked on the event loop (an HMAC over the body costs microseconds); the
transform and the send run in worker threads. The replay guard is in this process's memory: a
replay after a restart is caught by the events' dedup ids instead (see ``WebhookDef.events_from``).
A message id is remembered only once its events are accepted, so that a delivery that failed
here may be retried by the sender with the same id.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime
from typing import Any

from anyio import CapacityLimiter, to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from steplog.actors import EngineStoppedError, Steplog
from steplog.engine import EventError
from steplog.engine.events import Event
from steplog.engine.webhooks import (
    ID_HEADER,
    ReplayGuard,
    Verified,
    WebhookDef,
    WebhookRequestError,
    WebhookVerificationError,
    parse_body,
)
from steplog.server.config import ServerConfig
from steplog.server.event_api import RequestRefused, read_body, refusal

log = logging.getLogger("steplog.server")
ANY_METHOD = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"]
"""Routed here so that every method but POST gets the JSON 405 (Starlette's default is plain text)."""


def routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    """``POST /webhooks/{name}`` for every webhook of ``client`` (other methods get 405)."""
    guard = ReplayGuard()

    async def receive_webhook(request: Request) -> Response:
        try:
            ids = await _receive(request, client, config, guard)
        except RequestRefused as refused:
            return refusal(refused.status, str(refused))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        return JSONResponse({"ids": ids, "status": 200})

    return [Route("/webhooks/{name}", receive_webhook, methods=ANY_METHOD)]


async def _receive(request: Request, client: Steplog, config: ServerConfig, guard: ReplayGuard) -> list[str]:
    name = request.path_params["name"]
    if request.method != "POST":
        raise RequestRefused(405, f"{request.method} is not allowed: webhooks take POST /webhooks/{{name}}")
    webhook = client.webhooks.get(name)
    if webhook is None:
        raise RequestRefused(404, f"no webhook is named {name!r}")
    body = await read_body(request, config.max_body_bytes)
    headers = _headers(request)
    now = client.clock.now()
    verified = _verify(webhook, headers, body, now)
    if verified is None:
        return await _accept(client, webhook, request, headers, body, None)
    claim = f"{webhook.name}\n{verified.msg_id}"
    if not guard.claim(claim, verified.expires, now):
        raise RequestRefused(401, f"replayed request: {ID_HEADER} {verified.msg_id!r} was already received")
    try:
        return await _accept(client, webhook, request, headers, body, verified)
    except BaseException:
        guard.release(claim)  # not accepted: the sender's retry with the same id must get through
        raise


def _headers(request: Request) -> dict[str, str]:
    """Lower-case names; a repeated header's values joined with ", " (as HTTP allows)."""
    return {name: ", ".join(request.headers.getlist(name)) for name in request.headers}


def _verify(webhook: WebhookDef, headers: dict[str, str], body: bytes, now: datetime) -> Verified | None:
    try:
        return webhook.verify(headers, body, now)
    except WebhookVerificationError as error:
        log.info("webhook %r refused a request: %s", webhook.name, error)
        raise RequestRefused(401, str(error)) from None


async def _accept(
    client: Steplog, webhook: WebhookDef, request: Request, headers: dict[str, str], body: bytes,
    verified: Verified | None,
) -> list[str]:
    events = await _events(webhook, request, headers, body, verified)
    if not events:
        return []
    return await run_in_threadpool(_send, client, events)


async def _events(
    webhook: WebhookDef, request: Request, headers: dict[str, str], body: bytes, verified: Verified | None
) -> list[Event | dict[str, Any]]:
    try:
        value = parse_body(webhook.name, body, headers.get("content-type"))
    except WebhookRequestError as error:
        raise RequestRefused(400, str(error)) from None
    query = dict(request.query_params)
    try:
        if webhook.is_async:
            result = await webhook.transform(value, headers, query)
        else:
            result = await to_thread.run_sync(webhook.transform, value, headers, query, limiter=_transforms())
    except Exception as error:
        log.warning("webhook %r: the transform raised", webhook.name, exc_info=True)
        raise RequestRefused(400, str(webhook.failed(error))) from None
    try:
        return webhook.events_from(result, verified)
    except WebhookRequestError as error:
        raise RequestRefused(400, str(error)) from None


def _send(client: Steplog, events: list[Event | dict[str, Any]]) -> list[str]:
    """In a worker thread: ``send`` blocks until the commit."""
    try:
        return list(client.send(events))
    except EventError as error:
        raise RequestRefused(400, str(error)) from None
    except EngineStoppedError as error:
        raise RequestRefused(503, str(error)) from None
    except Exception as error:
        log.exception("webhook: sending %d event(s) failed", len(events))
        raise RequestRefused(500, f"internal error: {type(error).__name__}: {error}") from None


TRANSFORM_THREADS = 8
"""Sync transforms run on threads of their own, at most this many at once: slow or stuck ones
wait for each other, never for the threads that commit sends and serve the UI."""
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = weakref.WeakKeyDictionary()


def _transforms() -> CapacityLimiter:
    """The transforms' limiter of the running event loop (a limiter belongs to one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = CapacityLimiter(TRANSFORM_THREADS)
    return _limiters[loop]
