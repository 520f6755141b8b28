"""Stateful property test: random group commits against a store and a plain-Python model.

Each step commits random appends (random streams, expected versions right, stale or absent,
idempotency keys, several streams per append) or moves the clock forward past or inside the key
window, or backwards. The SQLite machine runs two stores on one file, commits through either, and
reopens them. After every step every store's reads must equal the model's, and rebuilding the
projections must find no difference.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from steplog.eventstore import (
    Append,
    Change,
    Committed,
    ConcurrencyError,
    Delete,
    Entry,
    EventStore,
    MemoryEventStore,
    NewEntry,
    SqliteEventStore,
    StreamWrite,
    Table,
    Upsert,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = 10.0
STREAMS = ["a", "b", "c", "order-1", "dups"]
KEYS = ["k1", "k2", "k3"]
TYPES = ["created", "changed", "reset"]

HEADS = Table("heads", key=("stream",), columns={"stream": str, "last_version": int, "last_type": str, "n": int})
BY_TYPE = Table("by_type", key=("type", "parity"), columns={"type": str, "parity": int, "position": int, "stream": str})


class HeadsProjector:
    """heads: one row per stream, deleted by a ``reset`` entry; by_type: partial upserts."""

    tables: Sequence[Table] = (HEADS, BY_TYPE)

    def project(self, entry: Entry) -> Iterable[Change]:
        return model_changes(entry.stream, entry.version, entry.position, entry.type, entry.data)


def model_changes(stream: str, version: int, position: int, type_: str, data: dict[str, Any]) -> list[Change]:
    if type_ == "reset":
        changes: list[Change] = [Delete("heads", {"stream": stream})]
    else:
        changes = [Upsert("heads", {"stream": stream, "last_version": version, "last_type": type_})]
        if "x" in data:  # a partial upsert: only the n column
            changes.append(Upsert("heads", {"stream": stream, "n": len(data)}))
    key = {"type": type_, "parity": position % 2}
    changes.append(Upsert("by_type", {**key, "position": position}))
    if version % 3 == 0:
        changes.append(Upsert("by_type", {**key, "stream": stream}))
    return changes


# Lone surrogates are left out: they are refused (see test_contract's non-JSON test).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=4)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), text)
json_data = st.dictionaries(
    st.sampled_from(["n", "x", "é", "list"]),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
    max_size=3,
)
new_entries = st.lists(st.builds(NewEntry, st.sampled_from(TYPES), json_data), min_size=0, max_size=3)
# How an expected version is chosen, relative to the model at the time of the step:
# None, the stream's current version ("right"), a stale one, "must not exist" (0), or one ahead.
expectations = st.sampled_from([None, "right", "right", "stale", 0, "ahead"])
write_specs = st.tuples(st.sampled_from(STREAMS), new_entries, expectations)
store_index = st.integers(0, 1)  # which store commits (the SQLite machine has two on one file)
append_specs = st.fixed_dictionaries(
    {
        "writes": st.lists(write_specs, min_size=1, max_size=3),
        "key": st.one_of(st.none(), st.sampled_from(KEYS)),
        "window": st.sampled_from([WINDOW, WINDOW, None]),
        "on_duplicate": st.lists(write_specs, max_size=1),
    }
)


class Model:
    """The store's contract, written plainly."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str, int, str, dict[str, Any], str]] = []
        self.versions: dict[str, int] = {}
        self.keys: dict[str, tuple[int, float]] = {}
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {"heads": {}, "by_type": {}}

    def commit(self, appends: list[Append], now: datetime) -> list[tuple[Any, ...]]:
        now_ts = now.timestamp()
        recorded_at = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        outcomes: list[tuple[Any, ...]] = []
        for append in appends:
            writes, duplicate_of = append.writes, None
            if append.key is not None and append.key in self.keys:
                position, ts = self.keys[append.key]
                if append.key_window_s is None or now_ts - ts < append.key_window_s:
                    writes, duplicate_of = append.on_duplicate, position
                else:
                    event("key accepted again after its window")
            refusal = self._refusal(writes)
            if refusal is not None:
                outcomes.append(("refused", *refusal))
                continue
            first = len(self.log) + 1
            positions = []
            for write in writes:
                for new in write.entries:
                    version = self.versions.get(write.stream, 0) + 1
                    self.versions[write.stream] = version
                    position = len(self.log) + 1
                    self.log.append((position, write.stream, version, new.type, new.data, recorded_at))
                    self._project(model_changes(write.stream, version, position, new.type, new.data))
                    positions.append(position)
            if append.key is not None and duplicate_of is None:
                self.keys[append.key] = (first, now_ts)
            outcomes.append(("committed", tuple(positions), duplicate_of))
        return outcomes

    def _refusal(self, writes: tuple[StreamWrite, ...]) -> tuple[str, int, int] | None:
        seen: dict[str, int] = {}
        for write in writes:
            actual = seen.get(write.stream, self.versions.get(write.stream, 0))
            if write.expected_version is not None and write.expected_version != actual:
                return (write.stream, write.expected_version, actual)
            seen[write.stream] = actual + len(write.entries)
        return None

    def _project(self, changes: list[Change]) -> None:
        for change in changes:
            table = HEADS if change.table == "heads" else BY_TYPE
            rows = self.tables[change.table]
            if isinstance(change, Upsert):
                key = tuple(change.row[c] for c in table.key)
                rows.setdefault(key, dict.fromkeys(table.columns)).update(change.row)
            else:
                rows.pop(tuple(change.key[c] for c in table.key), None)


class StoreMachine(RuleBasedStateMachine):
    """Runs the model and the stores side by side; subclasses choose the backend."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="steplog-prop-"))
        self.stores = self.open()
        self.model = Model()
        self.now = T0

    def open(self) -> list[EventStore]:
        raise NotImplementedError

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def teardown(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def via(self, index: int) -> EventStore:
        return self.stores[index % len(self.stores)]

    # -- building appends from specs, against the model's current state -------------------------------

    def _expected(self, stream: str, how: Any) -> int | None:
        current = self.model.versions.get(stream, 0)
        if how == "right":
            return current
        if how == "stale":
            return max(current - 1, 0) if current else 1
        if how == "ahead":
            return current + 2
        return how  # None or 0

    def _writes(self, specs: list[tuple[str, list[NewEntry], Any]]) -> tuple[StreamWrite, ...]:
        return tuple(StreamWrite(s, tuple(entries), self._expected(s, how)) for s, entries, how in specs)

    def _append(self, spec: dict[str, Any]) -> Append:
        return Append(
            self._writes(spec["writes"]),
            key=spec["key"],
            key_window_s=spec["window"],
            on_duplicate=self._writes(spec["on_duplicate"]),
        )

    def _commit(self, appends: list[Append], via: int) -> None:
        expected = self.model.commit(appends, self.now)
        results = self.via(via).commit(appends, now=self.now)
        actual: list[tuple[Any, ...]] = []
        for result in results:
            if isinstance(result, ConcurrencyError):
                actual.append(("refused", result.stream, result.expected, result.actual))
            else:
                assert isinstance(result, Committed)
                actual.append(("committed", tuple(e.position for e in result.entries), result.duplicate_of))
        assert actual == expected
        for outcome in expected:
            event("duplicate" if outcome[0] == "committed" and outcome[2] is not None else outcome[0])

    # -- rules --------------------------------------------------------------------------------------

    @rule(spec=append_specs, via=store_index)
    def append_one(self, spec: dict[str, Any], via: int) -> None:
        self._commit([self._append(spec)], via)

    @rule(specs=st.lists(append_specs, min_size=1, max_size=4), via=store_index)
    def group_commit(self, specs: list[dict[str, Any]], via: int) -> None:
        self._commit([self._append(spec) for spec in specs], via)

    @rule(stream=st.sampled_from(STREAMS), how=expectations, data=json_data, via=store_index)
    def single_append(self, stream: str, how: Any, data: dict[str, Any], via: int) -> None:
        """The one-stream ``append`` API: raises on refusal instead of returning it."""
        expected_version = self._expected(stream, how)
        write = StreamWrite(stream, (NewEntry("changed", data),), expected_version)
        [outcome] = self.model.commit([Append((write,))], self.now)
        try:
            entries = self.via(via).append(
                stream, [NewEntry("changed", data)], now=self.now, expected_version=expected_version
            )
        except ConcurrencyError as error:
            assert outcome == ("refused", error.stream, error.expected, error.actual)
        else:
            assert outcome == ("committed", tuple(e.position for e in entries), None)

    @rule(seconds=st.sampled_from([0.000001, 1.0, WINDOW / 2, WINDOW - 0.001, WINDOW, WINDOW + 0.5, 3 * WINDOW]))
    def advance_clock(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(seconds=st.sampled_from([1.0, WINDOW]))
    def clock_goes_back(self, seconds: float) -> None:
        self.now -= timedelta(seconds=seconds)

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        expected_log = self.model.log
        for store in self.stores:
            log = store.read_all()
            assert [(e.position, e.stream, e.version, e.type, e.data, e.recorded_at) for e in log] == expected_log
            assert store.last_position() == len(expected_log)
            for stream in [*STREAMS, "never"]:
                expected = [(e[0], e[2]) for e in expected_log if e[1] == stream]
                assert [(e.position, e.version) for e in store.read_stream(stream)] == expected
                assert store.stream_version(stream) == self.model.versions.get(stream, 0)
            middle = len(expected_log) // 2
            assert [e.position for e in store.read_all(after=middle, limit=3, types=["changed", "reset"])] == [
                e[0] for e in expected_log[middle:] if e[3] in ("changed", "reset")
            ][:3]

    @invariant()
    def projections_agree_with_the_model(self) -> None:
        for store in self.stores:
            for name, table in (("heads", HEADS), ("by_type", BY_TYPE)):
                def by_key(row: dict[str, Any], table: Table = table) -> str:
                    return repr([row[c] for c in table.key])

                assert sorted(store.query(name), key=by_key) == sorted(self.model.tables[name].values(), key=by_key)

    @invariant()
    def rebuilding_finds_no_difference(self) -> None:
        for store in self.stores:
            assert store.rebuild_projections(apply=False) == []


class MemoryStoreMachine(StoreMachine):
    def open(self) -> list[EventStore]:
        return [MemoryEventStore(HeadsProjector())]


class SqliteStoreMachine(StoreMachine):
    """Two stores on one file, as two processes would have: each commits in turn, both must read alike."""

    def open(self) -> list[EventStore]:
        # NORMAL: no fsync per commit, so that many examples run quickly; durability is not under test here.
        path = self.dir / "prop.db"
        return [SqliteEventStore(path, HeadsProjector(), synchronous="NORMAL") for _ in range(2)]

    @rule()
    def reopen(self) -> None:
        self.close()
        self.stores = self.open()


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# Sized so that the file runs in well under 30 s; HYPOTHESIS_PROFILE does not override these.
TestMemoryStore: type[unittest.TestCase] = _settings(50)(MemoryStoreMachine).TestCase
TestSqliteStore: type[unittest.TestCase] = _settings(30)(SqliteStoreMachine).TestCase
