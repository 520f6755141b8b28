"""Stand-ins for step bodies, by step id, without touching the function's code.

A stub is looked up each time a step starts a new attempt (a step already in the log is replayed
and never calls its body, stubbed or not). Stubs live in the test harness, not in the engine, so
they outlive ``crash()``; the attempt number a stub sees comes from the log, so "fail twice, then
succeed" means the same thing before and after a crash.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from steplog.engine.invocation import RUN_KIND, Invocation

__all__ = ["SimulatedCrash", "Stub", "StubError", "StubTable"]

UNSET: Any = object()


class SimulatedCrash(BaseException):
    """Raised from a step body to play the process dying mid-step: the body ran, its result was never
    committed. A BaseException so that the function's own ``except Exception`` cannot catch it; the
    test engine turns it into ``crash()`` and goes on."""


class StubError(Exception):
    """The error a stub raises for each of its planned failures (``fails=N``): retriable."""


@attrs.define(eq=False)
class Stub:
    """What to do instead of (or around) a step's body. See ``TestEngine.stub``."""

    step_id: str
    function_id: str | None = None
    returns: Any = UNSET
    raises: BaseException | type[BaseException] | None = None
    body: Callable[..., Any] | None = None
    fails: int = 0
    crashes: int = 0
    calls: int = 0
    """How many times the step's body was entered with this stub in place, crashes included."""
    attempts: list[int] = attrs.field(factory=list)
    """The attempt number (0 first) of each entry, in order."""
    crashed: int = 0
    """How many of those entries ended in a simulated crash."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.step_id, str) or not self.step_id:
            raise ValueError(f"a stub needs a step id (a non-empty string), got {self.step_id!r}")
        given = [name for name, value in (("returns", self.returns is not UNSET), ("raises", self.raises is not None),
                                          ("body", self.body is not None)) if value]
        if len(given) > 1:
            raise ValueError(f"stub for step {self.step_id!r}: give one of returns=, raises= or body=, not {given}")
        for name in ("fails", "crashes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"stub for step {self.step_id!r}: {name}= must be a count (0 or more), got {value!r}")
        if self.raises is not None and not _is_error(self.raises):
            raise ValueError(f"stub for step {self.step_id!r}: raises= must be an exception, got {self.raises!r}")
        if self.body is not None and not callable(self.body):
            raise ValueError(f"stub for step {self.step_id!r}: body= must be callable, got {self.body!r}")

    def call(self, attempt: int, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One entry into the step's body, at ``attempt`` (from the log)."""
        self.calls += 1
        self.attempts.append(attempt)
        if attempt < self.fails:  # no body runs: nothing to crash after
            raise StubError(f"planned failure {attempt + 1} of {self.fails} of step {self.step_id!r} (a stub)")
        try:
            result = self._result(handler, args, kwargs)
        except Exception as error:
            self._crash_if_planned(error)
            raise
        if inspect.isawaitable(result) and self.crashed < self.crashes:
            return self._then_crash(result)  # an async body: it runs to its end, then the process dies
        self._crash_if_planned(None)
        return result

    async def _then_crash(self, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except Exception as error:
            self._crash_if_planned(error)
            raise
        self._crash_if_planned(None)
        return result

    def _crash_if_planned(self, cause: BaseException | None) -> None:
        """Die here, whatever the body did (returned or raised), if a crash is still planned."""
        if self.crashed < self.crashes:
            self.crashed += 1
            raise SimulatedCrash(f"simulated crash {self.crashed} of {self.crashes} in step {self.step_id!r}") from cause

    def _result(self, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.raises is not None:
            raise _fresh(self.raises)
        if self.body is not None:
            return self.body(*args, **kwargs)
        if self.returns is not UNSET:
            return copy.deepcopy(self.returns)
        return handler(*args, **kwargs)


def _fresh(error: BaseException | type[BaseException]) -> BaseException:
    """A new error to raise each time: a class called, or a copy of the instance (the instance itself
    when it cannot be copied, as with errors whose constructor takes more than their message)."""
    if isinstance(error, type):
        return error()
    try:
        return copy.copy(error)
    except Exception:  # noqa: BLE001 - any failure to copy: raise the original
        return error


def _is_error(value: Any) -> bool:
    return isinstance(value, BaseException) or (isinstance(value, type) and issubclass(value, BaseException))


class StubTable:
    """The stubs in place, by (function id or None for any function, step id); the engine's body hook."""

    def __init__(self) -> None:
        self._stubs: dict[tuple[str | None, str], Stub] = {}

    def add(self, stub: Stub) -> Stub:
        self._stubs[(stub.function_id, stub.step_id)] = stub
        return stub

    def remove(self, step_id: str, function_id: str | None = None) -> None:
        self._stubs.pop((function_id, step_id), None)

    def clear(self) -> None:
        self._stubs.clear()

    def find(self, function_id: str, step_id: str) -> Stub | None:
        return self._stubs.get((function_id, step_id)) or self._stubs.get((None, step_id))

    def __iter__(self) -> Any:
        return iter(list(self._stubs.values()))

    # -- StepHooks ------------------------------------------------------------------------------

    def reached(self, invocation: Invocation, key: str, kind: str, record: Any) -> None:
        """A stub for a step that is not a ``step.run`` would silently do nothing: fail the run instead."""
        if record is not None or kind == RUN_KIND or not self._stubs:
            return
        base, _, occurrence = key.rpartition(":")
        for step_id in (key, base) if occurrence.isdigit() else (key,):
            if self.find(invocation.function.id, step_id) is not None:
                raise invocation.abort(
                    "StubError", f"step {step_id!r} is a {kind} step: stubs stand in for step.run bodies only"
                )

    def body(self, invocation: Invocation, step_id: str, key: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        stub = self.find(invocation.function.id, step_id)
        if stub is None:
            return handler
        attempt = invocation.attempt

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            return stub.call(attempt, handler, args, kwargs)

        return stand_in
