"""Function options for cancellation and timeouts, in the shape of Inngest's Python SDK.

    Cancel(event="app/order.cancelled", match="data.order_id", timeout="7d")
    Timeouts(start="10m", finish="1h")

Both are checked when the function is defined; errors name the function and the option.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import DefinitionError
from steplog.engine.expressions import ExpressionError, compile_expression
from steplog.engine.pauses import PAUSE_NAMES, match_expression
from steplog.eventstore import parse_time

MAX_CANCEL_RULES = 5
MAX_PAUSE_TIMEOUT = timedelta(days=366)
DEFAULT_CANCEL_TIMEOUT = timedelta(days=365)


@attrs.frozen
class Cancel:
    """Cancel a run when an event named ``event`` arrives that satisfies ``if_exp`` or ``match``.

    ``if_exp`` is CEL over ``event`` (the run's trigger) and ``async`` (the cancelling event);
    ``match="data.id"`` means ``event.data.id == async.data.id``. The rule listens for ``timeout``
    after the run is scheduled (default and maximum: one year).
    """

    event: str
    if_exp: str | None = None
    match: str | None = None
    timeout: Duration | None = None


@attrs.frozen
class Timeouts:
    """``start``: longest time from scheduling to the first step; ``finish``: from then to the end.

    A run over either is cancelled (between steps, never inside one), with the reason recorded.
    """

    start: Duration | None = None
    finish: Duration | None = None


@attrs.frozen
class CancelRule:
    """A checked cancel rule: exact event name, the CEL condition (if any), how long it listens."""

    event: str
    expression: str | None
    timeout: timedelta


@attrs.frozen
class RunTimeouts:
    start: timedelta | None
    finish: timedelta | None

    def start_deadline(self, scheduled_at: str | None) -> datetime | None:
        """Just past ``start`` after scheduling: a run not started by then is cancelled."""
        if self.start is None or scheduled_at is None:
            return None
        return parse_time(scheduled_at) + self.start + timedelta(microseconds=1)


def pause_expression(if_exp: str | None, match: str | None, where: str) -> str | None:
    """The CEL condition of a wait or cancel rule, from ``if_exp`` or ``match``; ValueError naming ``where``."""
    if if_exp is not None and match is not None:
        raise ValueError(f"{where}: give match or if_exp, not both")
    try:
        source = match_expression(match) if match is not None else if_exp
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if source is None:
        return None
    try:
        compile_expression(source, names=PAUSE_NAMES, result="bool")
    except ExpressionError as error:
        raise ValueError(f"{where}: {error}") from None
    return source


def pause_timeout(value: Duration | None, where: str, default: timedelta | None = None) -> timedelta:
    """A wait or cancel timeout, at most 366 days; ValueError naming ``where``."""
    if value is None:
        if default is None:
            raise ValueError(f"{where}: a timeout is required (e.g. timeout='1h')")
        return default
    duration = parse_duration(value, what=f"{where} timeout")
    if duration > MAX_PAUSE_TIMEOUT:
        raise ValueError(f"{where}: the timeout may be at most 366 days, got {duration}")
    return duration


def compile_cancel_rules(rules: object, fn_id: str) -> tuple[CancelRule, ...]:
    if rules is None:
        return ()
    items = [rules] if isinstance(rules, Cancel) else rules
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise DefinitionError(f"function {fn_id!r}: cancel must be a list of steplog.Cancel, got {rules!r}")
    if len(items) > MAX_CANCEL_RULES:
        raise DefinitionError(f"function {fn_id!r} has {len(items)} cancel rules; the limit is {MAX_CANCEL_RULES}")
    return tuple(_cancel_rule(rule, index, fn_id) for index, rule in enumerate(items))


def _cancel_rule(rule: object, index: int, fn_id: str) -> CancelRule:
    where = f"function {fn_id!r}: cancel rule {index}"
    if not isinstance(rule, Cancel):
        raise DefinitionError(f"{where} is {rule!r}, not a steplog.Cancel")
    if not isinstance(rule.event, str) or not rule.event.strip() or "*" in rule.event:
        raise DefinitionError(f"{where}: event must be an exact event name, got {rule.event!r}")
    try:
        expression = pause_expression(rule.if_exp, rule.match, where)
        timeout = pause_timeout(rule.timeout, where, DEFAULT_CANCEL_TIMEOUT)
    except ValueError as error:
        raise DefinitionError(str(error)) from None
    return CancelRule(rule.event, expression, timeout)


def compile_timeouts(timeouts: object, fn_id: str) -> RunTimeouts | None:
    if timeouts is None:
        return None
    if not isinstance(timeouts, Timeouts):
        raise DefinitionError(f"function {fn_id!r}: timeouts must be a steplog.Timeouts, got {timeouts!r}")
    try:
        start = None if timeouts.start is None else parse_duration(timeouts.start, what="timeouts.start")
        finish = None if timeouts.finish is None else parse_duration(timeouts.finish, what="timeouts.finish")
    except ValueError as error:
        raise DefinitionError(f"function {fn_id!r}: {error}") from None
    for name, value in (("start", start), ("finish", finish)):
        if value is not None and value < timedelta(seconds=1):
            raise DefinitionError(f"function {fn_id!r}: timeouts.{name} must be at least 1 second, got {value}")
    return RunTimeouts(start, finish)
