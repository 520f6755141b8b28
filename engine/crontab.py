"""The cron table: the next tick of every function with cron triggers, and the ticks that are due.

It lives in the coordinator, beside the flow gate, and is driven the same way: ``next_due`` arms
the timer, and when a tick is due the coordinator sends its ``inngest/scheduled.timer`` event
with a ``cron.ticked`` entry in ``cron/<function>``, in one append. At start the table is
rebuilt from the ``crons`` projection (each function's latest tick); the ticks that passed while
the engine was down are handled by the trigger's ``missed`` policy. While the engine runs, every
tick fires, however late its timer comes: a late tick was not missed.

A tick's event id is ``cron:<function>:<scheduled time>``: the 24-hour deduplication of event ids
makes sure a tick starts one run even if it were planned twice. Several cron triggers of one
function that fire at the same instant make one tick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import attrs
from steplog.engine.functions import FunctionDef
from steplog.engine.triggers import CompiledCron
from steplog.eventstore import format_time

CRON_EVENT = "inngest/scheduled.timer"
CRON_TICKED = "cron.ticked"
TICKS_PER_FIRE = 1000
"""At most this many ticks of one function fire in one commit; the rest fire right after."""


def cron_stream(function_id: str) -> str:
    return f"cron/{function_id}"


@attrs.frozen
class Tick:
    """One scheduled instant of a function: when it was scheduled, when it fires (with jitter)."""

    function_id: str
    scheduled_at: datetime
    fire_at: datetime
    crons: tuple[str, ...]
    """The cron strings that fire at this instant (one run for all)."""

    @property
    def event_id(self) -> str:
        return f"cron:{self.function_id}:{format_time(self.scheduled_at)}"

    def event(self) -> dict[str, object]:
        """The ``inngest/scheduled.timer`` event this tick sends, as Inngest shapes it."""
        return {
            "name": CRON_EVENT,
            "id": self.event_id,
            "ts": int(self.scheduled_at.timestamp() * 1000),
            "data": {
                "cron": self.crons[0],
                "scheduledAt": format_time(self.scheduled_at),
                "fireAt": format_time(self.fire_at),
            },
        }

    def record(self) -> dict[str, object]:
        """The ``cron.ticked`` entry's data."""
        return {"function_id": self.function_id, "scheduled_at": format_time(self.scheduled_at),
                "fire_at": format_time(self.fire_at), "event_id": self.event_id}


def cron_function(event: dict[str, object]) -> str | None:
    """The function a tick's event starts (its id names it), or None for any other event."""
    event_id = event.get("id")
    if event.get("name") != CRON_EVENT or not isinstance(event_id, str) or not event_id.startswith("cron:"):
        return None
    return event_id.split(":", 2)[1]


class CronTable:
    """Each cron function's next tick. Single-threaded: the coordinator's."""

    def __init__(self) -> None:
        self._crons: dict[str, tuple[CompiledCron, ...]] = {}
        self._next: dict[str, Tick] = {}

    def load(self, functions: Iterable[FunctionDef], latest: dict[str, datetime], now: datetime) -> None:
        """Plan every cron function's next tick from its latest recorded one (at start)."""
        self._crons = {fn.id: fn.crons for fn in functions if fn.crons}
        self._next = {}
        for function_id, crons in self._crons.items():
            last = latest.get(function_id)
            self._next[function_id] = self._after_restart(function_id, crons, last, now)

    def next_due(self) -> datetime | None:
        return min((tick.fire_at for tick in self._next.values()), default=None)

    def due(self, now: datetime) -> list[Tick]:
        """The ticks whose time has come, oldest first per function (up to TICKS_PER_FIRE each).
        Nothing changes until ``fired`` says they were committed."""
        ticks: list[Tick] = []
        for function_id, tick in self._next.items():
            for _ in range(TICKS_PER_FIRE):
                if tick.fire_at > now:
                    break
                ticks.append(tick)
                tick = self._tick_after(function_id, self._crons[function_id], tick.scheduled_at)
        return ticks

    def fired(self, ticks: Sequence[Tick]) -> None:
        """Move past ticks that were committed."""
        for tick in ticks:
            if tick.function_id in self._next and self._next[tick.function_id].scheduled_at <= tick.scheduled_at:
                self._next[tick.function_id] = self._tick_after(
                    tick.function_id, self._crons[tick.function_id], tick.scheduled_at
                )

    def _after_restart(
        self, function_id: str, crons: tuple[CompiledCron, ...], last: datetime | None, now: datetime
    ) -> Tick:
        upcoming = self._tick_after(function_id, crons, now)
        if last is None:
            return upcoming
        missed = self._tick_after(function_id, crons, last)
        if missed.scheduled_at > now:
            return missed  # nothing was missed (maybe a jittered tick still to come)
        policy = crons[0].trigger.missed if len(crons) == 1 else _strictest(crons)
        if policy == "all":
            return missed
        if policy == "skip":
            return upcoming
        latest = max(cron.schedule.latest_at_or_before(now) for cron in crons)
        return attrs.evolve(self._tick_at(function_id, crons, latest), fire_at=now)

    def _tick_after(self, function_id: str, crons: tuple[CompiledCron, ...], moment: datetime) -> Tick:
        scheduled = min(cron.schedule.next_after(moment) for cron in crons)
        return self._tick_at(function_id, crons, scheduled)

    def _tick_at(self, function_id: str, crons: tuple[CompiledCron, ...], scheduled: datetime) -> Tick:
        firing = [
            cron for cron in crons
            if cron.schedule.latest_at_or_before(scheduled) == scheduled
        ]
        delay = min(_jitter(function_id, scheduled, cron.jitter) for cron in firing)
        return Tick(function_id, scheduled, scheduled + delay, tuple(cron.trigger.cron for cron in firing))


def _strictest(crons: tuple[CompiledCron, ...]) -> str:
    """Triggers of one function that disagree: "all" over "latest" over "skip"."""
    policies = {cron.trigger.missed for cron in crons}
    return next(policy for policy in ("all", "latest", "skip") if policy in policies)


def _jitter(function_id: str, scheduled: datetime, jitter: timedelta) -> timedelta:
    """A fixed pseudo-random delay in [0, jitter] for this function and tick."""
    if not jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{function_id}|{scheduled.astimezone(UTC).isoformat()}".encode()).digest()
    millis = int(jitter.total_seconds() * 1000)
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % (millis + 1))
