"""The flow gate: what flow control does with each event a function matches, decided when the event
is accepted, in the coordinator's order.

For one function and one event, in this order:

1. rate limit / idempotency: over the limit, the event starts no run; a skipped run records why;
2. debounce: the event replaces the key's pending event and pushes its start back (it starts
   when the gate is told the time has come, ``fire_due``);
3. batching: the event joins the key's batch, which starts when full or at its timeout;
   an event for which ``if_exp`` is false (or fails) starts a run of its own at once;
4. starting (now, or when a debounce or batch fires): singleton skips the new run or cancels the
   active one; throttle gives the run the earliest start its key's GCRA allows (later runs queue
   behind it, in order, none dropped); the run carries its concurrency keys and priority, which
   admission (``engine.flow.admission``) uses when it is ready to execute.

Every decision is written in the log with the event (bucket times with the entries that change
them, pending debounces and batches in their own streams), and the gate is rebuilt from the
projections at start: a restart loses nothing queued and resets no limit.

The gate belongs to the coordinator: one thread at a time. Changes made while planning a batch
are journaled, so that a batch whose commit fails is undone.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import attrs
from steplog.engine.expressions import Expression, ExpressionError
from steplog.engine.flow.gcra import Gcra
from steplog.engine.flow.keys import key_of, priority_of
from steplog.engine.flow.options import PRIORITY_RANGE, FlowControl, ThrottleRule
from steplog.engine.ids import new_ulid
from steplog.eventstore import NewEntry

DEBOUNCE_PUSHED = "debounce.pushed"
DEBOUNCE_FIRED = "debounce.fired"
BATCH_ADDED = "batch.added"
BATCH_FLUSHED = "batch.flushed"
BATCH_BYTES = 10 * 1024 * 1024
"""A batch starts when its events reach this combined size, as in Inngest."""

THROTTLE, RATE, STARTED = "throttle", "rate", "started"
Received = tuple[str, dict[str, Any]]
"""An event as the gate holds it: its internal id and the event."""


@attrs.frozen
class Start:
    """Schedule a run with these events, ready at ``ready_at``."""

    run_id: str
    function_id: str
    received: tuple[Received, ...]
    ready_at: datetime
    flow: dict[str, Any]
    """What admission needs (concurrency keys, priority) and the singleton key, for run.scheduled."""
    buckets: list[list[Any]]
    """[function_id, kind, key, tat] rows this start changes."""
    replaces: str | None = None
    """The active run that singleton's cancel mode cancels."""
    writes: tuple[tuple[str, NewEntry], ...] = ()
    """Entries for flow streams written with it (a debounce fired, a batch flushed)."""
    errors: tuple[str, ...] = ()
    """Key expressions that failed when a debounce or batch fired (recorded on the run)."""


@attrs.frozen
class Skip:
    """Record a skipped run: the events start nothing, for ``reason``."""

    run_id: str
    function_id: str
    received: tuple[Received, ...]
    reason: str
    message: str
    writes: tuple[tuple[str, NewEntry], ...] = ()
    buckets: list[list[Any]] = attrs.Factory(list)
    """Bucket times the event moved before it was skipped (a rate limit passed, singleton skipped)."""
    errors: tuple[str, ...] = ()


@attrs.frozen
class Hold:
    """The event waits in a debounce or a batch: write this entry (if any), start nothing now."""

    stream: str | None
    entry: NewEntry | None
    note: str
    """What happened to the event, as recorded on it."""


Action = Start | Skip | Hold


@attrs.frozen
class _Debounce:
    received: Received
    started: float
    due: float
    stream: str


@attrs.frozen
class _Batch:
    received: tuple[Received, ...]
    due: float
    size: int
    stream: str


_ABSENT = object()


class Journal:
    """Changes to the gate's maps while one batch is planned, to undo if its commit fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[dict[Any, Any], Any, Any, Any]] = []

    def put(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((mapping, key, mapping.get(key, _ABSENT), value))
        mapping[key] = value

    def pop(self, mapping: dict[Any, Any], key: Any) -> None:
        if key in mapping:
            self._undo.append((mapping, key, mapping.pop(key), _ABSENT))

    def undo(self) -> None:
        """Restore what this journal changed, except where a later change (of another request,
        planned after this one and committed) has replaced it since."""
        for mapping, key, old, new in reversed(self._undo):
            if mapping.get(key, _ABSENT) is not new:
                continue
            if old is _ABSENT:
                mapping.pop(key, None)
            else:
                mapping[key] = old
        self._undo.clear()


class FlowGate:
    """Event-time flow control for every function of an engine."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str, str], float] = {}
        """(function_id, kind, key) -> GCRA TAT, for throttle and rate limits."""
        self.latest_starts: dict[tuple[str, str], float] = {}
        """(function_id, throttle key) -> its latest recorded start, as loaded (for respacing at start)."""
        self.singletons: dict[tuple[str, str], str] = {}
        """(function_id, key) -> the active run."""
        self._singleton_of: dict[str, tuple[str, str]] = {}
        self.debounces: dict[tuple[str, str], _Debounce] = {}
        self.batches: dict[tuple[str, str], _Batch] = {}
        self._due: list[tuple[float, str, str, str]] = []
        """A heap of (due, "debounce" | "batch", function_id, key); entries whose pending item changed are stale."""

    # -- events ---------------------------------------------------------------------------------

    def admit(
        self, function_id: str, flow: FlowControl, received: Received, now: datetime, journal: Journal,
        errors: list[str],
    ) -> Action:
        """What one event does for one function it matched."""
        event = received[1]
        t = now.timestamp()
        if flow.debounce is not None and self._older_than_pending(function_id, flow, event):
            return Hold(None, None, "debounce: ignored, older than the pending event")
        rate_bucket: list[list[Any]] = []
        if flow.rate_limit is not None:
            rule = flow.rate_limit
            option = "idempotency" if rule.reason == "idempotency" else "rate_limit.key"
            key = key_of(rule.key, event, errors, option)
            slot = (function_id, RATE, key)
            gcra = Gcra.of(rule.limit, rule.period, 0 if rule.reason == "idempotency" else rule.limit // 10)
            tat = self.buckets.get(slot)
            if not gcra.allows(tat, t):
                message = _skip_message(rule.reason, key, rule.limit, rule.period.total_seconds())
                return Skip(new_ulid(now), function_id, (received,), rule.reason, message)
            journal.put(self.buckets, slot, gcra.after(tat, t))
            rate_bucket = [[function_id, RATE, key, self.buckets[slot]]]
        if flow.debounce is not None:
            return self._debounce(function_id, flow, received, t, journal, errors, rate_bucket)
        if flow.batch is not None:
            return self._batch(function_id, flow, received, now, journal, errors)
        start = self.start(function_id, flow, (received,), now, journal, errors)
        return _with_buckets(start, rate_bucket)

    def start(
        self, function_id: str, flow: FlowControl, received: tuple[Received, ...], now: datetime,
        journal: Journal, errors: list[str], writes: tuple[tuple[str, NewEntry], ...] = (),
    ) -> Start | Skip:
        """A run for these events, as singleton and throttle allow; concurrency keys and priority attached."""
        first = received[0][1]
        run_id = new_ulid(now)
        data: dict[str, Any] = {}
        replaces = None
        if flow.singleton is not None:
            key = key_of(flow.singleton.key, first, errors, "singleton.key")
            active = self.singletons.get((function_id, key))
            if active is not None and flow.singleton.mode == "skip":
                message = f"singleton: run {active} is still active for key {key!r}"
                return Skip(run_id, function_id, received, "singleton", message, writes)
            replaces = active
            journal.put(self.singletons, (function_id, key), run_id)
            journal.put(self._singleton_of, run_id, (function_id, key))
            data["singleton"] = key
        t = now.timestamp()
        ready = t
        buckets: list[list[Any]] = []
        if flow.throttle is not None:
            rule = flow.throttle
            key = key_of(rule.key, first, errors, "throttle.key")
            slot = (function_id, THROTTLE, key)
            gcra = Gcra.of(rule.limit, rule.period, rule.burst)
            tat = self.buckets.get(slot)
            ready = gcra.earliest(tat, t)
            journal.put(self.buckets, slot, gcra.after(tat, ready))
            buckets.append([function_id, THROTTLE, key, self.buckets[slot]])
            data["throttle"] = key
        ready = max(ready, first.get("ts", 0) / 1000)  # an event from the future: not before its ts
        if flow.concurrency:
            data["concurrency"] = [
                _scoped(function_id, index, rule.scope, rule.key is not None,
                        key_of(rule.key, first, errors, "concurrency.key"))
                for index, rule in enumerate(flow.concurrency)
            ]
        if flow.priority is not None:
            data["priority"] = priority_of(flow.priority, first, errors, PRIORITY_RANGE)
        ready_at = datetime.fromtimestamp(ready, tz=timezone.utc)
        return Start(run_id, function_id, received, ready_at, data, buckets, replaces, writes)

    def _debounce(
        self, function_id: str, flow: FlowControl, received: Received, t: float, journal: Journal,
        errors: list[str], buckets: list[list[Any]],
    ) -> Action:
        rule = flow.debounce
        assert rule is not None
        key = key_of(rule.key, received[1], errors, "debounce.key")
        slot = (function_id, key)
        pending = self.debounces.get(slot)
        stream = pending.stream if pending is not None else _stream("debounce", function_id, key)
        started = pending.started if pending is not None else t
        due = t + rule.period.total_seconds()
        if rule.timeout is not None:
            due = min(due, started + rule.timeout.total_seconds())
        item = _Debounce(received, started, due, stream)
        journal.put(self.debounces, slot, item)
        heapq.heappush(self._due, (due, "debounce", function_id, key))
        data = {
            "function_id": function_id, "key": key, "internal_id": received[0], "event": received[1],
            "started_at": started, "due_at": due, "buckets": buckets,
        }
        return Hold(stream, NewEntry(DEBOUNCE_PUSHED, data), "debounced")

    def _older_than_pending(self, function_id: str, flow: FlowControl, event: dict[str, Any]) -> bool:
        """Whether the event's ``ts`` is older than the key's pending debounce event (it is then ignored)."""
        assert flow.debounce is not None
        pending = self.debounces.get((function_id, key_of(flow.debounce.key, event, [], "debounce.key")))
        return pending is not None and event.get("ts", 0) < pending.received[1].get("ts", 0)

    def _batch(
        self, function_id: str, flow: FlowControl, received: Received, now: datetime, journal: Journal,
        errors: list[str],
    ) -> Action:
        rule = flow.batch
        assert rule is not None
        if rule.condition is not None and not _holds(rule.condition, received[1], errors):
            return self.start(function_id, flow, (received,), now, journal, errors)
        key = key_of(rule.key, received[1], errors, "batch_events.key")
        slot = (function_id, key)
        pending = self.batches.get(slot)
        size = len(json.dumps(received[1], separators=(",", ":")))
        t = now.timestamp()
        if pending is None:
            pending = _Batch((), t + rule.timeout.total_seconds(), 0, _stream("batch", function_id, key))
        batch = _Batch(pending.received + (received,), pending.due, pending.size + size, pending.stream)
        if len(batch.received) >= rule.max_size or batch.size >= BATCH_BYTES or batch.due <= t:
            journal.pop(self.batches, slot)
            return self._flush(function_id, flow, key, batch, now, journal, errors, (received,))
        journal.put(self.batches, slot, batch)
        heapq.heappush(self._due, (batch.due, "batch", function_id, key))
        data = {"function_id": function_id, "key": key, "internal_id": received[0], "event": received[1],
                "due_at": batch.due}
        return Hold(batch.stream, NewEntry(BATCH_ADDED, data), "batched")

    def _flush(
        self, function_id: str, flow: FlowControl, key: str, batch: _Batch, now: datetime, journal: Journal,
        errors: list[str], unrecorded: tuple[Received, ...] = (),
    ) -> Start | Skip:
        """Start the batch's run; ``unrecorded`` are events of it that never had a batch.added entry."""
        fresh = {internal_id for internal_id, _ in unrecorded}
        recorded = [internal_id for internal_id, _ in batch.received if internal_id not in fresh]
        fired = NewEntry(BATCH_FLUSHED, {"function_id": function_id, "key": key, "internal_ids": recorded})
        return self.start(function_id, flow, batch.received, now, journal, errors, ((batch.stream, fired),))

    # -- time -----------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """When the earliest pending debounce or batch is due, if any."""
        while self._due and not self._current(self._due[0]):
            heapq.heappop(self._due)
        return _instant(self._due[0][0]) if self._due else None

    def fire_due(
        self, now: datetime, flow_of: Callable[[str], FlowControl | None], journal: Journal
    ) -> list[Start | Skip]:
        """Start every debounce and batch whose time has come; key errors met on the way go with each run."""
        actions: list[Start | Skip] = []
        while self._due and _instant(self._due[0][0]) <= now:  # compared as next_due reports it
            entry = heapq.heappop(self._due)
            if not self._current(entry):
                continue
            _, kind, function_id, key = entry
            flow = flow_of(function_id)
            if flow is None:
                continue  # its function is not defined in this process: it stays pending in the log
            errors: list[str] = []
            if kind == "debounce":
                pending = self.debounces[(function_id, key)]
                journal.pop(self.debounces, (function_id, key))
                fired = NewEntry(DEBOUNCE_FIRED, {"function_id": function_id, "key": key})
                action = self.start(function_id, flow, (pending.received,), now, journal, errors,
                                    ((pending.stream, fired),))
            else:
                batch = self.batches[(function_id, key)]
                journal.pop(self.batches, (function_id, key))
                action = self._flush(function_id, flow, key, batch, now, journal, errors)
            actions.append(attrs.evolve(action, errors=tuple(errors)) if errors else action)
        return actions

    def _current(self, entry: tuple[float, str, str, str]) -> bool:
        due, kind, function_id, key = entry
        pending = (self.debounces if kind == "debounce" else self.batches).get((function_id, key))
        return pending is not None and pending.due == due

    def rearm(self) -> None:
        """Rebuild the due heap from the pending items (after an undo or a load)."""
        self._due = [(item.due, "debounce", fn, key) for (fn, key), item in self.debounces.items()]
        self._due += [(batch.due, "batch", fn, key) for (fn, key), batch in self.batches.items()]
        heapq.heapify(self._due)

    def respace(
        self, function_id: str, rule: ThrottleRule, key: str, queued: list[tuple[str, datetime]], now: datetime
    ) -> dict[str, datetime]:
        """Start times again, from ``now``, for a key's throttled runs still queued at start, in order.

        Their times were given when their events came; those that came due while the engine was
        down would otherwise all start at once. The schedule continues from the first queued run's
        own time (the runs before it started on time), so together with the starts before the
        restart it keeps to the GCRA. Not written to the log: a later restart recomputes it.
        """
        gcra = Gcra.of(rule.limit, rule.period, rule.burst)
        t = now.timestamp()
        tat = max(queued[0][1].timestamp(), self._after_latest_start(function_id, key, gcra))
        starts: dict[str, datetime] = {}
        for run_id, ready_at in queued:
            start = max(gcra.earliest(tat, t), ready_at.timestamp())
            tat = gcra.after(tat, start)
            starts[run_id] = datetime.fromtimestamp(start, tz=timezone.utc)
        slot = (function_id, THROTTLE, key)
        self.buckets[slot] = max(self.buckets.get(slot, tat), tat)
        return starts

    def after_restart(self, function_id: str, rule: ThrottleRule, now: datetime) -> None:
        """At start: no throttle key may start sooner than its latest recorded start allows."""
        gcra = Gcra.of(rule.limit, rule.period, rule.burst)
        for (owner, key), _ in list(self.latest_starts.items()):
            if owner != function_id:
                continue
            floor = self._after_latest_start(function_id, key, gcra)
            slot = (function_id, THROTTLE, key)
            if floor > now.timestamp() and floor > self.buckets.get(slot, 0.0):
                self.buckets[slot] = floor

    def _after_latest_start(self, function_id: str, key: str, gcra: Gcra) -> float:
        latest = self.latest_starts.get((function_id, key))
        return 0.0 if latest is None else latest + gcra.tolerance + gcra.emission

    # -- runs ----------------------------------------------------------------------------------

    def run_ended(self, run_id: str, journal: Journal) -> None:
        """A run ended: its singleton key is free (unless a newer run already holds it)."""
        slot = self._singleton_of.get(run_id)
        if slot is None:
            return
        journal.pop(self._singleton_of, run_id)
        if self.singletons.get(slot) == run_id:
            journal.pop(self.singletons, slot)

    # -- loading -------------------------------------------------------------------------------

    def load(
        self, buckets: Iterable[dict[str, Any]], debounces: Iterable[dict[str, Any]],
        batched: Iterable[dict[str, Any]], singletons: Iterable[tuple[str, str, str]], now: datetime,
    ) -> None:
        """Rebuild from the projections: bucket times still ahead of ``now``, pending debounces and
        batches, and the active runs of singleton functions as (function_id, key, run_id)."""
        t = now.timestamp()
        for row in buckets:
            if row["kind"] == STARTED:
                self.latest_starts[(row["function_id"], row["key"])] = row["tat"]
            elif row["tat"] > t:
                self.buckets[(row["function_id"], row["kind"], row["key"])] = row["tat"]
        for row in debounces:
            received = (row["internal_id"], json.loads(row["event"]))
            stream = _stream("debounce", row["function_id"], row["key"])
            self.debounces[(row["function_id"], row["key"])] = _Debounce(
                received, row["started_at"], row["due_at"], stream
            )
        for row in batched:
            slot = (row["function_id"], row["key"])
            pending = self.batches.get(slot) or _Batch((), row["due_at"], 0, _stream("batch", *slot))
            event = json.loads(row["event"])
            self.batches[slot] = _Batch(pending.received + ((row["internal_id"], event),), pending.due,
                                        pending.size + len(row["event"]), pending.stream)
        for function_id, key, run_id in singletons:
            self.singletons[(function_id, key)] = run_id
            self._singleton_of[run_id] = (function_id, key)
        self.rearm()


def _instant(seconds: float) -> datetime:
    """Epoch seconds as the clock's datetime (microseconds), the one precision due times are compared at."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _with_buckets(action: Start | Skip, buckets: list[list[Any]]) -> Start | Skip:
    return attrs.evolve(action, buckets=buckets + action.buckets) if buckets else action


def _holds(condition: Expression, event: dict[str, Any], errors: list[str]) -> bool:
    try:
        return condition.evaluate({"event": event}) is True
    except ExpressionError as error:
        errors.append(f"batch_events.if_exp: {error}")
        return False


def _scoped(function_id: str, index: int, scope: str, keyed: bool, value: str) -> str:
    """A concurrency key as admission counts it: per function, rule and value, or shared by the
    engine (every function whose "env" key has this value)."""
    if scope == "env":
        return f"env:{value}"
    return f"fn:{function_id}:{index}:{value}" if keyed else f"fn:{function_id}"


def _stream(kind: str, function_id: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return f"{kind}/{function_id}/{digest}"


def _skip_message(reason: str, key: str, limit: int, period_s: float) -> str:
    keyed = f" for key {key!r}" if key else ""
    if reason == "idempotency":
        return f"idempotency: a run already started{keyed} in the last 24 hours"
    return f"rate limit: over {limit} per {period_s:g} s{keyed}"
