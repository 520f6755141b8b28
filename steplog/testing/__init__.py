"""steplog.testing: test your durable functions on virtual time, through crashes, against generated input.

    from steplog.testing import TestEngine

    def test_checkout_retries_the_charge():
        with TestEngine(client) as engine:          # your Steplog client, or the functions
            engine.stub("charge", fails=2)          # the real body runs on the 3rd attempt
            run = engine.trigger("shop/order.placed", {"id": 7})
            engine.settle()                         # through every retry's backoff, on virtual time
            run.assert_completed().assert_step("charge", attempts=3)

``TestEngine`` runs the real engine (a temporary SQLite file, or memory) on a ``ManualClock`` in the
test's thread; ``crash()`` drops everything but the log. ``stub``/``crash_during`` replace step
bodies by id. ``export_run``/``replay`` check recorded runs against changed code. Hypothesis
strategies and a state machine to subclass are in ``steplog.testing.strategies`` and
``steplog.testing.stateful`` (they need hypothesis); the pytest fixtures ``steplog_engine`` and
``manual_clock`` come with the package (``steplog.testing.pytest_plugin``).

This package sits beside the facade rather than in ``engine/``: it is for users' test suites, may
import hypothesis and pytest, and reads clients of the actor layer; the engine itself never does.
"""

from steplog.testing.harness import DEFAULT_START, NondeterministicRunError, TestEngine, registry_of
from steplog.testing.replay import RecordedRun, ReplayReport, assert_replays, export_run, replay
from steplog.testing.runs import TestRun
from steplog.testing.stubs import SimulatedCrash, Stub, StubError

__all__ = [
    "DEFAULT_START",
    "NondeterministicRunError",
    "RecordedRun",
    "ReplayReport",
    "SimulatedCrash",
    "Stub",
    "StubError",
    "TestEngine",
    "TestRun",
    "assert_replays",
    "export_run",
    "registry_of",
    "replay",
]
