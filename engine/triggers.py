"""Event triggers: exact names or trailing wildcards, and an optional CEL condition over ``event``."""

from __future__ import annotations

from typing import Any

import attrs
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


def compile_trigger(trigger: object, fn_id: str) -> CompiledTrigger:
    """Check a trigger and compile it; raise DefinitionError naming the function and the problem."""
    if not isinstance(trigger, TriggerEvent):
        raise DefinitionError(f"function {fn_id!r}: trigger {trigger!r} is not a steplog.TriggerEvent")
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
