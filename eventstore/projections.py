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

from eventstore.records import Entry

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
