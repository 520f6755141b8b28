"""The embedded engine: ``Steplog``, the client a user creates, defines functions on, starts and
sends events to. It builds the actors on start and stops them on stop.

    writer      StoreWriter        the only writer; group commit
    router      EventRouter        checks, records and routes sends
    supervisors FunctionSupervisor one per function; starts, limits and restarts run actors
    workers     RunWorker          a pool of threads hosting the runs that execute (see actors.run)
    timer       TimerActor         wakes runs whose retry time has come (+ a ticker thread)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
from steplog.actors.activity import Activity
from steplog.actors.dblock import DatabaseLock
from steplog.actors.errors import EngineStoppedError
from steplog.actors.handle import RunHandle
from steplog.actors.messages import Arm, ArmAll, Reply, StartRun, Tick
from steplog.actors.router import Coordinate, EventRouter
from steplog.actors.run import WorkerPool
from steplog.actors.slots import Slots
from steplog.actors.supervisor import FunctionSupervisor
from steplog.actors.timer import Ticker, TimerActor
from steplog.actors.writer import StoreWriter, commit_through
from steplog.engine import (
    Cancel,
    Clock,
    DefinitionError,
    Engine,
    FunctionDef,
    FunctionRegistry,
    Limits,
    ManualClock,
    RetryPolicy,
    RunProjector,
    SystemClock,
    Timeouts,
    TriggerCron,
    TriggerEvent,
    define_function,
    queries,
)
from steplog.engine.coordination import Accepted, Answer, CancelRun, Done, FireDue, Request, RerunRun, SendEvents
from steplog.engine.errors import EventError, FunctionNotFoundError
from steplog.engine.events import prepare_events
from steplog.engine.flow import (
    Batch,
    Concurrency,
    Debounce,
    FlowOptions,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from steplog.engine.ids import new_ulid
from steplog.engine.service import EventInput, reading_projections
from steplog.engine.system_events import invoked_event
from steplog.engine.webhooks import Transform, WebhookDef, WebhookRegistry, define_webhook
from steplog.eventstore import Difference, EventStore, MemoryEventStore, SqliteEventStore, StorageError

log = logging.getLogger("steplog")
DEFAULT_MAX_ACTIVE = 256
DEFAULT_MAX_WORKERS = 256
RECENT_SENDS = 10_000


class SentIds(list[str]):
    """The ids of sent events: a list, which ``await`` also accepts (and gives back as a list)."""

    def __await__(self) -> Generator[Any, None, list[str]]:
        return list(self)
        yield  # makes this a generator; never reached


class Steplog:
    """An embedded durable-function engine on a SQLite file (or in memory, for tests).

    Args:
        app_id: the application's name, as in Inngest's client.
        db: a SQLite file path, ``":memory:"`` for an in-memory log, or an EventStore built with
            ``RunProjector()``.
        clock: time source; a ``ManualClock`` lets tests move time without waiting.
        limits: size and count limits (event 256 KiB, step output 4 MiB, 1,000 steps per run).
        max_steps_per_run: shortcut to raise or lower ``limits.steps_per_run``.
        synchronous: SQLite durability; ``"FULL"`` (default) fsyncs every group commit.
        max_active_runs: runs of one function executing at once.
        max_workers: threads hosting executing runs, for all functions together.
    """

    def __init__(
        self,
        app_id: str = "app",
        *,
        db: str | Path | EventStore = "steplog.db",
        clock: Clock | None = None,
        limits: Limits | None = None,
        max_steps_per_run: int | None = None,
        synchronous: str = "FULL",
        max_active_runs: int = DEFAULT_MAX_ACTIVE,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        self.app_id = app_id
        self._db = db
        self._synchronous = synchronous
        self.clock: Clock = clock or SystemClock()
        limits = limits or Limits()
        if max_steps_per_run is not None:
            limits = Limits(limits.event_bytes, limits.events_per_send, limits.step_output_bytes, max_steps_per_run)
        self.limits = limits
        self._max_active = max_active_runs
        self._max_workers = max_workers
        self.registry = FunctionRegistry()
        self.webhooks = WebhookRegistry()
        self._store: EventStore | None = None
        self._started = False
        self._failure: StorageError | None = None
        self._actors: list[pykka.ActorRef[Any]] = []
        self._cleanup: list[Callable[[], None]] = []
        self._db_lock: DatabaseLock | None = None
        self._recent_runs: OrderedDict[str, list[str]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # -- defining ------------------------------------------------------------------------------

    def create_function(
        self,
        *,
        fn_id: str,
        trigger: TriggerEvent | TriggerCron | Sequence[TriggerEvent | TriggerCron],
        name: str | None = None,
        retries: int | RetryPolicy = 4,
        cancel: Sequence[Cancel] | None = None,
        timeouts: Timeouts | None = None,
        on_failure: Callable[..., Any] | None = None,
        concurrency: Concurrency | int | Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        batch_events: Batch | None = None,
        priority: Priority | None = None,
        singleton: Singleton | None = None,
        idempotency: str | None = None,
    ) -> Callable[[Callable[..., Any]], FunctionDef]:
        """Decorator that defines a durable function, as Inngest's ``create_function``.

        ``cancel``: up to 5 ``Cancel`` rules (an event that cancels a run); ``timeouts``:
        ``Timeouts(start=..., finish=...)``; ``on_failure``: a handler run once after a run's final
        failure, as the function ``<fn_id>-failure`` triggered by ``inngest/function.failed``.

        Flow control, as in Inngest: ``concurrency`` (up to 2 ``Concurrency`` limits on executing
        runs, per key), ``throttle`` (run starts per period, queued), ``rate_limit`` (runs per period,
        the rest skipped), ``debounce``, ``batch_events``, ``priority``, ``singleton`` and
        ``idempotency`` (a CEL key: one run per value per 24 hours). See docs/flow-control.md.
        """
        flow = FlowOptions(
            concurrency=concurrency, throttle=throttle, rate_limit=rate_limit, debounce=debounce,
            batch_events=batch_events, priority=priority, singleton=singleton, idempotency=idempotency,
        )

        def decorate(handler: Callable[..., Any]) -> FunctionDef:
            function = define_function(
                handler, fn_id=fn_id, trigger=trigger, name=name, retries=retries, cancel=cancel,
                timeouts=timeouts, on_failure=on_failure, flow=flow,
            )
            if self._started:
                raise DefinitionError(
                    f"function {fn_id!r} is defined after start(): define every function before starting the engine"
                )
            self.registry.add(function)
            return function

        return decorate

    def webhook(
        self, name: str, *, secret: str | bytes | None = None, previous_secret: str | bytes | None = None
    ) -> Callable[[Transform], WebhookDef]:
        """Decorator that defines a webhook: ``POST /webhooks/{name}`` on steplog's server (``steplog
        serve``) sends the events that ``transform(body, headers, query)`` returns (an event, a list,
        or None). ``body`` is parsed JSON, else text; header names are lower-case.

        With ``secret`` (``whsec_<base64>`` as Standard Webhooks and Svix give it, or any other
        string, whose UTF-8 bytes are the key) every request must be signed: unsigned, stale (over 5
        minutes), replayed or tampered requests get 401. ``previous_secret`` is also accepted while
        a sender rotates keys. Without a secret, any request is accepted.
        """

        def decorate(transform: Transform) -> WebhookDef:
            webhook = define_webhook(transform, name=name, secret=secret, previous_secret=previous_secret)
            if self._started:
                raise DefinitionError(
                    f"webhook {name!r} is defined after start(): define every webhook before starting the engine"
                )
            self.webhooks.add(webhook)
            return webhook

        return decorate

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        """The event store (opened on first use)."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> EventStore:
        if isinstance(self._db, EventStore):
            if not isinstance(self._db.projector, RunProjector):
                raise ValueError("an EventStore given as db= must be built with projector=RunProjector()")
            return self._db
        if str(self._db) == ":memory:":
            return MemoryEventStore(RunProjector())
        return SqliteEventStore(self._db, RunProjector(), synchronous=self._synchronous)  # type: ignore[arg-type]

    def start(self) -> Steplog:
        """Start the actors and resume the work left in the log; returns self. If that fails (the
        log cannot be read: StorageError), nothing is left running: no actor, no lock, no open file."""
        if self._started:
            return self
        self._lock_database()
        try:
            self._start_locked()
        except BaseException:
            self._abandon_start()
            raise
        return self

    def _start_locked(self) -> None:
        if self._db_lock is not None and isinstance(self.store, SqliteEventStore):
            self.store.assume_sole_writer()  # the lock keeps other engines and `steplog rebuild` out
        self._activity = Activity()
        writer = StoreWriter.start(self.store, self.clock, self._storage_failed)
        self._actors = [writer]  # until every actor is started: what a failed start must stop
        self._engine = Engine(
            self.store, registry=self.registry, clock=self.clock, limits=self.limits, committer=commit_through(writer)
        )
        self._engine.coordinate = self._coordinate  # waits, sends and announced ends go through the router
        with reading_projections(self.store):
            self._engine.coordinator.load_pauses()
            self._engine.coordinator.load_flow(self.clock.now())
        self._supervisors: dict[str, pykka.ActorRef[Any]] = {}
        timer = TimerActor.start(self.clock, self._activity, self._supervisors)
        self._pool = WorkerPool(self._engine, self._activity, self._max_workers)
        self.slots = Slots()
        for function in self.registry.all():
            self._supervisors[function.id] = FunctionSupervisor.start(
                function.id, self._engine, timer, self._pool, self._activity, self._storage_failed, self._max_active,
                self.slots, self._supervisors,
            )
        self._router = EventRouter.start(self._engine, self._supervisors, self._activity, timer)
        self._timer = timer
        self._actors = [self._router, *self._supervisors.values(), timer, writer]
        self._start_clock(timer)
        self._started = True
        self._resume()
        self._fire_due_flow()

    def _abandon_start(self) -> None:
        """Undo a start that failed half way, so that start() may be called again."""
        for cleanup in reversed(self._cleanup):
            cleanup()
        self._cleanup.clear()
        deadline = time.monotonic() + 10.0
        pool: WorkerPool | None = getattr(self, "_pool", None)
        if pool is not None:
            pool.stop(deadline)
        for ref in self._actors:
            ref.stop(block=False)
        for ref in self._actors:
            ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
        self._actors = []
        self._started = False
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._db_lock is not None:
            self._db_lock.release()
            self._db_lock = None

    def _fire_due_flow(self) -> None:
        """Debounces, batches and cron ticks already due at start fire now, counted as activity
        before start returns, so that ``run_until_idle`` right after start waits for their runs."""
        due = self._engine.coordinator.next_due()
        if due is not None and due <= self.clock.now():
            self._activity.begin()  # ended by the router once the runs it starts are counted
            self._router.tell(Coordinate(FireDue(), Reply()))

    def _lock_database(self) -> None:
        # Before the store is opened: a refused second engine must not touch the file at all.
        if isinstance(self._db, SqliteEventStore):
            path = self._db.path
        elif isinstance(self._db, EventStore):
            return
        else:
            path = str(self._db)
        if path != ":memory:":
            self._db_lock = DatabaseLock(path)
            self._db_lock.acquire()

    def _start_clock(self, timer: pykka.ActorRef[TimerActor]) -> None:
        if isinstance(self.clock, ManualClock):
            def tick(_now: datetime) -> None:
                timer.ask(Tick())

            self._cleanup.append(self.clock.subscribe(tick))
            return
        ticker = Ticker(self.clock, timer)
        timer.proxy().attach_ticker(ticker).get()
        ticker.start()
        timer.tell(Tick())  # what was armed before the ticker was attached (a cron tick, a debounce) needs it too
        self._cleanup.append(ticker.stop)

    def _resume(self) -> None:
        recovery = self._engine.recover()
        now = self.clock.now()
        due_now = [(run_id, function_id) for due, run_id, function_id in recovery.timers if due <= now]
        for run_id, function_id in recovery.ready + due_now:  # counted now, so run_until_idle waits for them
            supervisor = self._supervisor_of(run_id, function_id)
            if supervisor is not None:
                self._activity.begin()
                supervisor.tell(StartRun(run_id))
        later: dict[str, list[Arm]] = {}
        for due, run_id, function_id in recovery.timers:
            if due > now and self._supervisor_of(run_id, function_id) is not None:
                later.setdefault(function_id, []).append(Arm(due, run_id, function_id))
        for function_id, arms in later.items():
            # through the supervisor, so that the run's end disarms them; asked, so that they are
            # armed when start() returns
            self._supervisors[function_id].ask(ArmAll(arms))

    def _supervisor_of(self, run_id: str, function_id: str) -> pykka.ActorRef[Any] | None:
        supervisor = self._supervisors.get(function_id)
        if supervisor is None:
            log.warning("run %s belongs to function %r, which is not defined; it waits", run_id, function_id)
        return supervisor

    def stop(self, timeout: float = 10.0) -> None:
        """Let executing runs finish their invocation (up to ``timeout`` s), then stop every actor.

        Whatever was not finished resumes from the log at the next start.
        """
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        if self._failure is None:
            try:
                self._activity.wait_idle(timeout)
            except EngineStoppedError:
                pass  # the store failed while the runs finished: stop all the same
        for cleanup in reversed(self._cleanup):
            cleanup()
        self._cleanup.clear()
        self._pool.stop(deadline)
        for ref in self._actors:
            ref.stop(block=False)
        for ref in self._actors:
            ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
        self._started = False
        self.store.close()
        self._store = None
        if self._db_lock is not None:
            self._db_lock.release()
            self._db_lock = None

    def __enter__(self) -> Steplog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _storage_failed(self, error: StorageError) -> None:
        log.critical("steplog stops: the store failed: %s", error)
        self._failure = error
        self._activity.fail(EngineStoppedError(f"the engine stopped because the store failed: {error}"))

    def _check_running(self) -> None:
        if self._failure is not None:
            raise EngineStoppedError(f"the engine stopped because the store failed: {self._failure}")
        if not self._started:
            raise EngineStoppedError("the engine is not started: call start() or use 'with client:'")

    # -- sending and waiting -------------------------------------------------------------------

    def send(self, events: EventInput, *, id_seed: str | None = None) -> SentIds:
        """Send one event or a list; returns their ids once they are committed.

        The ids come back as a list that may also be awaited, so Inngest code that writes
        ``await client.send(...)`` works unchanged (the commit has happened by then either way).
        Raises EventError (nothing of the send is accepted) if any event is malformed or too large.

        ``id_seed`` is Inngest's ``x-inngest-event-id-seed`` (``"<millis>,<base64 of 10 bytes>"``):
        the ids derive from it, and sending again with the same seed returns the same ids and
        records and starts nothing, so a client may retry a send whose answer it lost.
        """
        self._check_running()
        accepted = self._ask(SendEvents(events, id_seed=id_seed))
        assert isinstance(accepted, Accepted)
        self._remember_runs(accepted)
        return SentIds(accepted.ids)

    def _coordinate(self, request: Request) -> Answer:
        reply = Reply()
        self._router.tell(Coordinate(request, reply))
        return reply.get()  # type: ignore[no-any-return]

    def _ask(self, request: Request) -> Answer:
        """Ask the router; raise what it answers if that is an error."""
        answer = self._coordinate(request)
        if isinstance(answer, StorageError):
            if self._failure is None:  # a read failed in the router (a failed commit has stopped it already)
                self._storage_failed(answer)
            raise EngineStoppedError(f"the engine stopped because the store failed: {answer}") from answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    # -- cancelling ----------------------------------------------------------------------------

    def cancel(self, run_id: str, *, reason: str = "cancelled by request") -> bool:
        """Cancel a run: it stops before its next step (a step running now finishes first), records
        the cancellation, and sends ``inngest/function.cancelled``. False if the run had already ended;
        RunNotFoundError if there is no such run."""
        self._check_running()
        answer = self._ask(CancelRun(run_id, reason))
        assert isinstance(answer, Done)
        return bool(answer.value)

    def invoke(self, function_id: str, data: dict[str, Any] | None = None) -> SentIds:
        """Start a run of a function now with ``data``, whatever its triggers (the dev UI's Invoke):
        sends ``inngest/function.invoked`` for it, as ``step.invoke`` does but with nobody waiting
        for the result. Returns the event's id; its flow control applies as to any event.
        Raises FunctionNotFoundError for an unknown function, EventError for data that is not a
        JSON object or is over the event size limit."""
        self._check_running()
        if self.registry.get(function_id) is None:
            raise FunctionNotFoundError(f"no function {function_id!r}")
        if data is not None and not isinstance(data, dict):
            raise EventError(f"invoke data must be a JSON object, got {type(data).__name__}")
        event = invoked_event(function_id, data or {}, f"invoke-{new_ulid(self.clock.now())}")
        prepare_events(event, now=self.clock.now(), limits=self.limits, allow_reserved=True)  # the user's limits
        accepted = self._ask(SendEvents([event], internal=True))
        assert isinstance(accepted, Accepted)
        self._remember_runs(accepted)
        return SentIds(accepted.ids)

    def rerun(self, run_id: str) -> str:
        """Start a new run of a run's function with the same events; returns the new run's id.

        The function's flow control starts it as any run now: singleton (a rerun while a run of
        the key is active is skipped, or replaces it), throttle, concurrency and priority. What
        decided about the events themselves (rate limit, idempotency, debounce, batching) is not
        decided again. Raises RunNotFoundError for an unknown run.
        """
        self._check_running()
        done = self._ask(RerunRun(run_id))
        assert isinstance(done, Done) and done.accepted is not None
        with self._recent_lock:  # runs_for_event answers as list_runs(event_id=...) does
            for run in done.accepted.runs + done.accepted.skipped:
                for event_id in run.entry.data["event_ids"]:
                    if event_id in self._recent_runs:
                        self._recent_runs[event_id].append(run.run_id)
        return str(done.value)

    def cancel_runs(
        self, *, function_id: str, status: str | None = None, since: Any = None, until: Any = None,
        if_exp: str | None = None, reason: str = "cancelled in bulk",
    ) -> list[str]:
        """Cancel every run of a function that has not ended and matches the filters: ``status``
        (``queued``, ``running`` or ``waiting``), scheduled ``since``/``until`` (datetime, ISO text or
        "2h" ago), and ``if_exp``, CEL over the run's trigger ``event``. Returns the cancelled runs."""
        self._check_running()
        matching = queries.runs_to_cancel(
            self.store, function_id=function_id, status=status, since=since, until=until, if_exp=if_exp,
            now=self.clock.now(),
        )
        return [run_id for run_id in matching if self.cancel(run_id, reason=reason)]

    def _remember_runs(self, accepted: Any) -> None:
        # runs_for_event right after a send is the common path; it need not query the store.
        held = set(accepted.held) | set(accepted.replayed)  # not final, or not known here: the store answers
        started: dict[str, list[str]] = {event_id: [] for event_id in accepted.ids if event_id not in held}
        for run in accepted.runs + accepted.skipped:
            for event_id in run.entry.data["event_ids"]:  # a batch run belongs to each of its events
                if event_id not in held:
                    started.setdefault(event_id, []).append(run.run_id)
        with self._recent_lock:
            self._recent_runs.update(started)
            while len(self._recent_runs) > RECENT_SENDS:
                self._recent_runs.popitem(last=False)

    send_sync = send

    def run_until_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is queued or executing (runs waiting for a later time do not count)."""
        self._check_running()
        return self._activity.wait_idle(timeout)

    def advance(self, delta: timedelta | float, *, wait: bool = True) -> datetime:
        """Move a ManualClock forward, start what became due, and (by default) wait until idle."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs a client built with clock=ManualClock()")
        now = self.clock.advance(delta)
        if wait:
            self.run_until_idle()
        return now

    def next_timer(self) -> datetime | None:
        """When the earliest waiting run is due, if any."""
        self._check_running()
        return self._timer.proxy().next_due().get()  # type: ignore[no-any-return]

    def run(self, run_id: str) -> RunHandle:
        """A handle on one run."""
        return RunHandle(self, run_id)

    def runs_for_event(self, event_id: str) -> list[RunHandle]:
        """Handles on the runs an event started; ``event_id`` is the id ``send`` returned or the id you gave."""
        with self._recent_lock:
            known = self._recent_runs.get(event_id)
        if known is not None:
            return [RunHandle(self, run_id) for run_id in known]
        runs = queries.list_runs(self.store, event_id=event_id, limit=None)
        return [RunHandle(self, row["run_id"]) for row in reversed(runs)]

    def _outcome(self, run_id: str) -> Any:
        return self._activity.outcome(run_id) if self._started else None

    def _wait_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        if not self._started:
            return done()
        return self._activity.wait_until(done, timeout)

    # -- querying ------------------------------------------------------------------------------

    def list_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Events, newest first: ``name``, ``since``, ``until`` (datetime, ISO text or "2h" ago), ``limit``."""
        return queries.list_events(self.store, now=self.clock.now(), **filters)

    def list_runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Runs, newest first: ``function_id``, ``status``, ``event_id`` (returned by send, or your own id),
        ``since``, ``until`` (datetime, ISO text or "2h" ago), ``limit``."""
        return queries.list_runs(self.store, now=self.clock.now(), **filters)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's summary: status, times, step count, output or error."""
        return queries.get_run(self.store, run_id)

    def run_history(self, run_id: str) -> queries.RunHistory:
        """A run's summary and each step attempt."""
        return queries.run_history(self.store, run_id)

    def rebuild_projections(self, *, apply: bool = True) -> list[Difference]:
        """Rebuild the current-state tables from the log; returns how the live ones differed."""
        return self.store.rebuild_projections(apply=apply)
