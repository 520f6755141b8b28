"""Hypothesis strategies for property tests of durable functions (needs ``hypothesis``).

    from hypothesis import given
    from steplog.testing.strategies import events, schedules

    @given(schedules(events("shop/order.placed", st.fixed_dictionaries({"id": st.integers(1, 5)}))))
    def test_every_order_is_charged_once(schedule):
        with TestEngine(client) as engine:
            play(engine, schedule)
            engine.settle()
            ...

A schedule is a list of actions (``steplog.testing.actions``): send events, move the clock, crash
(between commits, or in the middle of a step), cancel a run. Shrunk, it prints as test code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

try:
    from hypothesis import strategies as st
except ModuleNotFoundError as missing:  # pragma: no cover - depends on what the user installed
    raise ModuleNotFoundError(
        "steplog.testing.strategies needs hypothesis: pip install 'steplog[testing]'"
    ) from missing

from steplog.testing.actions import (
    Action,
    Advance,
    AdvanceToNextTimer,
    CancelRun,
    Crash,
    CrashDuring,
    FailurePlan,
    Send,
)

__all__ = ["EVENT_IDS", "actions", "durations", "events", "failure_plans", "schedules"]

EVENT_IDS = st.sampled_from(["id-a", "id-b", "id-c"])
"""A few event ids, so that duplicates (which steplog must ignore within 24 h) come up often."""


def events(
    name: str | st.SearchStrategy[str],
    data: st.SearchStrategy[Mapping[str, Any]] | None = None,
    *,
    ids: st.SearchStrategy[str | None] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Events named ``name`` (or drawn from a strategy of names) with ``data`` drawn from ``data``
    (default: empty). Without ``ids`` events have no id (each is new); with it (``EVENT_IDS``, or
    your own) some events carry an id drawn from it, so duplicates come up."""
    names = name if isinstance(name, st.SearchStrategy) else st.just(name)
    datas = (data if data is not None else st.just({})).map(dict)
    if ids is None:
        return st.fixed_dictionaries({"name": names, "data": datas})
    return st.fixed_dictionaries({"name": names, "data": datas}, optional={"id": ids})


def durations(
    at_most: timedelta = timedelta(days=1), *, points: Sequence[timedelta] = ()
) -> st.SearchStrategy[timedelta]:
    """Time steps: the given ``points`` (put your timeouts and periods there, with a microsecond
    either side, where bugs live), or any whole number of seconds up to ``at_most``."""
    edges = sorted({edge for point in points for edge in (point - timedelta(microseconds=1), point,
                                                          point + timedelta(microseconds=1)) if edge >= timedelta(0)})
    seconds = st.integers(0, int(at_most.total_seconds())).map(lambda s: timedelta(seconds=s))
    return st.one_of(st.sampled_from(edges), seconds) if edges else seconds


def actions(
    events: st.SearchStrategy[Mapping[str, Any]],
    *,
    advance: st.SearchStrategy[timedelta] | None = None,
    batch: int = 1,
    crash: bool = True,
    downtime: st.SearchStrategy[timedelta] | None = None,
    crash_in: Sequence[str] = (),
    cancel: bool = False,
) -> st.SearchStrategy[Action]:
    """One action: send 1..``batch`` events drawn from ``events``, advance the clock (by ``advance``,
    default up to a day, or to the next timer), crash and restart (``crash``, after ``downtime``),
    crash in the middle of one of the steps ``crash_in``, or cancel a live run (``cancel``)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    choices: list[st.SearchStrategy[Action]] = [
        st.lists(events, min_size=1, max_size=batch).map(lambda drawn: Send(tuple(drawn))),
        (advance if advance is not None else durations()).map(Advance),
        st.just(AdvanceToNextTimer()),
    ]
    if crash:
        choices.append((downtime if downtime is not None else st.just(timedelta(0))).map(Crash))
    if crash_in:
        choices.append(st.sampled_from(list(crash_in)).map(CrashDuring))
    if cancel:
        choices.append(st.integers(0, 1000).map(CancelRun))
    return st.one_of(choices)


def schedules(
    events: st.SearchStrategy[Mapping[str, Any]], *, min_size: int = 1, max_size: int = 30, **options: Any
) -> st.SearchStrategy[list[Action]]:
    """Lists of ``actions(events, **options)``."""
    return st.lists(actions(events, **options), min_size=min_size, max_size=max_size)


def failure_plans(
    step_ids: Sequence[str], *, max_failures: int = 3, fatal: bool = True, crashes: bool = True
) -> st.SearchStrategy[FailurePlan]:
    """How the given steps fail: up to ``max_failures`` failed attempts each before the real body
    runs; with ``fatal``, maybe one step that always fails (NonRetriableError); with ``crashes``,
    up to two crashes in the middle of a step. Keep ``max_failures`` at most your functions'
    retries unless running out of retries is what you test."""
    if not step_ids:
        raise ValueError("failure_plans needs at least one step id")
    ids = list(step_ids)
    fails = st.dictionaries(st.sampled_from(ids), st.integers(1, max_failures), max_size=len(ids))
    fatal_steps = st.sets(st.sampled_from(ids), max_size=1).map(frozenset) if fatal else st.just(frozenset())
    crash_counts = st.dictionaries(st.sampled_from(ids), st.integers(1, 2), max_size=len(ids)) if crashes else st.just({})
    return st.builds(FailurePlan, fails, fatal_steps, crash_counts)
