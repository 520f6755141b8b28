"""Function definitions, checked when they are defined."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from steplog.engine.errors import DefinitionError
from steplog.engine.retry import RetryPolicy
from steplog.engine.triggers import MAX_TRIGGERS, CompiledTrigger, TriggerEvent, compile_trigger

Handler = Callable[..., Any]
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@attrs.frozen
class FunctionDef:
    """A durable function: its id, handler, triggers and retry policy."""

    id: str
    name: str
    handler: Handler
    triggers: tuple[CompiledTrigger, ...]
    retry: RetryPolicy
    is_async: bool

    def describe(self) -> dict[str, Any]:
        """The definition as JSON, for queries and the CLI."""
        return {
            "id": self.id,
            "name": self.name,
            "triggers": [attrs.asdict(t.trigger) for t in self.triggers],
            "retries": self.retry.retries,
        }


def define_function(
    handler: Handler,
    *,
    fn_id: str,
    trigger: TriggerEvent | Sequence[TriggerEvent],
    name: str | None = None,
    retries: int | RetryPolicy = 4,
) -> FunctionDef:
    """Build a FunctionDef, raising DefinitionError naming the function and the problem."""
    if not isinstance(fn_id, str) or not _ID.match(fn_id):
        raise DefinitionError(
            f"function id {fn_id!r} is invalid: use 1-128 letters, digits, '-', '_' or '.',"
            " starting with a letter or digit"
        )
    if not callable(handler):
        raise DefinitionError(f"function {fn_id!r}: the handler {handler!r} is not callable")
    return FunctionDef(
        id=fn_id,
        name=name or fn_id,
        handler=handler,
        triggers=_compile_triggers(trigger, fn_id),
        retry=_retry_policy(retries, fn_id),
        is_async=inspect.iscoroutinefunction(handler),
    )


def _compile_triggers(trigger: object, fn_id: str) -> tuple[CompiledTrigger, ...]:
    triggers = [trigger] if isinstance(trigger, TriggerEvent) else trigger
    if isinstance(triggers, str):
        raise DefinitionError(
            f"function {fn_id!r}: trigger {triggers!r} is a string; write TriggerEvent(event={triggers!r})"
        )
    if not isinstance(triggers, (list, tuple)) or not triggers:
        raise DefinitionError(f"function {fn_id!r} needs at least one trigger, e.g. TriggerEvent(event='app/x')")
    if len(triggers) > MAX_TRIGGERS:
        raise DefinitionError(f"function {fn_id!r} has {len(triggers)} triggers; the limit is {MAX_TRIGGERS}")
    return tuple(compile_trigger(t, fn_id) for t in triggers)


def _retry_policy(retries: object, fn_id: str) -> RetryPolicy:
    try:
        if isinstance(retries, RetryPolicy):
            return retries
        return RetryPolicy(retries=retries)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise DefinitionError(f"function {fn_id!r}: {error}") from None


class FunctionRegistry:
    """The functions an engine knows, by id."""

    def __init__(self) -> None:
        self._functions: dict[str, FunctionDef] = {}

    def add(self, function: FunctionDef) -> None:
        """Register a function; a second function with the same id is refused."""
        if function.id in self._functions:
            raise DefinitionError(f"function id {function.id!r} is already defined")
        self._functions[function.id] = function

    def get(self, fn_id: str) -> FunctionDef | None:
        return self._functions.get(fn_id)

    def all(self) -> list[FunctionDef]:
        return list(self._functions.values())
