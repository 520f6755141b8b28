"""server: steplog's HTTP face, an ASGI app (Starlette, served by uvicorn) on top of a ``Steplog`` client.

    POST /e/{event_key}          Inngest's event API (``event_api``)
    POST /webhooks/{name}        signed webhooks turned into events (``webhook_api``)
    GET  /                       the dev UI, and its JSON under /api/ (``ui``)

``steplog serve module:client`` (``serve``) imports the user's app and runs it all.
"""

from steplog.server.app import create_app
from steplog.server.config import ConfigError, ServerConfig

__all__ = ["ConfigError", "ServerConfig", "create_app"]
