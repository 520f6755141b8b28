"""``POST /e/{event_key}`` over a real uvicorn server on loopback, with the client on a SQLite file."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from steplog import Context, Limits, Steplog, TriggerEvent
from steplog.server import ConfigError, ServerConfig
from steplog.server.auth import COOKIE, TokenAuth
from steplog.server.event_api import EVENT_ID_SEED_HEADER

ServeApp = Callable[..., str]
ServeAsgi = Callable[[Any], str]
RESULT_TIMEOUT = 30.0
KEY = "test-key"
SMALL_BODY_LIMIT = 2048


def make_client(db: Path, limits: Limits | None = None) -> Steplog:
    client = Steplog(app_id="server-test", db=db, limits=limits)

    @client.create_function(fn_id="greet", trigger=TriggerEvent(event="app/greet"))
    def greet(ctx: Context) -> Any:
        return ctx.step.run("greet", lambda: f"hello {ctx.event.data.get('name')}")

    return client


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def client(db: Path) -> Iterator[Steplog]:
    with make_client(db) as client:
        yield client


@pytest.fixture
def base_url(client: Steplog, serve_app: ServeApp) -> str:
    return serve_app(client, ServerConfig(event_keys=(KEY,), max_body_bytes=SMALL_BODY_LIMIT))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=RESULT_TIMEOUT) as http:
        yield http


def post(http: httpx.Client, base_url: str, body: Any, key: str = KEY, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"{base_url}/e/{key}", content=content, **kw)


def committed_event_ids(db: Path) -> list[str]:
    """The events in the database, read by a connection of our own (not the client's)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT internal_id FROM events ORDER BY position")]


def seed(millis: int = 1_767_225_600_000, entropy: bytes = b"0123456789") -> str:
    return f"{millis},{base64.b64encode(entropy).decode()}"


# -- accepting events ------------------------------------------------------------------------------


def test_one_event_is_committed_before_the_answer_and_starts_its_run(
    client: Steplog, base_url: str, http: httpx.Client, db: Path
) -> None:
    answer = post(http, base_url, {"name": "app/greet", "data": {"name": "ada"}})

    assert answer.status_code == 200, answer.text
    [event_id] = answer.json()["ids"]
    assert answer.json() == {"ids": [event_id], "status": 200}
    assert committed_event_ids(db) == [event_id]
    assert [event["internal_id"] for event in client.list_events()] == [event_id]
    [run] = client.runs_for_event(event_id)
    assert run.result(timeout=RESULT_TIMEOUT) == "hello ada"


def test_an_array_of_events_is_accepted_in_order(client: Steplog, base_url: str, http: httpx.Client) -> None:
    events = [{"name": "app/greet", "data": {"name": name}} for name in ("ada", "bob", "cy")]

    answer = post(http, base_url, events)

    assert answer.status_code == 200, answer.text
    ids = answer.json()["ids"]
    assert len(ids) == 3
    assert [event["internal_id"] for event in reversed(client.list_events())] == ids
    outputs = [run.result(timeout=RESULT_TIMEOUT) for event_id in ids for run in client.runs_for_event(event_id)]
    assert outputs == ["hello ada", "hello bob", "hello cy"]


def test_an_event_no_function_listens_for_is_recorded(client: Steplog, base_url: str, http: httpx.Client) -> None:
    answer = post(http, base_url, {"name": "app/unheard", "data": {}})

    assert answer.status_code == 200
    assert client.list_events()[0]["name"] == "app/unheard"
    assert client.list_runs() == []


def test_a_retried_request_with_the_same_seed_gets_the_same_ids_and_starts_one_run(
    client: Steplog, base_url: str, http: httpx.Client
) -> None:
    body = [{"name": "app/greet", "data": {"name": "ada"}}, {"name": "app/greet", "data": {"name": "bob"}}]
    headers = {EVENT_ID_SEED_HEADER: seed()}

    first = post(http, base_url, body, headers=headers)
    retry = post(http, base_url, body, headers=headers)

    assert first.status_code == retry.status_code == 200, (first.text, retry.text)
    assert first.json()["ids"] == retry.json()["ids"]
    client.run_until_idle(RESULT_TIMEOUT)
    assert sorted(run["output"] for run in client.list_runs()) == ["hello ada", "hello bob"]


def test_different_seeds_give_different_ids(client: Steplog, base_url: str, http: httpx.Client) -> None:
    body = {"name": "app/greet", "data": {"name": "ada"}}

    first = post(http, base_url, body, headers={EVENT_ID_SEED_HEADER: seed(entropy=b"aaaaaaaaaa")})
    second = post(http, base_url, body, headers={EVENT_ID_SEED_HEADER: seed(entropy=b"bbbbbbbbbb")})

    assert first.status_code == second.status_code == 200
    assert first.json()["ids"] != second.json()["ids"]
    client.run_until_idle(RESULT_TIMEOUT)
    assert len(client.list_runs()) == 2


@pytest.mark.parametrize("bad_seed", ["not-a-seed", "12,abc", "-5," + base64.b64encode(b"0123456789").decode(), ""])
def test_an_invalid_seed_header_is_refused_naming_the_header(
    client: Steplog, base_url: str, http: httpx.Client, bad_seed: str
) -> None:
    answer = post(http, base_url, {"name": "app/greet"}, headers={EVENT_ID_SEED_HEADER: bad_seed})

    assert answer.status_code == 400
    assert answer.json()["ids"] == []
    assert EVENT_ID_SEED_HEADER in answer.json()["error"]
    assert client.list_events() == []


def test_concurrent_posts_are_all_acknowledged_and_all_recorded(
    client: Steplog, base_url: str, db: Path
) -> None:
    threads, posts_each = 16, 8
    acknowledged: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def sender(number: int) -> None:
        with httpx.Client(timeout=RESULT_TIMEOUT) as http:
            for index in range(posts_each):
                answer = post(http, base_url, {"name": "app/greet", "data": {"name": f"{number}-{index}"}})
                with lock:
                    if answer.status_code == 200:
                        acknowledged.extend(answer.json()["ids"])
                    else:
                        failures.append(answer.text)

    workers = [threading.Thread(target=sender, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(RESULT_TIMEOUT)

    assert failures == []
    assert len(acknowledged) == threads * posts_each
    assert sorted(committed_event_ids(db)) == sorted(acknowledged)
    assert client.run_until_idle(RESULT_TIMEOUT)
    assert len(client.list_runs(status="completed", limit=None)) == threads * posts_each


# -- refusing requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"name": "app/greet",\n "data": {',
            "the body is not valid JSON: Expecting property name enclosed in double quotes at line 2 column 11",
        ),
        (b'{"name": "caf\xe9"}', "the body is not UTF-8: byte 0xe9 at offset 13 is invalid"),
        (b"", "the body is empty"),
        (b"  \n", "the body is empty"),
        (b"[]", "the body is an empty array: send at least one event"),
        (b"42", "the body must be an event object or an array of events, not a number"),
        (b'"app/greet"', "not a string"),
        (b'{"name": "app/greet", "data": {"n": NaN}}', "NaN is not a JSON number"),
        (b'{"data": {}}', "event has no name"),
        (b'{"name": 7}', "event: name must be a string"),
        (b'{"name": "app/greet", "data": [1]}', "event ('app/greet'): data must be a JSON object, got list"),
        (b'{"name": "app/greet", "ts": "yesterday"}', "ts must be an integer of milliseconds"),
        (b'{"name": "inngest/function.failed"}', "reserved for the engine"),
        (b'[{"name": "app/greet"}, {"name": "app/greet"}, {"name": "app/greet"}, {"name": "x", "data": "s"}]',
         "event 3 ('x'): data must be a JSON object"),
        (b'[{"name": "app/greet"}, 5]', "event 1 is a int"),
        (b"[" * 1500, "the body nests arrays or objects too deeply"),
    ],
)
def test_a_bad_body_is_refused_with_400_naming_the_problem_and_nothing_is_accepted(
    client: Steplog, base_url: str, http: httpx.Client, body: bytes, message: str
) -> None:
    answer = post(http, base_url, body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["ids"] == []
    assert answer.json()["status"] == 400
    assert message in answer.json()["error"]
    assert client.list_events() == []
    assert client.list_runs() == []


def test_an_unknown_event_key_is_refused_with_401(client: Steplog, base_url: str, http: httpx.Client) -> None:
    answer = post(http, base_url, {"name": "app/greet"}, key="someone-elses")

    assert answer.status_code == 401
    assert answer.json() == {
        "ids": [], "status": 401,
        "error": "event key not accepted: it is not one of the keys the server was started with",
    }
    assert client.list_events() == []


@pytest.mark.parametrize("path", ["/e", "/e/"])
def test_a_missing_event_key_is_refused_with_401(base_url: str, http: httpx.Client, path: str) -> None:
    answer = http.post(f"{base_url}{path}", json={"name": "app/greet"})

    assert answer.status_code == 401
    assert "no event key" in answer.json()["error"]


def test_get_on_the_event_api_is_405(base_url: str, http: httpx.Client) -> None:
    answer = http.get(f"{base_url}/e/{KEY}")

    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["error"].startswith("GET is not allowed")


def test_a_body_over_the_limit_is_refused_with_413(client: Steplog, base_url: str, http: httpx.Client) -> None:
    body = json.dumps({"name": "app/greet", "data": {"text": "x" * SMALL_BODY_LIMIT}}).encode()

    answer = post(http, base_url, body)

    assert answer.status_code == 413
    assert answer.json()["error"] == f"the body is {len(body)} bytes; the limit is {SMALL_BODY_LIMIT} bytes"
    assert client.list_events() == []


def raw_exchange(base_url: str, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes; the status and the body of its answer."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=RESULT_TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_sent(base_url: str) -> None:
    # Only the head is sent: an answer proves the server did not wait for the 10 MB it announced.
    head = f"POST /e/{KEY} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n"

    status, body = raw_exchange(base_url, head.encode())

    assert status == 413
    assert json.loads(body)["error"] == f"the body is 10000000 bytes; the limit is {SMALL_BODY_LIMIT} bytes"


def test_a_chunked_body_is_refused_with_413_as_soon_as_it_passes_the_limit(client: Steplog, base_url: str) -> None:
    # The body never ends (no last chunk): the answer comes from reading past the limit.
    head = f"POST /e/{KEY} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    chunk = b"x" * 1000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))

    status, body = raw_exchange(base_url, head + chunks)

    assert status == 413
    assert json.loads(body)["error"] == f"the body is over the limit of {SMALL_BODY_LIMIT} bytes"
    assert client.list_events() == []


def test_a_chunked_body_under_the_limit_is_accepted(client: Steplog, base_url: str, http: httpx.Client) -> None:
    body = json.dumps({"name": "app/greet", "data": {"name": "ada"}}).encode()

    def pieces() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    answer = http.post(f"{base_url}/e/{KEY}", content=pieces())

    assert answer.status_code == 200, answer.text
    assert [event["internal_id"] for event in client.list_events()] == answer.json()["ids"]


def test_an_event_over_the_engine_size_limit_is_413(db: Path, serve_app: ServeApp, http: httpx.Client) -> None:
    with make_client(db, Limits(event_bytes=1024)) as client:
        base_url = serve_app(client, ServerConfig(dev=True))
        events = [{"name": "app/greet"}, {"name": "app/big", "data": {"text": "x" * 2000}}]

        answer = post(http, base_url, events)

        assert answer.status_code == 413
        assert answer.json()["error"].startswith("event 1 ('app/big') is ")
        assert answer.json()["error"].endswith("bytes; the limit is 1024 bytes")
        assert client.list_events() == []


def test_more_events_than_a_send_may_hold_is_413(db: Path, serve_app: ServeApp, http: httpx.Client) -> None:
    with make_client(db, Limits(events_per_send=3)) as client:
        base_url = serve_app(client, ServerConfig(dev=True))

        answer = post(http, base_url, [{"name": "app/greet"}] * 4)

        assert answer.status_code == 413
        assert answer.json()["error"] == "the body holds 4 events; the limit is 3"
        assert client.list_events() == []


def test_a_stopped_engine_answers_503(client: Steplog, base_url: str, http: httpx.Client) -> None:
    client.stop()

    answer = post(http, base_url, {"name": "app/greet"})

    assert answer.status_code == 503
    assert "not started" in answer.json()["error"]


# -- keys, health, the API token -------------------------------------------------------------------


def test_dev_mode_accepts_any_key(client: Steplog, serve_app: ServeApp, http: httpx.Client) -> None:
    base_url = serve_app(client, ServerConfig(dev=True))

    answers = [post(http, base_url, {"name": "app/greet"}, key=key) for key in ("NO_EVENT_KEY_SET", "anything")]

    assert [answer.status_code for answer in answers] == [200, 200]


def test_configured_keys_accept_each_of_them_and_refuse_others(
    client: Steplog, serve_app: ServeApp, http: httpx.Client
) -> None:
    base_url = serve_app(client, ServerConfig(event_keys=("first", "second")))

    statuses = [post(http, base_url, {"name": "app/greet"}, key=key).status_code for key in ("first", "second", "fir")]

    assert statuses == [200, 200, 401]
    assert len(client.list_events()) == 2


def test_health_is_ok(base_url: str, http: httpx.Client) -> None:
    answer = http.get(f"{base_url}/health")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_a_non_loopback_host_needs_an_api_token() -> None:
    with pytest.raises(ConfigError, match="--api-token"):
        ServerConfig(host="0.0.0.0", dev=True).check()
    assert ServerConfig(host="0.0.0.0", dev=True, api_token="t").check().api_token == "t"


def test_without_a_token_the_ui_api_is_open_on_loopback(client: Steplog, base_url: str, http: httpx.Client) -> None:
    assert http.get(f"{base_url}/api/functions").status_code == 200


TOKEN = "s3cret-token"


@pytest.fixture
def guarded_url(client: Steplog, serve_app: ServeApp) -> str:
    return serve_app(client, ServerConfig(event_keys=(KEY,), api_token=TOKEN))


def test_with_a_token_the_ui_api_needs_it(guarded_url: str, http: httpx.Client) -> None:
    without = http.get(f"{guarded_url}/api/functions")
    wrong = http.get(f"{guarded_url}/api/functions", headers={"authorization": "Bearer nope"})
    right = http.get(f"{guarded_url}/api/functions", headers={"authorization": f"Bearer {TOKEN}"})

    assert without.status_code == wrong.status_code == 401
    assert "Authorization: Bearer" in without.json()["error"]
    assert without.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200


def test_with_a_token_the_event_api_and_health_keep_their_own_rules(
    client: Steplog, guarded_url: str, http: httpx.Client
) -> None:
    assert http.get(f"{guarded_url}/health").status_code == 200
    assert post(http, guarded_url, {"name": "app/greet"}).status_code == 200
    assert post(http, guarded_url, {"name": "app/greet"}, key=TOKEN).status_code == 401


def test_a_browser_gets_a_cookie_from_the_token_in_the_address_once(guarded_url: str) -> None:
    with httpx.Client(timeout=RESULT_TIMEOUT) as browser:
        asked = browser.get(f"{guarded_url}/runs")
        wrong = browser.get(f"{guarded_url}/runs", params={"token": "nope"})
        login = browser.get(f"{guarded_url}/runs", params={"token": TOKEN, "status": "failed"})
        page = browser.get(f"{guarded_url}/runs")
        api = browser.get(f"{guarded_url}/api/runs")

    assert asked.status_code == wrong.status_code == 401
    assert "text/html" in asked.headers["content-type"] and 'name="token"' in asked.text
    assert "not the server's API token" in wrong.text
    assert login.status_code == 303
    assert login.headers["location"] == "/runs?status=failed"  # the token leaves the address
    assert f"{COOKIE}={TOKEN}" in login.headers["set-cookie"]
    assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=strict" in login.headers["set-cookie"]
    assert page.status_code == 200
    assert api.status_code == 200


def test_the_token_middleware_guards_any_app(serve_asgi: ServeAsgi, http: httpx.Client) -> None:
    async def hello(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[Route("/api/x", hello), Route("/health", hello), Route("/webhooks/x", hello), Route("/page", hello)],
        middleware=[Middleware(TokenAuth, token=TOKEN)],
    )
    base_url = serve_asgi(app)

    def status(path: str, **headers: str) -> int:
        return http.get(f"{base_url}{path}", headers=headers).status_code

    assert status("/api/x") == 401
    assert status("/api/x", authorization=f"bearer {TOKEN}") == 200
    assert status("/api/x", cookie=f"{COOKIE}={TOKEN}") == 200
    assert status("/api/x", cookie=f"{COOKIE}=wrong") == 401
    assert status("/page") == 401
    assert status("/health") == status("/webhooks/x") == 200
    assert status("/healthz") == 401  # only /health itself and what is under it are open
