"""Flow control through the synchronous engine on a manual clock: throttle, rate limit, idempotency,
debounce, batching, singleton, key expressions that fail on an event, and restarts.

Every scenario ends with the projections matching the log (``rebuild_projections(apply=False)``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from steplog.engine import (
    Batch,
    Context,
    Debounce,
    Engine,
    FlowOptions,
    FunctionDef,
    FunctionRegistry,
    ManualClock,
    Priority,
    RateLimit,
    RunProjector,
    Singleton,
    Throttle,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.eventstore import EventStore, MemoryEventStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
GO = "app/go"
TICK = timedelta(microseconds=1)
DAY = timedelta(hours=24)


class Starts(list[tuple[float, list[Any]]]):
    """(seconds after START, [event data]) of each run's first call."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    def record(self, ctx: Context) -> list[Any]:
        data = [event.data for event in ctx.events]
        self.append(((self.clock.now() - START).total_seconds(), data))
        return data

    @property
    def times(self) -> list[float]:
        return [at for at, _ in self]

    @property
    def data(self) -> list[list[Any]]:
        return [events for _, events in self]


def recording(starts: Starts, fn_id: str = "f", *, sleep: str | None = None, **flow: Any) -> FunctionDef:
    """A function on ``app/go`` that records its start (once), optionally sleeps, and returns its events' data."""

    def handler(ctx: Context) -> list[Any]:
        data: list[Any] = ctx.step.run("start", lambda: starts.record(ctx))
        if sleep is not None:
            ctx.step.sleep("nap", sleep)
        return data

    return define_function(handler, fn_id=fn_id, trigger=TriggerEvent(GO), flow=FlowOptions(**flow))


def engine_for(store: EventStore, clock: ManualClock, *functions: FunctionDef) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock)


def send(engine: Engine, *data: dict[str, Any], **fields: Any) -> list[str]:
    ids: list[str] = engine.send([{"name": GO, "data": item, **fields} for item in data])
    engine.run_until_idle()
    return ids


def run_until(engine: Engine, clock: ManualClock, seconds: float) -> None:
    """Move the clock to START + seconds, stopping at every timer on the way (so runs start on time)."""
    horizon = START + timedelta(seconds=seconds)
    engine.run_until_idle()
    for _ in range(10_000):
        due = engine.next_timer()
        if due is None or due > horizon:
            break
        engine.advance(max(due - clock.now(), timedelta(0)))
    else:
        raise AssertionError("timers never settle")
    if horizon > clock.now():
        engine.advance(horizon - clock.now())


def notes(store: EventStore, internal_id: str) -> list[dict[str, Any]]:
    [row] = store.query("events", where={"internal_id": internal_id})
    return json.loads(row["flow"]) if row["flow"] else []


def statuses(store: EventStore, fn_id: str = "f") -> list[str]:
    return sorted(run["status"] for run in queries.list_runs(store, function_id=fn_id))


def consistent(store: EventStore) -> None:
    assert store.rebuild_projections(apply=False) == []


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


@pytest.fixture
def starts(clock: ManualClock) -> Starts:
    return Starts(clock)


# -- throttle -----------------------------------------------------------------------------------


def test_throttle_without_burst_starts_one_per_emission_interval(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, throttle=Throttle(limit=2, period="10s", burst=0)))
    send(engine, *({"i": i} for i in range(5)))
    assert starts.times == [0.0]
    assert statuses(store).count("queued") == 4
    run_until(engine, clock, 60)
    assert starts.times == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert starts.data == [[{"i": i}] for i in range(5)]  # in order, none dropped
    assert statuses(store) == ["completed"] * 5
    consistent(store)


def test_throttle_never_starts_a_queued_run_early(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, throttle=Throttle(limit=1, period="10s", burst=0)))
    send(engine, {"i": 0}, {"i": 1})
    engine.advance(timedelta(seconds=10) - TICK)
    assert starts.times == [0.0]
    engine.advance(TICK)
    assert starts.times == [0.0, 10.0]
    consistent(store)


def test_throttle_with_burst_one_starts_two_at_once(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, throttle=Throttle(limit=2, period="10s", burst=1)))
    send(engine, *({"i": i} for i in range(5)))
    run_until(engine, clock, 60)
    assert starts.times == [0.0, 0.0, 5.0, 10.0, 15.0]
    consistent(store)


def test_throttle_is_per_key(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    throttle = Throttle(limit=1, period="10s", burst=0, key="event.data.k")
    engine = engine_for(store, clock, recording(starts, throttle=throttle))
    send(engine, {"k": "a"}, {"k": "b"}, {"k": "a"})
    run_until(engine, clock, 30)
    assert starts == [(0.0, [{"k": "a"}]), (0.0, [{"k": "b"}]), (10.0, [{"k": "a"}])]
    assert sorted(row["key"] for row in store.query("buckets") if row["kind"] == "throttle") == ["a", "b"]
    consistent(store)


def test_throttle_is_per_function(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    throttle = Throttle(limit=1, period="10s", burst=0, key="'shared'")
    engine = engine_for(store, clock, recording(starts, "f", throttle=throttle), recording(starts, "g", throttle=throttle))
    send(engine, {"i": 0})
    assert starts.times == [0.0, 0.0]
    consistent(store)


# -- rate limit and idempotency -------------------------------------------------------------------


def test_rate_limit_skips_a_run_and_records_why(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, rate_limit=RateLimit(limit=1, period="1m")))
    first, second = send(engine, {"i": 0}, {"i": 1})
    assert starts.data == [[{"i": 0}]]
    [skipped] = queries.list_runs(store, status="skipped")
    assert skipped["function_id"] == "f" and skipped["event_id"] == second
    assert skipped["error"]["reason"] == "rate_limit"
    assert skipped["started_at"] is None
    [note] = notes(store, second)
    assert note["function_id"] == "f"
    assert (note["outcome"], note["reason"], note["run_id"]) == ("skipped", "rate_limit", skipped["run_id"])
    assert notes(store, first) == []
    assert queries.list_events(store)[0]["runs"] == [skipped["run_id"]]  # the event is still stored
    consistent(store)


def test_rate_limit_admits_again_after_its_period(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, rate_limit=RateLimit(limit=1, period="1m")))
    send(engine, {"i": 0})
    engine.advance(timedelta(minutes=1) - TICK)
    send(engine, {"i": 1})
    engine.advance(TICK)
    send(engine, {"i": 2})
    assert starts.data == [[{"i": 0}], [{"i": 2}]]
    assert len(queries.list_runs(store, status="skipped")) == 1
    consistent(store)


def test_rate_limit_is_per_key(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, rate_limit=RateLimit(limit=1, period="1h", key="event.data.k")))
    send(engine, {"k": 1}, {"k": 2}, {"k": 1}, {"k": 2}, {"k": 3})
    assert starts.data == [[{"k": 1}], [{"k": 2}], [{"k": 3}]]
    assert len(queries.list_runs(store, status="skipped")) == 2
    consistent(store)


def test_rate_limit_of_ten_allows_two_at_once_then_one_per_tenth_of_the_period(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, rate_limit=RateLimit(limit=10, period="60s")))
    send(engine, {"i": 0}, {"i": 1}, {"i": 2})
    assert len(starts) == 2
    engine.advance(timedelta(seconds=6) - TICK)
    send(engine, {"i": 3})
    engine.advance(TICK)
    send(engine, {"i": 4})
    assert starts.data == [[{"i": 0}], [{"i": 1}], [{"i": 4}]]
    consistent(store)


def test_idempotency_starts_one_run_per_key_per_day(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, idempotency="event.data.order"))
    send(engine, {"order": "o1"}, {"order": "o2"}, {"order": "o1"})
    engine.advance(DAY - TICK)
    send(engine, {"order": "o1"})
    assert starts.data == [[{"order": "o1"}], [{"order": "o2"}]]
    skipped = queries.list_runs(store, status="skipped")
    assert [run["error"]["reason"] for run in skipped] == ["idempotency", "idempotency"]
    engine.advance(TICK)
    send(engine, {"order": "o1"})
    assert starts.data[-1] == [{"order": "o1"}] and len(starts) == 3
    consistent(store)


# -- debounce -------------------------------------------------------------------------------------


def test_debounce_starts_a_period_after_the_last_event_with_that_event(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s")))
    [first] = send(engine, {"i": 0})
    assert notes(store, first) == [{"function_id": "f", "outcome": "debounced"}]
    engine.advance(4)
    send(engine, {"i": 1})
    engine.advance(4)
    send(engine, {"i": 2})
    engine.advance(timedelta(seconds=10) - TICK)
    assert starts == []
    engine.advance(TICK)
    assert starts == [(18.0, [{"i": 2}])]
    run_until(engine, clock, 100)
    assert len(starts) == 1
    assert store.query("debounces") == []
    consistent(store)


def test_debounce_timeout_caps_the_wait(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s", timeout="15s")))
    for i in range(3):
        send(engine, {"i": i})
        engine.advance(5)
    assert starts == [(15.0, [{"i": 2}])]
    send(engine, {"i": 3})  # at 15: a new debounce
    run_until(engine, clock, 60)
    assert starts == [(15.0, [{"i": 2}]), (25.0, [{"i": 3}])]
    consistent(store)


def test_debounce_is_per_key(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s", key="event.data.k")))
    send(engine, {"k": 1, "i": 0})
    engine.advance(3)
    send(engine, {"k": 2, "i": 1})
    engine.advance(3)
    send(engine, {"k": 1, "i": 2})
    run_until(engine, clock, 60)
    assert starts == [(13.0, [{"k": 2, "i": 1}]), (16.0, [{"k": 1, "i": 2}])]
    consistent(store)


def test_debounce_ignores_an_event_older_than_the_pending_one(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s")))
    send(engine, {"i": "new"})
    engine.advance(2)
    older = int((START - timedelta(seconds=5)).timestamp() * 1000)
    [ignored] = send(engine, {"i": "old"}, ts=older)
    assert notes(store, ignored)[0]["outcome"].startswith("debounce: ignored")
    run_until(engine, clock, 60)
    assert starts == [(10.0, [{"i": "new"}])]  # neither replaced nor pushed back
    consistent(store)


def test_an_event_older_than_the_pending_debounce_takes_no_rate_limit_token(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    rate = RateLimit(limit=1, period="1m", key="event.data.k")
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s"), rate_limit=rate))
    send(engine, {"k": 1})
    engine.advance(2)
    send(engine, {"k": 2}, ts=int((START - timedelta(seconds=5)).timestamp() * 1000))
    engine.advance(3)
    send(engine, {"k": 2, "i": "later"})
    run_until(engine, clock, 60)
    assert starts == [(15.0, [{"k": 2, "i": "later"}])]
    assert queries.list_runs(store, status="skipped") == []
    consistent(store)


# -- batching -------------------------------------------------------------------------------------


def test_a_full_batch_starts_at_once_with_its_events_in_order(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, batch_events=Batch(max_size=3, timeout="10s")))
    [first] = send(engine, {"i": 0})
    assert notes(store, first) == [{"function_id": "f", "outcome": "batched"}]
    engine.advance(2)
    [_, _, left] = send(engine, {"i": 1}, {"i": 2}, {"i": 3})
    assert starts == [(2.0, [{"i": 0}, {"i": 1}, {"i": 2}])]
    assert [row["internal_id"] for row in store.query("batched")] == [left]
    run_until(engine, clock, 12)
    assert starts == [(2.0, [{"i": 0}, {"i": 1}, {"i": 2}]), (12.0, [{"i": 3}])]
    assert store.query("batched") == []
    consistent(store)


def test_a_batch_starts_at_its_timeout(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, batch_events=Batch(max_size=5, timeout="10s")))
    send(engine, {"i": 0})
    engine.advance(4)
    send(engine, {"i": 1})
    engine.advance(timedelta(seconds=6) - TICK)
    assert starts == []
    engine.advance(TICK)
    assert starts == [(10.0, [{"i": 0}, {"i": 1}])]
    consistent(store)


def test_batches_are_per_key(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, batch_events=Batch(max_size=2, timeout="10s", key="event.data.k")))
    send(engine, {"k": 1, "i": 0}, {"k": 2, "i": 1}, {"k": 1, "i": 2})
    assert starts == [(0.0, [{"k": 1, "i": 0}, {"k": 1, "i": 2}])]
    run_until(engine, clock, 10)
    assert starts[1:] == [(10.0, [{"k": 2, "i": 1}])]
    consistent(store)


def test_an_event_for_which_batch_if_is_false_runs_alone_at_once(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    batch = Batch(max_size=3, timeout="10s", if_exp="event.data.batch")
    engine = engine_for(store, clock, recording(starts, batch_events=batch))
    [_, alone] = send(engine, {"batch": True, "i": 0}, {"batch": False, "i": 1})
    assert starts == [(0.0, [{"batch": False, "i": 1}])]
    assert notes(store, alone) == []
    run_until(engine, clock, 10)
    assert starts[1:] == [(10.0, [{"batch": True, "i": 0}])]
    consistent(store)


def test_an_event_for_which_batch_if_fails_runs_alone_and_the_error_is_recorded(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    batch = Batch(max_size=3, timeout="10s", if_exp="event.data.batch")
    engine = engine_for(store, clock, recording(starts, batch_events=batch))
    [failing] = send(engine, {"i": 0})
    assert starts == [(0.0, [{"i": 0}])]
    [note] = notes(store, failing)
    assert note["function_id"] == "f"
    assert len(note["errors"]) == 1 and note["errors"][0].startswith("batch_events.if_exp")
    assert store.query("batched") == []
    consistent(store)


# -- singleton ------------------------------------------------------------------------------------


def test_singleton_skip_skips_while_a_run_is_active(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    singleton = Singleton(mode="skip", key="event.data.user")
    engine = engine_for(store, clock, recording(starts, sleep="1h", singleton=singleton))
    send(engine, {"user": "u1", "i": 0})
    engine.advance(60)
    [second] = send(engine, {"user": "u1", "i": 1})
    send(engine, {"user": "u2", "i": 2})
    [skipped] = queries.list_runs(store, status="skipped")
    assert skipped["error"]["reason"] == "singleton" and skipped["event_id"] == second
    assert notes(store, second)[0]["reason"] == "singleton"
    run_until(engine, clock, 3700)
    send(engine, {"user": "u1", "i": 3})  # the first run ended: the key is free
    assert [data[0]["i"] for data in starts.data] == [0, 2, 3]
    run_until(engine, clock, 8000)
    assert statuses(store) == ["completed", "completed", "completed", "skipped"]
    consistent(store)


def test_singleton_cancel_cancels_the_sleeping_run_and_starts_the_new_one(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, sleep="1h", singleton=Singleton(mode="cancel")))
    send(engine, {"i": 0})
    [old] = queries.list_runs(store, status="waiting")
    engine.advance(60)
    send(engine, {"i": 1})
    assert queries.get_run(store, old["run_id"])["status"] == "cancelled"
    run_until(engine, clock, 60 + 3600)
    runs = {run["run_id"]: run for run in queries.list_runs(store)}
    assert runs.pop(old["run_id"])["status"] == "cancelled"
    [new] = runs.values()
    assert new["status"] == "completed" and new["output"] == [{"i": 1}]
    assert starts.data == [[{"i": 0}], [{"i": 1}]]
    consistent(store)


# -- key expressions that fail on an event --------------------------------------------------------


def test_a_failing_throttle_key_uses_the_empty_key_and_is_recorded(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    throttle = Throttle(limit=1, period="10s", burst=0, key="event.data.missing.x")
    engine = engine_for(store, clock, recording(starts, throttle=throttle))
    [first, second] = send(engine, {"i": 0}, {"i": 1})
    for internal_id in (first, second):
        [note] = notes(store, internal_id)
        assert note["function_id"] == "f"
        assert len(note["errors"]) == 1 and note["errors"][0].startswith("throttle.key: ")
    assert [row["key"] for row in store.query("buckets") if row["kind"] == "throttle"] == [""]
    run_until(engine, clock, 30)
    assert starts.times == [0.0, 10.0]  # one bucket for both
    consistent(store)


def test_a_failing_debounce_key_uses_the_empty_key_and_is_recorded(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s", key="event.data.missing.x")))
    [event] = send(engine, {"i": 0})
    [note] = notes(store, event)
    assert note["outcome"] == "debounced" and note["errors"][0].startswith("debounce.key: ")
    assert [row["key"] for row in store.query("debounces")] == [""]
    run_until(engine, clock, 10)
    assert starts == [(10.0, [{"i": 0}])]
    consistent(store)


def test_a_failing_concurrency_key_and_priority_still_schedule_the_run(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    from steplog.engine import Concurrency

    function = recording(starts, concurrency=[Concurrency(limit=1, key="event.data.missing.x")],
                         priority=Priority(run="event.data.p"))
    engine = engine_for(store, clock, function)
    [event] = send(engine, {"i": 0})
    assert starts == [(0.0, [{"i": 0}])]
    [note] = notes(store, event)
    assert [error.split(":")[0] for error in note["errors"]] == ["concurrency.key", "priority.run"]
    [run] = queries.list_runs(store)
    assert engine.run_flow(run["run_id"]) == {"concurrency": ["fn:f:0:"], "priority": 0}
    consistent(store)


def test_a_key_that_fails_when_a_debounce_fires_is_recorded(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    throttle = Throttle(limit=1, period="10s", key="event.data.missing.x")
    engine = engine_for(store, clock, recording(starts, debounce=Debounce(period="10s"), throttle=throttle))
    send(engine, {"i": 0})
    run_until(engine, clock, 10)
    assert starts.times == [10.0]
    assert any("throttle.key" in json.dumps(entry.data) for entry in store.read_all())


def test_an_infinite_priority_does_not_stop_the_event(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    engine = engine_for(store, clock, recording(starts, priority=Priority(run="event.data.a / event.data.b")))
    send(engine, {"a": 1.0, "b": 0.0})
    assert len(starts) == 1


def outcomes_with_rate_limit_and_singleton(restart: bool) -> list[tuple[str, str | None]]:
    """Events at 0 s (starts, sleeps 100 s), 70 s (singleton skips it; the rate limit would allow it)
    and 110 s (the first run has ended), with or without a restart before the last one."""
    store, clock = MemoryEventStore(RunProjector()), ManualClock(START)
    starts = Starts(clock)
    function = recording(starts, sleep="100s", rate_limit=RateLimit(limit=1, period="1m"),
                         singleton=Singleton(mode="skip"))
    engine = engine_for(store, clock, function)
    send(engine, {"i": 0})
    engine.advance(70)
    send(engine, {"i": 1})
    engine.advance(40)
    if restart:
        engine = engine_for(store, clock, function)
        engine.start()
    send(engine, {"i": 2})
    consistent(store)
    runs = sorted(queries.list_runs(store), key=lambda run: run["scheduled_at"])
    return [(run["status"], (run["error"] or {}).get("reason")) for run in runs]


def test_a_run_singleton_skips_leaves_the_rate_limit_as_the_log_records_it() -> None:
    assert outcomes_with_rate_limit_and_singleton(restart=False) == outcomes_with_rate_limit_and_singleton(restart=True)


# -- restarts -------------------------------------------------------------------------------------


def test_a_pending_debounce_fires_at_its_time_after_a_restart(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    function = recording(starts, debounce=Debounce(period="10s", key="event.data.k"))
    before = engine_for(store, clock, function)
    send(before, {"k": 1, "i": 0})
    before.advance(4)
    send(before, {"k": 1, "i": 1})
    clock.advance(3)
    engine = engine_for(store, clock, function)
    engine.start()
    assert engine.next_timer() == START + timedelta(seconds=14)
    engine.advance(timedelta(seconds=7) - TICK)
    assert starts == []
    engine.advance(TICK)
    assert starts == [(14.0, [{"k": 1, "i": 1}])]
    assert store.query("debounces") == []
    consistent(store)


def test_a_pending_batch_fires_at_its_time_after_a_restart(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    function = recording(starts, batch_events=Batch(max_size=3, timeout="10s"))
    send(engine_for(store, clock, function), {"i": 0})
    clock.advance(4)
    engine = engine_for(store, clock, function)
    engine.start()
    assert engine.next_timer() == START + timedelta(seconds=10)
    send(engine, {"i": 1})
    engine.advance(timedelta(seconds=6) - TICK)
    assert starts == []
    engine.advance(TICK)
    assert starts == [(10.0, [{"i": 0}, {"i": 1}])]
    assert store.query("batched") == []
    consistent(store)


def test_a_full_batch_after_a_restart_includes_the_events_from_before(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    function = recording(starts, batch_events=Batch(max_size=3, timeout="10s"))
    send(engine_for(store, clock, function), {"i": 0}, {"i": 1})
    engine = engine_for(store, clock, function)
    engine.start()
    send(engine, {"i": 2})
    assert starts == [(0.0, [{"i": 0}, {"i": 1}, {"i": 2}])]
    assert store.query("batched") == []
    run_until(engine, clock, 30)
    assert len(starts) == 1
    consistent(store)


def test_throttle_state_survives_a_restart(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    function = recording(starts, throttle=Throttle(limit=1, period="10s", burst=0))
    send(engine_for(store, clock, function), {"i": 0})
    clock.advance(3)
    engine = engine_for(store, clock, function)
    engine.start()
    send(engine, {"i": 1})
    run_until(engine, clock, 30)
    assert starts.times == [0.0, 10.0]
    consistent(store)


def test_queued_throttled_runs_start_on_time_after_a_restart(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    function = recording(starts, throttle=Throttle(limit=1, period="10s", burst=0))
    send(engine_for(store, clock, function), {"i": 0}, {"i": 1}, {"i": 2})
    clock.advance(1)
    engine = engine_for(store, clock, function)
    engine.start()
    send(engine, {"i": 3})
    run_until(engine, clock, 60)
    assert starts.times == [0.0, 10.0, 20.0, 30.0]
    consistent(store)


def test_idempotency_survives_a_restart(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    function = recording(starts, idempotency="event.data.order")
    send(engine_for(store, clock, function), {"order": "o1"})
    clock.advance(timedelta(hours=1))
    engine = engine_for(store, clock, function)
    engine.start()
    send(engine, {"order": "o1"})
    assert len(starts) == 1
    assert [run["error"]["reason"] for run in queries.list_runs(store, status="skipped")] == ["idempotency"]
    consistent(store)


def test_singleton_state_survives_a_restart(store: EventStore, clock: ManualClock, starts: Starts) -> None:
    function = recording(starts, sleep="1h", singleton=Singleton(mode="skip"))
    send(engine_for(store, clock, function), {"i": 0})
    clock.advance(60)
    engine = engine_for(store, clock, function)
    engine.start()
    send(engine, {"i": 1})
    assert [run["error"]["reason"] for run in queries.list_runs(store, status="skipped")] == ["singleton"]
    run_until(engine, clock, 3700)
    send(engine, {"i": 2})
    assert [data[0]["i"] for data in starts.data] == [0, 2]
    consistent(store)


def test_throttled_runs_that_came_due_while_the_engine_was_down_start_at_the_throttled_rate(
    store: EventStore, clock: ManualClock, starts: Starts
) -> None:
    function = recording(starts, throttle=Throttle(limit=1, period="10s", burst=0))
    before = engine_for(store, clock, function)
    before.send([{"name": GO, "data": {"i": i}} for i in range(5)])  # slots at 0, 10, 20, 30, 40 s; none run
    clock.advance(100)  # the engine is down past every slot
    engine = engine_for(store, clock, function)
    engine.start()
    run_until(engine, clock, 140)
    assert [at for at, _ in starts] == [100.0, 110.0, 120.0, 130.0, 140.0]
    assert [data for _, data in starts] == [[{"i": i}] for i in range(5)]
    send(engine, {"i": 5})  # a new event queues behind the spaced-again runs
    run_until(engine, clock, 200)
    assert [at for at, _ in starts][-1] == 150.0
    consistent(store)
