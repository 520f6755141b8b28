"""JSON encoding of everything the engine records: strict, compact, never pickle."""

from __future__ import annotations

import json
from typing import Any


class NotJSONError(TypeError):
    """A value cannot be recorded because it is not JSON."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Built once: json.dumps with options builds a new encoder on every call, and this runs per step."""


def encode(value: Any, *, what: str) -> str:
    """Compact JSON text of ``value``, or NotJSONError naming ``what`` and the offending type."""
    try:
        text: str = _ENCODER.encode(value)
    except (TypeError, ValueError) as error:
        raise NotJSONError(f"{what} is not JSON: {error}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise NotJSONError(
                f"{what} is not JSON: it holds a lone surrogate {text[error.start]!r}, which is not valid Unicode"
            ) from None
    return text


def size_of(text: str) -> int:
    """Size in bytes of JSON text as UTF-8."""
    return len(text.encode("utf-8")) if not text.isascii() else len(text)
