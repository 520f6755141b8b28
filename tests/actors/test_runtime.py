"""The threaded client, ``steplog.Steplog``: lifecycle, send, handles, retries on a manual clock,
restart from the log, isolation of failing user code, and many runs at once.

No test sleeps: waiting is ``run_until_idle``, ``RunHandle.result(timeout=...)`` and
``threading.Event`` handshakes with user code.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import steplog
from steplog.engine import Engine, RunProjector, queries
from steplog.eventstore import SqliteEventStore, parse_time

WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds


class Crash(BaseException):
    """Stands for the process dying in the middle of a run."""


@pytest.fixture(params=["file", "memory"])
def db(request: pytest.FixtureRequest, db_path: Path) -> str | Path:
    return db_path if request.param == "file" else ":memory:"


def greeter(client: steplog.Steplog) -> steplog.FunctionDef:
    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/user.created"))
    def greet(ctx: steplog.Context) -> str:
        name = ctx.step.run("load", lambda: ctx.event.data["name"])
        return ctx.step.run("greet", lambda: f"hello {name}")

    return greet


def only_run(client: steplog.Steplog, event_id: str) -> steplog.RunHandle:
    [handle] = client.runs_for_event(event_id)
    return handle


# -- lifecycle ---------------------------------------------------------------------------------


def test_the_common_path(db: str | Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(app_id="shop", db=db, clock=clock)
    greeter(client)
    with client as running:
        assert running is client
        [event_id] = client.send({"name": "app/user.created", "data": {"name": "Ada"}})
        assert only_run(client, event_id).result(timeout=WAIT) == "hello Ada"


def test_context_manager_starts_and_stops(db: str | Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db, clock=clock)
    greeter(client)
    with client:
        client.send({"name": "app/user.created", "data": {"name": "x"}})
        assert client.run_until_idle(timeout=WAIT) is True
    with pytest.raises(steplog.EngineStoppedError, match=r"not started"):
        client.send({"name": "app/user.created", "data": {"name": "y"}})
    # a stopped client can be started again (with a file, the log is still there)
    with client:
        [event_id] = client.send({"name": "app/user.created", "data": {"name": "z"}})
        assert only_run(client, event_id).result(timeout=WAIT) == "hello z"
        expected = 2 if db != ":memory:" else 1
        assert len(client.list_events()) == expected


def test_send_before_start_raises_a_clear_error(db: str | Path) -> None:
    client = steplog.Steplog(db=db)
    greeter(client)
    with pytest.raises(steplog.EngineStoppedError) as raised:
        client.send({"name": "app/user.created", "data": {"name": "x"}})
    assert "not started" in str(raised.value) and "start()" in str(raised.value)
    with pytest.raises(steplog.EngineStoppedError):
        client.run_until_idle()


def test_functions_must_be_defined_before_start(clock: steplog.ManualClock) -> None:
    with steplog.Steplog(db=":memory:", clock=clock) as client:
        with pytest.raises(steplog.DefinitionError, match=r"before starting"):
            greeter(client)
        assert client.registry.all() == []


def test_start_and_stop_are_idempotent(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock)
    greeter(client)
    assert client.start() is client
    assert client.start() is client
    [event_id] = client.send({"name": "app/user.created", "data": {"name": "a"}})
    assert only_run(client, event_id).result(timeout=WAIT) == "hello a"
    client.stop()
    client.stop()


# -- send ----------------------------------------------------------------------------------------


def test_send_returns_ids_once_committed(db_path: Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)
    greeter(client)
    with client:
        ids = client.send([{"name": "app/user.created", "data": {"name": n}} for n in ("a", "b", "c")])
        assert len(ids) == 3 and len(set(ids)) == 3
        # visible at once, through the client and to any other reader of the file
        assert [e["internal_id"] for e in client.list_events()] == list(reversed(ids))
        with sqlite3.connect(db_path) as other:
            rows = {row[0] for row in other.execute("SELECT internal_id FROM events")}
        assert rows == set(ids)
        client.run_until_idle(timeout=WAIT)
        assert {r["status"] for r in client.list_runs()} == {"completed"}


def test_a_bad_send_raises_and_accepts_nothing(db: str | Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db, clock=clock)
    greeter(client)
    with client:
        [first] = client.send({"name": "app/user.created", "data": {"name": "kept"}})
        with pytest.raises(steplog.EventError, match=r"event 1"):
            client.send([{"name": "app/user.created", "data": {"name": "x"}}, {"name": "app/user.created", "data": []}])
        with pytest.raises(steplog.EventError, match=r"the limit is"):
            client.send({"name": "app/user.created", "data": {"name": "x" * (300 * 1024)}})
        # the router lives on, and nothing already accepted is lost
        [later] = client.send({"name": "app/user.created", "data": {"name": "later"}})
        assert only_run(client, first).result(timeout=WAIT) == "hello kept"
        assert only_run(client, later).result(timeout=WAIT) == "hello later"
        assert [e["internal_id"] for e in client.list_events()] == [later, first]


def test_limits_are_configurable_on_the_client(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock, limits=steplog.Limits(event_bytes=100), max_steps_per_run=2)
    assert client.limits.steps_per_run == 2 and client.limits.event_bytes == 100

    @client.create_function(fn_id="many", trigger=steplog.TriggerEvent(event="app/x"))
    def many(ctx: steplog.Context) -> None:
        for i in range(3):
            ctx.step.run("s", lambda i=i: i)

    with client:
        with pytest.raises(steplog.EventError, match=r"the limit is 100 bytes"):
            client.send({"name": "app/x", "data": {"pad": "x" * 100}})
        [event_id] = client.send({"name": "app/x"})
        with pytest.raises(steplog.RunFailedError, match=r"step limit of 2 steps"):
            only_run(client, event_id).result(timeout=WAIT)


def test_the_run_sees_the_event_as_sent_even_if_the_caller_changes_it(
    db_path: Path, clock: steplog.ManualClock
) -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[Any] = []
    client = steplog.Steplog(db=db_path, clock=clock, max_active_runs=1)

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="app/x"))
    def f(ctx: steplog.Context) -> None:
        if ctx.event.data.get("block"):
            entered.set()
            assert release.wait(WAIT)
        seen.append(ctx.event.data)

    with client:
        client.send({"name": "app/x", "data": {"block": True}})
        assert entered.wait(WAIT)
        data: dict[str, Any] = {"items": [1], "pair": (1, 2)}
        [event_id] = client.send({"name": "app/x", "data": data})  # queued behind the blocked run
        data["items"].append("changed after send")
        release.set()
        only_run(client, event_id).result(timeout=WAIT)
    assert seen[-1] == {"items": [1], "pair": [1, 2]}


# -- handles --------------------------------------------------------------------------------------


def test_handle_result_failure_and_timeout(db: str | Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db, clock=clock)

    @client.create_function(fn_id="ok", trigger=steplog.TriggerEvent(event="app/ok"))
    def ok(ctx: steplog.Context) -> dict[str, Any]:
        return {"run": ctx.run_id, "n": ctx.event.data["n"]}

    @client.create_function(fn_id="fails", trigger=steplog.TriggerEvent(event="app/fails"), retries=0)
    def fails(ctx: steplog.Context) -> None:
        raise ValueError("bad order")

    @client.create_function(fn_id="slow", trigger=steplog.TriggerEvent(event="app/slow"))
    def slow(ctx: steplog.Context) -> None:
        raise RuntimeError("try again later")

    with client:
        [ok_id] = client.send({"name": "app/ok", "data": {"n": 3}})
        handle = only_run(client, ok_id)
        assert handle.result(timeout=WAIT) == {"run": handle.run_id, "n": 3}
        assert handle.status == "completed"
        assert repr(handle) == f"RunHandle({handle.run_id!r})"

        [fail_id] = client.send({"name": "app/fails"})
        failing = only_run(client, fail_id)
        with pytest.raises(steplog.RunFailedError) as raised:
            failing.result(timeout=WAIT)
        assert raised.value.run_id == failing.run_id
        assert raised.value.error["name"] == "ValueError" and raised.value.error["message"] == "bad order"
        assert "bad order" in str(raised.value)

        [slow_id] = client.send({"name": "app/slow"})
        waiting = only_run(client, slow_id)
        assert client.run_until_idle(timeout=WAIT)  # it has failed once and waits for its retry
        with pytest.raises(TimeoutError, match=r"has not ended after 0.05 s \(status waiting\)"):
            waiting.result(timeout=0.05)
        assert waiting.wait(timeout=0.01) is False

        with pytest.raises(steplog.RunNotFoundError):
            client.run("no-such-run").info()


# -- retries on a manual clock ------------------------------------------------------------------------


def test_a_step_failing_once_waits_for_its_backoff(db: str | Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)

    @client.create_function(fn_id="flaky", trigger=steplog.TriggerEvent(event="app/x"))
    def flaky(ctx: steplog.Context) -> str:
        def body() -> str:
            calls["body"] += 1
            if calls["body"] == 1:
                raise ConnectionError("upstream down")
            return "fine"

        return ctx.step.run("call", body)

    with client:
        started = clock.now()
        [event_id] = client.send({"name": "app/x"})
        client.run_until_idle(timeout=WAIT)
        handle = only_run(client, event_id)
        [row] = client.list_runs(status="waiting")
        assert row["run_id"] == handle.run_id
        [timer] = client.store.query("timers")
        assert timer["run_id"] == handle.run_id
        due = parse_time(timer["due_at"])
        assert started + timedelta(seconds=15) <= due <= started + timedelta(seconds=45)
        assert client.next_timer() == due
        assert calls["body"] == 1

        client.advance(timedelta(seconds=46))
        assert handle.result(timeout=WAIT) == "fine"
        assert calls["body"] == 2
        assert client.store.query("timers") == []
        assert client.next_timer() is None
        attempts = [(a.attempt, a.status) for a in client.run_history(handle.run_id).steps]
        assert attempts == [(0, "errored"), (1, "completed")]


def test_advance_needs_a_manual_clock() -> None:
    client = steplog.Steplog(db=":memory:")
    with pytest.raises(TypeError, match=r"ManualClock"):
        client.advance(1)


# -- restart --------------------------------------------------------------------------------------------


def build(db_path: Path, clock: steplog.ManualClock, ran: Counter[str], crash: list[bool]) -> steplog.Steplog:
    client = steplog.Steplog(db=db_path, clock=clock)

    @client.create_function(fn_id="flaky", trigger=steplog.TriggerEvent(event="app/flaky"))
    def flaky(ctx: steplog.Context) -> str:
        def body() -> str:
            ran["flaky.body"] += 1
            if ran["flaky.body"] == 1:
                raise RuntimeError("first attempt fails")
            return "flaky done"

        ctx.step.run("before", lambda: ran.update(["flaky.before"]))
        return ctx.step.run("body", body)

    @client.create_function(fn_id="queued", trigger=steplog.TriggerEvent(event="app/queued"))
    def queued(ctx: steplog.Context) -> str:
        return ctx.step.run("only", lambda: ran.update(["queued.only"]) or "queued done")

    @client.create_function(fn_id="crashy", trigger=steplog.TriggerEvent(event="app/crashy"))
    def crashy(ctx: steplog.Context) -> str:
        a = ctx.step.run("a", lambda: ran.update(["crashy.a"]) or "A")
        if crash and crash.pop():
            raise Crash()
        return a + ctx.step.run("b", lambda: ran.update(["crashy.b"]) or "B")

    return client


def test_restart_resumes_waiting_queued_and_interrupted_runs(db_path: Path, clock: steplog.ManualClock) -> None:
    ran = Counter[str]()

    # 1. a client runs a run into its retry backoff, and stops
    first = build(db_path, clock, ran, crash=[])
    with first:
        [flaky_event] = first.send({"name": "app/flaky"})
        first.run_until_idle(timeout=WAIT)
        assert only_run(first, flaky_event).status == "waiting"

    # 2. a process records an event and dies before running it; another dies in the middle of a run
    crash = [True]
    registry = build(db_path, clock, ran, crash).registry
    store = SqliteEventStore(db_path, RunProjector())
    engine = Engine(store, registry=registry, clock=clock)
    [queued_run] = engine.accept({"name": "app/queued"}).runs
    [crashy_run] = engine.accept({"name": "app/crashy"}).runs
    with pytest.raises(Crash):
        engine.invoke(crashy_run.run_id)
    assert queries.get_run(store, queued_run.run_id)["status"] == "queued"
    assert queries.get_run(store, crashy_run.run_id)["status"] == "running"
    store.close()
    assert ran == {"flaky.before": 1, "flaky.body": 1, "crashy.a": 1}

    # 3. a new client on the same file picks everything up
    second = build(db_path, clock, ran, crash=[])
    with second:
        assert second.run(queued_run.run_id).result(timeout=WAIT) == "queued done"
        assert second.run(crashy_run.run_id).result(timeout=WAIT) == "AB"
        flaky = only_run(second, flaky_event)
        assert flaky.status == "waiting"
        second.advance(timedelta(seconds=46))
        assert flaky.result(timeout=WAIT) == "flaky done"
    # committed steps never ran again
    assert ran == {"flaky.before": 1, "flaky.body": 2, "queued.only": 1, "crashy.a": 1, "crashy.b": 1}


def test_a_run_of_a_function_no_longer_defined_waits(db_path: Path, clock: steplog.ManualClock) -> None:
    first = steplog.Steplog(db=db_path, clock=clock)

    @first.create_function(fn_id="old", trigger=steplog.TriggerEvent(event="app/x"))
    def old(ctx: steplog.Context) -> None:
        raise RuntimeError("retry me")

    with first:
        [event_id] = first.send({"name": "app/x"})
        first.run_until_idle(timeout=WAIT)
        run_id = only_run(first, event_id).run_id

    second = steplog.Steplog(db=db_path, clock=clock)
    greeter(second)
    with second:
        second.advance(timedelta(minutes=5))
        [event2] = second.send({"name": "app/user.created", "data": {"name": "n"}})
        assert only_run(second, event2).result(timeout=WAIT) == "hello n"
        assert second.get_run(run_id)["status"] == "waiting"


# -- failing user code never kills the engine ---------------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this error")


def test_user_errors_never_kill_the_engine(db: str | Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)
    failures: dict[str, Any] = {
        "value-error": lambda: (_ for _ in ()).throw(ValueError("v")),
        "zero-division": lambda: 1 / 0,
        "recursion": lambda: (_ for _ in ()).throw(RecursionError("deep")),
        "unprintable": lambda: (_ for _ in ()).throw(Unprintable()),
        "not-json-step": lambda: {"a", "set"},
        "not-json-output": lambda: None,
    }

    for name, failure in failures.items():

        @client.create_function(fn_id=f"bad-{name}", trigger=steplog.TriggerEvent(event="app/go"), retries=0)
        def bad(ctx: steplog.Context, name: str = name, failure: Any = failure) -> Any:
            calls[name] += 1
            if name == "not-json-output":
                return object()
            if name == "unprintable":
                raise Unprintable()
            return ctx.step.run("step", failure)

    @client.create_function(fn_id="good", trigger=steplog.TriggerEvent(event="app/go"))
    def good(ctx: steplog.Context) -> int:
        return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    with client:
        ids = client.send([{"name": "app/go", "data": {"n": n}} for n in range(5)])
        assert client.run_until_idle(timeout=WAIT)
        for n, event_id in enumerate(ids):
            handles = {h.info()["function_id"]: h for h in client.runs_for_event(event_id)}
            assert handles["good"].result(timeout=WAIT) == n * 2
            for name in failures:
                with pytest.raises(steplog.RunFailedError):
                    handles[f"bad-{name}"].result(timeout=WAIT)
        # retries=0: each bad function ran once per event, however it failed
        assert calls == {name: 5 for name in failures}
        unprintable = client.list_runs(function_id="bad-unprintable")[0]
        assert unprintable["error"]["name"] == "Unprintable"
        assert unprintable["error"]["message"] == "<unprintable Unprintable>"
        # and the engine still works
        [later] = client.send({"name": "app/go", "data": {"n": 50}})
        later_runs = {h.info()["function_id"]: h for h in client.runs_for_event(later)}
        assert later_runs["good"].result(timeout=WAIT) == 100


# -- many runs at once -------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ["file", "memory"])
def test_many_concurrent_runs_all_complete_and_each_step_runs_once(
    db_kind: str, db_path: Path, clock: steplog.ManualClock
) -> None:
    lock = threading.Lock()
    counts: Counter[tuple[str, int]] = Counter()
    client = steplog.Steplog(db=db_path if db_kind == "file" else ":memory:", clock=clock)

    @client.create_function(fn_id="fan", trigger=steplog.TriggerEvent(event="app/fan"))
    def fan(ctx: steplog.Context) -> int:
        def body(i: int) -> int:
            with lock:
                counts[(ctx.run_id, i)] += 1
            return i

        return sum(ctx.step.run(f"s{i}", body, i) for i in range(3)) + ctx.event.data["n"]

    @client.create_function(fn_id="async-fan", trigger=steplog.TriggerEvent(event="app/fan"))
    async def async_fan(ctx: steplog.Context) -> int:
        async def body(i: int) -> int:
            with lock:
                counts[(ctx.run_id, i)] += 1
            return i

        total = 0
        for i in range(3):
            total += await ctx.step.run(f"s{i}", body, i)
        return total + ctx.event.data["n"]

    with client:
        ids = client.send([{"name": "app/fan", "data": {"n": n}} for n in range(150)])
        assert client.run_until_idle(timeout=60)
        runs = client.list_runs(limit=None)
        assert len(runs) == 300
        assert {r["status"] for r in runs} == {"completed"}
        for n, event_id in enumerate(ids):
            assert [h.result(timeout=WAIT) for h in client.runs_for_event(event_id)] == [3 + n, 3 + n]
    assert len(counts) == 900
    assert set(counts.values()) == {1}


def test_send_can_be_awaited_as_in_inngest(clock: steplog.ManualClock) -> None:
    import asyncio

    client = steplog.Steplog(db=":memory:", clock=clock)
    greeter(client)
    with client:
        ids = asyncio.run(_send_awaited(client))
        assert isinstance(ids, list) and len(ids) == 1
        assert only_run(client, ids[0]).result(timeout=WAIT) == "hello Ada"
        assert len(client.list_events()) == 1  # awaiting sent nothing twice


async def _send_awaited(client: steplog.Steplog) -> list[str]:
    return await client.send(steplog.Event(name="app/user.created", data={"name": "Ada"}))


def test_queries_take_the_senders_event_id_and_times_as_text(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock)
    greeter(client)
    with client:
        client.send({"name": "app/user.created", "data": {"name": "Ada"}, "id": "signup-ada"})
        client.run_until_idle()
        [handle] = client.runs_for_event("signup-ada")
        assert handle.result(timeout=WAIT) == "hello Ada"
        assert [run["run_id"] for run in client.list_runs(event_id="signup-ada")] == [handle.run_id]
        assert len(client.list_events(since="1h")) == 1
        assert client.list_events(since="2026-01-01T12:00:01Z") == []
        assert len(client.list_runs(since="2026-01-01", until="2026-01-01T13:00:00+01:00")) == 1
        assert client.list_runs(since="2026-01-01", until="1s") == []
        with pytest.raises(ValueError, match="'yesterday' is not a time"):
            client.list_events(since="yesterday")
        with pytest.raises(ValueError, match="unknown run status 'done'; statuses: queued"):
            client.list_runs(status="done")


@pytest.mark.parametrize("is_async", [False, True])
def test_send_event_from_a_function_goes_through_the_router(
    clock: steplog.ManualClock, is_async: bool
) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock)

    if is_async:
        @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event="app/parent"))
        async def parent(ctx: steplog.Context) -> list[str]:
            return await ctx.step.send_event("notify", steplog.Event(name="app/child", data={"n": 1}))
    else:
        @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event="app/parent"))
        def parent(ctx: steplog.Context) -> list[str]:
            return ctx.step.send_event("notify", steplog.Event(name="app/child", data={"n": 1}))

    @client.create_function(fn_id="child", trigger=steplog.TriggerEvent(event="app/child"))
    def child(ctx: steplog.Context) -> int:
        return int(ctx.event.data["n"]) + 1

    with client:
        [event_id] = client.send({"name": "app/parent"})
        [child_event] = only_run(client, event_id).result(timeout=WAIT)
        assert only_run(client, child_event).result(timeout=WAIT) == 2


def test_concurrent_sends_are_each_all_or_nothing(db_path: Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)
    greeter(client)
    errors: list[BaseException] = []
    accepted: list[str] = []
    lock = threading.Lock()

    def sender(i: int) -> None:
        events: list[dict[str, Any]] = [{"name": "app/user.created", "data": {"name": f"u{i}"}}]
        if i % 5 == 0:
            events.append({"data": {"no": "name"}})  # spoils this send only
        try:
            ids = client.send(events)
        except steplog.EventError as error:
            with lock:
                errors.append(error)
            return
        with lock:
            accepted.extend(ids)

    with client:
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        client.run_until_idle(timeout=WAIT)
        assert len(errors) == 8 and all("has no name" in str(e) for e in errors)
        assert len(accepted) == 32
        assert sorted(e["internal_id"] for e in client.list_events(limit=None)) == sorted(accepted)
        assert len(client.list_runs(status="completed", limit=None)) == 32


def test_runs_for_event_agrees_with_the_store(db_path: Path, clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=db_path, clock=clock)
    greeter(client)
    with client:
        [first] = client.send({"name": "app/user.created", "data": {"name": "Ada"}, "id": "same"})
        [again] = client.send({"name": "app/user.created", "data": {"name": "Ada"}, "id": "same"})
        client.run_until_idle()
        remembered = {first: client.runs_for_event(first), again: client.runs_for_event(again)}
    assert len(remembered[first]) == 1 and remembered[again] == []  # a duplicate started nothing
    reopened = steplog.Steplog(db=db_path, clock=clock)  # nothing in memory: answers from the store
    greeter(reopened)
    with reopened:
        assert [h.run_id for h in reopened.runs_for_event(first)] == [h.run_id for h in remembered[first]]
        assert reopened.runs_for_event(again) == []
        assert reopened.runs_for_event(first)[0].result(timeout=WAIT) == "hello Ada"
