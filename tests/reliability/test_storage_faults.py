"""Storage faults: what the engine does when SQLite fails under it, and that a restart repairs it.

A fault layer sits under the store (``FaultyStore``: its connections are wrapped in a proxy that
counts the statements the store runs and, at the Nth one, raises ``sqlite3.OperationalError`` with
SQLite's own message). Each (kind, mode, N) is one case: the workload runs until the fault
stops it or it completes, then the database is "restarted" (closed, reopened with a plain store
and a fresh engine that recovers and finishes the work), and we check that

* every acknowledged event (its ``send`` returned) is in the log, and every run completes;
* every step whose commit was observed (the function saw its result) is still in the log, and
  its body never ran again after that;
* ``PRAGMA integrity_check`` is ok and the projections equal a rebuild from the log;
* while the store cannot write, new work is refused with an error naming the storage failure
  and nothing more is acknowledged; a failed COMMIT is not retried in place (fail-stop);
* a transient "database is locked" at BEGIN is waited out by the writer without stopping.

Where each kind of fault is injected, as SQLite can raise it:

* ``io`` ("disk I/O error"): before any statement, on the writer or a reader;
* ``io-durable`` ("disk I/O error"): after a COMMIT that did take effect, as when the data
  reached the file but fsync reported a failure (the caller cannot know either way);
* ``full`` ("database or disk is full"): before any statement that writes (INSERT, UPDATE,
  DELETE, CREATE, COMMIT) on the writer;
* ``locked`` ("database is locked"): before ``BEGIN IMMEDIATE``, the only place a WAL writer waits
  for another connection (once it holds the write lock, nothing else in its transaction can be busy).

A fault raised before a statement skips it; ``io-durable`` executes the COMMIT, then raises.
``once`` faults only the Nth eligible statement; ``persistent`` faults it and every later one
(the restart uses a plain store: the disk was repaired). N runs 1, 2, ... until the workload
completes without reaching the Nth statement, so the loops end by themselves.

Faults start once the file is open (a fault while opening it is its own test). Each statement is
counted on every connection, or on the writer's alone (``writer_only``).

Workloads: the synchronous engine on a ManualClock (every N, both tiers); the threaded client
(``steplog.Steplog``, as a user runs it: the ci tier tries N = 1, 2, 3, 5, 8, ... on the writer,
the long tier every N on every connection, and also senders on several threads at once); the
HTTP event API while the store is failed (503, never 200); the CLI on a database left behind by
a fault; and a real disk-full (``PRAGMA max_page_count``). The last tests pin the bugs these
faults found. The numbers go to the file named by STEPLOG_RELIABILITY_REPORT, if set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest
from steplog.actors.activity import Activity
from steplog.actors.run import ExecuteRun, RunWorker, WorkerPool
from steplog.actors.writer import StoreWriter, commit_through
from steplog.engine import Engine, FunctionDef, FunctionRegistry, ManualClock, RunProjector, define_function, queries
from steplog.eventstore import (
    Append,
    EventStoreError,
    MemoryEventStore,
    NewEntry,
    SqliteEventStore,
    StorageError,
    StoreBusyError,
    StreamWrite,
)

import steplog
from steplog import cli

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WAIT = 30.0
EVENT = "app/order"
FUNCTION = "order"
SLEEP = timedelta(seconds=1)
AFTER_SLEEP = timedelta(seconds=2)

MESSAGES = {
    "io": "disk I/O error",
    "io-durable": "disk I/O error",
    "full": "database or disk is full",
    "locked": "database is locked",
}
"""SQLite's own messages for SQLITE_IOERR, SQLITE_FULL and SQLITE_BUSY."""
NAMED_IN_ERRORS = {"io": "disk I/O error", "io-durable": "disk I/O error", "full": "disk is full", "locked": "locked"}
"""What an error caused by each kind must say (the writer words an exhausted lock wait its own way)."""
KINDS = tuple(MESSAGES)
MODES = ("once", "persistent")
WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "CREATE", "REPLACE", "COMMIT")


# -- the fault layer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """Raise ``kind``'s error at the ``at``-th statement where it can happen (1-based)."""

    kind: str
    persistent: bool
    at: int

    def __str__(self) -> str:
        return f"{self.kind}/{'persistent' if self.persistent else 'once'}/N={self.at}"


@dataclass
class FaultLog:
    """What the fault layer saw: statements counted, faults raised, and what ran after the first."""

    fault: Fault
    writer_only: bool = False
    armed: bool = False
    only: str | None = None
    """If set, only statements containing this text (upper case) are eligible."""
    eligible: int = 0
    injected: int = 0
    first_sql: str | None = None
    attempted_after_first: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hit(self) -> bool:
        return self.injected > 0

    def decide(self, sql: str, on_writer: bool) -> str | None:
        """'before' or 'after' (raise before or after executing the statement), or None."""
        head = " ".join(sql.split()[:2]).upper()
        with self.lock:
            if not self.armed:
                return None
            if self.first_sql is not None and on_writer:
                self.attempted_after_first.append(head)
            if not self._eligible(head, on_writer) or (self.only is not None and self.only not in sql.upper()):
                return None
            self.eligible += 1
            if self.eligible < self.fault.at or (self.eligible > self.fault.at and not self.fault.persistent):
                return None
            self.injected += 1
            if self.first_sql is None:
                self.first_sql = head
                return "after" if self.fault.kind == "io-durable" else "before"
            return "before"

    def _eligible(self, head: str, on_writer: bool) -> bool:
        kind = self.fault.kind
        if self.writer_only and not on_writer:
            return False
        if kind == "io":
            return True
        if kind == "io-durable":
            return on_writer and head.startswith("COMMIT")
        if kind == "full":
            return on_writer and head.startswith(WRITE_STATEMENTS)
        return on_writer and head == "BEGIN IMMEDIATE"

    def commits_attempted_after_first(self) -> list[str]:
        with self.lock:
            return [head for head in self.attempted_after_first if head.startswith(("BEGIN IMMEDIATE", "COMMIT"))]


class FaultyConnection:
    """A sqlite3.Connection that raises the planned fault at the planned statement."""

    def __init__(self, conn: sqlite3.Connection, faults: FaultLog, on_writer: bool) -> None:
        self._conn = conn
        self._faults = faults
        self._on_writer = on_writer

    def _fail(self) -> sqlite3.OperationalError:
        return sqlite3.OperationalError(MESSAGES[self._faults.fault.kind])

    def _run(self, sql: str, call: Callable[[], Any]) -> Any:
        when = self._faults.decide(sql, self._on_writer)
        if when == "before":
            raise self._fail()
        result = call()
        if when == "after":
            raise self._fail()
        return result

    def execute(self, sql: str, *args: Any) -> Any:
        return self._run(sql, lambda: self._conn.execute(sql, *args))

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._run(sql, lambda: self._conn.executemany(sql, *args))

    def executescript(self, sql: str) -> Any:
        return self._run(sql, lambda: self._conn.executescript(sql))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class FaultyStore(SqliteEventStore):
    """A SQLite store whose every connection (the writer, each thread's reader) goes through the fault layer."""

    def __init__(self, path: Path, faults: FaultLog) -> None:
        self.faults = faults
        self._connected = 0
        super().__init__(path, RunProjector())
        faults.armed = True  # opening the file is tested on its own (see test_a_fault_while_opening_...)

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        self._connected += 1  # the store opens its writer first, then a reader per thread
        wrapped: Any = FaultyConnection(conn, self.faults, on_writer=self._connected == 1)
        return wrapped  # type: ignore[no-any-return]


class SizeLimitedStore(SqliteEventStore):
    """A SQLite store whose writer may not grow the file past ``PRAGMA max_page_count``: a real SQLITE_FULL."""

    def limit_growth(self, extra_pages: int) -> int:
        """Let the file grow by at most ``extra_pages`` pages from now; returns the limit."""
        pages = int(self._writer.execute("PRAGMA page_count").fetchone()[0])
        return int(self._writer.execute(f"PRAGMA max_page_count = {pages + extra_pages}").fetchone()[0])


# -- the workload: a function of a few steps, and what it observed ---------------------------------


@dataclass
class Ledger:
    """What the workload saw, in order: step bodies executed, step results observed, sends acknowledged."""

    trail: list[tuple[str, str, str]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def executed(self, run_id: str, step: str, value: int) -> int:
        with self.lock:
            self.trail.append(("executed", run_id, step))
        return value

    def observed(self, run_id: str, step: str) -> None:
        with self.lock:
            self.trail.append(("observed", run_id, step))

    def observed_steps(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(run_id, step) for what, run_id, step in self.trail if what == "observed"}

    def bodies_run_after_their_commit_was_seen(self) -> list[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        again: list[tuple[str, str]] = []
        with self.lock:
            for what, run_id, step in self.trail:
                if what == "observed":
                    seen.add((run_id, step))
                elif (run_id, step) in seen:
                    again.append((run_id, step))
        return again


def order_handler(ledger: Ledger) -> Callable[[steplog.Context], int]:
    """reserve, sleep 1 s, charge: each step's result is observed by the code after it."""

    def order(ctx: steplog.Context) -> int:
        run_id = ctx.run_id
        n = int(ctx.event.data["n"])
        reserved = ctx.step.run("reserve", lambda: ledger.executed(run_id, "reserve", n))
        ledger.observed(run_id, "reserve")
        ctx.step.sleep("cool", SLEEP)
        charged = ctx.step.run("charge", lambda: ledger.executed(run_id, "charge", reserved + 100))
        ledger.observed(run_id, "charge")
        return int(charged)

    return order


def order_function(ledger: Ledger) -> FunctionDef:
    return define_function(order_handler(ledger), fn_id=FUNCTION, trigger=steplog.TriggerEvent(event=EVENT), retries=0)


def order_event(n: int) -> dict[str, Any]:
    return {"name": EVENT, "data": {"n": n}}


# -- what must hold after the restart --------------------------------------------------------------


def integrity(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def check_recovered(store: SqliteEventStore, path: Path, ledger: Ledger, case: str) -> None:
    """Nothing acknowledged or observed is lost, every run completed, and the file is sound."""
    received = {entry.data["event"]["id"] for entry in store.read_all(types=["event.received"])}
    lost = [event_id for event_id in ledger.acked if event_id not in received]
    assert not lost, f"{case}: acknowledged events lost: {lost}"
    runs = queries.list_runs(store, limit=None)
    unfinished = [(row["run_id"], row["status"]) for row in runs if row["status"] != "completed"]
    assert not unfinished, f"{case}: runs not completed after the restart: {unfinished}"
    for event_id in ledger.acked:
        assert queries.list_runs(store, event_id=event_id, limit=None), f"{case}: acknowledged event {event_id} started no run"
    for run_id, step in sorted(ledger.observed_steps()):
        completed = [
            entry for entry in store.read_stream(f"run/{run_id}")
            if entry.type == "step.completed" and entry.data["step"] == step
        ]
        assert len(completed) == 1, f"{case}: observed step {step} of run {run_id} is in the log {len(completed)} times"
    again = ledger.bodies_run_after_their_commit_was_seen()
    assert not again, f"{case}: step bodies ran again after their commit was observed: {again}"
    assert integrity(path) == [("ok",)], f"{case}: integrity_check failed"
    assert store.rebuild_projections(apply=False) == [], f"{case}: the projections differ from a rebuild"


# -- the synchronous engine: every N ---------------------------------------------------------------


EVENTS = 3


def drive_engine(engine: Engine, ledger: Ledger, events: range) -> None:
    """Send each event and run it to its sleep, then move past the sleeps and finish every run."""
    for n in events:
        ledger.acked.extend(engine.send(order_event(n)))
        engine.run_until_idle()
    engine.advance(AFTER_SLEEP)


@dataclass
class Outcome:
    """One case: whether its fault was reached, and how the engine took it."""

    case: str
    hit: bool
    injected: int
    stopped: bool = False
    waited_out: bool = False


def run_engine_case(tmp_path: Path, fault: Fault) -> Outcome:
    path = tmp_path / f"{fault.kind}-{fault.persistent}-{fault.at}.db"
    ledger = Ledger()
    registry = FunctionRegistry()
    registry.add(order_function(ledger))
    clock = ManualClock(START)
    faults = FaultLog(fault)
    store = FaultyStore(path, faults)
    failure: Exception | None = None
    try:
        engine = Engine(store, registry=registry, clock=clock)
        engine.start()
        drive_engine(engine, ledger, range(EVENTS))
    except Exception as error:  # noqa: BLE001 - every error is checked below
        failure = error
    case = str(fault)
    if failure is not None:
        assert faults.hit, f"{case}: the workload failed without a fault: {failure!r}"
        check_failure_names_the_fault(failure, fault, case)
        check_sync_engine_refuses_while_failed(store, registry, clock, ledger, faults, case)
    store.close()
    restart_engine(path, registry, clock, ledger, case)
    if fault.kind == "locked" and failure is not None:  # this engine does not wait for a lock: it says so
        assert isinstance(failure, StoreBusyError) and "nothing was written" in str(failure), f"{case}: {failure!r}"
    return Outcome(case, faults.hit, faults.injected, stopped=isinstance(failure, StorageError))


def check_failure_names_the_fault(failure: BaseException, fault: Fault, case: str) -> None:
    assert isinstance(failure, EventStoreError), f"{case}: not a storage error: {failure!r}"
    assert NAMED_IN_ERRORS[fault.kind] in str(failure), f"{case}: the error does not name the fault: {failure}"


def check_sync_engine_refuses_while_failed(
    store: FaultyStore, registry: FunctionRegistry, clock: ManualClock, ledger: Ledger, faults: FaultLog, case: str
) -> None:
    """After a failed COMMIT (or while the fault persists) a send is refused and nothing is retried in place."""
    failed_commit = faults.first_sql == "COMMIT"
    if not (failed_commit or faults.fault.persistent):
        return
    engine = Engine(store, registry=registry, clock=clock)
    with pytest.raises(EventStoreError) as refused:
        ledger.acked.extend(engine.send(order_event(99)))
    check_failure_names_the_fault(refused.value, faults.fault, case)
    if failed_commit:
        assert "broken" in str(refused.value), f"{case}: a send after a failed commit was not refused as broken"
        assert faults.commits_attempted_after_first() == [], f"{case}: the store wrote again after a failed commit"


def restart_engine(path: Path, registry: FunctionRegistry, clock: ManualClock, ledger: Ledger, case: str) -> None:
    store = SqliteEventStore(path, RunProjector())
    try:
        engine = Engine(store, registry=registry, clock=clock)
        engine.start()
        engine.run_until_idle()
        clock.advance(AFTER_SLEEP)
        engine.run_until_idle()
        ledger.acked.extend(engine.send(order_event(1000)))  # and the engine takes new work
        engine.run_until_idle()
        engine.advance(AFTER_SLEEP)
        check_recovered(store, path, ledger, case)
    finally:
        store.close()


# -- the threaded client -----------------------------------------------------------------------------


def make_client(ledger: Ledger, db: Path | SqliteEventStore, clock: ManualClock) -> steplog.Steplog:
    client = steplog.Steplog(app_id="faults", db=db, clock=clock)
    client.create_function(fn_id=FUNCTION, trigger=steplog.TriggerEvent(event=EVENT), retries=0)(order_handler(ledger))
    return client


def settle(client: steplog.Steplog) -> None:
    """Wait for the runs started so far, move past their sleeps, and wait for them to finish."""
    assert client.run_until_idle(timeout=WAIT), "the runs did not settle"
    client.advance(AFTER_SLEEP, wait=False)
    assert client.run_until_idle(timeout=WAIT), "the runs did not settle after their sleeps"


def drive_client(client: steplog.Steplog, ledger: Ledger) -> None:
    """One event at a time, each run to its sleep; then past the sleeps to the end."""
    for n in range(EVENTS):
        ledger.acked.extend(client.send(order_event(n)))
        assert client.run_until_idle(timeout=WAIT), "the run did not reach its sleep"
    settle(client)


SENDERS = 4


def drive_client_concurrently(client: steplog.Steplog, ledger: Ledger) -> None:
    """SENDERS threads send EVENTS events each, all at once: group commits mix sends and steps."""
    errors: list[Exception] = []

    def send_some(first: int) -> None:
        try:
            for n in range(first, first + EVENTS):
                ledger.acked.extend(client.send(order_event(n)))
        except Exception as error:  # noqa: BLE001 - raised again in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=send_some, args=(100 * k,)) for k in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a send did not return"
    if errors:
        raise errors[0]
    settle(client)


Drive = Callable[[steplog.Steplog, Ledger], None]


def run_client_case(tmp_path: Path, fault: Fault, *, writer_only: bool = True, drive: Drive = drive_client) -> Outcome:
    path = tmp_path / f"client-{fault.kind}-{fault.persistent}-{fault.at}.db"
    ledger = Ledger()
    clock = ManualClock(START)
    faults = FaultLog(fault, writer_only=writer_only)
    store = FaultyStore(path, faults)
    client = make_client(ledger, store, clock)
    case = f"{'client' if drive is drive_client else 'concurrent'} {fault}"
    failure: Exception | None = None
    started = False
    try:
        client.start()
        started = True
        drive(client, ledger)
    except Exception as error:  # noqa: BLE001 - checked below
        failure = error
        if started:
            check_client_stopped(client, faults, ledger, failure, case)
        else:
            check_start_refused(faults, failure, case)
    waited_out = check_brief_locks_waited_out(faults, failure, case)
    client.stop(timeout=WAIT)
    store.close()
    restart_client(path, ledger, clock, case)
    return Outcome(case, faults.hit, faults.injected, stopped=failure is not None, waited_out=waited_out)


def check_brief_locks_waited_out(faults: FaultLog, failure: Exception | None, case: str) -> bool:
    """A brief lock is waited out; any other fault that was reached stops the workload."""
    brief_lock = faults.fault.kind == "locked" and not faults.fault.persistent
    if brief_lock:
        assert failure is None, f"{case}: a brief lock was not waited out: {failure!r}"
    elif faults.hit:
        assert failure is not None, f"{case}: the engine went on as if the store had not failed"
    return brief_lock and faults.hit


def check_start_refused(faults: FaultLog, failure: Exception, case: str) -> None:
    """start() could not read the log: it raised StorageError naming the fault and left nothing running."""
    assert faults.hit, f"{case}: start failed without a fault: {failure!r}"
    assert isinstance(failure, StorageError), f"{case}: start failed with {failure!r}"
    assert NAMED_IN_ERRORS[faults.fault.kind] in str(failure), f"{case}: unclear start failure: {failure!r}"
    assert pykka.ActorRegistry.get_all() == [], f"{case}: a failed start left actors running"


def check_client_stopped(
    client: steplog.Steplog, faults: FaultLog, ledger: Ledger, failure: Exception, case: str
) -> None:
    """The engine stopped for the fault, refuses new work, and wrote nothing after a failed COMMIT."""
    assert faults.hit, f"{case}: the workload failed without a fault: {failure!r}"
    assert isinstance(failure, steplog.EngineStoppedError), f"{case}: not EngineStoppedError: {failure!r}"
    check_client_refuses(client, faults.fault, ledger, case)
    if faults.first_sql == "COMMIT":
        assert faults.commits_attempted_after_first() == [], f"{case}: the writer wrote again after a failed commit"


def check_client_refuses(client: steplog.Steplog, fault: Fault, ledger: Ledger, case: str) -> None:
    """While stopped, send, invoke and cancel raise EngineStoppedError naming the storage failure."""
    run_id = next((run_id for _, run_id, _ in ledger.trail), "01NOSUCHRUN00000000000000")
    attempts: dict[str, Callable[[], Any]] = {
        "send": lambda: ledger.acked.extend(client.send(order_event(99))),
        "invoke": lambda: ledger.acked.extend(client.invoke(FUNCTION, {"n": 99})),
        "cancel": lambda: client.cancel(run_id),
    }
    for name, attempt in attempts.items():
        with pytest.raises(steplog.EngineStoppedError) as refused:
            attempt()
        message = str(refused.value)
        assert "the store failed" in message, f"{case}: {name} refused without naming the store: {message}"
        assert NAMED_IN_ERRORS[fault.kind] in message, f"{case}: {name} refused without naming the fault: {message}"


def restart_client(path: Path, ledger: Ledger, clock: ManualClock, case: str) -> None:
    """A plain client on the same file recovers the runs, finishes them and takes new work."""
    with make_client(ledger, path, clock) as client:
        settle(client)
        ledger.acked.extend(client.send(order_event(1000)))
        settle(client)
        store = client.store
        assert isinstance(store, SqliteEventStore)
        check_recovered(store, path, ledger, case)


# -- the cases, by tier ------------------------------------------------------------------------------


TALLY: list[Outcome] = []
"""Every case run in this session, for the reliability report."""


def sampled(at: int) -> bool:
    """The N the ci tier tries with the threaded client: 1, 2, 3, 5, 8, 13, ... (Fibonacci numbers)."""
    a, b = 1, 2
    while a < at:
        a, b = b, a + b
    return a == at


def faults_until_clean(kind: str, persistent: bool, run: Callable[[Fault], Outcome], *, every: bool = True) -> list[Outcome]:
    """N = 1, 2, ... (or the sampled N) until the workload completes without reaching the Nth eligible statement."""
    outcomes: list[Outcome] = []
    for at in range(1, 100_000):
        if not every and not sampled(at):
            continue
        outcome = run(Fault(kind, persistent, at))
        outcomes.append(outcome)
        TALLY.append(outcome)
        if not outcome.hit:
            return outcomes
    raise AssertionError(f"{kind}: the workload never ran out of statements")


def check_outcomes(kind: str, mode: str, outcomes: list[Outcome]) -> None:
    *hit, clean = outcomes
    assert hit and all(outcome.hit for outcome in hit), f"{kind}/{mode}: the workload never reached a fault"
    assert not clean.hit and not clean.stopped
    if kind == "locked" and mode == "once":
        assert all(outcome.waited_out and not outcome.stopped for outcome in hit)
    else:
        assert all(outcome.stopped for outcome in hit), f"{kind}/{mode}: a fault did not stop the workload"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_synchronous_engine_recovers_from_a_fault_at_every_statement(tmp_path: Path, kind: str, mode: str) -> None:
    outcomes = faults_until_clean(kind, mode == "persistent", lambda fault: run_engine_case(tmp_path, fault))
    *hit, _ = outcomes
    assert hit and all(outcome.hit for outcome in hit), f"{kind}/{mode}: the workload never reached a fault"
    if kind == "locked":  # the synchronous engine does not wait: StoreBusyError, nothing written, no harm
        assert not any(outcome.stopped for outcome in hit)
    else:
        assert all(outcome.stopped for outcome in hit), f"{kind}/{mode}: a fault did not stop the workload"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_the_client_stops_on_a_fault_and_recovers_after_a_restart(
    tmp_path: Path, tier: str, kind: str, mode: str
) -> None:
    """The ci tier tries the sampled N on the writer; the long tier every N, on the readers too."""
    every = tier == "long"
    outcomes = faults_until_clean(
        kind, mode == "persistent", lambda fault: run_client_case(tmp_path, fault, writer_only=not every), every=every
    )
    check_outcomes(kind, mode, outcomes)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_senders_stop_on_a_fault_and_recover_after_a_restart(
    tmp_path: Path, tier: str, kind: str, mode: str
) -> None:
    """Sends from several threads at once: a fault in a group commit fails every caller in it. Long tier only."""
    if tier != "long":
        pytest.skip("the long tier's workload (--tier long)")
    outcomes = faults_until_clean(
        kind, mode == "persistent",
        lambda fault: run_client_case(tmp_path, fault, writer_only=False, drive=drive_client_concurrently),
    )
    check_outcomes(kind, mode, outcomes)


def workload_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """Cases per workload: the synchronous engine's are named by their fault alone."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        first = outcome.case.split(" ")[0]
        workload = first if first in ("client", "concurrent", "http", "cli", "real") else "engine"
        counts[workload] = counts.get(workload, 0) + 1
    return counts


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """Append this module's numbers to the reliability report (env STEPLOG_RELIABILITY_REPORT), if asked."""
    TALLY.clear()
    yield
    target = os.environ.get("STEPLOG_RELIABILITY_REPORT")
    if not target or not TALLY:
        return
    line = {
        "test": "storage_faults",
        "cases": len(TALLY),
        "faults_injected": sum(outcome.injected for outcome in TALLY),
        "cases_hit": sum(outcome.hit for outcome in TALLY),
        "engine_stopped": sum(outcome.stopped for outcome in TALLY),
        "waited_out": sum(outcome.waited_out for outcome in TALLY),
        "by_workload": workload_counts(TALLY),
    }
    with open(target, "a", encoding="utf-8") as report:
        report.write(json.dumps(line) + "\n")


# -- the HTTP event API and the CLI on a failed store ------------------------------------------------


EVENT_KEY = "fault-key"


def load_server_harness() -> Any:
    """tests/server/conftest.py's uvicorn-on-loopback runner (tests run with --import-mode=importlib)."""
    path = Path(__file__).parents[1] / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location("steplog_server_test_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def serve() -> Iterator[Callable[[steplog.Steplog], str]]:
    """serve(client) -> the base URL of steplog's app for that client, on a real uvicorn server."""
    from steplog.server import ServerConfig, create_app

    harness = load_server_harness()
    running: list[Any] = []

    def start(client: steplog.Steplog) -> str:
        server = harness._Running(create_app(client, ServerConfig(event_keys=(EVENT_KEY,))))
        running.append(server)
        return str(server.start())

    yield start
    for server in running:
        server.stop()


@pytest.mark.parametrize("kind", ["io", "full", "io-durable"])
def test_the_event_api_answers_503_while_the_store_is_failed(
    tmp_path: Path, serve: Callable[[steplog.Steplog], str], kind: str
) -> None:
    """The first POST meets the fault (its commit fails), every later one a stopped engine: all get a
    retryable 503 with a JSON error naming the storage failure, and none is acknowledged."""
    import httpx

    path = tmp_path / "api.db"
    ledger = Ledger()
    clock = ManualClock(START)
    faults = FaultLog(Fault(kind, persistent=True, at=1), writer_only=True)  # the first commit fails
    store = FaultyStore(path, faults)
    client = make_client(ledger, store, clock)
    with client:
        base_url = serve(client)
        with httpx.Client(timeout=WAIT) as http:
            for n in range(3):
                response = http.post(f"{base_url}/e/{EVENT_KEY}", json=order_event(n))
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["ids"] == [] and body["status"] == 503
                assert "the store failed" in body["error"] and NAMED_IN_ERRORS[kind] in body["error"], body
    assert faults.hit
    TALLY.append(Outcome(f"http {kind}", True, faults.injected, stopped=True))
    restart_client(path, ledger, clock, f"http {kind}")


def left_after_a_fault(tmp_path: Path, fault: Fault) -> tuple[Path, Ledger]:
    """A database that a client was writing when the fault stopped it; nothing repaired it since."""
    path = tmp_path / "left.db"
    ledger = Ledger()
    faults = FaultLog(fault, writer_only=True)
    store = FaultyStore(path, faults)
    client = make_client(ledger, store, ManualClock(START))
    client.start()
    with pytest.raises(steplog.EngineStoppedError):
        drive_client(client, ledger)
    client.stop(timeout=WAIT)
    store.close()
    assert faults.hit
    TALLY.append(Outcome(f"cli {fault}", True, faults.injected, stopped=True))
    return path, ledger


@pytest.mark.parametrize("fault", [Fault("io", False, 30), Fault("io-durable", True, 8), Fault("full", True, 20)], ids=str)
def test_the_cli_reads_and_rebuilds_a_database_left_by_a_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: Fault
) -> None:
    path, ledger = left_after_a_fault(tmp_path, fault)
    capsys.readouterr()
    assert cli.main(["runs", "--db", str(path)]) == 0
    listed = capsys.readouterr().out
    conn = sqlite3.connect(path)
    try:
        run_ids = {row[0] for row in conn.execute("SELECT run_id FROM runs")}
    finally:
        conn.close()
    assert run_ids and all(run_id in listed for run_id in run_ids), listed
    assert cli.main(["rebuild", "--db", str(path)]) == 0
    assert "no differences" in capsys.readouterr().out
    assert integrity(path) == [("ok",)]
    restart_client(path, ledger, ManualClock(START + timedelta(minutes=1)), f"cli {fault}")


# -- a real disk full: a size-limited database -------------------------------------------------------


def test_a_real_disk_full_stops_the_client_and_a_restart_finishes_the_work(tmp_path: Path) -> None:
    """``PRAGMA max_page_count`` just above the file's size: SQLite itself raises SQLITE_FULL."""
    path = tmp_path / "small.db"
    ledger = Ledger()
    clock = ManualClock(START)
    store = SizeLimitedStore(path, RunProjector())
    limit = store.limit_growth(extra_pages=6)
    client = make_client(ledger, store, clock)
    client.start()
    with pytest.raises(steplog.EngineStoppedError, match="database or disk is full") as stopped:
        for n in range(10_000):  # bounded: each send grows the file, so the limit comes soon
            ledger.acked.extend(client.send({**order_event(n), "data": {"n": n, "pad": "x" * 2000}}))
            assert client.run_until_idle(timeout=WAIT)
    assert "the store failed" in str(stopped.value)
    check_client_refuses(client, Fault("full", True, 1), ledger, "real disk full")
    client.stop(timeout=WAIT)
    store.close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    assert pages <= limit and len(ledger.acked) > 0
    TALLY.append(Outcome("real disk full", True, 1, stopped=True))
    restart_client(path, ledger, clock, "real disk full")  # the disk has room again


def test_a_real_disk_full_in_the_synchronous_engine_breaks_the_store_until_reopened(tmp_path: Path) -> None:
    path = tmp_path / "small-sync.db"
    ledger = Ledger()
    registry = FunctionRegistry()
    registry.add(order_function(ledger))
    clock = ManualClock(START)
    store = SizeLimitedStore(path, RunProjector())
    store.limit_growth(extra_pages=4)
    engine = Engine(store, registry=registry, clock=clock)
    engine.start()
    with pytest.raises(StorageError, match="database or disk is full"):
        for n in range(10_000):
            ledger.acked.extend(engine.send({**order_event(n), "data": {"n": n, "pad": "x" * 2000}}))
            engine.run_until_idle()
    with pytest.raises(StorageError, match="broken by an earlier failure.*database or disk is full"):
        engine.send(order_event(0))
    store.close()
    TALLY.append(Outcome("real disk full, synchronous", True, 1, stopped=True))
    restart_engine(path, registry, clock, ledger, "real disk full, synchronous")


# -- opening the file --------------------------------------------------------------------------------


def test_a_fault_while_opening_the_file_is_a_storage_error(tmp_path: Path) -> None:
    class FaultyFromTheStart(FaultyStore):
        def __init__(self, path: Path, faults: FaultLog) -> None:
            faults.armed = True
            super().__init__(path, faults)

    faults = FaultLog(Fault("io", False, 1))
    with pytest.raises(StorageError, match="disk I/O error"):
        FaultyFromTheStart(tmp_path / "open.db", faults)



# -- regressions: bugs these faults found ------------------------------------------------------------


def started_client(tmp_path: Path, faults: FaultLog) -> tuple[steplog.Steplog, FaultyStore, Ledger]:
    ledger = Ledger()
    store = FaultyStore(tmp_path / "regression.db", faults)
    client = make_client(ledger, store, ManualClock(START)).start()
    return client, store, ledger


def test_a_failed_read_in_the_router_stops_the_engine_it_says_stopped(tmp_path: Path) -> None:
    """A cancel whose read of the run failed was answered "the engine stopped because the store
    failed", and yet the next send was accepted: the router's failed reads did not stop the engine."""
    faults = FaultLog(Fault("io", persistent=False, at=1), only="FROM [RUNS] WHERE [RUN_ID]")
    client, store, ledger = started_client(tmp_path, faults)
    try:
        faults.armed = False
        ledger.acked.extend(client.send(order_event(1)))
        assert client.run_until_idle(timeout=WAIT)
        run_id = client.runs_for_event(ledger.acked[0])[0].run_id
        faults.armed = True
        with pytest.raises(steplog.EngineStoppedError, match="the store failed.*disk I/O error"):
            client.cancel(run_id)
        assert faults.injected == 1
        check_client_refuses(client, faults.fault, ledger, "a failed read in the router")
    finally:
        client.stop(timeout=WAIT)
        store.close()


def test_the_writer_stops_the_engine_before_answering_and_writes_nothing_after_a_failed_commit(
    tmp_path: Path,
) -> None:
    """The writer answered its callers before it reported the failure, and a commit that failed
    at BEGIN left the store writable: a caller that tried again at once was accepted and written
    after the engine had been declared stopped."""
    faults = FaultLog(Fault("io", persistent=False, at=1), writer_only=True, only="BEGIN IMMEDIATE")
    store = FaultyStore(tmp_path / "writer.db", faults)
    heard: list[str] = []
    writer = StoreWriter.start(store, ManualClock(START), lambda error: heard.append(str(error)))
    try:
        commit = commit_through(writer, timeout=WAIT)
        append = Append((StreamWrite("s", (NewEntry("x"),)),))
        for _ in range(2):  # the second would succeed: the fault happened once
            with pytest.raises(StorageError, match="disk I/O error"):
                commit([append])
            assert len(heard) == 1 and "disk I/O error" in heard[0]
        assert faults.injected == 1 and faults.commits_attempted_after_first() == []
        assert store.read_all() == []
    finally:
        writer.stop()
        store.close()


class Sink(pykka.ThreadingActor):
    """A supervisor that hears nothing: the runs given to a stopped pool must never report."""


def test_a_run_given_to_a_stopped_worker_pool_does_not_run() -> None:
    """Steplog.stop() stops the pool, then the supervisors: a run a supervisor submitted in between
    got a new worker that nobody waited for, which read the store while stop() closed it (a
    segmentation fault in sqlite3)."""
    engine = Engine(MemoryEventStore(RunProjector()), clock=ManualClock(START))
    pool = WorkerPool(engine, Activity(), max_workers=4)
    supervisor = Sink.start()
    pool.stop(time.monotonic() + WAIT)
    pool.submit(ExecuteRun("01NOSUCHRUN00000000000000", None, supervisor))
    assert pykka.ActorRegistry.get_by_class(RunWorker) == []
    supervisor.stop()


def test_waiting_for_idle_raises_the_engines_failure_even_when_the_work_ended_after_it() -> None:
    """A run whose last commit failed ends (unfinished) right after the engine fails; whoever
    waited for idle saw "idle" and went on as if every run had finished."""
    activity = Activity()
    activity.begin()
    activity.fail(steplog.EngineStoppedError("the engine stopped because the store failed: disk I/O error"))
    activity.end()
    with pytest.raises(steplog.EngineStoppedError, match="disk I/O error"):
        activity.wait_idle(timeout=WAIT)


def test_a_start_that_cannot_read_the_log_leaves_nothing_running(tmp_path: Path) -> None:
    """start() failed on a read of the projections but kept its actors and the database's lock:
    no engine in the same process could open the file again."""
    faults = FaultLog(Fault("io", persistent=False, at=1), only="FROM [WAITS]")
    path = tmp_path / "start.db"
    ledger = Ledger()
    clock = ManualClock(START)
    client = make_client(ledger, FaultyStore(path, faults), clock)
    with pytest.raises(StorageError, match="SQLite failed to query waits.*disk I/O error"):
        client.start()
    assert faults.injected == 1
    assert pykka.ActorRegistry.get_all() == []
    restart_client(path, ledger, clock, "a start that failed")


def test_stop_stops_even_if_the_store_fails_while_it_waits_for_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() waits for the executing runs; if one of their commits failed meanwhile, the wait
    raised EngineStoppedError out of stop(), which then left its actors and the file's lock behind."""
    path = tmp_path / "stop.db"
    faults = FaultLog(Fault("io", persistent=False, at=1), writer_only=True, only="COMMIT")
    store = FaultyStore(path, faults)
    faults.armed = False
    entered, release = threading.Event(), threading.Event()
    client = steplog.Steplog(app_id="faults", db=store, clock=ManualClock(START))

    @client.create_function(fn_id="hold", trigger=steplog.TriggerEvent(event="app/hold"), retries=0)
    def hold(ctx: steplog.Context) -> bool:
        return bool(ctx.step.run("held", lambda: entered.set() or release.wait(WAIT)))

    client.start()
    client.send({"name": "app/hold"})
    assert entered.wait(WAIT), "the step did not start"
    faults.armed = True  # the step's commit fails, while stop() waits for it
    activity = client._activity
    wait_idle = activity.wait_idle

    def release_then_wait(timeout: float | None) -> bool:
        release.set()
        return wait_idle(timeout)

    monkeypatch.setattr(activity, "wait_idle", release_then_wait)
    client.stop(timeout=WAIT)
    assert faults.injected == 1 and release.is_set()
    assert pykka.ActorRegistry.get_all() == []
    with steplog.Steplog(app_id="faults", db=path, clock=ManualClock(START)):  # the lock was released
        pass
