"""engine: the pure core of steplog: definitions, triggers, expressions, retries, the
invocation that runs a function step by step, run state folded from the log, projections and
queries. No threads, no wall clock (a Clock is passed in), no SQL.
"""

from engine import queries
from engine.clock import Clock, ManualClock, SystemClock
from engine.context import AsyncStep, Context, Step
from engine.durations import Duration, parse_duration
from engine.errors import (
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
from engine.events import Event
from engine.expressions import Expression, ExpressionError, compile_expression
from engine.functions import FunctionDef, FunctionRegistry, define_function
from engine.invocation import Outcome
from engine.limits import Limits
from engine.projector import RunProjector
from engine.retry import RetryPolicy
from engine.service import Engine
from engine.triggers import TriggerEvent

__all__ = [
    "AsyncStep",
    "Clock",
    "Context",
    "DefinitionError",
    "Duration",
    "Engine",
    "EngineError",
    "Event",
    "EventError",
    "Expression",
    "ExpressionError",
    "FunctionDef",
    "FunctionNotFoundError",
    "FunctionRegistry",
    "Limits",
    "ManualClock",
    "NonRetriableError",
    "NondeterminismError",
    "Outcome",
    "RetryAfterError",
    "RetryPolicy",
    "RunFailedError",
    "RunNotFoundError",
    "RunProjector",
    "Step",
    "StepError",
    "SystemClock",
    "TriggerEvent",
    "compile_expression",
    "define_function",
    "parse_duration",
    "queries",
]
