"""Cron schedules as instants (engine/cron.py): exact ticks across daylight-saving changes, leap days,
weekly schedules and macros; properties over zones, expressions and start instants; and the errors
a bad cron string or a bad TriggerCron gets, from parse_cron and through create_function.

The DST rules under test are the module's: a wall time that does not exist fires counted with
the offset before the change (a tick that lands on an instant already fired fires once); a wall
time that happens twice fires once, at its first occurrence, unless the hour field is ``*``.

The properties check the schedule against a reference written here from those rules alone
(``reference_ticks``): it enumerates the matching wall times day by day from the fields croniter
parses, and maps each one to its instants.
"""

from __future__ import annotations

import functools
import itertools
import os
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import example, given, settings
from hypothesis import strategies as st
from steplog.engine.cron import MAX_CRON_LENGTH, CronError, CronSchedule, parse_cron

import steplog

TICK = timedelta(microseconds=1)
PARIS = "TZ=Europe/Paris "
NEW_YORK = "TZ=America/New_York "
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
"""UTC, two zones with one-hour DST, one with a 30-minute DST, one with a half-hour offset and no DST."""
EXPRESSIONS = [
    "0 * * * *",
    "*/15 * * * *",
    "*/20 * * * *",
    "30 2 * * *",
    "30 1 * * *",
    "45 1 * * *",
    "0 */2 * * *",
    "15 1,2,3 * * *",
    "*/5 2 * * *",
    "0 0 * * *",
    "0 12 * * 5",
    "45 23 * * 0",
    "0 2 * * 1-5",
    "0 0 1 * *",
    "0 0 29 2 *",
    "0 9 1,15 * 1",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
]
"""Common expressions; none uses ``L`` or ``#`` (the reference does not read them). ``@hourly``
is left out of the random properties and checked on its own (see test_macros_equal_their_expansion)."""
MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
EXAMPLES = 300 if _PROFILE == "default" else settings().max_examples
"""Per property; the "ci" and "long" profiles set their own."""
EARLIEST = datetime(2024, 1, 1, tzinfo=UTC)
LATEST = datetime(2030, 12, 31, tzinfo=UTC)


def utc(text: str) -> datetime:
    """An ISO 8601 instant without offset, read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks_from(schedule: CronSchedule, moment: datetime, count: int) -> list[datetime]:
    """The first ``count`` ticks after ``moment``, by repeated next_after."""
    ticks: list[datetime] = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        ticks.append(moment)
    return ticks


def with_zone(zone: str, expression: str) -> str:
    return expression if zone == "UTC" else f"TZ={zone} {expression}"


# -- the reference -----------------------------------------------------------------------------


def _field(values: list[object]) -> set[int] | None:
    """A croniter-expanded field as a set of ints; None for ``*``."""
    return None if values == ["*"] else {int(v) for v in values}  # type: ignore[call-overload]


def _day_matches(day: date, days: set[int] | None, months: set[int] | None, weekdays: set[int] | None) -> bool:
    if months is not None and day.month not in months:
        return False
    weekday = day.isoweekday() % 7  # cron: 0 is Sunday
    if days is not None and weekdays is not None:  # both restricted: either one (Vixie cron)
        return day.day in days or weekday in weekdays
    return (days is None or day.day in days) and (weekdays is None or weekday in weekdays)


def _instants_of_wall(wall: datetime, zone: tzinfo, every_hour: bool) -> list[datetime]:
    """The instants one matching wall time fires at, by the module's DST rules."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    exists = first.astimezone(zone).replace(tzinfo=None) == wall
    if not exists:  # skipped: counted with the offset in force before the change (3 h before: gaps are short)
        offset_before = zone.utcoffset(wall - timedelta(hours=3))
        assert offset_before is not None
        return [(wall - offset_before).replace(tzinfo=UTC)]
    if first != second:  # happens twice
        return [first, second] if every_hour else [first]
    return [first]


def reference_ticks(expression: str, zone: tzinfo, after: datetime, count: int) -> list[datetime]:
    """The first ``count`` instants after ``after`` at which ``expression`` fires in ``zone``."""
    expanded = MACROS.get(expression, expression)
    minutes, hours, days, months, weekdays = (_field(values) for values in croniter(expanded).expanded)
    every_hour = expanded.split()[1] == "*"
    day = (after - timedelta(days=1)).astimezone(zone).date()
    found: set[datetime] = set()
    last_day_needed: date | None = None
    while last_day_needed is None or day <= last_day_needed:
        if _day_matches(day, days, months, weekdays):
            for hour in sorted(hours) if hours is not None else range(24):
                for minute in sorted(minutes) if minutes is not None else range(60):
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    found.update(i for i in _instants_of_wall(wall, zone, every_hour) if i > after)
        if last_day_needed is None and len(found) >= count:
            last_day_needed = day + timedelta(days=1)  # a later wall maps at most hours earlier
        day += timedelta(days=1)
    return sorted(found)[:count]


@functools.cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """The instants (to the minute) at which the zone's UTC offset changes, 2024 to 2030."""
    if zone_name == "UTC":
        return ()
    zone = ZoneInfo(zone_name)
    found = []
    moment = EARLIEST
    while moment < LATEST:
        later = moment + timedelta(hours=6)
        if moment.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset():
            low, high = moment, later
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high.replace(second=0, microsecond=0))
        moment = later
    return tuple(found)


@st.composite
def instants_for(draw: st.DrawFn, zone_name: str) -> datetime:
    """An instant in 2024..2030; half the time within six hours of one of the zone's DST changes."""
    changes = transitions(zone_name)
    near_a_change: bool = draw(st.booleans())
    if changes and near_a_change:
        change = draw(st.sampled_from(changes))
        offset = draw(st.integers(min_value=-6 * 3600 * 10**6, max_value=6 * 3600 * 10**6))
        return change + timedelta(microseconds=offset)
    moment = draw(st.datetimes(min_value=EARLIEST.replace(tzinfo=None), max_value=LATEST.replace(tzinfo=None)))
    if draw(st.booleans()):
        moment = moment.replace(second=0, microsecond=0)  # on a minute: often exactly on a tick
    return moment.replace(tzinfo=UTC)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[str, str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    return zone, draw(st.sampled_from(EXPRESSIONS)), draw(instants_for(zone))


def test_reference_sees_transitions() -> None:
    """The strategy's DST changes are the real ones (so "near a change" means something)."""
    assert utc("2026-03-29T01:00") in transitions("Europe/Paris")
    assert utc("2026-10-25T01:00") in transitions("Europe/Paris")
    assert utc("2026-03-08T07:00") in transitions("America/New_York")
    assert utc("2026-11-01T06:00") in transitions("America/New_York")
    assert utc("2026-04-04T15:00") in transitions("Australia/Lord_Howe")  # 02:00 LHDT -> 01:30 LHST
    assert utc("2026-10-03T15:30") in transitions("Australia/Lord_Howe")  # 02:00 LHST -> 02:30 LHDT
    assert transitions("Asia/Kolkata") == ()
    assert len(transitions("Europe/Paris")) == 14


# -- daylight saving: exact instants -------------------------------------------------------------

DST_CASES = [
    # Paris, spring forward 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST)
    pytest.param(PARIS + "30 2 * * *", "2026-03-28T00:00",
                 ["2026-03-28T01:30", "2026-03-29T01:30", "2026-03-30T00:30"], id="paris-spring-0230-in-gap"),
    pytest.param(PARIS + "0 * * * *", "2026-03-28T22:30",
                 ["2026-03-28T23:00", "2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00",
                  "2026-03-29T03:00"], id="paris-spring-hourly"),
    pytest.param(PARIS + "*/15 * * * *", "2026-03-29T00:40",
                 ["2026-03-29T00:45", "2026-03-29T01:00", "2026-03-29T01:15", "2026-03-29T01:30",
                  "2026-03-29T01:45", "2026-03-29T02:00"], id="paris-spring-every-15"),
    pytest.param(PARIS + "0 */2 * * *", "2026-03-28T20:30",
                 ["2026-03-28T21:00", "2026-03-28T23:00", "2026-03-29T01:00", "2026-03-29T02:00",
                  "2026-03-29T04:00"], id="paris-spring-every-2h"),
    # Paris, fall back 2026-10-25 at 01:00 UTC (03:00 CEST -> 02:00 CET)
    pytest.param(PARIS + "30 2 * * *", "2026-10-23T12:00",
                 ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"], id="paris-fall-0230-twice"),
    pytest.param(PARIS + "0 * * * *", "2026-10-24T22:30",
                 ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00",
                  "2026-10-25T03:00"], id="paris-fall-hourly"),
    pytest.param(PARIS + "*/15 * * * *", "2026-10-25T00:40",
                 ["2026-10-25T00:45", "2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30",
                  "2026-10-25T01:45", "2026-10-25T02:00"], id="paris-fall-every-15"),
    pytest.param(PARIS + "0 */2 * * *", "2026-10-24T20:30",
                 ["2026-10-24T22:00", "2026-10-25T00:00", "2026-10-25T03:00", "2026-10-25T05:00"],
                 id="paris-fall-every-2h"),
    # New York, spring forward 2026-03-08 at 07:00 UTC (02:00 EST -> 03:00 EDT)
    pytest.param(NEW_YORK + "30 2 * * *", "2026-03-07T00:00",
                 ["2026-03-07T07:30", "2026-03-08T07:30", "2026-03-09T06:30"], id="ny-spring-0230-in-gap"),
    pytest.param(NEW_YORK + "0 * * * *", "2026-03-08T05:30",
                 ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"], id="ny-spring-hourly"),
    pytest.param(NEW_YORK + "*/15 * * * *", "2026-03-08T06:40",
                 ["2026-03-08T06:45", "2026-03-08T07:00", "2026-03-08T07:15", "2026-03-08T07:30",
                  "2026-03-08T07:45", "2026-03-08T08:00"], id="ny-spring-every-15"),
    pytest.param(NEW_YORK + "0 */2 * * *", "2026-03-08T04:30",
                 ["2026-03-08T05:00", "2026-03-08T07:00", "2026-03-08T08:00", "2026-03-08T10:00"],
                 id="ny-spring-every-2h"),
    # New York, fall back 2026-11-01 at 06:00 UTC (02:00 EDT -> 01:00 EST)
    pytest.param(NEW_YORK + "30 1 * * *", "2026-10-30T12:00",
                 ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"], id="ny-fall-0130-twice"),
    pytest.param(NEW_YORK + "30 2 * * *", "2026-10-30T12:00",
                 ["2026-10-31T06:30", "2026-11-01T07:30", "2026-11-02T07:30"], id="ny-fall-0230-once"),
    pytest.param(NEW_YORK + "0 * * * *", "2026-11-01T03:30",
                 ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"],
                 id="ny-fall-hourly"),
    pytest.param(NEW_YORK + "*/15 * * * *", "2026-11-01T05:40",
                 ["2026-11-01T05:45", "2026-11-01T06:00", "2026-11-01T06:15", "2026-11-01T06:30",
                  "2026-11-01T06:45", "2026-11-01T07:00"], id="ny-fall-every-15"),
    pytest.param(NEW_YORK + "0 */2 * * *", "2026-11-01T03:30",
                 ["2026-11-01T04:00", "2026-11-01T07:00", "2026-11-01T09:00", "2026-11-01T11:00"],
                 id="ny-fall-every-2h"),  # 02:00 comes once: the repeated hour is 01:00-01:59
]


@pytest.mark.parametrize(("cron", "start", "expected"), DST_CASES)
def test_ticks_across_daylight_saving_changes(cron: str, start: str, expected: list[str]) -> None:
    schedule = parse_cron(cron)
    assert ticks_from(schedule, utc(start), len(expected)) == [utc(text) for text in expected]


@pytest.mark.parametrize(("cron", "start", "expected"), DST_CASES)
def test_latest_at_or_before_walks_the_same_ticks_backwards(cron: str, start: str, expected: list[str]) -> None:
    schedule = parse_cron(cron)
    instants = [utc(text) for text in expected]
    backwards = [schedule.latest_at_or_before(instant - TICK) for instant in instants[1:]]
    assert backwards == instants[:-1]
    assert [schedule.latest_at_or_before(instant) for instant in instants] == instants


def test_a_skipped_wall_time_fires_at_the_instant_it_names_with_the_offset_before() -> None:
    schedule = parse_cron(PARIS + "30 2 * * *")
    tick = schedule.next_after(utc("2026-03-28T12:00"))
    assert tick == datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Paris")).astimezone(UTC)  # fold 0: +01:00
    assert tick.astimezone(ZoneInfo("Europe/Paris")).isoformat() == "2026-03-29T03:30:00+02:00"


def test_lord_howe_half_hour_changes() -> None:
    """Lord Howe moves by 30 minutes: 02:00 +10:30 -> 02:30 +11:00 (2026-10-04), back 02:00 +11:00 ->
    01:30 +10:30 (2026-04-05)."""
    every_15 = parse_cron("TZ=Australia/Lord_Howe */15 * * * *")
    assert ticks_from(every_15, utc("2026-10-03T15:10"), 4) == [
        utc("2026-10-03T15:15"), utc("2026-10-03T15:30"), utc("2026-10-03T15:45"), utc("2026-10-03T16:00"),
    ]
    at_0215 = parse_cron("TZ=Australia/Lord_Howe 15 2 * * *")  # does not exist on 2026-10-04
    assert at_0215.next_after(utc("2026-10-03T12:00")) == utc("2026-10-03T15:45")  # 02:15 +10:30
    at_0145 = parse_cron("TZ=Australia/Lord_Howe 45 1 * * *")  # happens twice on 2026-04-05
    assert ticks_from(at_0145, utc("2026-04-03T12:00"), 3) == [
        utc("2026-04-03T14:45"), utc("2026-04-04T14:45"), utc("2026-04-05T15:15"),
    ]
    hourly = parse_cron("TZ=Australia/Lord_Howe 0 * * * *")  # 01:00 +11:00, then 02:00 +10:30: 90 minutes
    assert ticks_from(hourly, utc("2026-04-04T13:30"), 3) == [
        utc("2026-04-04T14:00"), utc("2026-04-04T15:30"), utc("2026-04-04T16:30"),
    ]


# -- calendar ------------------------------------------------------------------------------------


def test_leap_day_fires_only_on_leap_years() -> None:
    schedule = parse_cron("0 0 29 2 *")
    assert ticks_from(schedule, utc("2026-01-01T00:00"), 3) == [
        utc("2028-02-29T00:00"), utc("2032-02-29T00:00"), utc("2036-02-29T00:00"),
    ]
    assert schedule.latest_at_or_before(utc("2031-06-01T00:00")) == utc("2028-02-29T00:00")


def test_leap_day_in_a_zone() -> None:
    schedule = parse_cron("TZ=America/New_York 0 0 29 2 *")
    assert ticks_from(schedule, utc("2026-01-01T00:00"), 2) == [utc("2028-02-29T05:00"), utc("2032-02-29T05:00")]


def test_weekly_on_fridays_at_noon() -> None:
    schedule = parse_cron("0 12 * * 5")  # 2026-01-01 is a Thursday
    assert ticks_from(schedule, utc("2026-01-01T00:00"), 3) == [
        utc("2026-01-02T12:00"), utc("2026-01-09T12:00"), utc("2026-01-16T12:00"),
    ]
    assert schedule.next_after(utc("2026-01-02T12:00")) == utc("2026-01-09T12:00")
    assert schedule.next_after(utc("2026-01-02T12:00") - TICK) == utc("2026-01-02T12:00")


def test_weekly_in_paris_follows_summer_time() -> None:
    schedule = parse_cron(PARIS + "0 12 * * 5")
    assert schedule.next_after(utc("2026-01-01T00:00")) == utc("2026-01-02T11:00")
    assert schedule.next_after(utc("2026-07-01T00:00")) == utc("2026-07-03T10:00")
    assert ticks_from(schedule, utc("2026-03-20T12:00"), 2) == [utc("2026-03-27T11:00"), utc("2026-04-03T10:00")]


def test_cron_tz_prefix_and_half_hour_zone() -> None:
    schedule = parse_cron("CRON_TZ=Asia/Kolkata 0 9 * * *")
    assert schedule.next_after(utc("2026-01-01T00:00")) == utc("2026-01-01T03:30")


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", "2026-01-01T13:00"),
        ("@daily", "2026-01-02T00:00"),
        ("@midnight", "2026-01-02T00:00"),
        ("@weekly", "2026-01-04T00:00"),  # the next Sunday
        ("@monthly", "2026-02-01T00:00"),
        ("@yearly", "2027-01-01T00:00"),
        ("@annually", "2027-01-01T00:00"),
    ],
)
def test_macros(macro: str, expected: str) -> None:
    assert parse_cron(macro).next_after(utc("2026-01-01T12:34")) == utc(expected)


def test_hourly_macro_fires_through_a_repeated_hour() -> None:
    """``@hourly`` is ``0 * * * *``: on 2026-10-25 in Paris it fires at both 02:00 (00:00 and 01:00 UTC)."""
    schedule = parse_cron(PARIS + "@hourly")
    assert ticks_from(schedule, utc("2026-10-24T22:30"), 5) == [
        utc("2026-10-24T23:00"), utc("2026-10-25T00:00"), utc("2026-10-25T01:00"), utc("2026-10-25T02:00"),
        utc("2026-10-25T03:00"),
    ]


def test_macro_in_a_zone() -> None:
    assert parse_cron(PARIS + "@daily").next_after(utc("2026-07-01T12:00")) == utc("2026-07-01T22:00")


@pytest.mark.parametrize("macro", sorted(MACROS))
@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_macros_equal_their_expansion_across_dst_changes(macro: str, zone: str) -> None:
    """A macro is its 5-field expression: ``@hourly`` is ``0 * * * *`` (whose hour field is ``*``, so
    it fires through both occurrences of a repeated hour)."""
    as_macro, expanded = parse_cron(f"TZ={zone} {macro}"), parse_cron(f"TZ={zone} {MACROS[macro]}")
    for change in transitions(zone)[:6]:
        start = change - timedelta(hours=5)
        assert ticks_from(as_macro, start, 8) == ticks_from(expanded, start, 8), f"from {start}"


def test_latest_at_or_before_at_and_just_after_a_tick() -> None:
    schedule = parse_cron("*/15 * * * *")
    tick = utc("2026-05-05T10:15")
    assert schedule.latest_at_or_before(tick) == tick
    assert schedule.latest_at_or_before(tick + TICK) == tick
    assert schedule.latest_at_or_before(tick - TICK) == utc("2026-05-05T10:00")
    assert schedule.next_after(tick) == utc("2026-05-05T10:30")
    assert schedule.next_after(tick - TICK) == tick


def test_instants_are_utc_whatever_the_input_offset() -> None:
    schedule = parse_cron(PARIS + "0 9 * * *")
    moment = datetime(2026, 6, 1, 8, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # 02:30 UTC
    tick = schedule.next_after(moment)
    assert tick == utc("2026-06-01T07:00")
    assert tick.utcoffset() == timedelta(0)


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(schedules())
@example(("Europe/Paris", "30 2 * * *", utc("2026-03-29T00:59")))
@example(("Europe/Paris", "*/15 * * * *", utc("2026-10-25T00:50")))
@example(("Australia/Lord_Howe", "*/20 * * * *", utc("2026-04-04T14:10")))
@example(("America/New_York", "15 1,2,3 * * *", utc("2026-11-01T04:00")))
def test_ticks_agree_with_the_reference(case: tuple[str, str, datetime]) -> None:
    zone, expression, start = case
    schedule = parse_cron(with_zone(zone, expression))
    ticks = ticks_from(schedule, start, 6)
    assert ticks == reference_ticks(expression, schedule.zone, start, 6)


@settings(max_examples=EXAMPLES)
@given(schedules())
def test_ticks_increase_and_both_directions_agree(case: tuple[str, str, datetime]) -> None:
    zone, expression, start = case
    schedule = parse_cron(with_zone(zone, expression))
    ticks = ticks_from(schedule, start, 6)
    assert ticks[0] > start
    assert all(earlier < later for earlier, later in itertools.pairwise(ticks)), "ticks must strictly increase"
    assert len(set(ticks)) == len(ticks)
    for earlier, later in itertools.pairwise(ticks):
        assert schedule.latest_at_or_before(later) == later
        assert schedule.latest_at_or_before(later - TICK) == earlier
        assert schedule.next_after(later - TICK) == later
    before = schedule.latest_at_or_before(start)
    assert before <= start
    assert schedule.next_after(before) == ticks[0]


@settings(max_examples=EXAMPLES)
@given(schedules())
def test_each_tick_is_a_matching_wall_time(case: tuple[str, str, datetime]) -> None:
    """A tick's local wall time matches the fields; when it does not, the tick is a skipped wall
    time that matches, counted with the offset before the change."""
    zone, expression, start = case
    schedule = parse_cron(with_zone(zone, expression))
    for tick in ticks_from(schedule, start, 6):
        assert (tick.second, tick.microsecond) == (0, 0)
        local = tick.astimezone(schedule.zone).replace(tzinfo=None)
        if croniter.match(expression, local):
            continue
        offset_before = (tick - timedelta(hours=3)).astimezone(schedule.zone).utcoffset()
        assert offset_before is not None
        wall = tick.replace(tzinfo=None) + offset_before
        assert croniter.match(expression, wall), f"{tick} ({local} local) matches no wall time"
        exists = wall.replace(tzinfo=schedule.zone).astimezone(UTC).astimezone(schedule.zone).replace(tzinfo=None) == wall
        assert not exists, f"{tick}: the wall time {wall} exists, yet the tick is not at it"


@settings(max_examples=EXAMPLES)
@given(st.sampled_from(EXPRESSIONS), instants_for("UTC"))
def test_utc_ticks_are_croniters(expression: str, start: datetime) -> None:
    schedule = parse_cron(expression)
    walls = croniter(expression, start.replace(tzinfo=None))
    expected = [walls.get_next(datetime).replace(tzinfo=UTC) for _ in range(5)]
    assert ticks_from(schedule, start, 5) == expected


PACES = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60]


@st.composite
def paced(draw: st.DrawFn) -> tuple[str, int, datetime]:
    """A zone, a pace in minutes, and a start at most 20 paces before one of the zone's changes."""
    zone = draw(st.sampled_from(ZONES))
    shift = 30 if zone == "Australia/Lord_Howe" else 60  # the pace survives a change only if it divides it
    minutes = draw(st.sampled_from([n for n in PACES if shift % n == 0]))
    changes = transitions(zone)
    if changes:
        start = draw(st.sampled_from(changes)) - timedelta(minutes=minutes * draw(st.integers(0, 20)))
    else:
        start = draw(instants_for(zone))
    return zone, minutes, start + timedelta(seconds=draw(st.integers(0, 59)))


@settings(max_examples=EXAMPLES // 2)
@given(paced())
@example(("Europe/Paris", 1, utc("2026-03-29T00:50")))
@example(("America/New_York", 60, utc("2026-11-01T03:00")))
@example(("Australia/Lord_Howe", 30, utc("2026-04-04T13:00")))
def test_every_n_minutes_keeps_its_pace_in_real_time(case: tuple[str, int, datetime]) -> None:
    zone, minutes, start = case
    expression = "0 * * * *" if minutes == 60 else f"*/{minutes} * * * *"
    schedule = parse_cron(with_zone(zone, expression))
    ticks = ticks_from(schedule, start, 30)  # across the change
    gaps = {later - earlier for earlier, later in itertools.pairwise(ticks)}
    assert gaps == {timedelta(minutes=minutes)}


# -- bad cron strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (None, "non-empty"),
        (5, "non-empty"),
        ("* * * *", "has 4 fields; it needs 5"),
        ("* * * * * *", "has 6 fields; it needs 5"),
        ("0 12 * * 5 2026", "has 6 fields"),
        ("TZ=Europe/Paris", "has 0 fields"),
        ("TZ=Europe/Paris 0 12", "has 2 fields"),
        ("60 * * * *", "out of range"),
        ("0 24 * * *", "out of range"),
        ("0 0 32 * *", "out of range"),
        ("0 0 0 * *", "out of range"),
        ("0 0 * 13 *", "out of range"),
        ("0 0 * * 8", "out of range"),
        ("a b c d e", "not acceptable"),
        ("*/0 * * * *", "step '0'"),
        ("TZ=Mars/Olympus 0 0 * * *", "'Mars/Olympus' is not an IANA time zone"),
        ("CRON_TZ=Nowhere 0 0 * * *", "'Nowhere' is not an IANA time zone"),
        ("TZ= 0 0 * * *", "'' is not an IANA time zone"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("TZ=Europe/Paris 0 0 31 2 *", "never fires"),
        ("0 " * 128, f"longer than {MAX_CRON_LENGTH} characters"),
        ("@fortnightly", "@fortnightly"),
        ("@reboot", "@reboot"),
    ],
)
def test_bad_cron_strings_are_refused_naming_the_problem(source: object, problem: str) -> None:
    with pytest.raises(CronError) as raised:
        parse_cron(source)
    assert problem in str(raised.value)
    if isinstance(source, str) and source.strip() and len(source) <= MAX_CRON_LENGTH:
        assert repr(source) in str(raised.value), "the message quotes the cron string"


def test_longest_cron_string_is_accepted() -> None:
    source = "0 0 * * *" + " " * (MAX_CRON_LENGTH - 9)
    assert len(source) == MAX_CRON_LENGTH
    assert parse_cron(source).next_after(utc("2026-01-01T12:00")) == utc("2026-01-02T00:00")
    with pytest.raises(CronError, match="longer than 255"):
        parse_cron(source + " ")


def test_cron_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_cron("nope")


# -- TriggerCron through create_function ---------------------------------------------------------


def define(trigger: object, fn_id: str = "nightly") -> steplog.FunctionDef:
    client = steplog.Steplog(db=":memory:")
    return client.create_function(fn_id=fn_id, trigger=trigger)(lambda ctx: None)


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("0 0 30 2 *", "never fires"),
        ("* * * *", "has 4 fields"),
        ("0 25 * * *", "out of range"),
        ("TZ=Nowhere/City 0 0 * * *", "not an IANA time zone"),
        ("", "non-empty"),
        ("x" * 256, "longer than 255"),
        (7, "non-empty"),
    ],
)
def test_bad_cron_through_create_function_names_the_function(cron: object, problem: str) -> None:
    with pytest.raises(steplog.DefinitionError) as raised:
        define(steplog.TriggerCron(cron), fn_id="nightly-report")
    assert "function 'nightly-report'" in str(raised.value)
    assert problem in str(raised.value)


@pytest.mark.parametrize("jitter", ["500ms", 0.5, "6m", timedelta(seconds=301), 300.5, "-1s", "soon", [1]])
def test_jitter_out_of_range_is_refused(jitter: object) -> None:
    with pytest.raises(steplog.DefinitionError) as raised:
        define(steplog.TriggerCron("0 * * * *", jitter=jitter))
    assert "function 'nightly'" in str(raised.value)
    assert "jitter" in str(raised.value)


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [(None, 0), (0, 0), (timedelta(0), 0), ("1s", 1), (1, 1), ("5m", 300), (300, 300), ("2m30s", 150)],
)
def test_jitter_in_range_is_kept(jitter: object, expected: float) -> None:
    function = define(steplog.TriggerCron("0 * * * *", jitter=jitter))
    [cron] = function.crons
    assert cron.jitter == timedelta(seconds=expected)
    assert cron.describe() == {"cron": "0 * * * *", "jitter_s": expected, "missed": "latest"}


@pytest.mark.parametrize("missed", ["often", "LATEST", "none", None, ""])
def test_unknown_missed_policy_is_refused(missed: object) -> None:
    with pytest.raises(steplog.DefinitionError) as raised:
        define(steplog.TriggerCron("0 * * * *", missed=missed))
    assert "function 'nightly'" in str(raised.value)
    assert f"missed={missed!r}" in str(raised.value)
    assert "latest, all, skip" in str(raised.value)


@pytest.mark.parametrize("missed", ["latest", "all", "skip"])
def test_known_missed_policies_are_kept(missed: str) -> None:
    [cron] = define(steplog.TriggerCron("0 * * * *", missed=missed)).crons
    assert cron.trigger.missed == missed


def test_duplicate_cron_strings_in_one_function_are_refused() -> None:
    with pytest.raises(steplog.DefinitionError) as raised:
        define([steplog.TriggerCron("0 * * * *"), steplog.TriggerCron("0 * * * *", missed="all")])
    assert "function 'nightly'" in str(raised.value)
    assert "'0 * * * *' is given twice" in str(raised.value)


def test_cron_and_event_triggers_together() -> None:
    function = define([steplog.TriggerCron("0 * * * *"), steplog.TriggerEvent(event="app/go"),
                       steplog.TriggerCron(PARIS + "0 9 * * *")])
    assert [cron.trigger.cron for cron in function.crons] == ["0 * * * *", PARIS + "0 9 * * *"]
    assert [trigger.trigger.event for trigger in function.triggers] == ["app/go"]
    assert function.describe()["triggers"] == [
        {"event": "app/go", "expression": None},
        {"cron": "0 * * * *", "jitter_s": 0.0, "missed": "latest"},
        {"cron": PARIS + "0 9 * * *", "jitter_s": 0.0, "missed": "latest"},
    ]


def test_cron_trigger_is_the_same_class() -> None:
    assert steplog.CronTrigger is steplog.TriggerCron
    assert steplog.CronTrigger("0 * * * *") == steplog.TriggerCron("0 * * * *")


def test_more_than_ten_triggers_are_refused_cron_or_not() -> None:
    crons = [steplog.TriggerCron(f"{minute} * * * *") for minute in range(11)]
    with pytest.raises(steplog.DefinitionError, match="11 triggers; the limit is 10"):
        define(crons)

