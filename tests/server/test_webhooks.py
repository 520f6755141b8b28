"""``POST /webhooks/{name}`` over a real uvicorn server on loopback, with the client on a SQLite file
and a manual clock (a request goes stale by advancing it, never by waiting)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from steplog.engine.webhooks import WebhookDef, sign, signature_headers

from steplog import Context, DefinitionError, Event, ManualClock, Steplog, TriggerEvent
from steplog.server import ServerConfig

ServeApp = Callable[..., str]
RESULT_TIMEOUT = 30.0
BODY_LIMIT = 1024
SECRET = "whsec_" + base64.b64encode(b"the current key, 32 bytes long!!").decode()
OLD_SECRET = "plain previous secret"
PUSH = {"ref": "refs/heads/main", "commits": 3}


def make_client(db: Path, clock: ManualClock) -> Steplog:
    client = Steplog(app_id="webhook-test", db=db, clock=clock)

    @client.create_function(fn_id="on-push", trigger=TriggerEvent(event="github/push"))
    def on_push(ctx: Context) -> str:
        return str(ctx.step.run("count", lambda: f"{ctx.event.data['body']['commits']} commits"))

    @client.webhook("github", secret=SECRET, previous_secret=OLD_SECRET)
    def github(body: Any, headers: Any, query: Any) -> dict[str, Any]:
        return {"name": f"github/{headers['x-github-event']}", "data": {"body": body, "query": dict(query)}}

    @client.webhook("open")
    def open_hook(body: Any, headers: Any, query: Any) -> list[Event]:
        return [Event(name="open/ping", data={"body": body, "agent": headers.get("user-agent", ""), "q": dict(query)})]

    @client.webhook("svix", secret=SECRET)
    async def svix(body: Any, headers: Any, query: Any) -> dict[str, Any]:
        return {"name": "svix/message", "data": body}

    @client.webhook("broken", secret=SECRET)
    def broken(body: Any, headers: Any, query: Any) -> None:
        raise ValueError(f"no ref in {sorted(body)}")

    @client.webhook("not-events")
    def not_events(body: Any, headers: Any, query: Any) -> str:
        return "github/push"

    @client.webhook("bad-event")
    def bad_event(body: Any, headers: Any, query: Any) -> list[dict[str, Any]]:
        return [{"name": "ok/first"}, {"name": "ok/second", "data": ["not", "an", "object"]}]

    @client.webhook("quiet", secret=SECRET)
    def quiet(body: Any, headers: Any, query: Any) -> None:
        return None

    return client


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def client(db: Path, clock: ManualClock) -> Iterator[Steplog]:
    with make_client(db, clock) as client:
        yield client


@pytest.fixture
def base_url(client: Steplog, serve_app: ServeApp) -> str:
    return serve_app(client, ServerConfig(dev=True, max_body_bytes=BODY_LIMIT))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=RESULT_TIMEOUT) as http:
        yield http


def signed_post(
    http: httpx.Client, url: str, client: Steplog, *, msg_id: str = "msg_1", secret: str = SECRET,
    body: bytes | None = None, headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = json.dumps(PUSH).encode() if body is None else body
    signing = signature_headers(secret, msg_id, client.clock.now(), content)
    all_headers = {"content-type": "application/json", "x-github-event": "push", **signing, **(headers or {})}
    return http.post(url, content=content, headers=all_headers)


def event_names(client: Steplog) -> list[str]:
    return sorted(event["name"] for event in client.list_events())


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["status"] == status and answer["ids"] == []
    assert "Traceback" not in answer["error"]
    return str(answer["error"])


# -- accepted ----------------------------------------------------------------------------------


def test_a_signed_request_sends_its_events_and_starts_a_function(
    http: httpx.Client, base_url: str, client: Steplog
) -> None:
    response = signed_post(http, f"{base_url}/webhooks/github?delivery=42", client)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == 200 and len(answer["ids"]) == 1
    [event] = client.list_events(name="github/push")
    assert event["internal_id"] == answer["ids"][0]
    assert event["id"] == "webhook-github-msg_1-0"  # a replay after a restart is a duplicate
    assert event["data"] == {"body": PUSH, "query": {"delivery": "42"}}
    [run] = client.runs_for_event(answer["ids"][0])
    assert run.result(timeout=RESULT_TIMEOUT) == "3 commits"


def test_a_request_signed_with_the_previous_secret_is_accepted(
    http: httpx.Client, base_url: str, client: Steplog
) -> None:
    response = signed_post(http, f"{base_url}/webhooks/github", client, secret=OLD_SECRET)
    assert response.status_code == 200, response.text


def test_svix_headers_and_an_async_transform(http: httpx.Client, base_url: str, client: Steplog) -> None:
    body = b'{"type": "invoice.paid"}'
    now = client.clock.now()
    headers = {"svix-id": "msg_s", "svix-timestamp": str(int(now.timestamp())), "svix-signature": sign(SECRET, "msg_s", now, body)}
    response = http.post(f"{base_url}/webhooks/svix", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert [event["data"] for event in client.list_events(name="svix/message")] == [{"type": "invoice.paid"}]


def test_an_unsigned_webhook_accepts_any_request(http: httpx.Client, base_url: str, client: Steplog) -> None:
    response = http.post(
        f"{base_url}/webhooks/open?a=1&a=2&b=x", content=b"hello, plain text", headers={"user-agent": "curl/8"}
    )
    assert response.status_code == 200, response.text
    [event] = client.list_events(name="open/ping")
    assert event["data"] == {"body": "hello, plain text", "agent": "curl/8", "q": {"a": "2", "b": "x"}}
    assert event["id"] == event["internal_id"]  # no message id: no dedup id


def test_a_transform_may_return_no_events(http: httpx.Client, base_url: str, client: Steplog) -> None:
    response = signed_post(http, f"{base_url}/webhooks/quiet", client)
    assert response.status_code == 200 and response.json() == {"ids": [], "status": 200}
    assert event_names(client) == []


def test_concurrent_deliveries_are_all_accepted(http: httpx.Client, base_url: str, client: Steplog) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        with httpx.Client(timeout=RESULT_TIMEOUT) as own:
            status = signed_post(own, f"{base_url}/webhooks/github", client, msg_id=f"msg_{n}").status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RESULT_TIMEOUT)
    assert statuses == [200] * 8
    assert len(client.list_events(name="github/push")) == 8


# -- refused: 401 ------------------------------------------------------------------------------


def test_a_wrong_key_or_a_tampered_body_is_refused(http: httpx.Client, base_url: str, client: Steplog) -> None:
    url = f"{base_url}/webhooks/github"
    assert refused(signed_post(http, url, client, secret="whsec_" + base64.b64encode(b"x" * 24).decode()), 401) == (
        "signature does not match"
    )
    content = json.dumps(PUSH).encode()
    headers = {"content-type": "application/json", "x-github-event": "push",
               **signature_headers(SECRET, "msg_t", client.clock.now(), content)}
    tampered = content.replace(b"3", b"4")
    assert refused(http.post(url, content=tampered, headers=headers), 401) == "signature does not match"
    assert event_names(client) == []


def test_an_unsigned_request_to_a_signed_webhook_is_refused(http: httpx.Client, base_url: str, client: Steplog) -> None:
    message = refused(http.post(f"{base_url}/webhooks/github", json=PUSH, headers={"x-github-event": "push"}), 401)
    assert message == "the request has no webhook-id header; it must be signed"
    content = json.dumps(PUSH).encode()
    headers = signature_headers(SECRET, "msg_1", client.clock.now(), content)
    del headers["webhook-signature"]
    message = refused(http.post(f"{base_url}/webhooks/github", content=content, headers=headers), 401)
    assert message == "the request has no webhook-signature header; it must be signed"


def test_a_stale_request_is_refused(http: httpx.Client, base_url: str, client: Steplog, clock: ManualClock) -> None:
    content = json.dumps(PUSH).encode()
    headers = {"x-github-event": "push", **signature_headers(SECRET, "msg_old", clock.now(), content)}
    clock.advance(timedelta(seconds=301))
    message = refused(http.post(f"{base_url}/webhooks/github", content=content, headers=headers), 401)
    assert message == "stale request: webhook-timestamp is 301 s in the past; the limit is 300 s"
    assert event_names(client) == []


def test_a_replayed_request_is_refused_and_a_replay_after_a_restart_starts_nothing(
    http: httpx.Client, base_url: str, client: Steplog, serve_app: ServeApp
) -> None:
    content = json.dumps(PUSH).encode()
    headers = {"content-type": "application/json", "x-github-event": "push",
               **signature_headers(SECRET, "msg_r", client.clock.now(), content)}
    first = http.post(f"{base_url}/webhooks/github", content=content, headers=headers)
    assert first.status_code == 200, first.text
    message = refused(http.post(f"{base_url}/webhooks/github", content=content, headers=headers), 401)
    assert message == "replayed request: webhook-id 'msg_r' was already received"
    # a new server process knows nothing of msg_r; the event's id makes the replay a duplicate
    restarted = serve_app(client, ServerConfig(dev=True))
    again = http.post(f"{restarted}/webhooks/github", content=content, headers=headers)
    assert again.status_code == 200, again.text
    assert [event["duplicate"] for event in client.list_events(name="github/push")] == [True, False]
    client.run_until_idle(RESULT_TIMEOUT)
    assert len(client.list_runs(function_id="on-push")) == 1


def test_a_delivery_that_failed_may_be_retried_with_the_same_id(
    http: httpx.Client, base_url: str, client: Steplog
) -> None:
    url = f"{base_url}/webhooks/github"
    failed = signed_post(http, url, client, msg_id="msg_retry", body=b"{not json")
    assert refused(failed, 400).startswith("webhook 'github': the body is not valid JSON")
    assert signed_post(http, url, client, msg_id="msg_retry").status_code == 200


# -- refused: other statuses -------------------------------------------------------------------


def test_an_unknown_webhook_is_404(http: httpx.Client, base_url: str) -> None:
    assert refused(http.post(f"{base_url}/webhooks/nope", json={}), 404) == "no webhook is named 'nope'"


def test_only_post_is_allowed(http: httpx.Client, base_url: str) -> None:
    response = http.get(f"{base_url}/webhooks/open")
    assert refused(response, 405).startswith("GET is not allowed")
    assert response.headers["allow"] == "POST"


def test_a_transform_that_raises_is_400_and_accepts_nothing(
    http: httpx.Client, base_url: str, client: Steplog
) -> None:
    message = refused(signed_post(http, f"{base_url}/webhooks/broken", client), 400)
    assert message == "webhook 'broken' transform failed: ValueError: no ref in ['commits', 'ref']"
    assert event_names(client) == []


def test_a_transform_that_returns_no_events_is_400(http: httpx.Client, base_url: str) -> None:
    message = refused(http.post(f"{base_url}/webhooks/not-events", json={}), 400)
    assert message.startswith("webhook 'not-events' transform returned a str ('github/push'); return a steplog.Event")


def test_events_the_engine_refuses_are_400_and_none_is_accepted(
    http: httpx.Client, base_url: str, client: Steplog
) -> None:
    message = refused(http.post(f"{base_url}/webhooks/bad-event", json={}), 400)
    assert message == "event 1 ('ok/second'): data must be a JSON object, got list"
    assert event_names(client) == []


def test_a_body_over_the_limit_is_413(http: httpx.Client, base_url: str, client: Steplog) -> None:
    big = b"x" * (BODY_LIMIT + 1)
    message = refused(http.post(f"{base_url}/webhooks/open", content=big), 413)
    assert message == f"the body is {BODY_LIMIT + 1} bytes; the limit is {BODY_LIMIT} bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while reading
        yield b"x" * 600
        yield b"x" * 600

    message = refused(http.post(f"{base_url}/webhooks/open", content=chunks()), 413)
    assert message == f"the body is over the limit of {BODY_LIMIT} bytes"
    assert event_names(client) == []


# -- definitions on the client -----------------------------------------------------------------


def test_the_decorator_returns_the_definition_and_refuses_duplicates(db: Path, clock: ManualClock) -> None:
    client = Steplog(db=db, clock=clock)

    @client.webhook("stripe", secret="s")
    def stripe(body: Any, headers: Any, query: Any) -> None:
        return None

    assert isinstance(stripe, WebhookDef) and stripe.name == "stripe" and stripe.signed
    assert client.webhooks.get("stripe") is stripe
    with pytest.raises(DefinitionError, match="webhook 'stripe' is already defined"):
        client.webhook("stripe")(lambda body, headers, query: None)
    with pytest.raises(DefinitionError, match="webhook 'x': secret is empty"):
        client.webhook("x", secret="")(lambda body, headers, query: None)


def test_a_webhook_defined_after_start_is_refused(client: Steplog) -> None:
    with pytest.raises(DefinitionError, match=r"webhook 'late' is defined after start\(\)"):
        client.webhook("late")(lambda body, headers, query: None)
    assert client.webhooks.get("late") is None
