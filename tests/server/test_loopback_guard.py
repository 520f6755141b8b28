"""A server on loopback answers only requests addressed to loopback and not sent by other sites' pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import steplog
from steplog.server import ServerConfig


@pytest.fixture
def client(tmp_path: Path) -> Iterator[steplog.Steplog]:
    client = steplog.Steplog(db=str(tmp_path / "guard.db"))

    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/greet"))
    def greet(ctx: steplog.Context) -> str:
        return "hi"

    with client:
        yield client


EVENT = {"name": "app/greet", "data": {}}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8288", "10.0.0.5:8288"])
def test_a_request_for_another_host_name_is_refused(client: steplog.Steplog, serve_app, host: str) -> None:  # type: ignore[no-untyped-def]
    base = serve_app(client)
    for method, path in (("GET", "/api/runs"), ("GET", "/"), ("POST", "/e/key")):
        answer = httpx.request(method, base + path, headers={"host": host}, json=EVENT)
        assert answer.status_code == 403, (method, path)
        assert "not a loopback name" in answer.json()["error"]
    assert client.list_events() == []


@pytest.mark.parametrize("origin", ["https://evil.example", "http://attacker.test:8288"])
def test_a_cross_site_page_cannot_send_events_or_act(client: steplog.Steplog, serve_app, origin: str) -> None:  # type: ignore[no-untyped-def]
    base = serve_app(client)
    sent = httpx.post(base + "/e/key", content=b'{"name": "app/greet"}', headers={"origin": origin, "content-type": "text/plain"})
    assert sent.status_code == 403
    assert origin in sent.json()["error"]
    assert httpx.post(base + "/api/events", json=EVENT, headers={"origin": origin}).status_code == 403
    assert client.list_events() == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "localhost:8288", "127.0.0.2:1"])
def test_loopback_names_and_own_pages_are_served(client: steplog.Steplog, serve_app, host: str) -> None:  # type: ignore[no-untyped-def]
    base = serve_app(client)
    assert httpx.post(base + "/e/key", json=EVENT, headers={"host": host}).status_code == 200
    own_page = httpx.post(base + "/api/events", json=EVENT, headers={"host": host, "origin": f"http://{host}"})
    assert own_page.status_code == 200
    assert len(client.list_events()) == 2


def test_a_server_bound_elsewhere_uses_its_token_instead(client: steplog.Steplog, serve_app) -> None:  # type: ignore[no-untyped-def]
    base = serve_app(client, ServerConfig(host="0.0.0.0", dev=True, api_token="s3cret"))
    answer = httpx.post(base + "/e/key", json=EVENT, headers={"host": "steplog.internal"})
    assert answer.status_code == 200
    assert httpx.get(base + "/api/runs", headers={"host": "steplog.internal"}).status_code == 401
