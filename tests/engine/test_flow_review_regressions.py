"""Regressions found by a review of flow control: each test failed before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from steplog.engine import (
    Batch,
    Context,
    Debounce,
    Engine,
    FlowOptions,
    FunctionRegistry,
    ManualClock,
    RateLimit,
    RunProjector,
    StepError,
    Throttle,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.coordination import EndRun, SendEvents
from steplog.eventstore import MemoryEventStore, NewEntry

import steplog

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GO = "app/go"

def engine_for(store, clock, *functions, start=True):
    registry = FunctionRegistry()
    for f in functions:
        registry.add(f)
    e = Engine(store, registry=registry, clock=clock)
    if start:
        e.start()
    return e

def statuses(store, fn_id):
    return [(r["status"]) for r in sorted(queries.list_runs(store, function_id=fn_id, limit=None), key=lambda r: (r["scheduled_at"], r["run_id"]))]

def run_until(engine, clock, horizon_s):
    horizon = START + timedelta(seconds=horizon_s)
    engine.run_until_idle()
    for _ in range(10000):
        due = engine.next_timer()
        if due is None or due > horizon:
            break
        engine.advance(max(due - clock.now(), timedelta(0)))
    if horizon > clock.now():
        engine.advance(horizon - clock.now())



def test_a_debounce_due_at_an_odd_microsecond_fires_at_its_time():
    clock, store = ManualClock(START + timedelta(seconds=6, microseconds=929320)), MemoryEventStore(RunProjector())
    ran = []
    f = define_function(lambda ctx: ran.append(clock.now()), fn_id="f", trigger=TriggerEvent(GO),
                        flow=FlowOptions(debounce=Debounce(period=1.7)))
    e = engine_for(store, clock, f)
    e.send({"name": GO})
    e.run_until_idle()
    due = e.next_timer()
    assert due is not None
    e.advance(due - clock.now())  # exactly to the time next_timer reports
    assert e.next_timer() is None
    assert ran == [due]



def test_undoing_a_stale_request_keeps_a_later_requests_committed_bucket():
    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    f = define_function(lambda ctx: 1, fn_id="f", trigger=TriggerEvent(GO),
                        flow=FlowOptions(throttle=Throttle(limit=1, period="1h", burst=0)))
    g = define_function(lambda ctx: ctx.step.sleep("s", 60), fn_id="g", trigger=TriggerEvent("app/g"))
    e = engine_for(store, clock, f, g)
    e.send({"name": "app/g"})
    e.run_until_idle()
    [g_run] = queries.list_runs(store, function_id="g")
    stale = EndRun(g_run["run_id"], 0, (NewEntry(r.RUN_COMPLETED, {"output": None, "at": "x"}),),
                   ({"name": GO, "data": {"via": "end"}},))
    answers = e.coordinator.handle([stale, SendEvents({"name": GO, "data": {"via": "send"}})], clock.now())
    logged = {(row["kind"], row["key"]): row["tat"] for row in store.query("buckets")}
    memory = {(kind, key): tat for (fn, kind, key), tat in e.coordinator.flow.buckets.items()}
    assert memory == logged



def test_a_second_restart_keeps_the_throttle_spacing():
    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    starts = []
    def handler(ctx: Context):
        starts.append((clock.now() - START).total_seconds())
    f = define_function(handler, fn_id="f", trigger=TriggerEvent(GO),
                        flow=FlowOptions(throttle=Throttle(limit=1, period="60s", burst=0)))
    e = engine_for(store, clock, f)
    e.send([{"name": GO, "data": {"i": i}} for i in range(5)])
    e.run_until_idle()                  # run 0 starts at 0; the others are due at 60, 120, 180, 240
    clock.advance(1000)                 # the process was down
    e = engine_for(store, clock, f)     # restart 1: respaced from 1000
    run_until(e, clock, 1061)           # runs start at 1000 and 1060
    e = engine_for(store, clock, f)     # restart 2 at 1061 (kill -9)
    run_until(e, clock, 2000)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= 60 for g in gaps[1:]), f"starts {starts}: throttle 1/60 s with burst 0 broken"



def test_an_event_after_an_overdue_batch_starts_a_batch_of_its_own():
    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    got = []
    f = define_function(lambda ctx: got.append([ev.data["i"] for ev in ctx.events]), fn_id="f",
                        trigger=TriggerEvent(GO), flow=FlowOptions(batch_events=Batch(max_size=10, timeout="5s")))
    e = engine_for(store, clock, f)
    e.send({"name": GO, "data": {"i": 1}})
    e.run_until_idle()
    clock.advance(100)                       # process down, or the timer has not fired yet
    e = engine_for(store, clock, f)          # restart
    e.send({"name": GO, "data": {"i": 2}})   # arrives 95 s after the batch was due
    run_until(e, clock, 200)



def test_invoking_a_rate_limited_function_fails_the_invoke_at_once():
    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    child = define_function(lambda ctx: "ok", fn_id="child", trigger=TriggerEvent("app/child"),
                            flow=FlowOptions(rate_limit=RateLimit(limit=1, period="1h")))
    def parent_handler(ctx: Context):
        try:
            return ctx.step.invoke("call", function="child", data={})
        except StepError as error:
            return {"error": str(error)}
    parent = define_function(parent_handler, fn_id="parent", trigger=TriggerEvent(GO))
    e = engine_for(store, clock, child, parent)
    e.send({"name": GO, "data": {}})
    e.run_until_idle()
    e.send({"name": GO, "data": {}})
    e.run_until_idle()
    e.advance(60)
    # Inngest: the second invoke fails at once with a NonRetriableError ("invoked function is rate limited")
    assert statuses(store, "parent") == ["completed", "completed"]




def test_runs_for_event_finds_the_batch_run_of_every_batched_event():
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock(START))

    @client.create_function(fn_id="b", trigger=steplog.TriggerEvent(event="app/b"),
                            batch_events=steplog.Batch(max_size=3, timeout="10s"))
    def b(ctx):
        return len(ctx.events)

    with client:
        ids = [client.send({"name": "app/b", "data": {"i": i}})[0] for i in range(3)]
        client.run_until_idle()
        found = {i: [h.run_id for h in client.runs_for_event(event_id)] for i, event_id in enumerate(ids)}
        events = {e["id"]: e["runs"] for e in client.list_events()}
        assert all(len(v) == 1 for v in found.values()), found


def test_an_event_from_the_future_does_not_hold_back_its_throttle_key() -> None:
    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    starts: list[tuple[float, str]] = []

    def handler(ctx: Context) -> None:
        starts.append(((clock.now() - START).total_seconds(), ctx.event.data["i"]))

    f = define_function(handler, fn_id="f", trigger=TriggerEvent(GO),
                        flow=FlowOptions(throttle=Throttle(limit=10, period="60s", burst=1)))
    e = engine_for(store, clock, f)
    future_ms = int((START + timedelta(hours=1)).timestamp() * 1000)
    e.send({"name": GO, "data": {"i": "future"}, "ts": future_ms})
    e.send({"name": GO, "data": {"i": "now1"}})
    e.send({"name": GO, "data": {"i": "now2"}})
    run_until(e, clock, 120)
    assert starts == [(0.0, "now1"), (6.0, "now2")]


def test_a_throttled_run_past_its_start_timeout_is_cancelled_at_the_deadline() -> None:
    from steplog.engine import Timeouts

    clock, store = ManualClock(START), MemoryEventStore(RunProjector())
    f = define_function(lambda ctx: 1, fn_id="f", trigger=TriggerEvent(GO), timeouts=Timeouts(start="1m"),
                        flow=FlowOptions(throttle=Throttle(limit=1, period="1h", burst=0)))
    e = engine_for(store, clock, f)
    e.send([{"name": GO, "data": {"i": i}} for i in range(3)])
    run_until(e, clock, 5 * 60)
    assert sorted(statuses(store, "f")) == ["cancelled", "cancelled", "completed"]


def test_the_client_cancels_a_throttled_run_at_its_start_timeout() -> None:
    clock = ManualClock(START)
    client = steplog.Steplog(db=":memory:", clock=clock)

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event=GO), timeouts=steplog.Timeouts(start="1m"),
                            throttle=steplog.Throttle(limit=1, period="1h", burst=0))
    def f(ctx: Context) -> int:
        return 1

    with client:
        client.send([{"name": GO} for _ in range(3)])
        client.run_until_idle()
        client.advance(61)
        assert sorted(run["status"] for run in client.list_runs(function_id="f")) == ["cancelled", "cancelled", "completed"]
