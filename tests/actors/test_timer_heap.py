"""The timer actor's heap does not keep the timers of runs that ended or were re-armed.

A regression test: an entry stayed in the heap until its old due time came round, and a wait's or
an invoke's timeout is often days away (an invoke's default is a year), so every run that waited
and ended sooner left memory behind for that long.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from steplog.actors.activity import Activity
from steplog.actors.messages import Arm, Disarm, Tick
from steplog.actors.timer import STALE_SLACK, TimerActor
from steplog.engine import ManualClock

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
RUNS = 5 * STALE_SLACK


def timer_actor() -> tuple[TimerActor, ManualClock]:
    clock = ManualClock(START)
    return TimerActor(clock, Activity(), {}), clock  # driven through on_receive, in this thread


def test_runs_that_ended_before_their_far_timeout_leave_nothing_in_the_heap() -> None:
    timer, _ = timer_actor()
    for n in range(RUNS):
        timer.on_receive(Arm(START + YEAR, f"run-{n}", "f"))  # waits, with a timeout a year away
        timer.on_receive(Disarm(f"run-{n}"))  # and ends soon after
    assert len(timer._heap) <= STALE_SLACK + 1
    assert timer.next_due() is None


def test_a_run_re_armed_sooner_again_and_again_keeps_one_live_entry() -> None:
    timer, _ = timer_actor()
    for n in range(RUNS):
        timer.on_receive(Arm(START + YEAR - timedelta(seconds=n), "run-1", "f"))
    assert len(timer._heap) <= STALE_SLACK + 1
    assert timer.next_due() == START + YEAR - timedelta(seconds=RUNS - 1)


def test_live_timers_survive_the_rebuild_and_still_fire_in_order() -> None:
    timer, clock = timer_actor()
    started: list[str] = []
    timer._supervisors = {"f": _Recorder(started)}  # type: ignore[assignment]
    for n in range(RUNS):
        timer.on_receive(Arm(START + timedelta(seconds=1 + n % 3), f"live-{n}", "f") if n % 4 == 0
                         else Arm(START + YEAR, f"gone-{n}", "f"))
        if n % 4:
            timer.on_receive(Disarm(f"gone-{n}"))
    clock.advance(timedelta(seconds=10))
    timer.on_receive(Tick())
    assert sorted(started) == sorted(f"live-{n}" for n in range(0, RUNS, 4))
    assert timer.next_due() is None


class _Recorder:
    """Stands in for a supervisor's ref: records the runs the timer starts."""

    def __init__(self, started: list[str]) -> None:
        self.started = started

    def tell(self, message: object) -> None:
        self.started.append(message.run_id)  # type: ignore[attr-defined]
