"""Events on the synchronous engine: validation, routing by triggers, dedup by id, trigger errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from steplog.engine import (
    Context,
    Engine,
    Event,
    EventError,
    FunctionDef,
    FunctionRegistry,
    Limits,
    ManualClock,
    RunProjector,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.events import MAX_NAME_LENGTH
from steplog.eventstore import EventStore, MemoryEventStore


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef, limits: Limits | None = None) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock, limits=limits)


def echo(fn_id: str, *triggers: TriggerEvent) -> FunctionDef:
    def handler(ctx: Context) -> dict[str, Any]:
        return {"name": ctx.event.name, "data": ctx.event.data, "id": ctx.event.id, "ts": ctx.event.ts}

    return define_function(handler, fn_id=fn_id, trigger=list(triggers))


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


def runs_of(store: EventStore, function_id: str | None = None) -> list[dict[str, Any]]:
    return queries.list_runs(store, function_id=function_id, limit=None)


def received_entry(store: EventStore, internal_id: str) -> dict[str, Any]:
    [entry] = store.read_stream(r.event_stream(internal_id))
    return {"type": entry.type, **entry.data}


# -- accepting ------------------------------------------------------------------------------


def test_send_records_the_event_and_starts_the_function(run_store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(run_store, clock, echo("f", TriggerEvent(event="app/user.created")))
    [event_id] = engine.send({"name": "app/user.created", "data": {"user": "u1"}})
    [event] = queries.list_events(run_store)
    assert event["internal_id"] == event_id
    assert event["name"] == "app/user.created"
    assert event["data"] == {"user": "u1"}
    assert event["duplicate"] is False
    assert event["id"] == event_id  # no user id: the internal id stands in
    assert event["ts"] == int(clock.now().timestamp() * 1000)
    [run] = runs_of(run_store)
    assert event["runs"] == [run["run_id"]]
    assert run["status"] == "queued"

    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run["run_id"])
    assert run["status"] == "completed"
    assert run["output"] == {
        "name": "app/user.created", "data": {"user": "u1"}, "id": event_id, "ts": event["ts"],
    }


def test_send_accepts_event_objects_and_lists(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")))
    ids = engine.send([Event(name="app/x", data={"n": 1}, id="mine", ts=1_700_000_000_000), {"name": "app/x"}])
    assert len(ids) == 2 and len(set(ids)) == 2
    engine.run_until_idle()
    outputs = sorted((run["output"] for run in runs_of(store)), key=lambda o: o["data"].get("n", 0))
    assert outputs[0]["data"] == {} and outputs[0]["id"] == ids[1]
    assert outputs[1] == {"name": "app/x", "data": {"n": 1}, "id": "mine", "ts": 1_700_000_000_000}


def test_an_event_no_function_wants_is_still_recorded(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")))
    [event_id] = engine.send({"name": "other/y", "data": {}})
    [event] = queries.list_events(store)
    assert event["internal_id"] == event_id and event["runs"] == []
    assert runs_of(store) == []


# -- routing ---------------------------------------------------------------------------------


def test_wildcards_and_exact_names_route(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(
        store,
        clock,
        echo("exact", TriggerEvent(event="app/user.created")),
        echo("app-any", TriggerEvent(event="app/*")),
        echo("user-any", TriggerEvent(event="app/user.*")),
        echo("billing", TriggerEvent(event="billing/*")),
    )
    started = {}
    for name in ("app/user.created", "app/user.deleted", "app/order.paid", "billing/charged", "application/x"):
        [event_id] = engine.send({"name": name, "data": {}})
        started[name] = sorted(run["function_id"] for run in queries.list_runs(store, event_id=event_id))
    assert started == {
        "app/user.created": ["app-any", "exact", "user-any"],
        "app/user.deleted": ["app-any", "user-any"],
        "app/order.paid": ["app-any"],
        "billing/charged": ["billing"],
        "application/x": [],
    }


def test_one_event_starts_a_function_once_when_several_triggers_match(clock: ManualClock, store: EventStore) -> None:
    function = echo(
        "f",
        TriggerEvent(event="app/user.created"),
        TriggerEvent(event="app/*"),
        TriggerEvent(event="app/user.*", expression="event.data.vip == true"),
    )
    engine = make_engine(store, clock, function)
    engine.send({"name": "app/user.created", "data": {"vip": True}})
    assert len(runs_of(store)) == 1
    assert engine.run_until_idle() == 1


def test_trigger_expression_filters(clock: ManualClock, store: EventStore) -> None:
    condition = "event.data.total >= 100 && event.name == 'shop/order'"
    function = echo("big", TriggerEvent(event="shop/order", expression=condition))
    engine = make_engine(store, clock, function)
    small, big = engine.send(
        [{"name": "shop/order", "data": {"total": 5}}, {"name": "shop/order", "data": {"total": 250}}]
    )
    assert queries.list_runs(store, event_id=small) == []
    assert len(queries.list_runs(store, event_id=big)) == 1
    assert received_entry(store, small)["trigger_errors"] == []


def test_a_trigger_expression_that_errors_records_the_error_and_starts_nothing(
    run_store: EventStore, clock: ManualClock
) -> None:
    strict = echo("strict", TriggerEvent(event="app/x", expression="event.data.count > 5"))
    other = echo("other", TriggerEvent(event="app/x"))
    engine = make_engine(run_store, clock, strict, other)
    bad, good = engine.send([{"name": "app/x", "data": {"count": "many"}}, {"name": "app/x", "data": {"count": 9}}])

    assert [run["function_id"] for run in queries.list_runs(run_store, event_id=bad)] == ["other"]
    entry = received_entry(run_store, bad)
    assert entry["type"] == r.EVENT_RECEIVED
    [error] = entry["trigger_errors"]
    assert error["function_id"] == "strict"
    assert "event.data.count > 5" in error["error"]

    assert sorted(run["function_id"] for run in queries.list_runs(run_store, event_id=good)) == ["other", "strict"]
    assert received_entry(run_store, good)["trigger_errors"] == []
    engine.run_until_idle()
    assert {run["status"] for run in runs_of(run_store)} == {"completed"}


def test_a_trigger_error_does_not_hide_a_trigger_that_matches(clock: ManualClock, store: EventStore) -> None:
    function = echo(
        "f",
        TriggerEvent(event="app/x", expression="event.data.missing.deep == 1"),
        TriggerEvent(event="app/*"),
    )
    engine = make_engine(store, clock, function)
    [event_id] = engine.send({"name": "app/x", "data": {}})
    assert len(queries.list_runs(store, event_id=event_id)) == 1
    assert received_entry(store, event_id)["trigger_errors"] == []


# -- dedup by event id -----------------------------------------------------------------------


def test_same_id_within_24_hours_is_a_duplicate_and_starts_nothing(run_store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(run_store, clock, echo("f", TriggerEvent(event="app/x")))
    [first] = engine.send({"name": "app/x", "id": "order-1", "data": {"n": 1}})
    clock.advance(timedelta(hours=23, minutes=59))
    [second] = engine.send({"name": "app/x", "id": "order-1", "data": {"n": 2}})
    assert first != second
    events = {e["internal_id"]: e for e in queries.list_events(run_store)}
    assert events[first]["duplicate"] is False and len(events[first]["runs"]) == 1
    assert events[second]["duplicate"] is True and events[second]["runs"] == []
    assert events[second]["data"] == {"n": 2}  # the duplicate is still recorded
    assert received_entry(run_store, second)["type"] == r.EVENT_DUPLICATE
    assert len(runs_of(run_store)) == 1
    assert engine.run_until_idle() == 1


def test_same_id_after_24_hours_starts_again(run_store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(run_store, clock, echo("f", TriggerEvent(event="app/x")))
    engine.send({"name": "app/x", "id": "order-1", "data": {}})
    clock.advance(timedelta(hours=24, seconds=1))
    [again] = engine.send({"name": "app/x", "id": "order-1", "data": {}})
    assert len(queries.list_runs(run_store, event_id=again)) == 1
    assert len(runs_of(run_store)) == 2
    # ... and the new event opens a new window
    clock.advance(timedelta(hours=1))
    [third] = engine.send({"name": "app/x", "id": "order-1", "data": {}})
    assert queries.list_runs(run_store, event_id=third) == []


def test_duplicates_within_one_send(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")))
    accepted = engine.accept([{"name": "app/x", "id": "k"}, {"name": "app/x", "id": "k"}, {"name": "app/x", "id": "j"}])
    assert accepted.duplicates == [accepted.ids[1]]
    assert len(accepted.runs) == 2
    assert len(runs_of(store)) == 2


def test_different_ids_and_no_ids_are_not_duplicates(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")))
    engine.send([{"name": "app/x"}, {"name": "app/x"}, {"name": "app/x", "id": "a"}, {"name": "app/x", "id": "b"}])
    assert len(runs_of(store)) == 4


# -- bad input: a clear error, and nothing of the send is accepted ------------------------------


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"data": {}}, "event has no name"),
        ({"name": "", "data": {}}, "has no name"),
        ({"name": 42, "data": {}}, "event: name must be a string, got int 42"),
        ({"name": "app/x", "data": [1, 2]}, "data must be a JSON object, got list"),
        ({"name": "app/x", "data": "text"}, "data must be a JSON object, got str"),
        ({"name": "app/x", "ts": "2026-01-01"}, "ts must be an integer of milliseconds"),
        ({"name": "app/x", "ts": 1.5e12}, "ts must be an integer of milliseconds"),
        ({"name": "app/x", "ts": True}, "ts must be an integer of milliseconds"),
        ({"name": "app/x", "ts": 5}, "outside 1980-01-01..2100-01-01"),
        ({"name": "app/x", "id": 7}, "id must be a string"),
        ({"name": "app/x", "user": "u"}, "user must be a JSON object"),
        ({"name": "app/x", "data": {"s": {1, 2}}}, "not JSON"),
        ({"name": "app/x", "data": {"f": float("nan")}}, "not JSON"),
        ({"name": "inngest/function.failed"}, "reserved"),
        ({"name": "a" * (MAX_NAME_LENGTH + 1)}, "the limit is 256"),
        ("app/x", "send steplog.Event objects or JSON objects"),
    ],
)
def test_bad_event(clock: ManualClock, store: EventStore, event: Any, problem: str) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/*")))
    with pytest.raises(EventError) as raised:
        engine.send([event] if isinstance(event, str) else event)
    assert problem in str(raised.value)
    assert queries.list_events(store) == []
    assert runs_of(store) == []


def test_event_over_the_default_size_limit(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")))
    engine.send({"name": "app/x", "data": {"blob": "x" * (250 * 1024)}})  # under 256 KiB: fine
    with pytest.raises(EventError, match=r"event \('app/x'\) is \d+ bytes; the limit is 262144 bytes"):
        engine.send({"name": "app/x", "data": {"blob": "x" * (256 * 1024)}})
    assert len(queries.list_events(store)) == 1


def test_event_size_limit_is_configurable(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, echo("f", TriggerEvent(event="app/x")), limits=Limits(event_bytes=200))
    engine.send({"name": "app/x", "data": {"blob": "x" * 50}})
    with pytest.raises(EventError, match=r"the limit is 200 bytes"):
        engine.send({"name": "app/x", "data": {"blob": "x" * 200}})
    assert len(queries.list_events(store)) == 1


def test_size_counts_utf8_bytes(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, limits=Limits(event_bytes=300))
    # 100 characters, 300 bytes as UTF-8: over the limit once the envelope is added
    with pytest.raises(EventError, match=r"the limit is 300 bytes"):
        engine.send({"name": "app/x", "data": {"s": "€" * 100}})


def test_too_many_events_in_one_send(clock: ManualClock, store: EventStore) -> None:
    engine = make_engine(store, clock, limits=Limits(events_per_send=3))
    with pytest.raises(EventError, match=r"a send holds 4 events; the limit is 3"):
        engine.send([{"name": "app/x"}] * 4)
    assert queries.list_events(store) == []


def test_one_bad_event_in_a_list_rejects_the_whole_send_and_keeps_what_came_before(
    run_store: EventStore, clock: ManualClock
) -> None:
    engine = make_engine(run_store, clock, echo("f", TriggerEvent(event="app/x")))
    [earlier] = engine.send({"name": "app/x", "data": {"n": 0}})
    batch = [{"name": "app/x", "data": {"n": 1}}, {"name": "app/x", "data": {"n": 2}}, {"data": {"n": 3}}]
    with pytest.raises(EventError) as raised:
        engine.send(batch)
    assert "event 2" in str(raised.value)
    assert "no name" in str(raised.value)
    with pytest.raises(EventError, match=r"event 1 \('app/x'\): data must be a JSON object"):
        engine.send([{"name": "app/x"}, {"name": "app/x", "data": 3}])

    assert [e["internal_id"] for e in queries.list_events(run_store)] == [earlier]
    assert len(runs_of(run_store)) == 1
    assert engine.run_until_idle() == 1
    [run] = runs_of(run_store)
    assert run["status"] == "completed" and run["output"]["data"] == {"n": 0}
    # the engine still accepts good sends afterwards
    assert len(engine.send(batch[:2])) == 2
    assert engine.run_until_idle() == 2


def test_bad_limits_are_refused() -> None:
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"limit event_bytes must be a positive integer"):
            Limits(event_bytes=bad)  # type: ignore[arg-type]
    assert Limits() == Limits(event_bytes=256 * 1024, events_per_send=5000, step_output_bytes=4 * 1024 * 1024,
                              steps_per_run=1000)


# -- the context sees the event(s) -------------------------------------------------------------


def test_context_event_events_run_id_attempt(clock: ManualClock, store: EventStore) -> None:
    seen: dict[str, Any] = {}

    def handler(ctx: Context) -> None:
        seen.update(event=ctx.event, events=ctx.events, run_id=ctx.run_id, attempt=ctx.attempt,
                    function_id=ctx.function_id, step=ctx.step, logger=ctx.logger)

    engine = make_engine(store, clock, define_function(handler, fn_id="f", trigger=TriggerEvent(event="app/x")))
    [event_id] = engine.send({"name": "app/x", "data": {"k": "v"}, "id": "u-1", "user": {"a": 1}, "v": "2026-01"})
    engine.run_until_idle()
    [run] = runs_of(store)
    assert seen["event"] == Event(name="app/x", data={"k": "v"}, id="u-1", ts=int(clock.now().timestamp() * 1000),
                                  user={"a": 1}, v="2026-01")
    assert seen["events"] == [seen["event"]]
    assert seen["run_id"] == run["run_id"] and run["event_id"] == event_id
    assert seen["attempt"] == 0
    assert seen["function_id"] == "f"
    assert callable(seen["step"].run)
    assert hasattr(seen["logger"], "info")


def test_the_log_keeps_the_event_as_sent_whatever_the_caller_does_later(
    run_store: EventStore, clock: ManualClock
) -> None:
    seen: list[Any] = []
    engine = make_engine(run_store, clock, define_function(
        lambda ctx: seen.append(ctx.event.data), fn_id="f", trigger=TriggerEvent(event="app/x")))
    data: dict[str, Any] = {"items": [1], "pair": (1, 2)}
    [event_id] = engine.send({"name": "app/x", "data": data})
    data["items"].append("changed after send")
    data["late"] = True
    engine.run_until_idle()
    assert seen == [{"items": [1], "pair": [1, 2]}]
    [event] = queries.list_events(run_store)
    assert event["data"] == {"items": [1], "pair": [1, 2]}
    assert received_entry(run_store, event_id)["event"]["data"] == {"items": [1], "pair": [1, 2]}
