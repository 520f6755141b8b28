"""A hypothesis state machine over your functions, to subclass with your invariants (needs ``hypothesis``).

    class OrderMachine(DurableFunctionMachine):
        functions = [client]
        events = strategies.events("shop/order.placed", st.fixed_dictionaries({"id": st.integers(1, 3)}))
        crash_in = ["charge"]                      # crash in the middle of these steps too

        @invariant()
        def never_charged_twice(self):
            assert ledger.count_per_order() <= 1

    TestOrders = OrderMachine.TestCase

Hypothesis then sends events, moves the clock, crashes (between commits and mid-step) and cancels
runs, in every order it can find, checking your invariants after each step; a failure shrinks to
the shortest sequence. Built-in checks after every step: each run that ended replays from its own
history (deterministic code), and the projections equal what the log rebuilds. ``at_end`` settles
every timer and then calls ``check_at_end()``, where "every run ends" style properties go.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

try:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
except ModuleNotFoundError as missing:  # pragma: no cover - depends on what the user installed
    raise ModuleNotFoundError("steplog.testing.stateful needs hypothesis: pip install 'steplog[testing]'") from missing

from steplog.testing.actions import Advance, AdvanceToNextTimer, CancelRun, Crash, CrashDuring, Send
from steplog.testing.harness import TestEngine
from steplog.testing.strategies import durations

__all__ = ["DurableFunctionMachine"]


class DurableFunctionMachine(RuleBasedStateMachine):
    """Subclass it, set ``functions`` and ``events``, add ``@invariant()`` methods over ``self.engine``."""

    functions: ClassVar[Any] = ()
    """Your functions: a list of FunctionDefs, or your Steplog client."""
    events: ClassVar[st.SearchStrategy[dict[str, Any]] | None] = None
    """What to send (see ``strategies.events``); a list of them is sent together sometimes."""
    advance: ClassVar[st.SearchStrategy[timedelta]] = durations()
    """How far the clock moves in one step."""
    downtime: ClassVar[st.SearchStrategy[timedelta]] = st.just(timedelta(0))
    """How long the engine stays down when it crashes."""
    crash_in: ClassVar[Sequence[str]] = ()
    """Step ids to crash in the middle of (their body runs, their result is never committed)."""
    cancel_runs: ClassVar[bool] = False
    """Whether to cancel live runs too."""
    store: ClassVar[str] = "sqlite"
    """``"sqlite"`` (a temporary file per example) or ``"memory"``."""
    check_determinism: ClassVar[bool] = True
    """Replay each run that ends from its own history (this calls your function's code once more)."""
    settle_within: ClassVar[str] = "400d"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A rule that is never enabled still costs draws: a subclass has only the rules it turned on.
        base = DurableFunctionMachine
        cls.crash_in_a_step = base.crash_in_a_step if cls.crash_in else _not_a_rule  # type: ignore[method-assign]
        cls.cancel_a_run = base.cancel_a_run if cls.cancel_runs else _not_a_rule  # type: ignore[method-assign]

    def __init__(self) -> None:
        super().__init__()
        if self.events is None:
            raise TypeError(f"{type(self).__name__} must set `events` to a strategy of events to send")
        self.sent: list[dict[str, Any]] = []
        """Every event sent (acknowledged), in order."""
        self.engine = TestEngine(
            self.make_functions(), store=self.store, check_determinism=self.check_determinism,  # type: ignore[arg-type]
        )
        self.setup()

    def make_functions(self) -> Any:
        """The functions of one example: ``functions`` unless overridden, for instance to define
        functions over state made fresh for each example."""
        return self.functions

    def setup(self) -> None:
        """Called once per example after the engine is built: install stubs, reset your own state."""

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # after a failed step, settling would only hide its error
                self.engine.settle(within=self.settle_within)
                self.check_at_end()
        finally:
            self.engine.close()

    def check_at_end(self) -> None:
        """Called at the end of each example after every timer has run (``settle``): override it."""

    # -- rules -------------------------------------------------------------------------------------

    @rule(data=st.data())
    def send_an_event(self, data: st.DataObject) -> None:
        assert self.events is not None
        event = data.draw(self.events, label="event")
        Send((event,)).apply(self.engine)
        self.sent.append(event)

    @rule(data=st.data())
    def send_events_together(self, data: st.DataObject) -> None:
        assert self.events is not None
        drawn = data.draw(st.lists(self.events, min_size=2, max_size=4), label="events")
        Send(tuple(drawn)).apply(self.engine)
        self.sent.extend(drawn)

    @rule(data=st.data())
    def advance_the_clock(self, data: st.DataObject) -> None:
        Advance(data.draw(self.advance, label="by")).apply(self.engine)

    @rule()
    def advance_to_the_next_timer(self) -> None:
        AdvanceToNextTimer().apply(self.engine)

    @rule(data=st.data())
    def crash_and_restart(self, data: st.DataObject) -> None:
        Crash(data.draw(self.downtime, label="downtime")).apply(self.engine)

    @rule(data=st.data())
    def crash_in_a_step(self, data: st.DataObject) -> None:
        CrashDuring(data.draw(st.sampled_from(list(self.crash_in)), label="step")).apply(self.engine)

    @rule(index=st.integers(0, 1000))
    def cancel_a_run(self, index: int) -> None:
        CancelRun(index).apply(self.engine)

    # -- built-in checks ---------------------------------------------------------------------------

    @invariant()
    def projections_match_the_log(self) -> None:
        differences = self.engine.store.rebuild_projections(apply=False)
        assert differences == [], f"the projections differ from what the log rebuilds: {differences[:5]}"


def _not_a_rule(self: DurableFunctionMachine, *args: Any, **kwargs: Any) -> None:
    """Stands in for a rule a subclass turned off (``crash_in = ()``, ``cancel_runs = False``)."""
