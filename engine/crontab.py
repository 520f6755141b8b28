"""The cron table: the next tick of every function with cron triggers, and the ticks that are due.

It lives in the coordinator, beside the flow gate, and is driven the same way: ``next_due`` arms
the timer, and when a tick is due the coordinator sends its ``inngest/scheduled.timer`` event
with a ``cron.ticked`` entry in ``cron/<function>``, in one commit. At start the table is
rebuilt from the ``crons`` projection: where each function's schedule resumes (its latest
scheduled time fired, or ``cron.armed``: when the engine first started with that schedule; a
changed schedule is armed afresh, a removed one ``cron.disarmed``). The ticks that passed while
the engine was down follow the trigger's ``missed`` policy. While the engine runs, every tick
fires, however late its timer comes: a late tick was not missed.

A tick's event id is ``cron:<function>:<scheduled time>``: the 24-hour deduplication of event ids
makes sure a tick starts one run even if it were planned twice. Several cron triggers of one
function that fire at the same instant make one tick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from steplog.engine.functions import FunctionDef
from steplog.engine.triggers import CompiledCron
from steplog.eventstore import format_time, parse_time

CRON_EVENT = "inngest/scheduled.timer"
CRON_TICKED = "cron.ticked"
CRON_ARMED = "cron.armed"
CRON_DISARMED = "cron.disarmed"
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
    """Each cron function's ticks to come. Single-threaded: the coordinator's.

    Per function: ``pending``, ticks generated and not fired yet (a jitter longer than the
    interval lets a later tick fire before an earlier one), and ``upcoming``, the first tick not
    generated yet. Ticks are generated while they could be the next to fire: a tick fires no
    earlier than it is scheduled, so once ``upcoming`` is scheduled after the earliest fire time
    known, no later tick can come first.
    """

    def __init__(self) -> None:
        self._crons: dict[str, tuple[CompiledCron, ...]] = {}
        self._pending: dict[str, dict[datetime, Tick]] = {}
        self._upcoming: dict[str, Tick] = {}
        self._latest: dict[str, datetime] = {}

    def load(
        self, functions: Iterable[FunctionDef], rows: Iterable[dict[str, Any]], now: datetime,
        recorded: Callable[[Tick], bool],
    ) -> list[str]:
        """Plan every cron function's ticks from its latest recorded one (the ``crons`` rows, at
        start); ``recorded`` tells whether a tick's event is in the log. Returns the functions
        whose schedule begins now: new ones, and those whose cron triggers changed (their old
        schedule's record says nothing about the new one). The caller records that (``armed``)."""
        self._crons = {fn.id: fn.crons for fn in functions if fn.crons}
        self._pending, self._upcoming, self._latest = {}, {}, {}
        latest = {
            row["function_id"]: parse_time(row["scheduled_at"]) for row in rows
            if row["function_id"] in self._crons and row["schedule"] == schedule_of(self._crons[row["function_id"]])
        }
        unarmed = []
        for function_id, crons in self._crons.items():
            last = latest.get(function_id)
            pending: list[Tick]
            if last is None:
                unarmed.append(function_id)
                pending, upcoming = [], self._tick_after(function_id, crons, now)
            else:
                pending, upcoming = self._after_restart(function_id, crons, last, now, recorded)
            self._latest[function_id] = last or now
            self._pending[function_id] = {tick.scheduled_at: tick for tick in pending}
            self._upcoming[function_id] = upcoming
        return unarmed

    def armed(self, function_id: str, now: datetime) -> dict[str, object]:
        """The ``cron.armed`` entry's data: the schedule of a function begins now."""
        return {"function_id": function_id, "scheduled_at": format_time(now), "fire_at": None, "event_id": None,
                "schedule": schedule_of(self._crons[function_id])}

    def next_due(self) -> datetime | None:
        for function_id in self._crons:
            self._generate_while_earliest(function_id)
        return min((self._earliest(function_id) for function_id in self._crons), default=None)

    def due(self, now: datetime) -> list[Tick]:
        """The ticks whose fire time has come, earliest first (up to TICKS_PER_FIRE per function).
        They stay planned until ``fired`` says they were committed."""
        ready: list[Tick] = []
        for function_id, crons in self._crons.items():
            pending = self._pending[function_id]
            while self._upcoming[function_id].scheduled_at <= now and len(pending) < TICKS_PER_FIRE:
                self._generate(function_id, crons)
            mine = sorted((t for t in pending.values() if t.fire_at <= now), key=lambda t: (t.fire_at, t.scheduled_at))
            ready.extend(mine[:TICKS_PER_FIRE])
        return ready

    def fired(self, ticks: Sequence[Tick]) -> None:
        """Forget ticks that were committed."""
        for tick in ticks:
            self._pending.get(tick.function_id, {}).pop(tick.scheduled_at, None)

    def record(self, tick: Tick) -> dict[str, object]:
        """The ``cron.ticked`` entry's data: the latest scheduled time fired so far, which is where
        the schedule resumes at start (a jittered tick may fire after a later one)."""
        latest = max(self._latest.get(tick.function_id, tick.scheduled_at), tick.scheduled_at)
        self._latest[tick.function_id] = latest
        return {**tick.record(), "scheduled_at": format_time(latest), "tick": format_time(tick.scheduled_at),
                "schedule": schedule_of(self._crons[tick.function_id])}

    def _generate(self, function_id: str, crons: tuple[CompiledCron, ...]) -> None:
        tick = self._upcoming[function_id]
        self._pending[function_id][tick.scheduled_at] = tick
        self._upcoming[function_id] = self._tick_after(function_id, crons, tick.scheduled_at)

    def _generate_while_earliest(self, function_id: str) -> None:
        while self._upcoming[function_id].scheduled_at < self._earliest(function_id):
            self._generate(function_id, self._crons[function_id])

    def _earliest(self, function_id: str) -> datetime:
        return min([t.fire_at for t in self._pending[function_id].values()] + [self._upcoming[function_id].fire_at])

    def _after_restart(
        self, function_id: str, crons: tuple[CompiledCron, ...], last: datetime, now: datetime,
        recorded: Callable[[Tick], bool],
    ) -> tuple[list[Tick], Tick]:
        """The pending ticks and the next one at start. Ticks of the last jitter window before
        ``last`` that never fired are pending again; a tick whose fire time is still ahead was not
        missed; the ticks whose fire time passed since ``last`` follow the ``missed`` policy."""
        window = max(cron.jitter for cron in crons)
        in_flight = [t for t in self._ticks_between(function_id, crons, last - window, last) if not recorded(t)]
        first = self._tick_after(function_id, crons, last)
        if first.fire_at > now:
            return in_flight, first  # nothing was missed
        policy = crons[0].trigger.missed if len(crons) == 1 else _strictest(crons)
        if policy == "all":
            return in_flight, first
        if policy == "skip":
            still_ahead = self._ticks_between(function_id, crons, max(last, now - window), now)
            return in_flight + [t for t in still_ahead if t.fire_at > now], self._tick_after(function_id, crons, now)
        latest = self._tick_at_or_before(function_id, crons, now)
        while latest.fire_at > now:  # its jitter is still running: the one before it was missed
            latest = self._tick_at_or_before(function_id, crons, latest.scheduled_at - timedelta(microseconds=1))
        return in_flight + [attrs.evolve(latest, fire_at=now)], self._tick_after(function_id, crons, latest.scheduled_at)

    def _ticks_between(
        self, function_id: str, crons: tuple[CompiledCron, ...], start: datetime, end: datetime
    ) -> list[Tick]:
        """The ticks scheduled after ``start`` and at or before ``end``."""
        ticks = []
        tick = self._tick_after(function_id, crons, start)
        while tick.scheduled_at <= end:
            ticks.append(tick)
            tick = self._tick_after(function_id, crons, tick.scheduled_at)
        return ticks

    def _tick_at_or_before(self, function_id: str, crons: tuple[CompiledCron, ...], moment: datetime) -> Tick:
        scheduled = max(cron.schedule.latest_at_or_before(moment) for cron in crons)
        return self._tick_at(function_id, crons, scheduled)

    def _tick_after(self, function_id: str, crons: tuple[CompiledCron, ...], moment: datetime) -> Tick:
        scheduled = min(cron.schedule.next_after(moment) for cron in crons)
        return self._tick_at(function_id, crons, scheduled)

    def _tick_at(self, function_id: str, crons: tuple[CompiledCron, ...], scheduled: datetime) -> Tick:
        firing = [cron for cron in crons if cron.schedule.latest_at_or_before(scheduled) == scheduled]
        delay = min(_jitter(function_id, scheduled, cron.jitter) for cron in firing)
        return Tick(function_id, scheduled, scheduled + delay, tuple(cron.trigger.cron for cron in firing))


def schedule_of(crons: tuple[CompiledCron, ...]) -> str:
    """A function's cron triggers as one text: a record made under other triggers does not apply."""
    return "\n".join(sorted(cron.trigger.cron for cron in crons))


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
