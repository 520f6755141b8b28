"""Regression tests for bugs found reviewing the issue-6 reliability changes (checksums, refused
runs, fail-stop, the stuck-run detector, memory and hostile-input fixes)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steplog.engine import Context, Engine, FunctionRegistry, ManualClock, RunProjector, TriggerEvent, define_function
from steplog.engine.health import stuck_runs
from steplog.eventstore import SqliteEventStore

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


def two_steps(ctx: Context) -> str:
    ctx.step.run("a", lambda: 1)
    return str(ctx.step.run("b", lambda: 2))


def engine_with(store: Any, clock: ManualClock, **handlers: Any) -> Engine:
    registry = FunctionRegistry()
    for fn_id, handler in handlers.items():
        registry.add(define_function(handler, fn_id=fn_id, trigger=TriggerEvent(event=f"app/{fn_id}")))
    return Engine(store, registry=registry, clock=clock)


# -- the stuck-run detector and damaged runs ---------------------------------------------------------


def test_stuck_runs_reports_a_damaged_run_instead_of_failing_for_every_run(tmp_path: Path) -> None:
    """A run whose log is damaged is refused by the engine: it never moves again, so it is stuck.
    The detector must say so, and must still report the other stuck runs, rather than raise
    CorruptEntryError for the whole report (``steplog runs --stuck`` then printed nothing but the error)."""
    path = tmp_path / "stuck.db"
    store = SqliteEventStore(path, RunProjector())
    clock = ManualClock(START)
    engine = engine_with(store, clock, steps=two_steps, other=two_steps)
    [damaged] = engine.accept({"name": "app/steps", "data": {}}).runs
    [healthy] = engine.accept({"name": "app/other", "data": {}}).runs  # queued, never started: stuck too
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(
            "UPDATE log SET data = replace(data, '\"steps\"', '\"stepz\"') WHERE stream = ?", (f"run/{damaged.run_id}",)
        )
    conn.close()

    for history in (True, False):
        found = {stuck.run_id: stuck for stuck in stuck_runs(store, now=START + WINDOW, window=WINDOW, history=history)}
        assert set(found) == {damaged.run_id, healthy.run_id}
        assert "damaged" in found[damaged.run_id].detail
        assert "damaged" in found[damaged.run_id].describe()
    store.close()


def listen_forever(ctx: Context) -> Any:
    return ctx.step.wait_for_event("answer", event="app/answer", timeout="30d", match="data.id")


def test_a_run_woken_in_the_same_instant_as_its_last_entry_is_still_seen_stuck(tmp_path: Path) -> None:
    """The detector decided "it reacted to the signal" when the run's last entry was recorded at or
    after the signal's time. Entries of one commit (or of one instant: a manual clock, a coarse clock)
    share their time, so a wait registered and resolved in the same instant, never reacted to, was
    never reported. The log's order (positions) says which came first."""
    store = SqliteEventStore(tmp_path / "woken.db", RunProjector())
    clock = ManualClock(START)
    engine = engine_with(store, clock, listen=listen_forever)
    [run] = engine.accept({"name": "app/listen", "data": {"id": 7}}).runs
    engine._ready.append(run.run_id)
    engine.run_until_idle()  # step.waiting at START
    engine.accept({"name": "app/answer", "data": {"id": 7}})  # wait.resolved at START too; the run is not woken

    [stuck] = stuck_runs(store, now=START + WINDOW, window=WINDOW)
    assert (stuck.run_id, stuck.reason) == (run.run_id, "woken")

    engine._ready.append(run.run_id)
    engine.run_until_idle()  # it reacts in the same instant and ends
    assert stuck_runs(store, now=START + 10 * WINDOW, window=WINDOW) == []
    store.close()


def test_a_run_that_reacted_in_the_same_instant_as_its_signal_is_not_stuck(tmp_path: Path) -> None:
    def listen_twice(ctx: Context) -> Any:
        ctx.step.wait_for_event("first", event="app/answer", timeout="30d", match="data.id")
        return ctx.step.wait_for_event("second", event="app/other", timeout="30d", match="data.id")

    store = SqliteEventStore(tmp_path / "reacted.db", RunProjector())
    clock = ManualClock(START)
    engine = engine_with(store, clock, listen=listen_twice)
    [run] = engine.accept({"name": "app/listen", "data": {"id": 7}}).runs
    engine._ready.append(run.run_id)
    engine.run_until_idle()
    engine.send({"name": "app/answer", "data": {"id": 7}})
    engine.run_until_idle()  # it reacts at once (same instant) and waits again, with a far timeout
    assert store.query("runs")[0]["status"] == "waiting"
    assert stuck_runs(store, now=START + 10 * WINDOW, window=WINDOW) == []
    store.close()


# -- hostile input in the coordinator ---------------------------------------------------------------


def test_a_rerun_of_a_run_id_with_a_lone_surrogate_is_refused_alone(tmp_path: Path) -> None:
    """``client.rerun(id)`` read the run's stream with the id as given: SQLite cannot bind a lone
    surrogate, so the UnicodeEncodeError escaped the coordinator's planning and every request
    batched with it (another caller's send) got that error instead of its answer. It is no run."""
    from steplog.engine import RunNotFoundError
    from steplog.engine.coordination import Accepted, RerunRun, SendEvents

    store = SqliteEventStore(tmp_path / "rerun.db", RunProjector())
    clock = ManualClock(START)
    engine = engine_with(store, clock, steps=two_steps)
    sent, rerun = engine.coordinator.handle([SendEvents({"name": "app/steps", "data": {}}), RerunRun("run\ud800")], START)
    assert isinstance(sent, Accepted) and len(sent.runs) == 1
    assert isinstance(rerun, RunNotFoundError)
    store.close()


def test_a_window_longer_than_the_calendar_finds_nothing_stuck_rather_than_crashing(
    tmp_path: Path, capsys: Any
) -> None:
    """``steplog runs --stuck 800000d`` ended in a traceback (OverflowError: now - window is before
    year 1). Nothing can have been eligible for longer than the calendar: no stuck run."""
    from steplog.cli import main

    path = tmp_path / "window.db"
    store = SqliteEventStore(path, RunProjector())
    engine_with(store, ManualClock(START), steps=two_steps).accept({"name": "app/steps", "data": {}})
    assert stuck_runs(store, now=START, window=timedelta(days=800_000)) == []
    store.close()
    assert main(["--db", str(path), "runs", "--stuck", "800000d"]) == 0
    assert "no stuck runs" in capsys.readouterr().out


# -- JSON depth: what is written can be read back ---------------------------------------------------


def test_an_entry_at_the_depth_limit_reads_back_from_a_deep_call_stack(tmp_path: Path) -> None:
    """MAX_DEPTH (512) promises that what one thread writes any other reads back, however deep its
    call stack. On Python 3.11 the JSON reader's recursion shares the interpreter's limit (1,000)
    with the Python frames below it, so a read from ~500 frames deep raised RecursionError, which the
    store reported as a damaged entry (CorruptEntryError: "nests too deeply to be JSON steplog
    wrote"): a sound run refused."""
    from steplog.engine.jsonvalues import MAX_DEPTH, encode
    from steplog.eventstore import NewEntry

    deepest: Any = 1
    for _ in range(MAX_DEPTH - 1):  # the entry's own object is one level more
        deepest = [deepest]
    data = {"output": deepest}
    encode(data, what="the entry")  # within the limit: the engine records it
    store = SqliteEventStore(tmp_path / "deep.db")
    store.append("run/deep", [NewEntry("step.completed", data)], now=START)

    def read_at(depth: int) -> Any:
        return store.read_stream("run/deep") if depth == 0 else read_at(depth - 1)

    [entry] = read_at(600)
    assert entry.data == data
    store.close()


def test_a_value_refused_only_for_the_depth_of_the_call_stack_says_so() -> None:
    """The C encoder counts a value's levels together with the caller's frames, so a value well
    within MAX_DEPTH returned from deep recursion raises RecursionError. The refusal said "more than
    512 levels" of a 300-level value: wrong, and it sends the user looking at the value."""
    import pytest
    from steplog.engine.jsonvalues import MAX_DEPTH, NotJSONError, encode

    value: Any = 1
    for _ in range(300):
        value = [value]

    def encode_at(depth: int) -> str:
        return encode(value, what="the output") if depth == 0 else encode_at(depth - 1)

    assert encode_at(50)  # from a shallow stack it is recorded
    with pytest.raises(NotJSONError) as refused:
        encode_at(800)
    assert f"more than {MAX_DEPTH} levels" not in str(refused.value)
    assert "call stack" in str(refused.value)
