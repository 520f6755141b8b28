"""Each log entry's checksum in the SQLite store: what it sums, that every read verifies it, the
damage it reports (CorruptEntryError, for that read alone), ``check``, and the migration of a
version-1 file, whose rows have no checksum."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from steplog.eventstore import (
    CorruptEntryError,
    EventStoreError,
    NewEntry,
    SqliteEventStore,
    StorageError,
)
from steplog.eventstore.checksums import entry_checksum, text_checksum
from steplog.eventstore.sqlite import SCHEMA_VERSION

FIELDS = (7, b"run/a", 3, b"step.completed", b"2026-01-01T12:00:00.000000Z", b'{"output":1}')


@pytest.fixture
def store(tmp_path: Path, items_projector: Any) -> Iterator[SqliteEventStore]:
    opened = SqliteEventStore(tmp_path / "log.db", items_projector, synchronous="OFF")
    yield opened
    opened.close()


def raw(store: SqliteEventStore) -> sqlite3.Connection:
    """A plain connection to the store's file, which writes behind the store's back."""
    return sqlite3.connect(store.path, isolation_level=None)


def fill(store: SqliteEventStore, now: datetime) -> None:
    store.append("item/1", [NewEntry("item.added", {"id": "i1", "qty": 1})], now=now)
    store.append("item/2", [NewEntry("item.added", {"id": "i2", "qty": 2})], now=now)
    store.append("item/1", [NewEntry("item.renamed", {"id": "i1", "name": "bolt ✓"})], now=now)


# -- the sum -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(FIELDS)))
def test_every_field_is_in_the_sum(index: int) -> None:
    changed = list(FIELDS)
    value = changed[index]
    changed[index] = value + 1 if isinstance(value, int) else value + b"x"
    assert entry_checksum(*changed) != entry_checksum(*FIELDS)  # type: ignore[arg-type]


def test_moving_bytes_between_fields_changes_the_sum() -> None:
    position, _, version, _, recorded_at, data = FIELDS
    first = entry_checksum(position, b"run/ab", version, b"c", recorded_at, data)
    second = entry_checksum(position, b"run/a", version, b"bc", recorded_at, data)
    third = entry_checksum(position, b"run/a", version, b"b", recorded_at + b"c", data)
    assert len({first, second, third}) == 3


def test_the_text_form_sums_the_utf8_bytes() -> None:
    assert text_checksum(1, "run/é", 2, "t", "now", '{"a":"✓"}') == entry_checksum(
        1, "run/é".encode(), 2, b"t", b"now", '{"a":"✓"}'.encode()
    )


def test_the_stored_checksum_is_the_sum_of_the_stored_columns(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    with raw(store) as conn:
        rows = conn.execute("SELECT position, stream, version, type, recorded_at, data, checksum FROM log").fetchall()
    assert len(rows) == 3
    for *columns, stored in rows:
        assert stored == text_checksum(*columns)


# -- damage on read ----------------------------------------------------------------------------------


def test_a_changed_payload_is_refused_on_every_read_and_named(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    with raw(store) as conn:  # qty 1 -> 7: still valid JSON, so only the checksum can tell
        conn.execute("UPDATE log SET data = replace(data, '\"qty\":1', '\"qty\":7') WHERE position = 1")
    with pytest.raises(CorruptEntryError) as caught:
        store.read_stream("item/1")
    error = caught.value
    assert (error.position, error.stream) == (1, "item/1")
    assert "checksum does not match" in str(error) and f"steplog check --db {store.path}" in str(error)
    with pytest.raises(CorruptEntryError):
        store.read_all()
    with pytest.raises(CorruptEntryError):
        store.rebuild_projections(apply=False)
    assert [e.data["qty"] for e in store.read_stream("item/2")] == [2]  # the other stream reads on
    assert [e.position for e in store.read_all(after=1)] == [2, 3]


def test_a_corrupt_entry_is_not_a_storage_failure() -> None:
    assert issubclass(CorruptEntryError, EventStoreError)
    assert not issubclass(CorruptEntryError, StorageError)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE log SET data = '{\"id\": ', checksum = NULL WHERE position = 2", "not valid \\(JSONDecodeError"),
        ("UPDATE log SET data = '[1, 2]', checksum = NULL WHERE position = 2", "a JSON list, not an object"),
        ("UPDATE log SET data = CAST(X'7bff7d' AS TEXT), checksum = NULL WHERE position = 2", "UnicodeDecodeError"),
        ("UPDATE log SET checksum = checksum + 1 WHERE position = 2", "checksum does not match"),
        ("UPDATE log SET recorded_at = '2026-01-01T12:00:00.000001Z' WHERE position = 2", "checksum does not match"),
    ],
)
def test_each_kind_of_damage_is_a_corrupt_entry(store: SqliteEventStore, now: datetime, sql: str, problem: str) -> None:
    fill(store, now)
    with raw(store) as conn:
        conn.execute(sql)
    with pytest.raises(CorruptEntryError, match=problem) as caught:
        store.read_stream("item/2")
    assert (caught.value.position, caught.value.stream) == (2, "item/2")


def test_a_gap_in_a_stream_is_refused(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    store.append("item/1", [NewEntry("item.renamed", {"id": "i1", "name": "nut"})], now=now)
    with raw(store) as conn:
        conn.execute("DELETE FROM log WHERE position = 3")  # version 2 of item/1
    with pytest.raises(CorruptEntryError, match="expected version 2, found version 3"):
        store.read_stream("item/1")
    assert [e.version for e in store.read_stream("item/1", after=2)] == [3]


# -- check -------------------------------------------------------------------------------------------


def test_check_of_a_sound_file_is_ok(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    report = store.check()
    assert report.ok
    assert (report.entries, report.unverified, report.integrity, report.damaged, report.differences) == (3, 0, (), (), ())


def test_check_lists_each_damaged_entry_and_compares_no_projection(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    with raw(store) as conn:
        conn.execute("UPDATE log SET data = replace(data, 'i2', 'i9') WHERE position = 2")
        conn.execute("DELETE FROM log WHERE position = 3")
    report = store.check()
    assert not report.ok
    assert report.entries == 2
    assert [(d.position, d.stream) for d in report.damaged] == [(2, "item/2")]
    assert "checksum does not match" in report.damaged[0].problem
    assert report.differences is None  # a damaged log is not rebuilt


def test_check_finds_a_missing_entry_and_a_changed_projection(store: SqliteEventStore, now: datetime) -> None:
    fill(store, now)
    store.append("item/3", [NewEntry("item.added", {"id": "i3"})], now=now)
    with raw(store) as conn:
        conn.execute("UPDATE items SET qty = 5 WHERE id = 'i2'")
    report = store.check()
    assert report.damaged == () and report.integrity == ()
    assert [(d.table, d.key) for d in report.differences or ()] == [("items", ("i2",))]
    with raw(store) as conn:
        conn.execute("DELETE FROM log WHERE position = 3")
    damaged = store.check().damaged
    assert [(d.position, d.stream, d.problem) for d in damaged] == [
        (4, "item/3", "the log skips from position 2 to 4"),
    ]


# -- schema 1 -> 2 -----------------------------------------------------------------------------------


def version_1_file(path: Path) -> None:
    """A log as steplog wrote it before checksums: the schema-1 table and two rows."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE log (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,"
            " type TEXT NOT NULL, data TEXT NOT NULL, recorded_at TEXT NOT NULL)"
        )
        conn.execute("CREATE UNIQUE INDEX idx_log_stream_version ON log (stream, version)")
        conn.executemany(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, '2025-01-01T00:00:00.000000Z')",
            [(1, "item/1", 1, "item.added", '{"id":"i1","qty":1}'), (2, "item/1", 2, "item.removed", '{"id":"i1"}')],
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_a_version_1_file_is_migrated_and_its_old_rows_stay_unverified(
    tmp_path: Path, now: datetime, items_projector: Any
) -> None:
    path = tmp_path / "old.db"
    version_1_file(path)
    reader = SqliteEventStore(path, read_only=True)  # before the migration: read as it is
    assert [e.type for e in reader.read_stream("item/1")] == ["item.added", "item.removed"]
    reader.close()

    store = SqliteEventStore(path, items_projector)
    store.append("item/1", [NewEntry("item.added", {"id": "i1", "qty": 4})], now=now)
    assert [e.version for e in store.read_stream("item/1")] == [1, 2, 3]
    report = store.check()
    assert (report.ok, report.entries, report.unverified) == (True, 3, 2)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert [row[0] is None for row in conn.execute("SELECT checksum FROM log ORDER BY position")] == [
            True, True, False,
        ]
    conn.close()
    again = SqliteEventStore(path, items_projector)  # opening a migrated file changes nothing
    assert again.check().unverified == 2
    again.close()


def test_a_file_from_a_newer_steplog_is_not_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteEventStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        SqliteEventStore(path)
