"""The store writer's group commit: one request the store cannot write fails alone, not the others
that shared its transaction; a storage failure still fails them all and stops the engine."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from steplog.actors.messages import Commit, Reply
from steplog.actors.writer import StoreWriter
from steplog.engine import ManualClock, RunProjector
from steplog.eventstore import Append, NewEntry, SqliteEventStore, StorageError, StreamWrite

START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _append(stream: str, data: dict[str, object]) -> Append:
    return Append((StreamWrite(stream, (NewEntry("test.entry", data),)),))


def _grouped(writer: StoreWriter, *requests: Commit) -> None:
    """Hand the writer several requests as one group: it flushes when its inbox is empty."""
    writer.actor_inbox.put(object())  # something more is queued: gather, do not flush yet
    for request in requests[:-1]:
        writer.on_receive(request)
    writer.actor_inbox.get()
    writer.on_receive(requests[-1])


@pytest.fixture
def store(tmp_path: Path) -> SqliteEventStore:
    return SqliteEventStore(tmp_path / "writer.db", RunProjector())


def test_a_request_the_store_cannot_encode_fails_alone(store: SqliteEventStore) -> None:
    failures: list[StorageError] = []
    writer = StoreWriter(store, ManualClock(START), failures.append)
    good, bad, later = Reply(), Reply(), Reply()
    _grouped(
        writer,
        Commit([_append("s/good", {"n": 1})], good),
        Commit([_append("s/bad", {"not json": {1, 2}})], bad),
        Commit([_append("s/later", {"n": 3})], later),
    )
    assert [c.entries[0].stream for c in good.get(timeout=5)] == ["s/good"]
    assert [c.entries[0].stream for c in later.get(timeout=5)] == ["s/later"]
    with pytest.raises(TypeError):
        bad.get(timeout=5)
    assert failures == []
    assert [entry.stream for entry in store.read_all()] == ["s/good", "s/later"]
    store.close()


class FailingStore(SqliteEventStore):
    def commit(self, appends: Any, *, now: datetime) -> Any:
        raise StorageError("SQLite failed to commit: disk I/O error")


def test_a_storage_failure_still_fails_the_whole_group_and_stops(tmp_path: Path) -> None:
    failures: list[StorageError] = []
    store = FailingStore(tmp_path / "failing.db", RunProjector())
    writer = StoreWriter(store, ManualClock(START), failures.append)
    first, second = Reply(), Reply()
    _grouped(writer, Commit([_append("s/a", {})], first), Commit([_append("s/b", {})], second))
    for reply in (first, second):
        with pytest.raises(StorageError, match="disk I/O error"):
            reply.get(timeout=5)
    assert len(failures) == 1
    store.close()
