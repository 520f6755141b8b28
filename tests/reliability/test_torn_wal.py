"""A WAL torn at any byte: what SQLite recovers is a prefix of committed transactions, and the
engine opens it and goes on.

A store with ``synchronous=FULL`` and ``wal_autocheckpoint=0`` (so that every transaction stays
in the WAL) runs a workload: runs of three steps, runs that sleep, sends in several commits. After
every commit returns, the log's last position is recorded: the committed boundaries. The database
file and its WAL are copied while the store is still open (nothing checkpointed), as a kill would
leave them. Then each copy's WAL is cut at one offset (0 bytes, inside the WAL header, at a frame
boundary, inside a frame's header, inside its page, the whole length) and opened:

* the log's positions are 1..n and n is a committed boundary (never half a transaction), and its
  entries are the first n entries of the full log;
* ``check()``: SQLite's integrity_check is ok, every checksum matches, each stream's versions run
  without gaps, and the projections equal a rebuild from the log;
* the engine (``steplog.testing.TestEngine`` on the copy) starts and finishes every run whose
  start was committed, with the results its function gives.

``--tier ci`` cuts the WAL ~100 times; ``--tier long`` 1,500 times. With STEPLOG_RELIABILITY_REPORT set,
one JSON line of counts is appended to that file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from steplog.engine import Engine, ManualClock, RunProjector, queries
from steplog.eventstore import Entry, SqliteEventStore

from steplog.testing import TestEngine, registry_of


def _load_sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"steplog_reliability_{Path(name).stem}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKLOAD = _load_sibling("damage_workload.py")
START, SLEEP_S, NoCheckpointStore = WORKLOAD.START, WORKLOAD.SLEEP_S, WORKLOAD.NoCheckpointStore
functions, expected_output = WORKLOAD.functions, WORKLOAD.expected_output
STEPS_EVENT, SLEEP_EVENT = WORKLOAD.STEPS_EVENT, WORKLOAD.SLEEP_EVENT

WAL_HEADER = 32
FRAME_HEADER = 24
TRUNCATIONS = {"ci": 100, "long": 1500}
CUT_KINDS = ("zero", "wal_header", "frame_boundary", "frame_header", "page", "whole")


@attrs.frozen
class Written:
    """The workload as written: the copied files, the committed boundaries and the full log."""

    db: bytes
    wal: bytes
    boundaries: frozenset[int]
    log: tuple[Entry, ...]
    now: datetime
    page_size: int


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    path = tmp_path_factory.mktemp("torn") / "steplog.db"
    store = NoCheckpointStore(path, RunProjector(), synchronous="FULL")
    store.committed = [0]
    clock = ManualClock(START)
    engine = Engine(store, registry=registry_of([functions()]), clock=clock)
    engine.start()
    for batch in range(6):
        engine.send([{"name": STEPS_EVENT, "data": {"n": batch * 10 + i}} for i in range(1 + batch % 3)])
        engine.send({"name": SLEEP_EVENT, "data": {"n": batch}})
        engine.run_until_idle()
        if batch == 3:
            engine.advance(timedelta(seconds=SLEEP_S))  # the first sleepers finish; later ones still sleep
    copies = path.read_bytes(), Path(f"{path}-wal").read_bytes()  # taken while the store is open, as a kill leaves them
    log = tuple(store.read_all())
    boundaries = frozenset(store.committed)
    store.close()
    size = int.from_bytes(copies[1][8:12], "big")  # the WAL header's page size
    assert len(copies[1]) > WAL_HEADER + 50 * (FRAME_HEADER + size), "the WAL should hold the whole workload"
    assert len(boundaries) > 20 and max(boundaries) == len(log)
    return Written(copies[0], copies[1], boundaries, log, clock.now(), size)


def cut_offset(kind: str, wal_size: int, page_size: int, rng: random.Random) -> int:
    frame = FRAME_HEADER + page_size
    frames = (wal_size - WAL_HEADER) // frame
    start = WAL_HEADER + rng.randrange(frames) * frame  # where a frame begins
    if kind == "zero":
        return 0
    if kind == "wal_header":
        return rng.randrange(1, WAL_HEADER)
    if kind == "frame_boundary":
        return start + frame * rng.randrange(2)  # the start or the end of a frame
    if kind == "frame_header":
        return start + rng.randrange(1, FRAME_HEADER)
    if kind == "page":
        return start + FRAME_HEADER + rng.randrange(1, page_size)
    return wal_size


@pytest.fixture
def cuts(tier: str) -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    report = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": "torn_wal", "tier": tier, "truncations": counts["truncations"],
                                  "by_kind": {k: counts[k] for k in CUT_KINDS},
                                  "full_log_recovered": counts["full"], "prefix_recovered": counts["prefix"],
                                  "empty_recovered": counts["empty"]}) + "\n")


def test_a_torn_wal_recovers_a_prefix_of_committed_transactions_and_the_engine_goes_on(
    written: Written, tier: str, tmp_path: Path, cuts: Counter[str]
) -> None:
    rng = random.Random(20261203)
    total = TRUNCATIONS[tier]
    for index in range(total):
        kind = CUT_KINDS[index % len(CUT_KINDS)]
        offset = cut_offset(kind, len(written.wal), written.page_size, rng)
        where = f"cut {index} ({kind}) at WAL byte {offset} of {len(written.wal)}"
        path = tmp_path / f"cut{index}.db"
        path.write_bytes(written.db)
        Path(f"{path}-wal").write_bytes(written.wal[:offset])
        recovered = check_recovered(path, written, where)
        continue_with_engine(path, written, recovered, where)
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        cuts["truncations"] += 1
        cuts[kind] += 1
        cuts["full" if recovered == len(written.log) else "empty" if recovered == 0 else "prefix"] += 1
    assert cuts["truncations"] == total
    assert cuts["full"] and cuts["prefix"], f"the cuts should recover both whole and partial logs: {cuts}"


def check_recovered(path: Path, written: Written, where: str) -> int:
    """The recovered log is a committed prefix of the full one and the file is sound; its length."""
    store = SqliteEventStore(path, RunProjector())
    try:
        entries = store.read_all()
        positions = [entry.position for entry in entries]
        assert positions == list(range(1, len(entries) + 1)), f"{where}: positions are not 1..n"
        assert len(entries) in written.boundaries, f"{where}: {len(entries)} entries is half a transaction"
        assert tuple(entries) == written.log[: len(entries)], f"{where}: the entries differ from those written"
        report = store.check()
        assert report.ok, f"{where}: {report}"
        return len(entries)
    finally:
        store.close()


def continue_with_engine(path: Path, written: Written, recovered: int, where: str) -> None:
    """The engine opens the recovered file and finishes every run whose start was recovered."""
    engine = TestEngine(functions(), path=path, start=written.now)
    try:
        engine.advance(timedelta(seconds=SLEEP_S))
        started = {
            entry.data["run_id"]: (entry.data["function_id"], entry.data["events"][0]["data"])
            for entry in written.log[:recovered] if entry.type == "run.scheduled"
        }
        for run_id, (function_id, data) in started.items():
            run = queries.get_run(engine.store, run_id)
            assert (run["status"], run["output"]) == ("completed", expected_output(function_id, data)), (
                f"{where}: run {run_id} of {function_id} ended as {run['status']} with {run['output']!r}"
            )
        assert not engine.engine.refused, f"{where}: runs refused: {engine.engine.refused}"
    finally:
        engine.close()


def test_the_cut_offsets_cover_every_kind_of_place(written: Written) -> None:
    rng = random.Random(1)
    frame = FRAME_HEADER + written.page_size
    size = len(written.wal)
    for _ in range(50):
        assert cut_offset("zero", size, written.page_size, rng) == 0
        assert 0 < cut_offset("wal_header", size, written.page_size, rng) < WAL_HEADER
        assert (cut_offset("frame_boundary", size, written.page_size, rng) - WAL_HEADER) % frame == 0
        assert 0 < (cut_offset("frame_header", size, written.page_size, rng) - WAL_HEADER) % frame < FRAME_HEADER
        assert (cut_offset("page", size, written.page_size, rng) - WAL_HEADER) % frame > FRAME_HEADER
        assert cut_offset("whole", size, written.page_size, rng) == size
