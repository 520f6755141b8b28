"""Size and count limits, with Inngest's defaults; all configurable per engine."""

from __future__ import annotations

import attrs

KIB = 1024
MIB = 1024 * KIB


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"limit {attribute.name} must be a positive integer, got {value!r}")


@attrs.frozen
class Limits:
    """What a send, a step and a run may hold."""

    event_bytes: int = attrs.field(default=256 * KIB, validator=_positive)
    """Largest event, as compact JSON."""
    events_per_send: int = attrs.field(default=5000, validator=_positive)
    step_output_bytes: int = attrs.field(default=4 * MIB, validator=_positive)
    """Largest step result or function output, as compact JSON."""
    steps_per_run: int = attrs.field(default=1000, validator=_positive)


def for_engine_events(limits: Limits) -> Limits:
    """The limits for events the engine sends itself (a run's end carries its output and trigger):
    room for both, however large the user's limits allow them to be."""
    room = 2 * limits.step_output_bytes + 4 * limits.event_bytes
    return attrs.evolve(limits, event_bytes=max(limits.event_bytes, room))
