"""SQLite specifics of the event store, on a real file: pragmas, durability across reopen, a schema
that plain sqlite-utils can read, several stores on one file, and what a storage failure does."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

import steplog.eventstore.sqlite as sqlite_backend
from steplog.eventstore import (
    Append,
    Committed,
    ConcurrencyError,
    NewEntry,
    SqliteEventStore,
    StorageError,
    StoreBusyError,
    StreamWrite,
)


@pytest.fixture
def open_store(db_path: Path, items_projector: Any) -> Iterator[Callable[..., SqliteEventStore]]:
    """Open stores on the test's file (several may be open at once); all are closed at teardown."""
    opened: list[SqliteEventStore] = []

    def open_(**kwargs: Any) -> SqliteEventStore:
        store = SqliteEventStore(db_path, items_projector, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., SqliteEventStore]) -> SqliteEventStore:
    return open_store()


def raw(path: Path | str) -> sqlite3.Connection:
    """A plain connection that does not wait for locks."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


def pragma(conn: sqlite3.Connection, name: str) -> Any:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def reader_in_thread(store: SqliteEventStore) -> sqlite3.Connection:
    """The reader connection the store gives another thread."""
    box: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: box.append(store._reader()))
    thread.start()
    thread.join()
    return box[0]


def item(id_: str, **columns: Any) -> NewEntry:
    return NewEntry("item.added", {"id": id_, **columns})


# -- pragmas -----------------------------------------------------------------------------------------


def test_journal_mode_is_wal(store: SqliteEventStore, db_path: Path) -> None:
    assert pragma(store._writer, "journal_mode") == "wal"
    assert pragma(store._reader(), "journal_mode") == "wal"
    conn = raw(db_path)  # WAL is a property of the file: a plain connection sees it too
    try:
        assert pragma(conn, "journal_mode") == "wal"
    finally:
        conn.close()


def test_synchronous_is_full_by_default(store: SqliteEventStore) -> None:
    FULL = 2
    assert store.synchronous == "FULL"
    assert pragma(store._writer, "synchronous") == FULL
    assert pragma(store._reader(), "synchronous") == FULL
    assert pragma(reader_in_thread(store), "synchronous") == FULL


def test_synchronous_normal_when_asked(open_store: Callable[..., SqliteEventStore]) -> None:
    NORMAL = 1
    store = open_store(synchronous="NORMAL")
    assert pragma(store._writer, "synchronous") == NORMAL
    assert pragma(store._reader(), "synchronous") == NORMAL


def test_an_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    """SQLite would silently take an unknown mode as NORMAL: durability must be explicit."""
    with pytest.raises(ValueError, match="BOGUS"):
        SqliteEventStore(db_path, synchronous="BOGUS")  # type: ignore[arg-type]


def test_busy_timeout_is_set_on_every_connection(store: SqliteEventStore) -> None:
    assert sqlite_backend.BUSY_TIMEOUT_MS > 0
    assert pragma(store._writer, "busy_timeout") == sqlite_backend.BUSY_TIMEOUT_MS
    assert pragma(store._reader(), "busy_timeout") == sqlite_backend.BUSY_TIMEOUT_MS
    assert pragma(reader_in_thread(store), "busy_timeout") == sqlite_backend.BUSY_TIMEOUT_MS


# -- durability across close and reopen --------------------------------------------------------------


def test_data_survives_close_and_reopen(open_store: Callable[..., SqliteEventStore], now: datetime) -> None:
    first = open_store()
    first.append("i", [item("i1", name="bolt", qty=3)], now=now)
    keyed_append = Append((StreamWrite("e", (NewEntry("got", {"n": 1}),)),), key="k", key_window_s=60)
    [keyed] = first.commit([keyed_append], now=now)
    log, rows = first.read_all(), first.query("items")
    first.close()

    second = open_store()
    assert second.read_all() == log
    assert second.query("items") == rows == [{"id": "i1", "name": "bolt", "qty": 3, "price": None, "owner": None}]
    assert second.stream_version("i") == 1 and second.last_position() == 2
    # Versions and positions continue; the idempotency key is still remembered.
    [entry] = second.append("i", [item("i2")], now=now, expected_version=1)
    assert (entry.version, entry.position) == (2, 3)
    [dup] = second.commit(
        [Append((StreamWrite("e", (NewEntry("got", {"n": 2}),)),), key="k", key_window_s=60)],
        now=now + timedelta(seconds=30),
    )
    assert isinstance(keyed, Committed) and isinstance(dup, Committed)
    assert dup.duplicate_of == keyed.entries[0].position
    assert second.stream_version("e") == 1
    assert second.rebuild_projections(apply=False) == []


# -- the schema, as plain sqlite-utils sees it -------------------------------------------------------


def test_the_schema_is_readable_by_plain_sqlite_utils(store: SqliteEventStore, db_path: Path, now: datetime) -> None:
    store.append("i", [item("i1", name="bolt ✓", qty=3, price=0.5)], now=now)
    store.commit(
        [Append((StreamWrite("o1", (NewEntry("line.added", {"sku": "i1", "nested": {"a": [1, None]}}),)),), key="k")],
        now=now,
    )
    store.close()

    db = sqlite_utils.Database(db_path)
    try:
        assert {"log", "idempotency_keys", "items", "lines"} <= set(db.table_names())
        log = db["log"]
        assert log.pks == ["position"]
        assert set(log.columns_dict) == {"position", "stream", "version", "type", "data", "recorded_at", "checksum"}
        assert any(ix.columns == ["stream", "version"] and ix.unique for ix in log.indexes)
        rows = list(log.rows_where(order_by="position"))
        assert [(r["position"], r["stream"], r["version"], r["type"]) for r in rows] == [
            (1, "i", 1, "item.added"), (2, "o1", 1, "line.added"),
        ]
        assert all(isinstance(r["data"], str) for r in rows)
        assert json.loads(rows[0]["data"]) == {"id": "i1", "name": "bolt ✓", "qty": 3, "price": 0.5}
        assert json.loads(rows[1]["data"]) == {"sku": "i1", "nested": {"a": [1, None]}}
        assert rows[0]["recorded_at"] == "2026-01-01T12:00:00.000000Z"
        # SQLite's own JSON functions can read the data column.
        assert db.execute("SELECT json_extract(data, '$.name') FROM log WHERE position = 1").fetchone()[0] == "bolt ✓"

        assert db["idempotency_keys"].pks == ["key"]
        assert [(r["key"], r["position"]) for r in db["idempotency_keys"].rows] == [("k", 2)]

        assert db["items"].pks == ["id"]
        assert list(db["items"].rows) == [{"id": "i1", "name": "bolt ✓", "qty": 3, "price": 0.5, "owner": None}]
        assert any(ix.columns == ["owner", "qty"] for ix in db["items"].indexes)
        assert db["lines"].pks == ["order_id", "line"]
        assert list(db["lines"].rows) == [{"order_id": "o1", "line": 1, "sku": "i1"}]
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION
    finally:
        db.close()


# -- two stores on one file --------------------------------------------------------------------------


def test_a_second_store_on_the_same_file_is_seen_by_the_first(
    open_store: Callable[..., SqliteEventStore], now: datetime
) -> None:
    a, b = open_store(), open_store()
    a.append("s", [NewEntry("x", {"by": "a"})], now=now)
    assert a.stream_version("s") == 1  # a has now cached version 1 for "s"

    b.append("s", [NewEntry("x", {"by": "b"})], now=now, expected_version=1)

    assert [e.data["by"] for e in a.read_stream("s")] == ["a", "b"]
    assert a.stream_version("s") == 2
    assert a.last_position() == 2
    # A stale expected version is refused as a ConcurrencyError, not as a broken store.
    with pytest.raises(ConcurrencyError) as caught:
        a.append("s", [NewEntry("x", {"by": "a-stale"})], now=now, expected_version=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    [entry] = a.append("s", [NewEntry("x", {"by": "a"})], now=now, expected_version=2)
    assert (entry.version, entry.position) == (3, 3)

    # And without an expected version, a picks the right version and position after b writes again.
    b.append("t", [NewEntry("x", {"by": "b"})], now=now)
    b.append("s", [NewEntry("x", {"by": "b"})], now=now)
    [entry] = a.append("s", [NewEntry("x", {"by": "a"})], now=now)
    assert (entry.version, entry.position) == (5, 6)
    assert [e.version for e in b.read_stream("s")] == [1, 2, 3, 4, 5]
    assert [e.position for e in a.read_all()] == [1, 2, 3, 4, 5, 6]


def test_idempotency_keys_are_shared_by_stores_on_one_file(
    open_store: Callable[..., SqliteEventStore], now: datetime
) -> None:
    a, b = open_store(), open_store()
    append = Append((StreamWrite("s", (NewEntry("x"),)),), key="k", key_window_s=60)
    [first] = a.commit([append], now=now)
    [dup] = b.commit([append], now=now)
    assert isinstance(first, Committed) and isinstance(dup, Committed)
    assert (first.duplicate_of, dup.duplicate_of) == (None, 1)
    assert a.stream_version("s") == 1


def test_projection_rows_written_by_another_store_are_consistent(
    open_store: Callable[..., SqliteEventStore], now: datetime
) -> None:
    a, b = open_store(), open_store()
    a.append("i", [item("i1", qty=1)], now=now)
    b.append("i", [item("i1", name="renamed")], now=now)
    assert a.query("items") == [{"id": "i1", "name": "renamed", "qty": 1, "price": None, "owner": None}]
    assert a.rebuild_projections(apply=False) == []


# -- reading while writing ---------------------------------------------------------------------------


class Hooked:
    """Wraps the writer connection: runs ``before`` ahead of matching statements, which may raise."""

    def __init__(self, conn: sqlite3.Connection, prefix: str, before: Callable[[], None]) -> None:
        self._conn = conn
        self.prefix = prefix
        self.before = before
        self.calls = 0

    def _hook(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(self.prefix):
            self.calls += 1
            self.before()

    def execute(self, sql: str, *args: Any) -> Any:
        self._hook(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._hook(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def failing(message: str = "disk I/O error") -> Callable[[], None]:
    def fail() -> None:
        raise sqlite3.OperationalError(message)

    return fail


def test_readers_never_see_an_uncommitted_write(
    store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    store.append("other", [NewEntry("x")], now=now)
    seen: list[Any] = []

    def look() -> None:
        seen.append((len(store.read_all()), store.last_position(), store.stream_version("s"), store.query("items")))
        seen.append(reader_in_thread_view(store))

    monkeypatch.setattr(store, "_writer", Hooked(store._writer, "COMMIT", look))
    store.append("s", [item("i1"), item("i2")], now=now)

    assert seen == [(1, 1, 0, []), (1, 1, 0, [])]
    assert (len(store.read_all()), store.last_position(), store.stream_version("s")) == (3, 3, 2)


def reader_in_thread_view(store: SqliteEventStore) -> tuple[int, int, int, list[Any]]:
    box: list[tuple[int, int, int, list[Any]]] = []

    def look() -> None:
        box.append((len(store.read_all()), store.last_position(), store.stream_version("s"), store.query("items")))

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return box[0]


def test_reads_from_other_threads_see_committed_entries(store: SqliteEventStore, now: datetime) -> None:
    store.append("s", [NewEntry("x", {"n": 1})], now=now)
    assert reader_in_thread_view(store)[:3] == (1, 1, 1)
    store.append("s", [NewEntry("x", {"n": 2})], now=now)
    assert reader_in_thread_view(store)[:3] == (2, 2, 2)


# -- storage failures --------------------------------------------------------------------------------


def assert_nothing_written_after_the_first(store: SqliteEventStore, db_path: Path) -> None:
    expected_log = [("before", 1)]
    assert [(e.stream, e.version) for e in store.read_all()] == expected_log
    assert store.stream_version("s") == 0 and store.last_position() == 1
    assert [r["id"] for r in store.query("items")] == ["i0"]
    conn = raw(db_path)
    try:
        assert conn.execute("SELECT stream, version FROM log ORDER BY position").fetchall() == expected_log
        assert conn.execute("SELECT id FROM items").fetchall() == [("i0",)]
        assert conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 0
        # The failed transaction was rolled back: the write lock is free.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "prefix",
    ["COMMIT", "INSERT INTO LOG", "INSERT INTO IDEMPOTENCY_KEYS", "INSERT INTO [ITEMS]"],
    ids=["commit", "log-insert", "key-insert", "projection-upsert"],
)
def test_a_storage_failure_raises_storage_error_and_breaks_the_store(
    store: SqliteEventStore,
    open_store: Callable[..., SqliteEventStore],
    monkeypatch: pytest.MonkeyPatch,
    db_path: Path,
    now: datetime,
    prefix: str,
) -> None:
    store.append("before", [item("i0")], now=now)
    hooked = Hooked(store._writer, prefix, failing("disk I/O error"))
    monkeypatch.setattr(store, "_writer", hooked)

    keyed = Append((StreamWrite("s", (item("i1"), item("i2"))),), key="k", key_window_s=60)
    with pytest.raises(StorageError, match="disk I/O error") as caught:
        store.commit([keyed], now=now)
    assert hooked.calls == 1
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert not store._writer.in_transaction
    assert_nothing_written_after_the_first(store, db_path)

    # Broken: writes are refused without touching the database, even once the fault is gone.
    hooked.before = lambda: None
    for write in (
        lambda: store.append("s", [NewEntry("x")], now=now),
        lambda: store.commit([Append((StreamWrite("t", (NewEntry("x"),)),))], now=now),
        lambda: store.rebuild_projections(apply=True),
    ):
        with pytest.raises(StorageError, match="broken"):
            write()
    assert_nothing_written_after_the_first(store, db_path)

    # A fresh store on the file sees only what was committed, and can write.
    fresh = open_store()
    assert [(e.stream, e.version) for e in fresh.read_all()] == [("before", 1)]
    [committed] = fresh.commit([keyed], now=now)
    assert isinstance(committed, Committed) and committed.duplicate_of is None
    assert [e.position for e in committed.entries] == [2, 3]
    assert fresh.rebuild_projections(apply=False) == []


def test_a_failure_before_writing_does_not_leave_a_transaction_open(
    store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch, db_path: Path, now: datetime
) -> None:
    store.append("before", [item("i0")], now=now)
    hooked = Hooked(store._writer, "PRAGMA DATA_VERSION", failing("disk I/O error"))
    monkeypatch.setattr(store, "_writer", hooked)

    with pytest.raises(StorageError, match="disk I/O error"):
        store.append("s", [item("i1")], now=now)
    assert hooked.calls == 1
    assert not store._writer.in_transaction
    assert_nothing_written_after_the_first(store, db_path)


def test_a_busy_database_is_a_busy_error_that_does_not_break_the_store(
    db_path: Path, items_projector: Any, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 0)  # fail at once instead of waiting
    store = SqliteEventStore(db_path, items_projector)
    try:
        store.append("before", [item("i0")], now=now)
        other = raw(db_path)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusyError, match="locked"):
                store.append("s", [item("i1")], now=now)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert_nothing_written_after_the_first(store, db_path)
        [entry] = store.append("s", [item("i1")], now=now, expected_version=0)
        assert (entry.position, entry.version) == (2, 1)
    finally:
        store.close()


def test_a_projector_error_rolls_back_without_breaking_the_store(
    store: SqliteEventStore, db_path: Path, now: datetime
) -> None:
    store.append("before", [item("i0")], now=now)
    with pytest.raises(KeyError):
        store.commit(
            [
                Append((StreamWrite("s", (item("i1"),)),)),
                Append((StreamWrite("t", (NewEntry("bad.column", {"id": "x"}),)),)),
            ],
            now=now,
        )
    assert not store._writer.in_transaction
    assert_nothing_written_after_the_first(store, db_path)
    [entry] = store.append("s", [item("i1")], now=now, expected_version=0)
    assert entry.position == 2


def test_an_in_memory_database_works(items_projector: Any, now: datetime) -> None:
    store = SqliteEventStore(":memory:", items_projector)
    try:
        store.append("s", [item("i1", qty=2)], now=now)
        assert [(e.stream, e.version) for e in store.read_all()] == [("s", 1)]
        assert store.query("items", where={"qty": 2})[0]["id"] == "i1"
        assert store.stream_version("s") == 1 and store.last_position() == 1
    finally:
        store.close()


# -- read-only stores --------------------------------------------------------------------------------


def test_a_read_only_store_reads_and_refuses_writes(
    open_store: Callable[..., SqliteEventStore], db_path: Path, now: datetime
) -> None:
    writer = open_store()
    writer.append("i", [item("i1", qty=1)], now=now)
    reader = open_store(read_only=True)
    assert [(e.stream, e.version) for e in reader.read_all()] == [("i", 1)]
    assert reader.query("items", where={"qty": 1})[0]["id"] == "i1"

    # It sees what the writer commits later.
    writer.append("i", [item("i2", qty=2)], now=now)
    assert reader.stream_version("i") == 2 and reader.last_position() == 2
    assert sorted(r["id"] for r in reader.query("items")) == ["i1", "i2"]

    for write in (
        lambda: reader.append("i", [item("i3")], now=now),
        lambda: reader.commit([Append((StreamWrite("j", (NewEntry("x"),)),))], now=now),
        lambda: reader.rebuild_projections(apply=True),
    ):
        with pytest.raises(StorageError, match="read-only"):
            write()
    assert writer.last_position() == 2
    # Refusing a write does not break it, nor the writer.
    assert reader.rebuild_projections(apply=False) == []
    writer.append("i", [item("i3")], now=now, expected_version=2)
    assert reader.last_position() == 3


def test_a_read_only_store_reports_tampered_rows(
    open_store: Callable[..., SqliteEventStore], db_path: Path, now: datetime
) -> None:
    writer = open_store()
    writer.append("i", [item("i1", qty=1)], now=now)
    reader = open_store(read_only=True)
    conn = raw(db_path)
    try:
        conn.execute("UPDATE items SET qty = 5 WHERE id = 'i1'")
    finally:
        conn.close()
    [difference] = reader.rebuild_projections(apply=False)
    assert difference.live is not None and difference.rebuilt is not None
    assert (difference.table, difference.key) == ("items", ("i1",))
    assert (difference.live["qty"], difference.rebuilt["qty"]) == (5, 1)
    assert writer.rebuild_projections(apply=True) == [difference]
    assert reader.rebuild_projections(apply=False) == []


def test_a_read_only_store_needs_an_existing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no such file"):
        SqliteEventStore(missing, read_only=True)
    assert not missing.exists()


def test_checking_projections_does_not_take_the_write_lock(
    db_path: Path, items_projector: Any, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 0)  # a wait for the lock would fail at once
    store = SqliteEventStore(db_path, items_projector)
    try:
        store.append("i", [item("i1", qty=1)], now=now)
        other = raw(db_path)
        other.execute("BEGIN IMMEDIATE")
        try:
            assert store.rebuild_projections(apply=False) == []
            with pytest.raises(StoreBusyError):
                store.rebuild_projections(apply=True)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.rebuild_projections(apply=True) == []
    finally:
        store.close()
