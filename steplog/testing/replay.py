"""Recorded runs: export a run's history from a database, and replay it against today's code.

A replay folds the recorded history (without its ending) into the run's state and calls the
function once, as the engine would for its last invocation, but no step body runs and nothing is
written: every step the code asks for must be in the history. The report says where the code now
diverges: a step the history does not have (a new step, or an id that changed), a recorded step the
code no longer reaches, a step id that is now another kind of step, or a different ending (status,
output or error). Like Temporal's replayer, this is how to check that changed code can still carry
on the runs already in flight, and, on every finished run, that a function is deterministic.

Step order is not compared: steps are memoized by id, so a reordered function replays correctly
(see docs/testing.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from steplog.engine import records as r
from steplog.engine.clock import ManualClock
from steplog.engine.context import make_context
from steplog.engine.coordination import Answer, Done, EndRun, Request
from steplog.engine.functions import FunctionDef, FunctionRegistry
from steplog.engine.invocation import Invocation
from steplog.engine.limits import Limits
from steplog.engine.queries import get_run
from steplog.engine.state import RunState, StepRecord, fold
from steplog.eventstore import Entry, EventStore, NewEntry, parse_time

__all__ = ["FORMAT", "RecordedRun", "ReplayReport", "assert_replays", "export_run", "replay"]

FORMAT = "steplog/recorded-run"
VERSION = 1
ENDINGS = {r.RUN_COMPLETED: "completed", r.RUN_FAILED: "failed", r.RUN_CANCELLED: "cancelled"}
IN_BODY_FAILURES = {"NestedStepError"}
"""Failures the engine raises from inside a step body: the step they interrupt is never recorded."""
STEP_WORDS = {"run": "step.run", "sleep": "step.sleep", "wait": "step.wait_for_event", "invoke": "step.invoke",
              "send": "step.send_event"}


@attrs.frozen
class RecordedRun:
    """A run's stream and the signals sent to it, as recorded: everything a replay needs."""

    run_id: str
    function_id: str
    status: str
    entries: tuple[Entry, ...]
    signals: tuple[Entry, ...] = ()

    @property
    def ending(self) -> Entry | None:
        """The entry that ended the run, if it has ended."""
        return next((entry for entry in reversed(self.entries) if entry.type in ENDINGS), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "run_id": self.run_id, "function_id": self.function_id,
            "status": self.status, "entries": [attrs.asdict(e) for e in self.entries],
            "signals": [attrs.asdict(e) for e in self.signals],
        }

    @classmethod
    def from_json(cls, document: Any) -> RecordedRun:
        """A recorded run from ``to_json``'s document; ValueError naming what is wrong."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a recorded run: expected a JSON object with \"format\": {FORMAT!r}")
        if document.get("version") != VERSION:
            raise ValueError(f"recorded run version {document.get('version')!r} is not supported (expected {VERSION})")
        try:
            recorded = cls(
                run_id=str(document["run_id"]), function_id=str(document["function_id"]),
                status=str(document["status"]),
                entries=tuple(Entry(**entry) for entry in document["entries"]),
                signals=tuple(Entry(**entry) for entry in document.get("signals", ())),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"recorded run is malformed: {error}") from None
        if not recorded.entries or recorded.entries[0].type != r.RUN_SCHEDULED:
            raise ValueError("recorded run is malformed: its entries must begin with run.scheduled")
        if any(not isinstance(entry.data, dict) for entry in (*recorded.entries, *recorded.signals)):
            raise ValueError("recorded run is malformed: an entry's data is not a JSON object")
        return recorded

    def save(self, path: str | Path) -> Path:
        """Write the recorded run as JSON (UTF-8); returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RecordedRun:
        """A recorded run from a file written by ``save`` or ``steplog export``."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        return cls.from_json(document)


def export_run(store: EventStore, run_id: str) -> RecordedRun:
    """The recorded history of a run in ``store``; RunNotFoundError if there is none."""
    row = get_run(store, run_id)
    entries = store.read_stream(r.run_stream(run_id))
    signals = store.read_stream(r.signal_stream(run_id))
    return RecordedRun(run_id, row["function_id"], row["status"], tuple(entries), tuple(signals))


@attrs.frozen
class ReplayReport:
    """What a replay found: ``ok`` when the code takes the recorded steps and ends as the run did."""

    run_id: str
    function_id: str
    divergences: tuple[str, ...]
    reached: tuple[str, ...]
    """The step keys the code asked for, in order."""
    ended: str | None
    """How the replay ended: a status, or None if it stopped where the recorded run is now."""

    @property
    def ok(self) -> bool:
        return not self.divergences

    def __str__(self) -> str:
        head = f"run {self.run_id} of function {self.function_id!r}"
        if self.ok:
            return f"{head}: the code replays the recorded history ({len(self.reached)} steps)"
        lines = [f"{head}: the code diverges from the recorded history:"]
        lines.extend(f"  - {divergence}" for divergence in self.divergences)
        return "\n".join(lines)

    def raise_for_divergence(self) -> None:
        """AssertionError with the report, if the code diverges."""
        if not self.ok:
            raise AssertionError(str(self))


class _Stop(Exception):
    """The replay asked for something a replay cannot do (a new event, wait or invoke)."""


@attrs.define
class _ReplayHooks:
    """StepHooks, commit and coordinator for a replay: note every step reached; stop at the first one
    the history does not have, before its body runs or anything is written."""

    history: RunState
    finished: bool
    divergences: list[str]
    failed: bool = False
    """The recorded run failed: a new step may be where it failed (a bad option checked as the step
    begins), so such a step goes on until it would run a body or write, and the ending is compared."""
    failed_in_a_body: bool = False
    """The recorded run failed from inside a step's body (a nested step): that step is never recorded."""
    keys: list[str] = attrs.field(factory=list)
    """The step keys reached, in order."""
    frontier: str | None = None
    new_step: tuple[str, str] | None = None
    committed: list[NewEntry] = attrs.field(factory=list)

    def reached(self, invocation: Invocation, key: str, kind: str, record: StepRecord | None) -> None:
        self.keys.append(key)
        if record is not None:
            return
        invocation.check_step_limit()  # a step the engine refuses before it starts ends the run as it did then
        pending = _pending_step(self.history)
        if self.failed_in_a_body:
            self.frontier = key  # the run failed inside this step's body, which a replay does not run
        elif self.finished:
            self.new_step = (key, kind)
            if self.failed:
                return  # see ``failed``: the body hook, the commit or the coordinator stops it
            self.diverge_at_new_step()
        elif pending is not None and pending != key:
            self.divergences.append(
                f"the recorded run is at step {pending!r}; the code now reaches a new {STEP_WORDS.get(kind, kind)}"
                f" step {key!r} first"
            )
        else:
            self.frontier = key
        raise invocation.abort("ReplayStopped", f"replay stops at step {key!r}")

    def body(self, invocation: Invocation, step_id: str, key: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        self.diverge_at_new_step()
        raise invocation.abort("ReplayStopped", f"replay stops at step {key!r}")

    def diverge_at_new_step(self) -> None:
        if self.new_step is None:
            return
        key, kind = self.new_step
        self.new_step = None
        unreached = [repr(k) for k in self.history.memo if k not in self.keys]
        also = f"; recorded steps not reached so far: {', '.join(unreached)}" if unreached else ""
        self.divergences.append(
            f"the code now takes a {STEP_WORDS.get(kind, kind)} step {key!r} that the recorded run does not have"
            f" (a new step, or a step id that changed){also}"
        )

    def commit(self, batch: Sequence[NewEntry]) -> None:
        if any(entry.type not in QUIET_ENTRIES for entry in batch):
            self.diverge_at_new_step()
            raise _Stop("the code now records a step that the recorded run does not have")
        self.committed.extend(batch)

    def coordinate(self, request: Request) -> Answer:
        if isinstance(request, EndRun):
            self.commit(request.entries)
            return Done()
        self.diverge_at_new_step()
        raise _Stop(f"the code now asks the engine for {type(request).__name__}, which the recorded run did not")

    def raised_outside_steps(self, recorded: RecordedRun) -> list[str]:
        """The code now raises outside any step (the run would retry), unlike the recorded run."""
        errors = [entry.data["error"] for entry in self.committed if entry.type == r.RUN_ERRORED]
        if not errors:
            return []
        last = _last_run_error(recorded)
        if last is not None and _same_error(last, errors[0]):
            return []
        return [f"the code now raises {_error_text(errors[0])} outside any step (the run would retry it)"]


QUIET_ENTRIES = {r.RUN_STARTED, r.RUN_RESUMED, r.RUN_SUSPENDED, r.RUN_ERRORED, *ENDINGS}
"""What a replay may write: how the invocation began and ended, never a step."""


def _last_run_error(recorded: RecordedRun) -> dict[str, Any] | None:
    """The recorded run's error outside steps, if that is what it waits on (nothing after it but
    suspensions)."""
    for entry in reversed(recorded.entries):
        if entry.type == r.RUN_ERRORED:
            return dict(entry.data["error"])
        if entry.type not in (r.RUN_SUSPENDED, r.RUN_RESUMED, *ENDINGS):
            return None
    return None


def _same_error(one: dict[str, Any], other: dict[str, Any]) -> bool:
    return (one.get("name"), one.get("message")) == (other.get("name"), other.get("message"))


def _pending_step(state: RunState) -> str | None:
    """The step a run in progress is at: an open sleep or wait, or a step with failed attempts."""
    begun = (*state.sleeps, *state.waits, *state.step_failures)
    return next((key for key in begun if key not in state.memo), None)


def _registry(functions: Iterable[Any]) -> FunctionRegistry:
    from steplog.testing.harness import registry_of  # the harness's way of reading clients and lists

    return registry_of(functions)


def replay(
    recorded: RecordedRun, functions: FunctionRegistry | Iterable[Any] | FunctionDef | Any, *,
    limits: Limits | None = None,
) -> ReplayReport:
    """Replay a recorded run against ``functions`` (FunctionDefs, a Steplog client, a registry) under
    ``limits`` (default: the client's, if a client is given, else the defaults)."""
    limits = limits or _limits_of(functions)
    registry = functions if isinstance(functions, FunctionRegistry) else _registry([functions])
    function = registry.get(recorded.function_id)
    if function is None:
        known = ", ".join(repr(f.id) for f in registry.all()) or "none"
        divergence = f"function {recorded.function_id!r} is not defined (functions given: {known})"
        return ReplayReport(recorded.run_id, recorded.function_id, (divergence,), (), None)
    ending = recorded.ending
    cancelled = ending is not None and ending.type == r.RUN_CANCELLED
    entries = [entry for entry in recorded.entries if entry.type not in ENDINGS]
    # A cancel (requested, or a timeout) came from outside the code: replay the code as if it had not,
    # up to where the run was stopped.
    signals = [signal for signal in recorded.signals if signal.type != r.CANCEL_REQUESTED]
    history = fold(recorded.run_id, recorded.entries, signals)
    state = fold(recorded.run_id, entries, signals)
    divergences: list[str] = []
    finished = ending is not None and not cancelled
    failed = ending is not None and ending.type == r.RUN_FAILED
    recorded_error = (ending.data.get("error") or {}) if ending is not None else {}
    failed_in_a_body = failed and recorded_error.get("name") in IN_BODY_FAILURES
    hooks = _ReplayHooks(history, finished, divergences, failed, failed_in_a_body)
    invocation = Invocation(
        attrs.evolve(function, timeouts=None), state, commit=hooks.commit,
        clock=ManualClock(_replay_time(recorded, state)), limits=limits, coordinate=hooks.coordinate,
        registry=registry, hooks=hooks,
    )
    invocation.quiet = True
    try:
        outcome = invocation.run(make_context(invocation))
    except _Stop as stop:
        divergences.append(str(stop))
        return _report(recorded, divergences, hooks, None)
    if hooks.frontier is not None or (divergences and outcome.status == "failed"):
        return _report(recorded, divergences, hooks, None)
    if hooks.new_step is not None:  # a new step refused as it began: where the recorded run failed, or not
        assert ending is not None
        if _different_ending(ending, outcome.status, outcome.output, outcome.error):
            hooks.diverge_at_new_step()
        else:
            hooks.frontier, hooks.new_step = hooks.new_step[0], None
            return _report(recorded, divergences, hooks, outcome.status)
    changed = _changed_kind(outcome.error, ending)
    if changed is not None:
        return _report(recorded, [changed], hooks, outcome.status)
    raised = hooks.raised_outside_steps(recorded)
    if raised:
        return _report(recorded, [*divergences, *raised], hooks, outcome.status)
    divergences.extend(_vanished(history, hooks.keys))
    if finished:
        assert ending is not None
        divergences.extend(_different_ending(ending, outcome.status, outcome.output, outcome.error))
    elif outcome.status in ("completed", "failed"):
        divergences.extend(_ends_before_its_step(history, outcome.status, outcome.error))
    return _report(recorded, divergences, hooks, outcome.status)


def _report(recorded: RecordedRun, divergences: list[str], hooks: _ReplayHooks, ended: str | None) -> ReplayReport:
    return ReplayReport(recorded.run_id, recorded.function_id, tuple(divergences), tuple(hooks.keys), ended)


def _changed_kind(error: Any, ending: Entry | None) -> str | None:
    """The one thing to say when the code now asks for a recorded step id as another kind of step
    (and the recorded run did not fail that way itself)."""
    if not isinstance(error, dict) or error.get("name") != "NondeterminismError":
        return None
    recorded_error = (ending.data.get("error") or {}) if ending is not None else {}
    if recorded_error.get("name") == "NondeterminismError":
        return None
    found = _KIND_CHANGE.search(str(error.get("message")))
    if found is None:
        return f"a step changed kind (NondeterminismError): {error.get('message')}"
    key, was, now = found.groups()
    return (f"step {key!r} was a {STEP_WORDS.get(was, was)} step in the recorded run; the code now asks for a"
            f" {STEP_WORDS.get(now, now)} step there (NondeterminismError)")


_KIND_CHANGE = re.compile(r"step '(.*)': the log records a '(\w+)' step, the code now asks for a '(\w+)' step")


def _ends_before_its_step(history: RunState, status: str, error: Any) -> list[str]:
    """A run in progress (or stopped by a cancel) whose code now ends before the step it is at."""
    pending = _pending_step(history)
    where = f"is at step {pending!r}" if pending is not None else "had not ended"
    why = f" ({_error_text(error)})" if error else ""
    return [f"the recorded run {where}; the code now ends {status}{why} before reaching it"]


def _limits_of(functions: Any) -> Limits:
    limits = getattr(functions, "limits", None)
    return limits if isinstance(limits, Limits) else Limits()


def _replay_time(recorded: RecordedRun, state: RunState) -> datetime:
    """When the recorded run last ran: its ending's time, or its last entry's; for a run waiting to run
    its code again after a failure outside steps, that retry's time (the engine never runs it earlier)."""
    ending = recorded.ending
    if ending is not None and isinstance(ending.data.get("at"), str):
        return parse_time(ending.data["at"])
    last = recorded.entries[-1] if recorded.entries else None
    when = parse_time(last.recorded_at) if last is not None else datetime.fromtimestamp(0, UTC)
    return max(when, parse_time(state.run_retry_at)) if state.run_retry_at is not None else when


def _vanished(history: RunState, reached: Sequence[str]) -> list[str]:
    seen = set(reached)
    return [
        f"the recorded run has a {STEP_WORDS.get(record.kind, record.kind)} step {key!r} that the code no longer"
        " reaches" for key, record in history.memo.items() if key not in seen
    ]


def _different_ending(ending: Entry, status: str, output: Any, error: Any) -> list[str]:
    recorded_status = ENDINGS[ending.type]
    if recorded_status == "cancelled":
        return []  # a cancel comes from outside the code: where the code was is all that can be compared
    if status != recorded_status:
        now = f"{status}" + (f" ({_error_text(error)})" if error else "")
        was = recorded_status + (f" ({_error_text(ending.data.get('error'))})" if ending.data.get("error") else "")
        return [f"the run ended {was}; the code now ends {now}"]
    if status == "completed" and _canonical(output) != _canonical(ending.data.get("output")):
        return [f"the run returned {_short(ending.data.get('output'))}; the code now returns {_short(output)}"]
    if status == "failed":
        old, new = ending.data.get("error") or {}, error or {}
        if (old.get("name"), old.get("message")) != (new.get("name"), new.get("message")):
            return [f"the run failed with {_error_text(old)}; the code now fails with {_error_text(new)}"]
    return []


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _short(value: Any, width: int = 200) -> str:
    text = _canonical(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    return f"{error.get('name')}: {error.get('message')}"


def assert_replays(recorded: RecordedRun, functions: Any, *, limits: Limits | None = None) -> ReplayReport:
    """Replay and raise AssertionError with the report if the code diverges; else return the report."""
    report = replay(recorded, functions, limits=limits)
    report.raise_for_divergence()
    return report
