"""Review of the HTTP server: each test shows one problem an independent review found (now fixed).

Every test runs against a real uvicorn server (the ``serve_app`` fixture) or a ``steplog serve``
subprocess, as a client or an attacker would reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import steplog
from steplog.server import ServerConfig

ServeApp = Callable[..., str]
TOKEN = "review-token-7d1c"
EVENT = {"name": "app/greet", "data": {}}
DEADLINE = 30.0


@pytest.fixture
def client(tmp_path: Path) -> Iterator[steplog.Steplog]:
    client = steplog.Steplog(app_id="review", db=str(tmp_path / "review.db"))

    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/greet"))
    def greet(ctx: steplog.Context) -> str:
        return "hi"

    with client:
        yield client


# -- event API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"name": "app/greet", "data": {"s": "\\ud800"}}',
    b'{"name": "app/\\udfff", "data": {}}',
    b'{"name": "app/greet", "data": {"\\ud800": 1}}',
], ids=["in-data", "in-name", "in-key"])
def test_a_lone_surrogate_is_a_400_naming_the_event(client: steplog.Steplog, serve_app: ServeApp, body: bytes) -> None:
    base = serve_app(client)
    answer = httpx.post(f"{base}/e/key", content=body)
    assert answer.status_code == 400, answer.text
    assert client.list_events() == []


def test_a_lone_surrogate_through_a_webhook_is_a_400(tmp_path: Path, serve_app: ServeApp) -> None:
    client = steplog.Steplog(app_id="review-hook", db=str(tmp_path / "hook.db"))

    @client.webhook("echo")
    def echo(body: Any, headers: Any, query: Any) -> dict[str, Any]:
        return {"name": "hook/echo", "data": {"body": body}}

    with client:
        base = serve_app(client)
        answer = httpx.post(f"{base}/webhooks/echo", content=b'{"s": "\\ud800"}',
                            headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text


# -- the UI's API --------------------------------------------------------------------------------


def test_ui_api_refuses_deeply_nested_json_with_400(client: steplog.Steplog, serve_app: ServeApp) -> None:
    base = serve_app(client)
    body = b"[" * 100_000 + b"]" * 100_000
    answer = httpx.post(f"{base}/api/events", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text


# -- loopback guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1.rebind.example", "127.attacker.example"])
def test_a_rebinding_domain_that_starts_with_127_is_refused(
    client: steplog.Steplog, serve_app: ServeApp, name: str
) -> None:
    base = serve_app(client)
    port = base.rsplit(":", 1)[1]
    page = f"http://{name}:{port}"
    # what the browser sends once the attacker's name resolves to 127.0.0.1: its own Host and Origin
    read = httpx.get(f"{base}/api/events", headers={"host": f"{name}:{port}"})
    sent = httpx.post(f"{base}/api/events", json=EVENT, headers={"host": f"{name}:{port}", "origin": page})
    assert (read.status_code, sent.status_code) == (403, 403)
    assert client.list_events() == []


def test_a_cross_site_sandboxed_frame_cannot_send_events(client: steplog.Steplog, serve_app: ServeApp) -> None:
    base = serve_app(client)
    # what Firefox sends for <iframe sandbox="allow-forms allow-scripts"> submitting an enctype=text/plain form
    form = b'{"name":"app/greet","data":{},"pad":"="}'
    headers = {
        "origin": "null", "content-type": "text/plain", "sec-fetch-site": "cross-site",
        "sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe",
    }
    answer = httpx.post(f"{base}/e/key", content=form, headers=headers)
    assert answer.status_code == 403, answer.text
    assert client.list_events() == []


# -- API token -----------------------------------------------------------------------------------


def test_the_token_page_never_sends_the_token_to_another_host(client: steplog.Steplog, serve_app: ServeApp) -> None:
    base = serve_app(client, ServerConfig(dev=True, api_token=TOKEN))
    for path in ("//evil.example/", "/%2F%2Fevil.example/"):
        page = httpx.get(f"{base}{path}")
        assert page.status_code == 401
        action = page.text.split('action="', 1)[1].split('"', 1)[0]
        assert action == "", action  # the form submits to the page's own address


def test_the_token_login_redirects_only_to_this_server(client: steplog.Steplog, serve_app: ServeApp) -> None:
    base = serve_app(client, ServerConfig(dev=True, api_token=TOKEN))
    for path in ("//evil.example/", "/%2F%2Fevil.example/"):
        answer = httpx.get(f"{base}{path}?token={TOKEN}")
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert location.startswith("/") and not location.startswith(("//", "/\\")), location  # a path here


# -- webhooks ------------------------------------------------------------------------------------


def test_blocking_transforms_do_not_stall_the_event_api(tmp_path: Path, serve_app: ServeApp) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)
    client = steplog.Steplog(app_id="review-slow", db=str(tmp_path / "slow.db"))

    @client.webhook("slow")
    def slow(body: Any, headers: Any, query: Any) -> None:
        entered.release()
        release.wait(DEADLINE)  # a transform calling a slow upstream

    with client:
        base = serve_app(client)
        callers = [threading.Thread(target=lambda: httpx.post(f"{base}/webhooks/slow", content=b"{}", timeout=DEADLINE))
                   for _ in range(40)]
        for caller in callers:
            caller.start()
        try:
            for _ in callers:
                assert entered.acquire(timeout=DEADLINE)
            answer = httpx.post(f"{base}/e/key", json={"name": "app/other", "data": {}}, timeout=10.0)
            assert answer.status_code == 200
        finally:
            release.set()
            for caller in callers:
                caller.join(DEADLINE)


# -- steplog serve -------------------------------------------------------------------------------


APP = """
import os
import steplog

client = steplog.Steplog(app_id="served", db=os.path.join(os.path.dirname(__file__), "served.db"))
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_stops_the_server_even_with_a_stalled_upload(tmp_path: Path) -> None:
    (tmp_path / "review_app.py").write_text(textwrap.dedent(APP))
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "steplog", "serve", "review_app:client", "--dev", "--port", str(port)],
            cwd=tmp_path, stdout=out, stderr=err, env=environ,
        )
    stalled = None
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert process.poll() is None, (tmp_path / "err").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /e/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"name\"")
        time.sleep(0.5)  # the request is in flight, waiting for the rest of its body
        process.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        process.send_signal(signal.SIGTERM)  # an operator (or systemd) insisting
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            pytest.fail("steplog serve still runs 12 s after two SIGTERMs")
        assert process.returncode == 0
    finally:
        if stalled is not None:
            stalled.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE)
