"""ctx.step.wait_for_event on the synchronous engine: the first matching event committed after the
wait resolves it, earlier and non-matching ones never do; the timeout gives None exactly at the
deadline; one event resumes many runs; an expiry and a resolution racing end the wait once; the
wait survives a restart; the replay does not register it again; bad options fail the run; and the
pause index finds exactly the pauses a scan would.

Every scenario ends with the projections matching the log (``rebuild_projections(apply=False)``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import (
    Context,
    Engine,
    Event,
    FunctionDef,
    FunctionRegistry,
    ManualClock,
    RunProjector,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine import records as r
from steplog.engine.coordination import Accepted, Done, ExpireWait, SendEvents
from steplog.engine.pauses import WAIT_KIND, PauseIndex, make_pause, match_expression
from steplog.eventstore import EventStore, MemoryEventStore, SqliteEventStore, format_time

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # the conftest clock's start
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
GO = "app/go"
PAID = "app/paid"
KINDS = ["def", "async def"]


def waiter(
    kind: str = "def", *, fn_id: str = "waiter", calls: Counter[str] | None = None, **options: Any
) -> FunctionDef:
    """A function that waits for ``app/paid`` (1h unless ``options`` say otherwise), runs "after",
    and returns what it got: ``{"id", "data"}`` of the event, or None."""
    wait: dict[str, Any] = {"event": PAID, "timeout": "1h", **options}
    counted = calls if calls is not None else Counter[str]()

    def after() -> str:
        counted["after"] += 1
        return "after"

    def result(event: Event | None) -> dict[str, Any] | None:
        assert event is None or isinstance(event, Event)
        return None if event is None else {"id": event.id, "data": event.data}

    if kind == "def":
        def handler(ctx: Context) -> dict[str, Any] | None:
            event = ctx.step.wait_for_event("w", **wait)
            ctx.step.run("after", after)
            return result(event)

        return define_function(handler, fn_id=fn_id, trigger=TriggerEvent(event=GO))

    async def async_handler(ctx: Context) -> dict[str, Any] | None:
        event = await ctx.step.wait_for_event("w", **wait)
        await ctx.step.run("after", after)
        return result(event)

    return define_function(async_handler, fn_id=fn_id, trigger=TriggerEvent(event=GO))


def make_engine(store: EventStore, clock: ManualClock, *functions: FunctionDef) -> Engine:
    registry = FunctionRegistry()
    for function in functions:
        registry.add(function)
    return Engine(store, registry=registry, clock=clock)


def start_one(engine: Engine, data: dict[str, Any] | None = None) -> str:
    """Send one ``app/go`` that starts exactly one run, queue it, and return its id."""
    [run] = engine.accept({"name": GO, "data": data or {}}).runs
    engine._ready.append(run.run_id)
    return run.run_id


def paid(**data: Any) -> dict[str, Any]:
    return {"name": PAID, "data": data}


def signals(store: EventStore, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for e in store.read_stream(r.signal_stream(run_id))]


def entry_types(store: EventStore, run_id: str) -> list[str]:
    return [e.type for e in store.read_stream(r.run_stream(run_id))]


def output(store: EventStore, run_id: str) -> Any:
    run = queries.get_run(store, run_id)
    assert run["status"] == "completed", run
    return run["output"]


def status(store: EventStore, run_id: str) -> str:
    return str(queries.get_run(store, run_id)["status"])


def consistent(store: EventStore) -> None:
    assert store.rebuild_projections(apply=False) == []


@pytest.fixture
def store() -> EventStore:
    return MemoryEventStore(RunProjector())


# -- resolution: the first matching event after the registration ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_wait_resolves_with_the_first_matching_event_sent_after_it_and_not_one_sent_before(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, waiter(kind, calls=calls, match="data.k"))
    run_id = start_one(engine, {"k": 1})
    [early] = engine.send(paid(k=1, n="early"))  # committed before the wait is registered
    assert engine.run_until_idle() == 1

    assert status(run_store, run_id) == "waiting"
    assert signals(run_store, run_id) == []
    [row] = run_store.query("waits")
    assert (row["run_id"], row["step"], row["kind"], row["event"]) == (run_id, "w", WAIT_KIND, PAID)
    assert row["expression"] == "event.data.k == async.data.k"
    assert row["expires_at"] == format_time(START + HOUR)
    assert run_store.query("timers") == [{"run_id": run_id, "due_at": format_time(START + HOUR), "reason": "wait w"}]
    assert calls == {}
    consistent(run_store)

    first, second = engine.send([paid(k=1, n="first"), paid(k=1, n="second")])
    assert engine.run_until_idle() == 1
    assert output(run_store, run_id) == {"id": first, "data": {"k": 1, "n": "first"}}
    assert first != early and calls == {"after": 1}
    [(kind_of_signal, data)] = signals(run_store, run_id)
    assert kind_of_signal == r.WAIT_RESOLVED and data["step"] == "w" and data["event"]["id"] == first
    assert entry_types(run_store, run_id).count(r.STEP_WAITING) == 1
    [wait_step] = [s for s in queries.run_history(run_store, run_id).steps if s.step == "w" and s.status == "completed"]
    assert wait_step.kind == WAIT_KIND and wait_step.output["id"] == first
    assert run_store.query("waits") == [] and run_store.query("timers") == []
    assert len(engine.coordinator.pauses) == 0
    assert second not in str(signals(run_store, run_id))
    consistent(run_store)


@pytest.mark.parametrize(
    ("options", "misses", "hit"),
    [
        pytest.param({"match": "data.k"}, [paid(k=2), paid(k="1"), paid(other=1), paid()], paid(k=1), id="match-key"),
        pytest.param(
            {"if_exp": "async.data.amount > 100"}, [paid(amount=100), paid(amount=5)], paid(amount=101), id="if-false"
        ),
        pytest.param(
            {"if_exp": "async.data.amount > 100"},
            [paid(amount="lots"), paid(), paid(amount=None)],  # the expression fails on these candidates
            paid(amount=250),
            id="if-error",
        ),
        pytest.param(
            {"if_exp": "async.data.status == 'paid' && event.data.k == async.data.k"},
            [paid(status="paid", k=2), paid(status="open", k=1)],
            paid(status="paid", k=1),
            id="indexed-literal-and-path",
        ),
        pytest.param(
            {"if_exp": "async.data.k == event.data.k || async.data.vip == true"},
            [paid(k=3), paid(vip=False)],
            paid(vip=True),
            id="scanned-or",
        ),
        pytest.param({}, [{"name": "app/other", "data": {"k": 1}}, {"name": "app/paid.x"}], paid(), id="other-name"),
    ],
)
def test_events_that_do_not_match_leave_the_wait_pending(
    run_store: EventStore, clock: ManualClock, options: dict[str, Any], misses: list[dict[str, Any]],
    hit: dict[str, Any],
) -> None:
    engine = make_engine(run_store, clock, waiter(**options))
    run_id = start_one(engine, {"k": 1})
    engine.run_until_idle()

    for miss in misses:
        engine.send(miss)
    assert engine.run_until_idle() == 0
    assert status(run_store, run_id) == "waiting"
    assert signals(run_store, run_id) == []
    assert len(run_store.query("waits")) == 1
    consistent(run_store)

    [hit_id] = engine.send(hit)
    assert engine.run_until_idle() == 1
    assert output(run_store, run_id)["id"] == hit_id
    consistent(run_store)


def test_two_waits_with_the_same_id_each_take_their_own_event(store: EventStore, clock: ManualClock) -> None:
    def handler(ctx: Context) -> list[Any]:
        got = []
        for _ in range(2):
            event = ctx.step.wait_for_event("w", event=PAID, timeout="1h")
            got.append(None if event is None else event.data["n"])
        return got

    engine = make_engine(store, clock, define_function(handler, fn_id="twice", trigger=TriggerEvent(event=GO)))
    run_id = start_one(engine)
    engine.run_until_idle()
    engine.send(paid(n=1))
    engine.run_until_idle()
    assert [row["step"] for row in store.query("waits")] == ["w:1"]
    engine.send(paid(n=2))
    engine.run_until_idle()
    assert output(store, run_id) == [1, 2]
    assert [d["step"] for _, d in signals(store, run_id)] == ["w", "w:1"]
    consistent(store)


def test_a_duplicate_of_an_event_sent_before_the_wait_does_not_resolve_it(
    run_store: EventStore, clock: ManualClock
) -> None:
    engine = make_engine(run_store, clock, waiter())
    run_id = start_one(engine)
    engine.send({**paid(n="original"), "id": "pay-1"})
    engine.run_until_idle()
    engine.send({**paid(n="retry of the same send"), "id": "pay-1"})  # within 24 h: a duplicate
    assert engine.run_until_idle() == 0
    assert status(run_store, run_id) == "waiting" and signals(run_store, run_id) == []
    engine.send({**paid(n="new"), "id": "pay-2"})
    engine.run_until_idle()
    assert output(run_store, run_id) == {"id": "pay-2", "data": {"n": "new"}}
    consistent(run_store)


def test_an_event_that_starts_runs_also_resolves_waits(store: EventStore, clock: ManualClock) -> None:
    started: list[str] = []
    engine = make_engine(store, clock, waiter(), define_function(
        lambda ctx: started.append(ctx.event.id), fn_id="on-paid", trigger=TriggerEvent(event=PAID)
    ))
    run_id = start_one(engine)
    engine.run_until_idle()
    [event_id] = engine.send(paid())
    engine.run_until_idle()
    assert started == [event_id]
    assert output(store, run_id)["id"] == event_id
    consistent(store)


# -- the timeout --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_wait_times_out_with_none_exactly_at_its_deadline(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    calls = Counter[str]()
    engine = make_engine(run_store, clock, waiter(kind, calls=calls, timeout=timedelta(minutes=90)))
    run_id = start_one(engine)
    engine.run_until_idle()
    deadline = START + timedelta(minutes=90)
    assert engine.next_timer() == deadline

    assert engine.advance(timedelta(minutes=90) - TICK) == 0
    assert status(run_store, run_id) == "waiting" and calls == {}
    assert signals(run_store, run_id) == []

    assert engine.advance(TICK) == 1
    assert output(run_store, run_id) is None
    assert calls == {"after": 1}
    assert signals(run_store, run_id) == [(r.WAIT_EXPIRED, {"step": "w"})]
    [completed] = [e for e in run_store.read_stream(r.run_stream(run_id))
                   if e.type == r.STEP_COMPLETED and e.data["step"] == "w"]
    assert completed.data["output"] is None and completed.data["ended_at"] == format_time(deadline)
    assert run_store.query("waits") == [] and run_store.query("timers") == []

    engine.send(paid())  # too late: nothing listens any more
    assert engine.run_until_idle() == 0
    assert signals(run_store, run_id) == [(r.WAIT_EXPIRED, {"step": "w"})]
    consistent(run_store)


def test_a_pending_wait_woken_early_waits_on_without_writing(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, waiter())
    run_id = start_one(engine)
    engine.run_until_idle()
    before = entry_types(store, run_id)
    clock.advance(timedelta(minutes=30))
    outcome = engine.invoke(run_id)
    assert (outcome.status, outcome.wake_at) == ("waiting", START + HOUR)
    assert entry_types(store, run_id) == before
    assert signals(store, run_id) == []
    assert len(store.query("waits")) == 1
    consistent(store)


@pytest.mark.parametrize(("before", "resolved"), [(TICK, True), (timedelta(0), False)])
def test_an_event_at_the_deadline_itself_is_too_late(
    run_store: EventStore, clock: ManualClock, before: timedelta, resolved: bool
) -> None:
    engine = make_engine(run_store, clock, waiter())
    run_id = start_one(engine)
    engine.run_until_idle()

    clock.set(START + HOUR - before)  # the run's timer has not fired yet
    [event_id] = engine.send(paid())
    engine.advance(HOUR)
    got = output(run_store, run_id)
    [(signal, _)] = signals(run_store, run_id)
    if resolved:
        assert got is not None and got["id"] == event_id and signal == r.WAIT_RESOLVED
    else:
        assert got is None and signal == r.WAIT_EXPIRED
    consistent(run_store)


@pytest.mark.parametrize("expiry_first", [False, True])
def test_an_expiry_and_an_event_in_one_batch_end_the_wait_once(
    run_store: EventStore, clock: ManualClock, expiry_first: bool
) -> None:
    """The coordinator plans both in order: whichever comes first decides; the other sees its answer."""
    engine = make_engine(run_store, clock, waiter())
    run_id = start_one(engine)
    engine.run_until_idle()
    clock.advance(HOUR - TICK)

    requests: list[Any] = [SendEvents(paid(n=1)), ExpireWait(run_id, "w")]
    if expiry_first:
        requests.reverse()
    answers = engine.coordinator.handle(requests, clock.now())
    [sent] = [a for a in answers if isinstance(a, Accepted)]
    [expired] = [a for a in answers if isinstance(a, Done)]
    engine._ready.append(run_id)
    engine.run_until_idle()

    if expiry_first:
        assert expired.value is None and sent.wakes == []
        assert output(run_store, run_id) is None
        assert signals(run_store, run_id) == [(r.WAIT_EXPIRED, {"step": "w"})]
    else:
        assert expired.value["id"] == sent.ids[0]
        assert output(run_store, run_id)["id"] == sent.ids[0]
        assert [t for t, _ in signals(run_store, run_id)] == [r.WAIT_RESOLVED]
    consistent(run_store)


def test_an_expiry_from_a_stale_state_answers_the_event_that_resolved_the_wait(
    run_store: EventStore, clock: ManualClock
) -> None:
    """An invocation that read the run before the event matched reaches the deadline and asks to
    expire the wait: it gets the event, and no second signal is written."""
    engine = make_engine(run_store, clock, waiter())
    run_id = start_one(engine)
    engine.run_until_idle()
    clock.advance(HOUR - TICK)
    stale = engine.load(run_id)
    [event_id] = engine.send(paid(n=1))
    clock.advance(TICK)

    outcome = engine.invoke(run_id, stale)
    assert outcome.status == "completed"
    assert outcome.output["id"] == event_id
    assert [t for t, _ in signals(run_store, run_id)] == [r.WAIT_RESOLVED]
    engine.run_until_idle()  # the wake the event queued finds the run ended
    assert output(run_store, run_id)["id"] == event_id
    assert entry_types(run_store, run_id).count(r.STEP_COMPLETED) == 2
    consistent(run_store)


# -- many runs, restarts, replays ----------------------------------------------------------------------------


def test_one_event_resumes_every_run_waiting_for_it(run_store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(run_store, clock, waiter(match="data.k"))
    alike = [start_one(engine, {"k": 7}) for _ in range(3)]
    other = start_one(engine, {"k": 8})
    assert engine.run_until_idle() == 4
    assert len(engine.coordinator.pauses) == 4

    [event_id] = engine.send(paid(k=7))
    assert engine.run_until_idle() == 3
    assert [output(run_store, run_id)["id"] for run_id in alike] == [event_id] * 3
    assert status(run_store, other) == "waiting"
    assert [row["run_id"] for row in run_store.query("waits")] == [other]
    assert len(engine.coordinator.pauses) == 1
    consistent(run_store)


@pytest.mark.parametrize("ending", ["event", "timeout"])
def test_a_wait_survives_a_restart(tmp_path: Path, clock: ManualClock, ending: str) -> None:
    path = tmp_path / "runs.db"
    first = SqliteEventStore(path, RunProjector())
    engine = make_engine(first, clock, waiter(match="data.k"))
    run_id = start_one(engine, {"k": 1})
    engine.run_until_idle()
    assert status(first, run_id) == "waiting"
    first.close()

    store = SqliteEventStore(path, RunProjector())
    restarted = make_engine(store, clock, waiter(match="data.k"))
    restarted.start()
    [pause] = list(restarted.coordinator.pauses)
    assert (pause.run_id, pause.step, pause.trigger) == (run_id, "w", {"data": {"k": 1}})
    assert restarted.run_until_idle() == 0  # nothing to do until the event or the deadline
    if ending == "event":
        restarted.send(paid(k=2))
        [event_id] = restarted.send(paid(k=1))
        assert restarted.run_until_idle() == 1
        assert output(store, run_id)["id"] == event_id
    else:
        assert restarted.advance(HOUR - TICK) == 0
        assert restarted.advance(TICK) == 1
        assert output(store, run_id) is None
    assert len(signals(store, run_id)) == 1
    consistent(store)
    store.close()


def test_a_wait_resolved_while_the_engine_was_down_resumes_at_start(tmp_path: Path, clock: ManualClock) -> None:
    """The resolution's timer row makes the next engine resume the run, though no one told it."""
    path = tmp_path / "runs.db"
    store = SqliteEventStore(path, RunProjector())
    engine = make_engine(store, clock, waiter())
    run_id = start_one(engine)
    engine.run_until_idle()
    [event_id] = engine.send(paid())  # the run is queued in this engine, which now "dies"
    store.close()

    store = SqliteEventStore(path, RunProjector())
    restarted = make_engine(store, clock, waiter())
    restarted.start()
    assert restarted.run_until_idle() == 1
    assert output(store, run_id)["id"] == event_id
    consistent(store)
    store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_replay_after_a_resolution_does_not_register_the_wait_again(
    run_store: EventStore, clock: ManualClock, kind: str
) -> None:
    failures = [RuntimeError("flaky fails once")]

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    if kind == "def":
        def handler(ctx: Context) -> list[Any]:
            event = ctx.step.wait_for_event("w", event=PAID, timeout="1h")
            assert event is not None
            flaky_out = ctx.step.run("flaky", flaky)
            ctx.step.sleep("nap", "10m")
            return [event.data, flaky_out]
    else:
        async def handler(ctx: Context) -> list[Any]:  # type: ignore[misc]
            event = await ctx.step.wait_for_event("w", event=PAID, timeout="1h")
            assert event is not None
            flaky_out = await ctx.step.run("flaky", flaky)
            await ctx.step.sleep("nap", "10m")
            return [event.data, flaky_out]

    engine = make_engine(run_store, clock, define_function(handler, fn_id="replays", trigger=TriggerEvent(event=GO)))
    run_id = start_one(engine)
    engine.run_until_idle()
    engine.send(paid(n=1))
    engine.run_until_idle()  # resolved; flaky fails and waits for its retry
    assert run_store.query("waits") == []
    while (due := engine.next_timer()) is not None:
        clock.set(due)
        engine.run_until_idle()
        assert len(engine.coordinator.pauses) == 0

    assert output(run_store, run_id) == [{"n": 1}, "ok"]
    assert entry_types(run_store, run_id).count(r.STEP_WAITING) == 1
    assert entry_types(run_store, run_id).count(r.RUN_RESUMED) == 3  # event, retry, sleep
    engine.send(paid(n=2))  # nothing listens now
    assert engine.run_until_idle() == 0
    assert len(signals(run_store, run_id)) == 1
    consistent(run_store)


# -- bad options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        pytest.param({"event": PAID, "timeout": None}, "timeout is required", id="no-timeout"),
        pytest.param({"event": PAID, "timeout": "1h", "match": "data.k", "if_exp": "true"}, "not both", id="both"),
        pytest.param({"event": PAID, "timeout": "1h", "if_exp": "async.data.k =="}, "", id="bad-cel"),
        pytest.param({"event": PAID, "timeout": "1h", "if_exp": "other.k == 1"}, "", id="unknown-name"),
        pytest.param(
            {"event": PAID, "timeout": "1h", "match": "data.k == 1"}, "field path", id="bad-match"
        ),
        pytest.param({"event": "app/*", "timeout": "1h"}, "exact event name", id="wildcard"),
        pytest.param({"event": "", "timeout": "1h"}, "exact event name", id="no-name"),
        pytest.param({"event": PAID, "timeout": "367d"}, "at most 366 days", id="too-long"),
        pytest.param({"event": PAID, "timeout": "soon"}, "", id="bad-duration"),
    ],
)
def test_bad_wait_options_fail_the_run_without_retries(
    run_store: EventStore, clock: ManualClock, options: dict[str, Any], words: str
) -> None:
    def handler(ctx: Context) -> Any:
        ctx.step.run("a", lambda: "a")
        return ctx.step.wait_for_event("w", **options)

    engine = make_engine(run_store, clock, define_function(handler, fn_id="bad", trigger=TriggerEvent(event=GO)))
    run_id = start_one(engine)
    assert engine.run_until_idle() == 1
    run = queries.get_run(run_store, run_id)
    assert run["status"] == "failed"
    assert run["error"]["name"] == "WaitError"
    assert run["error"]["message"].startswith("step 'w': wait_for_event")
    assert words in run["error"]["message"]
    assert r.STEP_WAITING not in entry_types(run_store, run_id)
    assert r.RUN_ERRORED not in entry_types(run_store, run_id)
    assert run_store.query("waits") == [] and run_store.query("timers") == []
    assert len(engine.coordinator.pauses) == 0
    consistent(run_store)


def test_the_longest_wait_allowed_is_366_days(store: EventStore, clock: ManualClock) -> None:
    engine = make_engine(store, clock, waiter(timeout="366d"))
    run_id = start_one(engine)
    engine.run_until_idle()
    assert status(store, run_id) == "waiting"
    assert store.query("waits")[0]["expires_at"] == format_time(START + timedelta(days=366))
    consistent(store)


# -- the pause index finds what a scan of every pause would ----------------------------------------------------

_ABSENT = object()
_VALUES = [_ABSENT, 1, "a", {"x": 1}]
"""Every combination of these at data.k and data.j, on both sides. No bools: celpy says 1 == true,
the index (rightly, by the CEL spec) does not; so ``if_exp`` forms that are scanned and forms
that are indexed would disagree there."""
_DATAS = [
    {name: value for name, value in (("k", k), ("j", j)) if value is not _ABSENT} for k in _VALUES for j in _VALUES
]
_CONDITIONS = [
    None,
    match_expression("data.k"),
    match_expression("data.k.x"),
    "async.data.k == 1",
    "async.data.k == 'a' && event.data.j == async.data.j",
    "event.data.k == async.data.j && async.data.k == event.data.j",
    "async.data.k == event.data.k || async.data.j == 1",
    "async.data.k == event.data.k && async.data.k == 1",
    "(async.data.j == event.data.j) && async.data.k != 1",
    "async.data.k > 0",
]


def test_the_pause_index_matches_exactly_the_pauses_a_scan_would() -> None:
    """Every condition with every trigger, against every candidate: the index loses nothing and adds nothing."""
    now = START + HOUR
    index = PauseIndex()
    made = []
    for n, (condition, trigger_data) in enumerate(itertools.product(_CONDITIONS, _DATAS)):
        pause = make_pause(
            run_id=f"run{n}", function_id="f", step="w", kind=WAIT_KIND, event=PAID if n % 7 else "app/other",
            expression=condition, trigger_event={"name": GO, "data": trigger_data},
            expires_at=format_time(now - TICK if n % 5 == 0 else now + TICK),
        )
        index.add(pause)
        made.append(pause)
    index.remove_run("run1")  # removed pauses are not found
    live = [p for p in made if p.run_id != "run1"]

    matched = 0
    for name, data in itertools.product([PAID, "app/other", "app/none"], _DATAS):
        candidate = {"name": name, "data": data, "id": "e", "ts": 0}
        found = [p.key for p in index.match(candidate, now)]
        scanned = {p.key for p in live if p.event == name and not p.expired(now) and p.matches(candidate)}
        assert len(found) == len(set(found))
        assert set(found) == scanned, candidate
        matched += len(found)
    assert matched > 100  # the combinations do exercise matching


def test_a_pause_reads_only_the_parts_of_the_trigger_its_condition_needs() -> None:
    pause = make_pause(
        run_id="r", function_id="f", step="w", kind=WAIT_KIND, event=PAID,
        expression="event.data.k == async.data.k", trigger_event={"name": GO, "data": {"k": 1, "big": "x" * 1000}},
        expires_at=format_time(START),
    )
    assert pause.trigger == {"data": {"k": 1}}
