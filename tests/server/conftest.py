"""Fixtures for the server's tests: a real uvicorn server in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn
from starlette.types import ASGIApp
from steplog.actors import Steplog

from steplog.server import ServerConfig, create_app

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

ServeApp = Callable[..., str]
"""``serve_app(client, config=None) -> base_url``; config defaults to ``ServerConfig(dev=True)``."""
ServeAsgi = Callable[[ASGIApp], str]


class _Running:
    """One uvicorn server on its own thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.listener]}, name=f"uvicorn-{self.port}", daemon=True
        )

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server stopped during its start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test server did not start within {START_TIMEOUT} s")
            time.sleep(0.005)  # polling the server's started flag, not waiting for a guess
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)
        assert not self.thread.is_alive(), "the test server did not stop"


@pytest.fixture
def serve_asgi() -> Iterator[ServeAsgi]:
    """A factory: serve any ASGI app with uvicorn on a free loopback port; returns its base URL."""
    running: list[_Running] = []

    def serve(app: ASGIApp) -> str:
        server = _Running(app)
        running.append(server)
        return server.start()

    yield serve
    for server in reversed(running):
        server.stop()


@pytest.fixture
def serve_app(serve_asgi: ServeAsgi) -> ServeApp:
    """A factory: ``serve_app(client, config=None)`` serves ``create_app(client, config)`` and returns
    its base URL (like ``http://127.0.0.1:54321``). The test starts and stops the client; the server
    stops at teardown."""

    def serve(client: Steplog, config: ServerConfig | None = None) -> str:
        return serve_asgi(create_app(client, config or ServerConfig(dev=True)))

    return serve
