"""Projections: tables of current state derived from the log.

A projector maps each recorded entry to row changes. The store applies them in the same
transaction as the entry, so a projection is never behind the log, and it can rebuild every
projection from the log alone and compare the result with the live tables.
Rows are upserted column by column: an upsert sets only the columns it names, so a projector
can derive each change from one entry without reading the current row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import attrs
from steplog.eventstore.records import Entry

Row = dict[str, Any]


@attrs.frozen
class Table:
    """A projection table: its name, primary key columns, column types and indexes."""

    name: str
    key: tuple[str, ...]
    columns: dict[str, type]
    indexes: tuple[tuple[str, ...], ...] = ()


@attrs.frozen
class Upsert:
    """Insert the row, or set the named columns of the existing row with the same key."""

    table: str
    row: Row


@attrs.frozen
class Delete:
    """Delete the row with this key, if there is one."""

    table: str
    key: Row


Change = Upsert | Delete


class Projector(Protocol):
    """Derives projection rows from log entries; must be a pure function of the entry."""

    tables: Sequence[Table]

    def project(self, entry: Entry) -> Iterable[Change]:
        """Return the row changes this entry makes."""
        ...


@attrs.frozen
class Difference:
    """A row that differs between the live projection and the one rebuilt from the log."""

    table: str
    key: tuple[Any, ...]
    live: Row | None
    rebuilt: Row | None


class NoProjections:
    """A projector with no tables."""

    tables: Sequence[Table] = ()

    def project(self, entry: Entry) -> Iterable[Change]:
        return ()


def key_of(table: Table, row: Row) -> tuple[Any, ...]:
    """The primary key values of a row."""
    return tuple(row[column] for column in table.key)


def diff_tables(table: Table, live: Iterable[Row], rebuilt: Iterable[Row]) -> list[Difference]:
    """Rows that are missing, extra or different between two versions of one table."""
    live_rows = {key_of(table, row): row for row in live}
    rebuilt_rows = {key_of(table, row): row for row in rebuilt}
    differences = []
    for key in sorted(live_rows.keys() | rebuilt_rows.keys(), key=repr):
        left, right = live_rows.get(key), rebuilt_rows.get(key)
        if left != right:
            differences.append(Difference(table.name, key, left, right))
    return differences


def coalesce(tables: dict[str, Table], changes: Iterable[Change]) -> tuple[list[Delete], list[Upsert]]:
    """The net effect of changes applied in order, as deletes to run first and then upserts.

    Each key ends up in at most one delete and one upsert, so a backend can run each kind in a
    few batched statements instead of one statement per change.
    """
    deleted: dict[tuple[str, tuple[Any, ...]], Row] = {}
    upserted: dict[tuple[str, tuple[Any, ...]], Row] = {}
    for change in changes:
        table = tables[change.table]
        row = change.row if isinstance(change, Upsert) else change.key
        missing = [c for c in table.key if c not in row]
        if missing:
            raise KeyError(f"a change to {table.name!r} lacks key columns {missing}")
        slot = (table.name, key_of(table, row))
        if isinstance(change, Upsert):
            upserted[slot] = {**upserted[slot], **change.row} if slot in upserted else dict(change.row)
        else:
            upserted.pop(slot, None)
            deleted[slot] = {c: change.key[c] for c in table.key}
    return (
        [Delete(name, key) for (name, _), key in deleted.items()],
        [Upsert(name, row) for (name, _), row in upserted.items()],
    )
