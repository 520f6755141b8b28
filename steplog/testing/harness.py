"""The test engine: a whole steplog engine on virtual time, in the test's own thread.

It is the synchronous ``Engine`` (the one the actor runtime drives) on a temporary SQLite file (or
the in-memory store) and a ``ManualClock``: nothing runs until the test says so, time moves only
when the test moves it, and ``crash()`` throws away everything but the log, as ``kill -9`` would.
"""

from __future__ import annotations

import asyncio
import functools
import random
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from steplog.engine import queries
from steplog.engine import records as r
from steplog.engine.clock import ManualClock
from steplog.engine.coordination import SendEvents
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import EventError, FunctionNotFoundError
from steplog.engine.events import prepare_events
from steplog.engine.functions import FunctionDef, FunctionRegistry
from steplog.engine.ids import id_randomness, new_ulid
from steplog.engine.limits import Limits
from steplog.engine.projector import RunProjector
from steplog.engine.service import Engine, EventInput
from steplog.engine.system_events import invoked_event
from steplog.eventstore import Entry, EventStore, MemoryEventStore, SqliteEventStore
from steplog.testing.replay import RecordedRun, export_run, replay
from steplog.testing.runs import TestRun
from steplog.testing.stubs import UNSET, SimulatedCrash, Stub, StubTable

__all__ = ["DEFAULT_START", "NondeterministicRunError", "TestEngine", "registry_of"]

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)
"""Where a test engine's clock starts, unless told: a fixed time, so tests repeat exactly."""
ENDINGS = (r.RUN_COMPLETED, r.RUN_FAILED, r.RUN_CANCELLED)
MAX_CRASHES_PER_DRAIN = 1000
T = TypeVar("T")


class NondeterministicRunError(AssertionError):
    """A run that ended does not replay from its own history: its code is not deterministic."""


def registry_of(functions: Iterable[Any]) -> FunctionRegistry:
    """A registry of FunctionDefs given one by one, in lists, or by anything that has a ``registry``
    (a ``Steplog`` client); TypeError naming what it could not use."""
    registry = FunctionRegistry()
    for function in _flatten(functions):
        registry.add(function)
    return registry


def _flatten(items: Iterable[Any]) -> Iterable[FunctionDef]:
    for item in items:
        if isinstance(item, FunctionDef):
            yield item
        elif isinstance(getattr(item, "registry", None), FunctionRegistry):
            yield from _defined(item.registry)
        elif isinstance(item, FunctionRegistry):
            yield from _defined(item)
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes, dict)):
            yield from _flatten(item)
        else:
            raise TypeError(
                f"expected functions (what create_function returns), a list of them or a Steplog client, got {item!r}"
            )


def _making_ids(method: Callable[..., T]) -> Callable[..., T]:
    """The engine makes ids (events, runs) from the test engine's seeded generator while it runs this."""

    @functools.wraps(method)
    def seeded(self: TestEngine, *args: Any, **kwargs: Any) -> T:
        with id_randomness(self._random.randbytes):
            return method(self, *args, **kwargs)

    return seeded


def _client_limits(items: Iterable[Any]) -> Limits | None:
    """The limits of the first client given (its ``max_steps_per_run`` and the like), if any."""
    for item in items:
        limits = getattr(item, "limits", None)
        if isinstance(limits, Limits) and isinstance(getattr(item, "registry", None), FunctionRegistry):
            return limits
        if isinstance(item, (list, tuple)):
            found = _client_limits(item)
            if found is not None:
                return found
    return None


def _defined(registry: FunctionRegistry) -> list[FunctionDef]:
    """The functions of a registry as they were defined: not the failure handlers it derived from
    them (``<id>-failure``), which registering them again derives anew."""
    functions = registry.all()
    derived = {f"{function.id}-failure" for function in functions if function.on_failure is not None}
    return [function for function in functions if function.id not in derived]


class TestEngine:
    """A steplog engine for tests. Build it with your functions (or your ``Steplog`` client)::

        engine = TestEngine(client)
        [event_id] = engine.send({"name": "shop/order.placed", "data": {"id": 7}})
        engine.run_until_idle()
        engine.runs_for(event_id)[0].assert_completed({"charged": 7})

    ``store`` is ``"sqlite"`` (a temporary file, or ``path``) or ``"memory"``; ``limits`` default to
    the client's, if a client is given. Event and run ids come from ``seed``, so the same test makes
    the same ids (and the same retry jitter, which the run id seeds) every time. With
    ``check_determinism`` (the default) every run that ends is replayed from its own history, and a
    run whose code takes other steps the second time raises NondeterministicRunError.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *functions: Any,
        store: Literal["sqlite", "memory"] = "sqlite",
        path: str | Path | None = None,
        clock: ManualClock | None = None,
        start: datetime | None = None,
        limits: Limits | None = None,
        check_determinism: bool = True,
        seed: int = 0,
    ) -> None:
        if store not in ("sqlite", "memory"):
            raise ValueError(f"store must be 'sqlite' or 'memory', got {store!r}")
        if clock is not None and start is not None:
            raise ValueError("give clock= or start=, not both")
        if store == "memory" and path is not None:
            raise ValueError("path= is for store='sqlite'; the memory store has no file")
        self.registry = registry_of(functions)
        self.clock = clock or ManualClock(start or DEFAULT_START)
        self.limits = limits or _client_limits(functions) or Limits()
        self.check_determinism = check_determinism
        self.stubs = StubTable()
        self.crashes = 0
        """How many times the engine crashed (``crash()`` and simulated crashes in steps)."""
        self._kind = store
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        if store == "sqlite" and path is None:
            self._directory = tempfile.TemporaryDirectory(prefix="steplog-test-")
            path = Path(self._directory.name) / "steplog.db"
        self.path = Path(path) if path is not None else None
        self._first_entries: dict[str, Entry] = {}
        """Each run's run.scheduled entry: where it begins in the log (what orders runs) and its events.
        It never changes, so a crash keeps it."""
        self._random = random.Random(seed)
        self.store: EventStore = self._open_store(None)
        self._checked_up_to = self._opened_at = self.store.last_position()
        """The determinism check has seen the log up to here; runs begun before ``_opened_at`` were
        recorded by other code (an earlier version, on the same ``path``) and are not checked."""
        self.engine = self._open_engine()

    # -- lifecycle -------------------------------------------------------------------------------

    def _open_store(self, previous: EventStore | None) -> EventStore:
        if self._kind == "memory":
            if isinstance(previous, MemoryEventStore):
                return previous.reopened(RunProjector())
            return MemoryEventStore(RunProjector())
        assert self.path is not None
        return SqliteEventStore(self.path, RunProjector(), synchronous="OFF")

    @_making_ids
    def _open_engine(self) -> Engine:
        engine = Engine(self.store, registry=self.registry, clock=self.clock, limits=self.limits)
        engine.hooks = self.stubs
        engine.start()
        return engine

    def add(self, *functions: Any) -> None:
        """Register more functions (FunctionDefs, lists, or a client's). Runs already queued for them start
        at the next crash(), as after a deploy."""
        for function in _flatten(functions):
            self.registry.add(function)

    def crash(self, downtime: Duration = 0) -> None:
        """Throw away every piece of memory, as ``kill -9`` would, and start again from the log; time
        may pass while the engine is down. Stubs, the clock and your own test state survive."""
        down = _seconds(downtime, "downtime")
        if self._kind == "sqlite":
            self.store.close()
            self.store = self._open_store(None)
        else:
            self.store = self._open_store(self.store)
        self.crashes += 1
        self.clock.advance(down)
        self.engine = self._open_engine()

    def close(self) -> None:
        """Close the store and remove the temporary database, if this engine made it."""
        self.store.close()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> TestEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- driving -------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now()

    @_making_ids
    def send(self, events: EventInput) -> list[str]:
        """Accept events (one, or a list) and queue the runs they start or resume; returns their ids.
        Nothing runs until ``run_until_idle()`` or ``advance()``: a crash() in between is a crash after
        the events were acknowledged. Raises EventError for a bad event; nothing is accepted then."""
        return self.engine.send(events)

    def trigger(self, name: str, data: dict[str, Any] | None = None, **fields: Any) -> TestRun:
        """Send one event, run until idle, and return the one run it started (AssertionError if it
        started none or several, saying why when it can)."""
        [event_id] = self.send({"name": name, "data": {} if data is None else data, **fields})
        self.run_until_idle()
        runs = self.runs_for(event_id)
        if len(runs) != 1:
            raise AssertionError(self._why_not_one_run(name, event_id, runs))
        return runs[0]

    def _why_not_one_run(self, name: str, event_id: str, runs: list[TestRun]) -> str:
        started = ", ".join(repr(run) for run in runs) or "none"
        why = ""
        [event] = [e for e in self.events() if e["internal_id"] == event_id] or [{}]
        if event.get("duplicate"):
            why = "; it was a duplicate of an earlier event with the same id"
        elif event.get("flow"):
            why = f"; flow control: {event['flow']}"
        functions = ", ".join(repr(f.id) for f in self.registry.all()) or "none registered"
        return f"event {name!r} started {len(runs)} runs ({started}){why}; functions: {functions}"

    @_making_ids
    def invoke(self, function_id: str, data: dict[str, Any] | None = None) -> TestRun:
        """Start a run of a function now with ``data``, whatever its triggers; run until idle; return it."""
        function = self.registry.get(function_id)
        if function is None:
            raise FunctionNotFoundError(f"no function {function_id!r}")
        if data is not None and not isinstance(data, dict):
            raise EventError(f"invoke data must be a JSON object, got {type(data).__name__}")
        event = invoked_event(function_id, data or {}, f"invoke-{new_ulid(self.now)}")
        prepare_events(event, now=self.now, limits=self.limits, allow_reserved=True)
        answer = self.engine.coordinate(SendEvents([event], internal=True))
        if isinstance(answer, Exception):
            raise answer
        self.run_until_idle()
        [event_id] = answer.ids  # type: ignore[union-attr]
        runs = self.runs_for(event_id)
        if not runs:
            held = [name for name in ("debounce", "batch", "rate_limit") if getattr(function.flow, name, None)]
            how = f" (its {' and '.join(held)} holds or drops the event)" if held else ""
            raise AssertionError(
                f"invoking {function_id!r} started no run yet{how}; advance the clock and look in"
                f" engine.runs({function_id!r})"
            )
        return runs[-1]

    @_making_ids
    def run_until_idle(self) -> int:
        """Run every run that can run now, firing what is due; returns how many invocations ran.
        A simulated crash in a step crashes the engine and goes on from the log."""
        _refuse_a_running_event_loop()
        invocations = 0
        for _ in range(MAX_CRASHES_PER_DRAIN):
            try:
                invocations += self.engine.run_until_idle()
                break
            except SimulatedCrash:
                invocations += 1  # the one the crash ended
                self.crash()
        else:
            raise AssertionError(f"{MAX_CRASHES_PER_DRAIN} simulated crashes in a row: does a stub crash forever?")
        self._check_ended_runs()
        return invocations

    def advance(self, duration: Duration) -> int:
        """Let ``duration`` pass (seconds, timedelta or text like "1h30m"): every timer due meanwhile
        fires at its own time, in order, as in a process that ran all along. Returns how many
        invocations ran. (Time that passes while the process is down is ``crash(downtime)``.)"""
        return self.advance_to(self.now + _seconds(duration, "advance"))

    def advance_to(self, moment: datetime) -> int:
        """Let time pass until ``moment`` (an aware datetime, never back), firing each timer at its own time."""
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise TypeError(f"advance_to needs an aware datetime (with a tzinfo), got {moment!r}")
        if moment < self.now:
            raise ValueError(f"the clock is at {self.now.isoformat()}; it cannot go back to {moment.isoformat()}")
        invocations = self.run_until_idle()
        while (due := self.next_timer()) is not None and due <= moment:
            if due > self.now:
                self.clock.set(due)
            ran = self.run_until_idle()
            if ran == 0 and due <= self.now and self.next_timer() == due:
                break  # a timer that fires nothing and stays due: do not spin on it
            invocations += ran
        self.clock.set(moment)
        return invocations + self.run_until_idle()

    def next_timer(self) -> datetime | None:
        """When the next sleep, retry, wait timeout, throttle, debounce, batch or cron tick is due."""
        return self.engine.next_timer()

    def advance_to_next_timer(self) -> datetime | None:
        """Move the clock to the next timer and run what became due; None (and no move) if there is none."""
        due = self.next_timer()
        if due is None:
            return None
        if due > self.now:
            self.clock.set(due)
        self.run_until_idle()
        return due

    def settle(self, *, within: Duration = "400d") -> datetime:
        """Advance from timer to timer until nothing but cron ticks is due ``within`` this time from now
        (each run has ended or waits for an event); returns the clock. Cron ticks on the way fire at
        their time; a cron function alone is not followed (its next tick is always due)."""
        limit = self.now + _seconds(within, "within")
        self.run_until_idle()
        while (due := self.engine.next_timer(crons=False)) is not None and due <= limit:
            if due > self.now:
                self.advance_to(due)
            elif self.run_until_idle() == 0 and self.engine.next_timer(crons=False) == due:
                break  # a timer that fires nothing and stays due: do not spin on it
        return self.now

    @_making_ids
    def cancel(self, run_id: str, reason: str = "cancelled by the test") -> bool:
        """Ask a run to cancel and run until idle; False if it had already ended."""
        cancelled = self.engine.cancel(run_id, reason)
        self.run_until_idle()
        return cancelled

    # -- stubs -----------------------------------------------------------------------------------

    def stub(
        self,
        step_id: str,
        *,
        returns: Any = UNSET,
        raises: BaseException | type[BaseException] | None = None,
        body: Any = None,
        fails: int = 0,
        crashes: int = 0,
        function: str | None = None,
    ) -> Stub:
        """Replace the body of step ``step_id`` (in every function, or only in ``function``):

        - ``returns=value``: the step returns ``value``;
        - ``raises=error``: every attempt raises ``error`` (an instance or a class);
        - ``body=callable``: called with the step's arguments instead of its body;
        - none of these: the real body runs;
        - ``fails=N``: the first N attempts raise StubError first (retried as any error is);
        - ``crashes=N``: the first N times the body runs (after the planned failures), it returns or
          raises and then the process dies before that is committed (a ``kill -9`` mid-step): the
          attempt runs again after the restart.

        Returns the Stub, whose ``calls`` and ``attempts`` say how often the body was entered.
        """
        if function is not None and self.registry.get(function) is None:
            raise FunctionNotFoundError(f"stub for step {step_id!r}: no function {function!r}")
        return self.stubs.add(Stub(step_id, function, returns, raises, body, fails, crashes))

    def crash_during(self, step_id: str, *, times: int = 1, function: str | None = None) -> Stub:
        """The next ``times`` attempts of step ``step_id`` run their body, then the process dies before
        the outcome is committed: what happens to a step that is not idempotent. Stubs already in
        place for the step keep what they do and crash too."""
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise ValueError(f"crash_during({step_id!r}): times= must be 1 or more, got {times!r}")
        existing = [stub for stub in self.stubs if stub.step_id == step_id
                    and (function is None or stub.function_id in (None, function))]
        for stub in existing:
            stub.crashes += times
        return existing[0] if existing else self.stub(step_id, crashes=times, function=function)

    # -- reading -------------------------------------------------------------------------------

    def run(self, run_id: str) -> TestRun:
        """A view of one run; RunNotFoundError if there is none."""
        queries.get_run(self.store, run_id)
        return TestRun(self, run_id)

    def runs(self, function_id: str | None = None, status: str | None = None) -> list[TestRun]:
        """Runs of a function and in a status if given, in the order they were scheduled."""
        return self._in_log_order(queries.list_runs(self.store, function_id=function_id, status=status, limit=None))

    def runs_for(self, event_id: str, function_id: str | None = None) -> list[TestRun]:
        """The runs an event started (by the id ``send`` returned, or the id you gave), in order; of one
        function if given."""
        rows = queries.list_runs(self.store, event_id=event_id, function_id=function_id, limit=None)
        return self._in_log_order(rows)

    def _in_log_order(self, rows: list[dict[str, Any]]) -> list[TestRun]:
        # On a stopped clock many runs share a scheduling time: the log's order is the true one.
        ordered = sorted((row["run_id"] for row in rows), key=self._position_of)
        return [TestRun(self, run_id) for run_id in ordered]

    def _position_of(self, run_id: str) -> int:
        """Where the run begins in the log."""
        return self.first_entry(run_id).position

    def first_entry(self, run_id: str) -> Entry:
        """The run's first entry (run.scheduled, with its events), read once."""
        if run_id not in self._first_entries:
            self._first_entries[run_id] = self.store.read_stream(r.run_stream(run_id))[0]
        return self._first_entries[run_id]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Received events, oldest first, each with the runs it started."""
        return list(reversed(queries.list_events(self.store, name=name, limit=None)))

    def export(self, run_id: str) -> RecordedRun:
        """The run's recorded history, to save and replay later."""
        return export_run(self.store, run_id)

    # -- determinism -----------------------------------------------------------------------------

    def _check_ended_runs(self) -> None:
        """Replay each run that ended since the last check (once each: the log says which)."""
        if not self.check_determinism:
            return
        endings = self.store.read_all(after=self._checked_up_to, types=ENDINGS)
        if endings:
            self._checked_up_to = endings[-1].position
        for entry in endings:
            run_id = r.stream_id(entry.stream)
            if self._position_of(run_id) <= self._opened_at or ENGINE_FAILURE in str(entry.data.get("error")):
                continue
            report = replay(self.export(run_id), self.registry, limits=self.limits)
            if not report.ok:
                raise NondeterministicRunError(
                    f"{report}\n(the run did not replay from its own history: its step ids, or which steps it"
                    f" takes, depend on something other than the log)\n{self.run(run_id).describe()}"
                )


def _refuse_a_running_event_loop() -> None:
    """``async def`` functions run on their own event loop in the test's thread, which cannot be done
    from inside another loop: say so, rather than let asyncio.run fail deep in the engine."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "TestEngine runs your functions in the test's own thread and cannot do so inside a running event"
        " loop: drive it from a plain `def test_...` (it runs `async def` functions itself)"
    )


ENGINE_FAILURE = "the engine could not run this run"


MAX_STEP_OF_TIME = timedelta(days=100 * 366)


def _seconds(duration: Duration, what: str) -> timedelta:
    try:
        delta = parse_duration(duration, what=what)
    except OverflowError:
        raise ValueError(f"{what} {duration!r} is too long (at most 100 years)") from None
    if delta < timedelta(0):
        raise ValueError(f"{what} must not be negative, got {duration!r}")
    if delta > MAX_STEP_OF_TIME:
        raise ValueError(f"{what} {duration!r} is too long (at most 100 years)")
    return delta
