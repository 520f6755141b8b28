"""GCRA (the generic cell rate algorithm), the algorithm Inngest uses for throttle and rate limit.

State is one number per key, the theoretical arrival time (TAT). With emission interval
``T = period / limit`` and tolerance ``burst * T``, a start at time ``t`` is allowed when
``TAT - burst * T <= t``, and moves TAT to ``max(TAT, t) + T``. So ``burst + 1`` starts may happen
at once, and in any half-open window ``[t, t + W)`` at most ``ceil(W / T) + burst`` do: with
``W = period``, ``limit + burst``.

Times are seconds since the epoch, as floats.
"""

from __future__ import annotations

from datetime import timedelta

import attrs


@attrs.frozen
class Gcra:
    emission: float
    """Seconds between starts at the steady rate: period / limit."""
    tolerance: float
    """How far ahead of time a start may be: burst * emission."""

    @classmethod
    def of(cls, limit: int, period: timedelta, burst: int) -> Gcra:
        emission = period.total_seconds() / limit
        return cls(emission, burst * emission)

    def earliest(self, tat: float | None, now: float) -> float:
        """The earliest time a start may happen, given the current TAT."""
        return now if tat is None else max(now, tat - self.tolerance)

    def after(self, tat: float | None, start: float) -> float:
        """The TAT after a start at ``start``."""
        return (start if tat is None else max(tat, start)) + self.emission

    def allows(self, tat: float | None, now: float) -> bool:
        return self.earliest(tat, now) <= now
