"""Flow-control keys: the value of a key expression for an event, as text.

A key's CEL result is used as it is when it is a string and as its JSON text otherwise. Keys
are text, as in Inngest, so ``1`` and ``"1"`` are the same key (and ``null`` and ``"null"``). An expression that fails on an event does not stop the event:
the error is recorded on the event, and the event gets the empty key ``""``, so the limit still
applies to it (shared with every other event whose key failed).
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

from steplog.engine.expressions import Expression, ExpressionError


def key_of(expression: Expression | None, event: dict[str, Any], errors: list[str], option: str) -> str:
    """The key value for ``event``; a failure is appended to ``errors`` (naming ``option``) and gives ``""``."""
    if expression is None:
        return ""
    try:
        path = field_path(expression.source)
        value = expression.evaluate({"event": event}) if path is None else _lookup(expression, path, event)
    except ExpressionError as error:
        errors.append(f"{option}: {error}")
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


_PATH = re.compile(r"^\s*event((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*$")


@functools.lru_cache(maxsize=1024)
def field_path(source: str) -> tuple[str, ...] | None:
    """``event.data.user_id`` as ("data", "user_id"): most keys are a plain field, and reading it
    directly costs a microsecond where the CEL interpreter costs a hundred or more."""
    match = _PATH.match(source)
    return None if match is None else tuple(match.group(1)[1:].split("."))


def _lookup(expression: Expression, path: tuple[str, ...], event: dict[str, Any]) -> Any:
    value: Any = event
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise ExpressionError(expression.source, f"no such key: {part!r}")
        value = value[part]
    return value


def priority_of(expression: Expression | None, event: dict[str, Any], errors: list[str], bound: int) -> int:
    """Seconds of priority for ``event``, clipped to +-``bound``; a failure counts as 0 (as in Inngest)."""
    if expression is None:
        return 0
    try:
        value = expression.evaluate({"event": event})
    except ExpressionError as error:
        errors.append(f"priority.run: {error}")
        return 0
    if math.isnan(value):  # 0.0 / 0.0: no order at all
        errors.append("priority.run: the result is not a number (NaN); using 0")
        return 0
    return int(max(-bound, min(bound, value)))
