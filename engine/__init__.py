"""engine: the pure core of steplog: definitions, triggers, expressions, retries, the
invocation that runs a function step by step, run state folded from the log, projections and
queries. No threads, no wall clock (a Clock is passed in), no SQL.
"""

from steplog.engine import queries
from steplog.engine.clock import Clock, ManualClock, SystemClock
from steplog.engine.context import AsyncStep, Context, Step
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import (
    DefinitionError,
    EngineError,
    EventError,
    FunctionNotFoundError,
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    RunFailedError,
    RunNotFoundError,
    StepError,
)
from steplog.engine.events import Event
from steplog.engine.expressions import Expression, ExpressionError, compile_expression
from steplog.engine.flow import Batch, Concurrency, Debounce, FlowOptions, Priority, RateLimit, Singleton, Throttle
from steplog.engine.functions import FunctionDef, FunctionRegistry, define_function
from steplog.engine.health import StuckRun, stuck_runs
from steplog.engine.invocation import Outcome
from steplog.engine.limits import Limits
from steplog.engine.options import Cancel, Timeouts
from steplog.engine.projector import RunProjector
from steplog.engine.retry import RetryPolicy
from steplog.engine.service import Engine
from steplog.engine.triggers import CronTrigger, TriggerCron, TriggerEvent
from steplog.engine.webhooks import WebhookDef

__all__ = [
    "AsyncStep",
    "Batch",
    "Cancel",
    "Clock",
    "Concurrency",
    "Context",
    "CronTrigger",
    "Debounce",
    "DefinitionError",
    "Duration",
    "Engine",
    "EngineError",
    "Event",
    "EventError",
    "Expression",
    "ExpressionError",
    "FlowOptions",
    "FunctionDef",
    "FunctionNotFoundError",
    "FunctionRegistry",
    "Limits",
    "ManualClock",
    "NonRetriableError",
    "NondeterminismError",
    "Outcome",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RetryPolicy",
    "RunFailedError",
    "RunNotFoundError",
    "RunProjector",
    "Singleton",
    "Step",
    "StepError",
    "StuckRun",
    "SystemClock",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
    "WebhookDef",
    "compile_expression",
    "define_function",
    "parse_duration",
    "queries",
    "stuck_runs",
]
