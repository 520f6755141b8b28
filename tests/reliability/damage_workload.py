"""What the torn-WAL and corruption tests (test_torn_wal.py, test_corruption.py) share: a store
that keeps every transaction in its WAL and notes where each commit ended, and the workload whose
files they cut and damage (three-step runs, and runs that sleep between two steps)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steplog.engine import ManualClock
from steplog.eventstore import Append, Committed, ConcurrencyError, SqliteEventStore

import steplog

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SLEEP_S = 60
STEPS_EVENT = "damage/steps"
SLEEP_EVENT = "damage/sleep"


class NoCheckpointStore(SqliteEventStore):
    """A store whose connections never checkpoint (the WAL keeps every transaction), and which
    records each committed transaction's last position once its commit has returned."""

    committed: list[int]

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def commit(self, appends: Sequence[Append], *, now: datetime) -> list[Committed | ConcurrencyError]:
        results = super().commit(appends, now=now)
        self.committed.append(self.last_position())
        return results


def functions(
    executed: list[tuple[str, str]] | None = None, db: str | Path = ":memory:", clock: ManualClock | None = None
) -> steplog.Steplog:
    """Three-step runs and runs that sleep between two steps; ``executed`` hears of each body run."""
    client = steplog.Steplog(db=db, clock=clock)
    heard = executed if executed is not None else []

    def body(ctx: steplog.Context, step: str, value: Any) -> Any:
        heard.append((ctx.run_id, step))
        return value

    @client.create_function(fn_id="steps", trigger=steplog.TriggerEvent(event=STEPS_EVENT))
    def steps(ctx: steplog.Context) -> int:
        n = int(ctx.event.data["n"])
        a = ctx.step.run("a", lambda: body(ctx, "a", n * 2))
        b = ctx.step.run("b", lambda: body(ctx, "b", a + 1))
        return int(ctx.step.run("c", lambda: body(ctx, "c", b * 10)))

    @client.create_function(fn_id="sleeper", trigger=steplog.TriggerEvent(event=SLEEP_EVENT))
    def sleeper(ctx: steplog.Context) -> str:
        n = int(ctx.event.data["n"])
        first = ctx.step.run("before", lambda: body(ctx, "before", f"n={n}"))
        ctx.step.sleep("nap", SLEEP_S)
        return str(ctx.step.run("after", lambda: body(ctx, "after", first + "!")))

    return client


def expected_output(function_id: str, data: dict[str, Any]) -> Any:
    n = int(data["n"])
    return (n * 2 + 1) * 10 if function_id == "steps" else f"n={n}!"
