"""A run's state, folded from its log entries; the live executor keeps it current the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from steplog.engine import records as r
from steplog.engine.records import ErrorInfo
from steplog.eventstore import Entry

FINAL_STATUSES = ("completed", "failed", "cancelled", "skipped")


@attrs.frozen
class StepRecord:
    """A finished step as memoized: its kind and its output or its final error."""

    kind: str
    output: Any = None
    error: ErrorInfo | None = None


@attrs.define
class RunState:
    """Everything an invocation needs to continue a run."""

    run_id: str
    function_id: str = ""
    events: list[dict[str, Any]] = attrs.Factory(list)
    status: str = "queued"
    started: bool = False
    memo: dict[str, StepRecord] = attrs.Factory(dict)
    step_failures: dict[str, int] = attrs.Factory(dict)
    step_retry_at: dict[str, str] = attrs.Factory(dict)
    """When each step that errored may be attempted again: step key -> its last ``retry_at``."""
    run_failures: int = 0
    run_retry_at: str | None = None
    """When the code outside steps may run again after its last failure (its ``retry_at``)."""
    version: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    wake_at: str | None = None
    ready_at: str | None = None
    """When the run may start (an event's ``ts`` in the future delays it)."""
    sleeps: dict[str, str] = attrs.Factory(dict)
    """Sleeps begun and not yet completed: step key -> wake time."""
    sleeps_started: dict[str, str] = attrs.Factory(dict)
    """When each of those sleeps began."""
    waits: dict[str, dict[str, Any]] = attrs.Factory(dict)
    """Waits (for an event or an invoked run) registered and not yet completed: step key -> pause."""
    wait_results: dict[str, Any] = attrs.Factory(dict)
    """Signals: how registered waits ended: step key -> the matching event, or None if it expired."""
    cancel_requested: str | None = None
    """Signal: why the run was asked to cancel, if it was."""
    listeners: list[str] = attrs.Factory(list)
    """The run's cancel-rule pauses (their step names), removed when it ends."""
    scheduled_at: str | None = None
    started_at: str | None = None
    flow: dict[str, Any] = attrs.Factory(dict)
    """What flow control attached when it was scheduled: concurrency keys, priority, singleton key."""

    @property
    def open_pauses(self) -> list[str]:
        """The steps of the run's pauses still listening (cancel rules, unfinished waits): its end releases them."""
        return self.listeners + list(self.waits)

    @property
    def pending_deadlines(self) -> list[str]:
        """The times at which pending sleeps end and pending waits expire."""
        return self.pending_deadlines_except(frozenset())

    def pending_deadlines_except(self, done: frozenset[str] | set[str]) -> list[str]:
        """Pending deadlines, leaving out the steps in ``done``."""
        deadlines = [wake for key, wake in self.sleeps.items() if key not in done]
        deadlines.extend(
            w["expires_at"] for key, w in self.waits.items() if key not in self.wait_results and key not in done
        )
        return deadlines

    def apply_signal(self, entry_type: str, data: dict[str, Any]) -> None:
        """Fold one entry of the run's signal stream (it does not count towards the run's version)."""
        if entry_type == r.WAIT_RESOLVED:
            self.wait_results[data["step"]] = data["event"]
        elif entry_type == r.WAIT_EXPIRED:
            self.wait_results[data["step"]] = None
        elif entry_type == r.CANCEL_REQUESTED and self.cancel_requested is None:
            self.cancel_requested = data["reason"]

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def apply(self, entry_type: str, data: dict[str, Any]) -> None:
        """Fold one entry into the state."""
        self.version += 1
        handler = _HANDLERS.get(entry_type)
        if handler is not None:
            handler(self, data)


def fold(run_id: str, entries: Iterable[Entry], signals: Iterable[Entry] = ()) -> RunState:
    """The state of a run after all its entries and the signals sent to it."""
    state = RunState(run_id)
    for entry in entries:
        state.apply(entry.type, entry.data)
    for signal in signals:
        state.apply_signal(signal.type, signal.data)
    return state


def _scheduled(state: RunState, data: dict[str, Any]) -> None:
    state.function_id = data["function_id"]
    state.events = data["events"]
    state.ready_at = data.get("ready_at")
    state.scheduled_at = data.get("scheduled_at")
    state.listeners = [pause["step"] for pause in data.get("cancel", ())]
    state.flow = data.get("flow", {})


def _skipped(state: RunState, data: dict[str, Any]) -> None:
    state.function_id = data["function_id"]
    state.events = data["events"]
    state.status = "skipped"
    state.error = {"name": "Skipped", "message": data["message"], "stack": None}


def _started(state: RunState, data: dict[str, Any]) -> None:
    state.started = True
    state.status = "running"
    state.started_at = data["at"]


def _resumed(state: RunState, data: dict[str, Any]) -> None:
    state.status = "running"


def _step_completed(state: RunState, data: dict[str, Any]) -> None:
    state.memo[data["step"]] = StepRecord(data["kind"], output=data.get("output"))
    state.sleeps.pop(data["step"], None)
    state.sleeps_started.pop(data["step"], None)
    state.waits.pop(data["step"], None)
    state.status, state.wake_at = "running", None


def _step_sleeping(state: RunState, data: dict[str, Any]) -> None:
    state.sleeps[data["step"]] = data["wake_at"]
    state.sleeps_started[data["step"]] = data["started_at"]
    state.status, state.wake_at = "waiting", data["wake_at"]


def _step_waiting(state: RunState, data: dict[str, Any]) -> None:
    state.waits[data["step"]] = {**data["pause"], "started_at": data["started_at"]}
    state.status, state.wake_at = "waiting", data.get("due_at")


def _suspended(state: RunState, data: dict[str, Any]) -> None:
    state.status, state.wake_at = "waiting", data.get("due_at")


def _step_errored(state: RunState, data: dict[str, Any]) -> None:
    state.step_failures[data["step"]] = state.step_failures.get(data["step"], 0) + 1
    state.step_retry_at[data["step"]] = data["retry_at"]
    state.status, state.wake_at = "waiting", data["retry_at"]


def _step_failed(state: RunState, data: dict[str, Any]) -> None:
    state.memo[data["step"]] = StepRecord(data["kind"], error=data["error"])
    state.waits.pop(data["step"], None)
    state.status, state.wake_at = "running", None


def _run_errored(state: RunState, data: dict[str, Any]) -> None:
    state.run_failures += 1
    state.run_retry_at = data["retry_at"]
    state.status, state.wake_at = "waiting", data["retry_at"]


def _completed(state: RunState, data: dict[str, Any]) -> None:
    state.status, state.output, state.wake_at = "completed", data.get("output"), None


def _failed(state: RunState, data: dict[str, Any]) -> None:
    state.status, state.error, state.wake_at = "failed", data["error"], None


def _cancelled(state: RunState, data: dict[str, Any]) -> None:
    state.status, state.wake_at = "cancelled", None
    state.error = {"name": "RunCancelled", "message": f"run cancelled: {data['reason']}", "stack": None}


_HANDLERS = {
    r.RUN_SCHEDULED: _scheduled,
    r.RUN_SKIPPED: _skipped,
    r.RUN_STARTED: _started,
    r.RUN_RESUMED: _resumed,
    r.STEP_COMPLETED: _step_completed,
    r.STEP_ERRORED: _step_errored,
    r.STEP_FAILED: _step_failed,
    r.STEP_SLEEPING: _step_sleeping,
    r.STEP_WAITING: _step_waiting,
    r.RUN_SUSPENDED: _suspended,
    r.RUN_CANCELLED: _cancelled,
    r.RUN_ERRORED: _run_errored,
    r.RUN_COMPLETED: _completed,
    r.RUN_FAILED: _failed,
}
