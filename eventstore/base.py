"""The event store interface and the group-commit algorithm every backend shares.

A commit takes many appends and records them in one transaction: first it plans (checks
versions and idempotency keys, numbers the entries, derives projection changes), then it
writes. Planning never writes, so an append that fails its version check is refused alone
while the others in the same group are recorded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
from steplog.eventstore.errors import ConcurrencyError, StoreClosedError
from steplog.eventstore.projections import (
    Change,
    Difference,
    NoProjections,
    Projector,
    Row,
    Table,
    Upsert,
    diff_tables,
    key_of,
)
from steplog.eventstore.records import Append, Committed, Entry, NewEntry, StreamWrite

Range = tuple[Any, Any]


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds, so that text order is time order."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            raise ValueError(f"naive datetime {moment!r}: the log records aware times only")
        moment = moment.astimezone(UTC)
    # isoformat is several times faster than strftime, and this runs a few times per step.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    """A time as the log records it, back to an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@attrs.frozen
class KeyRecord:
    """When an idempotency key was last recorded, and at which position."""

    key: str
    position: int
    recorded_ts: float


@attrs.define
class Plan:
    """What one group commit will write."""

    entries: list[Entry] = attrs.Factory(list)
    changes: list[Change] = attrs.Factory(list)
    keys: list[KeyRecord] = attrs.Factory(list)
    versions: dict[str, int] = attrs.Factory(dict)
    key_records: dict[str, KeyRecord] = attrs.Factory(dict)


class EventStore(ABC):
    """An append-only log of entries grouped in streams, with projections derived from it."""

    def __init__(self, projector: Projector | None = None) -> None:
        self.projector: Projector = projector or NoProjections()
        self._tables = {table.name: table for table in self.projector.tables}
        self._closed = False

    # -- writing ---------------------------------------------------------------------------

    def commit(self, appends: Sequence[Append], *, now: datetime) -> list[Committed | ConcurrencyError]:
        """Record many appends in one transaction; each result is its outcome or its refusal."""
        self._check_open()
        recorded_at = format_time(now)
        with self._transaction():
            plan = Plan()
            self._prefetch_versions(plan, appends)
            next_position = self._last_position() + 1
            results: list[Committed | ConcurrencyError] = []
            for append in appends:
                outcome = self._plan_append(plan, append, next_position, recorded_at, now.timestamp())
                if isinstance(outcome, Committed):
                    next_position += len(outcome.entries)
                results.append(outcome)
            self._write(plan)
        return results

    def append(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        now: datetime,
        expected_version: int | None = None,
    ) -> tuple[Entry, ...]:
        """Append entries to one stream in their own commit; raise ConcurrencyError if refused."""
        write = StreamWrite(stream, tuple(entries), expected_version)
        [result] = self.commit([Append((write,))], now=now)
        if isinstance(result, ConcurrencyError):
            raise result
        return result.entries

    def key_recorded(self, key: str, *, window_s: float | None, now: datetime) -> bool:
        """Whether an append with this idempotency key was recorded within the window before ``now``.

        Exact for a caller that is the only one writing appends with such keys.
        """
        self._check_open()
        with self._snapshot():
            earlier = self._key_record(key)
        return earlier is not None and (window_s is None or now.timestamp() - earlier.recorded_ts < window_s)

    def _plan_append(
        self, plan: Plan, append: Append, position: int, recorded_at: str, now_ts: float
    ) -> Committed | ConcurrencyError:
        writes, duplicate_of = append.writes, None
        if append.key is not None:
            earlier = self._planned_key(plan, append.key)
            window = append.key_window_s
            if earlier is not None and (window is None or now_ts - earlier.recorded_ts < window):
                writes, duplicate_of = append.on_duplicate, earlier.position
        refusal = self._check_versions(plan, writes)
        if refusal is not None:
            return refusal
        entries = self._plan_writes(plan, writes, position, recorded_at)
        if append.key is not None and duplicate_of is None:
            record = KeyRecord(append.key, position, now_ts)
            plan.keys.append(record)
            plan.key_records[append.key] = record
        return Committed(tuple(entries), duplicate_of)

    def _planned_key(self, plan: Plan, key: str) -> KeyRecord | None:
        if key in plan.key_records:
            return plan.key_records[key]
        return self._key_record(key)

    def _check_versions(self, plan: Plan, writes: Sequence[StreamWrite]) -> ConcurrencyError | None:
        seen: dict[str, int] = {}
        for write in writes:
            actual = seen.get(write.stream, self._planned_version(plan, write.stream))
            if write.expected_version is not None and write.expected_version != actual:
                return ConcurrencyError(write.stream, write.expected_version, actual)
            seen[write.stream] = actual + len(write.entries)
        return None

    def _planned_version(self, plan: Plan, stream: str) -> int:
        if stream not in plan.versions:
            plan.versions[stream] = self._stream_version(stream)
        return plan.versions[stream]

    def _plan_writes(
        self, plan: Plan, writes: Sequence[StreamWrite], position: int, recorded_at: str
    ) -> list[Entry]:
        entries = []
        for write in writes:
            version = self._planned_version(plan, write.stream)
            for new in write.entries:
                version += 1
                entry = Entry(position, write.stream, version, new.type, new.data, recorded_at)
                position += 1
                entries.append(entry)
                plan.changes.extend(self.projector.project(entry))
            plan.versions[write.stream] = version
        plan.entries.extend(entries)
        return entries

    # -- projections -------------------------------------------------------------------------

    def rebuild_projections(self, *, apply: bool = True) -> list[Difference]:
        """Rebuild every projection from the log; return how the live tables differed.

        With ``apply`` the rebuilt tables replace the live ones, in one transaction.
        """
        self._check_open()
        with self._transaction() if apply else self._snapshot():
            rebuilt = self._fold_projections()
            differences: list[Difference] = []
            for table in self.projector.tables:
                live = self._all_rows(table)
                differences.extend(diff_tables(table, live, rebuilt[table.name].values()))
            if apply and differences:
                self._replace_tables(rebuilt)
        return differences

    def _fold_projections(self) -> dict[str, dict[tuple[Any, ...], Row]]:
        tables: dict[str, dict[tuple[Any, ...], Row]] = {t.name: {} for t in self.projector.tables}
        for entry in self._iter_all():
            for change in self.projector.project(entry):
                apply_change(self._tables[change.table], tables[change.table], change)
        return tables

    # -- reading ---------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        """The projection table with this name."""
        try:
            return self._tables[name]
        except KeyError:
            raise KeyError(f"no projection table {name!r}; tables: {sorted(self._tables)}") from None

    @abstractmethod
    def read_stream(self, stream: str, *, after: int = 0) -> list[Entry]:
        """Entries of one stream with a version above ``after``, oldest first."""

    @abstractmethod
    def read_all(self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()) -> list[Entry]:
        """Entries of the whole log above position ``after``, optionally of some types only."""

    @abstractmethod
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
        """Rows of a projection table: equal to ``where``, within inclusive ``ranges`` (None = open),
        ordered by one column or several (ties broken by the next), NULLs first."""

    def stream_version(self, stream: str) -> int:
        """The version of a stream; 0 if it has no entries."""
        self._check_open()
        return self._stream_version(stream)

    def last_position(self) -> int:
        """The position of the last entry in the log; 0 if the log is empty."""
        self._check_open()
        return self._last_position()

    def close(self) -> None:
        """Release the store's resources; later use raises StoreClosedError."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the event store is closed")

    # -- backend primitives --------------------------------------------------------------

    @abstractmethod
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction; everything in it is durable together, or not at all."""

    def _prefetch_versions(self, plan: Plan, appends: Sequence[Append]) -> None:
        """Read the versions of the streams a commit touches, in as few reads as the backend can."""

    def _snapshot(self) -> AbstractContextManager[None]:
        """A consistent read of the log and projections; by default a write transaction."""
        return self._transaction()

    @abstractmethod
    def _stream_version(self, stream: str) -> int:
        """Current version of a stream."""

    @abstractmethod
    def _last_position(self) -> int:
        """Position of the last entry."""

    @abstractmethod
    def _key_record(self, key: str) -> KeyRecord | None:
        """The last record of an idempotency key."""

    @abstractmethod
    def _write(self, plan: Plan) -> None:
        """Write a planned group commit inside the current transaction."""

    @abstractmethod
    def _iter_all(self) -> Iterator[Entry]:
        """Every entry, oldest first."""

    @abstractmethod
    def _all_rows(self, table: Table) -> list[Row]:
        """Every row of a projection table."""

    @abstractmethod
    def _replace_tables(self, tables: dict[str, dict[tuple[Any, ...], Row]]) -> None:
        """Replace the contents of every projection table inside the current transaction."""


def apply_change(table: Table, rows: dict[tuple[Any, ...], Row], change: Change) -> None:
    """Apply one projection change to rows held in a dict, as the SQL backends do."""
    if isinstance(change, Upsert):
        key = key_of(table, change.row)
        existing = rows.get(key)
        if existing is None:
            rows[key] = {column: change.row.get(column) for column in table.columns}
        else:
            existing.update(change.row)
    else:
        rows.pop(key_of(table, change.key), None)
