"""An event store held in memory: the same contract as SQLite, for tests and experiments."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
from steplog.eventstore.base import EventStore, KeyRecord, Plan, Range, apply_change
from steplog.eventstore.projections import Change, Projector, Row, Table, Upsert
from steplog.eventstore.records import Entry


class MemoryEventStore(EventStore):
    """Keeps the log and its projections in Python lists and dicts, guarded by one lock."""

    def __init__(self, projector: Projector | None = None) -> None:
        super().__init__(projector)
        self._lock = threading.RLock()
        self._log: list[Entry] = []
        self._streams: dict[str, list[Entry]] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._rows: dict[str, dict[tuple[Any, ...], Row]] = {t.name: {} for t in self.projector.tables}

    def reopened(self, projector: Projector | None = None) -> MemoryEventStore:
        """What a restarted process would find: a new store with this log and its idempotency keys,
        and projections folded again from the log (by ``projector``, a fresh one for a fresh process).
        This store is closed."""
        with self._lock:
            other = MemoryEventStore(projector or self.projector)
            other._log = list(self._log)
            for entry in other._log:
                other._streams.setdefault(entry.stream, []).append(entry)
            other._keys = dict(self._keys)
        self.close()
        other.rebuild_projections(apply=True)
        return other

    def read_stream(self, stream: str, *, after: int = 0) -> list[Entry]:
        self._check_open()
        with self._lock:
            return [_copy(e) for e in self._streams.get(stream, ())[after:]]

    def read_all(self, *, after: int = 0, limit: int | None = None, types: Sequence[str] = ()) -> list[Entry]:
        self._check_open()
        with self._lock:
            selected = [e for e in self._log[after:] if not types or e.type in types]
        return [_copy(e) for e in (selected if limit is None else selected[:limit])]

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
        self._check_open()
        spec = self.table(table)
        order = [order_by] if isinstance(order_by, str) else list(order_by or ())
        _check_columns(spec, [*(where or {}), *(ranges or {}), *order])
        with self._lock:
            rows = [dict(r) for r in self._rows[spec.name].values() if _matches(r, where or {}, ranges or {})]
        if order:
            rows.sort(key=lambda r: [(r[c] is not None, r[c]) for c in order], reverse=desc)
        return rows if limit is None else rows[:limit]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            yield

    def _stream_version(self, stream: str) -> int:
        return len(self._streams.get(stream, ()))

    def _last_position(self) -> int:
        return len(self._log)

    def _key_record(self, key: str) -> KeyRecord | None:
        return self._keys.get(key)

    def _write(self, plan: Plan) -> None:
        # Refuse what SQLite would refuse before changing anything: there is no rollback here.
        entries = [attrs.evolve(e, data=_json_copy(e.data)) for e in plan.entries]
        for change in plan.changes:
            _check_change(self.table(change.table), change)
        for entry in entries:
            self._log.append(entry)
            self._streams.setdefault(entry.stream, []).append(entry)
        for change in plan.changes:
            apply_change(self.table(change.table), self._rows[change.table], change)
        for record in plan.keys:
            self._keys[record.key] = record

    def _iter_all(self) -> Iterator[Entry]:
        return iter(list(self._log))

    def _all_rows(self, table: Table) -> list[Row]:
        return [dict(r) for r in self._rows[table.name].values()]

    def _replace_tables(self, tables: dict[str, dict[tuple[Any, ...], Row]]) -> None:
        self._rows = {name: {k: dict(r) for k, r in rows.items()} for name, rows in tables.items()}


def _copy(entry: Entry) -> Entry:
    return attrs.evolve(entry, data=copy.deepcopy(entry.data))


def _json_copy(data: Any) -> Any:
    """The data as the SQLite backend would read it back; TypeError or ValueError if it is not JSON."""
    return json.loads(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _check_columns(table: Table, columns: Sequence[str]) -> None:
    for column in columns:
        if column not in table.columns:
            raise KeyError(f"table {table.name!r} has no column {column!r}; columns: {sorted(table.columns)}")


def _check_change(table: Table, change: Change) -> None:
    row = change.row if isinstance(change, Upsert) else change.key
    _check_columns(table, list(row))
    missing = [c for c in table.key if c not in row]
    if missing:
        raise KeyError(f"a change to {table.name!r} lacks key columns {missing}")


def _matches(row: Row, where: Mapping[str, Any], ranges: Mapping[str, Range]) -> bool:
    if any(row.get(column) != value for column, value in where.items()):
        return False
    for column, (low, high) in ranges.items():
        value = row.get(column)
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            return False
    return True
