"""Durations as users write them: timedelta, seconds, or strings like "1m30s", "2d", "500ms"."""

from __future__ import annotations

import re
from datetime import timedelta

Duration = timedelta | int | float | str

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Duration, *, what: str = "duration") -> timedelta:
    """Return ``value`` as a timedelta, or raise ValueError naming ``what`` and the problem."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration")
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)):
        result = _seconds(value, value, what)
    elif isinstance(value, str):
        result = _parse_text(value, what)
    else:
        raise ValueError(f"{what}: {value!r} is not a duration (use a timedelta, seconds, or text like '1m30s')")
    if result < timedelta(0):
        raise ValueError(f"{what}: {value!r} is negative")
    return result


def _parse_text(text: str, what: str) -> timedelta:
    compact = text.replace(" ", "").lower()
    position, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"{what}: cannot read {text!r} as a duration (examples: '30s', '1m30s', '2h', '7d', '500ms')")
    return _seconds(seconds, text, what)


def _seconds(seconds: float, value: object, what: str) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # inf, nan, or more than timedelta holds (999,999,999 days)
        raise ValueError(f"{what}: {value!r} is out of range for a duration") from None
