"""Triggers: events (exact names or trailing wildcards, and an optional CEL condition over
``event``) and cron schedules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
from steplog.engine.cron import CronError, CronSchedule, parse_cron
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import DefinitionError
from steplog.engine.expressions import Expression, ExpressionError, compile_expression

MAX_TRIGGERS = 10


@attrs.frozen
class TriggerEvent:
    """Start the function for events named ``event``; ``app/*`` and ``app/user.*`` match a prefix.

    ``expression`` is CEL over ``event``; the function starts only when it is true (an
    expression that fails on an event counts as false, and the failure is recorded).
    """

    event: str
    expression: str | None = None


@attrs.frozen
class CompiledTrigger:
    """A trigger ready to match: its name pattern split into exact name or prefix, its condition compiled."""

    trigger: TriggerEvent
    exact: str | None
    prefix: str | None
    condition: Expression | None

    def matches_name(self, name: str) -> bool:
        """Whether an event name matches the pattern."""
        return name == self.exact if self.exact is not None else name.startswith(self.prefix or "")

    def condition_holds(self, event: dict[str, Any]) -> bool:
        """Whether the condition is true for the event; an error in it raises ExpressionError."""
        return self.condition is None or self.condition.evaluate({"event": event}) is True


MISSED_TICK_POLICIES = ("latest", "all", "skip")
MIN_JITTER = timedelta(seconds=1)
MAX_JITTER = timedelta(minutes=5)


@attrs.frozen
class TriggerCron:
    """Start the function on a schedule: ``TriggerCron("0 12 * * 5")``, ``"TZ=Europe/Paris 0 12 * * 5"``.

    Each tick is an ``inngest/scheduled.timer`` event with ``data = {cron, scheduledAt, fireAt}``
    and an id derived from the function and the scheduled time, so a tick starts one run however
    often the engine restarts. ``jitter`` (0, or 1 s to 5 min) delays every tick by a fixed
    pseudo-random part of it, different per tick and function. ``missed`` says what happens to
    ticks that passed while the engine was down: ``"latest"`` runs the latest of them once (the
    default), ``"all"`` runs each of them, oldest first, ``"skip"`` runs none.
    """

    cron: str
    jitter: Duration | None = None
    missed: str = "latest"


CronTrigger = TriggerCron
"""The same class, by the name the issue tracker and most schedulers use."""


@attrs.frozen
class CompiledCron:
    """A cron trigger ready to plan: its schedule parsed, its jitter a timedelta."""

    trigger: TriggerCron
    schedule: CronSchedule
    jitter: timedelta

    def describe(self) -> dict[str, Any]:
        return {"cron": self.trigger.cron, "jitter_s": self.jitter.total_seconds(), "missed": self.trigger.missed}


def compile_cron(trigger: TriggerCron, fn_id: str) -> CompiledCron:
    """Check a cron trigger; raise DefinitionError naming the function and the problem."""
    try:
        schedule = parse_cron(trigger.cron)
    except CronError as error:
        raise DefinitionError(f"function {fn_id!r}: {error}") from None
    jitter = timedelta(0)
    if trigger.jitter is not None:
        try:
            jitter = parse_duration(trigger.jitter, what="cron jitter")
        except (TypeError, ValueError) as error:
            raise DefinitionError(f"function {fn_id!r}: {error}") from None
        if jitter and not MIN_JITTER <= jitter <= MAX_JITTER:
            raise DefinitionError(f"function {fn_id!r}: cron jitter {jitter} is outside 1 second to 5 minutes")
    if trigger.missed not in MISSED_TICK_POLICIES:
        raise DefinitionError(
            f"function {fn_id!r}: cron missed={trigger.missed!r}; use one of {', '.join(MISSED_TICK_POLICIES)}"
        )
    return CompiledCron(trigger, schedule, jitter)


def compile_trigger(trigger: object, fn_id: str) -> CompiledTrigger:
    """Check a trigger and compile it; raise DefinitionError naming the function and the problem."""
    if not isinstance(trigger, TriggerEvent):
        raise DefinitionError(
            f"function {fn_id!r}: trigger {trigger!r} is not a steplog.TriggerEvent or steplog.TriggerCron"
        )
    pattern = trigger.event
    if not isinstance(pattern, str) or not pattern.strip():
        raise DefinitionError(f"function {fn_id!r}: a trigger needs a non-empty event name")
    if len(pattern) > 255:
        raise DefinitionError(f"function {fn_id!r}: trigger event {pattern[:40]!r}... is longer than 255 characters")
    exact, prefix = _split_pattern(pattern, fn_id)
    return CompiledTrigger(trigger, exact, prefix, _compile_condition(trigger.expression, fn_id))


def _split_pattern(pattern: str, fn_id: str) -> tuple[str | None, str | None]:
    if "*" not in pattern:
        return pattern, None
    if pattern.count("*") > 1 or not pattern.endswith("*") or len(pattern) < 2 or pattern[-2] not in "/.":
        raise DefinitionError(
            f"function {fn_id!r}: trigger {pattern!r}: a wildcard '*' may only end the name,"
            " right after '/' or '.' (like 'app/*' or 'app/user.*')"
        )
    return None, pattern[:-1]


def _compile_condition(source: str | None, fn_id: str) -> Expression | None:
    if source is None:
        return None
    try:
        return compile_expression(source, names=("event",), result="bool")
    except ExpressionError as error:
        raise DefinitionError(f"function {fn_id!r}: trigger expression: {error}") from None
