"""What can happen to an engine, as values: schedules of these are what property tests generate.

Each action applies itself to a TestEngine, and prints as the line of test code it stands for,
so a shrunk counterexample reads as a test to paste.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from steplog.testing.harness import TestEngine

__all__ = ["Action", "Advance", "AdvanceToNextTimer", "CancelRun", "Crash", "CrashDuring", "FailurePlan", "Send", "play"]


class _PrintsAsCode:
    """Hypothesis prints a shrunk example with ``_repr_pretty_`` when it is there: as test code."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@attrs.frozen
class Send(_PrintsAsCode):
    """Send events and run until idle."""

    events: tuple[Mapping[str, Any], ...]

    def apply(self, engine: TestEngine) -> None:
        engine.send([dict(event) for event in self.events])
        engine.run_until_idle()

    def __repr__(self) -> str:
        return f"engine.send({[dict(e) for e in self.events]!r}); engine.run_until_idle()"


@attrs.frozen
class Advance(_PrintsAsCode):
    """Move the clock forward and run what became due."""

    by: timedelta

    def apply(self, engine: TestEngine) -> None:
        engine.advance(self.by)

    def __repr__(self) -> str:
        return f"engine.advance({self.by!r})"


@attrs.frozen
class AdvanceToNextTimer(_PrintsAsCode):
    """Move the clock to the next timer, if any, and run what became due."""

    def apply(self, engine: TestEngine) -> None:
        engine.advance_to_next_timer()

    def __repr__(self) -> str:
        return "engine.advance_to_next_timer()"


@attrs.frozen
class Crash(_PrintsAsCode):
    """The process dies between two commits; ``downtime`` passes before it starts again."""

    downtime: timedelta = timedelta(0)

    def apply(self, engine: TestEngine) -> None:
        engine.crash(self.downtime)
        engine.run_until_idle()

    def __repr__(self) -> str:
        return f"engine.crash({self.downtime!r}); engine.run_until_idle()"


@attrs.frozen
class CrashDuring(_PrintsAsCode):
    """The next attempt of this step runs its body, then the process dies before the commit (added to
    the stubs already in place for it)."""

    step_id: str

    def apply(self, engine: TestEngine) -> None:
        engine.crash_during(self.step_id)

    def __repr__(self) -> str:
        return f"engine.crash_during({self.step_id!r})"


@attrs.frozen
class CancelRun(_PrintsAsCode):
    """Cancel the ``index``-th run that has not ended (modulo how many there are), if any."""

    index: int

    def apply(self, engine: TestEngine) -> None:
        live = [run for run in engine.runs() if not run.finished]  # in the order they were scheduled
        if live:
            engine.cancel(live[self.index % len(live)].run_id)

    def __repr__(self) -> str:
        return f"engine.cancel(<live run {self.index}>)"


Action = Send | Advance | AdvanceToNextTimer | Crash | CrashDuring | CancelRun


def play(engine: TestEngine, actions: Iterable[Action]) -> None:
    """Apply each action in turn."""
    for action in actions:
        action.apply(engine)


@attrs.frozen
class FailurePlan(_PrintsAsCode):
    """How steps fail in one test: ``fails[step]`` attempts fail first (then the real body runs);
    every attempt of a step in ``fatal`` raises NonRetriableError; ``crashes[step]`` times the body
    runs and the process dies before its result is committed."""

    fails: Mapping[str, int] = attrs.field(factory=dict)
    fatal: frozenset[str] = frozenset()
    crashes: Mapping[str, int] = attrs.field(factory=dict)

    def install(self, engine: TestEngine) -> None:
        """Put the plan's stubs in place (replacing stubs of the same steps)."""
        from steplog.engine.errors import NonRetriableError

        for step_id in sorted({*self.fails, *self.fatal, *self.crashes}):
            raises = NonRetriableError(f"planned fatal failure of step {step_id!r}") if step_id in self.fatal else None
            engine.stub(step_id, raises=raises, fails=self.fails.get(step_id, 0), crashes=self.crashes.get(step_id, 0))

    def __repr__(self) -> str:
        return f"FailurePlan(fails={dict(self.fails)!r}, fatal={set(self.fatal) or 'set()'}, crashes={dict(self.crashes)!r})"
