"""The coordinator: the one place where events meet the runs listening for them.

Everything that must be ordered with respect to incoming events goes through here, one batch at
a time, from one thread (the router actor, or the caller of the synchronous engine):

- sends: events are checked, routed to the functions they start, and matched against pauses;
- registering a wait (``wait_for_event``, ``invoke``);
- expiring a wait whose timeout came;
- cancelling a run;
- ending a run whose end events someone listens for (or whose cancel rules must be released).

Because registrations and sends are planned in the order they arrive, and the pause index is
changed at planning time, a wait sees exactly the matching events committed after it, and none
committed before. A batch is planned in full and committed in one group commit; each item is
still all-or-nothing. What a matched pause does is recorded in the run's signal stream, in the
same append as the event that matched it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.crontab import CRON_ARMED, CRON_DISARMED, CRON_TICKED, CronTable, Tick, cron_stream
from steplog.engine.errors import EngineError, RunNotFoundError
from steplog.engine.events import Event, ReceivedEvent, prepare_events
from steplog.engine.flow.gate import FlowGate, Journal, Start
from steplog.engine.functions import FunctionRegistry
from steplog.engine.jsonvalues import as_unicode, is_unicode
from steplog.engine.limits import Limits, for_engine_events
from steplog.engine.pauses import CANCEL_KIND, Pause, PauseIndex
from steplog.engine.routing import DEDUP_WINDOW, FiredEvent, Routed, ScheduledRun, dedup_key, route, route_fired
from steplog.engine.state import FINAL_STATUSES
from steplog.eventstore import Append, Committed, ConcurrencyError, CorruptEntryError, EventStore, NewEntry, StreamWrite

EventInput = Event | Mapping[str, Any] | Sequence[Event | Mapping[str, Any]]
Committer = Callable[[Sequence[Append]], list[Committed | ConcurrencyError]]


class StaleRunError(Exception):
    """Another invocation wrote to the run first; this one must stop without writing."""


# -- requests ---------------------------------------------------------------------------------


@attrs.frozen
class SendEvents:
    """Accept events (all or nothing). ``internal`` allows the reserved ``inngest/`` names."""

    events: Any
    internal: bool = False
    id_seed: str | None = None
    """Inngest's ``x-inngest-event-id-seed``: the events get the seed's ids, and a send whose ids
    are already in the log (a retried request) is answered with them and records nothing."""


@attrs.frozen
class RegisterWait:
    """Record a run's wait (its step.waiting entry) and start listening; optionally send events with it."""

    run_id: str
    expected_version: int
    entries: tuple[NewEntry, ...]
    pause: Pause
    events: tuple[dict[str, Any], ...] = ()


@attrs.frozen
class ExpireWait:
    """A wait's timeout came: end it with None, unless an event ended it first (then answer that event)."""

    run_id: str
    step: str


@attrs.frozen
class CancelRun:
    """Ask a run to cancel; it stops before its next step."""

    run_id: str
    reason: str


@attrs.frozen
class EndRun:
    """Record a run's end and the events announcing it, together; stop the run's pauses."""

    run_id: str
    expected_version: int
    entries: tuple[NewEntry, ...]
    events: tuple[dict[str, Any], ...] = ()


@attrs.frozen
class FireDue:
    """Start the debounces and batches whose time has come."""


@attrs.frozen
class RerunRun:
    """Start a new run of a run's function with the same events (as the dev UI's Rerun)."""

    run_id: str


Request = SendEvents | RegisterWait | ExpireWait | CancelRun | EndRun | FireDue | RerunRun


# -- answers ----------------------------------------------------------------------------------


@attrs.frozen
class Accepted:
    """A committed send: the ids of its events, the runs it scheduled, and the waiting runs it woke."""

    ids: list[str]
    runs: list[ScheduledRun]
    duplicates: list[str]
    wakes: list[tuple[str, str]] = attrs.Factory(list)
    """(run_id, function_id) of runs to resume: a wait of theirs ended, or they must cancel."""
    skipped: list[ScheduledRun] = attrs.Factory(list)
    """Runs flow control recorded as skipped."""
    held: list[str] = attrs.Factory(list)
    """Events a debounce or batch holds: runs may start with them later."""
    replayed: list[str] = attrs.Factory(list)
    """Events of a retried seeded send, recorded by the first: what they started is in the log."""


@attrs.frozen
class Done:
    """A registration, expiry, cancel request or run end that was recorded."""

    value: Any = None
    accepted: Accepted | None = None
    """The events sent with it, if any."""


Answer = Accepted | Done | Exception


def accepted_of(answer: Answer) -> Accepted | None:
    """The events an answer accepted (a send's, or those sent with a wait or a run's end), if any."""
    accepted = answer.accepted if isinstance(answer, Done) else answer
    return accepted if isinstance(accepted, Accepted) else None


@attrs.define
class _Planned:
    appends: list[Append]
    finish: Callable[[list[Committed | ConcurrencyError]], Answer]
    undo: Callable[[], None] = lambda: None


@attrs.define
class _Batch:
    """What earlier items of the batch being planned did, for the later ones to see."""

    keys: set[str] = attrs.Factory(set)
    resolved: dict[tuple[str, str], Any] = attrs.Factory(dict)
    cancels: set[str] = attrs.Factory(set)
    seeded: set[str] = attrs.Factory(set)
    """Internal ids given by seeds so far."""


@attrs.define
class _Effects:
    """What planning one send did to the index, to announce after its commit or to undo."""

    added: list[Pause] = attrs.Factory(list)
    removed: list[Pause] = attrs.Factory(list)
    resolved: list[tuple[str, str]] = attrs.Factory(list)
    cancels: list[tuple[str, str]] = attrs.Factory(list)
    wakes: list[tuple[str, str]] = attrs.Factory(list)
    journal: Journal = attrs.Factory(Journal)
    """Changes to the flow gate, undone if the commit fails."""


class Coordinator:
    """Plans and commits requests in order; owns the pause index and the set of runs asked to cancel."""

    def __init__(
        self, store: EventStore, registry: FunctionRegistry, limits: Limits, committer: Committer
    ) -> None:
        self.store = store
        self.registry = registry
        self.limits = limits
        self.committer = committer
        self.pauses = PauseIndex()
        self.flow = FlowGate()
        self.cron = CronTable()
        self._fired: list[Accepted] = []
        self.cancelling: dict[str, str] = {}
        """run_id -> reason for runs asked to cancel: a live invocation reads it between steps."""
        self._triggered: dict[str, tuple[int, bool]] = {}

    def load_pauses(self) -> int:
        """Fill the index from the waits projection (at start); returns how many pauses there are."""
        for row in self.store.query("waits"):
            self.pauses.add(Pause.from_dict({**row, "trigger": _json_load(row["trigger"])}))
        return len(self.pauses)

    def load_flow(self, now: datetime) -> None:
        """Fill the flow gate from the projections (at start): bucket times, pending debounces and
        batches, and the active runs of singleton functions."""
        singletons = []
        cancelling = {row["run_id"] for row in self.store.query("wakeups") if row["reason"] == "cancel"}
        for function in self.registry.all():
            if function.flow.singleton is None:
                continue
            for status in ("queued", "running", "waiting"):
                for row in self.store.query("runs", where={"function_id": function.id, "status": status}):
                    flow = _json_load(row["flow"]) or {}
                    if "singleton" in flow and row["run_id"] not in cancelling:  # a replaced run holds no key
                        singletons.append((function.id, flow["singleton"], row["run_id"]))
        singletons.sort(key=lambda item: item[2])  # else, the newest run of a key holds it
        self.flow.load(
            self.store.query("buckets"), self.store.query("debounces"),
            self.store.query("batched", order_by="position"), singletons, now,
        )
        for function in self.registry.all():
            if function.flow.throttle is not None:
                self.flow.after_restart(function.id, function.flow.throttle, now)
        self._load_cron(now)

    def _load_cron(self, now: datetime) -> None:
        """Plan the cron ticks; a function with no cron record yet gets one saying its schedule
        begins now (so ticks missed from then on follow its policy after a restart)."""
        rows = self.store.query("crons")

        def recorded(tick: Tick) -> bool:
            return self.store.key_recorded(f"tick:{tick.event_id}", window_s=None, now=now)  # however long ago

        unarmed = self.cron.load(self.registry.all(), rows, now, recorded)
        gone = [row["function_id"] for row in rows if not self._has_crons(row["function_id"])]
        writes = [StreamWrite(cron_stream(fn), (NewEntry(CRON_ARMED, self.cron.armed(fn, now)),)) for fn in unarmed]
        writes += [StreamWrite(cron_stream(fn), (NewEntry(CRON_DISARMED, {"function_id": fn}),)) for fn in gone]
        if writes:  # a cron trigger given back later starts afresh, not from its old record
            self.committer([Append(tuple(writes))])

    def _has_crons(self, function_id: str) -> bool:
        function = self.registry.get(function_id)
        return function is not None and bool(function.crons)

    def next_due(self) -> datetime | None:
        """When the flow gate next has a debounce or batch to start, or a cron tick is due."""
        return min((due for due in (self.flow.next_due(), self.cron.next_due()) if due is not None), default=None)

    def listens_for(self, name: str) -> bool:
        """Whether events with this name can reach anything: a function's trigger or a pause.

        Cheap enough for every run end, and safe to call from any thread.
        """
        if self.pauses.listens_for(name):
            return True
        cached = self._triggered.get(name)
        if cached is None or cached[0] != len(self.registry):
            functions = self.registry.all()
            cached = (len(functions), any(t.matches_name(name) for fn in functions for t in fn.triggers))
            self._triggered[name] = cached
        return cached[1]

    def take_fired(self) -> list[Accepted]:
        """The debounces and batches ``handle`` started on its own (they were due), to start their runs."""
        fired, self._fired = self._fired, []
        return fired

    def handle(self, requests: Sequence[Request], now: datetime) -> list[Answer]:
        """Plan every request in order, commit them together, and answer each.

        Debounces and batches that are due are fired first, whoever asked: an event that comes
        after its key's debounce was due starts a debounce of its own rather than joining the
        overdue one. Their runs are handed over by ``take_fired``.
        """
        due = self.next_due()
        implicit = due is not None and due <= now and not any(isinstance(r, FireDue) for r in requests)
        answers = self._handle([FireDue(), *requests] if implicit else list(requests), now)
        if implicit:
            fired = answers.pop(0)
            if isinstance(fired, Accepted):
                self._fired.append(fired)
        return answers

    def _handle(self, requests: Sequence[Request], now: datetime) -> list[Answer]:
        batch = _Batch()
        planned = [self._plan(request, batch, now) for request in requests]
        appends = [append for item in planned if not isinstance(item, Exception) for append in item.appends]
        try:
            results = iter(self.committer(appends) if appends else [])
        except BaseException:
            for item in reversed(planned):  # in reverse: a later item's undo may restore what an earlier one added
                if not isinstance(item, Exception):
                    item.undo()
            raise
        answers: list[Answer] = []
        for item in planned:
            if isinstance(item, Exception):
                answers.append(item)
                continue
            outcome = [next(results) for _ in item.appends]
            if any(isinstance(result, ConcurrencyError) for result in outcome):
                item.undo()
            answers.append(item.finish(outcome))
        return answers

    # -- planning -------------------------------------------------------------------------------

    def _plan(self, request: Request, batch: _Batch, now: datetime) -> _Planned | Exception:
        try:
            if isinstance(request, SendEvents):
                return self._plan_send(request.events, request.internal, batch, now, request.id_seed)
            if isinstance(request, RegisterWait):
                return self._plan_wait(request, batch, now)
            if isinstance(request, ExpireWait):
                return self._plan_expiry(request, batch)
            if isinstance(request, CancelRun):
                return self._plan_cancel(request)
            if isinstance(request, FireDue):
                return self._plan_due(batch, now)
            if isinstance(request, RerunRun):
                return self._plan_rerun(request, batch, now)
            return self._plan_end(request, batch, now)
        except (EngineError, CorruptEntryError) as error:  # a damaged run's stream refuses its request alone
            return error

    def _plan_send(
        self, events: Any, internal: bool, batch: _Batch, now: datetime, id_seed: str | None = None
    ) -> _Planned:
        received = prepare_events(
            events, now=now, limits=self._limits(internal), allow_reserved=internal, id_seed=id_seed
        )
        routed: list[Routed] = []
        effects = _Effects()
        functions = self.registry.all()
        for item in received:
            if id_seed is not None and self._replayed(item, batch):
                routed.append(Routed(item, Append(()), ()))
                continue
            duplicate = self._seen(item, batch, now)
            one = route(item, functions, now, duplicate=duplicate, gate=self.flow, journal=effects.journal)
            if not duplicate:
                signals = self._resolve(one, batch, effects, now) + self._replace(one, batch, effects)
                if signals:  # in the event's own append: the event and what it resumed, or neither
                    one = attrs.evolve(one, append=attrs.evolve(one.append, writes=one.append.writes + signals))
                self._listen(one.runs, effects)
            routed.append(one)
        return self._planned_with_finished(routed, effects, batch, now)

    def _planned_with_finished(
        self, routed: list[Routed], effects: _Effects, batch: _Batch, now: datetime
    ) -> _Planned:
        """The routed appends, with the events failing invokes whose runs flow control skipped."""
        planned = self._send_planned(routed, effects, batch)
        finished = [event for one in routed for event in one.finished]
        if not finished:
            return planned
        return _joined(planned, self._plan_send(finished, True, batch, now))

    def _send_planned(self, routed: list[Routed], effects: _Effects, batch: _Batch) -> _Planned:
        def finish(results: list[Committed | ConcurrencyError]) -> Answer:
            answer = _accepted(routed, results, effects.wakes)
            if isinstance(answer, Accepted):
                for run_id, reason in effects.cancels:
                    self.cancelling.setdefault(run_id, reason)
            return answer

        def undo() -> None:
            for pause in effects.added:
                self.pauses.remove(pause.run_id, pause.step)
            self.pauses.add_all(effects.removed)
            for key in effects.resolved:
                batch.resolved.pop(key, None)
            for run_id, _ in effects.cancels:
                batch.cancels.discard(run_id)
            effects.journal.undo()
            self.flow.rearm()

        return _Planned([one.append for one in routed], finish, undo)

    def _listen(self, runs: Sequence[ScheduledRun], effects: _Effects) -> None:
        for run in runs:
            self.pauses.add_all(run.pauses)
            effects.added.extend(run.pauses)

    def _replace(self, routed: Routed, batch: _Batch, effects: _Effects) -> tuple[StreamWrite, ...]:
        """Singleton's cancel mode: ask each run a new one replaces to cancel."""
        writes = []
        for run_id, function_id, new_run_id in routed.replaced:
            if run_id in batch.cancels or run_id in self.cancelling:
                continue
            reason = f"replaced by run {new_run_id} (singleton, mode cancel)"
            batch.cancels.add(run_id)
            effects.cancels.append((run_id, reason))
            effects.wakes.append((run_id, function_id))
            writes.append(StreamWrite(r.signal_stream(run_id), (NewEntry(r.CANCEL_REQUESTED, {"reason": reason}),)))
        return tuple(writes)

    def _plan_due(self, batch: _Batch, now: datetime) -> _Planned:
        """Start the debounces, batches and cron ticks that are due."""
        ticks = [tick for tick in self.cron.due(now) if f"tick:{tick.event_id}" not in batch.keys]  # not planned twice
        ticks = ticks[: self._limits(True).events_per_send]  # the rest fire right after, in the next commit
        sent = self._plan_ticks(ticks, batch, now) if ticks else None  # first: it may raise, and changes nothing
        try:
            flow = self._plan_flow_due(batch, now)
        except BaseException:
            if sent is not None:
                sent.undo()  # the ticks' runs were listening for their cancel events
            raise
        return _joined(flow, sent) if sent is not None else flow

    def _plan_ticks(self, ticks: list[Tick], batch: _Batch, now: datetime) -> _Planned:
        """Each tick's event, and its ``cron.ticked`` record, committed together."""
        sent = self._plan_send([tick.event() for tick in ticks], True, batch, now)
        records = Append(tuple(
            StreamWrite(cron_stream(tick.function_id), (NewEntry(CRON_TICKED, self.cron.record(tick)),))
            for tick in ticks
        ))

        def finish(results: list[Committed | ConcurrencyError]) -> Answer:
            answer = sent.finish(results[:-1])
            if not isinstance(answer, Exception):
                self.cron.fired(ticks)
            return answer

        return _Planned([*sent.appends, records], finish, sent.undo)

    def _plan_flow_due(self, batch: _Batch, now: datetime) -> _Planned:
        """Start the debounces and batches that are due, each run in its own append."""
        effects = _Effects()
        routed: list[Routed] = []
        for action in self.flow.fire_due(now, self._flow_of, effects.journal):
            function = self.registry.get(action.function_id)
            assert function is not None
            one = route_fired(action, function, now)
            signals = self._replace(one, batch, effects)
            if signals:
                one = attrs.evolve(one, append=attrs.evolve(one.append, writes=one.append.writes + signals))
            self._listen(one.runs, effects)
            routed.append(one)
        return self._planned_with_finished(routed, effects, batch, now)

    def _flow_of(self, function_id: str) -> Any:
        function = self.registry.get(function_id)
        return None if function is None else function.flow

    def _limits(self, internal: bool) -> Limits:
        return for_engine_events(self.limits) if internal else self.limits

    def _replayed(self, received: ReceivedEvent, batch: _Batch) -> bool:
        """Whether a seeded event's id is already taken: by this batch, or in the log."""
        if received.internal_id in batch.seeded:
            return True
        batch.seeded.add(received.internal_id)
        return self.store.stream_version(r.event_stream(received.internal_id)) > 0

    def _seen(self, received: ReceivedEvent, batch: _Batch, now: datetime) -> bool:
        key = dedup_key(received)
        if key is None:
            return False
        if key in batch.keys:
            return True
        batch.keys.add(key)
        return self.store.key_recorded(key, window_s=DEDUP_WINDOW.total_seconds(), now=now)

    def _resolve(self, routed: Routed, batch: _Batch, effects: _Effects, now: datetime) -> tuple[StreamWrite, ...]:
        """What the event does to the pauses it matches: the signals to write (and, in ``effects``,
        the runs to wake, the pauses removed, the cancels to announce once committed)."""
        assert isinstance(routed.received, ReceivedEvent)
        if not self.pauses.listens_for(routed.received.event.name):
            return ()
        event = routed.received.event.to_dict()
        writes: list[StreamWrite] = []
        for pause in self.pauses.match(event, now):
            self.pauses.remove(pause.run_id, pause.step)
            effects.removed.append(pause)
            if pause.kind == CANCEL_KIND:
                if pause.run_id in batch.cancels or pause.run_id in self.cancelling:
                    continue  # already asked to cancel (by another rule, or earlier)
                reason = f"cancelled by event {event['name']!r} ({event['id']})"
                batch.cancels.add(pause.run_id)
                effects.cancels.append((pause.run_id, reason))
                entry = NewEntry(r.CANCEL_REQUESTED, {"reason": reason})
            else:
                batch.resolved[pause.key] = event
                effects.resolved.append(pause.key)
                entry = NewEntry(r.WAIT_RESOLVED, {"step": pause.step, "event": event})
            writes.append(StreamWrite(r.signal_stream(pause.run_id), (entry,)))
            effects.wakes.append((pause.run_id, pause.function_id))
        return tuple(writes)

    def _plan_wait(self, request: RegisterWait, batch: _Batch, now: datetime) -> _Planned:
        self.pauses.add(request.pause)
        return self._run_with_events(
            request.run_id, request.entries, request.expected_version, request.events, batch, now,
            undo=lambda: self.pauses.remove(request.pause.run_id, request.pause.step),
        )

    def _plan_expiry(self, request: ExpireWait, batch: _Batch) -> _Planned:
        key = (request.run_id, request.step)
        if self.pauses.remove(*key) is None:
            earlier = batch.resolved[key] if key in batch.resolved else self._recorded_result(*key)
            if earlier is not _UNRESOLVED:
                return _Planned([], lambda _results: Done(earlier))
        batch.resolved[key] = None
        write = StreamWrite(r.signal_stream(request.run_id), (NewEntry(r.WAIT_EXPIRED, {"step": request.step}),))
        return _Planned([Append((write,))], lambda _results: Done(None))

    def _recorded_result(self, run_id: str, step: str) -> Any:
        for entry in reversed(self.store.read_stream(r.signal_stream(run_id))):
            if entry.type in (r.WAIT_RESOLVED, r.WAIT_EXPIRED) and entry.data["step"] == step:
                return entry.data.get("event")
        return _UNRESOLVED

    def _plan_cancel(self, request: CancelRun) -> _Planned:
        rows = self.store.query("runs", where={"run_id": request.run_id})
        if not rows:
            raise RunNotFoundError(f"no run {request.run_id!r}")
        if rows[0]["status"] in FINAL_STATUSES:
            return _Planned([], lambda _results: Done(False))
        reason = as_unicode(request.reason) if isinstance(request.reason, str) else request.reason
        entry = NewEntry(r.CANCEL_REQUESTED, {"reason": reason})
        write = StreamWrite(r.signal_stream(request.run_id), (entry,))

        def finish(_results: list[Committed | ConcurrencyError]) -> Answer:
            self.cancelling.setdefault(request.run_id, reason)
            return Done(True, Accepted([], [], [], [(request.run_id, rows[0]["function_id"])]))

        return _Planned([Append((write,))], finish)

    def _plan_rerun(self, request: RerunRun, batch: _Batch, now: datetime) -> _Planned:
        """A new run with the run's events, as the function's flow control starts a run now:
        singleton (skip or cancel), throttle, concurrency keys and priority are decided again from
        the current definition; what decided about the events themselves (rate limit,
        idempotency, debounce, batching) is not."""
        # a lone surrogate cannot be stored, so no run has such an id (and SQLite could not look it up)
        entries = self.store.read_stream(r.run_stream(request.run_id)) if is_unicode(request.run_id) else []
        if not entries or entries[0].type not in (r.RUN_SCHEDULED, r.RUN_SKIPPED):
            raise RunNotFoundError(f"no run {request.run_id!r}")
        original = entries[0].data
        function = self.registry.get(original["function_id"])
        if function is None:
            raise RunNotFoundError(
                f"run {request.run_id!r} belongs to function {original['function_id']!r}, which is not defined now"
            )
        effects = _Effects()
        errors: list[str] = []
        received = tuple(zip(original["event_ids"], original["events"]))
        action = self.flow.start(function.id, function.flow, received, now, effects.journal, errors)
        if errors and isinstance(action, Start):
            action = attrs.evolve(action, errors=tuple(errors))
        one = _as_rerun(route_fired(action, function, now), request.run_id)
        signals = self._replace(one, batch, effects)
        if signals:
            one = attrs.evolve(one, append=attrs.evolve(one.append, writes=one.append.writes + signals))
        self._listen(one.runs, effects)
        planned = self._planned_with_finished([one], effects, batch, now)
        run_id = (one.runs or one.skipped)[0].run_id

        def finish(results: list[Committed | ConcurrencyError]) -> Answer:
            answer = planned.finish(results)
            return Done(run_id, answer) if isinstance(answer, Accepted) else answer

        return _Planned(planned.appends, finish, planned.undo)

    def _plan_end(self, request: EndRun, batch: _Batch, now: datetime) -> _Planned:
        released = self.pauses.remove_run(request.run_id)
        journal = Journal()
        self.flow.run_ended(request.run_id, journal)
        wanted = tuple(event for event in request.events if self.listens_for(event["name"]))

        def undo() -> None:
            self.pauses.add_all(released)
            journal.undo()

        return self._run_with_events(
            request.run_id, request.entries, request.expected_version, wanted, batch, now,
            undo=undo, done=lambda: self.cancelling.pop(request.run_id, None),
        )

    def _run_with_events(
        self, run_id: str, entries: tuple[NewEntry, ...], expected_version: int,
        events: tuple[dict[str, Any], ...], batch: _Batch, now: datetime, *,
        undo: Callable[[], Any], done: Callable[[], Any] = lambda: None,
    ) -> _Planned:
        """A run's entries and the events they send as one append: both or neither. A stale run
        (another invocation wrote first) is answered with StaleRunError."""
        run_write = StreamWrite(r.run_stream(run_id), entries, expected_version)
        sent = self._plan_send(list(events), True, batch, now) if events else None
        writes = (run_write,) + tuple(write for append in (sent.appends if sent else []) for write in append.writes)

        def finish(results: list[Committed | ConcurrencyError]) -> Answer:
            [result] = results
            if isinstance(result, ConcurrencyError):
                return StaleRunError(str(result))
            done()
            accepted = sent.finish([result] * len(sent.appends)) if sent else None
            return Done(accepted=accepted if isinstance(accepted, Accepted) else None)

        def undo_all() -> None:
            undo()
            if sent is not None:
                sent.undo()

        return _Planned([Append(writes)], finish, undo_all)


_UNRESOLVED = object()


def _as_rerun(routed: Routed, rerun_of: str) -> Routed:
    """The routed start or skip of a rerun, its run entry noting which run it repeats."""
    marked: dict[str, ScheduledRun] = {}
    for run in routed.runs + routed.skipped:
        marked[r.run_stream(run.run_id)] = attrs.evolve(
            run, entry=NewEntry(run.entry.type, {**run.entry.data, "rerun_of": rerun_of})
        )
    writes = tuple(
        attrs.evolve(write, entries=(marked[write.stream].entry,)) if write.stream in marked else write
        for write in routed.append.writes
    )
    return attrs.evolve(
        routed, append=attrs.evolve(routed.append, writes=writes),
        runs=tuple(marked[r.run_stream(run.run_id)] for run in routed.runs),
        skipped=tuple(marked[r.run_stream(run.run_id)] for run in routed.skipped),
    )


def _joined(first: _Planned, then: _Planned) -> _Planned:
    """Two planned sends as one item: the second's events (invokes failed because flow control
    skipped their runs) are committed with the first's, and the runs they wake are the first's."""
    split = len(first.appends)

    def finish(results: list[Committed | ConcurrencyError]) -> Answer:
        answer, extra = first.finish(results[:split]), then.finish(results[split:])
        if isinstance(answer, Accepted) and isinstance(extra, Accepted):
            answer.wakes.extend(extra.wakes)
            answer.runs.extend(extra.runs)
        return answer

    def undo() -> None:
        then.undo()
        first.undo()

    return _Planned(first.appends + then.appends, finish, undo)


def _accepted(
    routed: list[Routed], results: list[Committed | ConcurrencyError], wakes: list[tuple[str, str]]
) -> Accepted | Exception:
    runs: list[ScheduledRun] = []
    skipped: list[ScheduledRun] = []
    duplicates: list[str] = []
    held: list[str] = []
    replayed: list[str] = []
    ids: list[str] = []
    for item, result in zip(routed, results):
        if isinstance(result, ConcurrencyError):
            return result
        if isinstance(item.received, FiredEvent):
            runs.extend(item.runs)
            skipped.extend(item.skipped)
            continue
        ids.append(item.received.internal_id)
        if not item.append.writes:
            duplicates.append(item.received.internal_id)
            replayed.append(item.received.internal_id)
        elif result.duplicate_of is not None or item.append.writes[0].entries[0].type == r.EVENT_DUPLICATE:
            duplicates.append(item.received.internal_id)
        else:
            runs.extend(item.runs)
            skipped.extend(item.skipped)
            if item.held:
                held.append(item.received.internal_id)
    return Accepted(ids, runs, duplicates, wakes, skipped, held, replayed)


def _json_load(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text
