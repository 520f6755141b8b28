"""Review of cron triggers, event id seeds and rerun: each test is a bug an independent review found
(all fixed); they stay as regression tests."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine.cron import CronError, parse_cron

import steplog

START = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = 10.0


def _settle(client: steplog.Steplog) -> None:
    """Fire what is due at start (any request through the router does) and wait for the runs."""
    with pytest.raises(steplog.RunNotFoundError):
        client.cancel("no-such-run")
    assert client.run_until_idle(timeout=WAIT)


def _outputs(client: steplog.Steplog, fn_id: str) -> list[Any]:
    return sorted(str(row["output"]) for row in client.list_runs(function_id=fn_id, limit=None))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "review5.db")


# -- cron: the tick send and the engine's event limit ---------------------------------------------


def _minutely_and_debounced(db: str, limits: steplog.Limits) -> steplog.Steplog:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START), limits=limits)

    @client.create_function(fn_id="minutely", trigger=steplog.TriggerCron("* * * * *"))
    def minutely(ctx: steplog.Context) -> str:
        return str(ctx.event.data["scheduledAt"])

    @client.create_function(
        fn_id="digest", trigger=steplog.TriggerEvent(event="app/note"), debounce=steplog.Debounce(period="5m")
    )
    def digest(ctx: steplog.Context) -> int:
        return int(ctx.event.data["n"])

    return client


def test_more_due_ticks_than_events_per_send_still_fire(db: str) -> None:
    client = _minutely_and_debounced(db, steplog.Limits(events_per_send=10))
    with client:
        client.advance(timedelta(minutes=20), wait=False)
        assert client.run_until_idle(timeout=WAIT)
        assert len(client.list_runs(function_id="minutely", limit=None)) == 20
        client.advance(timedelta(minutes=1), wait=False)
        assert client.run_until_idle(timeout=WAIT)
        assert len(client.list_runs(function_id="minutely", limit=None)) == 21


def test_a_failing_tick_send_does_not_lose_a_due_debounce(db: str) -> None:
    client = _minutely_and_debounced(db, steplog.Limits(events_per_send=10))
    with client:
        client.send({"name": "app/note", "data": {"n": 7}})
        client.advance(timedelta(minutes=20), wait=False)
        assert client.run_until_idle(timeout=WAIT)
        assert _outputs(client, "digest") == ["7"]


# -- cron: restarts after the schedule changed ------------------------------------------------------


def _report(client: steplog.Steplog, trigger: Any) -> None:
    @client.create_function(fn_id="report", trigger=trigger)
    def report(ctx: steplog.Context) -> str:
        return str(ctx.event.data.get("scheduledAt", "event"))


def test_a_changed_schedule_does_not_replay_ticks_from_before_the_change(db: str) -> None:
    before = datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(before))
    _report(client, steplog.TriggerCron("0 0 * * *", missed="all"))  # daily at midnight
    with client:
        _settle(client)
        client.advance(timedelta(hours=13))  # up all along: the midnight tick ran
        assert _outputs(client, "report") == ["2026-01-01T00:00:00.000000Z"]
    # a deploy makes it hourly; the engine is down for one second
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(before + timedelta(hours=13, seconds=1)))
    _report(client, steplog.TriggerCron("0 * * * *", missed="all"))
    with client:
        _settle(client)
        # nothing was missed while the engine was stopped; at most the 12:00 tick (stopped at 12:00:00)
        assert len(client.list_runs(function_id="report", limit=None)) <= 2


def test_a_cron_trigger_given_back_runs_no_tick_from_when_it_had_none(db: str) -> None:
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START))
    _report(client, steplog.TriggerCron("0 * * * *", missed="all"))
    with client:
        _settle(client)
        client.advance(timedelta(hours=1))
        assert len(client.list_runs(function_id="report")) == 1
    # the cron trigger is removed for a day, the engine running all along
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START + timedelta(hours=1, minutes=1)))
    _report(client, steplog.TriggerEvent(event="app/report"))
    with client:
        _settle(client)
        client.advance(timedelta(days=1))
    # and given back
    client = steplog.Steplog(db=db, clock=steplog.ManualClock(START + timedelta(days=1, hours=1, minutes=2)))
    _report(client, steplog.TriggerCron("0 * * * *", missed="all"))
    with client:
        _settle(client)
        assert len(client.list_runs(function_id="report", limit=None)) == 1


# -- cron: expressions croniter accepts but steplog cannot use --------------------------------------


def test_a_random_cron_field_is_refused() -> None:
    with pytest.raises(CronError):
        parse_cron("R * * * *")


# -- seeds ------------------------------------------------------------------------------------------


def _seed(entropy: bytes) -> str:
    return f"1767225600000,{base64.b64encode(entropy).decode()}"


def test_runs_for_event_after_a_retried_seeded_send() -> None:
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock(START))

    @client.create_function(fn_id="count", trigger=steplog.TriggerEvent(event="app/ping"))
    def count(ctx: steplog.Context) -> int:
        return 1

    with client:
        [first] = client.send({"name": "app/ping"}, id_seed=_seed(bytes(range(10))))
        [run] = client.runs_for_event(first)
        [again] = client.send({"name": "app/ping"}, id_seed=_seed(bytes(range(10))))  # the client retries
        assert again == first
        assert [handle.run_id for handle in client.runs_for_event(first)] == [run.run_id]


# -- rerun ------------------------------------------------------------------------------------------


def test_runs_for_event_agrees_with_list_runs_after_a_rerun() -> None:
    """Found in review at b92ee96 (rerun did not update runs_for_event's cache); fixed since in the tree."""
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock(START))

    @client.create_function(fn_id="count", trigger=steplog.TriggerEvent(event="app/ping"))
    def count(ctx: steplog.Context) -> int:
        return 1

    with client:
        [event_id] = client.send({"name": "app/ping"})
        [run] = client.runs_for_event(event_id)
        again = client.rerun(run.run_id)
        client.run_until_idle()
        listed = {row["run_id"] for row in client.list_runs(event_id=event_id)}
        assert listed == {run.run_id, again}
        assert {handle.run_id for handle in client.runs_for_event(event_id)} == listed


def test_a_rerun_of_a_skipped_run_respects_concurrency() -> None:
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock(START))
    release = threading.Event()
    lock = threading.Lock()
    active, peak = [0], [0]

    @client.create_function(
        fn_id="one", trigger=steplog.TriggerEvent(event="app/go"),
        concurrency=[steplog.Concurrency(limit=1)], rate_limit=steplog.RateLimit(limit=1, period="1h"),
    )
    def one(ctx: steplog.Context) -> int:
        def body() -> int:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            release.wait(2)
            with lock:
                active[0] -= 1
            return int(ctx.event.data["n"])

        return ctx.step.run("work", body)

    with client:
        client.send({"name": "app/go", "data": {"n": 1}})
        client.send({"name": "app/go", "data": {"n": 2}})  # rate-limited: skipped
        [skipped] = client.list_runs(function_id="one", status="skipped")
        client.rerun(skipped["run_id"])
        release.wait(1)  # both would be executing by now if admission let them
        release.set()
        assert client.run_until_idle(timeout=WAIT)
        assert peak[0] == 1


def test_a_rerun_of_a_singleton_function_keeps_one_active_run_per_key() -> None:
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock(START))
    release, started = threading.Event(), threading.Semaphore(0)
    blocking = [False]

    @client.create_function(
        fn_id="single", trigger=steplog.TriggerEvent(event="app/go"), singleton=steplog.Singleton(mode="skip")
    )
    def single(ctx: steplog.Context) -> int:
        def body() -> int:
            if blocking[0]:
                started.release()
                release.wait(2)
            return int(ctx.event.data["n"])

        return ctx.step.run("work", body)

    with client:
        client.send({"name": "app/go", "data": {"n": 1}})
        client.run_until_idle()
        [first] = client.list_runs(function_id="single")
        blocking[0] = True
        client.rerun(first["run_id"])
        assert started.acquire(timeout=WAIT)  # the rerun is executing
        client.send({"name": "app/go", "data": {"n": 2}})
        statuses = sorted(row["status"] for row in client.list_runs(function_id="single", limit=None))
        release.set()
        assert client.run_until_idle(timeout=WAIT)
        assert statuses == ["completed", "queued", "skipped"]  # the new event is skipped: the rerun holds the key


def test_a_cron_that_is_not_a_string_is_refused_with_a_definition_error() -> None:
    client = steplog.Steplog(db=":memory:")
    with pytest.raises(steplog.DefinitionError, match="non-empty string"):
        client.create_function(fn_id="f", trigger=steplog.TriggerCron(["0 * * * *"]))(  # type: ignore[arg-type]
            lambda ctx: None
        )
