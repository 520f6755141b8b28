"""Function definitions, checked when they are defined."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from steplog.engine.errors import DefinitionError
from steplog.engine.flow.options import NO_FLOW_CONTROL, FlowControl, FlowOptions, compile_flow
from steplog.engine.options import CancelRule, RunTimeouts, compile_cancel_rules, compile_timeouts
from steplog.engine.retry import RetryPolicy
from steplog.engine.triggers import (
    MAX_TRIGGERS,
    CompiledCron,
    CompiledTrigger,
    TriggerCron,
    TriggerEvent,
    compile_cron,
    compile_trigger,
)

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
    cancel: tuple[CancelRule, ...] = ()
    timeouts: RunTimeouts | None = None
    on_failure: Handler | None = None
    flow: FlowControl = NO_FLOW_CONTROL
    crons: tuple[CompiledCron, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The definition as JSON, for queries and the CLI."""
        described: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "triggers": [attrs.asdict(t.trigger) for t in self.triggers] + [cron.describe() for cron in self.crons],
            "retries": self.retry.retries,
        }
        if self.cancel:
            described["cancel"] = [
                {"event": rule.event, "if": rule.expression, "timeout_s": rule.timeout.total_seconds()}
                for rule in self.cancel
            ]
        if self.timeouts is not None:
            described["timeouts"] = {
                name: None if value is None else value.total_seconds()
                for name, value in (("start", self.timeouts.start), ("finish", self.timeouts.finish))
            }
        described.update(self.flow.describe())
        return described

    def failure_function(self) -> FunctionDef | None:
        """The function Inngest derives from ``on_failure``: ``<id>-failure``, triggered by
        ``inngest/function.failed`` for this function, with no retries."""
        if self.on_failure is None:
            return None
        trigger = TriggerEvent("inngest/function.failed", expression=f"event.data.function_id == '{self.id}'")
        return define_function(
            self.on_failure, fn_id=f"{self.id}-failure", trigger=trigger, name=f"{self.name} (failure)", retries=0
        )


def define_function(
    handler: Handler,
    *,
    fn_id: str,
    trigger: TriggerEvent | TriggerCron | Sequence[TriggerEvent | TriggerCron],
    name: str | None = None,
    retries: int | RetryPolicy = 4,
    cancel: Sequence[Any] | None = None,
    timeouts: Any = None,
    on_failure: Handler | None = None,
    flow: FlowOptions | None = None,
) -> FunctionDef:
    """Build a FunctionDef, raising DefinitionError naming the function and the problem."""
    if not isinstance(fn_id, str) or not _ID.match(fn_id):
        raise DefinitionError(
            f"function id {fn_id!r} is invalid: use 1-128 letters, digits, '-', '_' or '.',"
            " starting with a letter or digit"
        )
    if not callable(handler):
        raise DefinitionError(f"function {fn_id!r}: the handler {handler!r} is not callable")
    if on_failure is not None and not callable(on_failure):
        raise DefinitionError(f"function {fn_id!r}: on_failure {on_failure!r} is not callable")
    cancel_rules = compile_cancel_rules(cancel, fn_id)
    triggers = _trigger_list(trigger, fn_id)
    return FunctionDef(
        id=fn_id,
        name=name or fn_id,
        handler=handler,
        triggers=tuple(compile_trigger(t, fn_id) for t in triggers if not isinstance(t, TriggerCron)),
        crons=_compile_crons([t for t in triggers if isinstance(t, TriggerCron)], fn_id),
        retry=_retry_policy(retries, fn_id),
        is_async=inspect.iscoroutinefunction(handler),
        cancel=cancel_rules,
        timeouts=compile_timeouts(timeouts, fn_id),
        on_failure=on_failure,
        flow=compile_flow(flow or FlowOptions(), fn_id, has_cancel=bool(cancel_rules)),
    )


def _trigger_list(trigger: object, fn_id: str) -> list[object]:
    triggers = [trigger] if isinstance(trigger, (TriggerEvent, TriggerCron)) else trigger
    if isinstance(triggers, str):
        raise DefinitionError(
            f"function {fn_id!r}: trigger {triggers!r} is a string; write TriggerEvent(event={triggers!r})"
        )
    if not isinstance(triggers, (list, tuple)) or not triggers:
        raise DefinitionError(f"function {fn_id!r} needs at least one trigger, e.g. TriggerEvent(event='app/x')")
    if len(triggers) > MAX_TRIGGERS:
        raise DefinitionError(f"function {fn_id!r} has {len(triggers)} triggers; the limit is {MAX_TRIGGERS}")
    return list(triggers)


def _compile_crons(triggers: list[TriggerCron], fn_id: str) -> tuple[CompiledCron, ...]:
    compiled = tuple(compile_cron(t, fn_id) for t in triggers)
    seen: set[str] = set()
    for trigger in triggers:
        if trigger.cron in seen:
            raise DefinitionError(f"function {fn_id!r}: cron {trigger.cron!r} is given twice")
        seen.add(trigger.cron)
    return compiled


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
        """Register a function (and its failure handler); a second function with the same id is refused."""
        failure = function.failure_function()
        for new in (function, failure):
            if new is not None and new.id in self._functions:
                raise DefinitionError(f"function id {new.id!r} is already defined")
        self._functions[function.id] = function
        if failure is not None:
            self._functions[failure.id] = failure

    def __len__(self) -> int:
        return len(self._functions)

    def get(self, fn_id: str) -> FunctionDef | None:
        return self._functions.get(fn_id)

    def all(self) -> list[FunctionDef]:
        return list(self._functions.values())
