"""Admission: which ready runs may execute now, under concurrency limits.

A run executing an invocation holds one slot of each of its constraints, a (key, limit) pair: the
function's own limit, and each ``Concurrency`` rule's key for the run's event. It gives them back
when the invocation ends (it completed, failed, was cancelled, or suspended to sleep, wait or
retry). A sleeping or waiting run holds nothing; when it resumes it asks again.

A run that does not fit waits in the queue of the first constraint that is full; when a slot of
that key frees, the queue's first run is checked against all its constraints again and either
starts or moves to the queue of the next full one (or of a key on which a run ranked before it
waits, so that a run of another function queued earlier on a shared key is not passed). Queues are ordered by rank: the time the run
became ready, minus its priority in seconds, then arrival. So each key is served first in, first
out (best effort across keys, as in Inngest), and a run with priority 60 goes ahead of runs that
became ready up to a minute before it.

Limits compare with the count of the key, so a key shared by two functions ("env" scope) with
different limits is checked by each run against its own function's limit, as Inngest does.
Slots live in memory only: after a crash no invocation executes, so none is held.

Pure and single-threaded; the actor runtime guards its one instance with a lock.
"""

from __future__ import annotations

import heapq
import itertools

import attrs

Constraint = tuple[str, int]
"""(key, limit)"""


@attrs.frozen
class _Waiting:
    run_id: str
    constraints: tuple[Constraint, ...]
    rank: float
    order: int
    """Arrival order: breaks ties of rank."""
    owner: str
    """Whose run it is (a function id): admission hands back (owner, run_id)."""


class Admission:
    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        self._holding: dict[str, tuple[Constraint, ...]] = {}
        self._queues: dict[str, list[tuple[float, int, str]]] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._order = itertools.count()

    def offer(self, run_id: str, owner: str, constraints: tuple[Constraint, ...], rank: float) -> bool:
        """A run is ready: True if it may execute now (its slots are taken), else it waits its turn."""
        if run_id in self._holding or run_id in self._waiting:
            return False
        order = next(self._order)
        blocking = self._first_full(constraints) or self._queued_ahead(constraints, (rank, order))
        if blocking is None:
            self._take(run_id, constraints)
            return True
        waiting = _Waiting(run_id, constraints, rank, order, owner)
        self._waiting[run_id] = waiting
        self._enqueue(blocking, waiting)
        return False

    def release(self, run_id: str) -> list[tuple[str, str]]:
        """A run's invocation ended (or a waiting run is withdrawn): the runs that may start now, as (owner, run_id)."""
        started: list[tuple[str, str]] = []
        withdrawn = self._waiting.pop(run_id, None)
        if withdrawn is not None:  # its queue entry is skipped when reached; runs it held back may go
            for key, _ in withdrawn.constraints:
                self._drain(key, started)
            return started
        held = self._holding.pop(run_id, ())
        for key, _ in held:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
        for key, _ in held:
            self._drain(key, started)
        return started

    def holds(self, run_id: str) -> bool:
        return run_id in self._holding

    def is_waiting(self, run_id: str) -> bool:
        return run_id in self._waiting

    def executing(self, key: str) -> int:
        """How many runs hold a slot of ``key`` now."""
        return self._active.get(key, 0)

    def counts(self) -> dict[str, int]:
        """Every key with a slot held, and how many."""
        return dict(self._active)

    def waiting_count(self) -> int:
        return len(self._waiting)

    def _first_full(self, constraints: tuple[Constraint, ...]) -> str | None:
        for key, limit in constraints:
            if self._active.get(key, 0) >= limit:
                return key
        return None

    def _queued_ahead(self, constraints: tuple[Constraint, ...], place: tuple[float, int]) -> str | None:
        """A key of these on which a run ranked before ``place`` (rank, arrival) waits (it must not be passed)."""
        for key, _ in constraints:
            queue = self._queues.get(key)
            while queue and queue[0][2] not in self._waiting:
                heapq.heappop(queue)
            if queue and queue[0][:2] < place:
                return key
        return None

    def _take(self, run_id: str, constraints: tuple[Constraint, ...]) -> None:
        self._holding[run_id] = constraints
        for key, _ in constraints:
            self._active[key] = self._active.get(key, 0) + 1

    def _enqueue(self, key: str, waiting: _Waiting) -> None:
        heapq.heappush(self._queues.setdefault(key, []), (waiting.rank, waiting.order, waiting.run_id))

    def _drain(self, key: str, started: list[tuple[str, str]]) -> None:
        queue = self._queues.get(key)
        while queue:
            _, _, run_id = queue[0]
            waiting = self._waiting.get(run_id)
            if waiting is None or key not in dict(waiting.constraints):
                heapq.heappop(queue)  # withdrawn, or moved to another key's queue
                continue
            full = self._first_full(waiting.constraints)
            if full == key:
                break
            heapq.heappop(queue)
            blocking = full or self._queued_ahead(waiting.constraints, (waiting.rank, waiting.order))
            if blocking is not None:  # full, or a run that was ready before it waits on that key
                self._enqueue(blocking, waiting)
                continue
            del self._waiting[run_id]
            self._take(run_id, waiting.constraints)
            started.append((waiting.owner, run_id))
        if queue is not None and not queue:
            del self._queues[key]
