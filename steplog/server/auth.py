"""The API token that guards the UI and its ``/api/`` endpoints.

A request shows the token as ``Authorization: Bearer <token>`` or as the ``steplog_token``
cookie, which a browser gets by opening any page once with ``?token=<token>`` (it is then sent
back to the same address without the token, so the token does not stay in the address bar or the
history). The event API keeps its event keys, webhooks their signatures, and ``/health`` is open.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import logging
import re
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "steplog_token"
QUERY_PARAM = "token"
OPEN_PATHS = ("/e", "/webhooks", "/health")
"""Paths (and everything under them) that have their own checks, or none."""
API_PREFIX = "/api"
_TOKEN_IN_QUERY = re.compile(r"([?&](?:t|%74)(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)=)[^&\s]*", re.IGNORECASE)
"""``token=`` in a query, also with its letters percent-encoded (``%74oken=``), as the login reads it."""


class TokenAuth:
    """ASGI middleware: every request outside ``OPEN_PATHS`` must show ``token``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("TokenAuth needs a non-empty token")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        offered = connection.query_params.get(QUERY_PARAM)
        if offered is not None and scope["type"] == "http" and not is_api(scope["path"]):
            response = self._login(connection, offered)
            await response(scope, receive, send)
            return
        if self.shown_by(connection):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "the API token is missing or wrong"})
            return
        await refusal(connection)(scope, receive, send)

    def shown_by(self, connection: HTTPConnection) -> bool:
        """Whether the request carries the token, as a bearer token or in the cookie."""
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            return True
        cookie = connection.cookies.get(COOKIE)
        return cookie is not None and self._matches(cookie)

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._token)

    def _login(self, connection: HTTPConnection, offered: str) -> Response:
        url = connection.url
        if not self._matches(offered):
            return _ask_for_token(wrong=True)
        rest = urlencode([(key, value) for key, value in connection.query_params.multi_items() if key != QUERY_PARAM])
        # relative: the address the browser used, whatever Host a proxy in front of us gives
        response = RedirectResponse(_same_server_path(url.path) + (f"?{rest}" if rest else ""), status_code=303)
        response.set_cookie(
            COOKIE, offered, httponly=True, samesite="strict", secure=url.scheme == "https", path="/",
        )
        return response


class RedactToken(logging.Filter):
    """Blanks ``?token=...`` in log records (uvicorn's access log shows each request's query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1<redacted>", text)


def is_open(path: str) -> bool:
    """Whether ``path`` is outside the token's guard."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPEN_PATHS)


def is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def refusal(connection: HTTPConnection) -> Response:
    """401: JSON for the API, a page asking for the token for everything else."""
    if is_api(connection.url.path):
        return JSONResponse(
            {"status": 401, "error": "this endpoint needs the server's API token: send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )
    return _ask_for_token(wrong=False)


def _ask_for_token(*, wrong: bool) -> HTMLResponse:
    problem = "That token is not the server's API token." if wrong else "This server needs its API token."
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>steplog: API token needed</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 4em auto">
<h1>steplog</h1>
<p>{html.escape(problem, quote=False)} It was given to <code>steplog serve</code> with <code>--api-token</code>
(or <code>STEPLOG_API_TOKEN</code>).</p>
<form method="get" action="">
<label>API token <input type="password" name="{QUERY_PARAM}" autofocus required></label>
<button type="submit">Open</button>
</form>
</body></html>
"""
    headers = {
        "www-authenticate": "Bearer",
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    }
    return HTMLResponse(page, status_code=401, headers=headers)


def _same_server_path(path: str) -> str:
    """``path`` as a link that stays on this server: ``//evil.example/`` (or with backslashes,
    which browsers read as slashes) would name another host."""
    return "/" + path.replace("\\", "/").lstrip("/")


class LoopbackOnly:
    """ASGI middleware for a server bound to loopback: refuse (403) a request whose ``Host`` is not
    a loopback name (a DNS-rebinding page reaching 127.0.0.1 under its own domain), or that a
    browser sent from a page of another origin (``Origin`` names a non-loopback host: a
    cross-site form or fetch posting events, cancelling runs). Programs (SDKs, curl) send no
    ``Origin`` and are not affected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        headers = connection.headers
        problem = _non_local(headers.get("host", ""), headers.get("origin"), headers.get("sec-fetch-site"))
        if problem is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
            return
        await JSONResponse({"ids": [], "status": 403, "error": problem}, status_code=403)(scope, receive, send)


def _non_local(host: str, origin: str | None, fetch_site: str | None) -> str | None:
    if not _is_loopback_name(URL(f"http://{host}/").hostname or ""):
        return f"host {host!r} is not a loopback name: this server only answers requests for localhost"
    if fetch_site == "cross-site":
        return f"requests from other sites' pages (Sec-Fetch-Site: {fetch_site}) are refused"
    if origin is None or (origin == "null" and fetch_site == "same-origin"):
        return None
    if origin == "null" or not _is_loopback_name(URL(origin).hostname or ""):
        return f"requests from pages of {origin!r} are refused: this server only serves its own pages"
    return None


def _is_loopback_name(hostname: str) -> bool:
    name = hostname.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
