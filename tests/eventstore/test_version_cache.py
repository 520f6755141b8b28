"""The SQLite writer's cache of stream versions stays bounded, keeps the streams written lately,
and never gives a wrong version for a stream it dropped.

A regression test: the soak found the cache holding one entry for every stream ever written (each
run has its own streams), up to 100,000, so the engine's memory grew with every run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import steplog.eventstore.sqlite as sqlite_backend
from steplog.eventstore import ConcurrencyError, NewEntry, SqliteEventStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BOUND = 100


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SqliteEventStore:
    monkeypatch.setattr(sqlite_backend, "VERSION_CACHE_STREAMS", BOUND)
    store = SqliteEventStore(tmp_path / "versions.db", synchronous="OFF")
    store.assume_sole_writer()  # as the engine does: the cache is never cleared by a check
    return store


def write(store: SqliteEventStore, stream: str, expected: int) -> None:
    store.append(stream, [NewEntry("thing.happened", {"n": expected + 1})], now=NOW, expected_version=expected)


def test_the_cache_holds_at_most_its_bound_however_many_streams_are_written(store: SqliteEventStore) -> None:
    for n in range(5 * BOUND):
        write(store, f"run/{n}", 0)
        assert len(store._versions) <= BOUND
    assert len(store._versions) >= BOUND // 2  # still a cache


def test_a_stream_written_again_and_again_stays_cached_while_others_come_and_go(store: SqliteEventStore) -> None:
    for n in range(5 * BOUND):
        write(store, "run/busy", n)
        write(store, f"run/{n}", 0)
    assert store._versions["run/busy"] == 5 * BOUND
    assert "run/0" not in store._versions


def test_a_dropped_stream_is_read_back_from_the_log_with_its_right_version(store: SqliteEventStore) -> None:
    write(store, "run/early", 0)
    write(store, "run/early", 1)
    for n in range(3 * BOUND):
        write(store, f"run/{n}", 0)
    assert "run/early" not in store._versions
    with pytest.raises(ConcurrencyError):
        write(store, "run/early", 0)  # a stale expectation is refused, as with the cache
    write(store, "run/early", 2)
    assert store.stream_version("run/early") == 3
