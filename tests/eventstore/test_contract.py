"""The event store contract: every test here runs against every backend (memory and SQLite on a file).

The ``store`` fixture (tests/eventstore/conftest.py) is parametrized over the backends and carries
``ItemsProjector``: an ``items`` table (key ``id``) and a ``lines`` table (key ``order_id, line``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from steplog.eventstore import (
    Append,
    Committed,
    ConcurrencyError,
    Difference,
    Entry,
    EventStore,
    NewEntry,
    StoreClosedError,
    StreamWrite,
    format_time,
    parse_time,
)

# -- helpers ---------------------------------------------------------------------------------------


def new(type_: str = "note", **data: Any) -> NewEntry:
    return NewEntry(type_, data)


def write(stream: str, *entries: NewEntry, expected: int | None = None) -> StreamWrite:
    return StreamWrite(stream, tuple(entries) or (new(),), expected)


def keyed(key: str, *writes: StreamWrite, window: float | None = 60.0, dup: tuple[StreamWrite, ...] = ()) -> Append:
    return Append(tuple(writes), key=key, key_window_s=window, on_duplicate=dup)


def shape(entries: list[Entry] | tuple[Entry, ...]) -> list[tuple[str, int, str, dict[str, Any]]]:
    return [(e.stream, e.version, e.type, e.data) for e in entries]


def item(id_: str, **columns: Any) -> NewEntry:
    return NewEntry("item.added", {"id": id_, **columns})


def row(id_: str, name: Any = None, qty: Any = None, price: Any = None, owner: Any = None) -> dict[str, Any]:
    return {"id": id_, "name": name, "qty": qty, "price": price, "owner": owner}


def ids(rows: list[dict[str, Any]]) -> list[Any]:
    return [r["id"] for r in rows]


# -- appending and reading -------------------------------------------------------------------------


def test_an_empty_store_has_nothing(store: EventStore) -> None:
    assert store.last_position() == 0
    assert store.stream_version("s") == 0
    assert store.read_all() == []
    assert store.read_stream("s") == []
    assert store.query("items") == []
    assert store.rebuild_projections(apply=False) == []


def test_append_returns_what_is_recorded(store: EventStore, now: datetime) -> None:
    entries = store.append("order-1", [new("created", total=5), new("paid", by="card")], now=now)

    assert [(e.position, e.stream, e.version, e.type, e.data) for e in entries] == [
        (1, "order-1", 1, "created", {"total": 5}),
        (2, "order-1", 2, "paid", {"by": "card"}),
    ]
    assert all(e.recorded_at == format_time(now) for e in entries)
    assert store.read_stream("order-1") == list(entries)
    assert store.read_all() == list(entries)
    assert store.stream_version("order-1") == 2
    assert store.last_position() == 2


def test_recorded_at_is_utc_text_of_the_given_time(store: EventStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=plus_two)
    [entry] = store.append("s", [new()], now=moment)
    assert entry.recorded_at == "2026-03-01T12:30:05.123456Z"
    assert parse_time(entry.recorded_at) == moment


def test_versions_are_contiguous_per_stream_and_positions_strictly_increase(
    store: EventStore, now: datetime
) -> None:
    streams = ["a", "b", "a", "c", "b", "a", "a", "c"]
    for i, stream in enumerate(streams):
        store.append(stream, [new(i=i)] * (1 + i % 2), now=now + timedelta(seconds=i))

    log = store.read_all()
    positions = [e.position for e in log]
    assert positions == sorted(set(positions)), "positions must strictly increase"
    assert positions[0] >= 1
    assert store.last_position() == positions[-1]
    for stream in "abc":
        versions = [e.version for e in store.read_stream(stream)]
        assert versions == list(range(1, len(versions) + 1))
        assert store.stream_version(stream) == len(versions)
        assert [e for e in log if e.stream == stream] == store.read_stream(stream)
    assert len(log) == sum(1 + i % 2 for i in range(len(streams)))


def test_read_stream_after_a_version(store: EventStore, now: datetime) -> None:
    store.append("s", [new(n=n) for n in range(1, 6)], now=now)
    store.append("other", [new()], now=now)

    assert [e.data["n"] for e in store.read_stream("s", after=0)] == [1, 2, 3, 4, 5]
    assert [e.data["n"] for e in store.read_stream("s", after=3)] == [4, 5]
    assert store.read_stream("s", after=5) == []
    assert store.read_stream("s", after=99) == []
    assert store.read_stream("missing") == []


def test_read_all_after_limit_and_types(store: EventStore, now: datetime) -> None:
    store.append("a", [new("x", n=1), new("y", n=2)], now=now)
    store.append("b", [new("z", n=3), new("x", n=4)], now=now)
    store.append("a", [new("y", n=5), new("x", n=6)], now=now)

    def ns(**kwargs: Any) -> list[int]:
        return [e.data["n"] for e in store.read_all(**kwargs)]

    assert ns() == [1, 2, 3, 4, 5, 6]
    assert ns(after=2) == [3, 4, 5, 6]
    assert ns(after=6) == []
    assert ns(limit=2) == [1, 2]
    assert ns(limit=0) == []
    assert ns(after=3, limit=2) == [4, 5]
    assert ns(types=["x"]) == [1, 4, 6]
    assert ns(types=("x", "z")) == [1, 3, 4, 6]
    assert ns(types=["nothing"]) == []
    assert ns(after=1, types=["x"], limit=1) == [4]
    assert ns(after=4, types=["x", "y"], limit=10) == [5, 6]
    assert [e.position for e in store.read_all(after=4)] == [5, 6]


def test_data_round_trips_as_json(store: EventStore, now: datetime) -> None:
    data = {
        "text": "héllo ✓ 你好", "int": 2**62, "neg": -7, "float": 1.5, "true": True, "null": None,
        "list": [1, "two", [3], {"four": 4}], "nested": {"a": {"b": {"c": []}}}, "empty": {},
    }
    store.append("s", [NewEntry("t", data)], now=now)
    assert store.read_stream("s")[0].data == data
    assert store.read_all()[0].data == data


def test_data_that_is_not_json_is_refused_and_nothing_is_written(store: EventStore, now: datetime) -> None:
    store.append("s", [new(ok=1)], now=now)
    # A lone surrogate is a Python str but cannot be encoded as UTF-8, so it is not JSON text either.
    for bad in ({"when": now}, {"set": {1, 2}}, {"obj": object()}, {"text": "\ud800"}):
        with pytest.raises((TypeError, ValueError)):
            store.commit([Append((write("s", new(ok=2)), write("t", NewEntry("bad", bad))))], now=now)
    assert shape(store.read_all()) == [("s", 1, "note", {"ok": 1})]
    assert store.stream_version("t") == 0
    # The store is still usable, and versions were not consumed by the refused writes.
    store.append("s", [new(ok=3)], now=now, expected_version=1)
    assert [e.version for e in store.read_stream("s")] == [1, 2]


def test_read_data_is_a_copy(store: EventStore, now: datetime) -> None:
    """The log is append-only: changing what was passed in, or what was read, changes nothing."""
    data = {"items": [1, 2], "meta": {"k": "v"}}
    store.append("s", [NewEntry("t", data)], now=now)
    data["items"].append(3)
    data["meta"]["k"] = "changed"

    first = store.read_stream("s")[0]
    first.data["items"].append(4)
    first.data["new"] = True
    store.read_all()[0].data["meta"]["k"] = "changed too"

    expected = {"items": [1, 2], "meta": {"k": "v"}}
    assert store.read_stream("s")[0].data == expected
    assert store.read_all()[0].data == expected


def test_naive_datetimes_are_refused(store: EventStore, now: datetime) -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="naive"):
        store.append("s", [new()], now=naive)
    with pytest.raises(ValueError, match="naive"):
        store.commit([Append((write("s"),))], now=naive)
    assert store.read_all() == []
    assert store.stream_version("s") == 0
    store.append("s", [new()], now=now, expected_version=0)
    assert store.stream_version("s") == 1


# -- optimistic concurrency ------------------------------------------------------------------------


def test_expected_version_zero_means_the_stream_must_not_exist(store: EventStore, now: datetime) -> None:
    store.append("s", [new()], now=now, expected_version=0)
    with pytest.raises(ConcurrencyError) as caught:
        store.append("s", [new()], now=now, expected_version=0)
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("s", 0, 1)
    assert store.stream_version("s") == 1


def test_expected_version_mismatch_names_stream_expected_and_actual(store: EventStore, now: datetime) -> None:
    store.append("orders/7", [new(), new(), new()], now=now)
    for expected in (1, 2, 4, 10):
        with pytest.raises(ConcurrencyError) as caught:
            store.append("orders/7", [new(bad=True)], now=now, expected_version=expected)
        error = caught.value
        assert (error.stream, error.expected, error.actual) == ("orders/7", expected, 3)
        message = str(error)
        assert "orders/7" in message and str(expected) in message and "3" in message
    assert store.stream_version("orders/7") == 3
    assert store.last_position() == 3
    assert all(not e.data.get("bad") for e in store.read_all())


def test_right_expected_version_and_none_both_append(store: EventStore, now: datetime) -> None:
    store.append("s", [new()], now=now, expected_version=0)
    store.append("s", [new(), new()], now=now, expected_version=1)
    store.append("s", [new()], now=now, expected_version=None)
    store.append("s", [new()], now=now, expected_version=4)
    assert [e.version for e in store.read_stream("s")] == [1, 2, 3, 4, 5]


def test_two_writes_to_one_stream_in_one_append_chain_their_versions(store: EventStore, now: datetime) -> None:
    [result] = store.commit([Append((write("s", new(n=1), expected=0), write("s", new(n=2), expected=1)))], now=now)
    assert isinstance(result, Committed)
    assert [(e.version, e.data["n"]) for e in store.read_stream("s")] == [(1, 1), (2, 2)]

    [refused] = store.commit([Append((write("s", expected=2), write("s", expected=2)))], now=now)
    assert isinstance(refused, ConcurrencyError)
    assert (refused.stream, refused.expected, refused.actual) == ("s", 2, 3)
    assert store.stream_version("s") == 2


# -- group commit ----------------------------------------------------------------------------------


def test_a_refused_append_does_not_stop_the_others(store: EventStore, now: datetime) -> None:
    store.append("b", [new()], now=now)
    results = store.commit(
        [
            Append((write("a", new(n=1)),)),
            Append((write("b", new(n=2), expected=0),)),
            Append((write("c", new(n=3), new(n=4)),)),
        ],
        now=now,
    )

    first, refused, third = results
    assert isinstance(first, Committed) and isinstance(third, Committed)
    assert isinstance(refused, ConcurrencyError)
    assert (refused.stream, refused.expected, refused.actual) == ("b", 0, 1)
    assert [e.position for e in first.entries + third.entries] == [2, 3, 4]
    assert shape(store.read_all(after=1)) == [
        ("a", 1, "note", {"n": 1}), ("c", 1, "note", {"n": 3}), ("c", 2, "note", {"n": 4}),
    ]
    assert store.read_all(after=1) == list(first.entries + third.entries)
    assert store.stream_version("b") == 1
    assert {e.recorded_at for e in store.read_all(after=1)} == {format_time(now)}


def test_appends_in_one_group_see_each_other(store: EventStore, now: datetime) -> None:
    results = store.commit(
        [
            Append((write("s", expected=0),)),
            Append((write("s", expected=1),)),
            Append((write("s", expected=1),)),  # stale: the second one moved the stream to 2
            Append((write("s", expected=2),)),
        ],
        now=now,
    )
    assert [type(r) for r in results] == [Committed, Committed, ConcurrencyError, Committed]
    stale = results[2]
    assert isinstance(stale, ConcurrencyError) and (stale.expected, stale.actual) == (1, 2)
    assert [e.version for e in store.read_stream("s")] == [1, 2, 3]


def test_an_empty_group_commit_writes_nothing(store: EventStore, now: datetime) -> None:
    assert store.commit([], now=now) == []
    assert store.last_position() == 0


def test_multi_stream_appends_are_atomic(store: EventStore, now: datetime) -> None:
    store.append("account-2", [new()], now=now)
    transfer = Append(
        (
            write("account-1", new("debited", amount=5)),
            write("account-2", new("credited", amount=5), expected=0),
            write("ledger", new("moved")),
        )
    )
    [refused] = store.commit([transfer], now=now)
    assert isinstance(refused, ConcurrencyError) and refused.stream == "account-2"
    assert store.stream_version("account-1") == 0
    assert store.stream_version("ledger") == 0
    assert store.last_position() == 1

    fixed = Append(
        (
            write("account-1", new("debited", amount=5)),
            write("account-2", new("credited", amount=5), expected=1),
            write("ledger", new("moved")),
        )
    )
    [committed] = store.commit([fixed], now=now)
    assert isinstance(committed, Committed)
    assert shape(committed.entries) == [
        ("account-1", 1, "debited", {"amount": 5}),
        ("account-2", 2, "credited", {"amount": 5}),
        ("ledger", 1, "moved", {}),
    ]
    assert [e.position for e in committed.entries] == [2, 3, 4]


def test_a_failing_projector_refuses_the_whole_commit(store: EventStore, now: datetime) -> None:
    store.append("s", [item("i1", qty=1)], now=now)
    with pytest.raises(RuntimeError, match="projector failed"):
        store.commit([Append((write("s", item("i2", qty=2)),)), Append((write("t", NewEntry("boom")),))], now=now)
    assert store.last_position() == 1
    assert ids(store.query("items")) == ["i1"]
    store.append("s", [item("i3")], now=now, expected_version=1)
    assert ids(store.query("items", order_by="id")) == ["i1", "i3"]
    assert store.rebuild_projections(apply=False) == []


# -- idempotency keys ------------------------------------------------------------------------------


def test_a_duplicate_key_within_the_window_writes_on_duplicate(store: EventStore, now: datetime) -> None:
    store.append("before", [new()], now=now)
    original = keyed("evt-1", write("events", new("received", id=1), new("fanned")))
    [first] = store.commit([original], now=now)
    assert isinstance(first, Committed) and first.duplicate_of is None
    assert [e.position for e in first.entries] == [2, 3]

    again = keyed(
        "evt-1", write("events", new("received", id=1), new("fanned")), dup=(write("dups", new("duplicate", id=1)),)
    )
    [second] = store.commit([again], now=now + timedelta(seconds=59))
    assert isinstance(second, Committed)
    assert second.duplicate_of == 2
    assert shape(second.entries) == [("dups", 1, "duplicate", {"id": 1})]
    assert store.stream_version("events") == 2
    assert store.read_all(types=["received"]) == [first.entries[0]]


def test_a_duplicate_with_no_on_duplicate_writes_nothing(store: EventStore, now: datetime) -> None:
    store.commit([keyed("k", write("s"))], now=now)
    [dup] = store.commit([keyed("k", write("s"))], now=now)
    assert dup == Committed((), 1)
    assert store.last_position() == 1


def test_a_key_is_accepted_again_after_its_window(store: EventStore, now: datetime) -> None:
    [first] = store.commit([keyed("k", write("s", new(n=1)), window=10)], now=now)
    [dup] = store.commit([keyed("k", write("s", new(n=2)), window=10)], now=now + timedelta(seconds=9.999))
    [later] = store.commit([keyed("k", write("s", new(n=3)), window=10)], now=now + timedelta(seconds=11))
    assert isinstance(first, Committed) and isinstance(dup, Committed) and isinstance(later, Committed)
    assert dup.duplicate_of == 1 and dup.entries == ()
    assert later.duplicate_of is None
    assert [e.data["n"] for e in store.read_stream("s")] == [1, 3]

    # The window now runs from the second recording, and duplicates point at it.
    [dup2] = store.commit([keyed("k", write("s", new(n=4)), window=10)], now=now + timedelta(seconds=20))
    assert isinstance(dup2, Committed) and dup2.duplicate_of == later.entries[0].position
    [after2] = store.commit([keyed("k", write("s", new(n=5)), window=10)], now=now + timedelta(seconds=22))
    assert isinstance(after2, Committed) and after2.duplicate_of is None
    assert [e.data["n"] for e in store.read_stream("s")] == [1, 3, 5]


def test_key_recorded_answers_as_the_next_commit_would(store: EventStore, now: datetime) -> None:
    assert not store.key_recorded("k", window_s=10, now=now)
    store.commit([keyed("k", write("s"), window=10)], now=now)
    assert store.key_recorded("k", window_s=10, now=now + timedelta(seconds=9.999))
    assert not store.key_recorded("k", window_s=10, now=now + timedelta(seconds=10))
    assert store.key_recorded("k", window_s=None, now=now + timedelta(days=3650))
    assert not store.key_recorded("other", window_s=None, now=now)


def test_a_key_without_a_window_is_a_duplicate_forever(store: EventStore, now: datetime) -> None:
    store.commit([keyed("k", write("s"), window=None)], now=now)
    [dup] = store.commit([keyed("k", write("s"), window=None)], now=now + timedelta(days=3650))
    assert isinstance(dup, Committed) and dup.duplicate_of == 1
    assert store.stream_version("s") == 1


def test_keys_are_independent_of_each_other_and_of_streams(store: EventStore, now: datetime) -> None:
    results = store.commit([keyed("a", write("s")), keyed("b", write("s")), keyed("A", write("t"))], now=now)
    assert [r.duplicate_of for r in results if isinstance(r, Committed)] == [None, None, None]
    [dup] = store.commit([keyed("b", write("other"))], now=now)
    assert isinstance(dup, Committed) and dup.duplicate_of == 2
    assert store.stream_version("other") == 0


def test_duplicates_inside_one_group_commit(store: EventStore, now: datetime) -> None:
    results = store.commit(
        [
            keyed("k", write("s", new(n=1), new(n=2)), dup=(write("dups", new(n=-1)),)),
            keyed("other", write("t", new(n=3))),
            keyed("k", write("s", new(n=4)), dup=(write("dups", new(n=-2)),)),
            keyed("k", write("s", new(n=5)), dup=(write("dups", new(n=-3)),)),
        ],
        now=now,
    )
    assert all(isinstance(r, Committed) for r in results)
    committed = [r for r in results if isinstance(r, Committed)]
    assert [r.duplicate_of for r in committed] == [None, None, 1, 1]
    assert [e.data["n"] for e in store.read_stream("s")] == [1, 2]
    assert [e.data["n"] for e in store.read_stream("dups")] == [-2, -3]
    # Durable as well: a later commit sees the key recorded by the group.
    [later] = store.commit([keyed("k", write("s"))], now=now + timedelta(seconds=1))
    assert isinstance(later, Committed) and later.duplicate_of == 1


def test_a_refused_keyed_append_does_not_record_its_key(store: EventStore, now: datetime) -> None:
    store.append("s", [new()], now=now)
    results = store.commit(
        [keyed("k", write("s", new(n=1), expected=0)), keyed("k", write("s", new(n=2), expected=1))], now=now
    )
    assert isinstance(results[0], ConcurrencyError)
    assert isinstance(results[1], Committed) and results[1].duplicate_of is None
    [dup] = store.commit([keyed("k", write("s", new(n=3)))], now=now)
    assert isinstance(dup, Committed) and dup.duplicate_of == results[1].entries[0].position
    assert [e.data.get("n") for e in store.read_stream("s")] == [None, 2]


def test_on_duplicate_writes_are_version_checked(store: EventStore, now: datetime) -> None:
    store.commit([keyed("k", write("s"))], now=now)
    [refused] = store.commit([keyed("k", write("s"), dup=(write("dups", expected=3),))], now=now)
    assert isinstance(refused, ConcurrencyError)
    assert (refused.stream, refused.expected, refused.actual) == ("dups", 3, 0)
    assert store.last_position() == 1


# -- projections -----------------------------------------------------------------------------------


def test_upserts_set_only_the_columns_they_name(store: EventStore, now: datetime) -> None:
    store.append("i", [item("i1", name="bolt", qty=3, price=0.5, owner="ann")], now=now)
    assert store.query("items") == [row("i1", "bolt", 3, 0.5, "ann")]

    store.append("i", [NewEntry("item.renamed", {"id": "i1", "name": "nut"})], now=now)
    assert store.query("items") == [row("i1", "nut", 3, 0.5, "ann")]

    store.append("i", [item("i1", qty=7)], now=now)
    assert store.query("items") == [row("i1", "nut", 7, 0.5, "ann")]

    store.append("i", [item("i2", name="gear")], now=now)
    assert store.query("items", where={"id": "i2"}) == [row("i2", "gear")]


def test_deletes_remove_rows_and_a_later_upsert_starts_afresh(store: EventStore, now: datetime) -> None:
    store.append("i", [item("i1", name="bolt", qty=3), item("i2", name="nut")], now=now)
    store.append("i", [NewEntry("item.removed", {"id": "i1"})], now=now)
    assert ids(store.query("items")) == ["i2"]
    store.append("i", [NewEntry("item.removed", {"id": "never-existed"})], now=now)
    assert ids(store.query("items")) == ["i2"]
    store.append("i", [item("i1", qty=9)], now=now)
    assert store.query("items", where={"id": "i1"}) == [row("i1", qty=9)]
    assert store.rebuild_projections(apply=False) == []


def test_a_table_with_a_two_column_key(store: EventStore, now: datetime) -> None:
    store.append("o1", [NewEntry("line.added", {"sku": "a"}), NewEntry("line.added", {"sku": "b"})], now=now)
    store.append("o2", [NewEntry("line.added", {"sku": "c"})], now=now)
    assert store.query("lines", order_by="sku") == [
        {"order_id": "o1", "line": 1, "sku": "a"},
        {"order_id": "o1", "line": 2, "sku": "b"},
        {"order_id": "o2", "line": 1, "sku": "c"},
    ]
    assert store.query("lines", where={"order_id": "o1", "line": 2}) == [{"order_id": "o1", "line": 2, "sku": "b"}]
    assert store.rebuild_projections(apply=False) == []


def test_a_refused_append_changes_no_projection(store: EventStore, now: datetime) -> None:
    store.append("i", [item("i1", qty=1)], now=now)
    results = store.commit(
        [Append((write("i", item("i1", qty=99), expected=0),)), Append((write("j", item("i2", qty=2)),))], now=now
    )
    assert isinstance(results[0], ConcurrencyError) and isinstance(results[1], Committed)
    assert [(r["id"], r["qty"]) for r in store.query("items", order_by="id")] == [("i1", 1), ("i2", 2)]


def test_a_duplicate_projects_its_on_duplicate_writes_only(store: EventStore, now: datetime) -> None:
    store.commit([keyed("k", write("i", item("i1", qty=1)))], now=now)
    store.commit([keyed("k", write("i", item("i1", qty=2)), dup=(write("j", item("dup", qty=0)),))], now=now)
    assert [(r["id"], r["qty"]) for r in store.query("items", order_by="id")] == [("dup", 0), ("i1", 1)]


def _stock(store: EventStore, now: datetime) -> None:
    store.append(
        "i",
        [
            item("a", name="anchor", qty=5, price=2.5, owner="ann"),
            item("b", name="bolt", qty=1, price=0.1, owner="bob"),
            item("c", name="cog", qty=12, price=7.0, owner="ann"),
            item("d", name="dowel", qty=5, owner="cat"),
            item("e", name="eyelet", price=0.3),
            item("f", name="flange", qty=30, price=9.9, owner="bob"),
        ],
        now=now,
    )


def test_query_where(store: EventStore, now: datetime) -> None:
    _stock(store, now)
    assert sorted(ids(store.query("items", where={"owner": "ann"}))) == ["a", "c"]
    assert sorted(ids(store.query("items", where={"owner": "ann", "qty": 5}))) == ["a"]
    assert sorted(ids(store.query("items", where={"qty": 5}))) == ["a", "d"]
    assert store.query("items", where={"owner": "nobody"}) == []
    assert ids(store.query("items", where={"owner": None})) == ["e"]
    assert sorted(ids(store.query("items", where={"price": None}))) == ["d"]
    assert len(store.query("items")) == 6
    assert len(store.query("items", where={})) == 6


def test_query_ranges_are_inclusive_and_skip_nulls(store: EventStore, now: datetime) -> None:
    _stock(store, now)
    assert sorted(ids(store.query("items", ranges={"qty": (5, 12)}))) == ["a", "c", "d"]
    assert sorted(ids(store.query("items", ranges={"qty": (6, None)}))) == ["c", "f"]
    assert sorted(ids(store.query("items", ranges={"qty": (None, 5)}))) == ["a", "b", "d"]
    assert sorted(ids(store.query("items", ranges={"qty": (None, None)}))) == ["a", "b", "c", "d", "f"]
    assert sorted(ids(store.query("items", ranges={"price": (0.1, 0.3)}))) == ["b", "e"]
    assert sorted(ids(store.query("items", ranges={"name": ("b", "d")}))) == ["b", "c"]
    assert store.query("items", ranges={"qty": (13, 29)}) == []
    assert sorted(ids(store.query("items", where={"owner": "ann"}, ranges={"qty": (6, None)}))) == ["c"]
    assert sorted(ids(store.query("items", ranges={"qty": (1, 12), "price": (0.2, None)}))) == ["a", "c"]


def test_query_order_by_desc_and_limit(store: EventStore, now: datetime) -> None:
    _stock(store, now)
    assert ids(store.query("items", order_by="name")) == ["a", "b", "c", "d", "e", "f"]
    assert ids(store.query("items", order_by="name", desc=True)) == ["f", "e", "d", "c", "b", "a"]
    # NULLs sort first ascending and last descending, on every backend.
    assert ids(store.query("items", order_by="price")) == ["d", "b", "e", "a", "c", "f"]
    assert ids(store.query("items", order_by="price", desc=True)) == ["f", "c", "a", "e", "b", "d"]
    assert ids(store.query("items", order_by="price", limit=2)) == ["d", "b"]
    assert ids(store.query("items", order_by="price", desc=True, limit=3)) == ["f", "c", "a"]
    assert ids(store.query("items", where={"owner": "bob"}, order_by="qty", desc=True)) == ["f", "b"]
    assert ids(store.query("items", ranges={"qty": (2, None)}, order_by="price", desc=True, limit=2)) == ["f", "c"]
    assert len(store.query("items", limit=4)) == 4
    assert store.query("items", limit=0) == []


def test_query_order_by_several_columns(store: EventStore, now: datetime) -> None:
    _stock(store, now)
    # Ties on the first column are broken by the next; NULLs first (last with desc) in every column.
    assert ids(store.query("items", order_by=["qty", "name"])) == ["e", "b", "a", "d", "c", "f"]
    assert ids(store.query("items", order_by=["qty", "name"], desc=True)) == ["f", "c", "d", "a", "b", "e"]
    assert ids(store.query("items", order_by=("owner", "qty"))) == ["e", "a", "c", "b", "f", "d"]
    assert ids(store.query("items", order_by=["owner", "qty"], limit=3)) == ["e", "a", "c"]
    assert ids(store.query("items", order_by=["name"])) == ids(store.query("items", order_by="name"))
    with pytest.raises(KeyError, match="colour"):
        store.query("items", order_by=["qty", "colour"])


def test_query_refuses_unknown_tables_and_columns(store: EventStore, now: datetime) -> None:
    _stock(store, now)
    with pytest.raises(KeyError, match="nope"):
        store.query("nope")
    with pytest.raises(KeyError, match="colour"):
        store.query("items", where={"colour": "red"})
    with pytest.raises(KeyError, match="colour"):
        store.query("items", ranges={"colour": ("a", "z")})
    with pytest.raises(KeyError, match="colour"):
        store.query("items", order_by="colour")


def test_upserts_of_unknown_columns_or_without_a_key_are_refused(store: EventStore, now: datetime) -> None:
    store.append("i", [item("i1", qty=1)], now=now)
    for bad in (NewEntry("bad.column", {"id": "i1"}), NewEntry("bad.key")):
        with pytest.raises(KeyError):
            store.commit([Append((write("j", item("i2", qty=2)),)), Append((write("k", bad),))], now=now)
        assert store.last_position() == 1
        assert store.query("items") == [row("i1", qty=1)]
    store.append("i", [item("i3")], now=now, expected_version=1)
    assert store.rebuild_projections(apply=False) == []


# -- rebuilding projections ------------------------------------------------------------------------


def _history(store: EventStore, now: datetime) -> None:
    store.append("i", [item("i1", name="bolt", qty=3, owner="ann"), item("i2", name="nut", qty=8)], now=now)
    store.append("i", [NewEntry("item.renamed", {"id": "i1", "name": "big bolt"})], now=now)
    store.append("i", [item("i3", name="cog"), NewEntry("item.removed", {"id": "i2"})], now=now)
    store.append("o1", [NewEntry("line.added", {"sku": "i1"}), NewEntry("line.added", {"sku": "i3"})], now=now)


def _sorted(differences: list[Difference]) -> list[Difference]:
    return sorted(differences, key=lambda d: (d.table, repr(d.key)))


def test_rebuild_finds_no_difference_on_a_consistent_store(store: EventStore, now: datetime) -> None:
    _history(store, now)
    before = (store.query("items", order_by="id"), store.query("lines", order_by="sku"))
    assert store.rebuild_projections(apply=False) == []
    assert store.rebuild_projections(apply=True) == []
    assert (store.query("items", order_by="id"), store.query("lines", order_by="sku")) == before
    assert ids(before[0]) == ["i1", "i3"]


def test_rebuild_reports_exactly_the_tampered_rows(store: EventStore, now: datetime, tamper: Any) -> None:
    _history(store, now)
    tamper.update("items", {"id": "i1"}, qty=999, name="forged")
    tamper.delete("items", {"id": "i3"})
    tamper.insert("items", {"id": "ghost", "name": "boo"})
    tamper.update("lines", {"order_id": "o1", "line": 2}, sku="wrong")

    expected = [
        Difference("items", ("ghost",), row("ghost", "boo"), None),
        Difference("items", ("i1",), row("i1", "forged", 999, None, "ann"), row("i1", "big bolt", 3, None, "ann")),
        Difference("items", ("i3",), None, row("i3", "cog")),
        Difference(
            "lines",
            ("o1", 2),
            {"order_id": "o1", "line": 2, "sku": "wrong"},
            {"order_id": "o1", "line": 2, "sku": "i3"},
        ),
    ]
    assert _sorted(store.rebuild_projections(apply=False)) == expected
    # apply=False changes nothing: the same differences are found again and the live rows stay wrong.
    assert _sorted(store.rebuild_projections(apply=False)) == expected
    assert ids(store.query("items", order_by="id")) == ["ghost", "i1"]

    assert _sorted(store.rebuild_projections(apply=True)) == expected
    assert store.rebuild_projections(apply=False) == []
    assert store.query("items", order_by="id") == [row("i1", "big bolt", 3, None, "ann"), row("i3", "cog")]
    assert store.query("lines", where={"order_id": "o1"}, order_by="line") == [
        {"order_id": "o1", "line": 1, "sku": "i1"},
        {"order_id": "o1", "line": 2, "sku": "i3"},
    ]


def test_rebuild_repairs_a_table_emptied_behind_the_store(store: EventStore, now: datetime, tamper: Any) -> None:
    _history(store, now)
    expected_rows = store.query("lines", order_by="line")
    tamper.delete("lines", {"order_id": "o1", "line": 1})
    tamper.delete("lines", {"order_id": "o1", "line": 2})
    differences = _sorted(store.rebuild_projections(apply=True))
    assert [(d.table, d.key, d.live) for d in differences] == [("lines", ("o1", 1), None), ("lines", ("o1", 2), None)]
    assert [d.rebuilt for d in differences] == expected_rows
    assert store.query("lines", order_by="line") == expected_rows
    # The repaired tables keep working with new entries.
    store.append("o1", [NewEntry("line.added", {"sku": "x"})], now=now)
    assert [r["sku"] for r in store.query("lines", order_by="line")] == ["i1", "i3", "x"]
    assert store.rebuild_projections(apply=False) == []


# -- closing ---------------------------------------------------------------------------------------


def test_a_closed_store_refuses_everything(store: EventStore, now: datetime) -> None:
    store.append("s", [item("i1")], now=now)
    store.close()
    calls = [
        lambda: store.append("s", [new()], now=now),
        lambda: store.commit([Append((write("s"),))], now=now),
        lambda: store.read_stream("s"),
        lambda: store.read_all(),
        lambda: store.query("items"),
        lambda: store.stream_version("s"),
        lambda: store.last_position(),
        lambda: store.rebuild_projections(apply=False),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            call()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreClosedError):
        store.read_all()
