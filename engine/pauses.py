"""Pauses: runs listening for an event (``wait_for_event``, ``invoke``, cancel-on rules), indexed.

A pause holds a CEL expression over ``event`` (the run's trigger) and ``async`` (the candidate).
When it is registered, the parts of the trigger the expression reads are kept with it, and each
``async.x == event.y`` or ``async.x == literal`` conjunct becomes an index key: an incoming event
is looked up by its values at those paths and compared only with the pauses filed under them.
Pauses with no such conjunct are compared one by one, for their event name only. A pause whose
condition is nothing but such conjuncts (every ``match=``) is decided by the index lookup alone,
without running CEL.

The index belongs to the coordinator (one thread at a time); it is rebuilt from the ``waits``
projection at start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import attrs
from steplog.engine.expressions import (
    Expression,
    ExpressionError,
    compile_expression,
    equality_paths,
    only_equalities,
)
from steplog.eventstore import parse_time

WAIT_KIND = "wait"
INVOKE_KIND = "invoke"
CANCEL_KIND = "cancel"
PAUSE_NAMES = ("event", "async")

Path = tuple[str, ...]
Shape = tuple[tuple[Path, ...], tuple[Any, ...]]
"""An index slot: the candidate's paths that must hold known values, and those values."""
_MISSING = object()


@attrs.frozen
class Pause:
    """A run listening for an event: which run and step, for which event, under which condition, until when."""

    run_id: str
    function_id: str
    step: str
    """The step key of a wait or invoke; ``cancel:<n>`` for the n-th cancel rule."""
    kind: str
    event: str
    expression: str | None
    trigger: Any
    """The parts of the run's trigger event (``event`` in the expression) that the expression reads."""
    expires_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.step)

    def compiled(self) -> Expression | None:
        if self.expression is None:
            return None
        return compile_expression(self.expression, names=PAUSE_NAMES, result="bool")

    def expired(self, now: datetime) -> bool:
        return parse_time(self.expires_at) <= now

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether an event satisfies the pause's condition (an expression error counts as no)."""
        expression = self.compiled()
        if expression is None:
            return True
        try:
            return expression.evaluate({"event": self.trigger, "async": event}) is True
        except ExpressionError:
            return False

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pause:
        return cls(
            run_id=data["run_id"], function_id=data["function_id"], step=data["step"], kind=data["kind"],
            event=data["event"], expression=data.get("expression"), trigger=data.get("trigger"),
            expires_at=data["expires_at"],
        )


def make_pause(
    *, run_id: str, function_id: str, step: str, kind: str, event: str,
    expression: str | None, trigger_event: dict[str, Any], expires_at: str,
) -> Pause:
    """A pause with the trigger reduced to what its expression reads. ExpressionError if the expression is bad."""
    trigger = None
    if expression is not None:
        trigger = compile_expression(expression, names=PAUSE_NAMES, result="bool").referenced("event", trigger_event)
    return Pause(run_id, function_id, step, kind, event, expression, trigger, expires_at)


def match_expression(match: str) -> str:
    """Inngest's ``match="data.user_id"``: the trigger's and the candidate's values at that path are equal."""
    if not isinstance(match, str) or not match.strip():
        raise ValueError(f"match must be a field path like 'data.user_id', got {match!r}")
    path = match.strip()
    for prefix in ("event.", "async."):
        path = path.removeprefix(prefix)
    if not all(part.isidentifier() for part in path.split(".")):
        raise ValueError(f"match must be a field path like 'data.user_id', got {match!r}")
    return f"event.{path} == async.{path}"


class PauseIndex:
    """Pauses by event name, then by the values the event must have at the indexed paths."""

    def __init__(self) -> None:
        self._pauses: dict[tuple[str, str], Pause] = {}
        self._by_run: dict[str, set[str]] = {}
        self._names: dict[str, _NameIndex] = {}
        self._slots: dict[tuple[str, str], Shape | None] = {}
        self._exact: set[tuple[str, str]] = set()
        """Pauses that the index lookup decides alone."""

    def __len__(self) -> int:
        return len(self._pauses)

    def __iter__(self) -> Iterator[Pause]:
        return iter(list(self._pauses.values()))

    def listens_for(self, name: str) -> bool:
        """Whether any pause waits for events with this name."""
        index = self._names.get(name)
        return index is not None and bool(index)

    def get(self, run_id: str, step: str) -> Pause | None:
        return self._pauses.get((run_id, step))

    def add(self, pause: Pause) -> None:
        self.remove(pause.run_id, pause.step)
        shape, exact = _shape(pause)
        if exact:
            self._exact.add(pause.key)
        self._pauses[pause.key] = pause
        self._by_run.setdefault(pause.run_id, set()).add(pause.step)
        self._slots[pause.key] = shape
        self._names.setdefault(pause.event, _NameIndex()).add(pause.key, shape)

    def add_all(self, pauses: Iterable[Pause]) -> None:
        for pause in pauses:
            self.add(pause)

    def remove(self, run_id: str, step: str) -> Pause | None:
        pause = self._pauses.pop((run_id, step), None)
        if pause is None:
            return None
        steps = self._by_run.get(run_id)
        if steps is not None:
            steps.discard(step)
            if not steps:
                del self._by_run[run_id]
        shape = self._slots.pop(pause.key)
        self._exact.discard(pause.key)
        index = self._names[pause.event]
        index.remove(pause.key, shape)
        if not index:
            del self._names[pause.event]
        return pause

    def remove_run(self, run_id: str) -> list[Pause]:
        """Remove every pause of a run (it ended); returns them."""
        return [p for step in list(self._by_run.get(run_id, ())) if (p := self.remove(run_id, step)) is not None]

    def of_run(self, run_id: str) -> list[Pause]:
        return [self._pauses[(run_id, step)] for step in sorted(self._by_run.get(run_id, ()))]

    def match(self, event: dict[str, Any], now: datetime) -> list[Pause]:
        """The live pauses an event satisfies, in registration order within each index slot."""
        index = self._names.get(event.get("name", ""))
        if index is None:
            return []
        found = []
        for key in index.candidates(event):
            pause = self._pauses[key]
            if not pause.expired(now) and (key in self._exact or pause.matches(event)):
                found.append(pause)
        return found


class _NameIndex:
    """The pauses for one event name: by shape (the indexed paths) and values, plus those to scan."""

    def __init__(self) -> None:
        self.shapes: dict[tuple[Path, ...], dict[tuple[Any, ...], dict[tuple[str, str], None]]] = {}
        self.scan: dict[tuple[str, str], None] = {}

    def __bool__(self) -> bool:
        return bool(self.scan) or bool(self.shapes)

    def add(self, key: tuple[str, str], shape: Shape | None) -> None:
        if shape is None:
            self.scan[key] = None
            return
        paths, values = shape
        self.shapes.setdefault(paths, {}).setdefault(values, {})[key] = None

    def remove(self, key: tuple[str, str], shape: Shape | None) -> None:
        if shape is None:
            self.scan.pop(key, None)
            return
        paths, values = shape
        buckets = self.shapes.get(paths, {})
        bucket = buckets.get(values, {})
        bucket.pop(key, None)
        if not bucket:
            buckets.pop(values, None)
        if not buckets:
            self.shapes.pop(paths, None)

    def candidates(self, event: dict[str, Any]) -> list[tuple[str, str]]:
        found = list(self.scan)
        for paths, buckets in self.shapes.items():
            values = _values_at(event, paths)
            if values is not None:
                found.extend(buckets.get(values, ()))
        return found


def _shape(pause: Pause) -> tuple[Shape | None, bool]:
    """The index slot of a pause (the candidate's paths that must hold known values, and those
    values), and whether the slot alone decides a match."""
    expression = pause.compiled()
    if expression is None:
        return None, False
    required: dict[Path, Any] = {}
    conditions = equality_paths(expression)
    indexed = 0
    for condition in conditions:
        found = _required_value(condition.left, condition.right, condition.value, pause.trigger)
        if found is not None and required.setdefault(found[0], found[1]) == found[1]:
            indexed += 1
    if not required:
        return None, False
    paths = tuple(sorted(required))
    exact = indexed == len(conditions) and only_equalities(expression)
    return (paths, tuple(required[path] for path in paths)), exact


def _required_value(left: Path, right: Path | None, literal: Any, trigger: Any) -> tuple[Path, Any] | None:
    if right is None:
        return (left[1:], _hashable(literal)) if left[0] == "async" else None
    if left[0] == right[0]:
        return None
    candidate, known = (left, right) if left[0] == "async" else (right, left)
    value = _lookup(trigger, known[1:])
    return None if value is _MISSING else (candidate[1:], _hashable(value))


def _values_at(event: dict[str, Any], paths: tuple[Path, ...]) -> tuple[Any, ...] | None:
    values = []
    for path in paths:
        value = _lookup(event, path)
        if value is _MISSING:
            return None
        values.append(_hashable(value))
    return tuple(values)


def _lookup(value: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _hashable(value: Any) -> Any:
    """A key equal for values the CEL evaluator compares equal: true and 1 differ, and so do 1 and
    1.0 (it refuses to compare an int with a double, which counts as no match)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("d", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return ("j", json.dumps(value, sort_keys=True, separators=(",", ":")))
