"""The engine: accepting events, invoking runs, recovering, all synchronous and in the caller's thread.

The actor runtime drives one of these from its actors, with commits routed through its single
writer; used directly (``run_until_idle``, ``advance``), it is a complete engine without threads,
which is what the property tests drive.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.clock import Clock, ManualClock, SystemClock
from steplog.engine.context import make_context
from steplog.engine.coordination import (
    Accepted,
    Answer,
    CancelRun,
    Committer,
    Coordinator,
    Done,
    EndRun,
    EventInput,
    FireDue,
    Request,
    SendEvents,
    StaleRunError,
    accepted_of,
)
from steplog.engine.errors import FunctionNotFoundError, RunNotFoundError
from steplog.engine.functions import FunctionRegistry
from steplog.engine.invocation import Invocation, Outcome, StepHooks
from steplog.engine.limits import Limits
from steplog.engine.state import RunState, fold
from steplog.engine.system_events import end_events
from steplog.eventstore import (
    Append,
    Committed,
    ConcurrencyError,
    CorruptEntryError,
    EventStore,
    NewEntry,
    StorageError,
    StreamWrite,
    format_time,
    parse_time,
)

__all__ = ["Accepted", "Engine", "EventInput", "Recovery", "StaleRunError", "reading_projections"]


@contextmanager
def reading_projections(store: EventStore) -> Iterator[None]:
    """Loading what start needs from the projections: a row that cannot be understood (a time that
    is not a time, JSON that is not JSON: damage on disk, or a hand edit) raises StorageError that
    says so and what to do, rather than the parser's bare ValueError. The projections are derived:
    ``steplog rebuild`` recomputes them from the log (whose entries are checksummed)."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as error:
        where = getattr(store, "path", "the store")
        raise StorageError(
            f"the projections of {where} cannot be read ({type(error).__name__}: {error}); they may be damaged:"
            f" `steplog check --db {where}` tells, and `steplog rebuild --db {where}` recomputes them from the log"
        ) from error


@attrs.frozen
class Recovery:
    """Work found in the projections at start: runs to start now, and timers to arm."""

    ready: list[tuple[str, str]]
    """(run_id, function_id) of runs to start now, oldest first."""
    timers: list[tuple[datetime, str, str]]
    """(due, run_id, function_id) of runs waiting for a time."""


class Engine:
    """Accepts events and invokes runs against an event store, with an injected clock."""

    def __init__(
        self,
        store: EventStore,
        *,
        registry: FunctionRegistry | None = None,
        clock: Clock | None = None,
        limits: Limits | None = None,
        committer: Committer | None = None,
    ) -> None:
        self.store = store
        self.registry = registry if registry is not None else FunctionRegistry()
        self.clock: Clock = clock or SystemClock()
        self.limits = limits or Limits()
        self.committer: Committer = committer or self._commit_directly
        self.coordinator = Coordinator(store, self.registry, self.limits, self.committer)
        self.hooks: StepHooks | None = None
        """What a test harness observes and replaces in each invocation (``steplog.testing``)."""
        self.coordinate: Callable[[Request], Answer] = self._coordinate_here
        """How invocations reach the coordinator: directly (here), or through the runtime's router."""
        self._ready: deque[str] = deque()
        self._timers: list[tuple[datetime, str]] = []
        self._due: dict[str, datetime] = {}
        self._fresh: dict[str, RunState] = {}
        """Runs just scheduled and not yet invoked: their first invocation needs no read of the log."""
        self.refused: dict[str, CorruptEntryError] = {}
        """Runs whose log is damaged (``run_until_idle`` refused to invoke them), with the damage."""

    def _commit_directly(self, appends: Sequence[Append]) -> list[Committed | ConcurrencyError]:
        return self.store.commit(appends, now=self.clock.now())

    def _coordinate_here(self, request: Request) -> Answer:
        [answer] = self.coordinator.handle([request], self.clock.now())
        self._take_fired()
        self._take_wakes(answer)
        return answer

    def _take_fired(self) -> None:
        for fired in self.coordinator.take_fired():
            self._take_wakes(fired)

    def _take_wakes(self, answer: Answer) -> None:
        accepted = accepted_of(answer)
        if accepted is not None:
            self._fresh.update((run.run_id, run.fresh_state()) for run in accepted.runs)
            self._ready.extend(run.run_id for run in accepted.runs)
            self._ready.extend(run_id for run_id, _ in accepted.wakes)

    # -- events ----------------------------------------------------------------------------

    def accept(self, events: EventInput) -> Accepted:
        """Check, route and commit events; nothing is accepted if any event is bad."""
        [result] = self.accept_many([events])
        if isinstance(result, Exception):
            raise result
        return result

    def accept_many(self, sends: Sequence[EventInput]) -> list[Accepted | Exception]:
        """Accept several sends in one commit; each is all-or-nothing, and a bad one spoils no other."""
        answers = self.coordinator.handle([SendEvents(events) for events in sends], self.clock.now())
        self._take_fired()
        return [answer for answer in answers if not isinstance(answer, Done)]

    # -- runs ------------------------------------------------------------------------------

    def load(self, run_id: str) -> RunState:
        """A run's state folded from its stream and the signals sent to it."""
        entries = self.store.read_stream(r.run_stream(run_id))
        if not entries:
            raise RunNotFoundError(f"no run {run_id!r} in the log")
        return fold(run_id, entries, self.store.read_stream(r.signal_stream(run_id)))

    def invoke(self, run_id: str, state: RunState | None = None) -> Outcome:
        """Run one invocation of a run, from its state in the log (or the given fresh state)."""
        state = state if state is not None else self.load(run_id)
        function = self.registry.get(state.function_id)
        if function is None:
            raise FunctionNotFoundError(
                f"run {run_id} belongs to function {state.function_id!r}, which is not registered"
            )
        commit = self._run_committer(state)
        invocation = Invocation(
            function, state, commit=commit, clock=self.clock, limits=self.limits, coordinate=self.coordinate,
            cancelling=self.coordinator.cancelling, listens_for=self.coordinator.listens_for,
            registry=self.registry, hooks=self.hooks,
        )
        outcome = invocation.run(make_context(invocation))
        if outcome.wake_at is None:
            self.coordinator.cancelling.pop(run_id, None)  # it ended: nothing left to cancel
        return outcome

    def _run_committer(self, state: RunState) -> Callable[[Sequence[NewEntry]], None]:
        stream = r.run_stream(state.run_id)

        def commit(entries: Sequence[NewEntry]) -> None:
            write = StreamWrite(stream, tuple(entries), expected_version=state.version)
            [result] = self.committer([Append((write,))])
            if isinstance(result, ConcurrencyError):
                raise StaleRunError(str(result))

        return commit

    def run_flow(self, run_id: str) -> dict[str, Any]:
        """What flow control attached to a run when it was scheduled (concurrency keys, priority)."""
        rows = self.store.query("runs", where={"run_id": run_id})
        text = rows[0]["flow"] if rows else None
        return json.loads(text) if text else {}

    def fail_run(self, run_id: str, error: BaseException) -> None:
        """Record that a run failed for a reason outside its code (the engine could not run it)."""
        state = self.load(run_id)
        if state.finished:
            return
        info = {"name": type(error).__name__, "message": f"the engine could not run this run: {error}", "stack": None}
        release = state.open_pauses
        entry = NewEntry(r.RUN_FAILED, {"error": info, "at": format_time(self.clock.now()), "release": release})
        events = tuple(end_events(state, "failed", error=info))
        answer = self.coordinate(EndRun(run_id, state.version, (entry,), events))
        if isinstance(answer, Exception):
            raise answer

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> bool:
        """Ask a run to cancel: it stops before its next step. False if it had already ended."""
        answer = self.coordinate(CancelRun(run_id, reason))
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Done)
        return bool(answer.value)

    def recover(self) -> Recovery:
        """Runs to start and timers to arm, from the projections (see ``_recover``); StorageError if
        they cannot be understood (``reading_projections``)."""
        with reading_projections(self.store):
            return self._recover()

    def _recover(self) -> Recovery:
        """Runs to start (queued, or interrupted mid-invocation) and timers to arm, from the projections.

        A run's timer is the earlier of its ``timers`` row and its ``wakeups`` row (a signal not yet
        acted on). Rows left for runs that have ended (a cancel that landed just after the end) are
        ignored. Throttled runs still queued get their start times again from now, in order (see
        ``FlowGate.respace``): runs that came due while the engine was down start at the
        throttled rate, not all at once. Call it once, at start, after the flow gate is loaded.
        """
        active: dict[str, str] = {}
        for status in ("waiting", "running", "queued"):
            rows = self.store.query("runs", where={"status": status})
            active.update((row["run_id"], row["function_id"]) for row in rows)
        due: dict[str, datetime] = {}
        for row in self.store.query("timers"):
            if row["run_id"] in active:
                due[row["run_id"]] = parse_time(row["due_at"])
        for row in self.store.query("wakeups"):
            if row["run_id"] in active:
                at = parse_time(row["at"])
                due[row["run_id"]] = min(due.get(row["run_id"], at), at)
        timers = sorted((when, run_id, active[run_id]) for run_id, when in due.items())
        running = self.store.query("runs", where={"status": "running"}, order_by="scheduled_at")
        queued = self.store.query("queue", order_by="position")
        later = self._respace_throttled(queued)
        timers = sorted(timers + [(when, run_id, active[run_id]) for run_id, when in later.items()])
        ready = [
            (row["run_id"], row["function_id"])
            for row in running + queued if row["run_id"] not in due and row["run_id"] not in later
        ]
        return Recovery(ready, timers)

    def _respace_throttled(self, queued: list[dict[str, Any]]) -> dict[str, datetime]:
        """New start times, after now, for throttled runs still queued; the others start now."""
        now = self.clock.now()
        later: dict[str, datetime] = {}
        for function in self.registry.all():
            throttle = function.flow.throttle
            if throttle is None:
                continue
            keys = {
                row["run_id"]: json.loads(row["flow"] or "{}").get("throttle", "")
                for row in self.store.query("runs", where={"function_id": function.id, "status": "queued"})
            }
            by_key: dict[str, list[tuple[str, datetime]]] = {}
            for row in queued:
                if row["run_id"] in keys:
                    by_key.setdefault(keys[row["run_id"]], []).append((row["run_id"], parse_time(row["ready_at"])))
            for key, runs in by_key.items():
                starts = self.coordinator.flow.respace(function.id, throttle, key, runs, now)
                later.update((run_id, start) for run_id, start in starts.items() if start > now)
        return later

    # -- the synchronous driver -------------------------------------------------------------

    def send(self, events: EventInput) -> list[str]:
        """Accept events and queue the runs they start or wake; ``run_until_idle`` runs them."""
        accepted = self.accept(events)
        self._take_wakes(accepted)
        return accepted.ids

    def start(self) -> None:
        """Pick up the work left in the log by an earlier process."""
        with reading_projections(self.store):
            self.coordinator.load_pauses()
            self.coordinator.load_flow(self.clock.now())
        recovery = self.recover()
        self._ready.extend(run_id for run_id, _ in recovery.ready)
        for due, run_id, _ in recovery.timers:
            self._arm(run_id, due)

    def run_until_idle(self) -> int:
        """Invoke every run that can run now, firing due timers; return how many invocations ran."""
        count = 0
        while True:
            self._fire_due_timers()
            if not self._ready:
                return count
            run_id = self._ready.popleft()
            try:
                outcome = self.invoke(run_id, self._fresh.pop(run_id, None))
            except CorruptEntryError as error:
                # Never run from a damaged history; the other runs go on. Nothing is written to the
                # run: its stream cannot be trusted, and `steplog check` shows the damage.
                self.refused[run_id] = error
                continue
            count += 1
            self._arm(run_id, outcome.wake_at)

    def advance(self, delta: timedelta | float) -> int:
        """Move a manual clock forward and run what became due."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs an engine built with a ManualClock")
        self.clock.advance(delta)
        return self.run_until_idle()

    def next_timer(self, *, crons: bool = True) -> datetime | None:
        """When the next timer (a run's, a debounce's or batch's, or with ``crons`` a cron tick) is due."""
        while self._timers and self._due.get(self._timers[0][1]) != self._timers[0][0]:
            heapq.heappop(self._timers)  # replaced by a later one, or its run ended
        flow = self.coordinator.next_due() if crons else self.coordinator.flow.next_due()
        due = [when for when in (self._timers[0][0] if self._timers else None, flow) if when]
        return min(due) if due else None

    def _arm(self, run_id: str, due: datetime | None) -> None:
        """A run's latest wake time replaces its earlier one; None (it ended) forgets it."""
        if due is None:
            self._due.pop(run_id, None)
            return
        self._due[run_id] = due
        heapq.heappush(self._timers, (due, run_id))

    def _fire_due_timers(self) -> None:
        now = self.clock.now()
        flow_due = self.coordinator.next_due()
        if flow_due is not None and flow_due <= now:
            answer = self._coordinate_here(FireDue())
            if isinstance(answer, Exception):
                raise answer
        while self._timers and self._timers[0][0] <= now:
            due, run_id = heapq.heappop(self._timers)
            if self._due.get(run_id) == due:
                del self._due[run_id]
                self._ready.append(run_id)


