"""steplog: durable functions for Python, embedded in your process.

The one import a user needs::

    import steplog

    client = steplog.Steplog(app_id="shop", db="steplog.db")

    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/user.created"))
    def greet(ctx: steplog.Context) -> str:
        name = ctx.step.run("load", lambda: ctx.event.data["name"])
        return ctx.step.run("greet", lambda: f"hello {name}")

This package only gathers the public names of ``engine`` (the pure core), ``actors`` (the
threads) and ``eventstore`` (the log).
"""

from steplog.actors import DatabaseInUseError, EngineStoppedError, RunHandle, Steplog
from steplog.engine import (
    Batch,
    Cancel,
    Concurrency,
    Context,
    CronTrigger,
    Debounce,
    DefinitionError,
    EngineError,
    Event,
    EventError,
    ExpressionError,
    FunctionDef,
    Limits,
    ManualClock,
    NondeterminismError,
    NonRetriableError,
    Priority,
    RateLimit,
    RetryAfterError,
    RetryPolicy,
    RunFailedError,
    RunNotFoundError,
    Singleton,
    StepError,
    StuckRun,
    SystemClock,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
    WebhookDef,
    stuck_runs,
)
from steplog.eventstore import MemoryEventStore, SqliteEventStore

__all__ = [
    "Batch",
    "Cancel",
    "Concurrency",
    "Context",
    "CronTrigger",
    "DatabaseInUseError",
    "Debounce",
    "DefinitionError",
    "EngineError",
    "EngineStoppedError",
    "Event",
    "EventError",
    "ExpressionError",
    "FunctionDef",
    "Limits",
    "ManualClock",
    "MemoryEventStore",
    "NonRetriableError",
    "NondeterminismError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RetryPolicy",
    "RunFailedError",
    "RunHandle",
    "RunNotFoundError",
    "Singleton",
    "SqliteEventStore",
    "StepError",
    "Steplog",
    "StuckRun",
    "SystemClock",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "WebhookDef",
    "stuck_runs",
]
