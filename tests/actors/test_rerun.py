"""``client.rerun(run_id)``: a new run of the same function with the same events, ready now.

A completed, failed, sleeping, waiting, skipped, batch or cron run can be rerun; the new run's
``run.scheduled`` entry records ``rerun_of``; the function's cancel rules apply to the new run;
an unknown run, or a run whose function is not defined now, raises RunNotFoundError; the
projections match the log afterwards. No test sleeps: time moves by ``advance``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import records as r

import steplog

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds


@pytest.fixture(params=["memory", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return ":memory:" if request.param == "memory" else str(tmp_path / "rerun.db")


def consistent(client: steplog.Steplog) -> None:
    assert client.rebuild_projections(apply=False) == []


def only_run(client: steplog.Steplog, event_id: str) -> steplog.RunHandle:
    [handle] = client.runs_for_event(event_id)
    return handle


def scheduled_entry(client: steplog.Steplog, run_id: str) -> dict[str, Any]:
    first = client.run_history(run_id).entries[0]
    assert first.type == r.RUN_SCHEDULED
    return dict(first.data)


def test_rerun_of_a_completed_run_completes_with_the_same_output(db: str) -> None:
    calls: list[dict[str, Any]] = []
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="total", trigger=steplog.TriggerEvent(event="app/order"))
    def total(ctx: steplog.Context) -> dict[str, Any]:
        calls.append(ctx.event.data)
        amount = ctx.step.run("sum", lambda: sum(ctx.event.data["items"]))
        return {"order": ctx.event.data["order"], "amount": amount, "event": ctx.event.id}

    with client:
        [event_id] = client.send({"name": "app/order", "id": "order-1", "data": {"order": 1, "items": [2, 3]}})
        original = only_run(client, event_id)
        output = original.result(timeout=WAIT)
        assert output == {"order": 1, "amount": 5, "event": "order-1"}

        client.advance(HOUR)
        new_run_id = client.rerun(original.run_id)
        assert new_run_id != original.run_id
        assert client.run(new_run_id).result(timeout=WAIT) == output
        assert calls == [{"order": 1, "items": [2, 3]}] * 2

        rerun = client.get_run(new_run_id)
        assert rerun["function_id"] == "total"
        assert rerun["status"] == "completed"
        assert rerun["event_id"] == client.get_run(original.run_id)["event_id"]
        assert rerun["scheduled_at"] > client.get_run(original.run_id)["scheduled_at"], "ready now, not then"
        entry = scheduled_entry(client, new_run_id)
        assert entry["rerun_of"] == original.run_id
        assert entry["events"] == scheduled_entry(client, original.run_id)["events"]
        assert "rerun_of" not in scheduled_entry(client, original.run_id)
        assert [step.step for step in client.run_history(new_run_id).steps] == ["sum"], "its steps run afresh"

        [sent] = client.list_events()
        assert sorted(sent["runs"]) == sorted([original.run_id, new_run_id])
        assert len(client.list_runs(function_id="total", status="completed", limit=None)) == 2
        consistent(client)


def test_rerun_of_a_rerun_names_the_run_it_reran(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="echo", trigger=steplog.TriggerEvent(event="app/echo"))
    def echo(ctx: steplog.Context) -> Any:
        return ctx.event.data

    with client:
        [event_id] = client.send({"name": "app/echo", "data": {"n": 1}})
        first = only_run(client, event_id).run_id
        second = client.rerun(first)
        third = client.rerun(second)
        client.run_until_idle()
        assert scheduled_entry(client, second)["rerun_of"] == first
        assert scheduled_entry(client, third)["rerun_of"] == second
        assert [client.run(run_id).result(timeout=WAIT) for run_id in (first, second, third)] == [{"n": 1}] * 3
        consistent(client)


def test_rerun_of_a_failed_run_runs_again(db: str) -> None:
    broken = {"yes": True}
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="fragile", trigger=steplog.TriggerEvent(event="app/try"))
    def fragile(ctx: steplog.Context) -> str:
        def attempt() -> str:
            if broken["yes"]:
                raise steplog.NonRetriableError("the disk is full")
            return f"done {ctx.event.data['n']}"

        return str(ctx.step.run("work", attempt))

    with client:
        [event_id] = client.send({"name": "app/try", "data": {"n": 4}})
        original = only_run(client, event_id)
        with pytest.raises(steplog.RunFailedError):
            original.result(timeout=WAIT)
        assert original.status == "failed"

        again = client.rerun(original.run_id)
        with pytest.raises(steplog.RunFailedError):
            client.run(again).result(timeout=WAIT)
        assert client.get_run(again)["error"]["message"].endswith("the disk is full")

        broken["yes"] = False
        fixed = client.rerun(original.run_id)
        assert client.run(fixed).result(timeout=WAIT) == "done 4"
        assert original.status == "failed", "the original run is left as it was"
        assert scheduled_entry(client, fixed)["rerun_of"] == original.run_id
        consistent(client)


def test_rerun_of_a_sleeping_run_makes_two_sleeping_runs(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="napper", trigger=steplog.TriggerEvent(event="app/nap"))
    def napper(ctx: steplog.Context) -> str:
        ctx.step.sleep("nap", "1h")
        return f"rested {ctx.event.data['who']}"

    with client:
        [event_id] = client.send({"name": "app/nap", "data": {"who": "ada"}})
        client.run_until_idle()
        original = only_run(client, event_id)
        assert original.status == "waiting"

        client.advance(timedelta(minutes=30))
        new_run_id = client.rerun(original.run_id)
        client.run_until_idle()
        assert original.status == "waiting"
        assert client.run(new_run_id).status == "waiting"
        assert client.next_timer() == START + HOUR

        client.advance(timedelta(minutes=30))
        assert original.result(timeout=WAIT) == "rested ada"
        assert client.run(new_run_id).status == "waiting", "the rerun sleeps its own hour"
        assert client.next_timer() == START + timedelta(minutes=90)

        client.advance(timedelta(minutes=30))
        assert client.run(new_run_id).result(timeout=WAIT) == "rested ada"
        consistent(client)


def test_rerun_of_a_waiting_run_makes_two_waiting_runs(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="approval", trigger=steplog.TriggerEvent(event="app/request"))
    def approval(ctx: steplog.Context) -> Any:
        answer = ctx.step.wait_for_event("answer", event="app/answer", timeout="1d", match="data.id")
        return None if answer is None else answer.data["verdict"]

    with client:
        [event_id] = client.send({"name": "app/request", "data": {"id": "r1"}})
        client.run_until_idle()
        original = only_run(client, event_id)
        assert original.status == "waiting"

        new_run_id = client.rerun(original.run_id)
        client.run_until_idle()
        assert client.run(new_run_id).status == "waiting"
        assert sorted(row["run_id"] for row in client.store.query("waits")) == sorted([original.run_id, new_run_id])

        client.send({"name": "app/answer", "data": {"id": "other", "verdict": "no"}})
        client.run_until_idle()
        assert {original.status, client.run(new_run_id).status} == {"waiting"}

        client.send({"name": "app/answer", "data": {"id": "r1", "verdict": "yes"}})
        assert original.result(timeout=WAIT) == "yes"
        assert client.run(new_run_id).result(timeout=WAIT) == "yes"
        consistent(client)


def test_unknown_run_id_raises_run_not_found(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="echo", trigger=steplog.TriggerEvent(event="app/echo"))
    def echo(ctx: steplog.Context) -> Any:
        return ctx.event.data

    with client:
        with pytest.raises(steplog.RunNotFoundError, match="no-such-run"):
            client.rerun("no-such-run")
        [event_id] = client.send({"name": "app/echo"})
        client.run_until_idle()
        with pytest.raises(steplog.RunNotFoundError):
            client.rerun(event_id)  # an event's id is not a run's
        assert len(client.list_runs(limit=None)) == 1
        consistent(client)


def test_rerun_needs_a_started_engine(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="echo", trigger=steplog.TriggerEvent(event="app/echo"))
    def echo(ctx: steplog.Context) -> Any:
        return ctx.event.data

    with pytest.raises(steplog.EngineStoppedError):
        client.rerun("anything")


def test_rerun_of_a_run_whose_function_is_gone_raises_run_not_found(tmp_path: Path) -> None:
    db = str(tmp_path / "rerun.db")
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="retired", trigger=steplog.TriggerEvent(event="app/old"))
    def retired(ctx: steplog.Context) -> str:
        return "old"

    with client:
        [event_id] = client.send({"name": "app/old"})
        run_id = only_run(client, event_id).run_id
        client.run_until_idle()

    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START + HOUR))

    @client.create_function(fn_id="current", trigger=steplog.TriggerEvent(event="app/new"))
    def current(ctx: steplog.Context) -> str:
        return "new"

    with client:
        with pytest.raises(steplog.RunNotFoundError, match="'retired'"):
            client.rerun(run_id)
        assert [row["run_id"] for row in client.list_runs(limit=None)] == [run_id]
        consistent(client)


def test_rerun_of_a_batch_run_reruns_it_with_all_its_events(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="batched", trigger=steplog.TriggerEvent(event="app/item"),
                            batch_events=steplog.Batch(max_size=3, timeout="1m"))
    def batched(ctx: steplog.Context) -> list[int]:
        return [event.data["n"] for event in ctx.events]

    with client:
        event_ids = client.send([{"name": "app/item", "data": {"n": n}} for n in (5, 6, 7)])
        client.run_until_idle()
        [batch_run] = client.list_runs(function_id="batched")
        assert batch_run["output"] == [5, 6, 7]

        new_run_id = client.rerun(batch_run["run_id"])
        assert client.run(new_run_id).result(timeout=WAIT) == [5, 6, 7]
        assert scheduled_entry(client, new_run_id)["event_ids"] == list(event_ids)
        assert len(client.list_runs(function_id="batched", limit=None)) == 2
        consistent(client)


def test_rerun_of_a_partial_batch_does_not_wait_for_the_batch_timeout(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="batched", trigger=steplog.TriggerEvent(event="app/item"),
                            batch_events=steplog.Batch(max_size=10, timeout="1m"))
    def batched(ctx: steplog.Context) -> list[int]:
        return [event.data["n"] for event in ctx.events]

    with client:
        client.send([{"name": "app/item", "data": {"n": n}} for n in (1, 2)])
        client.advance(timedelta(minutes=1))
        [batch_run] = client.list_runs(function_id="batched")
        assert batch_run["output"] == [1, 2]
        new_run_id = client.rerun(batch_run["run_id"])
        assert client.run(new_run_id).result(timeout=WAIT) == [1, 2]
        assert client.store.query("batched") == [], "the rerun holds nothing in a batch"
        consistent(client)


def test_cancel_rules_apply_to_the_rerun(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="trial", trigger=steplog.TriggerEvent(event="app/trial"),
                            cancel=[steplog.Cancel(event="app/unsubscribe", match="data.user")])
    def trial(ctx: steplog.Context) -> str:
        ctx.step.sleep("wait-a-week", "7d")
        return "reminded"

    with client:
        [ada] = client.send({"name": "app/trial", "data": {"user": "ada"}})
        [bob] = client.send({"name": "app/trial", "data": {"user": "bob"}})
        client.run_until_idle()
        ada_run, bob_run = only_run(client, ada), only_run(client, bob)
        client.advance(timedelta(days=7))
        assert ada_run.result(timeout=WAIT) == "reminded"
        assert bob_run.result(timeout=WAIT) == "reminded"

        ada_again = client.rerun(ada_run.run_id)
        bob_again = client.rerun(bob_run.run_id)
        client.run_until_idle()
        client.send({"name": "app/unsubscribe", "data": {"user": "ada"}})
        client.run_until_idle()
        assert client.run(ada_again).status == "cancelled"
        assert client.run(bob_again).status == "waiting"
        assert ada_run.status == "completed", "an ended run is not touched"

        client.advance(timedelta(days=7))
        assert client.run(bob_again).result(timeout=WAIT) == "reminded"
        assert client.store.query("waits") == []
        consistent(client)


def test_a_rerun_follows_singleton_while_the_key_is_active(db: str) -> None:
    """A rerun starts as any run of the function now: skipped while a run of its singleton key is
    active, started once that run ended."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="single", trigger=steplog.TriggerEvent(event="app/single"),
                            singleton=steplog.Singleton(mode="skip"))
    def single(ctx: steplog.Context) -> int:
        ctx.step.sleep("nap", "1h")
        return int(ctx.event.data["n"])

    with client:
        [first] = client.send({"name": "app/single", "data": {"n": 1}})
        [second] = client.send({"name": "app/single", "data": {"n": 2}})
        client.run_until_idle()
        skipped = only_run(client, second)
        assert skipped.status == "skipped"
        while_active = client.rerun(skipped.run_id)
        client.run_until_idle()
        assert client.run(while_active).status == "skipped"
        client.advance(HOUR)
        assert only_run(client, first).result(timeout=WAIT) == 1
        new_run_id = client.rerun(skipped.run_id)
        client.run_until_idle()
        assert client.run(new_run_id).status == "waiting"
        client.advance(HOUR)
        assert client.run(new_run_id).result(timeout=WAIT) == 2
        consistent(client)


def test_rerun_of_a_cron_run_leaves_the_schedule_alone(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="hourly", trigger=steplog.TriggerCron("0 * * * *"))
    def hourly(ctx: steplog.Context) -> str:
        return str(ctx.event.data["scheduledAt"])

    with client:
        client.advance(HOUR)
        [tick_run] = client.list_runs(function_id="hourly")
        crons = client.store.query("crons")
        new_run_id = client.rerun(tick_run["run_id"])
        assert client.run(new_run_id).result(timeout=WAIT) == tick_run["output"]
        assert client.store.query("crons") == crons
        assert client.next_timer() == START + 2 * HOUR
        assert len(client.list_events(name="inngest/scheduled.timer")) == 1
        client.advance(HOUR)
        assert len(client.list_runs(function_id="hourly", limit=None)) == 3
        consistent(client)


def test_a_rerun_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "rerun.db")

    def define(client: steplog.Steplog) -> None:
        @client.create_function(fn_id="napper", trigger=steplog.TriggerEvent(event="app/nap"))
        def napper(ctx: steplog.Context) -> str:
            ctx.step.sleep("nap", "1h")
            return f"rested {ctx.event.data['who']}"

    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client)
    with client:
        [event_id] = client.send({"name": "app/nap", "data": {"who": "ada"}})
        client.advance(HOUR)
        original = only_run(client, event_id).run_id
        new_run_id = client.rerun(original)
        client.run_until_idle()
        assert client.run(new_run_id).status == "waiting"

    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START + 3 * HOUR))
    define(client)
    with client:
        assert client.run(new_run_id).result(timeout=WAIT) == "rested ada"
        assert scheduled_entry(client, new_run_id)["rerun_of"] == original
        consistent(client)


def test_runs_for_event_tells_the_same_before_and_after_a_restart(tmp_path: Path) -> None:
    """Whether a rerun counts among the runs of its event, the answer must not depend on the
    client's cache of recent sends (which a restart empties)."""
    db = str(tmp_path / "rerun.db")

    def define(client: steplog.Steplog) -> None:
        @client.create_function(fn_id="echo", trigger=steplog.TriggerEvent(event="app/echo"))
        def echo(ctx: steplog.Context) -> Any:
            return ctx.event.data

    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client)
    with client:
        [event_id] = client.send({"name": "app/echo", "data": {"n": 1}})
        client.rerun(only_run(client, event_id).run_id)
        client.run_until_idle()
        before = sorted(handle.run_id for handle in client.runs_for_event(event_id))

    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client)
    with client:
        after = sorted(handle.run_id for handle in client.runs_for_event(event_id))
        listed = sorted(row["run_id"] for row in client.list_runs(event_id=event_id))
    assert before == after == listed
