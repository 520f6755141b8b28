"""Cron ticks on the real clock: the ticker fires a tick armed before it started."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import steplog


class ShiftedClock(steplog.SystemClock):
    """The real time, moved so that a minute boundary comes ``lead`` seconds after start."""

    def __init__(self, lead: float) -> None:
        real = datetime.now(UTC)
        boundary = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
        self._shift = boundary - real - timedelta(seconds=lead)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._shift


def _wait_for(condition: object, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising on time
    return False


def test_a_minutely_cron_fires_on_the_real_clock_at_its_boundary(tmp_path: Path) -> None:
    clock = ShiftedClock(lead=0.3)
    client = steplog.Steplog(db=str(tmp_path / "cron.db"), clock=clock)

    @client.create_function(fn_id="minutely", trigger=steplog.TriggerCron("* * * * *"))
    def minutely(ctx: steplog.Context) -> str:
        return str(ctx.event.data["scheduledAt"])

    with client:
        first_tick = client.next_timer()
        assert first_tick is not None and first_tick > clock.now()
        assert _wait_for(lambda: client.list_runs(function_id="minutely", status="completed"), 10)
        [run] = client.list_runs(function_id="minutely")
        assert run["output"] == first_tick.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        assert datetime.fromisoformat(run["started_at"].replace("Z", "+00:00")) >= first_tick
