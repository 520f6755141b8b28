"""Stuck runs: runs that could make progress and have not, for a whole window.

An operator's question ("is anything wedged?") answered from the projections and the log alone,
read-only, so it works on a live database from another process (``steplog runs --stuck``) as well
as in tests. A run counts as *eligible* to progress when

    queued   its ``queue`` row is ready (``ready_at`` has passed): it should have started;
    timer    its ``timers`` row is due (a retry, a sleep's end, a wait's timeout): it should have resumed;
    woken    its ``wakeups`` row (a wait resolved, a cancel request) is later in the log than anything the run
             recorded: it should have reacted;
    running  it is ``running``: its invocation should keep recording steps.

It is *stuck* when it became eligible at least ``window`` before ``now`` and its own stream has
recorded nothing since ``now - window``. Each candidate's row is read before its stream, so a run
that moves while the detector reads shows a fresh entry and is not reported: the detector may
miss a run that got stuck a moment ago, never report one that is moving.

A run waiting for a concurrency slot counts as queued and ready: if it waited a whole window,
either its limit is too tight for the load or the runs holding the slots are stuck themselves.
A step body that legitimately runs longer than the window is reported as ``running``: choose the
window above the longest step.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.queries import run_history
from steplog.eventstore import CorruptEntryError, Entry, EventStore, format_time, parse_time

DEFAULT_WINDOW = timedelta(seconds=60)
ENDED_STATUSES = frozenset({"completed", "failed", "cancelled", "skipped"})


@attrs.frozen
class StuckRun:
    """A run eligible to progress since ``since`` that has recorded nothing for a whole window."""

    run_id: str
    function_id: str
    status: str
    reason: str
    """``queued``, ``timer``, ``woken`` or ``running`` (see the module docstring)."""
    since: datetime
    """When the run became eligible (for ``running``: its last entry)."""
    last_entry_at: datetime | None
    """When the run's own stream last recorded anything."""
    detail: str
    """What it is eligible for, e.g. ``timer 'sleep nap' due``."""
    history: tuple[Entry, ...] = ()
    """The run's stream and its signal stream, in log order (empty unless asked for)."""

    def describe(self) -> str:
        """Several lines for a person: why the run counts as stuck, then its history."""
        last = format_time(self.last_entry_at) if self.last_entry_at else "never"
        headline = (
            f"run {self.run_id} ({self.function_id}, {self.status}): {self.detail} since {format_time(self.since)};"
            f" last entry {last}"
        )
        lines = [headline]
        lines.extend(f"  {e.recorded_at} {e.stream} v{e.version} {e.type} {_short(e.data)}" for e in self.history)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as log text, history entries as dicts."""
        return {
            "run_id": self.run_id, "function_id": self.function_id, "status": self.status, "reason": self.reason,
            "since": format_time(self.since),
            "last_entry_at": format_time(self.last_entry_at) if self.last_entry_at else None,
            "detail": self.detail, "history": [attrs.asdict(entry) for entry in self.history],
        }


@attrs.frozen
class _Candidate:
    run_id: str
    reason: str
    since: datetime
    detail: str


def stuck_runs(
    store: EventStore, *, now: datetime, window: timedelta = DEFAULT_WINDOW, history: bool = True
) -> list[StuckRun]:
    """Runs eligible to progress for at least ``window`` before ``now`` that have not, oldest first.

    Reads only (projections, then streams); ``history`` adds each run's entries for a report.
    """
    if window <= timedelta(0):
        raise ValueError(f"window must be positive, got {window}")
    try:
        cutoff = now - window
    except OverflowError:
        return []  # a window longer than the calendar: nothing has been eligible for that long
    found: dict[str, StuckRun] = {}
    for candidate in sorted(_candidates(store, cutoff), key=lambda c: c.since):
        if candidate.run_id not in found:
            stuck = _confirm(store, candidate, cutoff, history)
            if stuck is not None:
                found[candidate.run_id] = stuck
    return sorted(found.values(), key=lambda stuck: (stuck.since, stuck.run_id))


def _candidates(store: EventStore, cutoff: datetime) -> Iterator[_Candidate]:
    up_to = (None, format_time(cutoff))
    for row in store.query("queue", ranges={"ready_at": up_to}):
        yield _Candidate(row["run_id"], "queued", parse_time(row["ready_at"]), "queued and ready")
    for row in store.query("timers", ranges={"due_at": up_to}):
        yield _Candidate(row["run_id"], "timer", parse_time(row["due_at"]), f"timer {row['reason']!r} due")
    for row in store.query("wakeups", ranges={"at": up_to}):
        yield _Candidate(row["run_id"], "woken", parse_time(row["at"]), f"woken ({row['reason']})")
    # updated_at is the time of one of the run's entries, so a run updated after the cutoff is moving
    for row in store.query("runs", where={"status": "running"}, ranges={"updated_at": up_to}):
        yield _Candidate(row["run_id"], "running", parse_time(row["updated_at"]), "running with no new entry")


def _confirm(store: EventStore, candidate: _Candidate, cutoff: datetime, history: bool) -> StuckRun | None:
    """The candidate as a stuck run, if its stream (read after its row) shows no progress."""
    rows = store.query("runs", where={"run_id": candidate.run_id})
    if not rows or rows[0]["status"] in ENDED_STATUSES:
        return None  # a row left behind by a run that ended
    run = rows[0]
    try:
        # the signal before the run's own entry: a run that reacts meanwhile shows a later position
        signal = _last_entry(store, r.signal_stream(candidate.run_id)) if candidate.reason == "woken" else None
        last_entry = _last_entry(store, r.run_stream(candidate.run_id))
    except CorruptEntryError as error:
        return _damaged(candidate, run, error)
    last = parse_time(last_entry.recorded_at) if last_entry is not None else None
    since = candidate.since
    if candidate.reason == "woken" and last_entry is not None and (
        last_entry.position > signal.position if signal is not None else last is not None and last >= since
    ):
        return None  # it reacted to the signal (by the log's order: one commit's entries share a time)
    if candidate.reason == "running":
        since = last or since
    if last is not None and last > cutoff:
        return None
    try:
        entries = tuple(run_history(store, candidate.run_id).entries) if history else ()
    except CorruptEntryError as error:
        return _damaged(candidate, run, error)
    return StuckRun(
        candidate.run_id, run["function_id"], run["status"], candidate.reason, since, last, candidate.detail, entries
    )


def _damaged(candidate: _Candidate, run: dict[str, Any], error: CorruptEntryError) -> StuckRun:
    """A candidate whose log cannot be read: the engine refuses it, so it will never move again."""
    detail = f"{candidate.detail}; its log is damaged, so the engine refuses the run: {error}"
    return StuckRun(candidate.run_id, run["function_id"], run["status"], candidate.reason, candidate.since, None, detail)


def _last_entry(store: EventStore, stream: str) -> Entry | None:
    version = store.stream_version(stream)
    if version == 0:
        return None
    tail = store.read_stream(stream, after=version - 1)
    return tail[-1] if tail else None


def _short(data: dict[str, Any], width: int = 160) -> str:
    text = ", ".join(f"{key}={value!r}" for key, value in data.items() if key not in {"event", "events", "pause"})
    return text if len(text) <= width else text[: width - 3] + "..."
