"""Recorded runs and replay in steplog.testing: export a run's history, save and load it, and
replay it against today's code.

A run exported from a database a real (started, threaded) ``steplog.Steplog`` client wrote; the
JSON round trip and its errors; replays against the same code (finished runs and runs still
sleeping, waiting for an event or for a retry) and against changed code: a step added, removed,
renamed, an id reused as another kind of step, a different return value or failure, a new step
before the one a run in progress is at; an unknown function is reported, not raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import FunctionDef, FunctionRegistry, RunProjector, define_function

import steplog
from steplog.testing import RecordedRun, ReplayReport, TestEngine, assert_replays, export_run, replay

GO = steplog.TriggerEvent(event="app/go")
RETRY = steplog.RetryPolicy.fixed(3, "10s")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def version(handler: Callable[..., Any], fn_id: str = "order", retries: Any = 0) -> FunctionDef:
    """One version of function ``fn_id``: each test records with one and replays against others."""
    return define_function(handler, fn_id=fn_id, trigger=GO, retries=retries)


def record(
    function: FunctionDef, store: str, data: dict[str, Any] | None = None,
    drive: Callable[[TestEngine], None] | None = None,
) -> RecordedRun:
    """Trigger ``function`` once on a test engine (then ``drive`` it) and export the run."""
    with TestEngine(function, store=store, check_determinism=False) as engine:
        run = engine.trigger("app/go", data or {})
        if drive is not None:
            drive(engine)
        return engine.export(run.run_id)


def two_steps(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    b = ctx.step.run("b", lambda: 2)
    return a + b


# -- a database written by a real client -------------------------------------------------------


def real_order(ctx: steplog.Context) -> int:
    doubled = ctx.step.run("double", lambda: ctx.event.data["n"] * 2)
    ctx.step.sleep("nap", "1h")
    return ctx.step.run("add", lambda: doubled + 1)  # type: ignore[no-any-return]


def real_order_with_a_new_step(ctx: steplog.Context) -> int:
    doubled = ctx.step.run("double", lambda: ctx.event.data["n"] * 2)
    ctx.step.run("audit", lambda: "logged")
    ctx.step.sleep("nap", "1h")
    return ctx.step.run("add", lambda: doubled + 1)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def client_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[steplog.Steplog, Path, str, str]]:
    """A database written by a started client (its own threads): one run finished, one asleep."""
    path = tmp_path_factory.mktemp("client") / "app.db"
    clock = steplog.ManualClock(datetime(2031, 1, 1, tzinfo=UTC))
    client = steplog.Steplog(app_id="real", db=path, clock=clock)
    client.create_function(fn_id="order", trigger=GO)(real_order)
    with client:
        [first] = client.send({"name": "app/go", "data": {"n": 5}})
        assert client.run_until_idle(timeout=30)
        client.advance(3600)
        assert client.run_until_idle(timeout=30)
        [second] = client.send({"name": "app/go", "data": {"n": 6}})
        assert client.run_until_idle(timeout=30)
        finished = client.runs_for_event(first)[0].run_id
        sleeping = client.runs_for_event(second)[0].run_id
    yield client, path, finished, sleeping


def export_from(path: Path, run_id: str) -> RecordedRun:
    database = steplog.SqliteEventStore(path, RunProjector())
    try:
        return export_run(database, run_id)
    finally:
        database.close()


def test_a_run_exported_from_a_clients_database_holds_its_history(client_database: Any) -> None:
    _, path, finished, _ = client_database
    recorded = export_from(path, finished)
    assert (recorded.run_id, recorded.function_id, recorded.status) == (finished, "order", "completed")
    assert recorded.ending is not None and recorded.ending.type == "run.completed"
    assert all(entry.stream.endswith(finished) for entry in recorded.entries)


def test_a_finished_run_from_a_clients_database_replays_against_the_same_code(client_database: Any) -> None:
    client, path, finished, _ = client_database
    report = replay(export_from(path, finished), client)
    assert report.ok, str(report)
    assert report.reached == ("double", "nap", "add")
    assert report.ended == "completed"
    assert report.divergences == ()


def test_a_sleeping_run_from_a_clients_database_replays_against_the_same_code(client_database: Any) -> None:
    client, path, _, sleeping = client_database
    recorded = export_from(path, sleeping)
    assert recorded.status == "waiting" and recorded.ending is None
    report = replay(recorded, client)
    assert report.ok, str(report)
    assert report.ended is None  # it stops where the recorded run is now
    assert report.reached == ("double", "nap")


def test_runs_from_a_clients_database_diverge_from_code_with_a_new_step(client_database: Any) -> None:
    _, path, finished, sleeping = client_database
    changed = version(real_order_with_a_new_step, retries=4)
    for run_id in (finished, sleeping):
        report = replay(export_from(path, run_id), changed)
        assert not report.ok
        assert "'audit'" in str(report) and run_id in str(report)


def test_exporting_an_unknown_run_is_run_not_found(client_database: Any) -> None:
    _, path, _, _ = client_database
    with pytest.raises(steplog.RunNotFoundError):
        export_from(path, "01NOSUCHRUN0000000000000000")


# -- the recorded run as JSON ------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path, store: str) -> None:
    recorded = record(version(two_steps), store)
    path = recorded.save(tmp_path / "run.json")
    assert path == tmp_path / "run.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == "steplog/recorded-run" and document["version"] == 1
    assert document["run_id"] == recorded.run_id
    loaded = RecordedRun.load(path)
    assert loaded == recorded
    assert replay(loaded, version(two_steps)).ok


def test_a_saved_run_from_a_clients_database_loads_and_replays(tmp_path: Path, client_database: Any) -> None:
    client, path, _, sleeping = client_database
    saved = export_from(path, sleeping).save(tmp_path / "sleeping.json")
    assert replay(RecordedRun.load(saved), client).ok


def test_to_json_and_from_json_round_trip(store: str) -> None:
    recorded = record(version(two_steps), store)
    assert RecordedRun.from_json(json.loads(json.dumps(recorded.to_json()))) == recorded


@pytest.mark.parametrize("document", [[], "run", None, {"run_id": "x"}, {"format": "inngest/run", "version": 1}])
def test_from_json_of_something_else_is_a_value_error(document: Any) -> None:
    with pytest.raises(ValueError, match="not a recorded run"):
        RecordedRun.from_json(document)


@pytest.mark.parametrize("number", [2, 0, None, "1"])
def test_from_json_of_another_version_is_a_value_error_naming_it(number: Any, store: str) -> None:
    document = {**record(version(two_steps), store).to_json(), "version": number}
    with pytest.raises(ValueError, match=rf"version {number!r} is not supported"):
        RecordedRun.from_json(document)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("run_id"), "run_id"),
        (lambda d: d.pop("entries"), "entries"),
        (lambda d: d["entries"][0].pop("stream"), "stream"),
        (lambda d: d["entries"][0].update(extra=1), "extra"),
        (lambda d: d.update(entries=7), "int"),
    ],
)
def test_from_json_of_a_malformed_document_is_a_value_error_naming_the_problem(
    change: Callable[[dict[str, Any]], Any], named: str, store: str
) -> None:
    document = record(version(two_steps), store).to_json()
    change(document)
    with pytest.raises(ValueError, match=rf"malformed.*{named}"):
        RecordedRun.from_json(document)


def test_loading_a_file_that_is_not_json_is_a_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json.*not JSON"):
        RecordedRun.load(path)


# -- replaying finished runs -------------------------------------------------------------------


def test_the_same_code_replays(store: str) -> None:
    recorded = record(version(two_steps), store)
    report = replay(recorded, version(two_steps))
    assert report.ok and report.ended == "completed" and report.reached == ("a", "b")
    assert isinstance(report, ReplayReport)
    text = str(report)
    assert recorded.run_id in text and "'order'" in text and "replays" in text
    report.raise_for_divergence()  # nothing to raise


def test_replay_accepts_a_client_a_function_a_list_and_a_registry(store: str) -> None:
    recorded = record(version(two_steps), store)
    client = steplog.Steplog(app_id="t", db=":memory:")
    client.create_function(fn_id="order", trigger=GO, retries=0)(two_steps)
    registry = FunctionRegistry()
    registry.add(version(two_steps))
    for functions in (client, version(two_steps), [version(two_steps)], registry):
        assert replay(recorded, functions).ok


def test_replay_runs_no_step_body_and_writes_nothing(store: str) -> None:
    bodies: list[str] = []

    def noisy(ctx: steplog.Context) -> Any:
        ctx.step.run("a", lambda: bodies.append("a") or 1)
        ctx.step.send_event("tell", {"name": "app/told"})
        return ctx.step.run("b", lambda: bodies.append("b") or 2)

    with TestEngine(version(noisy), store=store) as engine:
        run = engine.trigger("app/go").assert_completed(2)
        before = engine.events()
        assert replay(engine.export(run.run_id), version(noisy)).ok
        assert engine.events() == before  # no event sent again
    assert bodies == ["a", "b"]


def test_a_step_added_at_the_end_of_a_finished_run_diverges(store: str) -> None:
    def added(ctx: steplog.Context) -> int:
        result = two_steps(ctx)
        ctx.step.run("c", lambda: 3)
        return result

    recorded = record(version(two_steps), store)
    report = replay(recorded, version(added))
    assert not report.ok
    [divergence] = report.divergences
    assert "step.run step 'c'" in divergence and "does not have" in divergence
    text = str(report)
    assert recorded.run_id in text and "'c'" in text and "diverges" in text


def test_a_removed_step_is_reported_as_no_longer_reached(store: str) -> None:
    def removed(ctx: steplog.Context) -> int:
        return ctx.step.run("a", lambda: 1) + 2  # type: ignore[no-any-return]

    report = replay(record(version(two_steps), store), version(removed))
    assert not report.ok and report.ended == "completed"
    assert report.divergences == ("the recorded run has a step.run step 'b' that the code no longer reaches",)


def test_a_renamed_step_is_reported_with_both_ids(store: str) -> None:
    def renamed(ctx: steplog.Context) -> int:
        a = ctx.step.run("a", lambda: 1)
        b = ctx.step.run("b-renamed", lambda: 2)
        return a + b

    report = replay(record(version(two_steps), store), version(renamed))
    assert not report.ok
    text = str(report)
    assert "'b-renamed'" in text and "a step id that changed" in text
    assert "recorded steps not reached so far: 'b'" in text


def sleeps_then_runs(ctx: steplog.Context) -> str:
    ctx.step.sleep("x", "1m")
    ctx.step.run("y", lambda: 1)
    return "done"


def runs_then_runs(ctx: steplog.Context) -> str:
    ctx.step.run("x", lambda: 0)
    ctx.step.run("y", lambda: 1)
    return "done"


@pytest.mark.parametrize(
    ("recorded_with", "replayed_with", "was"),
    [(sleeps_then_runs, runs_then_runs, "step.sleep"), (runs_then_runs, sleeps_then_runs, "step.run")],
)
def test_an_id_reused_as_another_kind_of_step_is_nondeterminism(
    recorded_with: Any, replayed_with: Any, was: str, store: str
) -> None:
    recorded = record(version(recorded_with), store, drive=lambda engine: engine.settle())
    assert recorded.status == "completed"
    report = replay(recorded, version(replayed_with))
    assert not report.ok
    text = str(report)
    assert "NondeterminismError" in text
    assert f"step 'x' was a {was} step in the recorded run" in text
    assert len(report.divergences) == 1  # one change, said once: not also every later step as vanished
    assert report.ended == "failed"


def test_a_different_return_value_is_reported_with_both_values(store: str) -> None:
    def returns_more(ctx: steplog.Context) -> int:
        return two_steps(ctx) * 10

    report = replay(record(version(two_steps), store), version(returns_more))
    assert report.divergences == ("the run returned 3; the code now returns 30",)


def failing_with(message: str) -> Callable[[steplog.Context], Any]:
    def handler(ctx: steplog.Context) -> Any:
        ctx.step.run("a", lambda: 1)
        raise ValueError(message)

    return handler


def test_a_different_failure_is_reported_with_both_errors(store: str) -> None:
    recorded = record(version(failing_with("out of stock")), store)
    assert recorded.status == "failed"
    assert replay(recorded, version(failing_with("out of stock"))).ok
    report = replay(recorded, version(failing_with("card declined")))
    assert report.divergences == (
        "the run failed with ValueError: out of stock; the code now fails with ValueError: card declined",
    )


def test_a_failure_after_retries_replays(store: str) -> None:
    recorded = record(version(failing_with("again"), retries=RETRY), store, drive=lambda engine: engine.settle())
    assert recorded.status == "failed"
    assert replay(recorded, version(failing_with("again"), retries=RETRY)).ok


def test_code_that_now_fails_where_the_run_completed_is_reported(store: str) -> None:
    report = replay(record(version(two_steps), store), version(failing_with("broken")))
    assert not report.ok
    assert "the run ended completed; the code now ends failed (ValueError: broken)" in report.divergences
    assert "step.run step 'b' that the code no longer reaches" in str(report)


def test_code_that_now_completes_where_the_run_failed_is_reported(store: str) -> None:
    def fixed(ctx: steplog.Context) -> Any:
        return ctx.step.run("a", lambda: 1)

    report = replay(record(version(failing_with("broken")), store), version(fixed))
    assert report.divergences == ("the run ended failed (ValueError: broken); the code now ends completed",)


def test_code_that_fails_and_takes_a_new_step_stops_at_the_new_step(store: str) -> None:
    report = replay(record(version(failing_with("broken")), store), version(two_steps))
    assert not report.ok and report.ended is None
    assert "step.run step 'b' that the recorded run does not have" in str(report)


def test_a_cancelled_run_replays_against_the_same_code(store: str) -> None:
    def slow(ctx: steplog.Context) -> str:
        ctx.step.run("a", lambda: 1)
        ctx.step.sleep("nap", "1h")
        return "done"

    def cancel(engine: TestEngine) -> None:
        [run] = engine.runs()
        engine.cancel(run.run_id)

    recorded = record(version(slow), store, drive=cancel)
    assert recorded.status == "cancelled"
    assert replay(recorded, version(slow)).ok


def test_an_unknown_function_is_reported_not_raised(store: str) -> None:
    recorded = record(version(two_steps), store)
    report = replay(recorded, [version(two_steps, fn_id="other"), version(two_steps, fn_id="more")])
    assert not report.ok and report.ended is None
    assert report.divergences == ("function 'order' is not defined (functions given: 'other', 'more')",)
    assert recorded.run_id in str(report)
    assert "none" in replay(recorded, []).divergences[0]


def test_assert_replays_raises_the_report(store: str) -> None:
    recorded = record(version(two_steps), store)
    assert assert_replays(recorded, version(two_steps)).ok

    def added(ctx: steplog.Context) -> int:
        return two_steps(ctx) + ctx.step.run("c", lambda: 0)

    with pytest.raises(AssertionError) as caught:
        assert_replays(recorded, version(added))
    assert str(caught.value) == str(replay(recorded, version(added)))
    assert recorded.run_id in str(caught.value) and "'c'" in str(caught.value)


def test_a_report_lists_each_divergence_on_its_own_line(store: str) -> None:
    def different(ctx: steplog.Context) -> int:
        return ctx.step.run("a", lambda: 1) + 5  # type: ignore[no-any-return]

    recorded = record(version(two_steps), store)
    report = replay(recorded, version(different))
    lines = str(report).splitlines()
    assert lines[0] == f"run {recorded.run_id} of function 'order': the code diverges from the recorded history:"
    assert lines[1:] == [f"  - {divergence}" for divergence in report.divergences]
    assert len(lines) == 3  # 'b' no longer reached, and 6 returned instead of 3


# -- replaying runs in progress ----------------------------------------------------------------


def sleeper(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.sleep("nap", "1h")
    return a + ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]


def sleeper_with_a_step_before_the_nap(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.run("new", lambda: 0)
    ctx.step.sleep("nap", "1h")
    return a + ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]


def sleeper_with_a_step_after_the_nap(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.sleep("nap", "1h")
    ctx.step.run("new", lambda: 0)
    return a + ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]


def waiter(ctx: steplog.Context) -> Any:
    ctx.step.run("a", lambda: 1)
    return ctx.step.wait_for_event("reply", event="app/reply", timeout="1d")


def waiter_with_a_step_before_the_wait(ctx: steplog.Context) -> Any:
    ctx.step.run("a", lambda: 1)
    ctx.step.run("new", lambda: 0)
    return ctx.step.wait_for_event("reply", event="app/reply", timeout="1d")


def retrier(ctx: steplog.Context) -> Any:
    ctx.step.run("a", lambda: 1)
    return ctx.step.run("call", lambda: (_ for _ in ()).throw(ConnectionError("down")))


def retrier_with_a_step_before_the_call(ctx: steplog.Context) -> Any:
    ctx.step.run("a", lambda: 1)
    ctx.step.run("new", lambda: 0)
    return ctx.step.run("call", lambda: "up")


IN_PROGRESS = {
    "sleeping": (sleeper, sleeper_with_a_step_before_the_nap, "nap"),
    "waiting for an event": (waiter, waiter_with_a_step_before_the_wait, "reply"),
    "waiting for a retry": (retrier, retrier_with_a_step_before_the_call, "call"),
}


@pytest.mark.parametrize("case", list(IN_PROGRESS))
def test_a_run_in_progress_replays_against_the_same_code(case: str, store: str) -> None:
    handler, _, pending = IN_PROGRESS[case]
    recorded = record(version(handler, retries=RETRY), store)
    assert recorded.status == "waiting" and recorded.ending is None
    report = replay(recorded, version(handler, retries=RETRY))
    assert report.ok, str(report)
    assert report.ended is None
    assert report.reached == ("a", pending)


@pytest.mark.parametrize("case", list(IN_PROGRESS))
def test_a_new_step_before_the_pending_one_diverges(case: str, store: str) -> None:
    handler, changed, pending = IN_PROGRESS[case]
    recorded = record(version(handler, retries=RETRY), store)
    report = replay(recorded, version(changed, retries=RETRY))
    assert not report.ok
    [divergence] = report.divergences
    assert f"the recorded run is at step {pending!r}" in divergence and "step 'new' first" in divergence
    assert recorded.run_id in str(report)


def test_a_new_step_after_the_pending_one_does_not_diverge(store: str) -> None:
    recorded = record(version(sleeper), store)
    assert replay(recorded, version(sleeper_with_a_step_after_the_nap)).ok


def test_a_run_in_progress_that_finishes_later_replays_from_its_full_history(store: str) -> None:
    recorded = record(version(sleeper), store, drive=lambda engine: engine.advance("1h"))
    assert recorded.status == "completed"
    assert replay(recorded, version(sleeper)).ok
    report = replay(recorded, version(sleeper_with_a_step_after_the_nap))
    assert not report.ok and "'new'" in str(report)


def sleeper_that_now_runs_its_nap(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.run("nap", lambda: None)  # the id of the pending sleep, now a step.run
    return a + ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]


def test_a_pending_sleep_reused_as_another_kind_of_step_diverges(store: str) -> None:
    recorded = record(version(sleeper), store)
    report = replay(recorded, version(sleeper_that_now_runs_its_nap))
    assert not report.ok
    assert "NondeterminismError" in str(report) and "'nap'" in str(report)


def sleeper_whose_first_step_is_now_a_sleep(ctx: steplog.Context) -> int:
    ctx.step.sleep("a", "1s")
    ctx.step.sleep("nap", "1h")
    return 1 + ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]


def test_a_completed_step_reused_as_another_kind_in_a_run_in_progress_diverges(store: str) -> None:
    recorded = record(version(sleeper), store)
    report = replay(recorded, version(sleeper_whose_first_step_is_now_a_sleep))
    assert not report.ok
    assert "NondeterminismError" in str(report) and "'a'" in str(report)


def test_replay_against_a_client_with_an_on_failure_handler(store: str) -> None:
    recorded = record(version(two_steps), store)
    client = steplog.Steplog(app_id="t", db=":memory:")
    client.create_function(fn_id="order", trigger=GO, retries=0, on_failure=lambda ctx: None)(two_steps)
    assert replay(recorded, client).ok
