"""``steplog serve module[:attr]``: import the user's app, start its client and serve it over HTTP.

On SIGINT or SIGTERM the server stops accepting connections, lets the requests in flight finish
(each is answered only after its events are committed), and then stops the client, so that
everything acknowledged is committed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from types import FrameType, ModuleType
from typing import TextIO

import attrs
import uvicorn

from steplog.actors import Steplog
from steplog.server.app import create_app
from steplog.server.auth import RedactToken
from steplog.server.config import DEFAULT_HOST, DEFAULT_PORT, ConfigError, ServerConfig, is_loopback

EVENT_KEY_ENV = "STEPLOG_EVENT_KEY"
API_TOKEN_ENV = "STEPLOG_API_TOKEN"
DEV_ENV = "STEPLOG_DEV"
_TRUE = ("1", "true", "yes", "on")


class ServeError(Exception):
    """Why the server cannot start, in one line."""


@attrs.frozen
class ServeOptions:
    """What ``steplog serve`` was given on the command line (empty: take the environment's value)."""

    target: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    event_keys: Sequence[str] = ()
    dev: bool = False
    api_token: str | None = None


def config_of(options: ServeOptions, environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """The server's settings: the options, with the environment as defaults. Raises ServeError."""
    keys = tuple(options.event_keys) or tuple(
        key.strip() for key in environ.get(EVENT_KEY_ENV, "").split(",") if key.strip()
    )
    config = ServerConfig(
        host=options.host,
        port=options.port,
        event_keys=keys,
        dev=options.dev or environ.get(DEV_ENV, "").strip().lower() in _TRUE,
        api_token=options.api_token or environ.get(API_TOKEN_ENV) or None,
    )
    try:
        return config.check()
    except ConfigError as error:
        raise ServeError(str(error)) from None


GRACEFUL_SHUTDOWN_S = 15
"""How long a stop waits for requests in flight before closing their connections."""


def run(options: ServeOptions, out: TextIO = sys.stdout) -> int:
    """Check the settings, load the client, serve until a signal; returns the exit code."""
    config = config_of(options)
    client = load_client(options.target)
    app = create_app(client, config)
    listener = listen(config.host, config.port)
    try:
        client.start()
    except Exception as error:  # noqa: BLE001 - DatabaseInUseError, a broken store: one line, no traceback
        listener.close()
        raise ServeError(f"the client {client.app_id!r} cannot start: {type(error).__name__}: {error}") from None
    try:
        _announce(client, config, listener, out)
        # configures uvicorn's loggers; a client stalled mid-request cannot hold the shutdown forever
        server_config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        logging.getLogger("uvicorn.access").addFilter(RedactToken())
        serve_until_signalled(InsistentStop(server_config), listener)
    finally:
        print("steplog: stopping the engine (executing runs finish their current invocation)", file=out, flush=True)
        client.stop()
    print("steplog: stopped", file=out, flush=True)
    return 0


# -- loading the user's client -------------------------------------------------------------------


def load_client(target: str) -> Steplog:
    """The ``Steplog`` client named by ``module:attr`` (a client, or a zero-argument factory of
    one), or the only client in ``module``. Raises ServeError saying what was found instead."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise ServeError(f"{target!r} names no module: give module:client, like app:client")
    if module_name.endswith(".py"):
        raise ServeError(f"{module_name!r} is a file name: give the module's name, like {module_name[:-3]}:client")
    module = _import(module_name)
    if not attr:
        return _only_client(module)
    value: object = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ServeError(f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    return _client_from(value, target)


def _import(module_name: str) -> ModuleType:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)  # as uvicorn does: `steplog serve app:client` finds ./app.py
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ServeError(
                f"cannot import {module_name!r}: no module named {error.name!r} (in {here} or on sys.path)"
            ) from None
        raise ServeError(f"importing {module_name!r} failed: {_one_line(error)}") from None
    except BaseException as error:  # noqa: BLE001 - the user's module may raise anything, SystemExit included
        raise ServeError(f"importing {module_name!r} failed: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, SyntaxError) and error.filename:
        where = f" ({error.filename}:{error.lineno})"
    elif frames:
        where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    return f"{type(error).__name__}: {error}{where}"


def _only_client(module: ModuleType) -> Steplog:
    found: dict[int, tuple[str, Steplog]] = {}
    for name, value in vars(module).items():
        if isinstance(value, Steplog):
            found.setdefault(id(value), (name, value))
    if not found:
        raise ServeError(f"module {module.__name__!r} holds no Steplog client: name it as module:attr")
    if len(found) > 1:
        names = ", ".join(sorted(name for name, _ in found.values()))
        raise ServeError(
            f"module {module.__name__!r} holds several Steplog clients ({names}): choose one, like {module.__name__}:NAME"
        )
    [(_, client)] = found.values()
    return client


def _client_from(value: object, target: str) -> Steplog:
    if isinstance(value, Steplog):
        return value
    if isinstance(value, type) or not callable(value):
        raise ServeError(f"{target} is a {type(value).__name__}, not a Steplog client or a function returning one")
    try:
        made = value()
    except TypeError as error:
        raise ServeError(f"{target} was called with no arguments to make the client and failed: {error}") from None
    except Exception as error:  # noqa: BLE001 - the user's factory: reported in one line
        raise ServeError(f"{target}() failed: {_one_line(error)}") from None
    if not isinstance(made, Steplog):
        raise ServeError(f"{target}() returned a {type(made).__name__}, not a Steplog client")
    return made


# -- serving ---------------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (so that port 0 gets a free port we can print). Raises ServeError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ServeError(f"cannot listen on {host}:{port}: {error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections queue from now on: the address printed next already works
    except OSError as error:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


class InsistentStop(uvicorn.Server):
    """uvicorn's server, where a second SIGTERM (not only a second SIGINT) stops at once: what
    systemd, Docker and operators send when the graceful stop takes too long."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        super().handle_exit(sig, frame)


def serve_until_signalled(server: uvicorn.Server, listener: socket.socket) -> None:
    """Run uvicorn on ``listener`` until SIGINT or SIGTERM; returns after its graceful shutdown."""
    # uvicorn raises the signal again once it has shut down; this handler makes that a no-op, so
    # that the client is stopped after the server and the exit code is 0. It also catches a signal
    # that comes before uvicorn has put in its own handlers: the server then stops once started.
    def stop_server(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {signum: signal.signal(signum, stop_server) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[listener])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def base_url(config: ServerConfig, listener: socket.socket) -> str:
    """The address to show: the bound port, and the host as a client would write it."""
    port = listener.getsockname()[1]
    host = config.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _announce(client: Steplog, config: ServerConfig, listener: socket.socket, out: TextIO) -> None:
    url = base_url(config, listener)
    functions = len(client.registry.all())
    lines = [
        f"steplog: serving app {client.app_id!r} ({functions} function{'s' if functions != 1 else ''})",
        f"listening on {config.host}:{listener.getsockname()[1]}"
        + ("" if is_loopback(config.host) else " (reachable from other machines)"),
        f"event API: POST {url}/e/<event key>",
    ]
    if config.dev:
        lines.append("dev mode: any event key is accepted")
    else:
        lines.append(f"event keys: {len(config.event_keys)} configured; other keys are refused")
    if config.api_token:
        lines.append(f"UI: {url}/ (needs the API token: open {url}/?token=<token> once, or send it as a Bearer token)")
    else:
        lines.append(f"UI: {url}/")
    lines.append("stop with Ctrl-C or SIGTERM: requests in flight are answered, then the engine stops")
    print("\n".join(lines), file=out, flush=True)
