"""step.send_event: events sent from a function as a memoized step; a replay sends nothing again."""

from __future__ import annotations

from typing import Any

import pytest

from steplog.engine import Context, Engine, ManualClock, RunProjector, TriggerEvent, define_function, queries
from steplog.engine import records as r
from steplog.eventstore import EventStore, MemoryEventStore


def fan_out_engine(store: EventStore, clock: ManualClock, got: list[int], **options: Any) -> Engine:
    engine = Engine(store, clock=clock, **options)

    def parent(ctx: Context) -> list[str]:
        return ctx.step.send_event("fan-out", [{"name": "app/child", "data": {"n": n}} for n in range(3)])

    def child(ctx: Context) -> int:
        got.append(ctx.event.data["n"])
        return int(ctx.event.data["n"])

    engine.registry.add(define_function(parent, fn_id="parent", trigger=TriggerEvent(event="app/parent")))
    engine.registry.add(define_function(child, fn_id="child", trigger=TriggerEvent(event="app/child")))
    return engine


def test_sent_events_start_their_runs_and_the_step_returns_their_ids(run_store: EventStore, clock: ManualClock) -> None:
    got: list[int] = []
    engine = fan_out_engine(run_store, clock, got)
    engine.send({"name": "app/parent"})
    engine.run_until_idle()
    assert sorted(got) == [0, 1, 2]
    [parent] = queries.list_runs(run_store, function_id="parent")
    events = {e["internal_id"]: e for e in queries.list_events(run_store, name="app/child")}
    assert sorted(parent["output"]) == sorted(events)
    [entry] = [e for e in run_store.read_stream(r.run_stream(parent["run_id"])) if e.type == r.STEP_COMPLETED]
    assert entry.data["kind"] == "send_event"
    assert run_store.rebuild_projections(apply=False) == []


def test_a_replay_after_a_lost_commit_sends_nothing_twice(clock: ManualClock) -> None:
    """The send is committed, the step's own commit is lost; the replay's events are duplicates."""
    store = MemoryEventStore(RunProjector())
    got: list[int] = []
    engine = fan_out_engine(store, clock, got)

    class Crash(Exception):
        pass

    real = engine.committer

    def lose_the_step_commit(appends: Any) -> Any:
        entries = [e for a in appends for w in a.writes for e in w.entries]
        if any(e.type == r.STEP_COMPLETED and e.data.get("kind") == "send_event" for e in entries):
            raise Crash("the process died here")
        return real(appends)

    engine.committer = lose_the_step_commit
    engine.send({"name": "app/parent"})
    with pytest.raises(Crash):
        engine.run_until_idle()

    restarted = fan_out_engine(store, clock, got)
    restarted.start()
    restarted.run_until_idle()
    assert sorted(got) == [0, 1, 2]  # each child ran once: the second sends were duplicates
    children = queries.list_events(store, name="app/child")
    assert len(children) == 6 and sum(e["duplicate"] for e in children) == 3
    [parent] = queries.list_runs(store, function_id="parent")
    assert parent["status"] == "completed"


def test_a_bad_event_fails_the_step_without_retries(run_store: EventStore, clock: ManualClock) -> None:
    engine = Engine(run_store, clock=clock)

    def parent(ctx: Context) -> Any:
        return ctx.step.send_event("bad", {"data": {"no": "name"}})

    engine.registry.add(define_function(parent, fn_id="parent", trigger=TriggerEvent(event="app/parent")))
    engine.send({"name": "app/parent"})
    engine.run_until_idle()
    [run] = queries.list_runs(run_store, function_id="parent")
    assert run["status"] == "failed"
    assert "step 'bad' failed: NonRetriableError" in run["error"]["message"]
    assert "has no name" in run["error"]["message"]
    assert run_store.query("timers") == []
