"""steplog.testing.TestEngine and TestRun: the engine on virtual time, driven by the test.

Construction (what it accepts and refuses), driving (send, run_until_idle, advance, advance_to,
advance_to_next_timer, settle, trigger, invoke, cancel), reading (runs, runs_for, events, run),
crash() on both stores (memory dropped, log kept: acknowledged events, sleeps, waits and flow
control carry on), the determinism check on every run that ends, and TestRun's properties and
assertions (whose failures show the run's timeline).

Time only moves through the engine's ManualClock; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import FunctionNotFoundError, define_function

import steplog
from steplog.testing import DEFAULT_START, NondeterministicRunError, TestEngine, TestRun

TICK = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
GO = steplog.TriggerEvent(event="app/go")
NO_JITTER = steplog.RetryPolicy.fixed(3, "10s")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_client() -> steplog.Steplog:
    """A client used only to define functions: never started, so it opens no database."""
    return steplog.Steplog(app_id="test", db=":memory:")


def napper(client: steplog.Steplog, fn_id: str = "napper", nap: str = "1h") -> list[Any]:
    """A function that takes a step, sleeps ``nap``, then takes another; returns its ledger of bodies run."""
    ledger: list[Any] = []

    @client.create_function(fn_id=fn_id, trigger=GO, retries=NO_JITTER)
    def handler(ctx: steplog.Context) -> dict[str, Any]:
        before = ctx.step.run("before", lambda: ledger.append("before") or ctx.event.data.get("n", 0))
        ctx.step.sleep("nap", nap)
        after = ctx.step.run("after", lambda: ledger.append("after") or before + 1)
        return {"before": before, "after": after}

    return ledger


def waiter(client: steplog.Steplog) -> None:
    @client.create_function(fn_id="waiter", trigger=GO)
    def handler(ctx: steplog.Context) -> Any:
        reply = ctx.step.wait_for_event("reply", event="app/reply", match="data.id", timeout="1d")
        return None if reply is None else reply.data["answer"]


# -- construction ------------------------------------------------------------------------------


def test_an_unknown_store_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'postgres'"):
        TestEngine(store="postgres")  # type: ignore[arg-type]


def test_clock_and_start_together_are_refused() -> None:
    clock = steplog.ManualClock(datetime(2031, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="clock= or start="):
        TestEngine(clock=clock, start=datetime(2032, 1, 1, tzinfo=UTC))


def test_the_clock_starts_at_a_fixed_time_unless_told(store: str) -> None:
    with TestEngine(store=store) as engine:
        assert engine.now == DEFAULT_START
    start = datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
    with TestEngine(store=store, start=start) as engine:
        assert engine.now == start


def test_a_given_clock_is_the_engines_clock(store: str) -> None:
    clock = steplog.ManualClock(datetime(2031, 1, 1, tzinfo=UTC))
    with TestEngine(store=store, clock=clock) as engine:
        assert engine.clock is clock
        engine.advance("5m")
        assert clock.now() == datetime(2031, 1, 1, 0, 5, tzinfo=UTC)


def test_a_steplog_client_is_accepted_and_never_started(tmp_path: Path, store: str) -> None:
    client = steplog.Steplog(app_id="shop", db=tmp_path / "shop.db")

    @client.create_function(fn_id="hello", trigger=GO)
    def hello(ctx: steplog.Context) -> str:
        return ctx.step.run("greet", lambda: f"hello {ctx.event.data['who']}")

    with TestEngine(client, store=store) as engine:
        engine.trigger("app/go", {"who": "ada"}).assert_completed("hello ada")
    assert not (tmp_path / "shop.db").exists()  # the client's own database was never opened


def test_a_function_def_with_a_failure_handler_brings_the_handler(store: str) -> None:
    notified: list[str] = []
    failing = define_function(
        lambda ctx: (_ for _ in ()).throw(steplog.NonRetriableError("broke")), fn_id="fragile", trigger=GO,
        on_failure=lambda ctx: ctx.step.run("notify", lambda: notified.append(ctx.event.data["error"]["message"])),
    )
    with TestEngine(failing, store=store) as engine:
        engine.trigger("app/go").assert_failed(message="broke")
        [handler_run] = engine.runs("fragile-failure")
        handler_run.assert_completed()
        assert notified == ["broke"]


def test_a_client_with_an_on_failure_handler_is_accepted(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="fragile", trigger=GO, retries=0, on_failure=lambda ctx: "noted")
    def fragile(ctx: steplog.Context) -> None:
        raise steplog.NonRetriableError("broke")

    with TestEngine(client, store=store) as engine:
        engine.trigger("app/go").assert_failed(message="broke")
        engine.runs("fragile-failure")[0].assert_completed("noted")


def test_function_defs_are_accepted_one_by_one_and_in_nested_lists(store: str) -> None:
    defs = [
        define_function(lambda ctx, n=n: n, fn_id=f"f{n}", trigger=steplog.TriggerEvent(event=f"app/f{n}"))
        for n in range(3)
    ]
    with TestEngine(defs[0], [defs[1], [defs[2]]], store=store) as engine:
        assert sorted(f.id for f in engine.registry.all()) == ["f0", "f1", "f2"]
        assert engine.trigger("app/f2").output == 2


@pytest.mark.parametrize("bad", [42, "checkout", {"fn_id": "x"}, None])
def test_a_bad_item_is_a_type_error_naming_it(bad: Any) -> None:
    client = new_client()
    napper(client)
    with pytest.raises(TypeError, match=repr(bad).replace("{", r"\{").replace("}", r"\}")):
        TestEngine(client, [bad])


def test_add_registers_more_functions(store: str) -> None:
    early = define_function(lambda ctx: "early", fn_id="early", trigger=steplog.TriggerEvent(event="app/early"))
    late = define_function(lambda ctx: "late", fn_id="late", trigger=steplog.TriggerEvent(event="app/late"))
    with TestEngine(early, store=store) as engine:
        engine.add([late])
        engine.trigger("app/late").assert_completed("late")
        with pytest.raises(TypeError, match="3.5"):
            engine.add(3.5)


def test_add_to_an_engine_built_without_functions(store: str) -> None:
    late = define_function(lambda ctx: "late", fn_id="late", trigger=steplog.TriggerEvent(event="app/late"))
    with TestEngine(store=store) as engine:
        engine.add(late)
        engine.trigger("app/late").assert_completed("late")


# -- driving -----------------------------------------------------------------------------------


def test_send_queues_runs_and_run_until_idle_runs_them(store: str) -> None:
    client = new_client()
    ledger = napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        [event_id] = engine.send({"name": "app/go", "data": {"n": 4}})
        [run] = engine.runs_for(event_id)
        assert run.status == "queued"
        assert ledger == []
        assert engine.run_until_idle() >= 1
        run.assert_completed({"before": 4, "after": 5})
        assert engine.run_until_idle() == 0  # nothing left to run


def test_send_takes_a_list_and_returns_an_id_for_each(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        ids = engine.send([{"name": "app/go"}, {"name": "app/go", "id": "mine"}, {"name": "app/other"}])
        assert len(set(ids)) == 3
        engine.run_until_idle()
        assert len(engine.runs("napper")) == 2
        assert [run.run_id for run in engine.runs_for("mine")] == [run.run_id for run in engine.runs_for(ids[1])]
        assert engine.runs_for(ids[2]) == []


def test_a_bad_event_raises_and_nothing_of_the_send_is_accepted(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        with pytest.raises(steplog.EventError):
            engine.send([{"name": "app/go"}, {"data": {"no": "name"}}])
        engine.run_until_idle()
        assert engine.events() == []
        assert engine.runs() == []


def test_advance_runs_what_became_due_and_nothing_before(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.advance("59m")
        run.assert_waiting()
        engine.advance(timedelta(minutes=1))
        run.assert_completed()
        assert engine.now == DEFAULT_START + HOUR


def test_advance_refuses_a_negative_duration(store: str) -> None:
    with TestEngine(store=store) as engine:
        with pytest.raises(ValueError, match="advance"):
            engine.advance(-1)
        assert engine.now == DEFAULT_START


def test_advance_to_moves_to_the_moment_and_never_back(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.advance_to(DEFAULT_START + HOUR - TICK)
        run.assert_waiting()
        engine.advance_to(DEFAULT_START + HOUR)
        run.assert_completed()
        with pytest.raises(ValueError, match="cannot go back"):
            engine.advance_to(DEFAULT_START)
        assert engine.now == DEFAULT_START + HOUR


def test_advance_to_next_timer_lands_exactly_on_the_timer_never_early(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        due = engine.next_timer()
        assert due == DEFAULT_START + HOUR
        engine.advance_to(due - TICK)  # one microsecond before: nothing happens
        run.assert_waiting().assert_no_step("after")
        assert engine.advance_to_next_timer() == due
        assert engine.now == due
        run.assert_completed().assert_step("after", output=1)


def test_advance_to_next_timer_without_timers_returns_none_and_keeps_the_clock(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        engine.trigger("app/go").assert_completed()
        assert engine.next_timer() is None
        assert engine.advance_to_next_timer() is None
        assert engine.now == DEFAULT_START


def test_settle_goes_through_every_retry_and_sleep(store: str) -> None:
    client = new_client()
    tries: list[int] = []

    @client.create_function(fn_id="flaky", trigger=GO)  # default retries: backoff with random jitter
    def flaky(ctx: steplog.Context) -> str:
        def body() -> str:
            tries.append(1)
            if len(tries) < 4:
                raise RuntimeError("not yet")
            return "done"

        value = ctx.step.run("call", body)
        ctx.step.sleep("rest", "3d")
        return value

    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        end = engine.settle()
        run.assert_completed("done").assert_step("call", attempts=4)
        assert end == engine.now > DEFAULT_START + timedelta(days=3)
        assert engine.next_timer() is None


def test_settle_stops_before_timers_beyond_within(store: str) -> None:
    client = new_client()
    napper(client, nap="10d")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        assert engine.settle(within="1d") == DEFAULT_START
        run.assert_waiting()
        engine.settle()
        run.assert_completed()
        assert engine.now == DEFAULT_START + timedelta(days=10)


def test_settle_does_not_follow_a_cron_alone_but_fires_its_ticks_on_the_way(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="tick", trigger=steplog.TriggerCron(cron="*/10 * * * *"))
    def tick(ctx: steplog.Context) -> int:
        return 1

    napper(client, nap="1h")
    with TestEngine(client, store=store) as engine:
        assert engine.settle() == DEFAULT_START  # only cron ticks are due: nothing to settle
        assert engine.runs("tick") == []
        engine.trigger("app/go")  # a run sleeping an hour
        assert engine.settle() == DEFAULT_START + HOUR
        assert len(engine.runs("tick", status="completed")) == 6  # 00:10 ... 01:00, each at its time
        assert engine.next_timer() == DEFAULT_START + timedelta(minutes=70)


def test_trigger_returns_the_one_run_the_event_started(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"n": 2})
        assert isinstance(run, TestRun)
        assert run.function_id == "napper"
        run.assert_completed({"before": 2, "after": 3})


def test_trigger_that_starts_no_run_names_the_event_and_the_functions(store: str) -> None:
    client = new_client()
    napper(client)
    nothing = r"'app/nothing' started 0 runs \(none\).*'napper'"
    with TestEngine(client, store=store) as engine, pytest.raises(AssertionError, match=nothing):
        engine.trigger("app/nothing")
    with TestEngine(store=store) as empty, pytest.raises(AssertionError, match="none registered"):
        empty.trigger("app/go")


def test_trigger_that_starts_two_runs_names_both_functions(store: str) -> None:
    client = new_client()
    napper(client, "first")
    napper(client, "second")
    with TestEngine(client, store=store) as engine, pytest.raises(AssertionError, match="started 2 runs") as caught:
        engine.trigger("app/go")
    assert "'first'" in str(caught.value) and "'second'" in str(caught.value)


def test_trigger_passes_other_event_fields(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"n": 1}, id="order-1")
        assert engine.runs_for("order-1") and engine.runs_for("order-1")[0].run_id == run.run_id
        with pytest.raises(AssertionError, match="started 0 runs"):  # the same id again: a duplicate
            engine.trigger("app/go", {"n": 1}, id="order-1")


def test_invoke_runs_a_function_whatever_its_triggers(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="report", trigger=steplog.TriggerCron(cron="0 0 1 1 *"))
    def report(ctx: steplog.Context) -> Any:
        return ctx.step.run("sum", lambda: sum(ctx.event.data["values"]))

    with TestEngine(client, store=store) as engine:
        run = engine.invoke("report", {"values": [1, 2, 3]})
        run.assert_completed(6)
        assert [r.run_id for r in engine.runs("report")] == [run.run_id]


def test_invoke_of_an_unknown_function_is_function_not_found(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine, pytest.raises(FunctionNotFoundError, match="'nope'"):
        engine.invoke("nope")


def test_cancel_stops_a_sleeping_run_and_is_false_for_an_ended_one(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        assert engine.cancel(run.run_id, "the test had enough") is True
        run.assert_cancelled("the test had enough").assert_no_step("after")
        assert engine.next_timer() is None  # its timer is released
        engine.advance("2h")
        run.assert_cancelled()
        assert engine.cancel(run.run_id) is False


def test_runs_filters_by_function_and_status(store: str) -> None:
    client = new_client()
    napper(client, "a", nap="1h")
    napper(client, "b", nap="0s")
    with TestEngine(client, store=store) as engine:
        engine.send({"name": "app/go"})
        engine.run_until_idle()
        assert [run.function_id for run in engine.runs("a")] == ["a"]
        assert [run.function_id for run in engine.runs(status="completed")] == ["b"]
        assert [run.function_id for run in engine.runs(status="waiting")] == ["a"]
        assert engine.runs("a", status="completed") == []
        assert len(engine.runs()) == 2


def test_runs_are_listed_oldest_first_across_time(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        ids = []
        for n in range(5):
            ids.append(engine.trigger("app/go", {"n": n}).run_id)
            engine.advance("1s")
        assert [run.run_id for run in engine.runs()] == ids


def test_runs_scheduled_at_the_same_instant_are_listed_in_the_order_they_were_sent(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        ids = [engine.trigger("app/go", {"n": n}).run_id for n in range(20)]  # the clock stands still
        assert [run.run_id for run in engine.runs()] == ids


def test_runs_for_finds_the_runs_of_an_event_by_either_id(store: str) -> None:
    client = new_client()
    napper(client, "a", nap="0s")
    napper(client, "b", nap="0s")
    with TestEngine(client, store=store) as engine:
        [given] = engine.send({"name": "app/go", "id": "given-id"})
        [other] = engine.send({"name": "app/go"})
        engine.run_until_idle()
        assert sorted(run.function_id for run in engine.runs_for(given)) == ["a", "b"]
        mine = {run.run_id for run in engine.runs_for(given)}
        theirs = {run.run_id for run in engine.runs_for(other)}
        assert len(mine) == len(theirs) == 2 and not mine & theirs
        assert engine.runs_for("no-such-event") == []


def test_events_lists_received_events_oldest_first_with_their_runs(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        first = engine.trigger("app/go", {"n": 1})
        engine.send({"name": "app/unheard", "data": {"n": 2}})
        events = engine.events()
        assert [e["name"] for e in events] == ["app/go", "app/unheard"]
        assert events[0]["runs"] == [first.run_id] and events[1]["runs"] == []
        assert [e["data"] for e in engine.events("app/unheard")] == [{"n": 2}]


def test_run_of_an_unknown_id_is_run_not_found(store: str) -> None:
    with TestEngine(store=store) as engine, pytest.raises(steplog.RunNotFoundError):
        engine.run("01NOSUCHRUN")


def test_close_removes_the_temporary_database() -> None:
    engine = TestEngine(store="sqlite")
    assert engine.path is not None and engine.path.exists()
    engine.close()
    assert not engine.path.exists()


def test_a_given_path_is_kept(tmp_path: Path) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, path=tmp_path / "kept.db") as engine:
        engine.trigger("app/go").assert_completed()
    assert (tmp_path / "kept.db").exists()


# -- crash() -----------------------------------------------------------------------------------


def test_crash_keeps_the_log_and_replays_without_rerunning_steps(store: str) -> None:
    client = new_client()
    ledger = napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"n": 1})
        engine.crash()
        assert engine.crashes == 1
        run.assert_waiting().assert_step("before", output=1)
        engine.advance("1h")
        run.assert_completed({"before": 1, "after": 2})
        assert ledger == ["before", "after"]  # "before" was not run again after the crash


def test_crash_drops_what_was_only_in_memory(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        engine.trigger("app/go")
        old_store, old_engine = engine.store, engine.engine
        engine.crash()
        assert engine.store is not old_store and engine.engine is not old_engine
        assert engine.engine.coordinator is not old_engine.coordinator


def test_an_acknowledged_event_still_starts_its_run_after_a_crash(store: str) -> None:
    client = new_client()
    ledger = napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        [event_id] = engine.send({"name": "app/go", "data": {"n": 7}})  # acknowledged, never run
        engine.crash()
        assert ledger == []
        engine.run_until_idle()
        [run] = engine.runs_for(event_id)
        run.assert_completed({"before": 7, "after": 8})


def test_several_acknowledged_events_all_start_after_a_crash(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    with TestEngine(client, store=store) as engine:
        ids = engine.send([{"name": "app/go", "data": {"n": n}} for n in range(3)])
        engine.crash()
        engine.run_until_idle()
        assert sorted(engine.runs_for(i)[0].output["before"] for i in ids) == [0, 1, 2]


def test_a_sleeping_run_wakes_after_a_crash_exactly_on_time(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.crash()
        assert engine.next_timer() == DEFAULT_START + HOUR
        engine.advance_to(DEFAULT_START + HOUR - TICK)
        run.assert_waiting()
        engine.advance(TICK)
        run.assert_completed()


def test_downtime_moves_the_clock(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.crash(downtime="20m")
        assert engine.now == DEFAULT_START + timedelta(minutes=20)
        run.assert_waiting()
        engine.advance("40m")
        run.assert_completed()


def test_a_timer_that_came_due_during_downtime_fires_at_the_next_drain(store: str) -> None:
    client = new_client()
    napper(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.crash(downtime=timedelta(hours=3))
        run.assert_waiting()  # crash() itself runs nothing
        engine.run_until_idle()
        run.assert_completed()


def test_negative_downtime_is_refused(store: str) -> None:
    with TestEngine(store=store) as engine, pytest.raises(ValueError, match="downtime"):
        engine.crash(downtime=-5)


def test_a_wait_is_resolved_by_an_event_sent_after_a_crash(store: str) -> None:
    client = new_client()
    waiter(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"id": 1})
        engine.crash()
        engine.send({"name": "app/reply", "data": {"id": 2, "answer": "not mine"}})
        engine.run_until_idle()
        run.assert_waiting()
        engine.send({"name": "app/reply", "data": {"id": 1, "answer": "yes"}})
        engine.run_until_idle()
        run.assert_completed("yes")


def test_a_wait_resolved_just_before_a_crash_resumes_after_it(store: str) -> None:
    client = new_client()
    waiter(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"id": 1})
        engine.send({"name": "app/reply", "data": {"id": 1, "answer": "yes"}})  # matched, not yet run
        engine.crash()
        engine.run_until_idle()
        run.assert_completed("yes")


def test_a_wait_times_out_on_time_after_a_crash(store: str) -> None:
    client = new_client()
    waiter(client)
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go", {"id": 1})
        engine.crash(downtime="1h")
        engine.advance_to(DEFAULT_START + timedelta(days=1) - TICK)
        run.assert_waiting()
        engine.advance(TICK)
        run.assert_completed(None)


def test_throttle_keeps_its_schedule_through_a_crash(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="slow", trigger=GO, throttle=steplog.Throttle(limit=1, period="1h"))
    def slow(ctx: steplog.Context) -> int:
        return 1

    def count(status: str) -> int:
        return len(engine.runs("slow", status=status))

    with TestEngine(client, store=store) as engine:
        engine.send([{"name": "app/go"}] * 3)  # burst 1: two start now, the third in an hour
        engine.run_until_idle()
        assert (count("completed"), count("queued")) == (2, 1)
        engine.crash(downtime="10m")
        engine.run_until_idle()
        assert (count("completed"), count("queued")) == (2, 1)
        engine.advance_to(DEFAULT_START + HOUR - TICK)
        assert count("queued") == 1
        engine.advance(TICK)
        assert (count("completed"), count("queued")) == (3, 0)


def test_rate_limit_is_still_spent_after_a_crash(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="rare", trigger=GO, rate_limit=steplog.RateLimit(limit=1, period="1h"))
    def rare(ctx: steplog.Context) -> int:
        return 1

    with TestEngine(client, store=store) as engine:
        engine.trigger("app/go").assert_completed()
        engine.crash()
        engine.trigger("app/go")
        assert len(engine.runs("rare", status="skipped")) == 1
        engine.advance("1h")
        engine.trigger("app/go").assert_completed()


def test_a_pending_debounce_fires_at_its_time_after_a_crash(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="calm", trigger=GO, debounce=steplog.Debounce(period="5m"))
    def calm(ctx: steplog.Context) -> Any:
        return ctx.event.data["n"]

    with TestEngine(client, store=store) as engine:
        engine.send({"name": "app/go", "data": {"n": 1}})
        engine.advance("2m")
        engine.send({"name": "app/go", "data": {"n": 2}})
        engine.run_until_idle()
        engine.crash(downtime="1m")
        assert engine.runs() == []
        assert engine.next_timer() == DEFAULT_START + timedelta(minutes=7)
        engine.advance_to(DEFAULT_START + timedelta(minutes=7) - TICK)
        assert engine.runs() == []
        engine.advance(TICK)
        [run] = engine.runs("calm")
        run.assert_completed(2)


def test_a_singleton_key_stays_taken_through_a_crash(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="only", trigger=GO, singleton=steplog.Singleton(mode="skip"))
    def only(ctx: steplog.Context) -> str:
        ctx.step.sleep("hold", "1h")
        return "done"

    with TestEngine(client, store=store) as engine:
        first = engine.trigger("app/go")
        engine.crash()
        engine.trigger("app/go")
        assert len(engine.runs("only", status="skipped")) == 1
        engine.settle()
        first.assert_completed("done")


def test_concurrency_slots_are_not_held_by_a_crashed_process(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="one-at-a-time", trigger=GO, concurrency=1)
    def one_at_a_time(ctx: steplog.Context) -> int:
        n = ctx.step.run("work", lambda: ctx.event.data["n"])
        ctx.step.sleep("pause", "1m")
        return n

    with TestEngine(client, store=store) as engine:
        engine.crash_during("work", times=1)  # the process dies while a run holds the only slot
        ids = engine.send([{"name": "app/go", "data": {"n": n}} for n in range(3)])
        engine.settle()
        assert engine.crashes == 1
        assert [engine.runs_for(i)[0].output for i in ids] == [0, 1, 2]


# -- the determinism check ---------------------------------------------------------------------


def test_a_random_step_id_is_reported_naming_the_run_and_the_step(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="dice", trigger=GO)
    def dice(ctx: steplog.Context) -> dict[str, int]:
        return {"n": ctx.step.run(f"roll-{random.random()}", lambda: 4)}

    with TestEngine(client, store=store) as engine:
        [event_id] = engine.send({"name": "app/go"})
        with pytest.raises(NondeterministicRunError) as caught:
            engine.run_until_idle()
        [run] = engine.runs_for(event_id)
        [recorded] = run.completed_steps
    message = str(caught.value)
    assert run.run_id in message and "'dice'" in message
    assert repr(recorded) in message  # the recorded step the code no longer reaches
    assert "roll-" in message.replace(repr(recorded), "")  # and the new id it takes instead
    assert isinstance(caught.value, AssertionError)


def test_a_time_based_step_id_is_reported(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="stamped", trigger=GO)
    def stamped(ctx: steplog.Context) -> dict[str, int]:
        return {"n": ctx.step.run(f"at-{time.perf_counter_ns()}", lambda: 1)}

    with TestEngine(client, store=store) as engine, pytest.raises(NondeterministicRunError, match="at-"):
        engine.trigger("app/go")


def test_a_nondeterministic_run_that_failed_is_reported(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="doomed", trigger=GO, retries=0)
    def doomed(ctx: steplog.Context) -> None:
        ctx.step.run(f"try-{random.random()}", lambda: (_ for _ in ()).throw(RuntimeError("no")))

    with TestEngine(client, store=store) as engine:
        with pytest.raises(NondeterministicRunError, match="try-"):
            engine.trigger("app/go")
        engine.runs("doomed")[0].assert_failed()


def test_each_ended_run_is_checked_once(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="dice", trigger=GO)
    def dice(ctx: steplog.Context) -> dict[str, int]:
        return {"n": ctx.step.run(f"roll-{random.random()}", lambda: 4)}

    with TestEngine(client, store=store) as engine:
        engine.send({"name": "app/go"})
        with pytest.raises(NondeterministicRunError):
            engine.run_until_idle()
        engine.run_until_idle()  # the same run is not reported again
        engine.send({"name": "app/go"})
        with pytest.raises(NondeterministicRunError):  # a new one is
            engine.run_until_idle()


def test_check_determinism_false_turns_the_check_off(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="dice", trigger=GO)
    def dice(ctx: steplog.Context) -> dict[str, int]:
        return {"n": ctx.step.run(f"roll-{random.random()}", lambda: 4)}

    with TestEngine(client, store=store, check_determinism=False) as engine:
        engine.trigger("app/go").assert_completed({"n": 4})


def test_a_cancelled_run_is_checked_up_to_where_it_was_stopped(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="nap", trigger=GO)
    def nap(ctx: steplog.Context) -> int:
        n = ctx.step.run("roll", lambda: 4)
        ctx.step.sleep("nap", "1h")
        return n

    @client.create_function(fn_id="dice", trigger=steplog.TriggerEvent(event="app/dice"))
    def dice(ctx: steplog.Context) -> dict[str, int]:
        n = ctx.step.run(f"roll-{random.random()}", lambda: 4)
        ctx.step.sleep("nap", "1h")
        return {"n": n}

    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.cancel(run.run_id)  # a deterministic run, cancelled mid-sleep: replays up to its sleep
        run.assert_cancelled()
        dice_run = engine.trigger("app/dice")
        with pytest.raises(NondeterministicRunError, match=r"roll-0\."):
            engine.cancel(dice_run.run_id)


def deterministic_functions(client: steplog.Steplog) -> None:
    """Functions using every kind of step, in ``def`` and ``async def``: all replay from their logs."""

    @client.create_function(fn_id="child", trigger=steplog.TriggerEvent(event="app/child"))
    def child(ctx: steplog.Context) -> int:
        return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    @client.create_function(fn_id="sync-parent", trigger=GO, retries=NO_JITTER)
    def sync_parent(ctx: steplog.Context) -> dict[str, Any]:
        ctx.step.sleep("nap", "1h")
        reply = ctx.step.wait_for_event("reply", event="app/reply", match="data.id", timeout="1d")
        doubled = ctx.step.invoke("call-child", function=child, data={"n": 3})
        sent = ctx.step.send_event("tell", {"name": "app/told", "data": {"id": ctx.event.data["id"]}})
        left, right = ctx.group.parallel((
            lambda: ctx.step.run("left", lambda: "L"),
            lambda: ctx.step.run("right", lambda: "R"),
        ))
        for i in range(3):
            ctx.step.run("loop", lambda i=i: i)
        return {"reply": reply is not None, "doubled": doubled, "sent": len(sent), "lr": left + right}

    @client.create_function(fn_id="async-parent", trigger=GO, retries=NO_JITTER)
    async def async_parent(ctx: steplog.Context) -> dict[str, Any]:
        await ctx.step.sleep("nap", "1h")
        reply = await ctx.step.wait_for_event("reply", event="app/reply", match="data.id", timeout="1d")
        doubled = await ctx.step.invoke("call-child", function=child, data={"n": 3})
        await ctx.step.send_event("tell", {"name": "app/told", "data": {"id": ctx.event.data["id"]}})
        a, _ = await asyncio.gather(ctx.step.run("a", lambda: "A"), ctx.step.sleep("b", "1m"))
        left, right = await ctx.group.parallel((
            lambda: ctx.step.run("left", lambda: "L"),
            lambda: ctx.step.run("right", lambda: "R"),
        ))
        return {"reply": reply is not None, "doubled": doubled, "ab": a, "lr": left + right}


def test_deterministic_functions_with_every_kind_of_step_pass_the_check(store: str) -> None:
    client = new_client()
    deterministic_functions(client)
    with TestEngine(client, store=store) as engine:
        [event_id] = engine.send({"name": "app/go", "data": {"id": 9}})
        engine.advance("1h")
        engine.send({"name": "app/reply", "data": {"id": 9}})
        engine.settle()
        runs = {run.function_id: run for run in engine.runs_for(event_id)}
        runs["sync-parent"].assert_completed({"reply": True, "doubled": 6, "sent": 1, "lr": "LR"})
        runs["async-parent"].assert_completed({"reply": True, "doubled": 6, "ab": "A", "lr": "LR"})
        assert len(engine.runs("child", status="completed")) == 2


def test_a_deterministic_function_passes_the_check_through_crashes_and_timeouts(store: str) -> None:
    client = new_client()
    deterministic_functions(client)
    with TestEngine(client, store=store) as engine:
        engine.stub("left", fails=1)
        engine.crash_during("right")
        [event_id] = engine.send({"name": "app/go", "data": {"id": 1}})
        engine.crash()
        engine.settle()  # the wait times out: reply is None
        assert {run.function_id: run.output["reply"] for run in engine.runs_for(event_id)} == {
            "sync-parent": False, "async-parent": False,
        }


def test_function_level_retries_batches_and_debounces_pass_the_check(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="second-try", trigger=GO, retries=steplog.RetryPolicy.fixed(2, "5s"))
    def second_try(ctx: steplog.Context) -> dict[str, int]:
        x = ctx.step.run("x", lambda: 1)
        if ctx.attempt == 0:
            raise RuntimeError("first time")  # outside any step: the function's own retry
        return {"attempt": ctx.attempt, "x": x}

    @client.create_function(fn_id="batch", trigger=steplog.TriggerEvent(event="app/b"),
                            batch_events=steplog.Batch(max_size=3, timeout="10s"))
    def batch(ctx: steplog.Context) -> int:
        return ctx.step.run("sum", lambda: sum(e.data["n"] for e in ctx.events))  # type: ignore[no-any-return]

    @client.create_function(fn_id="calm", trigger=steplog.TriggerEvent(event="app/d"),
                            debounce=steplog.Debounce(period="5s"))
    def calm(ctx: steplog.Context) -> int:
        return ctx.step.run("last", lambda: ctx.event.data["n"])  # type: ignore[no-any-return]

    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        engine.send([{"name": "app/b", "data": {"n": n}} for n in range(4)])
        engine.send([{"name": "app/d", "data": {"n": n}} for n in range(4)])
        engine.settle()
        run.assert_completed({"attempt": 1, "x": 1})
        assert sorted(r.output for r in engine.runs("batch")) == [3, 3]
        assert [r.output for r in engine.runs("calm")] == [3]


# -- TestRun -----------------------------------------------------------------------------------


def order_client() -> steplog.Steplog:
    client = new_client()

    @client.create_function(fn_id="order", trigger=GO, retries=NO_JITTER)
    def order(ctx: steplog.Context) -> dict[str, Any]:
        total = ctx.step.run("price", lambda: ctx.event.data["qty"] * 10)
        charged = ctx.step.run("charge", lambda: {"charged": total})
        if ctx.event.data.get("refuse"):
            raise steplog.NonRetriableError(f"refused order of {total}")
        ctx.step.sleep("cool-off", "1h")
        return charged

    return client


def test_a_completed_run_reads_back_status_output_and_steps(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        engine.stub("charge", fails=1)
        run = engine.trigger("app/go", {"qty": 3})
        engine.settle()
        assert run.status == "completed" and run.finished
        assert run.output == {"charged": 30}
        assert run.error is None
        assert run.completed_steps == ["price", "charge", "cool-off"]
        assert run.step_output("charge") == {"charged": 30}
        attempts = run.step_attempts("charge")
        assert [(a.attempt, a.status) for a in attempts] == [(0, "errored"), (1, "completed")]
        assert attempts[0].error["name"] == "StubError"
        assert run.step_attempts("nothing") == []
        assert repr(run) == f"<TestRun {run.run_id} of 'order': completed>"


def test_a_failed_run_reads_back_its_error(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 2, "refuse": True})
        assert run.status == "failed"
        assert run.error is not None
        assert run.error["name"] == "NonRetriableError" and run.error["message"] == "refused order of 20"
        assert run.output is None


def test_a_test_run_stays_true_across_a_crash(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1})
        engine.crash()
        assert run.status == "waiting"
        engine.advance("1h")
        assert run.status == "completed"


def test_describe_shows_the_run_each_attempt_and_the_ending(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        engine.stub("charge", fails=1)
        run = engine.trigger("app/go", {"qty": 3})
        engine.settle()
        text = run.describe()
    lines = text.splitlines()
    assert lines[0] == f"run {run.run_id} of 'order': completed"
    assert "run 'price' attempt 1: completed -> 30" in text
    assert "run 'charge' attempt 1: errored - StubError" in text
    assert "run 'charge' attempt 2: completed -> {\"charged\": 30}" in text
    assert "sleep 'cool-off'" in text
    assert lines[-1] == '  -> returned {"charged": 30}'


def test_describe_of_a_failed_run_ends_with_the_error(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 2, "refuse": True})
        assert run.describe().splitlines()[-1] == "  -> NonRetriableError: refused order of 20"


def test_describe_of_a_run_that_returned_a_string(store: str) -> None:
    client = new_client()
    define = client.create_function(fn_id="says", trigger=GO)
    define(lambda ctx: "hello")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        assert run.describe().splitlines()[-1] == '  -> returned "hello"'


def test_describe_shows_a_string_output_as_a_string_even_if_it_looks_like_json(store: str) -> None:
    client = new_client()
    define = client.create_function(fn_id="says", trigger=GO)
    define(lambda ctx: "42")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        assert run.describe().splitlines()[-1] == '  -> returned "42"'


def test_a_failing_assertion_on_a_run_that_returned_a_string_is_an_assertion_error(store: str) -> None:
    client = new_client()
    define = client.create_function(fn_id="says", trigger=GO)
    define(lambda ctx: "hello")
    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go").assert_completed("hello")
        with pytest.raises(AssertionError, match="expected \"bye\""):
            run.assert_completed("bye")


def expect_failure(check: Any, run: TestRun, *fragments: str) -> str:
    """``check()`` raises AssertionError whose message says ``fragments`` and holds the run's timeline."""
    with pytest.raises(AssertionError) as caught:
        check()
    message = str(caught.value)
    assert run.describe() in message
    assert run.run_id in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_assert_completed(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1})
        expect_failure(run.assert_completed, run, "is waiting, expected completed")
        engine.advance("1h")
        assert run.assert_completed() is run
        assert run.assert_completed({"charged": 10}) is run
        expect_failure(lambda: run.assert_completed({"charged": 11}), run,
                       'returned {"charged": 10}, expected {"charged": 11}')


def test_assert_completed_on_a_failed_run_says_why_it_failed(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1, "refuse": True})
        expect_failure(run.assert_completed, run,
                       "is failed (NonRetriableError: refused order of 10), expected completed")


def test_assert_failed(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1, "refuse": True})
        assert run.assert_failed() is run
        run.assert_failed("NonRetriableError", "refused order")
        expect_failure(lambda: run.assert_failed("ValueError"), run,
                       "failed with NonRetriableError, expected ValueError")
        expect_failure(lambda: run.assert_failed(message="out of stock"), run,
                       "expected it to contain 'out of stock'")
        ok = engine.trigger("app/go", {"qty": 1})
        expect_failure(ok.assert_failed, ok, "is waiting, expected failed")


def test_assert_cancelled(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1})
        expect_failure(run.assert_cancelled, run, "expected cancelled")
        engine.cancel(run.run_id, "customer changed their mind")
        assert run.assert_cancelled() is run
        run.assert_cancelled("changed their mind")
        expect_failure(lambda: run.assert_cancelled("timeout"), run, "expected it to contain 'timeout'")


def test_assert_waiting(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1})
        assert run.assert_waiting() is run
        engine.advance("1h")
        expect_failure(run.assert_waiting, run, "is completed, expected waiting")


def test_assert_step(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        engine.stub("charge", fails=2)
        run = engine.trigger("app/go", {"qty": 2})
        engine.settle()
        assert run.assert_step("price") is run
        run.assert_step("price", output=20, attempts=1)
        run.assert_step("charge", output={"charged": 20}, attempts=3)
        expect_failure(lambda: run.assert_step("price", output=21), run, "step 'price' returned 20, expected 21")
        expect_failure(lambda: run.assert_step("charge", attempts=1), run,
                       "step 'charge' took 3 attempts, expected 1")
        expect_failure(lambda: run.assert_step("ship"), run, "step 'ship'", "has not completed")


def test_step_output_of_a_step_not_completed_is_an_assertion_error_with_the_timeline(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        engine.stub("charge", fails=1)
        run = engine.trigger("app/go", {"qty": 2})  # charge waits for its retry
        expect_failure(lambda: run.step_output("charge"), run, "step 'charge'", "has not completed")


def test_assert_no_step(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 2, "refuse": True})
        assert run.assert_no_step("cool-off") is run
        expect_failure(lambda: run.assert_no_step("charge"), run, "took step 'charge', expected it not to")


def test_assert_step_with_attempts_fails_for_a_step_that_never_completed(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="brave", trigger=GO, retries=0)
    def brave(ctx: steplog.Context) -> str:
        try:
            ctx.step.run("risky", lambda: 1)
        except steplog.StepError:
            return "gave up"
        return "done"

    with TestEngine(client, store=store) as engine:
        engine.stub("risky", raises=steplog.NonRetriableError("no"))
        run = engine.trigger("app/go").assert_completed()
        with pytest.raises(AssertionError, match="has not completed"):
            run.assert_step("risky", attempts=1)


def test_a_sleep_takes_one_attempt(store: str) -> None:
    with TestEngine(order_client(), store=store) as engine:
        run = engine.trigger("app/go", {"qty": 1})
        engine.advance("1h")
        run.assert_step("cool-off", attempts=1)


def test_a_nondeterministic_function_returning_a_string_is_reported(store: str) -> None:
    client = new_client()

    @client.create_function(fn_id="dice", trigger=GO)
    def dice(ctx: steplog.Context) -> str:
        return f"rolled {ctx.step.run(f'roll-{random.random()}', lambda: 4)}"

    with TestEngine(client, store=store) as engine, pytest.raises(NondeterministicRunError, match="roll-"):
        engine.trigger("app/go")


def test_an_event_with_a_future_ts_starts_its_run_exactly_then_even_after_a_crash(store: str) -> None:
    client = new_client()
    napper(client, nap="0s")
    later = DEFAULT_START + HOUR
    with TestEngine(client, store=store) as engine:
        [event_id] = engine.send({"name": "app/go", "ts": int(later.timestamp() * 1000)})
        engine.run_until_idle()
        [run] = engine.runs_for(event_id)
        assert run.status != "completed"
        engine.crash()
        engine.run_until_idle()
        assert engine.next_timer() == later
        engine.advance_to(later - TICK)
        assert run.status != "completed"
        assert engine.advance_to_next_timer() == later
        run.assert_completed()


def test_driving_it_from_inside_an_event_loop_is_refused_with_advice() -> None:
    client = new_client()

    @client.create_function(fn_id="a", trigger=GO)
    async def a(ctx: steplog.Context) -> int:
        return int(await ctx.step.run("one", lambda: 1))

    async def an_async_test(engine: TestEngine) -> None:
        engine.trigger("app/go")

    with TestEngine(client) as engine:
        with pytest.raises(RuntimeError, match=r"drive it from a plain `def test_\.\.\.`"):
            asyncio.run(an_async_test(engine))
        engine.run_until_idle()  # the event was accepted before: outside the loop its run goes on
        [run] = engine.runs("a")
        run.assert_completed(1)
