"""Flipped bytes: the engine never replays a run from a history it cannot trust.

(a) A stored payload, changed behind the store's back (a raw UPDATE that leaves the checksum as
it was): the engine refuses that run with CorruptEntryError naming its position and stream, runs
none of its remaining steps and writes nothing to it, while every other run completes; ``steplog
check`` lists it and exits 1. Also through the ``Steplog`` client: the run's ``result()`` raises
the error, and the other runs complete.

(b) Random bytes of the database file (checkpointed) or of its WAL. Each outcome is one of:

* ``detected_by_sqlite``: SQLite cannot read the file (StorageError), or integrity_check is not ok;
* ``detected_by_checksum``: an entry's checksum (or JSON, or a gap in positions or versions);
* ``detected_by_projections``: the log is sound and a projection differs from its rebuild
  (``steplog rebuild`` repairs it);
* ``harmless``: the byte landed where nothing reads it; the log is the pristine log, and the
  engine finishes every run with the result its function gives;
* ``wal_tail_dropped`` (WAL only): SQLite's own frame checksums found the damaged frame and
  dropped it and every later frame, silently: the log is a committed prefix of the pristine one,
  exactly as with a torn WAL, and the engine finishes every run from there.

``steplog check`` exits 1 exactly in the detected outcomes. Never: a run completing with another
result, or an exception other than an EventStoreError from the store, the engine or the command.

Half the file flips are spread over the whole file, half fall within one 4 KiB stretch (a bad
sector). ``--tier ci`` flips ~100 payloads and ~100 times in the files; ``--tier long`` 1,000 of each.
With STEPLOG_RELIABILITY_REPORT set, one JSON line of counts is appended to that file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from steplog.engine import Engine, ManualClock, RunProjector, queries
from steplog.engine.coordination import Accepted, RerunRun, SendEvents
from steplog.engine.errors import EngineError
from steplog.eventstore import (
    CorruptEntryError,
    Entry,
    EventStoreError,
    SqliteEventStore,
    StorageError,
)

from steplog import cli
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

FLIPS = {"ci": 100, "long": 1000}
SECTOR = 4096
OUTCOMES = (
    "detected_by_sqlite", "detected_by_checksum", "detected_by_projections", "harmless", "wal_tail_dropped",
)


@attrs.frozen
class Pristine:
    """The undamaged database: one checkpointed file, and the same with its WAL un-checkpointed."""

    db: bytes
    wal_db: bytes
    wal: bytes
    log: tuple[Entry, ...]
    boundaries: frozenset[int]
    sleeping: tuple[str, ...]
    now: datetime

    def scheduled(self, upto: int | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
        """Run id -> (function id, trigger data) of the runs scheduled in the first ``upto`` entries."""
        return {
            entry.data["run_id"]: (entry.data["function_id"], entry.data["events"][0]["data"])
            for entry in self.log[:upto] if entry.type == "run.scheduled"
        }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    path = tmp_path_factory.mktemp("pristine") / "steplog.db"
    store = NoCheckpointStore(path, RunProjector(), synchronous="FULL")
    store.committed = [0]
    clock = ManualClock(START)
    engine = Engine(store, registry=registry_of([functions()]), clock=clock)
    engine.start()
    for n in range(3):
        engine.send({"name": STEPS_EVENT, "data": {"n": n}})
        engine.send({"name": SLEEP_EVENT, "data": {"n": n}})
        engine.run_until_idle()
    engine.advance(timedelta(seconds=SLEEP_S))  # these sleepers finish; the next ones sleep
    for n in range(3, 7):
        engine.send({"name": SLEEP_EVENT, "data": {"n": n}})
        engine.run_until_idle()
    wal_db, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()  # as a kill would leave them
    log = tuple(store.read_all())
    sleeping = tuple(row["run_id"] for row in store.query("runs", where={"status": "waiting"}, order_by="scheduled_at"))
    boundaries = frozenset(store.committed)
    store.close()  # the last connection checkpoints the WAL into the file and removes it
    assert not Path(f"{path}-wal").exists()
    assert len(sleeping) == 4
    return Pristine(path.read_bytes(), wal_db, wal, log, boundaries, sleeping, clock.now())


@pytest.fixture
def counts(tier: str, request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """The test's counts, appended as one JSON line to $STEPLOG_RELIABILITY_REPORT at its end."""
    counted: Counter[str] = Counter()
    yield counted
    report = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if report and counted["flips"]:
        part = "payload" if "payload" in request.node.name else "files"
        line = {"test": "corruption", "part": part, "tier": tier, **{k: counted[k] for k in OUTCOMES if part == "files"},
                **counted}
        with open(report, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def flip_bytes(data: bytes, rng: random.Random, count: int, window: int | None = None) -> bytes:
    """``data`` with ``count`` bytes (at distinct random offsets) changed to another value; with a
    ``window``, all of them within one random stretch of that many bytes (a bad sector)."""
    changed = bytearray(data)
    start = rng.randrange(max(1, len(data) - window + 1)) if window else 0
    stretch = range(start, min(len(data), start + window) if window else len(data))
    for offset in rng.sample(stretch, min(count, len(stretch))):
        changed[offset] ^= rng.randrange(1, 256)
    return bytes(changed)


# -- (a) a stored payload ----------------------------------------------------------------------------


def test_a_changed_payload_refuses_its_run_and_no_other(
    pristine: Pristine, tier: str, tmp_path: Path, counts: Counter[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(6005)
    for index in range(FLIPS[tier]):
        victim = rng.choice(pristine.sleeping)
        victim_entries = [e for e in pristine.log if e.stream == f"run/{victim}"]
        target = rng.choice(victim_entries)
        flipped = rng.randint(1, 16)
        where = f"flip {index}: {flipped} bytes of entry {target.position} ({target.type}) of run {victim}"
        path = tmp_path / f"payload{index}.db"
        path.write_bytes(pristine.db)
        with sqlite3.connect(path, isolation_level=None) as conn:
            [(data,)] = conn.execute("SELECT CAST(data AS BLOB) FROM log WHERE position = ?", (target.position,))
            damaged = flip_bytes(data, rng, flipped)
            conn.execute("UPDATE log SET data = CAST(? AS TEXT) WHERE position = ?", (damaged, target.position))
        conn.close()

        executed: list[tuple[str, str]] = []
        engine = TestEngine(functions(executed), path=path, start=pristine.now)
        try:
            engine.advance(timedelta(seconds=SLEEP_S))
            refused = engine.engine.refused
            assert list(refused) == [victim], f"{where}: refused {refused}"
            error = refused[victim]
            assert (error.position, error.stream) == (target.position, f"run/{victim}"), where
            assert (victim, "after") not in executed, f"{where}: the damaged run went on"
            assert raw_stream_length(path, victim) == len(victim_entries), f"{where}: written to the damaged run"
            for run_id, (function_id, data) in pristine.scheduled().items():
                if run_id != victim:
                    run = queries.get_run(engine.store, run_id)
                    assert (run["status"], run["output"]) == ("completed", expected_output(function_id, data)), where
        finally:
            engine.close()
        code = cli.main(["check", str(path)])
        out = capsys.readouterr().out
        assert code == 1, f"{where}: steplog check said {out}"
        assert f"damaged: position {target.position}, stream 'run/{victim}'" in out, where
        path.unlink()
        counts["flips"] += 1
        counts["detected_by_checksum"] += "checksum does not match" in str(error)
        counts["detected_as_bad_text"] += "not valid" in str(error) or "not an object" in str(error)
    assert counts["flips"] == FLIPS[tier]
    assert counts["detected_by_checksum"] + counts["detected_as_bad_text"] == counts["flips"]


def raw_stream_length(path: Path, run_id: str) -> int:
    with sqlite3.connect(path) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM log WHERE stream = ?", (f"run/{run_id}",))
    conn.close()
    return int(count)


def test_the_client_refuses_a_damaged_run_and_the_others_complete(
    pristine: Pristine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "client.db"
    path.write_bytes(pristine.db)
    victim = pristine.sleeping[0]
    [step] = [e for e in pristine.log if e.stream == f"run/{victim}" and e.type == "step.completed"]
    with sqlite3.connect(path, isolation_level=None) as conn:  # "n=3" becomes "n=9": valid JSON, another result
        conn.execute("UPDATE log SET data = replace(data, '\"n=', '\"m=') WHERE position = ?", (step.position,))
    conn.close()
    executed: list[tuple[str, str]] = []
    client = functions(executed, db=path, clock=ManualClock(pristine.now))
    with caplog.at_level(logging.ERROR, logger="steplog.supervisor"), client:
        client.advance(SLEEP_S)
        with pytest.raises(CorruptEntryError) as caught:
            client.run(victim).result(timeout=10)
        assert (caught.value.position, caught.value.stream) == (step.position, f"run/{victim}")
        for run_id in pristine.sleeping[1:]:
            assert client.run(run_id).result(timeout=10).startswith("n=")
    assert (victim, "after") not in executed
    assert sorted(run for run, step_id in executed if step_id == "after") == sorted(pristine.sleeping[1:])
    assert any(f"run {victim} is refused" in record.getMessage() for record in caplog.records)


# -- (b) bytes of the file and of the WAL -------------------------------------------------------------


def test_flipped_file_bytes_are_detected_or_harmless(
    pristine: Pristine, tier: str, tmp_path: Path, counts: Counter[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(6006)
    for index in range(FLIPS[tier]):
        target = "wal" if index % 4 >= 2 else "db"
        window = SECTOR if index % 2 else None
        flipped = rng.randint(1, 16)
        path = tmp_path / f"flip{index}.db"
        if target == "db":
            path.write_bytes(flip_bytes(pristine.db, rng, flipped, window))
        else:
            path.write_bytes(pristine.wal_db)
            Path(f"{path}-wal").write_bytes(flip_bytes(pristine.wal, rng, flipped, window))
        where = f"flip {index}: {flipped} bytes of the {target}" + (f" within {window} bytes" if window else "")
        code = cli.main(["check", str(path)])  # first: classify may complete a torn schema
        captured = capsys.readouterr()
        outcome, schema_torn = classify(path, pristine, target, where)
        failed = outcome.startswith("detected") or schema_torn
        assert code == (1 if failed else 0), f"{where}: {outcome}, check said {captured}"
        engine_ended = finish_runs(path, pristine, outcome, where)
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        counts["flips"] += 1
        counts[f"{target}_flips"] += 1
        counts[outcome] += 1
        counts[f"{target}:{outcome}"] += 1
        counts[f"engine_{engine_ended}"] += 1
    assert counts["flips"] == FLIPS[tier]
    assert counts["harmless"] < counts["flips"], f"no flip was detected at all: {counts}"


def classify(path: Path, pristine: Pristine, target: str, where: str) -> tuple[str, bool]:
    """What the damage did, as the store sees it, and whether the schema was cut short.

    Read-only first, so that nothing is repaired. The schema is created in several transactions
    (at the first start), so a WAL whose tail SQLite dropped may hold only part of it: then the
    file is opened for writing, as the engine would open it, which creates what is missing.
    """
    try:
        outcome = _classify(SqliteEventStore(path, RunProjector(), read_only=True), pristine, target, where)
    except StorageError as error:
        if not (target == "wal" and "no such table" in str(error)):
            return "detected_by_sqlite", False
        outcome = _classify(SqliteEventStore(path, RunProjector()), pristine, target, where)
        assert outcome == "wal_tail_dropped", f"{where}: a torn schema, then {outcome}"
        return outcome, True
    return outcome, False


def _classify(store: SqliteEventStore, pristine: Pristine, target: str, where: str) -> str:
    try:
        report = store.check()
        if report.integrity:
            return "detected_by_sqlite"
        if report.damaged:
            return "detected_by_checksum"
        if report.differences:
            return "detected_by_projections"
        log = tuple(store.read_all())
    finally:
        store.close()
    if log == pristine.log:
        return "harmless"
    assert target == "wal", f"{where}: check is ok but the log differs from the pristine log"
    assert log == pristine.log[: len(log)], f"{where}: the log is not a prefix of the pristine log"
    assert len(log) in pristine.boundaries, f"{where}: the log ends inside a transaction"
    return "wal_tail_dropped"


def finish_runs(path: Path, pristine: Pristine, outcome: str, where: str) -> str:
    """The engine on the damaged copy: where nothing was detected, every run scheduled finishes
    with its function's result. Where damage was found, the engine may stop with one of steplog's
    own errors (an EventStoreError; or an EngineError such as RunNotFoundError, when a damaged
    projection names a run the log does not have), but any run it completes has its function's
    result. Returns "finished" or "stopped"."""
    detected = outcome.startswith("detected")
    try:
        engine = TestEngine(functions(), path=path, start=pristine.now, check_determinism=not detected)
    except (EventStoreError, EngineError):
        assert detected, f"{where}: {outcome}, yet the engine could not open it"
        return "stopped"
    try:
        with_log = len(engine.store.read_all()) if not detected else len(pristine.log)
        try:
            engine.advance(timedelta(seconds=SLEEP_S))
        except (EventStoreError, EngineError):
            assert detected, f"{where}: {outcome}, yet the engine failed"
            return "stopped"
        if detected:
            assert_new_endings_are_right(engine, pristine, where)
            return "finished"
        assert not engine.engine.refused, f"{where}: {outcome}, yet runs were refused: {engine.engine.refused}"
        for run_id, (function_id, data) in pristine.scheduled(with_log).items():
            run = queries.get_run(engine.store, run_id)
            assert (run["status"], run["output"]) == ("completed", expected_output(function_id, data)), (
                f"{where}: {outcome}: run {run_id} ended as {run['status']} with {run['output']!r}"
            )
        return "finished"
    finally:
        engine.close()


def assert_new_endings_are_right(engine: TestEngine, pristine: Pristine, where: str) -> None:
    """Every run.completed the engine wrote on a damaged file has its function's result."""
    scheduled = pristine.scheduled()
    try:
        endings = engine.store.read_all(after=len(pristine.log), types=("run.completed",))
    except EventStoreError:
        return
    for entry in endings:
        run_id = entry.stream.removeprefix("run/")
        assert run_id in scheduled, f"{where}: a run that was never scheduled completed"
        function_id, data = scheduled[run_id]
        assert entry.data["output"] == expected_output(function_id, data), f"{where}: {run_id} completed wrongly"


def test_a_request_about_a_damaged_run_is_refused_alone(pristine: Pristine, tmp_path: Path) -> None:
    """The coordinator plans a batch of requests together: a rerun of a damaged run is answered
    with the CorruptEntryError, and the send planned with it is accepted all the same."""
    path = tmp_path / "coordinated.db"
    path.write_bytes(pristine.db)
    victim = pristine.sleeping[0]
    [first] = [e for e in pristine.log if e.stream == f"run/{victim}" and e.type == "run.scheduled"]
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("UPDATE log SET data = replace(data, 'damage/sleep', 'damage/sleeq') WHERE position = ?",
                     (first.position,))
    conn.close()
    engine = TestEngine(functions(), path=path, start=pristine.now)
    try:
        send = SendEvents({"name": STEPS_EVENT, "data": {"n": 40}})
        refused, accepted = engine.engine.coordinator.handle([RerunRun(victim), send], engine.now)
        assert isinstance(refused, CorruptEntryError) and refused.position == first.position
        assert isinstance(accepted, Accepted) and len(accepted.runs) == 1
    finally:
        engine.close()


def test_a_damaged_projection_stops_the_start_with_a_storage_error_that_says_what_to_do(
    pristine: Pristine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "timers.db"
    path.write_bytes(pristine.db)
    with sqlite3.connect(path, isolation_level=None) as conn:  # one byte of a sleeping run's due time
        conn.execute("UPDATE timers SET due_at = '20W6' || substr(due_at, 5) WHERE run_id = ?", (pristine.sleeping[0],))
    conn.close()
    with pytest.raises(StorageError, match="cannot be read .*`steplog rebuild --db"):
        TestEngine(functions(), path=path, start=pristine.now)
    assert cli.main(["check", str(path)]) == 1
    assert f"projections: 1 row differs from the log; `steplog rebuild --db {path}`" in capsys.readouterr().out
    assert cli.main(["rebuild", "--db", str(path)]) == 0
    engine = TestEngine(functions(), path=path, start=pristine.now)
    try:
        engine.advance(timedelta(seconds=SLEEP_S))
        assert queries.get_run(engine.store, pristine.sleeping[0])["status"] == "completed"
    finally:
        engine.close()
