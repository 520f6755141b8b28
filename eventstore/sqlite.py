"""The event store on a SQLite file, through sqlite-utils.

Durability: WAL journal, ``synchronous=FULL`` by default (every commit is fsynced; group commit
makes that cheap), ``BEGIN IMMEDIATE`` for every write transaction, a ``busy_timeout`` so that
readers and a second process wait instead of failing. A failed write (I/O error, disk full)
rolls back and breaks the store: later writes raise ``StorageError`` instead of retrying in
place, because after a failed fsync the state of the file is unknown.

Every sqlite3 error is translated to ``StorageError`` here, and nowhere else.

Damage: every log entry carries a CRC-32 (``log.checksum``, see ``checksums``), written with it
and verified whenever a row becomes an ``Entry``; a mismatch, data that is not a JSON object, or a
gap in a stream's versions raises ``CorruptEntryError`` for that read alone. Entries written before
schema 2 have no checksum (NULL) and are only checked for JSON. ``check`` verifies the whole file:
SQLite's ``PRAGMA integrity_check``, every entry, and the projections against a rebuild.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import attrs
import sqlite_utils
from steplog.eventstore.base import EventStore, KeyRecord, Plan, Range
from steplog.eventstore.checksums import entry_checksum, text_checksum
from steplog.eventstore.errors import CorruptEntryError, StorageError, StoreBusyError
from steplog.eventstore.projections import Change, Difference, Projector, Row, Table, Upsert, coalesce
from steplog.eventstore.records import Append, Entry

Synchronous = Literal["FULL", "NORMAL", "OFF", "EXTRA"]
_SYNCHRONOUS_MODES = ("FULL", "NORMAL", "OFF", "EXTRA")
SCHEMA_VERSION = 2
"""1: the first schema. 2: ``log.checksum`` (NULL in the rows a version-1 file already had)."""
BUSY_TIMEOUT_MS = 5000
_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}
INTEGRITY_LINES = 100
"""At most this many problems from ``PRAGMA integrity_check``."""
VERSION_CACHE_STREAMS = 10_000
"""Stream versions the writer keeps, least recently written out first. A run's streams are written
while it lives; those of runs that ended age out instead of piling up (the soak found them growing
with every run, to 100,000 streams, before the cache was simply cleared)."""


@attrs.frozen
class DamagedEntry:
    """A log entry that ``check`` found damaged, and what is wrong with it."""

    position: int
    stream: str
    problem: str


@attrs.frozen
class CheckReport:
    """What ``SqliteEventStore.check`` found: SQLite's own verdict, damaged entries, and how the
    projections differ from a rebuild (None when the log is damaged: no rebuild was compared)."""

    entries: int
    unverified: int
    """Entries written before schema 2, which have no checksum."""
    integrity: tuple[str, ...]
    """``PRAGMA integrity_check``'s problems; empty if it said ok."""
    damaged: tuple[DamagedEntry, ...]
    differences: tuple[Difference, ...] | None

    @property
    def ok(self) -> bool:
        return not self.integrity and not self.damaged and not self.differences


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
        try:
            if not read_only:
                self._create_schema()
            self._entry_sql = self._entry_select()
        except BaseException:
            self.close()  # a file that cannot be opened leaves no connection behind
            raise
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
        except (sqlite3.Error, UnicodeDecodeError) as error:  # a damaged schema can give an undecodable message
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
        with self._translated("create the schema"):
            db = sqlite_utils.Database(self._writer)  # it runs a statement, which may fail too
            found = self._writer.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {found}, newer than this steplog's {SCHEMA_VERSION}:"
                    " upgrade steplog to open it"
                )
            log = db.table("log")
            log.create(
                {
                    "position": int, "stream": str, "version": int, "type": str, "data": str, "recorded_at": str,
                    "checksum": int,
                },
                pk="position",
                not_null={"stream", "version", "type", "data", "recorded_at"},
                if_not_exists=True,
            )
            self._add_checksum_column()
            log.create_index(["stream", "version"], unique=True, if_not_exists=True)
            log.create_index(["type", "position"], if_not_exists=True)
            db.table("idempotency_keys").create(
                {"key": str, "position": int, "recorded_ts": float}, pk="key", if_not_exists=True
            )
            for table in self.projector.tables:
                self._create_table(db, table)
            self._writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _add_checksum_column(self) -> None:
        """Migrate a version-1 log: add ``checksum``, NULL in the rows already there.

        The old rows are left unverified rather than summed now: summing them would bless whatever
        they hold today, damage included, and would rewrite every page of the log (the whole file
        through the WAL) at the first start; adding a column is instant. New rows are summed.
        """
        if self._has_checksums(self._writer):
            return
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            if not self._has_checksums(self._writer):  # another process may have migrated meanwhile
                self._writer.execute("ALTER TABLE log ADD COLUMN checksum INTEGER")
            self._writer.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    @staticmethod
    def _has_checksums(conn: sqlite3.Connection) -> bool:
        return any(row[1] == "checksum" for row in conn.execute("PRAGMA table_info(log)"))

    def _entry_select(self) -> str:
        """The columns a read of entries selects: text as UTF-8 bytes (what the checksum sums, and
        undecodable bytes become a CorruptEntryError, not a failed read), then the checksum."""
        with self._translated("read the schema"):
            checksum = "checksum" if self._has_checksums(self._writer) else "NULL"
        return (
            "SELECT position, CAST(stream AS BLOB), version, CAST(type AS BLOB), CAST(data AS BLOB),"
            f" CAST(recorded_at AS BLOB), {checksum} FROM log"
        )

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
        except UnicodeDecodeError as error:  # sqlite3 decoding a damaged text value it read
            raise StorageError(f"SQLite failed to {action} in {self.path}: a stored text is not UTF-8 ({error})") from error

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
        versions = self._versions
        for stream, version in plan.versions.items():
            versions.pop(stream, None)  # re-inserted last: the dict's order is the order of last writes
            versions[stream] = version
        excess = len(versions) - VERSION_CACHE_STREAMS
        if excess > 0:  # the least recently written go, a tenth more at once so that this stays rare
            for stream in list(islice(versions, excess + VERSION_CACHE_STREAMS // 10)):
                del versions[stream]
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
            "INSERT INTO log (position, stream, version, type, data, recorded_at, checksum)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [_log_row(entry) for entry in plan.entries],
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
                f"{self._entry_sql} WHERE stream = ? AND version > ? ORDER BY version", (stream, after)
            ).fetchall()
        entries = [self._entry(row) for row in rows]
        for expected, entry in enumerate(entries, start=after + 1):
            if entry.version != expected or entry.stream != stream:  # lost entries, or a damaged index
                found = f"version {entry.version} of {entry.stream!r}"
                raise CorruptEntryError(self.path, entry.position, stream, f"expected version {expected}, found {found}")
        return entries

    def read_all(self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()) -> list[Entry]:
        sql = f"{self._entry_sql} WHERE position > ?"
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
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        """A row of ``_entry_sql`` as an Entry, once its bytes are verified; CorruptEntryError if not."""
        entry = _decoded(row)
        if isinstance(entry, str):
            raise CorruptEntryError(self.path, row[0], _text_of(row[1]), entry)
        return entry

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

    # -- checking ----------------------------------------------------------------------------

    def check(self) -> CheckReport:
        """Verify the whole file and report, without raising for damage: SQLite's ``PRAGMA
        integrity_check``, every entry (checksum, JSON, positions 1, 2, 3... and each stream's
        versions without gaps), and, if all of that is sound, the projections against a rebuild
        from the log. Only reads; a damaged file SQLite cannot read at all raises StorageError."""
        self._check_open()
        with self._snapshot(), self._translated("check the database"):
            lines = [row[0] for row in self._writer.execute(f"PRAGMA integrity_check({INTEGRITY_LINES})")]
            integrity = () if lines == ["ok"] else tuple(str(line) for line in lines)
            entries, unverified, damaged = self._scan_entries()
        differences = None
        if not integrity and not damaged:
            differences = tuple(self.rebuild_projections(apply=False))
        return CheckReport(entries, unverified, integrity, tuple(damaged), differences)

    def _scan_entries(self) -> tuple[int, int, list[DamagedEntry]]:
        entries = unverified = last_position = 0
        versions: dict[str, int] = {}
        damaged: list[DamagedEntry] = []
        for row in self._writer.execute(f"{self._entry_sql} ORDER BY position"):
            entries += 1
            unverified += row[6] is None
            position, stream, version = row[0], _text_of(row[1]), row[2]
            problems = [] if not isinstance(decoded := _decoded(row), str) else [decoded]
            if position != last_position + 1:
                problems.append(f"the log skips from position {last_position} to {position}")
            if version != versions.get(stream, 0) + 1:
                problems.append(f"its stream skips from version {versions.get(stream, 0)} to {version}")
            damaged.extend(DamagedEntry(position, stream, problem) for problem in problems)
            last_position = position if isinstance(position, int) else last_position + 1
            versions[stream] = version if isinstance(version, int) else versions.get(stream, 0) + 1
        return entries, unverified, damaged

    # -- rebuilding --------------------------------------------------------------------------

    def _iter_all(self) -> Iterator[Entry]:
        with self._translated("read the log"):
            cursor = self._writer.execute(f"{self._entry_sql} ORDER BY position")
            for row in cursor:
                yield self._entry(row)

    def _all_rows(self, table: Table) -> list[Row]:
        with self._translated(f"read {table.name}"):
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


def _log_row(entry: Entry) -> tuple[Any, ...]:
    data = _dump(entry.data)
    checksum = text_checksum(entry.position, entry.stream, entry.version, entry.type, entry.recorded_at, data)
    return (entry.position, entry.stream, entry.version, entry.type, data, entry.recorded_at, checksum)


def _decoded(row: tuple[Any, ...]) -> Entry | str:
    """A row of ``_entry_sql`` (its text columns as bytes) as an Entry, or what is wrong with it.

    The checksum is compared first: a damaged entry that still parses must not be used. A row
    written before schema 2 (checksum NULL) is only checked for decodable text and a JSON object.
    """
    position, stream, version, type_, data, recorded_at, stored = row
    if type(stream) is not bytes or type(type_) is not bytes or type(data) is not bytes or type(recorded_at) is not bytes:
        return "a text column holds no text (NULL or another type)"
    if type(position) is not int or type(version) is not int:
        return "its position or version is not an integer"
    if stored is not None:
        computed = entry_checksum(position, stream, version, type_, recorded_at, data)
        if stored != computed:
            return f"its checksum does not match (stored {_hex(stored)}, computed {computed:#010x})"
    try:
        # json.loads of the decoded text: a third quicker than of the bytes
        text = data.decode()
        try:
            value = json.loads(text)
        except RecursionError:  # the reader's levels count with the caller's frames: try on a fresh stack
            value = _loads_on_a_fresh_stack(text)
        entry = Entry(position, stream.decode(), version, type_.decode(), value, recorded_at.decode())
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"its text is not valid ({type(error).__name__}: {error})"
    except RecursionError:
        return "its data nests too deeply to be JSON steplog wrote"
    if not isinstance(entry.data, dict):
        return f"its data is a JSON {type(entry.data).__name__}, not an object"
    return entry


def _loads_on_a_fresh_stack(text: str) -> Any:
    """``json.loads`` on a thread of its own, whose stack is empty: on Python 3.11 the reader's
    nesting counts against the recursion limit together with the caller's frames, so JSON within
    steplog's depth limit can fail to parse from a deep call stack."""
    outcome: list[Any] = []

    def load() -> None:
        try:
            outcome.append(json.loads(text))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append(error)

    thread = threading.Thread(target=load, name="steplog-json")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _text_of(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else repr(value)


def _hex(value: object) -> str:
    return f"{value:#010x}" if isinstance(value, int) else repr(value)


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


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(table: Table, where: Mapping[str, Any], ranges: Mapping[str, Range]) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in where.items():
        _check_column(table, column)
        if isinstance(value, str) and not _is_unicode(value):
            clauses.append("0")  # a lone surrogate cannot be stored, so nothing equals it (as in memory)
            continue
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
