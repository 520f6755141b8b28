"""The event store on a SQLite file, through sqlite-utils.

Durability: WAL journal, ``synchronous=FULL`` by default (every commit is fsynced; group commit
makes that cheap), ``BEGIN IMMEDIATE`` for every write transaction, a ``busy_timeout`` so that
readers and a second process wait instead of failing. A failed write (I/O error, disk full)
rolls back and breaks the store: later writes raise ``StorageError`` instead of retrying in
place, because after a failed fsync the state of the file is unknown.

Every sqlite3 error is translated to ``StorageError`` here, and nowhere else.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import sqlite_utils
from steplog.eventstore.base import EventStore, KeyRecord, Plan, Range
from steplog.eventstore.errors import StorageError, StoreBusyError
from steplog.eventstore.projections import Change, Projector, Row, Table, Upsert, coalesce
from steplog.eventstore.records import Append, Entry

Synchronous = Literal["FULL", "NORMAL", "OFF", "EXTRA"]
_SYNCHRONOUS_MODES = ("FULL", "NORMAL", "OFF", "EXTRA")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}


class SqliteEventStore(EventStore):
    """The log and its projections in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        projector: Projector | None = None,
        *,
        synchronous: Synchronous = "FULL",
        read_only: bool = False,
    ) -> None:
        super().__init__(projector)
        if str(synchronous).upper() not in _SYNCHRONOUS_MODES:
            # SQLite would take an unknown mode silently as NORMAL.
            raise ValueError(f"synchronous={synchronous!r}: expected one of {', '.join(_SYNCHRONOUS_MODES)}")
        self.path = str(path)
        self.synchronous = synchronous
        self.read_only = read_only
        self._broken: StorageError | None = None
        self._write_lock = threading.Lock()
        self._readers = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if read_only and not Path(self.path).is_file():
            raise StorageError(f"cannot open {self.path} read-only: no such file")
        self._writer = self._connect()
        if not read_only:
            self._create_schema()
        # Stream versions and the last position, as this writer last committed them. Valid while
        # no other connection has committed, which PRAGMA data_version tells at each BEGIN.
        self._versions: dict[str, int] = {}
        self._position: int | None = None
        self._data_version: int | None = None
        self._committing: Plan | None = None
        self._statements: dict[tuple[str, tuple[str, ...]], str] = {}
        self._sole_writer = False

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA query_only = ON")
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as error:
            raise StorageError(f"cannot open {self.path}: {error}") from error
        with self._connections_lock:
            self._all_connections.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        self._check_open()
        if self.path == ":memory:":
            return self._writer
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            self._readers.conn = conn
        return conn

    def close(self) -> None:
        super().close()
        with self._connections_lock:
            for conn in self._all_connections:
                conn.close()
            self._all_connections.clear()

    # -- schema ------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        db = sqlite_utils.Database(self._writer)
        with self._translated("create the schema"):
            log = db.table("log")
            log.create(
                {"position": int, "stream": str, "version": int, "type": str, "data": str, "recorded_at": str},
                pk="position",
                not_null={"stream", "version", "type", "data", "recorded_at"},
                if_not_exists=True,
            )
            log.create_index(["stream", "version"], unique=True, if_not_exists=True)
            log.create_index(["type", "position"], if_not_exists=True)
            db.table("idempotency_keys").create(
                {"key": str, "position": int, "recorded_ts": float}, pk="key", if_not_exists=True
            )
            for table in self.projector.tables:
                self._create_table(db, table)
            self._writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _create_table(self, db: sqlite_utils.Database, table: Table) -> None:
        created = db.table(table.name)
        created.create(dict(table.columns), pk=table.key, if_not_exists=True)
        for columns in table.indexes:
            created.create_index(list(columns), if_not_exists=True)

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise StorageError(f"SQLite failed to {action} in {self.path}: {error}") from error

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._broken is not None:
            raise StorageError(f"the store is broken by an earlier failure: {self._broken}")
        if self.read_only:
            raise StorageError(f"{self.path} is open read-only")
        with self._write_lock:
            conn = self._writer
            self._begin(conn)
            with self._translated("begin a transaction"):
                try:
                    self._check_cache()
                except sqlite3.Error:
                    self._rollback()
                    raise
            try:
                yield
                conn.execute("COMMIT")
                self._remember(self._committing)
            except sqlite3.Error as error:
                self._forget()
                self._rollback()
                self._broken = StorageError(f"SQLite failed to commit to {self.path}: {error}")
                raise self._broken from error
            except BaseException:
                self._forget()
                self._rollback()
                raise
            finally:
                self._committing = None

    def _begin(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            if isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error)):
                waited = f"waited {BUSY_TIMEOUT_MS / 1000:g} s"
                raise StoreBusyError(
                    f"{self.path} is locked by another connection ({waited}); nothing was written"
                ) from error
            raise StorageError(f"SQLite failed to begin a transaction in {self.path}: {error}") from error

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        # A deferred transaction reads one consistent snapshot and, in WAL mode, blocks no writer.
        with self._write_lock:
            with self._translated("read a snapshot"):
                self._writer.execute("BEGIN")
            try:
                yield
            finally:
                self._rollback()

    def assume_sole_writer(self, sole: bool = True) -> None:
        """Promise that no other connection writes to the file (the engine holds its lock), so the
        writer's caches need no ``PRAGMA data_version`` check at each commit."""
        self._sole_writer = sole

    def _check_cache(self) -> None:
        if self._sole_writer:
            return
        data_version = self._writer.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:
            self._forget()
            self._data_version = data_version

    def _remember(self, plan: Plan | None) -> None:
        if plan is None:
            return
        if len(self._versions) > 100_000:
            self._versions.clear()
        self._versions.update(plan.versions)
        if plan.entries:
            self._position = plan.entries[-1].position

    def _forget(self) -> None:
        self._versions.clear()
        self._position = None

    def _rollback(self) -> None:
        try:
            self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- primitives used while planning a commit -------------------------------------------

    def _prefetch_versions(self, plan: Plan, appends: Sequence[Append]) -> None:
        # A send of many events opens many new streams; one query per 500 streams instead of one each.
        wanted = {
            write.stream
            for append in appends
            for write in (*append.writes, *append.on_duplicate)
            if write.stream not in self._versions
        }
        names = sorted(wanted)
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            sql = f"SELECT stream, max(version) FROM log WHERE stream IN ({marks}) GROUP BY stream"
            found = dict(self._writer.execute(sql, chunk).fetchall())
            for stream in chunk:
                plan.versions[stream] = int(found.get(stream) or 0)

    def _stream_version(self, stream: str) -> int:
        cached = self._versions.get(stream)
        if cached is not None:
            return cached
        row = self._writer.execute("SELECT max(version) FROM log WHERE stream = ?", (stream,)).fetchone()
        return int(row[0] or 0)

    def _last_position(self) -> int:
        if self._position is None:
            row = self._writer.execute("SELECT max(position) FROM log").fetchone()
            self._position = int(row[0] or 0)
        return self._position

    def _key_record(self, key: str) -> KeyRecord | None:
        row = self._writer.execute(
            "SELECT key, position, recorded_ts FROM idempotency_keys WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else KeyRecord(row[0], row[1], row[2])

    def _write(self, plan: Plan) -> None:
        self._committing = plan
        conn = self._writer
        _insert_rows(
            conn,
            "INSERT INTO log (position, stream, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.position, e.stream, e.version, e.type, _dump(e.data), e.recorded_at) for e in plan.entries],
        )
        self._apply_changes(conn, plan.changes)
        if not plan.keys:
            return
        _insert_rows(
            conn,
            "INSERT INTO idempotency_keys (key, position, recorded_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET position = excluded.position, recorded_ts = excluded.recorded_ts",
            [(k.key, k.position, k.recorded_ts) for k in plan.keys],
        )

    def _apply_changes(self, conn: sqlite3.Connection, changes: Sequence[Change]) -> None:
        """Apply the net effect of the changes: each statement once, with all its rows."""
        deletes, upserts = coalesce(self._tables, changes)
        batches: dict[str, list[list[Any]]] = {}
        ordered: list[Change] = [*deletes, *upserts]
        for change in ordered:
            sql, params = self._change_sql(change)
            batches.setdefault(sql, []).append(params)
        for sql, rows in batches.items():  # dicts keep insertion order: every delete runs first
            if sql.startswith("INSERT"):
                _insert_rows(conn, sql, rows)
            elif len(rows[0]) == 1:
                _delete_rows(conn, sql, rows)
            else:
                conn.executemany(sql, rows)

    def _change_sql(self, change: Change) -> tuple[str, list[Any]]:
        table = self.table(change.table)
        if isinstance(change, Upsert):
            columns = tuple(change.row)
            cache_key = (table.name, columns)
            sql = self._statements.get(cache_key)
            if sql is None:
                sql = self._statements[cache_key] = _upsert_statement(table, columns)
            return sql, [change.row[c] for c in columns]
        return _delete_sql(table), [change.key[c] for c in table.key]

    # -- reading -----------------------------------------------------------------------------

    def stream_version(self, stream: str) -> int:
        # Read committed state: the writer's cache may be stale (another store committed since its
        # last BEGIN) and the writer connection may be inside an uncommitted transaction.
        with self._translated("read a stream version"):
            row = self._reader().execute("SELECT max(version) FROM log WHERE stream = ?", (stream,)).fetchone()
        return int(row[0] or 0)

    def last_position(self) -> int:
        with self._translated("read the last position"):
            row = self._reader().execute("SELECT max(position) FROM log").fetchone()
        return int(row[0] or 0)

    def key_recorded(self, key: str, *, window_s: float | None, now: datetime) -> bool:
        """As EventStore.key_recorded, on this thread's reader: it need not wait for a commit in flight."""
        with self._translated("read an idempotency key"):
            row = self._reader().execute("SELECT recorded_ts FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        return row is not None and (window_s is None or now.timestamp() - row[0] < window_s)

    def read_stream(self, stream: str, *, after: int = 0) -> list[Entry]:
        with self._translated("read a stream"):
            rows = self._reader().execute(
                "SELECT position, stream, version, type, data, recorded_at FROM log"
                " WHERE stream = ? AND version > ? ORDER BY version",
                (stream, after),
            ).fetchall()
        return [_entry(row) for row in rows]

    def read_all(self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()) -> list[Entry]:
        sql = "SELECT position, stream, version, type, data, recorded_at FROM log WHERE position > ?"
        params: list[Any] = [after]
        if types:
            sql += f" AND type IN ({', '.join('?' for _ in types)})"
            params.extend(types)
        sql += " ORDER BY position"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._translated("read the log"):
            rows = self._reader().execute(sql, params).fetchall()
        return [_entry(row) for row in rows]

    def query(
        self,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        ranges: Mapping[str, Range] | None = None,
        order_by: str | Sequence[str] | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[Row]:
        spec = self.table(table)
        clauses, params = _where(spec, where or {}, ranges or {})
        sql = f"SELECT * FROM [{spec.name}]"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        order = [order_by] if isinstance(order_by, str) else list(order_by or ())
        if order:
            direction = " DESC" if desc else ""
            for column in order:
                _check_column(spec, column)
            sql += " ORDER BY " + ", ".join(f"[{c}] IS NOT NULL{direction}, [{c}]{direction}" for c in order)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._translated(f"query {spec.name}"):
            cursor = self._reader().execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # -- rebuilding --------------------------------------------------------------------------

    def _iter_all(self) -> Iterator[Entry]:
        cursor = self._writer.execute(
            "SELECT position, stream, version, type, data, recorded_at FROM log ORDER BY position"
        )
        for row in cursor:
            yield _entry(row)

    def _all_rows(self, table: Table) -> list[Row]:
        cursor = self._writer.execute(f"SELECT * FROM [{table.name}]")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _replace_tables(self, tables: dict[str, dict[tuple[Any, ...], Row]]) -> None:
        for name, rows in tables.items():
            self._writer.execute(f"DELETE FROM [{name}]")
            for row in rows.values():
                self._writer.execute(*_upsert_sql(self.table(name), row))


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dump(data: object) -> str:
    return _ENCODER.encode(data)


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])


def _check_column(table: Table, column: str) -> None:
    if column not in table.columns:
        raise KeyError(f"table {table.name!r} has no column {column!r}; columns: {sorted(table.columns)}")


def _upsert_sql(table: Table, row: Row) -> tuple[str, list[Any]]:
    columns = tuple(row)
    return _upsert_statement(table, columns), [row[c] for c in columns]


ROWS_PER_STATEMENT = 400
"""Rows written by one multi-row statement (well under SQLite's 32,766 bound parameters)."""


def _insert_rows(conn: sqlite3.Connection, single_row_sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run a one-row INSERT for many rows as a few multi-row statements.

    executemany steps SQLite once per row, and the sqlite3 module releases and retakes the GIL
    around every step; under load the writer then waits for the GIL once per row. One statement
    for many rows waits once.
    """
    head, _, rest = single_row_sql.partition(" VALUES (")
    placeholders, _, tail = rest.partition(")")
    group = f"({placeholders})"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        sql = f"{head} VALUES {', '.join(group for _ in chunk)}{tail}"
        conn.execute(sql, [value for row in chunk for value in row])


def _delete_rows(conn: sqlite3.Connection, single_key_sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run a one-key ``DELETE ... WHERE [k] = ?`` for many keys as ``IN (...)`` statements."""
    head = single_key_sql.removesuffix(" = ?")
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        conn.execute(f"{head} IN ({', '.join('?' for _ in chunk)})", [row[0] for row in chunk])


def _delete_sql(table: Table) -> str:
    where = " AND ".join(f"[{c}] = ?" for c in table.key)
    return f"DELETE FROM [{table.name}] WHERE {where}"


def _upsert_statement(table: Table, columns: tuple[str, ...]) -> str:
    for column in columns:
        _check_column(table, column)
    missing = [c for c in table.key if c not in columns]
    if missing:
        raise KeyError(f"an upsert into {table.name!r} lacks key columns {missing}")
    updates = [c for c in columns if c not in table.key]
    sql = (
        f"INSERT INTO [{table.name}] ({', '.join(f'[{c}]' for c in columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(f'[{c}]' for c in table.key)}) DO "
    )
    sql += "UPDATE SET " + ", ".join(f"[{c}] = excluded.[{c}]" for c in updates) if updates else "NOTHING"
    return sql


def _where(table: Table, where: Mapping[str, Any], ranges: Mapping[str, Range]) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in where.items():
        _check_column(table, column)
        clauses.append(f"[{column}] IS ?" if value is None else f"[{column}] = ?")
        params.append(value)
    for column, (low, high) in ranges.items():
        _check_column(table, column)
        clauses.append(f"[{column}] IS NOT NULL")
        if low is not None:
            clauses.append(f"[{column}] >= ?")
            params.append(low)
        if high is not None:
            clauses.append(f"[{column}] <= ?")
            params.append(high)
    return clauses, params
