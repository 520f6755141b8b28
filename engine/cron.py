"""Cron schedules: Inngest's cron strings turned into the instants they fire at. The only module that
imports croniter, so it stays swappable.

A schedule is unix cron with 5 fields (or a macro such as ``@daily``), optionally prefixed by a
time zone: ``TZ=Europe/Paris 0 12 * * 5`` (``CRON_TZ=`` works too); without one it is UTC.

Cron reads wall-clock time in its zone, and daylight-saving changes make some wall times happen
never or twice. steplog follows Vixie cron and cronie:

- A wall time that does not exist (the hour skipped in spring) fires when it would have, counted
  with the offset before the change: ``30 2 * * *`` in Paris fires at 03:30 on that day. A tick
  that lands on an instant already fired (``*/15`` inside the gap) fires once.
- A wall time that happens twice (the hour repeated in autumn) fires once, at its first
  occurrence, unless the hour field is ``*``: an every-N-minutes or hourly schedule fires through
  both occurrences, so it keeps its pace in real time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterError, croniter

MAX_CRON_LENGTH = 255
_ZONE_PREFIXES = ("TZ=", "CRON_TZ=")
_DST_LOOKAROUND = timedelta(hours=3)
"""Wider than any daylight-saving shift: how far a search starts back when one is near."""


MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


class CronError(ValueError):
    """A cron string that cannot be used; the message says what is wrong with it."""


@attrs.frozen
class CronSchedule:
    """A parsed cron string: its fields, its zone, and whether its hour field is ``*``."""

    source: str
    expression: str
    zone: tzinfo
    every_hour: bool

    def next_after(self, moment: datetime) -> datetime:
        """The first instant after ``moment`` (aware) at which the schedule fires, in UTC."""
        return next(self._instants(moment, forward=True))

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last instant at or before ``moment`` at which the schedule fired, in UTC."""
        return next(self._instants(moment + timedelta(microseconds=1), forward=False))

    def _instants(self, moment: datetime, *, forward: bool) -> Iterator[datetime]:
        """Fire instants strictly after (or before) ``moment``, nearest first."""
        moment = moment.astimezone(UTC)
        reach = self._offset_change_near(moment)  # how far a wall time's instant can be out of order
        start = moment - reach if forward else moment + reach
        walls = croniter(self.expression, start.astimezone(self.zone).replace(tzinfo=None))
        found: list[datetime] = []
        while True:
            wall: datetime = walls.get_next(datetime) if forward else walls.get_prev(datetime)
            candidates = self._instants_of(wall)
            found = sorted(
                {*found, *(c for c in candidates if (c > moment if forward else c < moment))}, reverse=not forward
            )
            # a later wall time may map to an earlier instant near a change: only yield what is settled
            settled_before = self._as_utc(wall, fold=0) - (reach if forward else -reach)
            while found and (found[0] <= settled_before if forward else found[0] >= settled_before):
                yield found.pop(0)
            if len(found) > 0 and not self._near_offset_change(found[0]):
                yield found.pop(0)

    def _instants_of(self, wall: datetime) -> list[datetime]:
        first, second = self._as_utc(wall, fold=0), self._as_utc(wall, fold=1)
        if first == second:
            return [first]
        if self._exists(wall):  # the wall time happens twice
            return [first, second] if self.every_hour else [first]
        return [first]  # skipped: counted with the offset before the change

    def _as_utc(self, wall: datetime, fold: int) -> datetime:
        return wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)

    def _exists(self, wall: datetime) -> bool:
        return self._as_utc(wall, fold=0).astimezone(self.zone).replace(tzinfo=None) == wall

    def _near_offset_change(self, moment: datetime) -> bool:
        return bool(self._offset_change_near(moment))

    def _offset_change_near(self, moment: datetime) -> timedelta:
        """The size of the offset change within 3 hours of ``moment`` (zero if none)."""
        if self.zone is UTC:
            return timedelta(0)
        before = (moment - _DST_LOOKAROUND).astimezone(self.zone).utcoffset() or timedelta(0)
        after = (moment + _DST_LOOKAROUND).astimezone(self.zone).utcoffset() or timedelta(0)
        return abs(after - before)


def parse_cron(source: object) -> CronSchedule:
    """Check and parse a cron string; raise CronError naming the problem."""
    if not isinstance(source, str) or not source.strip():
        raise CronError(f"a cron schedule must be a non-empty string, got {source!r}")
    if len(source) > MAX_CRON_LENGTH:
        raise CronError(f"cron {source[:40]!r}... is longer than {MAX_CRON_LENGTH} characters")
    zone, expression = _split_zone(source.strip())
    if expression.startswith("@"):
        if expression.lower() not in MACROS:
            raise CronError(f"cron {source!r}: unknown macro {expression!r}; use one of {', '.join(MACROS)}")
        expression = MACROS[expression.lower()]
    fields = expression.split()
    if len(fields) != 5:
        raise CronError(
            f"cron {source!r} has {len(fields)} fields; it needs 5 (minute hour day-of-month month day-of-week),"
            " optionally after 'TZ=<zone> '"
        )
    _refuse_random_fields(source, fields)
    schedule = CronSchedule(source, expression, zone, fields[1] == "*")
    try:
        croniter(expression, datetime(2000, 1, 1))
        schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))
    except CroniterError as error:
        message = "never fires" if "failed to find" in str(error) else str(error)
        raise CronError(f"cron {source!r}: {message}") from None
    except (KeyError, ValueError) as error:
        raise CronError(f"cron {source!r} is not a valid cron expression: {error}") from None
    return schedule


def _refuse_random_fields(source: str, fields: list[str]) -> None:
    """croniter's ``R`` (random) and ``H`` (hashed) fields pick their value anew on every lookup:
    a schedule must give the same instants every time it is asked."""
    for field in fields:
        for part in field.split(","):
            head = part.split("/")[0].upper()
            if head in ("R", "H") or head.startswith(("R(", "H(")):
                raise CronError(f"cron {source!r}: {part!r} (random or hashed values) is not supported")


def _split_zone(text: str) -> tuple[tzinfo, str]:
    for prefix in _ZONE_PREFIXES:
        if text.startswith(prefix):
            name, _, rest = text[len(prefix):].partition(" ")
            return _zone(name, text), rest.strip()
    return UTC, text


def _zone(name: str, source: str) -> tzinfo:
    if name in ("UTC", "Etc/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"cron {source!r}: {name!r} is not an IANA time zone (like 'Europe/Paris')") from None
