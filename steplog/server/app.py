"""The ASGI app: every route of the server, for one started ``Steplog`` client."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from steplog.actors import Steplog
from steplog.server.auth import LoopbackOnly, TokenAuth
from steplog.server.config import ServerConfig, is_loopback


def create_app(client: Steplog, config: ServerConfig | None = None) -> Starlette:
    """The server's app for a client (which the caller starts and stops).

    With ``config.api_token``, the UI and ``/api/`` need the token (see ``auth``); the event API
    keeps its event keys, webhooks their signatures, and ``/health`` is open. On loopback, only
    requests addressed to a loopback name, and not sent by other sites' pages, are served.
    """
    config = (config or ServerConfig(dev=True)).check()
    routes: list[BaseRoute] = []
    routes += _event_api_routes(client, config)
    routes += _webhook_routes(client, config)
    routes += _ui_routes(client, config)
    middleware = [Middleware(TokenAuth, token=config.api_token)] if config.api_token else []
    if is_loopback(config.host):
        middleware.insert(0, Middleware(LoopbackOnly))
    return Starlette(routes=routes, middleware=middleware)


def _event_api_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import event_api

    return event_api.routes(client, config)


def _webhook_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import webhook_api

    return webhook_api.routes(client, config)


def _ui_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import ui

    return ui.routes(client, config)
