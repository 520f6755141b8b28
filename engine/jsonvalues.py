"""JSON encoding of everything the engine records: strict, compact, never pickle."""

from __future__ import annotations

import json
from typing import Any, Final


class NotJSONError(TypeError):
    """A value cannot be recorded because it is not JSON."""


MAX_DEPTH: Final = 512
"""Deepest nesting of arrays and objects in a value the engine records. Python's JSON reader and writer
recurse once per level against the recursion limit (1,000): a fixed bound well below it means that
what one thread could write, any other can read back, however deep its own call stack."""

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Built once: json.dumps with options builds a new encoder on every call, and this runs per step."""


def encode(value: Any, *, what: str) -> str:
    """Compact JSON text of ``value``, or NotJSONError naming ``what`` and the offending type."""
    try:
        text: str = _ENCODER.encode(value)
    except (TypeError, ValueError) as error:
        raise NotJSONError(f"{what} is not JSON: {error}") from None
    except RecursionError:
        # the C encoder counts each level against the recursion limit; left alone, the error would
        # escape as an engine crash rather than a refusal of this value. The limit counts the
        # caller's frames too: a value within MAX_DEPTH may fail from deep recursion (_deeper_than
        # is iterative, so it can tell which it was here)
        reason = _TOO_DEEP if _deeper_than(value, MAX_DEPTH) else _STACK_TOO_DEEP
        raise NotJSONError(f"{what} is not JSON steplog can record: {reason}") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise NotJSONError(f"{what} is not JSON steplog can record: {_TOO_DEEP}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise NotJSONError(
                f"{what} is not JSON: it holds a lone surrogate {text[error.start]!r}, which is not valid Unicode"
            ) from None
    return text


_TOO_DEEP: Final = f"its arrays or objects nest too deeply (more than {MAX_DEPTH} levels)"
_STACK_TOO_DEEP: Final = (
    f"its arrays or objects (within the {MAX_DEPTH} levels allowed) nest too deeply to encode from a call stack"
    " this deep: Python's recursion limit counts the value's levels and the calling code's frames together"
)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``value`` (which encodes as JSON)."""
    level = [value] if isinstance(value, (dict, list, tuple)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for container in level:
            for item in container.values() if isinstance(container, dict) else container:
                if isinstance(item, (dict, list, tuple)):
                    below.append(item)
        level = below
    return False


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be recorded: it holds no lone surrogate, which UTF-8 cannot encode."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_unicode(text: str) -> str:
    """``text`` with each lone surrogate written as an escape (``\\ud800``), so that it can be recorded."""
    return text if is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def size_of(text: str) -> int:
    """Size in bytes of JSON text as UTF-8."""
    return len(text.encode("utf-8")) if not text.isascii() else len(text)
