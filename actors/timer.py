"""The timer actor: holds the runs that wait for a time (retry backoff, a sleep, a wait's timeout)
and starts them when due. A run's latest ``Arm`` replaces its earlier one (the run computes its
next wake from everything it waits for), and ``Disarm`` forgets a run that ended, so a wait
resolved by an event does not wake its run again at the wait's old timeout.

With a real clock a small ticker thread sleeps until the next due time and then sends ``Tick``.
With a manual clock the runtime asks for a ``Tick`` after every advance, so a test that moves
time forward finds the due runs already started when ``advance`` returns.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import Arm, Disarm, SetFlowTarget, StartRun, Tick
from steplog.engine.clock import Clock

STALE_SLACK = 1024
"""Stale heap entries tolerated beyond the live ones before the heap is rebuilt (amortized O(1))."""
FLOW_TIMER = "~flow"
"""The timer's name for the flow gate's next due debounce or batch (no run id starts with ``~``)."""


class TimerActor(Actor):
    """A heap of (due, run) that starts each run at its time, never earlier."""

    def __init__(self, clock: Clock, activity: Activity, supervisors: Mapping[str, pykka.ActorRef[Any]]) -> None:
        super().__init__()
        self._clock = clock
        self._activity = activity
        self._supervisors = supervisors
        self._heap: list[tuple[datetime, str, str]] = []
        self._latest: dict[str, datetime] = {}
        self._ticker: Ticker | None = None
        self._flow_target: Callable[[], None] | None = None

    def attach_ticker(self, ticker: Ticker) -> None:
        self._ticker = ticker

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Arm):
            self._latest[message.run_id] = message.due
            heapq.heappush(self._heap, (message.due, message.run_id, message.function_id))
            self._drop_stale()
            self._fire_due()
        elif isinstance(message, Disarm):
            self._latest.pop(message.run_id, None)
        elif isinstance(message, Tick):
            self._fire_due()
        elif isinstance(message, SetFlowTarget):
            self._flow_target = message.target
        return None

    def _fire_due(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            due, run_id, function_id = heapq.heappop(self._heap)
            if self._latest.get(run_id) != due:
                continue  # replaced by a later Arm, or the run ended
            del self._latest[run_id]
            if run_id == FLOW_TIMER:
                if self._flow_target is not None:
                    self._activity.begin()  # ended by the router once the runs it starts are counted
                    self._flow_target()
                continue
            supervisor = self._supervisors.get(function_id)
            if supervisor is not None:
                self._activity.begin()
                supervisor.tell(StartRun(run_id))
        if self._ticker is not None:
            self._ticker.wake_at(self.next_due())

    def _drop_stale(self) -> None:
        """Rebuild the heap without its stale entries (replaced by a later Arm, or of runs that ended)
        once they outnumber the live ones: else each would stay until its old due time, which for a
        wait's or an invoke's timeout may be days or a year away, so memory grew with every run."""
        if len(self._heap) <= 2 * len(self._latest) + STALE_SLACK:
            return
        self._heap = [entry for entry in self._heap if self._latest.get(entry[1]) == entry[0]]
        heapq.heapify(self._heap)

    def next_due(self) -> datetime | None:
        while self._heap and self._latest.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale
        return self._heap[0][0] if self._heap else None


class Ticker:
    """A thread that sends the timer a ``Tick`` when the next due time comes (real clocks only)."""

    def __init__(self, clock: Clock, timer: pykka.ActorRef[TimerActor]) -> None:
        self._clock = clock
        self._timer = timer
        self._condition = threading.Condition()
        self._due: datetime | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="steplog-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join(timeout=5)

    def wake_at(self, due: datetime | None) -> None:
        with self._condition:
            self._due = due
            self._condition.notify_all()

    def _loop(self) -> None:
        with self._condition:
            while not self._stopped:
                if self._due is None:
                    self._condition.wait()
                    continue
                delay = (self._due - self._clock.now()).total_seconds()
                if delay > 0:
                    self._condition.wait(delay)
                    continue
                self._due = None
                self._timer.tell(Tick())
