"""The ASGI app: every route of the server, for one started ``Steplog`` client."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from steplog.actors import Steplog
from steplog.server.config import ServerConfig


def create_app(client: Steplog, config: ServerConfig | None = None) -> Starlette:
    """The server's app for a client (which the caller starts and stops)."""
    config = (config or ServerConfig(dev=True)).check()
    routes: list[BaseRoute] = []
    routes += _event_api_routes(client, config)
    routes += _webhook_routes(client, config)
    routes += _ui_routes(client, config)
    return Starlette(routes=routes)


def _event_api_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import event_api

    return event_api.routes(client, config)


def _webhook_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import webhook_api

    return webhook_api.routes(client, config)


def _ui_routes(client: Steplog, config: ServerConfig) -> list[BaseRoute]:
    from steplog.server import ui

    return ui.routes(client, config)
