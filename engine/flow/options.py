"""Flow-control options, in the shape of Inngest's Python SDK, and their checks at definition time.

    concurrency=[Concurrency(limit=2, key="event.data.user_id")]
    throttle=Throttle(limit=100, period="1m", burst=10, key="event.data.account")
    rate_limit=RateLimit(limit=1, period="1h", key="event.data.email")
    debounce=Debounce(period="30s", key="event.data.doc", timeout="5m")
    batch_events=Batch(max_size=100, timeout="5s", key="event.data.tenant")
    priority=Priority(run="event.data.plan == 'pro' ? 120 : 0")
    singleton=Singleton(key="event.data.user_id", mode="skip")
    idempotency="event.data.order_id"

Durations are a ``timedelta``, seconds as a number, or text such as ``"30s"`` or ``"1m30s"``
(Inngest's Python SDK takes milliseconds as numbers; steplog's other options take seconds, so
these do too). Every rule of Inngest's server validation applies, and each refusal names the
function and the options involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import NoReturn

import attrs
from steplog.engine.durations import Duration, parse_duration
from steplog.engine.errors import DefinitionError
from steplog.engine.expressions import Expression, ExpressionError, compile_expression

MAX_CONCURRENCY_CONSTRAINTS = 2
MIN_PERIOD = timedelta(seconds=1)
MAX_THROTTLE_PERIOD = timedelta(days=7)
MAX_RATE_LIMIT_PERIOD = timedelta(hours=24)
MIN_DEBOUNCE_PERIOD = timedelta(seconds=1)
MAX_DEBOUNCE_PERIOD = timedelta(days=7)
MIN_BATCH_SIZE = 2
MAX_BATCH_SIZE = 10_000
MIN_BATCH_TIMEOUT = timedelta(seconds=1)
MAX_BATCH_TIMEOUT = timedelta(minutes=10)
PRIORITY_RANGE = 600
"""Seconds a priority may move a run ahead (or behind); results outside are clipped."""
IDEMPOTENCY_PERIOD = timedelta(hours=24)
SCOPES = ("fn", "env")
SINGLETON_MODES = ("skip", "cancel")


@attrs.frozen
class Concurrency:
    """At most ``limit`` runs executing at once (sleeping and waiting runs do not count).

    ``key`` (CEL over ``event``) gives each value its own limit. ``scope="env"`` (with a key) shares
    the limit with every function of the engine that uses the same key.
    """

    limit: int
    key: str | None = None
    scope: str = "fn"


@attrs.frozen
class Throttle:
    """At most ``limit`` run starts per ``period`` (plus ``burst`` at once), per ``key``; the rest
    wait their turn in order and are never dropped."""

    limit: int
    period: Duration
    burst: int = 1
    key: str | None = None


@attrs.frozen
class RateLimit:
    """At most ``limit`` runs per ``period`` per ``key``; events over it start no run (recorded as skipped)."""

    limit: int
    period: Duration
    key: str | None = None


@attrs.frozen
class Debounce:
    """Start one run ``period`` after the last event (per ``key``), with that event; ``timeout``
    bounds how long new events may keep pushing the start back."""

    period: Duration
    key: str | None = None
    timeout: Duration | None = None


@attrs.frozen
class Batch:
    """Start one run with up to ``max_size`` events (``ctx.events``), when full or ``timeout`` after
    the first; per ``key``. Events for which ``if_exp`` is false (or fails) run alone at once."""

    max_size: int
    timeout: Duration
    key: str | None = None
    if_exp: str | None = None


@attrs.frozen
class Priority:
    """``run``: CEL over ``event`` giving seconds (-600..600) by which a queued run moves ahead."""

    run: str


@attrs.frozen
class Singleton:
    """One active run per ``key``: a new one is skipped (``mode="skip"``), or replaces the active
    one, which is cancelled (``mode="cancel"``)."""

    mode: str
    key: str | None = None


# -- compiled ---------------------------------------------------------------------------------


@attrs.frozen
class ConcurrencyRule:
    limit: int
    key: Expression | None
    scope: str


@attrs.frozen
class ThrottleRule:
    limit: int
    period: timedelta
    burst: int
    key: Expression | None


@attrs.frozen
class RateRule:
    limit: int
    period: timedelta
    key: Expression | None
    reason: str
    """How a skip by this rule is recorded: "rate_limit" or "idempotency"."""


@attrs.frozen
class DebounceRule:
    period: timedelta
    key: Expression | None
    timeout: timedelta | None


@attrs.frozen
class BatchRule:
    max_size: int
    timeout: timedelta
    key: Expression | None
    condition: Expression | None


@attrs.frozen
class SingletonRule:
    mode: str
    key: Expression | None


@attrs.frozen
class FlowControl:
    """A function's checked flow-control options."""

    concurrency: tuple[ConcurrencyRule, ...] = ()
    throttle: ThrottleRule | None = None
    rate_limit: RateRule | None = None
    """The rate limit, or the idempotency key as Inngest defines it: one run per key per 24 h."""
    debounce: DebounceRule | None = None
    batch: BatchRule | None = None
    priority: Expression | None = None
    singleton: SingletonRule | None = None

    @property
    def any(self) -> bool:
        return self != NO_FLOW_CONTROL

    def describe(self) -> dict[str, object]:
        """The options as JSON, for queries, the CLI and the UI."""
        described: dict[str, object] = {}
        if self.concurrency:
            described["concurrency"] = [
                {"limit": rule.limit, "key": _source(rule.key), "scope": rule.scope} for rule in self.concurrency
            ]
        if self.throttle is not None:
            t = self.throttle
            described["throttle"] = {"limit": t.limit, "period_s": t.period.total_seconds(), "burst": t.burst,
                                     "key": _source(t.key)}
        if self.rate_limit is not None:
            rate = self.rate_limit
            if rate.reason == "idempotency":
                described["idempotency"] = _source(rate.key)
            else:
                described["rate_limit"] = {"limit": rate.limit, "period_s": rate.period.total_seconds(),
                                           "key": _source(rate.key)}
        if self.debounce is not None:
            d = self.debounce
            described["debounce"] = {"period_s": d.period.total_seconds(), "key": _source(d.key),
                                     "timeout_s": None if d.timeout is None else d.timeout.total_seconds()}
        if self.batch is not None:
            b = self.batch
            described["batch_events"] = {"max_size": b.max_size, "timeout_s": b.timeout.total_seconds(),
                                         "key": _source(b.key), "if": _source(b.condition)}
        if self.priority is not None:
            described["priority"] = {"run": self.priority.source}
        if self.singleton is not None:
            described["singleton"] = {"mode": self.singleton.mode, "key": _source(self.singleton.key)}
        return described


NO_FLOW_CONTROL = FlowControl()


def _source(expression: Expression | None) -> str | None:
    return None if expression is None else expression.source


# -- checking ---------------------------------------------------------------------------------


@attrs.frozen
class FlowOptions:
    """The flow-control arguments of ``create_function``, as the user gave them."""

    concurrency: object = None
    throttle: object = None
    rate_limit: object = None
    debounce: object = None
    batch_events: object = None
    priority: object = None
    singleton: object = None
    idempotency: object = None


def compile_flow(options: FlowOptions, fn_id: str, *, has_cancel: bool) -> FlowControl:
    """Check every option and their combinations; DefinitionError naming the function and the options."""
    checker = _Checker(fn_id)
    rate = checker.rate_limit(options.rate_limit)
    idempotency = checker.idempotency(options.idempotency)
    flow = FlowControl(
        concurrency=checker.concurrency(options.concurrency),
        throttle=checker.throttle(options.throttle),
        rate_limit=idempotency or rate,  # as in Inngest, an idempotency key replaces any rate limit
        debounce=checker.debounce(options.debounce),
        batch=checker.batch(options.batch_events),
        priority=checker.priority(options.priority),
        singleton=checker.singleton(options.singleton),
    )
    if idempotency is not None and rate is not None:
        checker.refuse("idempotency and rate_limit cannot be combined (idempotency is a rate limit of 1 per 24 h)")
    _check_combinations(flow, checker, has_cancel, idempotency is not None, rate is not None)
    return flow


def _check_combinations(flow: FlowControl, checker: _Checker, has_cancel: bool, idem: bool, rate: bool) -> None:
    if flow.batch is None:
        return
    conflicts = [
        name for name, present in (
            ("cancel", has_cancel), ("debounce", flow.debounce is not None),
            ("singleton", flow.singleton is not None), ("priority", flow.priority is not None),
            ("idempotency", idem), ("rate_limit", rate),
        ) if present
    ]
    if conflicts:
        checker.refuse(f"batch_events cannot be combined with {', '.join(conflicts)} (Inngest refuses these too)")


class _Checker:
    """Checks one function's options; each method returns the compiled option or raises."""

    def __init__(self, fn_id: str) -> None:
        self.fn_id = fn_id

    def refuse(self, problem: str) -> NoReturn:
        raise DefinitionError(f"function {self.fn_id!r}: {problem}")

    def expect(self, value: object, kind: type, option: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, kind):
            self.refuse(f"{option} must be a steplog.{kind.__name__}, got {value!r}")
        return True

    def count(self, value: object, option: str, low: int, high: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.refuse(f"{option} must be a whole number {bounds}, got {value!r}")
        return value

    def duration(self, value: object, option: str, low: timedelta, high: timedelta) -> timedelta:
        try:
            duration = parse_duration(value, what=option)  # type: ignore[arg-type]
        except ValueError as error:
            self.refuse(str(error))
        if not low <= duration <= high:
            self.refuse(f"{option} must be from {_text(low)} to {_text(high)}, got {_text(duration)}")
        return duration

    def expression(self, source: object, option: str, result: str = "any") -> Expression | None:
        if source is None:
            return None
        if not isinstance(source, str) or not source.strip():
            self.refuse(f"{option} must be a CEL expression over event, got {source!r}")
        try:
            return compile_expression(source, names=("event",), result=result)  # type: ignore[arg-type]
        except ExpressionError as error:
            self.refuse(f"{option}: {error}")

    def concurrency(self, value: object) -> tuple[ConcurrencyRule, ...]:
        if value is None:
            return ()
        given = [value] if isinstance(value, (Concurrency, int)) else value
        if not isinstance(given, Sequence) or isinstance(given, str):
            self.refuse(f"concurrency must be a list of steplog.Concurrency, got {value!r}")
        items = list(given)
        if len(items) > MAX_CONCURRENCY_CONSTRAINTS:
            self.refuse(f"concurrency has {len(items)} constraints; the limit is {MAX_CONCURRENCY_CONSTRAINTS}")
        rules = tuple(self._concurrency_rule(item, index) for index, item in enumerate(items))
        seen = [(rule.scope, _source(rule.key)) for rule in rules]
        if len(set(seen)) != len(seen):
            self.refuse("concurrency has two constraints with the same scope and key")
        return rules

    def _concurrency_rule(self, item: object, index: int) -> ConcurrencyRule:
        if isinstance(item, int) and not isinstance(item, bool):
            item = Concurrency(limit=item)
        option = f"concurrency[{index}]"
        if not isinstance(item, Concurrency):
            self.refuse(f"{option} must be a steplog.Concurrency, got {item!r}")
        assert isinstance(item, Concurrency)
        limit = self.count(item.limit, f"{option}.limit", 1)
        if item.scope not in SCOPES:
            self.refuse(f"{option}.scope must be one of {SCOPES}, got {item.scope!r}")
        if item.scope == "env" and item.key is None:
            self.refuse(f"{option}: a concurrency key is required for scope 'env'")
        return ConcurrencyRule(limit, self.expression(item.key, f"{option}.key"), item.scope)

    def throttle(self, value: object) -> ThrottleRule | None:
        if not self.expect(value, Throttle, "throttle"):
            return None
        assert isinstance(value, Throttle)
        return ThrottleRule(
            limit=self.count(value.limit, "throttle.limit", 1),
            period=self.duration(value.period, "throttle.period", MIN_PERIOD, MAX_THROTTLE_PERIOD),
            burst=self.count(value.burst, "throttle.burst", 0),
            key=self.expression(value.key, "throttle.key"),
        )

    def rate_limit(self, value: object) -> RateRule | None:
        if not self.expect(value, RateLimit, "rate_limit"):
            return None
        assert isinstance(value, RateLimit)
        return RateRule(
            limit=self.count(value.limit, "rate_limit.limit", 1),
            period=self.duration(value.period, "rate_limit.period", MIN_PERIOD, MAX_RATE_LIMIT_PERIOD),
            key=self.expression(value.key, "rate_limit.key"),
            reason="rate_limit",
        )

    def idempotency(self, value: object) -> RateRule | None:
        if value is None:
            return None
        key = self.expression(value, "idempotency")
        return RateRule(limit=1, period=IDEMPOTENCY_PERIOD, key=key, reason="idempotency")

    def debounce(self, value: object) -> DebounceRule | None:
        if not self.expect(value, Debounce, "debounce"):
            return None
        assert isinstance(value, Debounce)
        period = self.duration(value.period, "debounce.period", MIN_DEBOUNCE_PERIOD, MAX_DEBOUNCE_PERIOD)
        timeout = None
        if value.timeout is not None:
            timeout = self.duration(value.timeout, "debounce.timeout", MIN_DEBOUNCE_PERIOD, MAX_DEBOUNCE_PERIOD)
            if timeout < period:
                self.refuse(f"debounce.timeout ({_text(timeout)}) must not be shorter than debounce.period"
                            f" ({_text(period)})")
        return DebounceRule(period, self.expression(value.key, "debounce.key"), timeout)

    def batch(self, value: object) -> BatchRule | None:
        if not self.expect(value, Batch, "batch_events"):
            return None
        assert isinstance(value, Batch)
        return BatchRule(
            max_size=self.count(value.max_size, "batch_events.max_size", MIN_BATCH_SIZE, MAX_BATCH_SIZE),
            timeout=self.duration(value.timeout, "batch_events.timeout", MIN_BATCH_TIMEOUT, MAX_BATCH_TIMEOUT),
            key=self.expression(value.key, "batch_events.key"),
            condition=self.expression(value.if_exp, "batch_events.if_exp", "bool"),
        )

    def priority(self, value: object) -> Expression | None:
        if not self.expect(value, Priority, "priority"):
            return None
        assert isinstance(value, Priority)
        if value.run is None:
            return None
        return self.expression(value.run, "priority.run", "number")

    def singleton(self, value: object) -> SingletonRule | None:
        if not self.expect(value, Singleton, "singleton"):
            return None
        assert isinstance(value, Singleton)
        if value.mode not in SINGLETON_MODES:
            self.refuse(f"singleton.mode must be one of {SINGLETON_MODES}, got {value.mode!r}")
        return SingletonRule(value.mode, self.expression(value.key, "singleton.key"))


def _text(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
