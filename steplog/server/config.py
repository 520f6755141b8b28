"""What the server is told at start: where to listen, which event keys it accepts, the UI's token."""

from __future__ import annotations

import hmac
import ipaddress

import attrs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8288
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
"""A request body larger than this is refused with 413 before it is read whole."""


class ConfigError(ValueError):
    """A server setting that cannot work; the message names it."""


@attrs.frozen
class ServerConfig:
    """The server's settings.

    ``event_keys``: the keys ``POST /e/{key}`` accepts. ``dev=True`` accepts any key instead (and
    the server says so at start). ``api_token`` guards the UI and its ``/api/`` endpoints; it is
    required when ``host`` is not a loopback address.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    event_keys: tuple[str, ...] = ()
    dev: bool = False
    api_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def check(self) -> ServerConfig:
        """Raise ConfigError for settings that cannot work; returns self."""
        if not self.dev and not self.event_keys:
            raise ConfigError("no event key is configured: give --event-key KEY (repeatable), or --dev to accept any key")
        if any(not key or not key.strip() for key in self.event_keys):
            raise ConfigError("an event key is empty")
        if not is_loopback(self.host) and not self.api_token:
            raise ConfigError(
                f"binding to {self.host!r}, which is not a loopback address, needs an API token for the UI and"
                " admin endpoints: give --api-token TOKEN (or STEPLOG_API_TOKEN)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not between 0 and 65535")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes {self.max_body_bytes} is below 1024")
        return self

    def accepts_key(self, key: str) -> bool:
        """Whether ``POST /e/{key}`` may send with this key (compared in constant time)."""
        if self.dev:
            return True
        given = key.encode()
        return any(hmac.compare_digest(given, known.encode()) for known in self.event_keys)


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
