"""flow: flow control, decided in two places.

- ``gate``: when an event is accepted (in the coordinator's order): rate limit, idempotency,
  debounce, batching, singleton, and throttle, which gives each run its start time;
- ``admission``: when a run is ready to execute: concurrency limits and priority.

``options`` holds the user-facing option classes and their checks; ``gcra`` the algorithm
behind throttle and rate limits; ``keys`` how key expressions become key values.
"""

from steplog.engine.flow.admission import Admission, Constraint
from steplog.engine.flow.gate import FlowGate, Journal
from steplog.engine.flow.options import (
    Batch,
    Concurrency,
    Debounce,
    FlowControl,
    FlowOptions,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)

__all__ = [
    "Admission",
    "Batch",
    "Concurrency",
    "Constraint",
    "Debounce",
    "FlowControl",
    "FlowGate",
    "FlowOptions",
    "Journal",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
]
