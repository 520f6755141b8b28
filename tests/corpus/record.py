"""Record the corpus: run every scenario of corpus_app.py (and a few of the demo app) on a test
engine and write each run's history to tests/corpus/runs/<scenario>[.<role>].json.

    .venv/bin/python tests/corpus/record.py            # rewrite tests/corpus/runs
    .venv/bin/python tests/corpus/record.py OUT_DIR    # write somewhere else

Recording is deterministic: each scenario runs on its own ``TestEngine`` (in memory) seeded from
the scenario's name, on a manual clock starting at 2030-01-01, so re-recording unchanged code
writes the same bytes. Error stacks are dropped from the files (they hold file paths and line
numbers, and a replay compares errors by name and message only).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from steplog.eventstore import Entry

from steplog.demo import create_client, demo_events, packing_events
from steplog.testing import RecordedRun, TestEngine, registry_of

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"


def _load_sibling(name: str) -> ModuleType:
    """A module next to this file (tests run with --import-mode=importlib: no package to import from)."""
    module_name = f"steplog_corpus_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


corpus_app = _load_sibling("corpus_app")
demo_client = create_client("demo-never-opened.db")
"""The demo's functions (``steplog demo``), on a client that is never started."""

Roles = dict[str, str]
"""What a scenario recorded: role (``run``, ``parent``, ``child``...) -> run id."""


@dataclass(frozen=True)
class Scenario:
    """How to make the runs of one scenario: which functions the engine has, and what happens."""

    name: str
    functions: tuple[str, ...]
    drive: Callable[[TestEngine], Roles]
    demo: bool = False

    @property
    def seed(self) -> int:
        """Ids and jitter depend on the scenario's name only: adding a scenario changes no other file."""
        return zlib.crc32(self.name.encode())


def replay_functions() -> list[Any]:
    """Every function the corpus was recorded with: what its runs replay against."""
    return [corpus_app.client, demo_client]


# -- drivers -------------------------------------------------------------------------------------


def triggered(name: str, data: Mapping[str, Any] | None = None, *, settle: bool = False) -> Callable[[TestEngine], Roles]:
    """Send ``corpus/<name>`` once (and let every timer play out, if ``settle``)."""

    def drive(engine: TestEngine) -> Roles:
        run = engine.trigger(f"corpus/{name}", dict(data or {}))
        if settle:
            engine.settle()
        return {"run": run.run_id}

    return drive


def with_events(name: str, data: Mapping[str, Any], *events: Mapping[str, Any]) -> Callable[[TestEngine], Roles]:
    """Trigger ``corpus/<name>``, then send ``events`` one at a time."""

    def drive(engine: TestEngine) -> Roles:
        run = engine.trigger(f"corpus/{name}", dict(data))
        for event in events:
            engine.send(dict(event))
            engine.run_until_idle()
        return {"run": run.run_id}

    return drive


def invoking(name: str, child: str) -> Callable[[TestEngine], Roles]:
    """Trigger a parent that invokes ``child``; record both, after every timer played out."""

    def drive(engine: TestEngine) -> Roles:
        parent = engine.trigger(f"corpus/{name}", {})
        engine.settle()
        [child_run] = engine.runs(child)
        return {"parent": parent.run_id, "child": child_run.run_id}

    return drive


def cancel_by_event(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/cancel-sleeping", {"order": 1})
    engine.send({"name": "corpus/cancel", "data": {"order": 1}})
    engine.run_until_idle()
    return {"run": run.run_id}


def cancel_by_request(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/cancel-waiting", {})
    engine.cancel(run.run_id, reason="cancelled while waiting")
    return {"run": run.run_id}


def failure_handled(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/with-failure-handler", {})
    engine.settle()
    [handler] = engine.runs("with-failure-handler-failure")
    return {"run": run.run_id, "handler": handler.run_id}


def batch_of_three(engine: TestEngine) -> Roles:
    engine.send([{"name": "corpus/batched", "data": {"n": n}} for n in (1, 2, 3)])
    engine.run_until_idle()
    [run] = engine.runs("batched")
    return {"run": run.run_id}


def cron_tick(engine: TestEngine) -> Roles:
    engine.advance("1h")
    [run] = engine.runs("hourly")
    return {"run": run.run_id}


def async_steps(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/async-steps", {"order": 3})
    engine.advance("5m")
    engine.send({"name": "corpus/signal", "data": {"order": 3, "ok": True}})
    engine.run_until_idle()
    return {"run": run.run_id}


def mixed_up_to_pending(name: str) -> Callable[[TestEngine], Roles]:
    """A scripted run through a step of every kind, left at its pending sleep or wait (in flight)."""

    def drive(engine: TestEngine) -> Roles:
        run = engine.trigger(f"corpus/{name}", {"order": 1})
        engine.advance("1m")  # step 'b' sleeps one minute
        engine.send({"name": "corpus/go", "data": {"order": 1}})  # resolves wait 'c'; 'd' invokes child-ok
        engine.run_until_idle()
        return {"run": run.run_id}

    return drive


def retry_pending(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/retry-succeeds", {})
    return {"run": run.run_id}  # its step failed once: the run waits for its retry


def sleeping(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/sleeps", {})
    return {"run": run.run_id}


def waiting(engine: TestEngine) -> Roles:
    run = engine.trigger("corpus/wait-match", {"order": 5})
    return {"run": run.run_id}


def demo_shop(engine: TestEngine) -> Roles:
    """The demo's two orders (the first one's card charge times out once); order-1 is packed, order-2
    is not and its shipping wait times out."""
    events = demo_events(2, "corpus")
    engine.send(events)
    engine.run_until_idle()
    engine.send(packing_events(events)[:1])
    engine.settle()

    def only(function_id: str, order: str | None = None) -> str:
        [run] = [run for run in engine.runs(function_id)
                 if order is None or run.event["data"].get("order_id") == order]
        return run.run_id

    return {
        "checkout": only("checkout", "order-1"), "vip-gift": only("vip-gift"),
        "ship-packed": only("ship-order", "order-1"), "ship-not-packed": only("ship-order", "order-2"),
        "audit-cart": next(run.run_id for run in engine.runs("audit-log") if run.event["name"] == "shop/cart.abandoned"),
    }


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("json-values", ("json-values",), triggered("json-values")),
    Scenario("retry-succeeds", ("retry-succeeds",), triggered("retry-succeeds", settle=True)),
    Scenario("retries-exhausted-caught", ("retries-exhausted-caught",), triggered("retries-exhausted-caught", settle=True)),
    Scenario("retries-exhausted-uncaught", ("retries-exhausted-uncaught",),
             triggered("retries-exhausted-uncaught", settle=True)),
    Scenario("non-retriable", ("non-retriable",), triggered("non-retriable")),
    Scenario("retry-after", ("retry-after",), triggered("retry-after", settle=True)),
    Scenario("outside-steps-retry", ("outside-steps-retry",), triggered("outside-steps-retry", settle=True)),
    Scenario("repeated-ids", ("repeated-ids",), triggered("repeated-ids")),
    Scenario("parallel", ("parallel",), triggered("parallel")),
    Scenario("sleeps", ("sleeps",), triggered("sleeps", settle=True)),
    Scenario("wait-match", ("wait-match",), with_events(
        "wait-match", {"order": 7},
        {"name": "corpus/packed", "data": {"order": 8}}, {"name": "corpus/packed", "data": {"order": 7, "box": "B"}},
    )),
    Scenario("wait-if", ("wait-if",), with_events(
        "wait-if", {"amount": 100},
        {"name": "corpus/approved", "data": {"amount": 50}}, {"name": "corpus/approved", "data": {"amount": 150}},
    )),
    Scenario("wait-timeout", ("wait-timeout",), triggered("wait-timeout", {"order": 1}, settle=True)),
    Scenario("send-event", ("send-event",), triggered("send-event")),
    Scenario("invoke-ok", ("invoke-ok", "child-ok"), invoking("invoke-ok", "child-ok")),
    Scenario("invoke-fails", ("invoke-fails", "child-fails"), invoking("invoke-fails", "child-fails")),
    Scenario("invoke-timeout", ("invoke-timeout", "child-slow"), invoking("invoke-timeout", "child-slow")),
    Scenario("cancel-sleeping", ("cancel-sleeping",), cancel_by_event),
    Scenario("cancel-waiting", ("cancel-waiting",), cancel_by_request),
    Scenario("failure-handler", ("with-failure-handler",), failure_handled),
    Scenario("batch", ("batched",), batch_of_three),
    Scenario("cron", ("hourly",), cron_tick),
    Scenario("async-steps", ("async-steps",), async_steps),
    Scenario("in-flight-sleeping", ("sleeps",), sleeping),
    Scenario("in-flight-waiting", ("wait-match",), waiting),
    Scenario("in-flight-retry", ("retry-succeeds",), retry_pending),
    Scenario("mixed-sleeping", ("mixed-sleeping", "child-ok"), mixed_up_to_pending("mixed-sleeping")),
    Scenario("mixed-waiting", ("mixed-waiting", "child-ok"), mixed_up_to_pending("mixed-waiting")),
    Scenario("demo", ("checkout", "vip-gift", "ship-order", "audit-log"), demo_shop, demo=True),
)


# -- recording -----------------------------------------------------------------------------------


def functions_of(scenario: Scenario) -> list[Any]:
    registry = registry_of([demo_client if scenario.demo else corpus_app.client])
    found = [registry.get(function_id) for function_id in scenario.functions]
    missing = [fid for fid, function in zip(scenario.functions, found) if function is None]
    if missing:
        raise LookupError(f"scenario {scenario.name!r}: no function {missing}")
    return found


def record(scenario: Scenario) -> dict[str, RecordedRun]:
    """Play ``scenario`` on a fresh engine; its recorded runs by file stem."""
    with TestEngine(*functions_of(scenario), store="memory", seed=scenario.seed) as engine:
        roles = scenario.drive(engine)
        return {_stem(scenario.name, role, len(roles)): without_stacks(engine.export(run_id))
                for role, run_id in roles.items()}


def _stem(scenario: str, role: str, roles: int) -> str:
    return scenario if roles == 1 and role == "run" else f"{scenario}.{role}"


def without_stacks(recorded: RecordedRun) -> RecordedRun:
    """The run with every error's stack dropped: stacks name files and lines, which replays ignore."""
    return attrs.evolve(
        recorded,
        entries=tuple(_entry_without_stacks(entry) for entry in recorded.entries),
        signals=tuple(_entry_without_stacks(entry) for entry in recorded.signals),
    )


def _entry_without_stacks(entry: Entry) -> Entry:
    return attrs.evolve(entry, data=_scrubbed(entry.data))


def _scrubbed(value: Any) -> Any:
    if isinstance(value, dict):
        is_error = {"name", "message", "stack"} <= value.keys()
        return {key: None if is_error and key == "stack" else _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value


def render(recorded: RecordedRun) -> str:
    """The file's text: compact JSON, one entry a line, so that diffs are readable and files small."""
    document = recorded.to_json()
    lines = [json.dumps({key: value for key, value in document.items() if key not in ("entries", "signals")},
                        ensure_ascii=False)[:-1] + ","]
    for part in ("entries", "signals"):
        items = [json.dumps(item, ensure_ascii=False, sort_keys=True) for item in document[part]]
        body = ",\n".join(f"  {item}" for item in items)
        lines.append(f' "{part}": [\n{body}\n ]' if items else f' "{part}": []')
    return lines[0] + "\n" + ",\n".join(lines[1:]) + "\n}\n"


def recordings() -> Iterator[tuple[str, RecordedRun]]:
    """Every (file stem, recorded run) of the corpus, scenario by scenario."""
    for scenario in SCENARIOS:
        yield from record(scenario).items()


def write_corpus(directory: Path) -> list[Path]:
    """Record every scenario into ``directory`` (removing files no scenario writes any more)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, recorded in recordings():
        path = directory / f"{stem}.json"
        path.write_text(render(recorded), encoding="utf-8")
        written.append(path)
    for stale in set(directory.glob("*.json")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else RUNS
    written = write_corpus(directory)
    size = sum(path.stat().st_size for path in written)
    print(f"recorded {len(written)} runs of {len(SCENARIOS)} scenarios into {directory} ({size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
