"""Retry policy: how many retries, and how long to wait before each.

The default is Inngest's: 4 retries (5 attempts), backoff 15 s, 30 s, 1 m, 2 m, 5 m, 10 m, 20 m,
40 m, 1 h, 2 h (the last repeats), plus a random jitter of up to 30 s. Unlike Inngest, the
backoff is configurable: a table of your own, a fixed delay, or no jitter.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import attrs
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import NonRetriableError, RetryAfterError

MAX_RETRIES = 20
INNGEST_BACKOFF = tuple(
    timedelta(seconds=s) for s in (15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200)
)
RETRY_AFTER_MIN = timedelta(seconds=1)
RETRY_AFTER_MAX = timedelta(hours=24)


def _to_backoff(value: object) -> tuple[timedelta, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"backoff must be a non-empty list of durations, got {value!r}")
    return tuple(parse_duration(item, what="backoff") for item in value)


def _to_jitter(value: object) -> timedelta:
    return parse_duration(value, what="jitter")  # type: ignore[arg-type]


@attrs.frozen
class RetryPolicy:
    """Retries for each step and for the code outside steps, counted separately."""

    retries: int = 4
    backoff: tuple[timedelta, ...] = attrs.field(default=INNGEST_BACKOFF, converter=_to_backoff)
    """Delay before retry n is backoff[n-1]; the last entry repeats."""
    jitter: timedelta = attrs.field(default=timedelta(seconds=30), converter=_to_jitter)
    """Up to this much random time is added to each delay; zero for none."""

    def __attrs_post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise ValueError(f"retries must be an integer from 0 to {MAX_RETRIES}, got {self.retries!r}")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ValueError(f"retries must be from 0 to {MAX_RETRIES}, got {self.retries}")

    @classmethod
    def fixed(cls, retries: int, delay: Duration, *, jitter: Duration = 0) -> RetryPolicy:
        """The same delay before every retry."""
        return cls(retries=retries, backoff=(delay,), jitter=jitter)

    def retry_at(self, error: BaseException, failures: int, now: datetime, rng: random.Random) -> datetime | None:
        """When to try again after the ``failures``-th failure (1-based), or None to give up."""
        if isinstance(error, NonRetriableError) or failures > self.retries:
            return None
        if isinstance(error, RetryAfterError):
            try:
                return _retry_after(error, now)
            except ValueError:
                pass  # an unreadable retry_after falls back to the backoff table, as a plain error would
        delay = self.backoff[min(failures - 1, len(self.backoff) - 1)]
        if self.jitter > timedelta(0):
            delay += timedelta(seconds=rng.uniform(0, self.jitter.total_seconds()))
        return now + delay


def _retry_after(error: RetryAfterError, now: datetime) -> datetime:
    value = error.retry_after
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("RetryAfterError needs an aware datetime")
        delay = value - now
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        delay = parse_duration(value / 1000, what="retry_after")  # milliseconds, as in Inngest's SDK
    else:
        delay = parse_duration(value, what="retry_after")
    return now + min(max(delay, RETRY_AFTER_MIN), RETRY_AFTER_MAX)
