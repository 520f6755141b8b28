"""The public names of each package, locked: adding or removing one is a deliberate change here."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "steplog": [
        "Batch", "Cancel", "Concurrency", "Context", "CronTrigger", "DatabaseInUseError", "Debounce", "DefinitionError",
        "EngineError", "EngineStoppedError", "Event", "EventError", "ExpressionError", "FunctionDef",
        "Limits", "ManualClock", "MemoryEventStore", "NonRetriableError", "NondeterminismError", "Priority",
        "RateLimit", "RetryAfterError", "RetryPolicy", "RunFailedError", "RunHandle", "RunNotFoundError",
        "Singleton", "SqliteEventStore", "StepError", "Steplog", "StuckRun", "SystemClock", "Throttle", "Timeouts",
        "TriggerCron", "TriggerEvent", "WebhookDef", "stuck_runs",
    ],
    "steplog.engine": [
        "AsyncStep", "Batch", "Cancel", "Clock", "Concurrency", "Context", "CronTrigger", "Debounce", "DefinitionError",
        "Duration", "Engine", "EngineError", "Event", "EventError", "Expression", "ExpressionError",
        "FlowOptions", "FunctionDef", "FunctionNotFoundError", "FunctionRegistry", "Limits", "ManualClock",
        "NonRetriableError", "NondeterminismError", "Outcome", "Priority", "RateLimit", "RetryAfterError",
        "RetryPolicy", "RunFailedError", "RunNotFoundError", "RunProjector", "Singleton", "Step", "StepError",
        "StuckRun", "SystemClock", "Throttle", "Timeouts", "TriggerCron", "TriggerEvent", "WebhookDef", "compile_expression", "define_function",
        "parse_duration", "queries", "stuck_runs",
    ],
    "steplog.testing": [
        "DEFAULT_START", "NondeterministicRunError", "RecordedRun", "ReplayReport", "SimulatedCrash", "Stub",
        "StubError", "TestEngine", "TestRun", "assert_replays", "export_run", "registry_of", "replay",
    ],
    "steplog.testing.actions": [
        "Action", "Advance", "AdvanceToNextTimer", "CancelRun", "Crash", "CrashDuring", "FailurePlan", "Send", "play",
    ],
    "steplog.testing.strategies": ["EVENT_IDS", "actions", "durations", "events", "failure_plans", "schedules"],
    "steplog.testing.stateful": ["DurableFunctionMachine"],
    "steplog.actors": ["DatabaseInUseError", "EngineStoppedError", "RunHandle", "Steplog"],
    "steplog.eventstore": [
        "Append", "Change", "Committed", "ConcurrencyError", "CorruptEntryError", "Delete", "Difference", "Entry", "EventStore",
        "EventStoreError", "MemoryEventStore", "NewEntry", "Projector", "Row", "SqliteEventStore", "StorageError",
        "StoreBusyError", "StoreClosedError", "StreamWrite", "Table", "Upsert", "format_time", "parse_time",
    ],
}


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_all_is_locked(package: str) -> None:
    module = importlib.import_module(package)
    assert list(module.__all__) == EXPECTED[package]  # sorted, no duplicates, exactly these


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_every_public_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_star_import_gives_exactly_all(package: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # noqa: S102 - the point of the test
    namespace.pop("__builtins__")
    assert sorted(namespace) == EXPECTED[package]


def test_steplog_reexports_the_same_objects() -> None:
    import steplog
    from steplog import actors, engine, eventstore

    for name in steplog.__all__:
        sources = [m for m in (engine, actors, eventstore) if name in m.__all__]
        assert len(sources) == 1, f"{name} should come from exactly one layer"
        assert getattr(steplog, name) is getattr(sources[0], name)


def test_errors_a_user_catches_are_engine_errors_or_steering_errors() -> None:
    import steplog

    for name in ("DefinitionError", "EventError", "RunFailedError", "RunNotFoundError", "NondeterminismError",
                 "EngineStoppedError"):
        assert issubclass(getattr(steplog, name), steplog.EngineError), name
    for name in ("DefinitionError", "EventError"):
        assert issubclass(getattr(steplog, name), ValueError), name
    # raised by or into user code, so deliberately not EngineError
    for name in ("StepError", "NonRetriableError", "RetryAfterError"):
        assert not issubclass(getattr(steplog, name), steplog.EngineError), name
