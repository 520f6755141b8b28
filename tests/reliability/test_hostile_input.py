"""Hostile input through every way an event gets in, and hostile step outputs and run lengths.

Entry points: ``client.send`` (the threaded engine on SQLite), the synchronous ``TestEngine``, the
HTTP event API, a webhook and the UI's ``POST /api/events`` (a real uvicorn on loopback). Inputs:
events of exactly limit-1, limit and limit+1 bytes (compact JSON of the filled-in event, as
``engine/events.py`` measures it), huge bodies, deep nesting, bodies that are not UTF-8 or not
JSON, NaN and infinities, lone surrogates, non-string keys, huge numbers, long names, wrong types;
step and function outputs at and over their limit or not JSON at all; runs at the step limit.

Pass: each gets a clear error naming the problem (the message is asserted), in bounded time, and
afterwards the engine still serves: a normal event starts a run that completes, and everything
accepted before is still there. No payload is ever unpickled or executed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp
from steplog.engine import RunProjector
from steplog.engine.jsonvalues import MAX_DEPTH, encode, size_of
from steplog.eventstore import Append, NewEntry, SqliteEventStore, StreamWrite

import steplog
from steplog import Context, EventError, Limits, TriggerEvent
from steplog.server import ServerConfig, create_app
from steplog.testing import TestEngine

T = TypeVar("T")
DEADLINE = 30.0
"""Generous: a case that takes longer hangs; timing itself belongs in benchmarks/."""
EVENT_LIMIT = Limits().event_bytes
FIXED_TS = 1_767_268_800_000  # 2026-01-01T12:00:00Z: a given ts keeps an event's size independent of the clock
def _load_sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"steplog_reliability_{Path(name).stem}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOSTILE = _load_sibling("hostile_cases.py")
within = HOSTILE.within
TRIED = HOSTILE.InputsTried("events-and-steps")
tried = TRIED.add
_report = HOSTILE.reporting(TRIED)








# -- the engine under test, and its HTTP face --------------------------------------------------------


def _echo(ctx: Context) -> list[str]:
    return list(ctx.step.run("keys", lambda: sorted(ctx.event.data)[:3]))


def _raw_webhook(body: Any, headers: Any, query: Any) -> Any:
    if isinstance(body, (dict, list)):
        return body  # the body is the event (or the events) itself
    raise ValueError(f"the body is not an event: {type(body).__name__}")


def make_client(db: str | Path) -> steplog.Steplog:
    client = steplog.Steplog(app_id="hostile", db=db)
    client.create_function(fn_id="echo", trigger=TriggerEvent(event="app/ok"))(_echo)
    client.webhook("raw")(_raw_webhook)
    return client


@contextmanager
def served(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port that already listens, so requests queue until
    the server takes them (no start-up wait is needed)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="hostile-uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        listener.close()
        assert not thread.is_alive(), "the server did not stop"


@attrs.frozen
class Outcome:
    accepted: bool
    message: str = ""
    status: int = 200
    ids: tuple[str, ...] = ()


class Engines:
    """One client (threaded, on SQLite) served over HTTP, and one TestEngine with the same functions.
    (pykka's actors are stopped after every test, so each test has its own.)"""

    def __init__(self, client: steplog.Steplog, base_url: str, test_engine: TestEngine) -> None:
        self.client = client
        self.base_url = base_url
        self.test_engine = test_engine
        self.http = httpx.Client(base_url=base_url, timeout=DEADLINE)
        self.accepted: list[str] = []
        """Internal ids the client accepted, to check they all stay in the log."""

    def send(self, payload: Any) -> Outcome:
        try:
            ids = within(DEADLINE, lambda: self.client.send(payload))
        except EventError as error:
            return Outcome(False, str(error), 400)
        self.accepted.extend(ids)
        return Outcome(True, ids=tuple(ids))

    def send_to_test_engine(self, payload: Any) -> Outcome:
        try:
            ids = within(DEADLINE, lambda: self.test_engine.send(payload))
        except EventError as error:
            return Outcome(False, str(error), 400)
        return Outcome(True, ids=tuple(ids))

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> Outcome:
        answer = within(DEADLINE, lambda: self.http.post(path, content=body, headers={"content-type": content_type}))
        document = answer.json()
        assert isinstance(document, dict), answer.text
        if answer.status_code != 200:
            return Outcome(False, str(document.get("error")), answer.status_code)
        ids = tuple(document["ids"])
        self.accepted.extend(ids)
        return Outcome(True, status=200, ids=ids)

    def assert_serving(self) -> None:
        """A normal event still starts a run that completes, on both engines, and nothing accepted is lost."""
        [event_id] = within(DEADLINE, lambda: self.client.send({"name": "app/ok", "data": {"k": 1}}))
        [run] = self.client.runs_for_event(event_id)
        assert run.result(timeout=DEADLINE) == ["k"]
        self.test_engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])
        known = {row["internal_id"] for row in self.client.store.query("events")}
        assert set(self.accepted) <= known, set(self.accepted) - known


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    client = make_client(tmp_path / "hostile.db")
    app = create_app(client, ServerConfig(dev=True))
    with client, TestEngine(make_client(":memory:")) as test_engine, served(app) as url:
        engines = Engines(client, url, test_engine)
        yield engines
        engines.http.close()


PYTHON_ENTRY_POINTS: dict[str, Callable[[Engines, Any], Outcome]] = {  # take the payload
    "client.send": Engines.send,
    "TestEngine.send": Engines.send_to_test_engine,
}
HTTP_ENTRY_POINTS: dict[str, Callable[[Engines, bytes], Outcome]] = {  # take the body
    "POST /e/{key}": lambda engines, body: engines.post("/e/key", body),
    "POST /webhooks/{name}": lambda engines, body: engines.post("/webhooks/raw", body),
    "POST /api/events": lambda engines, body: engines.post("/api/events", body),
}


# -- the hostile events -------------------------------------------------------------------------------

NOT_FOR_PYTHON = object()
"""A case that exists only as bytes (a body that is not UTF-8, or not JSON)."""


@attrs.frozen
class Case:
    label: str
    payload: Any
    """What the Python entry points send; NOT_FOR_PYTHON for byte-level cases."""
    accepted: bool
    says: tuple[str, ...] = ()
    """A refusal's message contains one of these (they differ between the parser and the engine)."""
    body: bytes | None = None
    """What the HTTP entry points post; by default the payload as JSON (with NaN, and surrogates escaped)."""
    event_api_status: int = 400
    skip: frozenset[str] = frozenset()
    """Entry points the case does not apply to."""

    def http_body(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps(self.payload, ensure_ascii=True, allow_nan=True).encode("utf-8")


def sized_event(total: int, tag: str, filler: str = "x") -> dict[str, Any]:
    """An event whose compact JSON, as the engine measures it, is exactly ``total`` bytes."""
    event: dict[str, Any] = {"name": "app/ok", "data": {"pad": ""}, "id": f"size-{tag}", "ts": FIXED_TS}
    missing = total - size_of(encode(event, what="event"))
    width = len(filler.encode("utf-8"))
    event["data"]["pad"] = filler * (missing // width) + "x" * (missing % width)
    assert size_of(encode(event, what="event")) == total
    return event


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_body(depth: int) -> bytes:
    return b'{"name":"app/ok","data":' + b'{"a":' * depth + b"{}" + b"}" * depth + b"}"


TOO_LARGE = (f"the limit is {EVENT_LIMIT} bytes",)
TOO_DEEP = ("too deeply",)
NOT_UTF8 = ("not UTF-8", "not JSON", "utf-8", "invalid start byte", "invalid continuation byte")
NOT_JSON = ("not valid JSON", "not JSON", "not an event", "send an event", "must be an event object", "empty")
NOT_FINITE = ("NaN is not a JSON number", "Infinity is not a JSON number", "Out of range float values")
SURROGATE_SAYS = ("lone surrogate",)
BIG_INT = ("Exceeds the limit (4300 digits)",)

CASES: list[Case] = [
    # sizes: exactly at the limit, one byte either side, counted in UTF-8 bytes
    Case("size limit-1 (ascii)", sized_event(EVENT_LIMIT - 1, "a-1"), True),
    Case("size limit (ascii)", sized_event(EVENT_LIMIT, "a0"), True),
    Case("size limit+1 (ascii)", sized_event(EVENT_LIMIT + 1, "a+1"), False, TOO_LARGE, event_api_status=413),
    Case("size limit-1 (3-byte chars)", sized_event(EVENT_LIMIT - 1, "e-1", "€"), True),
    Case("size limit (3-byte chars)", sized_event(EVENT_LIMIT, "e0", "€"), True),
    Case("size limit+1 (3-byte chars)", sized_event(EVENT_LIMIT + 1, "e+1", "€"), False, TOO_LARGE,
         event_api_status=413),
    Case("size limit+1 (4-byte chars)", sized_event(EVENT_LIMIT + 1, "4+1", "😀"), False, TOO_LARGE,
         event_api_status=413),
    Case("2 MB of data", {"name": "app/ok", "data": {"s": "x" * 2_000_000}}, False, TOO_LARGE, event_api_status=413),
    Case("5,000 events", [{"name": "app/none"}] * 5000, True),
    Case("5,001 events", [{"name": "app/none"}] * 5001, False, ("the limit is 5000",), event_api_status=413),
    # nesting
    Case("nested 10", {"name": "app/ok", "data": nested(10)}, True),
    Case("nested 1,000", {"name": "app/ok", "data": nested(1000)}, False, TOO_DEEP, body=nested_body(1000)),
    Case("nested 100,000", {"name": "app/ok", "data": nested(100_000)}, False, TOO_DEEP, body=nested_body(100_000)),
    Case("arrays nested 100,000", NOT_FOR_PYTHON, False, TOO_DEEP, body=b"[" * 100_000 + b"]" * 100_000),
    # bytes that are not UTF-8
    Case("latin-1 name", NOT_FOR_PYTHON, False, NOT_UTF8, body='{"name": "caf\xe9", "data": {}}'.encode("latin-1")),
    Case("UTF-8 of a surrogate", NOT_FOR_PYTHON, False, NOT_UTF8, body=b'{"name": "app/\xed\xa0\x80", "data": {}}'),
    Case("overlong UTF-8", NOT_FOR_PYTHON, False, NOT_UTF8, body=b'{"name": "app/\xc0\xaf", "data": {}}'),
    Case("truncated UTF-8", NOT_FOR_PYTHON, False, NOT_UTF8, body=b'{"name": "app/\xe2\x82", "data": {}}'),
    Case("UTF-16 with BOM", NOT_FOR_PYTHON, False, NOT_UTF8,
         body='{"name": "app/ok", "data": {}}'.encode("utf-16"), skip=frozenset({"POST /api/events"})),
    # not JSON, or not an event
    Case("truncated JSON", NOT_FOR_PYTHON, False, NOT_JSON, body=b'{"name": "app/ok", "data": {}'),
    Case("single quotes", NOT_FOR_PYTHON, False, NOT_JSON, body=b"{'name': 'app/ok'}"),
    Case("trailing garbage", NOT_FOR_PYTHON, False, NOT_JSON, body=b'{"name": "app/ok"} {"name": "app/ok"}'),
    Case("empty body", NOT_FOR_PYTHON, False, NOT_JSON, body=b""),
    Case("NUL bytes", NOT_FOR_PYTHON, False, NOT_JSON, body=b"\x00" * 64),
    Case("JSON null", None, False, NOT_JSON + ("not null",)),
    Case("JSON string", "app/ok", False, NOT_JSON + ("not str",)),
    # (from Python, and from a webhook's transform, an empty list is a send of nothing: no error)
    Case("empty array", [], False, NOT_JSON + ("empty array",),
         skip=frozenset({*PYTHON_ENTRY_POINTS, "POST /webhooks/{name}"})),
    Case("data is a list", {"name": "app/ok", "data": [1]}, False, ("data must be a JSON object",)),
    Case("ts is text", {"name": "app/ok", "ts": "now"}, False, ("ts must be an integer",)),
    Case("name is null", {"name": None, "data": {}}, False, ("has no name",)),
    Case("name is a number", {"name": 7, "data": {}}, False, ("name must be a string",)),
    # numbers
    Case("NaN", {"name": "app/ok", "data": {"n": float("nan")}}, False, NOT_FINITE),
    Case("Infinity", {"name": "app/ok", "data": {"n": float("inf")}}, False, NOT_FINITE),
    Case("-Infinity", {"name": "app/ok", "data": {"n": float("-inf")}}, False, NOT_FINITE),
    Case("1e400 (overflows to inf)", NOT_FOR_PYTHON, False, NOT_FINITE, body=b'{"name":"app/ok","data":{"n":1e400}}'),
    Case("int 10**400", {"name": "app/ok", "data": {"n": 10**400}}, True),
    Case("int 10**5000", {"name": "app/ok", "data": {"n": 10**5000}}, False, BIG_INT,
         body=b'{"name":"app/ok","data":{"n":1' + b"0" * 5000 + b"}}"),
    Case("float 1.7e308", {"name": "app/ok", "data": {"n": 1.7e308, "m": -0.0}}, True),
    # lone surrogates: a str in Python, never valid UTF-8
    Case("surrogate in name", {"name": "app/\ud800", "data": {}}, False, SURROGATE_SAYS),
    Case("surrogate in data key", {"name": "app/ok", "data": {"\udfff": 1}}, False, SURROGATE_SAYS),
    Case("surrogate in data value", {"name": "app/ok", "data": {"s": "a\ud83d"}}, False, SURROGATE_SAYS),
    Case("surrogate in id", {"name": "app/ok", "data": {}, "id": "\udc80"}, False, SURROGATE_SAYS),
    Case("surrogate in user", {"name": "app/ok", "data": {}, "user": {"u": "\ud800"}}, False, SURROGATE_SAYS),
    Case("surrogate in v", {"name": "app/ok", "data": {}, "v": "\ud800"}, False, SURROGATE_SAYS),
    Case("surrogate deep in a list", {"name": "app/ok", "data": {"l": [[["\ud800"]]]}}, False, SURROGATE_SAYS),
    # keys
    Case("int key", {"name": "app/ok", "data": {1: "one"}}, True, skip=frozenset(HTTP_ENTRY_POINTS)),
    Case("tuple key", {"name": "app/ok", "data": {(1, 2): "pair"}}, False, ("keys must be str",),
         skip=frozenset(HTTP_ENTRY_POINTS)),
    Case("duplicate JSON keys", NOT_FOR_PYTHON, True, body=b'{"name":"app/ok","data":{"a":1,"a":2}}'),
    Case("SQL in keys and values", {"name": "app/ok", "data": {"'; DROP TABLE log; --": "%_[]\\\x00`\""}}, True),
    # names
    Case("name of 256 characters", {"name": "n" * 256, "data": {}}, True),
    Case("name of 257 characters", {"name": "n" * 257, "data": {}}, False, ("name is 257 characters; the limit is 256",)),
    Case("name of 5,000,000 characters", {"name": "n" * 5_000_000, "data": {}}, False,
         ("name is 5000000 characters", "the limit is")),
    Case("reserved name", {"name": "inngest/function.finished", "data": {}}, False, ("reserved for the engine",)),
    Case("whitespace name", {"name": " \t\n", "data": {}}, False, ("has no name",)),
]
CASE_IDS = [case.label for case in CASES]


def _check(case: Case, outcome: Outcome, entry_point: str) -> None:
    if case.accepted:
        assert outcome.accepted, f"{entry_point} refused {case.label}: {outcome.status} {outcome.message}"
        return
    assert not outcome.accepted, f"{entry_point} accepted {case.label}"
    assert any(fragment in outcome.message for fragment in case.says), (entry_point, outcome.message[:500])
    assert outcome.status < 500, (entry_point, outcome)
    if entry_point == "POST /e/{key}":
        assert outcome.status == case.event_api_status, (outcome.status, outcome.message[:300])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_a_hostile_event_through_every_entry_point(engines: Engines, case: Case) -> None:
    """One case, sent through each entry point in turn to the same engines: each answers it
    clearly, and the engines go on serving (and keep what they accepted) after every one."""
    for entry_point, send in PYTHON_ENTRY_POINTS.items():
        if entry_point not in case.skip and case.payload is not NOT_FOR_PYTHON:
            tried(entry_point, case.label)
            _check(case, send(engines, case.payload), entry_point)
            engines.assert_serving()
    for entry_point, post in HTTP_ENTRY_POINTS.items():
        if entry_point not in case.skip:
            tried(entry_point, case.label)
            _check(case, post(engines, case.http_body()), entry_point)
            engines.assert_serving()


def test_accepted_oddities_read_back_as_json_gives_them(engines: Engines) -> None:
    """What is accepted is exactly what the log gives back: huge ints intact, int keys as text."""
    [big] = engines.client.send({"name": "app/odd", "data": {"n": 10**400, "neg": -(10**300)}})
    [keyed] = engines.client.send({"name": "app/odd", "data": {1: "one", None: "null", 2.5: "float"}})
    # keys that are equal as JSON text: the log keeps the last, as json.loads does
    [clash] = engines.client.send({"name": "app/odd", "data": {1: "int", "1": "text"}})
    engines.accepted.extend([big, keyed, clash])
    events = {event["internal_id"]: event["data"] for event in engines.client.list_events(name="app/odd")}
    assert events[big] == {"n": 10**400, "neg": -(10**300)}
    assert events[keyed] == {"1": "one", "null": "null", "2.5": "float"}
    assert events[clash] == {"1": "text"}
    [run] = engines.client.runs_for_event(engines.client.send({"name": "app/ok", "data": {"n": 10**400}})[0])
    assert run.result(timeout=DEADLINE) == ["n"]


# -- nesting: a fixed limit, far below the recursion limit, and what is accepted reads back anywhere --

DEPTHS = (300, 509, 510, 511, 512, 700, 900, 960, 976, 980, 990, 1000)
"""``nested(d)`` inside an event nests ``d + 2`` levels: the event object, and ``d`` objects around ``{}``."""


def at_stack_depth(frames: int, action: Callable[[], T]) -> T:
    """``action()`` called ``frames`` Python frames deeper than here, as a deep caller would."""
    return action() if frames == 0 else at_stack_depth(frames - 1, action)


@pytest.mark.parametrize("entry_point", sorted({*PYTHON_ENTRY_POINTS, *HTTP_ENTRY_POINTS}))
def test_nesting_is_refused_past_max_depth_and_what_is_accepted_reads_back_from_a_deep_stack(
    engines: Engines, entry_point: str
) -> None:
    """Before the fix the boundary was wherever Python's recursion limit fell for the thread that
    encoded: about 980 levels. Past it, ``send`` raised a raw RecursionError and the event API
    answered 500; just under it, the event was accepted and then, read back from a deeper call
    stack (rebuilding the projections), reported as a damaged log entry."""
    outcomes: dict[int, Outcome] = {}
    for depth in DEPTHS:
        tried(entry_point, f"nested {depth}")
        if entry_point in PYTHON_ENTRY_POINTS:
            outcomes[depth] = PYTHON_ENTRY_POINTS[entry_point](engines, {"name": "app/ok", "data": nested(depth)})
        else:
            outcomes[depth] = HTTP_ENTRY_POINTS[entry_point](engines, nested_body(depth))
    accepted = {depth for depth, outcome in outcomes.items() if outcome.accepted}
    assert accepted == {depth for depth in DEPTHS if depth + 2 <= MAX_DEPTH}
    for depth in set(DEPTHS) - accepted:
        assert outcomes[depth].status == 400 and "too deeply" in outcomes[depth].message, outcomes[depth]
    engines.assert_serving()
    assert within(DEADLINE, lambda: engines.client.run_until_idle(DEADLINE))
    failed = engines.client.list_runs(status="failed", limit=None)
    assert failed == [], [(run["run_id"], run["error"]) for run in failed][:3]
    store = engines.client.store
    entries = within(DEADLINE, lambda: at_stack_depth(300, store.read_all))
    assert len(entries) == store.last_position()
    assert within(DEADLINE, lambda: at_stack_depth(300, lambda: engines.client.rebuild_projections(apply=False))) == []


# -- huge bodies: refused early --------------------------------------------------------------------


def _raw_request(base_url: str, request: bytes, then_send: Callable[[socket.socket], None] | None = None) -> bytes:
    """Send ``request`` on a fresh connection (and then whatever ``then_send`` sends, until the server
    stops reading), and return the server's answer: its head and its Content-Length of body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as connection:
        connection.sendall(request)
        if then_send is not None:
            try:
                then_send(connection)
            except OSError:
                pass  # the server answered and closed: what the test wants
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(body) < length and (chunk := connection.recv(65536)):
            body += chunk
    return head + b"\r\n\r\n" + body


BODY_PATHS = {"POST /e/{key}": "/e/key", "POST /webhooks/{name}": "/webhooks/raw", "POST /api/events": "/api/events"}


@pytest.mark.parametrize("entry_point", sorted(BODY_PATHS))
def test_a_declared_50_mb_body_is_refused_before_any_of_it_is_sent(engines: Engines, entry_point: str) -> None:
    tried(entry_point, "Content-Length 50 MB")
    size = 50 * 1024 * 1024
    head = (f"POST {BODY_PATHS[entry_point]} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    answer = within(DEADLINE, lambda: _raw_request(engines.base_url, head))  # not one byte of the body
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    assert b"10485760" in rest or b"over" in rest, rest[-300:]
    engines.assert_serving()


@pytest.mark.parametrize("entry_point", sorted(BODY_PATHS))
def test_a_chunked_body_is_refused_once_it_passes_the_limit(engines: Engines, entry_point: str) -> None:
    """The answer closes the connection, so the sender cannot go on pushing the body. (The UI's API
    used to keep the connection open and take in all 40 MB after its 413.)"""
    tried(entry_point, "chunked 40 MB")
    head = (f"POST {BODY_PATHS[entry_point]} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"x" * (1024 * 1024)
    sent: list[int] = []

    def stream(connection: socket.socket) -> None:
        for _ in range(40):  # 40 MB, far more than the 10 MiB limit, unless the server stops us first
            connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent.append(len(chunk))
        connection.sendall(b"0\r\n\r\n")

    answer = within(DEADLINE, lambda: _raw_request(engines.base_url, head, stream))
    assert b" 413 " in answer.partition(b"\r\n")[0], answer[:300]
    assert len(sent) < 40, f"{entry_point} read all {len(sent)} MB of a body it had refused"
    engines.assert_serving()


# -- step outputs, function outputs, step counts ----------------------------------------------------

OUTPUT_LIMIT = 64 * 1024


class Trap:
    """An object that notices any attempt to pickle or copy it."""

    touched: ClassVar[list[str]] = []

    def __reduce_ex__(self, protocol: Any) -> Any:
        Trap.touched.append("__reduce_ex__")
        raise AssertionError("a step output was pickled")

    def __getstate__(self) -> Any:
        Trap.touched.append("__getstate__")
        raise AssertionError("a step output was pickled")


def _json_string(total: int) -> str:
    """A str whose JSON text is exactly ``total`` bytes."""
    return "x" * (total - 2)


NOT_JSON_OUTPUTS: dict[str, tuple[Callable[[], Any], str]] = {
    "set": (lambda: {1, 2}, "Object of type set is not JSON serializable"),
    "bytes": (lambda: b"\x80\x81", "Object of type bytes is not JSON serializable"),
    "custom object": (Trap, "Object of type Trap is not JSON serializable"),
    "function": (lambda: print, "is not JSON serializable"),
    "generator": (lambda: (i for i in range(3)), "Object of type generator is not JSON serializable"),
    "tuple key": (lambda: {(1,): 1}, "keys must be str, int, float, bool or None"),
    "NaN": (lambda: float("nan"), "Out of range float values are not JSON compliant"),
    "Infinity": (lambda: float("inf"), "Out of range float values are not JSON compliant"),
    "int 10**5000": (lambda: 10**5000, "Exceeds the limit (4300 digits)"),
    "lone surrogate": (lambda: "\ud800", "lone surrogate"),
    "nested 5,000": (lambda: nested(5000), "nest too deeply"),
    "nested 1 past the limit": (lambda: nested(MAX_DEPTH), f"nest too deeply (more than {MAX_DEPTH} levels)"),
    "over the limit": (lambda: _json_string(OUTPUT_LIMIT + 1), f"is {OUTPUT_LIMIT + 1} bytes; the limit is {OUTPUT_LIMIT}"),
}


def _output_functions(client: steplog.Steplog) -> None:
    @client.create_function(fn_id="step-output", trigger=TriggerEvent(event="out/step"), retries=0)
    def step_output(ctx: Context) -> Any:
        size = ctx.event.data.get("size")
        make = (lambda: _json_string(size)) if size else NOT_JSON_OUTPUTS[ctx.event.data["kind"]][0]
        ctx.step.run("made", make)
        return "after"

    @client.create_function(fn_id="function-output", trigger=TriggerEvent(event="out/function"), retries=0)
    def function_output(ctx: Context) -> Any:
        size = ctx.event.data.get("size")
        return _json_string(size) if size else NOT_JSON_OUTPUTS[ctx.event.data["kind"]][0]()


def _output_engine() -> TestEngine:
    client = make_client(":memory:")
    _output_functions(client)
    return TestEngine(client, limits=Limits(step_output_bytes=OUTPUT_LIMIT))


@pytest.mark.parametrize("size", [OUTPUT_LIMIT - 1, OUTPUT_LIMIT, OUTPUT_LIMIT + 1], ids=["limit-1", "limit", "limit+1"])
@pytest.mark.parametrize("where", ["step", "function"])
def test_outputs_at_the_limit_are_recorded_and_one_byte_more_fails_the_run(where: str, size: int) -> None:
    tried(f"{where} output", f"{size - OUTPUT_LIMIT:+d} bytes")
    with _output_engine() as engine:
        run = within(DEADLINE, lambda: engine.trigger(f"out/{where}", {"size": size}))
        if size <= OUTPUT_LIMIT:
            run.assert_completed("after" if where == "step" else _json_string(size))
            if where == "step":
                assert run.step_output("made") == _json_string(size)
        else:
            run.assert_failed(message=f"is {size} bytes; the limit is {OUTPUT_LIMIT} bytes")
        engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])


@pytest.mark.parametrize("kind", sorted(NOT_JSON_OUTPUTS))
@pytest.mark.parametrize("where", ["step", "function"])
def test_an_output_that_is_not_json_fails_its_run_clearly_and_is_never_pickled(where: str, kind: str) -> None:
    tried(f"{where} output", kind)
    Trap.touched.clear()
    with _output_engine() as engine:
        run = within(DEADLINE, lambda: engine.trigger(f"out/{where}", {"kind": kind}))
        run.assert_failed(message=NOT_JSON_OUTPUTS[kind][1])
        assert Trap.touched == []
        # a step's bad output fails that step once (never retried, never pickled); a function's, the run
        assert [attempt.status for attempt in run.attempts] == (["failed"] if where == "step" else [])
        engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])


def test_outputs_at_the_default_limit_on_the_threaded_engine(tmp_path: Path) -> None:
    """4 MiB exactly is committed through the writer and read back; one byte more fails the run."""
    limit = Limits().step_output_bytes
    client = make_client(tmp_path / "outputs.db")
    _output_functions(client)
    tried("step output (threaded)", "4 MiB at/over")
    with client:
        [at] = client.send({"name": "out/step", "data": {"size": limit}})
        [over] = client.send({"name": "out/step", "data": {"size": limit + 1}})
        [fits] = client.runs_for_event(at)
        [too_big] = client.runs_for_event(over)
        assert fits.result(timeout=DEADLINE) == "after"
        assert len(client.run_history(fits.run_id).steps[0].output) == limit - 2
        assert too_big.wait(DEADLINE) and too_big.status == "failed"
        assert f"is {limit + 1} bytes; the limit is {limit} bytes" in too_big.info()["error"]["message"]


STEP_LIMIT = 5


def _counted_steps(client: steplog.Steplog) -> None:
    @client.create_function(fn_id="counted", trigger=TriggerEvent(event="steps/go"), retries=0)
    def counted(ctx: Context) -> int:
        for index in range(ctx.event.data["steps"]):
            ctx.step.run(f"s{index}", lambda index=index: index)
        if ctx.event.data.get("then_wait"):
            ctx.step.wait_for_event("wait", event="steps/never", timeout="1h")
        return int(ctx.event.data["steps"])


def test_a_run_at_the_step_limit_completes_and_one_over_fails_consistently() -> None:
    tried("step limit (TestEngine)", "at, over, over-then-cancel")
    client = make_client(":memory:")
    _counted_steps(client)
    with TestEngine(client, limits=Limits(steps_per_run=STEP_LIMIT)) as engine:
        engine.trigger("steps/go", {"steps": STEP_LIMIT}).assert_completed(STEP_LIMIT)
        over = engine.trigger("steps/go", {"steps": STEP_LIMIT + 1})
        over.assert_failed("StepLimitError", f"exceeded its step limit of {STEP_LIMIT} steps")
        assert over.completed_steps == [f"s{index}" for index in range(STEP_LIMIT)]
        assert over.row["steps"] == STEP_LIMIT
        assert engine.cancel(over.run_id) is False  # it has ended: nothing to cancel, nothing broken
        waiting = engine.trigger("steps/go", {"steps": STEP_LIMIT - 1, "then_wait": True}).assert_waiting()
        assert engine.cancel(waiting.run_id, "enough") is True
        engine.run_until_idle()
        waiting.assert_cancelled("enough")
        engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])


def test_the_step_limit_on_the_threaded_engine(tmp_path: Path) -> None:
    tried("step limit (threaded)", "at, over, cancel")
    client = steplog.Steplog(app_id="steps", db=tmp_path / "steps.db", max_steps_per_run=STEP_LIMIT)
    client.create_function(fn_id="echo", trigger=TriggerEvent(event="app/ok"))(_echo)
    _counted_steps(client)
    with client:
        [at] = client.send({"name": "steps/go", "data": {"steps": STEP_LIMIT}})
        [over] = client.send({"name": "steps/go", "data": {"steps": STEP_LIMIT + 1, "then_wait": True}})
        assert client.runs_for_event(at)[0].result(timeout=DEADLINE) == STEP_LIMIT
        [failed] = client.runs_for_event(over)
        assert failed.wait(DEADLINE) and failed.status == "failed"
        assert failed.info()["error"]["name"] == "StepLimitError" and failed.info()["steps"] == STEP_LIMIT
        assert failed.cancel() is False
        [waits] = client.runs_for_event(client.send({"name": "steps/go", "data": {"steps": 1, "then_wait": True}})[0])
        assert within(DEADLINE, lambda: client.run_until_idle(DEADLINE))
        assert waits.cancel("enough") is True and waits.wait(DEADLINE) and waits.status == "cancelled"
        [ok] = client.runs_for_event(client.send({"name": "app/ok", "data": {"k": 1}})[0])
        assert ok.result(timeout=DEADLINE) == ["k"]


# -- text the log cannot hold: lone surrogates in what a run records -------------------------------

SURROGATE = "\ud800"


def _surrogate_functions(client: steplog.Steplog) -> None:
    def define(fn_id: str) -> Any:
        return client.create_function(fn_id=fn_id, trigger=TriggerEvent(event=f"sur/{fn_id}"), retries=0)

    @define("step-id")
    def step_id(ctx: Context) -> Any:
        return ctx.step.run("s" + SURROGATE, lambda: 1)

    @define("sleep-id")
    def sleep_id(ctx: Context) -> Any:
        return ctx.step.sleep("z" + SURROGATE, "1s")

    @define("wait-name")
    def wait_name(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="app/x" + SURROGATE, timeout="1h")

    @define("wait-if")
    def wait_if(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="app/x", timeout="1h", if_exp=f"async.data.s == '{SURROGATE}'")

    @define("step-error")
    def step_error(ctx: Context) -> Any:
        def fail() -> None:
            raise OSError(f"cannot open /tmp/caf{SURROGATE}.txt")  # an undecodable file name, as os.listdir gives it

        return ctx.step.run("open", fail)

    @define("function-error")
    def function_error(ctx: Context) -> Any:
        raise ValueError(f"bad {SURROGATE}")

    @define("waits")
    def waits(ctx: Context) -> Any:
        return ctx.step.wait_for_event("w", event="sur/never", timeout="1h")


SURROGATE_RUNS: dict[str, tuple[str, str]] = {
    # function: (the error's name, what its message says)
    "step-id": ("StepIdError", "holds a lone surrogate"),
    "sleep-id": ("StepIdError", "holds a lone surrogate"),
    "wait-name": ("WaitError", "event must be an exact event name (Unicode text)"),
    "wait-if": ("WaitError", "lone surrogate"),
    "step-error": ("StepError", "cannot open /tmp/caf\\ud800.txt"),
    "function-error": ("ValueError", "bad \\ud800"),
}


@pytest.mark.parametrize("fn_id", sorted(SURROGATE_RUNS))
def test_a_lone_surrogate_in_what_a_run_records_fails_it_clearly_or_is_escaped(fn_id: str) -> None:
    """Before the fix each of these reached SQLite, failed the commit with UnicodeEncodeError (and,
    in a group commit, every other append of the batch), and the run was failed after four
    'crashes' with a message about a codec."""
    tried("run records (TestEngine)", fn_id)
    client = make_client(":memory:")
    _surrogate_functions(client)
    name, message = SURROGATE_RUNS[fn_id]
    with TestEngine(client) as engine:
        run = within(DEADLINE, lambda: engine.trigger(f"sur/{fn_id}"))
        run.assert_failed(name, message)
        assert engine.crashes == 0
        engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])


def test_lone_surrogates_on_the_threaded_engine_fail_only_their_own_runs(tmp_path: Path) -> None:
    client = make_client(tmp_path / "surrogates.db")
    _surrogate_functions(client)
    tried("run records (threaded)", "all, at once, with a cancel reason")
    with client:
        sent = {fn_id: client.send({"name": f"sur/{fn_id}", "data": {}})[0] for fn_id in SURROGATE_RUNS}
        normal = [client.send({"name": "app/ok", "data": {"k": index}})[0] for index in range(20)]
        for fn_id, event_id in sent.items():
            [run] = client.runs_for_event(event_id)
            assert run.wait(DEADLINE), fn_id
            assert (run.status, run.info()["error"]["name"]) == ("failed", SURROGATE_RUNS[fn_id][0])
            assert SURROGATE_RUNS[fn_id][1] in run.info()["error"]["message"]
        for event_id in normal:
            assert client.runs_for_event(event_id)[0].result(timeout=DEADLINE) == ["k"]
        [waiting] = client.runs_for_event(client.send({"name": "sur/waits", "data": {}})[0])
        assert client.run_until_idle(DEADLINE)
        assert client.cancel(waiting.run_id, reason=f"asked by {SURROGATE}") is True
        assert waiting.wait(DEADLINE) and waiting.status == "cancelled"
        assert "asked by \\ud800" in waiting.info()["error"]["message"]
        assert client.runs_for_event(client.send({"name": "app/ok", "data": {}})[0])[0].result(timeout=DEADLINE) == []


def test_the_store_refuses_an_append_it_cannot_encode_and_stays_usable(tmp_path: Path) -> None:
    """The last line of defence: text that is not Unicode reaching the store fails that commit and
    writes nothing, and the next commit works."""
    tried("SqliteEventStore.commit", "lone surrogate in entry data")
    store = SqliteEventStore(tmp_path / "store.db", RunProjector())
    try:
        bad = Append((StreamWrite("test/bad", (NewEntry("test.note", {"text": SURROGATE}),)),))
        good = Append((StreamWrite("test/good", (NewEntry("test.note", {"text": "fine"}),)),))
        with pytest.raises(ValueError):
            store.commit([bad], now=_now())
        assert store.read_stream("test/bad") == []
        store.commit([good], now=_now())
        assert [entry.data for entry in store.read_stream("test/good")] == [{"text": "fine"}]
    finally:
        store.close()


def _now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


# -- an output that fits its run but not the event announcing the run's end ------------------------


def test_an_invoked_run_whose_output_cannot_travel_fails_the_caller_saying_why() -> None:
    """The output is recorded (it nests just within the limit), but the ``inngest/function.finished``
    event that carries it to the caller nests it deeper. The caller's invoke fails, saying so (the
    message used to say "too large" whatever the reason)."""
    output = {"rows": nested(MAX_DEPTH - 3)}
    tried("invoke result", "nested to the limit")
    client = make_client(":memory:")

    @client.create_function(fn_id="child", trigger=TriggerEvent(event="invoke/child"))
    def child(ctx: Context) -> Any:
        return output

    @client.create_function(fn_id="parent", trigger=TriggerEvent(event="invoke/parent"), retries=0)
    def parent(ctx: Context) -> Any:
        return ctx.step.invoke("call", function="child", data={})

    limits = Limits(event_bytes=OUTPUT_LIMIT // 2, step_output_bytes=OUTPUT_LIMIT)
    with TestEngine(client, limits=limits) as engine:
        run = within(DEADLINE, lambda: engine.trigger("invoke/parent"))
        run.assert_failed(message="could not be sent in its end event")
        assert run.error is not None and f"nest too deeply (more than {MAX_DEPTH} levels)" in run.error["message"]
        [called] = engine.runs("child")
        called.assert_completed()
        engine.trigger("app/ok", {"k": 1}).assert_completed(["k"])
