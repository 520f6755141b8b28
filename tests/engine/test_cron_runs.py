"""Cron triggers on the threaded client, ``steplog.Steplog``, with a manual clock: a tick starts one
run exactly at its time (never early) with Inngest's ``inngest/scheduled.timer`` event; triggers
sharing a tick start one run; jitter; flow control; a cron function that also has an event trigger;
restarts with each missed-tick policy, at a tick, twice in a minute, after a crash right after a
tick's commit; a DST day in Paris hour by hour; and a state machine against a reference model.

Restarts need the log to outlive the client, so they use SQLite files; the rest runs on both
stores. No test sleeps: time moves by ``advance``, and waiting is ``run_until_idle``.

After every start the tests call ``settle``: ``start()`` does not count the ticks that are due at
once, so ``run_until_idle`` right after it may return before they fire (see
test_ticks_due_at_start_are_awaited_by_run_until_idle, which fails on that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from steplog.actors.router import EventRouter
from steplog.engine.cron import CronSchedule, parse_cron
from steplog.engine.crontab import _jitter as cron_jitter
from steplog.eventstore import format_time

import steplog

CRON_EVENT = "inngest/scheduled.timer"
START = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
TICK = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
WAIT = 10.0  # seconds: an upper bound for waits that finish in milliseconds
Triggers: TypeAlias = steplog.TriggerCron | steplog.TriggerEvent | Sequence[steplog.TriggerCron | steplog.TriggerEvent]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    """A time as the engine writes it in events and rows."""
    return str(format_time(moment))


def at(hhmm: str) -> str:
    """A time on 2026-01-01 (UTC) as the engine writes it."""
    return iso(utc(f"2026-01-01T{hhmm}"))


@pytest.fixture(params=["memory", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return ":memory:" if request.param == "memory" else str(tmp_path / "cron.db")


def define(client: steplog.Steplog, fn_id: str, trigger: Triggers, **options: Any) -> steplog.FunctionDef:
    """A function that returns the event it was started with."""

    @client.create_function(fn_id=fn_id, trigger=trigger, **options)
    def report(ctx: steplog.Context) -> dict[str, Any]:
        return {"name": ctx.event.name, "id": ctx.event.id, "ts": ctx.event.ts, "data": ctx.event.data}

    return report


def settle(client: steplog.Steplog) -> None:
    """Let the ticks due at start fire, and wait for their runs.

    A request through the router fires what is due before it is answered, and counts the runs it
    starts; an unknown run's cancel is such a request that changes nothing.
    """
    with pytest.raises(steplog.RunNotFoundError):
        client.cancel("no-such-run")
    assert client.run_until_idle(timeout=WAIT)


@contextmanager
def session(db: str, now: datetime, functions: Callable[[steplog.Steplog], Any]) -> Iterator[steplog.Steplog]:
    """A client on ``db`` whose clock starts at ``now``, with ``functions`` defined, started and settled."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(now))
    functions(client)
    with client:
        settle(client)
        yield client


def scheduled(client: steplog.Steplog, fn_id: str) -> list[str]:
    """The scheduledAt of each run a tick started, in the order the tick events were recorded."""
    ticks = reversed(client.list_events(name=CRON_EVENT, limit=None))
    order = {row["internal_id"]: n for n, row in enumerate(ticks)}
    runs = [row for row in client.list_runs(function_id=fn_id, limit=None) if row["event_id"] in order]
    return [tick_of(client, row) for row in sorted(runs, key=lambda row: order[row["event_id"]])]


def tick_of(client: steplog.Steplog, run: dict[str, Any]) -> str:
    """The scheduledAt of the tick that started a run."""
    [row] = client.store.query("events", where={"internal_id": run["event_id"]})
    return str(json.loads(row["data"])["scheduledAt"])


def consistent(client: steplog.Steplog) -> None:
    assert client.rebuild_projections(apply=False) == []


def advance_to(client: steplog.Steplog, moment: datetime) -> None:
    client.advance(moment - client.clock.now())


# -- firing --------------------------------------------------------------------------------------


def test_a_weekly_cron_fires_exactly_at_its_time_never_early(db: str) -> None:
    friday_noon_paris = utc("2026-01-02T11:00")
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "weekly", steplog.TriggerCron("TZ=Europe/Paris 0 12 * * 5"))
    with client:
        settle(client)
        assert client.next_timer() == friday_noon_paris
        advance_to(client, friday_noon_paris - TICK)
        assert client.list_runs(function_id="weekly") == []
        assert client.list_events() == []

        client.advance(TICK)
        [run] = client.list_runs(function_id="weekly")
        assert run["status"] == "completed"
        assert run["started_at"] == iso(friday_noon_paris)
        expected_event = {
            "name": CRON_EVENT,
            "id": f"cron:weekly:{iso(friday_noon_paris)}",
            "ts": int(friday_noon_paris.timestamp() * 1000),
            "data": {
                "cron": "TZ=Europe/Paris 0 12 * * 5",
                "scheduledAt": iso(friday_noon_paris),
                "fireAt": iso(friday_noon_paris),
            },
        }
        assert run["output"] == expected_event
        [recorded] = client.list_events()
        assert {key: recorded[key] for key in ("name", "id", "ts", "data")} == expected_event
        assert recorded["runs"] == [run["run_id"]]
        assert client.next_timer() == friday_noon_paris + timedelta(days=7)

        client.advance(timedelta(days=7) - TICK)
        assert len(client.list_runs(function_id="weekly")) == 1
        client.advance(TICK)
        assert scheduled(client, "weekly") == [iso(friday_noon_paris), iso(friday_noon_paris + timedelta(days=7))]
        consistent(client)


def test_every_due_tick_fires_when_time_jumps(db: str) -> None:
    """A late timer is not a missed tick: while the engine runs, each tick fires, oldest first."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "quarter", steplog.TriggerCron("*/15 * * * *", missed="skip"))
    with client:
        settle(client)
        client.advance(timedelta(hours=2, minutes=5))
        expected = [iso(START + timedelta(minutes=15 * n)) for n in range(1, 9)]
        assert scheduled(client, "quarter") == expected
        started = {row["started_at"] for row in client.list_runs(function_id="quarter")}
        assert started == {iso(START + timedelta(hours=2, minutes=5))}
        fire_ats = [e["data"]["fireAt"] for e in reversed(client.list_events(name=CRON_EVENT))]
        assert fire_ats == expected, "fireAt is the planned fire time, even when the tick is late"
        consistent(client)


def test_more_than_a_thousand_due_ticks_all_fire_in_order(tmp_path: Path) -> None:
    client = steplog.Steplog(db=str(tmp_path / "cron.db"), clock=steplog.ManualClock(START))
    define(client, "minutely", steplog.TriggerCron("* * * * *"))
    with client:
        settle(client)
        client.advance(timedelta(minutes=1100))
        expected = [iso(START + timedelta(minutes=n)) for n in range(1, 1101)]
        assert scheduled(client, "minutely") == expected
        assert client.next_timer() == START + timedelta(minutes=1101)
        consistent(client)


def test_more_than_a_thousand_missed_ticks_all_run_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "cron.db")

    def functions(client: steplog.Steplog) -> None:
        define(client, "minutely", steplog.TriggerCron("* * * * *", missed="all"))

    with session(db, START, functions) as client:
        client.advance(timedelta(seconds=90))
    with session(db, START + timedelta(minutes=1201, seconds=30), functions) as client:
        assert scheduled(client, "minutely") == [iso(START + timedelta(minutes=n)) for n in range(1, 1202)]
        assert client.next_timer() == START + timedelta(minutes=1202)
        consistent(client)


def test_two_triggers_sharing_a_tick_start_one_run(db: str) -> None:
    """07:00 in New York is 12:00 UTC in winter (one run a day) and 11:00 UTC in summer (two)."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(utc("2026-03-06T00:00")))
    define(client, "noon", [steplog.TriggerCron("0 12 * * *"), steplog.TriggerCron("TZ=America/New_York 0 7 * * *")])
    with client:
        settle(client)
        for _ in range(4 * 24):
            client.advance(HOUR)
        assert scheduled(client, "noon") == [
            iso(utc("2026-03-06T12:00")),
            iso(utc("2026-03-07T12:00")),
            iso(utc("2026-03-08T11:00")), iso(utc("2026-03-08T12:00")),
            iso(utc("2026-03-09T11:00")), iso(utc("2026-03-09T12:00")),
        ]
        crons = {e["data"]["scheduledAt"]: e["data"]["cron"] for e in client.list_events(name=CRON_EVENT)}
        assert crons[iso(utc("2026-03-06T12:00"))] in ("0 12 * * *", "TZ=America/New_York 0 7 * * *")
        assert crons[iso(utc("2026-03-08T11:00"))] == "TZ=America/New_York 0 7 * * *"
        assert crons[iso(utc("2026-03-08T12:00"))] == "0 12 * * *"
        assert Counter(e["id"] for e in client.list_events(name=CRON_EVENT)).most_common(1)[0][1] == 1
        consistent(client)


def test_two_functions_with_the_same_cron_each_get_one_run_per_tick(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "first", steplog.TriggerCron("*/30 * * * *"))
    define(client, "second", steplog.TriggerCron("*/30 * * * *"))
    with client:
        settle(client)
        client.advance(HOUR)
        client.advance(HOUR)
        expected = [iso(START + timedelta(minutes=30 * n)) for n in range(1, 5)]
        assert scheduled(client, "first") == expected
        assert scheduled(client, "second") == expected
        ids = Counter(e["id"] for e in client.list_events(name=CRON_EVENT))
        assert set(ids) == {f"cron:{fn}:{at}" for fn in ("first", "second") for at in expected}
        assert set(ids.values()) == {1}
        consistent(client)


def test_a_user_event_cannot_pose_as_a_tick(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "hourly", steplog.TriggerCron("0 * * * *"))
    with client:
        settle(client)
        with pytest.raises(steplog.EventError, match="reserved"):
            client.send({"name": CRON_EVENT, "id": f"cron:hourly:{iso(START + HOUR)}"})
        assert client.list_runs() == []


def test_a_user_event_id_does_not_suppress_a_tick(db: str) -> None:
    """A tick's event id is the engine's, ``cron:<fn>:<time>``; a user's event that happens to carry
    the same id (another name, within the 24 h of deduplication) must not cancel the tick."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "hourly", steplog.TriggerCron("0 * * * *"))
    with client:
        settle(client)
        client.send({"name": "app/unrelated", "id": f"cron:hourly:{iso(START + HOUR)}"})
        client.advance(HOUR)
        assert scheduled(client, "hourly") == [iso(START + HOUR)]


# -- jitter --------------------------------------------------------------------------------------


def test_jitter_delays_each_tick_within_its_bound_never_early(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "jittered", steplog.TriggerCron("0 * * * *", jitter="5m"))
    define(client, "twin", steplog.TriggerCron("0 * * * *", jitter="5m"))
    delays: dict[str, list[timedelta]] = {"jittered": [], "twin": []}
    with client:
        settle(client)
        for hour in range(1, 7):
            tick = START + hour * HOUR
            advance_to(client, tick - TICK)
            for _ in range(2):  # both functions' fire times, in order
                fire_at = client.next_timer()
                assert fire_at is not None
                assert tick <= fire_at <= tick + timedelta(minutes=5)
                before = {fn: len(client.list_runs(function_id=fn)) for fn in delays}
                if fire_at > client.clock.now():
                    advance_to(client, fire_at - TICK)
                    assert {fn: len(client.list_runs(function_id=fn)) for fn in delays} == before, "fired early"
                    client.advance(TICK)
                fired = [e for e in client.list_events(name=CRON_EVENT) if e["data"]["fireAt"] == iso(fire_at)]
                assert fired, f"nothing fired at {fire_at}"
                for tick_event in fired:
                    fn = tick_event["id"].split(":")[1]
                    assert tick_event["data"]["scheduledAt"] == iso(tick)
                    delays[fn].append(fire_at - tick)
                if len(fired) == 2:
                    break
        assert [len(values) for values in delays.values()] == [6, 6]
        assert len(set(delays["jittered"])) > 1, "the delay differs from tick to tick"
        assert delays["jittered"] != delays["twin"], "and from function to function"
        assert all(timedelta(0) <= d <= timedelta(minutes=5) for values in delays.values() for d in values)
        consistent(client)


def test_jitter_is_the_same_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "cron.db")

    def functions(client: steplog.Steplog) -> None:
        define(client, "jittered", steplog.TriggerCron("0 * * * *", jitter="5m"))

    with session(db, START + timedelta(minutes=10), functions) as client:
        fire_at = client.next_timer()
        assert fire_at is not None and START + HOUR <= fire_at <= START + HOUR + timedelta(minutes=5)
    with session(db, START + timedelta(minutes=30), functions) as client:
        assert client.next_timer() == fire_at
        advance_to(client, fire_at)
        [tick_event] = client.list_events(name=CRON_EVENT)
        assert tick_event["data"]["fireAt"] == iso(fire_at)
        second = client.next_timer()
    with session(db, fire_at + timedelta(seconds=1), functions) as client:
        assert client.next_timer() == second
        assert len(client.list_runs(function_id="jittered")) == 1


@pytest.mark.parametrize("missed", ["latest", "all", "skip"])
def test_a_restart_while_a_jittered_tick_waits_keeps_its_fire_time(tmp_path: Path, missed: str) -> None:
    """The engine runs at the scheduled instant and stops before the jittered fire time; a restart
    with no downtime missed nothing: the tick fires at its own fire time, not earlier, whatever the
    policy, and not never."""
    db = str(tmp_path / "cron.db")

    def functions(client: steplog.Steplog) -> None:
        define(client, "jittered", steplog.TriggerCron("0 12 * * *", jitter="5m", missed=missed))

    with session(db, START - timedelta(days=1), functions) as client:
        advance_to(client, utc("2026-01-01T12:00"))
        assert scheduled(client, "jittered") == [iso(utc("2025-12-31T12:00"))]
        fire_at = client.next_timer()
        assert fire_at is not None and fire_at > client.clock.now(), "this tick's jitter is not zero"
    with session(db, utc("2026-01-01T12:00"), functions) as client:
        assert len(client.list_runs()) == 1, "fired at once, before its fire time"
        assert client.next_timer() == fire_at
        advance_to(client, fire_at)
        assert scheduled(client, "jittered") == [iso(utc("2025-12-31T12:00")), iso(utc("2026-01-01T12:00"))]
        tick_event = client.list_events(name=CRON_EVENT)[0]
        assert tick_event["data"]["fireAt"] == iso(fire_at)


def test_a_tick_fires_at_its_fire_time_even_when_jitter_exceeds_the_interval(db: str) -> None:
    """Every minute with up to 5 minutes of jitter: a tick may be due before the tick scheduled a
    minute earlier. Advancing to each timer in turn, each run starts at its tick's fireAt."""
    begin = START + timedelta(minutes=10)
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(begin))
    define(client, "minutely", steplog.TriggerCron("* * * * *", jitter="5m"))
    with client:
        settle(client)
        while (due := client.next_timer()) is not None and due <= begin + timedelta(minutes=20):
            advance_to(client, due)
        runs = client.list_runs(function_id="minutely", limit=None)
        assert len(runs) >= 15
        late = {row["output"]["data"]["scheduledAt"]: (row["output"]["data"]["fireAt"], row["started_at"])
                for row in runs if row["started_at"] != row["output"]["data"]["fireAt"]}
        assert late == {}, "ticks that started after their fireAt: {scheduledAt: (fireAt, started_at)}"


def test_a_new_jittered_cron_function_runs_no_tick_from_before_its_first_start(db: str) -> None:
    """Defined and first started at 00:10: the ticks of 00:06 to 00:10 belong to no engine that ran
    (their jitter would make some of them fire after 00:10)."""
    begin = START + timedelta(minutes=10)
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(begin))
    define(client, "minutely", steplog.TriggerCron("* * * * *", jitter="5m"))
    with client:
        settle(client)
        client.advance(timedelta(minutes=10))
        ticks = scheduled(client, "minutely")
        assert ticks, "ticks after the start fired"
        assert min(ticks) > iso(begin)


# -- flow control and other triggers -------------------------------------------------------------


def test_a_cron_function_with_concurrency_one_runs_every_tick(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "serial", steplog.TriggerCron("0 * * * *"), concurrency=1)
    with client:
        settle(client)
        client.advance(5 * HOUR)
        assert scheduled(client, "serial") == [iso(START + n * HOUR) for n in range(1, 6)]
        assert {row["status"] for row in client.list_runs(function_id="serial")} == {"completed"}
        consistent(client)


def test_a_singleton_cron_function_skips_a_tick_while_its_run_is_active(db: str) -> None:
    """Hourly ticks of a run that sleeps 90 minutes: 01:00 runs until 02:30, so 02:00 is skipped;
    03:00 runs until 04:30, so 04:00 is skipped."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))

    @client.create_function(fn_id="single", trigger=steplog.TriggerCron("0 * * * *"),
                            singleton=steplog.Singleton(mode="skip"))
    def single(ctx: steplog.Context) -> str:
        ctx.step.sleep("nap", "90m")
        return str(ctx.event.data["scheduledAt"])

    with client:
        settle(client)
        while (due := client.next_timer()) is not None and due <= START + timedelta(hours=5, minutes=30):
            advance_to(client, due)
        runs = {tick_of(client, row): row for row in client.list_runs(function_id="single", limit=None)}
        statuses = {at: row["status"] for at, row in runs.items()}
        assert statuses == {
            iso(START + HOUR): "completed",
            iso(START + 2 * HOUR): "skipped",
            iso(START + 3 * HOUR): "completed",
            iso(START + 4 * HOUR): "skipped",
            iso(START + 5 * HOUR): "waiting",
        }
        assert runs[iso(START + 3 * HOUR)]["output"] == iso(START + 3 * HOUR)
        consistent(client)


def test_a_cron_function_may_also_have_an_event_trigger(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "both", [steplog.TriggerCron("0 * * * *"), steplog.TriggerEvent(event="app/now")])
    with client:
        settle(client)
        client.advance(timedelta(minutes=10))
        [event_id] = client.send({"name": "app/now", "data": {"who": "user"}})
        client.run_until_idle()
        [by_event] = client.runs_for_event(event_id)
        assert by_event.result(timeout=WAIT)["data"] == {"who": "user"}
        client.advance(timedelta(minutes=50))
        outputs = [row["output"] for row in client.list_runs(function_id="both", limit=None)]
        assert sorted(output["name"] for output in outputs) == ["app/now", CRON_EVENT]
        assert scheduled(client, "both")[-1] == iso(START + HOUR)
        assert client.list_events(name="app/now")[0]["runs"] == [by_event.run_id]
        consistent(client)


def test_a_tick_starts_only_its_own_function(db: str) -> None:
    """An event trigger on the ticks' name does not catch another function's ticks."""
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    define(client, "hourly", steplog.TriggerCron("0 * * * *"))
    define(client, "catch-all", steplog.TriggerEvent(event="inngest/scheduled.*"))
    with client:
        settle(client)
        client.advance(HOUR)
        assert scheduled(client, "hourly") == [iso(START + HOUR)]
        assert client.list_runs(function_id="catch-all") == []


# -- restarts ------------------------------------------------------------------------------------


def hourly(missed: str) -> Callable[[steplog.Steplog], Any]:
    def functions(client: steplog.Steplog) -> None:
        define(client, "hourly", steplog.TriggerCron("0 * * * *", missed=missed))

    return functions


MISSED_AFTER_DOWNTIME = {
    "latest": ["01:00", "05:00"],
    "all": ["01:00", "02:00", "03:00", "04:00", "05:00"],
    "skip": ["01:00"],
}


@pytest.mark.parametrize("missed", sorted(MISSED_AFTER_DOWNTIME))
def test_missed_ticks_after_downtime_follow_the_policy(tmp_path: Path, missed: str) -> None:
    """Down from 01:30 to 05:10: the ticks of 02:00 to 05:00 were missed."""
    db = str(tmp_path / "cron.db")
    with session(db, START, hourly(missed)) as client:
        client.advance(timedelta(hours=1, minutes=30))
        assert scheduled(client, "hourly") == [at("01:00")]
    with session(db, utc("2026-01-01T05:10"), hourly(missed)) as client:
        assert scheduled(client, "hourly") == [at(t) for t in MISSED_AFTER_DOWNTIME[missed]]
        runs = client.list_runs(function_id="hourly", limit=None)
        late = {row["started_at"] for row in runs if tick_of(client, row) > at("01:00")}
        assert late <= {at("05:10")}, "missed ticks run at the restart"
        assert client.next_timer() == utc("2026-01-01T06:00")
        client.advance(timedelta(minutes=50) - TICK)
        assert scheduled(client, "hourly") == [at(t) for t in MISSED_AFTER_DOWNTIME[missed]]
        client.advance(TICK)
        assert scheduled(client, "hourly") == [at(t) for t in MISSED_AFTER_DOWNTIME[missed]] + [at("06:00")]
        consistent(client)


RESTART_AT_A_TICK = {"latest": ["01:00", "03:00"], "all": ["01:00", "02:00", "03:00"], "skip": ["01:00"]}


@pytest.mark.parametrize("missed", sorted(RESTART_AT_A_TICK))
def test_a_restart_exactly_at_a_tick(tmp_path: Path, missed: str) -> None:
    """Down from 01:30 to 03:00 sharp: the tick at the very instant of the restart counts among the
    missed ones (``skip`` skips it too)."""
    db = str(tmp_path / "cron.db")
    with session(db, START, hourly(missed)) as client:
        client.advance(timedelta(hours=1, minutes=30))
    with session(db, utc("2026-01-01T03:00"), hourly(missed)) as client:
        assert scheduled(client, "hourly") == [at(t) for t in RESTART_AT_A_TICK[missed]]
        assert client.next_timer() == utc("2026-01-01T04:00")
        client.advance(HOUR)
        assert scheduled(client, "hourly") == [at(t) for t in RESTART_AT_A_TICK[missed]] + [at("04:00")]
        consistent(client)


@pytest.mark.parametrize("missed", ["latest", "all", "skip"])
def test_a_restart_at_the_instant_of_a_fired_tick_fires_nothing_again(tmp_path: Path, missed: str) -> None:
    db = str(tmp_path / "cron.db")
    with session(db, START, hourly(missed)) as client:
        client.advance(HOUR)
        assert scheduled(client, "hourly") == [iso(START + HOUR)]
    with session(db, START + HOUR, hourly(missed)) as client:
        assert scheduled(client, "hourly") == [iso(START + HOUR)]
        assert client.next_timer() == START + 2 * HOUR


@pytest.mark.parametrize("missed", ["latest", "all", "skip"])
def test_restarting_twice_within_a_minute_runs_no_tick_twice(tmp_path: Path, missed: str) -> None:
    db = str(tmp_path / "cron.db")
    with session(db, START, hourly(missed)) as client:
        client.advance(timedelta(hours=1, minutes=30))
    with session(db, utc("2026-01-01T05:10"), hourly(missed)) as client:
        first = scheduled(client, "hourly")
    with session(db, utc("2026-01-01T05:10:20"), hourly(missed)) as client:
        assert scheduled(client, "hourly") == first
    with session(db, utc("2026-01-01T05:10:50"), hourly(missed)) as client:
        assert scheduled(client, "hourly") == first
        assert len(client.list_events(name=CRON_EVENT, limit=None)) == len(first)
        consistent(client)


def test_a_sleeping_cron_run_is_not_started_again_by_a_restart(tmp_path: Path) -> None:
    """The tick was committed and its run sleeps when the engine stops; the restart, at the same
    instant and later, resumes that run and plans no second one."""
    db = str(tmp_path / "cron.db")

    def functions(client: steplog.Steplog) -> None:
        @client.create_function(fn_id="napper", trigger=steplog.TriggerCron("0 12 * * *"))
        def napper(ctx: steplog.Context) -> str:
            ctx.step.sleep("nap", "2h")
            return str(ctx.event.data["scheduledAt"])

    with session(db, START, functions) as client:
        advance_to(client, utc("2026-01-01T12:00"))
        [run] = client.list_runs(function_id="napper")
        assert run["status"] == "waiting"
    with session(db, utc("2026-01-01T12:00"), functions) as client:
        assert [row["run_id"] for row in client.list_runs(function_id="napper")] == [run["run_id"]]
    with session(db, utc("2026-01-01T15:00"), functions) as client:
        [again] = client.list_runs(function_id="napper")
        assert again["run_id"] == run["run_id"]
        assert client.run(run["run_id"]).result(timeout=WAIT) == iso(utc("2026-01-01T12:00"))
        assert len(client.list_events(name=CRON_EVENT)) == 1
        consistent(client)


CRASHING_APP = textwrap.dedent(
    """
    import os, sys
    from datetime import datetime, timedelta, timezone
    import steplog

    client = steplog.Steplog(db=sys.argv[1], clock=steplog.ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc)))

    @client.create_function(fn_id="hourly", trigger=steplog.TriggerCron("0 * * * *"))
    def hourly(ctx):
        os._exit(17)  # the process dies in the run the tick started: after the tick's commit

    client.start()
    try:
        client.cancel("no-such-run")  # as settle() does: the router has started and armed the tick
    except steplog.RunNotFoundError:
        pass
    client.advance(timedelta(hours=1))
    sys.exit(0)  # not reached
    """
)


def test_a_crash_right_after_a_tick_commit_runs_the_tick_once(tmp_path: Path) -> None:
    db = str(tmp_path / "cron.db")
    app = tmp_path / "crashing_app.py"
    app.write_text(CRASHING_APP)
    child = subprocess.run([sys.executable, str(app), db], capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 17, child.stderr
    with session(db, START + HOUR, hourly("latest")) as client:
        [run] = client.list_runs(function_id="hourly")
        assert run["status"] == "completed", "the run that the crash interrupted is resumed"
        assert run["output"]["data"]["scheduledAt"] == iso(START + HOUR)
        assert len(client.list_events(name=CRON_EVENT)) == 1
        assert client.next_timer() == START + 2 * HOUR
        consistent(client)


def test_missed_ticks_of_a_function_that_never_ticked_follow_the_policy(tmp_path: Path) -> None:
    """The engine runs from 00:00 to 06:00 (no noon tick yet), is down until the next day at 00:00:
    the noon tick passed while it was down, and ``missed="all"`` runs it at the restart."""
    db = str(tmp_path / "cron.db")

    def functions(client: steplog.Steplog) -> None:
        define(client, "noon", steplog.TriggerCron("0 12 * * *", missed="all"))

    with session(db, START, functions) as client:
        client.advance(timedelta(hours=6))
        assert client.list_runs() == []
    with session(db, START + timedelta(days=1), functions) as client:
        assert scheduled(client, "noon") == [iso(utc("2026-01-01T12:00"))]


def test_a_new_cron_function_does_not_run_ticks_from_before_it_existed(tmp_path: Path) -> None:
    db = str(tmp_path / "cron.db")
    with session(db, START, lambda client: define(client, "other", steplog.TriggerEvent(event="app/x"))) as client:
        client.advance(timedelta(hours=3))

    def functions(client: steplog.Steplog) -> None:
        define(client, "other", steplog.TriggerEvent(event="app/x"))
        define(client, "hourly", steplog.TriggerCron("0 * * * *", missed="all"))

    with session(db, START + timedelta(hours=3, minutes=30), functions) as client:
        assert client.list_runs(function_id="hourly") == []
        assert client.next_timer() == START + 4 * HOUR


def test_ticks_due_at_start_are_awaited_by_run_until_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``start()``, ``run_until_idle()`` waits for the runs that are due at once (as it does
    for runs recovered from the log). Ticks due at start are armed by the router as it starts, on
    its own thread, so ``run_until_idle`` may return before they fire. The router's start is
    slowed down here (up to 5 s, until ``run_until_idle`` has returned) to make the race certain."""
    db = str(tmp_path / "cron.db")
    with session(db, START, hourly("all")) as client:
        client.advance(timedelta(hours=1, minutes=30))

    returned = threading.Event()
    original_on_start = EventRouter.on_start

    def slow_on_start(self: EventRouter) -> None:
        returned.wait(timeout=5)
        original_on_start(self)

    monkeypatch.setattr(EventRouter, "on_start", slow_on_start)
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(utc("2026-01-01T04:30")))
    hourly("all")(client)
    with client:
        assert client.run_until_idle(timeout=WAIT)
        returned.set()
        runs = len(client.list_runs(function_id="hourly"))
        settle(client)
        assert runs == 4, "run_until_idle returned before the ticks of 02:00, 03:00 and 04:00 ran"


# -- daylight saving, driven hour by hour --------------------------------------------------------

PARIS_FUNCTIONS = {
    "at-0230": "TZ=Europe/Paris 30 2 * * *",
    "hourly": "TZ=Europe/Paris 0 * * * *",
    "every-15": "TZ=Europe/Paris */15 * * * *",
    "every-2h": "TZ=Europe/Paris 0 */2 * * *",
}


def expected_ticks(cron: str, start: datetime, end: datetime) -> list[str]:
    schedule = parse_cron(cron)
    ticks, moment = [], schedule.next_after(start)
    while moment <= end:
        ticks.append(iso(moment))
        moment = schedule.next_after(moment)
    return ticks


@pytest.mark.parametrize(
    ("start", "at_0230", "hourly_count"),
    [
        pytest.param("2026-03-28T20:00", ["2026-03-29T01:30"], 10, id="spring-forward"),
        pytest.param("2026-10-24T20:00", ["2026-10-25T00:30"], 10, id="fall-back"),
    ],
)
def test_a_dst_day_in_paris_hour_by_hour(db: str, start: str, at_0230: list[str], hourly_count: int) -> None:
    begin, end = utc(start), utc(start) + 10 * HOUR
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(begin))
    for fn_id, cron in PARIS_FUNCTIONS.items():
        define(client, fn_id, steplog.TriggerCron(cron))
    with client:
        settle(client)
        for _ in range(10):
            client.advance(HOUR)
        for fn_id, cron in PARIS_FUNCTIONS.items():
            assert scheduled(client, fn_id) == expected_ticks(cron, begin, end), fn_id
        assert scheduled(client, "at-0230") == [iso(utc(text)) for text in at_0230]
        assert scheduled(client, "hourly") == [iso(begin + n * HOUR) for n in range(1, hourly_count + 1)]
        assert scheduled(client, "every-15") == [iso(begin + n * timedelta(minutes=15)) for n in range(1, 41)]
        consistent(client)


# -- the state machine ---------------------------------------------------------------------------

MACHINE_FUNCTIONS: dict[str, tuple[steplog.TriggerCron, ...]] = {
    "hourly": (steplog.TriggerCron("TZ=Europe/Paris 0 * * * *", missed="all"),),
    "twenty": (steplog.TriggerCron("*/20 * * * *", missed="skip"),),
    "night": (steplog.TriggerCron("TZ=Europe/Paris 30 2 * * *", missed="latest"),),
    "noon": (
        steplog.TriggerCron("0 12 * * *", missed="skip"),
        steplog.TriggerCron("TZ=America/New_York 0 7 * * *", missed="latest"),
    ),
    "jittered": (steplog.TriggerCron("*/30 * * * *", jitter="5m", missed="skip"),),
    "jittered-latest": (steplog.TriggerCron("TZ=America/New_York 15 */3 * * *", jitter="4m", missed="latest"),),
}
MACHINE_POLICIES = {
    "hourly": "all", "twenty": "skip", "night": "latest", "noon": "latest", "jittered": "skip",
    "jittered-latest": "latest",
}
"""``noon``'s triggers disagree; the strictest wins ("all" over "latest" over "skip")."""
MACHINE_JITTERS = {"jittered": timedelta(minutes=5), "jittered-latest": timedelta(minutes=4)}
MACHINE_STARTS = [utc("2026-03-05T00:00"), utc("2026-03-27T06:00"), utc("2026-10-23T00:00"), utc("2026-10-30T12:00")]
"""A few days before DST changes in New York and Paris. The first start is 6 to 14 minutes past a
half hour (see ``begin``): no jittered tick from before it is still to fire."""
SMALL_STEPS = [TICK, timedelta(seconds=1), timedelta(seconds=59), timedelta(minutes=7), timedelta(minutes=20),
               timedelta(minutes=45)]
BIG_STEPS = [timedelta(hours=3), timedelta(hours=25), timedelta(days=2, hours=7)]
DOWNTIMES = [timedelta(0), TICK, timedelta(seconds=30), timedelta(minutes=3), timedelta(minutes=20),
             timedelta(hours=3), timedelta(days=1), timedelta(days=2, hours=5)]
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")


class TickModel:
    """Which ticks should have run. A tick fires at its scheduled instant plus its function's jitter
    (the engine's deterministic delay, whose bounds the plain tests check). While the engine runs,
    every tick fires once its fire time comes; the ticks whose fire time passed while it was down
    (those at the restart instant included) follow the function's policy."""

    def __init__(self, now: datetime) -> None:
        self.schedules: dict[str, list[CronSchedule]] = {
            fn: [parse_cron(trigger.cron) for trigger in triggers] for fn, triggers in MACHINE_FUNCTIONS.items()
        }
        self.decided = dict.fromkeys(MACHINE_FUNCTIONS, now)
        """Every tick of the function that fires at or before this instant has run or was skipped."""
        self.fired: dict[str, set[datetime]] = {fn: set() for fn in MACHINE_FUNCTIONS}

    def fire_at(self, fn: str, tick: datetime) -> datetime:
        jitter = MACHINE_JITTERS.get(fn)
        return tick if jitter is None else tick + cron_jitter(fn, tick, jitter)

    def next_scheduled(self, fn: str, after: datetime) -> datetime:
        return min(schedule.next_after(after) for schedule in self.schedules[fn])  # type: ignore[no-any-return]

    def firing(self, fn: str, after: datetime, until: datetime) -> list[datetime]:
        """The ticks (scheduled instants) that fire in (after, until], in order."""
        found = []
        tick = self.next_scheduled(fn, after - MACHINE_JITTERS.get(fn, timedelta(0)))
        while tick <= until:
            if after < self.fire_at(fn, tick) <= until:
                found.append(tick)
            tick = self.next_scheduled(fn, tick)
        return found

    def next_fire(self, fn: str) -> datetime:
        after = self.decided[fn]
        tick = self.next_scheduled(fn, after - MACHINE_JITTERS.get(fn, timedelta(0)))
        while self.fire_at(fn, tick) <= after:
            tick = self.next_scheduled(fn, tick)
        return self.fire_at(fn, tick)

    def run_until(self, now: datetime) -> None:
        for fn in MACHINE_FUNCTIONS:
            self.fired[fn].update(self.firing(fn, self.decided[fn], now))
            self.decided[fn] = now

    def restart_at(self, now: datetime) -> list[str]:
        """Apply each policy to the ticks missed while down; returns the functions that missed ticks."""
        missed_by = []
        for fn, policy in MACHINE_POLICIES.items():
            missed = self.firing(fn, self.decided[fn], now)
            if missed:
                missed_by.append(fn)
            if policy == "all":
                self.fired[fn].update(missed)
            elif policy == "latest" and missed:
                self.fired[fn].add(missed[-1])
            self.decided[fn] = now
        return missed_by

    def pairs(self) -> set[tuple[str, str]]:
        return {(fn, iso(moment)) for fn, moments in self.fired.items() for moment in moments}


class CronMachine(RuleBasedStateMachine):
    """A real engine on a SQLite file, advanced and restarted; its runs against TickModel.

    The machine warms up for a day first, so that every function has ticked before any restart:
    a function that never ticked loses the ticks missed in its first downtime (see
    test_missed_ticks_of_a_function_that_never_ticked_follow_the_policy).
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="steplog-cron-"))
        self.db = str(self.directory / "cron.db")
        self.client: steplog.Steplog | None = None
        self.model: TickModel | None = None

    def _start(self, now: datetime) -> steplog.Steplog:
        client = steplog.Steplog(db=self.db, clock=steplog.ManualClock(now))
        for fn, triggers in MACHINE_FUNCTIONS.items():

            @client.create_function(fn_id=fn, trigger=list(triggers))
            def report(ctx: steplog.Context) -> str:
                return str(ctx.event.data["scheduledAt"])

        client.start()
        settle(client)
        return client

    @property
    def now(self) -> datetime:
        assert self.client is not None
        now: datetime = self.client.clock.now()
        return now

    def _advance(self, step: timedelta) -> None:
        assert self.client is not None and self.model is not None
        self.client.advance(step)
        assert self.client.run_until_idle(timeout=WAIT)
        self.model.run_until(self.now)

    @initialize(start=st.sampled_from(MACHINE_STARTS), half_hours=st.integers(0, 47), minutes=st.integers(6, 14))
    def begin(self, start: datetime, half_hours: int, minutes: int) -> None:
        begin = start + timedelta(minutes=30 * half_hours + minutes)
        self.model = TickModel(begin)
        self.client = self._start(begin)
        self._advance(timedelta(days=1, minutes=1))

    @rule(step=st.sampled_from(SMALL_STEPS))
    def advance_a_little(self, step: timedelta) -> None:
        self._advance(step)

    @rule(step=st.sampled_from(BIG_STEPS))
    def advance_a_lot(self, step: timedelta) -> None:
        self._advance(step)

    @rule(before=st.booleans())
    def advance_to_the_next_timer(self, before: bool) -> None:
        assert self.client is not None and self.model is not None
        due = self.client.next_timer()
        assert due == min(self.model.next_fire(fn) for fn in MACHINE_FUNCTIONS)
        self._advance(due - self.now - (TICK if before else timedelta(0)))

    @rule(fn=st.sampled_from(sorted(MACHINE_JITTERS)))
    def advance_to_a_jittered_tick(self, fn: str) -> None:
        """To the scheduled instant of a jittered tick: its run is still to come."""
        assert self.model is not None
        self._advance(self.model.next_scheduled(fn, self.now) - self.now)

    @rule(downtime=st.sampled_from(DOWNTIMES))
    def restart(self, downtime: timedelta) -> None:
        self._restart(self.now + downtime)

    @rule(fn=st.sampled_from(sorted(MACHINE_FUNCTIONS)), ticks_later=st.integers(0, 3))
    def restart_at_a_tick(self, fn: str, ticks_later: int) -> None:
        assert self.model is not None
        moment = self.model.next_scheduled(fn, self.now)
        for _ in range(ticks_later):
            moment = self.model.next_scheduled(fn, moment)
        self._restart(moment)

    def _restart(self, at: datetime) -> None:
        assert self.client is not None and self.model is not None
        self.client.stop()
        missed_by = self.model.restart_at(at)
        event(f"restart: {len(missed_by)} functions missed ticks")
        pending = [fn for fn in MACHINE_JITTERS if self.model.next_scheduled(fn, at - MACHINE_JITTERS[fn]) <= at
                   < self.model.fire_at(fn, self.model.next_scheduled(fn, at - MACHINE_JITTERS[fn]))]
        if pending:
            event("restart while a jittered tick waits for its fire time")
        self.client = self._start(at)

    @invariant()
    def runs_are_the_models(self) -> None:
        if self.client is None or self.model is None:
            return
        runs = self.client.list_runs(limit=None)
        assert {row["status"] for row in runs} <= {"completed"}
        pairs = Counter((row["function_id"], row["output"]) for row in runs)
        duplicates = {pair: count for pair, count in pairs.items() if count > 1}
        assert duplicates == {}, "a scheduled instant ran twice"
        expected = self.model.pairs()
        assert set(pairs) == expected, (
            f"missing {sorted(expected - set(pairs))[:5]}, unexpected {sorted(set(pairs) - expected)[:5]}"
        )
        latest = {row["function_id"]: row["scheduled_at"] for row in self.client.store.query("crons")}
        assert latest == {fn: iso(max(moments)) for fn, moments in self.model.fired.items() if moments}
        consistent(self.client)

    def teardown(self) -> None:
        if self.client is not None:
            self.client.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


CronMachine.TestCase.settings = settings(
    max_examples=25 if _PROFILE == "default" else settings().max_examples, stateful_step_count=12, deadline=None,
)
test_cron_ticks_against_a_model = CronMachine.TestCase
