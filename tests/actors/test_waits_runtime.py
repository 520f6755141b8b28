"""Waits, invokes, cancellation and timeouts on the threaded client, ``steplog.Steplog``, with a
manual clock: a wait resolves on a later send and times out exactly at its deadline, one event
resumes many runs, a wait survives a restart of the client; invoke returns the output of a child
that sleeps; cancel by event, by API (while a step body runs, too), in bulk with filters;
timeouts; on_failure.

No test sleeps: waiting is ``run_until_idle``, ``advance``, ``RunHandle.result(timeout=...)`` and
``threading.Event.wait(timeout=...)`` for a step body that is running.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import records as r

import steplog

WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
GO = "app/go"
PAID = "app/paid"
ORDER = "app/order"
CANCEL = "app/order.cancelled"


def waiter(client: steplog.Steplog, kind: str = "def") -> None:
    """``waiter``: waits up to 1h for ``app/paid`` with the trigger's ``data.k``; returns its data or None."""
    if kind == "def":
        @client.create_function(fn_id="waiter", trigger=steplog.TriggerEvent(event=GO))
        def sync_waiter(ctx: steplog.Context) -> dict[str, Any] | None:
            event = ctx.step.wait_for_event("w", event=PAID, timeout="1h", match="data.k")
            return None if event is None else {"id": event.id, **event.data}

        return

    @client.create_function(fn_id="waiter", trigger=steplog.TriggerEvent(event=GO))
    async def async_waiter(ctx: steplog.Context) -> dict[str, Any] | None:
        event = await ctx.step.wait_for_event("w", event=PAID, timeout="1h", match="data.k")
        return None if event is None else {"id": event.id, **event.data}


def order(client: steplog.Steplog, calls: Counter[str], fn_id: str = "order", trigger: str = ORDER,
          nap: str = "1d", **options: Any) -> None:
    """Runs "a", sleeps ``nap``, runs "b"; ``calls`` counts the step bodies."""

    def body(name: str) -> Callable[[], str]:
        def run() -> str:
            calls[name] += 1
            return name

        return run

    @client.create_function(fn_id=fn_id, trigger=steplog.TriggerEvent(event=trigger), **options)
    def handler(ctx: steplog.Context) -> str:
        ctx.step.run("a", body("a"))
        ctx.step.sleep("nap", nap)
        ctx.step.run("b", body("b"))
        return "done"


def only_run(client: steplog.Steplog, event_id: str) -> steplog.RunHandle:
    [handle] = client.runs_for_event(event_id)
    return handle


def start(client: steplog.Steplog, name: str = GO, **data: Any) -> steplog.RunHandle:
    [event_id] = client.send({"name": name, "data": data})
    return only_run(client, event_id)


def ended_as(handle: steplog.RunHandle) -> tuple[str, dict[str, Any]]:
    """(status, error) of a run that ended without completing."""
    with pytest.raises(steplog.RunFailedError) as raised:
        handle.result(timeout=WAIT)
    return raised.value.status, raised.value.error


def consistent(client: steplog.Steplog) -> None:
    assert client.rebuild_projections(apply=False) == []


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture(params=["file", "memory"])
def db(request: pytest.FixtureRequest, db_path: Path) -> str | Path:
    return db_path if request.param == "file" else ":memory:"


# -- waits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_wait_resolves_on_a_later_send_and_times_out_exactly_at_its_deadline(
    db: str | Path, clock: steplog.ManualClock, kind: str
) -> None:
    client = steplog.Steplog(db=db, clock=clock)
    waiter(client, kind)
    with client:
        paid_one = start(client, k=1)
        unpaid = start(client, k=2)
        assert client.run_until_idle(timeout=WAIT)
        assert (paid_one.status, unpaid.status) == ("waiting", "waiting")
        assert len(client.store.query("waits")) == 2
        assert client.next_timer() == START + HOUR

        [event_id] = client.send({"name": PAID, "data": {"k": 1, "amount": 5}})
        assert paid_one.result(timeout=WAIT) == {"id": event_id, "k": 1, "amount": 5}
        assert unpaid.status == "waiting"

        client.advance(HOUR - TICK)
        assert unpaid.status == "waiting"
        client.advance(TICK)
        assert unpaid.result(timeout=WAIT) is None
        assert client.next_timer() is None

        client.advance(HOUR)  # the resolved wait's old deadline wakes nothing
        for handle in (paid_one, unpaid):
            types = [e.type for e in client.run_history(handle.run_id).entries]
            assert types.count(r.STEP_WAITING) == 1 and types.count(r.RUN_RESUMED) == 1
        assert client.store.query("waits") == [] and client.store.query("timers") == []
        consistent(client)


def test_one_event_resumes_many_waiting_runs(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock, max_workers=2)
    waiter(client)
    with client:
        handles = [start(client, k="same") for _ in range(6)]
        other = start(client, k="other")
        assert client.run_until_idle(timeout=WAIT)
        [event_id] = client.send({"name": PAID, "data": {"k": "same"}})
        assert [h.result(timeout=WAIT)["id"] for h in handles] == [event_id] * 6
        assert client.run_until_idle(timeout=WAIT)
        assert other.status == "waiting"
        assert [row["run_id"] for row in client.store.query("waits")] == [other.run_id]
        consistent(client)


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_wait_survives_a_restart_of_the_client(db_path: Path, clock: steplog.ManualClock, kind: str) -> None:
    first = steplog.Steplog(db=db_path, clock=clock)
    waiter(first, kind)
    with first:
        run_id = start(first, k=1).run_id
        assert first.run_until_idle(timeout=WAIT)
    clock.advance(timedelta(minutes=30))

    second = steplog.Steplog(db=db_path, clock=clock)
    waiter(second, kind)
    with second:
        handle = second.run(run_id)
        assert second.run_until_idle(timeout=WAIT)
        assert handle.status == "waiting"
        assert second.next_timer() == START + HOUR
        second.send({"name": PAID, "data": {"k": 2}})
        [event_id] = second.send({"name": PAID, "data": {"k": 1}})
        assert handle.result(timeout=WAIT) == {"id": event_id, "k": 1}
        consistent(second)


def test_a_bad_wait_fails_the_run_at_once(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock)

    @client.create_function(fn_id="bad", trigger=steplog.TriggerEvent(event=GO))
    def bad(ctx: steplog.Context) -> Any:
        return ctx.step.wait_for_event("w", event="app/*", timeout="1h")

    with client:
        status, error = ended_as(start(client))
        assert status == "failed" and error["name"] == "WaitError"
        assert client.store.query("waits") == [] and client.next_timer() is None
        consistent(client)


# -- invoke ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_invoke_returns_the_output_of_a_child_that_sleeps(
    db: str | Path, clock: steplog.ManualClock, kind: str
) -> None:
    client = steplog.Steplog(db=db, clock=clock)

    @client.create_function(fn_id="child", trigger=steplog.TriggerEvent(event="app/never"))
    def child(ctx: steplog.Context) -> int:
        ctx.step.sleep("nap", "1h")
        return int(ctx.event.data["n"]) * 2

    if kind == "def":
        @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event=GO))
        def parent(ctx: steplog.Context) -> Any:
            return ctx.step.invoke("call", function=child, data={"n": ctx.event.data["n"]})
    else:
        @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event=GO))
        async def parent(ctx: steplog.Context) -> Any:
            return await ctx.step.invoke("call", function=child, data={"n": ctx.event.data["n"]})

    with client:
        handle = start(client, n=21)
        assert client.run_until_idle(timeout=WAIT)
        assert handle.status == "waiting"
        [kid] = client.list_runs(function_id="child")
        assert kid["status"] == "waiting"
        client.advance(HOUR - TICK)
        assert handle.status == "waiting"
        client.advance(TICK)
        assert handle.result(timeout=WAIT) == 42
        assert client.get_run(kid["run_id"])["output"] == 42
        consistent(client)


def test_invoke_failure_and_timeout_raise_step_error_in_the_parent(clock: steplog.ManualClock) -> None:
    client = steplog.Steplog(db=":memory:", clock=clock)

    @client.create_function(fn_id="child", trigger=steplog.TriggerEvent(event="app/never"), retries=0)
    def child(ctx: steplog.Context) -> str:
        if ctx.event.data.get("fail"):
            raise ValueError("child broke")
        ctx.step.sleep("nap", "2h")
        return "late"

    @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event=GO))
    def parent(ctx: steplog.Context) -> list[str]:
        try:
            ctx.step.invoke("call", function="child", data=dict(ctx.event.data), timeout="1h")
        except steplog.StepError as error:
            return [error.name, error.message]
        return ["no error"]

    with client:
        failing, slow = start(client, fail=True), start(client, fail=False)
        assert client.run_until_idle(timeout=WAIT)  # every run has begun before the clock moves
        assert failing.result(timeout=WAIT) == ["ValueError", "child broke"]
        assert slow.status == "waiting"
        client.advance(HOUR)
        assert slow.result(timeout=WAIT) == [
            "InngestInvokeTimeoutError", "Timed out waiting for invoked function to complete"
        ]
        client.advance(HOUR)
        assert sorted(run["status"] for run in client.list_runs(function_id="child")) == ["completed", "failed"]
        consistent(client)


# -- cancellation -----------------------------------------------------------------------------------------------


def test_a_cancel_while_a_step_body_runs_lets_it_commit_then_no_step_runs(clock: steplog.ManualClock) -> None:
    entered, release = threading.Event(), threading.Event()
    calls = Counter[str]()
    client = steplog.Steplog(db=":memory:", clock=clock)

    @client.create_function(fn_id="slow", trigger=steplog.TriggerEvent(event=GO))
    def slow(ctx: steplog.Context) -> str:
        def a() -> str:
            calls["a"] += 1
            entered.set()
            assert release.wait(WAIT)
            return "a finished"

        ctx.step.run("a", a)
        ctx.step.run("b", lambda: calls.update(["b"]))
        return "done"

    with client:
        handle = start(client)
        assert entered.wait(WAIT)
        assert client.cancel(handle.run_id, reason="mid-step") is True
        assert handle.status in ("queued", "running")  # the body is still running: nothing ended
        release.set()
        status, error = ended_as(handle)
        assert status == "cancelled" and error["message"] == "run cancelled: mid-step"
        assert calls == {"a": 1}
        history = client.run_history(handle.run_id)
        assert [(s.step, s.status, s.output) for s in history.steps] == [("a", "completed", "a finished")]
        assert history.run["status"] == "cancelled"
        assert client.cancel(handle.run_id) is False
        consistent(client)


def test_a_cancel_event_cancels_the_matching_run_only(db: str | Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)
    order(client, calls, nap="1h", cancel=[steplog.Cancel(event=CANCEL, match="data.order_id")])
    with client:
        doomed, spared = start(client, ORDER, order_id="o1"), start(client, ORDER, order_id="o2")
        assert client.run_until_idle(timeout=WAIT)
        client.send({"name": CANCEL, "data": {"order_id": "o1"}})
        status, error = ended_as(doomed)
        assert status == "cancelled" and error["name"] == "RunCancelled" and CANCEL in error["message"]
        client.advance(HOUR)
        assert spared.result(timeout=WAIT) == "done"
        assert calls == {"a": 2, "b": 1}
        assert client.store.query("waits") == []
        consistent(client)


def test_cancel_through_the_api(clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=":memory:", clock=clock)
    order(client, calls)
    with client:
        sleeping = start(client, ORDER)
        assert client.run_until_idle(timeout=WAIT)
        assert client.cancel(sleeping.run_id, reason="changed my mind") is True
        status, error = ended_as(sleeping)
        assert status == "cancelled" and error["message"] == "run cancelled: changed my mind"
        assert client.cancel(sleeping.run_id) is False
        with pytest.raises(steplog.RunNotFoundError):
            client.cancel("01NOSUCHRUN0000000000000000")
        client.advance(timedelta(days=2))
        assert calls == {"a": 1}
        assert client.store.query("timers") == []
        consistent(client)


def test_cancel_runs_cancels_the_runs_its_filters_select(clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=":memory:", clock=clock)
    order(client, calls)
    order(client, calls, fn_id="other", trigger="app/other")
    with client:
        runs = [start(client, ORDER, n=0)]
        client.advance(timedelta(minutes=10))
        runs.append(start(client, ORDER, n=1))
        client.advance(timedelta(minutes=10))
        runs.append(start(client, ORDER, n=2))
        [delayed_id] = client.send({"name": ORDER, "data": {"n": 3}, "ts": millis(clock.now() + HOUR)})
        runs.append(only_run(client, delayed_id))
        bystander = start(client, "app/other", n=2)
        assert client.run_until_idle(timeout=WAIT)
        assert [h.status for h in runs] == ["waiting", "waiting", "waiting", "queued"]
        ids = [h.run_id for h in runs]

        def cancelled(**filters: Any) -> list[str]:
            found = client.cancel_runs(function_id="order", **filters)
            assert client.run_until_idle(timeout=WAIT)
            return found

        assert cancelled(status="queued") == [ids[3]]
        assert runs[3].status == "cancelled"
        assert cancelled(status="running") == []
        assert cancelled(if_exp="event.data.n >= 2") == [ids[2]]
        assert cancelled(since=START + timedelta(minutes=5), until=START + timedelta(minutes=15)) == [ids[1]]
        assert cancelled() == [ids[0]]
        assert cancelled() == []
        assert [h.status for h in runs] == ["cancelled"] * 4
        assert bystander.status == "waiting"
        with pytest.raises(ValueError, match="status"):
            client.cancel_runs(function_id="order", status="completed")
        with pytest.raises(ValueError, match="if_exp"):
            client.cancel_runs(function_id="order", if_exp="event.data.(")
        assert calls == {"a": 4}
        consistent(client)


# -- timeouts and on_failure --------------------------------------------------------------------------------------


def test_timeouts_finish_cancels_a_sleeping_run_at_the_deadline(db: str | Path, clock: steplog.ManualClock) -> None:
    calls = Counter[str]()
    client = steplog.Steplog(db=db, clock=clock)
    order(client, calls, nap="2h", timeouts=steplog.Timeouts(finish="1h"))
    with client:
        handle = start(client, ORDER)
        assert client.run_until_idle(timeout=WAIT)
        assert client.next_timer() == START + HOUR
        client.advance(HOUR - TICK)
        assert handle.status == "waiting"
        client.advance(TICK)
        status, error = ended_as(handle)
        assert status == "cancelled" and "timeouts.finish" in error["message"]
        client.advance(2 * HOUR)
        assert calls == {"a": 1}
        consistent(client)


def test_timeouts_start_cancels_a_run_that_waited_too_long_for_a_slot(clock: steplog.ManualClock) -> None:
    entered, release = threading.Event(), threading.Event()
    client = steplog.Steplog(db=":memory:", clock=clock, max_active_runs=1)

    @client.create_function(fn_id="slow", trigger=steplog.TriggerEvent(event=GO),
                            timeouts=steplog.Timeouts(start="10m"))
    def slow(ctx: steplog.Context) -> str:
        def hold() -> str:
            entered.set()
            assert release.wait(WAIT)
            return "held"

        return str(ctx.step.run("hold", hold)) if ctx.event.data["first"] else "second ran"

    with client:
        first = start(client, first=True)
        assert entered.wait(WAIT)
        second = start(client, first=False)
        assert second.status == "queued"
        client.advance(timedelta(minutes=10) + TICK, wait=False)
        release.set()
        assert first.result(timeout=WAIT) == "held"
        status, error = ended_as(second)
        assert status == "cancelled" and "timeouts.start" in error["message"]
        assert second.info()["started_at"] is None
        consistent(client)


def test_on_failure_runs_once_with_the_failed_run(clock: steplog.ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    client = steplog.Steplog(db=":memory:", clock=clock)

    def on_failure(ctx: steplog.Context) -> None:
        seen.append(ctx.event.to_dict())

    @client.create_function(fn_id="fragile", trigger=steplog.TriggerEvent(event=GO), retries=0,
                            on_failure=on_failure)
    def fragile(ctx: steplog.Context) -> None:
        if ctx.event.data["fail"]:
            raise RuntimeError("fragile broke")
        ctx.step.sleep("nap", "1h")

    with client:
        broken, cancelled = start(client, fail=True), start(client, fail=False)
        assert ended_as(broken)[0] == "failed"
        assert client.run_until_idle(timeout=WAIT)
        assert client.cancel(cancelled.run_id)
        assert ended_as(cancelled)[0] == "cancelled"
        assert client.run_until_idle(timeout=WAIT)
        [event] = seen
        assert event["name"] == "inngest/function.failed" and event["id"] == broken.run_id
        assert event["data"]["function_id"] == "fragile" and event["data"]["run_id"] == broken.run_id
        assert event["data"]["error"]["message"] == "fragile broke"
        assert event["data"]["event"]["data"] == {"fail": True}
        [handler_run] = client.list_runs(function_id="fragile-failure")
        assert handler_run["status"] == "completed"
        consistent(client)
