"""The engine's concurrency slots, shared by every function's supervisor.

A thin lock around ``engine.flow.Admission``: one instance per engine, because a concurrency key
of scope "env" is shared by functions, and so by supervisors on different threads. When a
release lets runs of another function start, the supervisor that released tells theirs.
"""

from __future__ import annotations

import threading

from steplog.engine.flow import Admission, Constraint


class Slots:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._admission = Admission()

    def offer(self, run_id: str, owner: str, constraints: tuple[Constraint, ...], rank: float) -> bool:
        with self._lock:
            return self._admission.offer(run_id, owner, constraints, rank)

    def release(self, run_id: str) -> list[tuple[str, str]]:
        with self._lock:
            return self._admission.release(run_id)

    def is_waiting(self, run_id: str) -> bool:
        with self._lock:
            return self._admission.is_waiting(run_id)

    def counts(self) -> dict[str, int]:
        """Every key with a slot held now, and how many (for tests and monitoring)."""
        with self._lock:
            return self._admission.counts()

    def waiting_count(self) -> int:
        with self._lock:
            return self._admission.waiting_count()
