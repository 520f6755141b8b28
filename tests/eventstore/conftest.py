"""Fixtures of the event store tests: a small projector, stores of every backend, and a way to
tamper with a live projection table behind the store's back."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from steplog.eventstore import Change, Delete, Entry, EventStore, MemoryEventStore, SqliteEventStore, Table, Upsert

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

ITEMS = Table(
    "items",
    key=("id",),
    columns={"id": str, "name": str, "qty": int, "price": float, "owner": str},
    indexes=(("owner", "qty"),),
)
LINES = Table("lines", key=("order_id", "line"), columns={"order_id": str, "line": int, "sku": str})


class ItemsProjector:
    """A projector for the tests.

    item.added    upserts the columns present in ``data`` (id required)
    item.renamed  upserts {id, name} only: a partial update
    item.removed  deletes the item
    line.added    upserts a row of a table with a two-column key
    boom          raises, as a buggy projector would
    bad.column    upserts a column the table does not have
    bad.key       upserts a row without its key column
    """

    tables: Sequence[Table] = (ITEMS, LINES)

    def project(self, entry: Entry) -> Iterable[Change]:
        data = entry.data
        if entry.type == "item.added":
            return [Upsert("items", dict(data))]
        if entry.type == "item.renamed":
            return [Upsert("items", {"id": data["id"], "name": data["name"]})]
        if entry.type == "item.removed":
            return [Delete("items", {"id": data["id"]})]
        if entry.type == "line.added":
            return [Upsert("lines", {"order_id": entry.stream, "line": entry.version, "sku": data["sku"]})]
        if entry.type == "boom":
            raise RuntimeError("projector failed")
        if entry.type == "bad.column":
            return [Upsert("items", {"id": data["id"], "colour": "red"})]
        if entry.type == "bad.key":
            return [Upsert("items", {"name": "keyless"})]
        return []


@pytest.fixture
def now() -> datetime:
    return T0


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


StoreFactory = Callable[..., EventStore]


@pytest.fixture
def make_store(backend: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Make a store of the current backend; sqlite stores with the same ``name`` share a file."""
    made: list[EventStore] = []

    def make(projector: Any = "default", name: str = "store.db") -> EventStore:
        proj = ItemsProjector() if projector == "default" else projector
        store: EventStore
        if backend == "memory":
            store = MemoryEventStore(proj)
        else:
            store = SqliteEventStore(tmp_path / name, proj)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> EventStore:
    return make_store()


class Tamper:
    """Changes a live projection table without going through the store (as corruption or a bug would)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def _key(self, table: str, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[c] for c in self.store.table(table).key)

    def _sql(self, sql: str, params: list[Any]) -> None:
        assert isinstance(self.store, SqliteEventStore)
        conn = sqlite3.connect(self.store.path)
        try:
            changed = conn.execute(sql, params).rowcount
            conn.commit()
        finally:
            conn.close()
        assert changed == 1, f"tampering changed {changed} rows"

    def update(self, table: str, key: dict[str, Any], **changes: Any) -> None:
        if isinstance(self.store, MemoryEventStore):
            self.store._rows[table][self._key(table, key)].update(changes)
            return
        sets = ", ".join(f"[{c}] = ?" for c in changes)
        where = " AND ".join(f"[{c}] = ?" for c in key)
        self._sql(f"UPDATE [{table}] SET {sets} WHERE {where}", [*changes.values(), *key.values()])

    def delete(self, table: str, key: dict[str, Any]) -> None:
        if isinstance(self.store, MemoryEventStore):
            del self.store._rows[table][self._key(table, key)]
            return
        where = " AND ".join(f"[{c}] = ?" for c in key)
        self._sql(f"DELETE FROM [{table}] WHERE {where}", list(key.values()))

    def insert(self, table: str, row: dict[str, Any]) -> None:
        full = {c: row.get(c) for c in self.store.table(table).columns}
        if isinstance(self.store, MemoryEventStore):
            self.store._rows[table][self._key(table, full)] = full
            return
        columns = ", ".join(f"[{c}]" for c in full)
        self._sql(f"INSERT INTO [{table}] ({columns}) VALUES ({', '.join('?' for _ in full)})", list(full.values()))


@pytest.fixture
def tamper(store: EventStore) -> Tamper:
    return Tamper(store)


@pytest.fixture
def items_projector() -> ItemsProjector:
    return ItemsProjector()
