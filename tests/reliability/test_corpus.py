"""Recorded histories (issue 6, item 6): the corpus in tests/corpus/runs, replayed on today's code.

1. Every recorded run replays against the current code with the same result (one test per file, so a
   failure names the scenario); the corpus still covers every step tool and outcome; the recorder
   still writes the committed files byte for byte (tests/corpus/README.md says when a change is fine).
2. Runs recorded in flight, imported into a SQLite store and carried on by the real engine: with
   today's code each one completes without running a recorded step again; with changed code, a step
   added after the pending point runs; a step added before the completed ones (a new
   id) runs too, since steps are matched by id; a removed step's result is ignored; and a recorded id
   that comes back as another kind of step fails the run with a NondeterminismError naming the run
   and the step (every pair of kinds, completed and pending), as replay() reports too.
3. Counts go, as one JSON line, to the file named by STEPLOG_RELIABILITY_REPORT (if set).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from steplog.engine import ManualClock, RunProjector, define_function
from steplog.eventstore import NewEntry, SqliteEventStore, parse_time

from steplog import NondeterminismError
from steplog.testing import RecordedRun, TestEngine, TestRun, registry_of, replay

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
RUNS = CORPUS / "runs"
LEGACY = CORPUS / "legacy"
"""Runs recorded by an older steplog, kept when the format changed on purpose (see the README)."""


def _load(name: str) -> ModuleType:
    module_name = f"steplog_corpus_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, CORPUS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


recorder = _load("record")
app = _load("corpus_app")
RECORDED = sorted(RUNS.glob("*.json"))
REPLAYED = [*RECORDED, *sorted(LEGACY.glob("*.json"))]
COUNTS = {"recorded_runs": len(REPLAYED), "scenarios": len(recorder.SCENARIOS), "mutations": 0}


# -- 1. the corpus replays ---------------------------------------------------------------------


@pytest.mark.parametrize("path", REPLAYED, ids=[path.stem for path in REPLAYED])
def test_a_recorded_run_replays_on_todays_code_with_the_same_result(path: Path) -> None:
    recorded = RecordedRun.load(path)
    report = replay(recorded, recorder.replay_functions())
    assert report.ok, str(report)
    assert report.run_id == recorded.run_id
    assert set(report.reached) >= set(_step_keys(recorded)), "the replay skipped recorded steps"
    if recorded.status in ("completed", "failed"):
        assert report.ended == recorded.status  # and replay() compared the output or error
    else:
        assert report.ended is None  # in flight, or cancelled: replayed up to where it stopped


def test_the_corpus_covers_every_step_tool_and_outcome() -> None:
    runs = [RecordedRun.load(path) for path in RECORDED]
    missing = [name for name, covered in COVERAGE.items() if not any(covered(run) for run in runs)]
    assert not missing, f"no recorded run in {RUNS} shows: {missing} (re-record: tests/corpus/README.md)"


def test_every_scenario_has_its_files() -> None:
    stems = {path.stem.split(".")[0] for path in RECORDED}
    assert stems == {scenario.name for scenario in recorder.SCENARIOS}


def test_recording_again_writes_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    written = recorder.write_corpus(tmp_path)
    assert sorted(path.name for path in written) == [path.name for path in RECORDED]
    changed = [path.name for path in written if path.read_bytes() != (RUNS / path.name).read_bytes()]
    assert not changed, (
        f"re-recording changed {changed}: if that is meant (see tests/corpus/README.md), run"
        " `.venv/bin/python tests/corpus/record.py` and commit the new files"
    )


def test_the_corpus_is_small() -> None:
    assert sum(path.stat().st_size for path in RECORDED) < 300_000


# -- what the corpus must cover ------------------------------------------------------------------


def _entries(run: RecordedRun, entry_type: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [entry.data for entry in run.entries
            if entry.type == entry_type and (kind is None or entry.data.get("kind") == kind)]


def _step_keys(run: RecordedRun) -> set[str]:
    return {str(entry.data["step"]) for entry in run.entries if entry.type.startswith("step.")}


def _types(run: RecordedRun) -> list[str]:
    return [entry.type for entry in (*run.entries, *run.signals)]


def _output_of_type(kind: type | None) -> Callable[[RecordedRun], bool]:
    def covered(run: RecordedRun) -> bool:
        outputs = [data["output"] for data in _entries(run, "step.completed", "run")]
        if kind is None:
            return any(output is None for output in outputs)
        return any(type(output) is kind for output in outputs)

    return covered


def _step_failed_with(name: str, kind: str = "run") -> Callable[[RecordedRun], bool]:
    return lambda run: any(data["error"]["name"] == name for data in _entries(run, "step.failed", kind))


def _retried_then_completed(run: RecordedRun) -> bool:
    retried = {data["step"] for data in _entries(run, "step.errored", "run")}
    return bool(retried & {data["step"] for data in _entries(run, "step.completed", "run")})


def _exhausted(run: RecordedRun) -> bool:
    return any(data["attempt"] > 0 for data in _entries(run, "step.failed", "run"))


def _ended(status: str) -> Callable[[RecordedRun], bool]:
    return lambda run: run.status == status


def _both(*checks: Callable[[RecordedRun], bool]) -> Callable[[RecordedRun], bool]:
    return lambda run: all(check(run) for check in checks)


def _in_flight_at(entry_type: str) -> Callable[[RecordedRun], bool]:
    return lambda run: run.status == "waiting" and run.entries[-1].type == entry_type


def _cancelled_at(entry_type: str) -> Callable[[RecordedRun], bool]:
    def covered(run: RecordedRun) -> bool:
        steps = [entry.type for entry in run.entries if entry.type.startswith("step.")]
        return run.status == "cancelled" and steps[-1:] == [entry_type]

    return covered


def _wait_expression(part: str) -> Callable[[RecordedRun], bool]:
    def covered(run: RecordedRun) -> bool:
        resolved = {entry.data["step"] for entry in run.signals if entry.type == "wait.resolved"}
        return any(data["step"] in resolved and part in data["pause"]["expression"]
                   for data in _entries(run, "step.waiting", "wait"))

    return covered


def _trigger(name: str) -> Callable[[RecordedRun], bool]:
    return lambda run: run.entries[0].data["events"][0]["name"] == name


def _function(check: Callable[[Any], bool]) -> Callable[[RecordedRun], bool]:
    registry = registry_of(recorder.replay_functions())

    def covered(run: RecordedRun) -> bool:
        function = registry.get(run.function_id)
        return function is not None and check(function)

    return covered


def _sleep_step(step_id: str) -> Callable[[RecordedRun], bool]:
    return lambda run: any(data["step"] == step_id for data in _entries(run, "step.completed", "sleep"))


COVERAGE: dict[str, Callable[[RecordedRun], bool]] = {
    "step.run returns a string": _output_of_type(str),
    "step.run returns an integer": _output_of_type(int),
    "step.run returns a float": _output_of_type(float),
    "step.run returns a boolean": _output_of_type(bool),
    "step.run returns null": _output_of_type(None),
    "step.run returns a list": _output_of_type(list),
    "step.run returns an object": _output_of_type(dict),
    "a step fails, then succeeds on retry": _both(_retried_then_completed, _ended("completed")),
    "a step exhausts its retries, caught by the function": _both(_exhausted, _ended("completed")),
    "a step exhausts its retries, not caught: the run fails": _both(_exhausted, _ended("failed")),
    "NonRetriableError fails a step at once": _step_failed_with("NonRetriableError"),
    "RetryAfterError retries a step": lambda run: any(
        data["error"]["name"] == "RetryAfterError" for data in _entries(run, "step.errored")),
    "code outside steps fails, then succeeds on retry": _both(
        lambda run: "run.errored" in _types(run), _ended("completed")),
    "repeated step ids (id, id:1, id:2)": lambda run: {"item", "item:1", "item:2"} <= _step_keys(run),
    "group.parallel": lambda run: run.function_id == "parallel" and len(_step_keys(run)) == 3,
    "step.sleep": _sleep_step("nap"),
    "step.sleep_until": _sleep_step("until-tomorrow"),
    "wait_for_event resolved (match=)": _wait_expression("event.data.order == async.data.order"),
    "wait_for_event resolved (if_exp=)": _wait_expression("async.data.amount >= event.data.amount"),
    "wait_for_event timed out": lambda run: "wait.expired" in _types(run) and any(
        data["output"] is None for data in _entries(run, "step.completed", "wait")),
    "invoke of a function that succeeds": lambda run: bool(_entries(run, "step.completed", "invoke")),
    "invoke of a function that fails": lambda run: any(
        "failed" in data["error"]["message"] for data in _entries(run, "step.failed", "invoke")),
    "invoke that times out": lambda run: any(
        "timed out" in data["error"]["message"].lower() for data in _entries(run, "step.failed", "invoke")),
    "send_event": lambda run: bool(_entries(run, "step.completed", "send_event")),
    "a run cancelled while asleep": _cancelled_at("step.sleeping"),
    "a run cancelled while waiting": _cancelled_at("step.waiting"),
    "an on_failure handler": _trigger("inngest/function.failed"),
    "a run of a batch": lambda run: len(run.entries[0].data["events"]) > 1,
    "a run of a cron tick": _trigger("inngest/scheduled.timer"),
    "an async def function": _function(lambda function: bool(function.is_async)),
    "a run in flight, asleep": _in_flight_at("step.sleeping"),
    "a run in flight, waiting for an event": _in_flight_at("step.waiting"),
    "a run in flight, waiting for a retry": _in_flight_at("step.errored"),
    "the demo app": lambda run: run.function_id in {"checkout", "vip-gift", "ship-order", "audit-log"},
}


# -- 2. changed functions, run by the real engine -----------------------------------------------


def import_recorded(store: SqliteEventStore, recorded: RecordedRun) -> None:
    """Append a recorded run's entries and signals to ``store`` in their recorded order, each at its
    recorded time, so the projections (timers, waits) are as the recording engine left them."""
    ordered = sorted((*recorded.entries, *recorded.signals), key=lambda entry: entry.position)
    for stream, group in groupby(ordered, key=lambda entry: entry.stream):
        entries = list(group)
        store.append(stream, [NewEntry(entry.type, entry.data) for entry in entries],
                     now=parse_time(entries[0].recorded_at), expected_version=entries[0].version - 1)


@pytest.fixture
def continue_with(tmp_path: Path) -> Iterator[Callable[..., tuple[TestEngine, TestRun]]]:
    """Put a recorded run in a fresh database and open a TestEngine on it with changed functions, on a
    clock at the run's last recorded moment; returns the engine and the run."""
    engines: list[TestEngine] = []

    def open_engine(recorded: RecordedRun, *functions: Any) -> tuple[TestEngine, TestRun]:
        path = tmp_path / f"continued-{len(engines)}.db"
        store = SqliteEventStore(path, RunProjector())
        import_recorded(store, recorded)
        store.close()
        clock = ManualClock(parse_time(recorded.entries[-1].recorded_at))
        engine = TestEngine(*functions, path=path, clock=clock)
        engines.append(engine)
        return engine, engine.run(recorded.run_id)

    yield open_engine
    for engine in engines:
        engine.close()


def recorded(stem: str) -> RecordedRun:
    return RecordedRun.load(RUNS / f"{stem}.json")


def child_functions() -> list[Any]:
    registry = registry_of([app.client])
    return [registry.get("child-ok")]


def changed(fn_id: str, script: Any) -> Any:
    return app.scripted(fn_id, tuple(script))


def finish(engine: TestEngine, fn_id: str) -> None:
    """Let the pending step end: the sleep passes, or the wait is resolved by its event."""
    if fn_id == "mixed-waiting":
        engine.send({"name": "corpus/go", "data": {"order": 1}})
    engine.settle()


SCRIPTS = {"mixed-sleeping": app.SLEEPING_SCRIPT, "mixed-waiting": app.WAITING_SCRIPT}


IN_FLIGHT = [path for path in RECORDED if RecordedRun.load(path).status == "waiting"]


@pytest.mark.parametrize("path", IN_FLIGHT, ids=[path.stem for path in IN_FLIGHT])
def test_a_run_recorded_in_flight_carries_on_with_todays_code_to_its_end(path: Path, continue_with: Any) -> None:
    history = RecordedRun.load(path)
    function = registry_of([app.client]).get(history.function_id)
    engine, run = continue_with(history, function, *child_functions())
    assert run.status == "waiting"
    engine.settle()  # the sleep passes, the retry runs, the waits time out
    run.assert_completed()
    completed = _completions(engine, run)
    assert len(completed) == len(set(completed)), f"a recorded step ran again: {completed}"
    assert set(_step_keys(history)) <= set(completed)
    report = replay(engine.export(run.run_id), recorder.replay_functions())  # what the engine did replays
    assert report.ok and report.ended == "completed", str(report)


ADDITIONS = [(fn_id, kind) for fn_id in sorted(SCRIPTS) for kind in app.STEP_KINDS]
NEW_STEP_RESULTS = {"run": "ran {}", "sleep": None, "wait": None, "invoke": {"doubled": 2}, "send": 1}
"""What a new step of each kind returns in a continued run (a new wait times out: no event comes)."""


def _new_step_result(kind: str, step_id: str) -> Any:
    result = NEW_STEP_RESULTS[kind]
    return result.format(step_id) if isinstance(result, str) else result


@pytest.mark.parametrize(("fn_id", "kind"), ADDITIONS, ids=[f"{f}-{k}" for f, k in ADDITIONS])
def test_a_step_added_after_the_pending_one_runs_and_the_run_completes(
    fn_id: str, kind: str, continue_with: Any
) -> None:
    script = [*SCRIPTS[fn_id], ("added-after", kind)]
    engine, run = continue_with(recorded(fn_id), changed(fn_id, script), *child_functions())
    finish(engine, fn_id)
    run.assert_completed().assert_step("added-after", attempts=1)
    assert run.output["added-after"] == _new_step_result(kind, "added-after")
    assert replay(recorded(fn_id), [changed(fn_id, script)]).ok  # the run has not reached it yet
    COUNTS["mutations"] += 1


@pytest.mark.parametrize(("fn_id", "kind"), ADDITIONS, ids=[f"{f}-{k}" for f, k in ADDITIONS])
def test_a_step_added_before_the_completed_ones_runs_since_steps_are_matched_by_id(
    fn_id: str, kind: str, continue_with: Any
) -> None:
    script = [("added-first", kind), *SCRIPTS[fn_id]]
    engine, run = continue_with(recorded(fn_id), changed(fn_id, script), *child_functions())
    finish(engine, fn_id)
    run.assert_completed().assert_step("added-first", attempts=1)
    assert run.output["added-first"] == _new_step_result(kind, "added-first")
    for step_id, _ in app.MIXED_DONE:  # the recorded steps keep their results and do not run again
        assert _completions(engine, run).count(step_id) == 1
        assert run.output[step_id] == recorded_output(recorded(fn_id), step_id)
    report = replay(recorded(fn_id), [changed(fn_id, script)])  # replay is strict: it says so
    assert not report.ok and "'added-first'" in str(report) and recorded(fn_id).run_id in str(report)
    COUNTS["mutations"] += 1


def recorded_output(history: RecordedRun, step_id: str) -> Any:
    """What the function returns for a recorded step (its output, as take_step shapes it)."""
    [data] = [data for data in _entries(history, "step.completed") if data["step"] == step_id]
    output = data["output"]
    if data["kind"] == "wait":
        return None if output is None else output["data"]
    return len(output) if data["kind"] == "send_event" else output


REMOVALS = [(fn_id, step_id) for fn_id in sorted(SCRIPTS) for step_id, _ in app.MIXED_DONE]


@pytest.mark.parametrize(("fn_id", "removed"), REMOVALS, ids=[f"{f}-{r}" for f, r in REMOVALS])
def test_a_removed_step_is_ignored_and_the_run_completes(fn_id: str, removed: str, continue_with: Any) -> None:
    script = [(step_id, kind) for step_id, kind in SCRIPTS[fn_id] if step_id != removed]
    engine, run = continue_with(recorded(fn_id), changed(fn_id, script), *child_functions())
    finish(engine, fn_id)
    run.assert_completed()
    assert removed not in run.output and run.output["f"] == "ran f"
    assert _completions(engine, run).count(removed) == 1  # its recorded result, never run again
    # A replay of the run in flight stops at its pending step: a step removed before it cannot be told
    # from one moved after it (order is not compared), so that replay passes without reaching it ...
    in_flight = replay(recorded(fn_id), [changed(fn_id, script)])
    assert in_flight.ok and removed not in in_flight.reached, str(in_flight)
    # ... and a replay of the finished run says the recorded step is no longer reached.
    finished = replay(engine.export(run.run_id), [changed(fn_id, script)])
    assert not finished.ok and f"step {removed!r} that the code no longer reaches" in str(finished), str(finished)
    COUNTS["mutations"] += 1


def _completions(engine: TestEngine, run: TestRun) -> list[str]:
    """The step keys completed in the run's log, once per step.completed entry."""
    return [str(data["step"]) for data in _entries(engine.export(run.run_id), "step.completed")]


KIND_CHANGES = [
    *[
        (stem, step_id, was, now)
        for stem, script in sorted(SCRIPTS.items())
        for step_id, was in script[:-1]
        if stem == "mixed-sleeping" or step_id == "hold"  # the completed steps once, each pending step
        for now in app.STEP_KINDS
        if now != was
    ],
    # a step.run with a failed attempt, waiting for its retry
    *[("in-flight-retry", "flaky", "run", now) for now in app.STEP_KINDS if now != "run"],
]


def with_kind_changed(history: RecordedRun, step_id: str, now: str) -> Any:
    """The recorded run's function, with step ``step_id`` now a step of kind ``now``."""
    fn_id = history.function_id
    if fn_id in SCRIPTS:
        return changed(fn_id, [(sid, now if sid == step_id else kind) for sid, kind in SCRIPTS[fn_id]])
    return define_function(lambda ctx: app.take_step(ctx, step_id, now), fn_id=fn_id, trigger=app.on(fn_id))


@pytest.mark.parametrize(
    ("stem", "step_id", "was", "now"), KIND_CHANGES, ids=[f"{f}-{s}-{w}-to-{n}" for f, s, w, n in KIND_CHANGES]
)
def test_an_id_reused_for_another_kind_of_step_fails_the_run_naming_run_and_step(
    stem: str, step_id: str, was: str, now: str, continue_with: Any
) -> None:
    history = recorded(stem)
    function = with_kind_changed(history, step_id, now)
    engine, run = continue_with(history, function, *child_functions())
    finish(engine, history.function_id)
    run.assert_failed(name="NondeterminismError")
    message = run.error["message"]
    assert history.run_id in message and f"'{step_id}'" in message, message
    assert _log_kind(was) in message and _log_kind(now) in message, message
    report = replay(history, [function, *child_functions()])
    assert not report.ok
    assert history.run_id in str(report) and f"'{step_id}'" in str(report), str(report)
    assert "NondeterminismError" in str(report)
    COUNTS["mutations"] += 1


def test_the_nondeterminism_error_names_the_run_and_the_step() -> None:
    """Regression: the error used to name the step only, so a failed run's error did not say which run."""
    error = NondeterminismError("charge", "run", "sleep", run_id="01RUN")
    assert str(error) == (
        "run 01RUN: non-deterministic step 'charge': the log records a 'run' step, the code now asks for a 'sleep' step"
    )
    assert error.run_id == "01RUN" and error.step_id == "charge"


def _log_kind(kind: str) -> str:
    return "send_event" if kind == "send" else kind


# -- 3. the report line --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """After the module's tests: one JSON line of counts for the reliability report, if one is asked for
    (mutations counts the changed-function cases that ran and passed)."""
    yield
    target = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as report:
            report.write(json.dumps({"test": "corpus", **COUNTS}) + "\n")
