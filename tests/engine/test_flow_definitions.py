"""Flow-control options checked at definition time: ranges, refused combinations, bad CEL and wrong
types, through ``define_function(flow=FlowOptions(...))`` and ``Steplog.create_function(...)``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from steplog.engine import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    DefinitionError,
    FlowOptions,
    FunctionDef,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    TriggerEvent,
    define_function,
)

import steplog

FN = "flow-fn"
TRIGGER = TriggerEvent("a/b")
CANCEL = [Cancel(event="a/stop")]


def handler(ctx: object) -> str:
    return "ok"


def define(cancel: list[Cancel] | None = None, **flow: Any) -> FunctionDef:
    return define_function(handler, fn_id=FN, trigger=TRIGGER, flow=FlowOptions(**flow), cancel=cancel)


def create(cancel: list[Cancel] | None = None, **flow: Any) -> FunctionDef:
    client = steplog.Steplog(db=":memory:")
    return client.create_function(fn_id=FN, trigger=TRIGGER, cancel=cancel, **flow)(handler)


BUILDERS = {"define_function": define, "create_function": create}

# (case id, flow options, cancel rules, words the message must contain besides the function id)
REFUSED: list[tuple[str, dict[str, Any], list[Cancel] | None, tuple[str, ...]]] = [
    # ranges
    ("debounce-period-under-1s", {"debounce": Debounce(period=0.5)}, None, ("debounce.period",)),
    ("debounce-period-zero", {"debounce": Debounce(period=0)}, None, ("debounce.period",)),
    ("debounce-period-over-7d", {"debounce": Debounce(period=timedelta(days=7, seconds=1))}, None,
     ("debounce.period",)),
    ("debounce-timeout-shorter", {"debounce": Debounce(period="1m", timeout="30s")}, None,
     ("debounce.timeout", "debounce.period")),
    ("debounce-timeout-over-7d", {"debounce": Debounce(period="1m", timeout="8d")}, None, ("debounce.timeout",)),
    ("throttle-period-under-1s", {"throttle": Throttle(limit=1, period="500ms")}, None, ("throttle.period",)),
    ("throttle-period-over-7d", {"throttle": Throttle(limit=1, period="7d1s")}, None, ("throttle.period",)),
    ("throttle-limit-zero", {"throttle": Throttle(limit=0, period="1s")}, None, ("throttle.limit",)),
    ("throttle-burst-negative", {"throttle": Throttle(limit=1, period="1s", burst=-1)}, None, ("throttle.burst",)),
    ("rate-period-over-24h", {"rate_limit": RateLimit(limit=1, period="24h1s")}, None, ("rate_limit.period",)),
    ("rate-period-under-1s", {"rate_limit": RateLimit(limit=1, period=0.2)}, None, ("rate_limit.period",)),
    ("rate-limit-zero", {"rate_limit": RateLimit(limit=0, period="1m")}, None, ("rate_limit.limit",)),
    ("rate-limit-bool", {"rate_limit": RateLimit(limit=True, period="1m")}, None, ("rate_limit.limit",)),
    ("concurrency-limit-zero", {"concurrency": [Concurrency(limit=0)]}, None, ("concurrency[0].limit",)),
    ("concurrency-int-zero", {"concurrency": 0}, None, ("concurrency[0].limit",)),
    ("batch-size-1", {"batch_events": Batch(max_size=1, timeout="5s")}, None, ("batch_events.max_size",)),
    ("batch-timeout-under-1s", {"batch_events": Batch(max_size=2, timeout="999ms")}, None,
     ("batch_events.timeout",)),
    ("batch-timeout-over-10m", {"batch_events": Batch(max_size=2, timeout="10m1s")}, None,
     ("batch_events.timeout",)),
    ("three-concurrency", {"concurrency": [Concurrency(1), Concurrency(2, key="event.data.a"),
                                           Concurrency(3, key="event.data.b")]}, None, ("concurrency", "3")),
    ("env-scope-without-key", {"concurrency": [Concurrency(limit=1, scope="env")]}, None,
     ("concurrency[0]", "env")),
    ("bad-scope", {"concurrency": [Concurrency(limit=1, key="event.data.a", scope="account")]}, None,
     ("concurrency[0].scope", "account")),
    ("bad-singleton-mode", {"singleton": Singleton(mode="replace")}, None, ("singleton.mode", "replace")),
    # combinations
    ("batch-cancel", {"batch_events": Batch(max_size=2, timeout="5s")}, CANCEL, ("batch_events", "cancel")),
    ("batch-debounce", {"batch_events": Batch(max_size=2, timeout="5s"), "debounce": Debounce(period="5s")}, None,
     ("batch_events", "debounce")),
    ("batch-singleton", {"batch_events": Batch(max_size=2, timeout="5s"), "singleton": Singleton(mode="skip")},
     None, ("batch_events", "singleton")),
    ("batch-priority", {"batch_events": Batch(max_size=2, timeout="5s"), "priority": Priority(run="10")}, None,
     ("batch_events", "priority")),
    ("batch-idempotency", {"batch_events": Batch(max_size=2, timeout="5s"), "idempotency": "event.data.id"}, None,
     ("batch_events", "idempotency")),
    ("batch-rate-limit", {"batch_events": Batch(max_size=2, timeout="5s"),
                          "rate_limit": RateLimit(limit=1, period="1m")}, None, ("batch_events", "rate_limit")),
    ("batch-several", {"batch_events": Batch(max_size=2, timeout="5s"), "debounce": Debounce(period="5s"),
                       "singleton": Singleton(mode="cancel")}, CANCEL,
     ("batch_events", "cancel", "debounce", "singleton")),
    ("idempotency-rate-limit", {"idempotency": "event.data.id", "rate_limit": RateLimit(limit=1, period="1m")},
     None, ("idempotency", "rate_limit")),
    # CEL
    ("cel-syntax", {"throttle": Throttle(limit=1, period="1s", key="event.data.(")}, None,
     ("throttle.key", "syntax")),
    ("cel-unknown-name", {"rate_limit": RateLimit(limit=1, period="1m", key="foo.bar")}, None,
     ("rate_limit.key", "foo")),
    ("cel-unknown-name-concurrency", {"concurrency": [Concurrency(limit=1, key="foo.bar")]}, None,
     ("concurrency[0].key", "foo")),
    ("cel-unknown-name-debounce", {"debounce": Debounce(period="5s", key="foo.bar")}, None, ("debounce.key", "foo")),
    ("cel-unknown-name-singleton", {"singleton": Singleton(mode="skip", key="foo.bar")}, None,
     ("singleton.key", "foo")),
    ("cel-unknown-name-idempotency", {"idempotency": "foo.bar"}, None, ("idempotency", "foo")),
    ("cel-batch-key-syntax", {"batch_events": Batch(max_size=2, timeout="1s", key="event.data.a +")}, None,
     ("batch_events.key",)),
    ("priority-string", {"priority": Priority(run="'high'")}, None, ("priority.run", "number")),
    ("priority-bool", {"priority": Priority(run="event.data.a == 1")}, None, ("priority.run", "number")),
    ("batch-if-string", {"batch_events": Batch(max_size=2, timeout="1s", if_exp="'yes'")}, None,
     ("batch_events.if_exp", "bool")),
    ("key-not-a-string", {"throttle": Throttle(limit=1, period="1s", key=5)}, None, ("throttle.key",)),
    ("concurrency-key-not-a-string", {"concurrency": [Concurrency(limit=1, key=["a"])]}, None,
     ("concurrency[0].key",)),
    ("priority-not-a-string", {"priority": Priority(run=5)}, None, ("priority.run",)),
    ("idempotency-empty", {"idempotency": ""}, None, ("idempotency",)),
    ("idempotency-not-a-string", {"idempotency": 5}, None, ("idempotency",)),
    # wrong types
    ("throttle-int", {"throttle": 5}, None, ("throttle", "Throttle")),
    ("rate-limit-dict", {"rate_limit": {"limit": 1, "period": "1m"}}, None, ("rate_limit", "RateLimit")),
    ("debounce-string", {"debounce": "5s"}, None, ("debounce", "Debounce")),
    ("batch-int", {"batch_events": 10}, None, ("batch_events", "Batch")),
    ("priority-string-option", {"priority": "10"}, None, ("priority", "Priority")),
    ("singleton-string", {"singleton": "skip"}, None, ("singleton", "Singleton")),
    ("concurrency-string", {"concurrency": "5"}, None, ("concurrency",)),
    ("concurrency-item-dict", {"concurrency": [{"limit": 1}]}, None, ("concurrency[0]", "Concurrency")),
    ("throttle-period-text", {"throttle": Throttle(limit=1, period="soon")}, None, ("throttle.period",)),
    ("throttle-limit-float", {"throttle": Throttle(limit=1.5, period="1s")}, None, ("throttle.limit",)),
]


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize(("flow", "cancel", "words"), [case[1:] for case in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_options_name_the_function_and_the_options(
    build: Any, flow: dict[str, Any], cancel: list[Cancel] | None, words: tuple[str, ...]
) -> None:
    with pytest.raises(DefinitionError) as raised:
        build(cancel=cancel, **flow)
    message = str(raised.value)
    assert repr(FN) in message
    for word in words:
        assert word in message


def test_create_function_registers_nothing_when_refused() -> None:
    client = steplog.Steplog(db=":memory:")
    with pytest.raises(DefinitionError):
        client.create_function(fn_id=FN, trigger=TRIGGER, throttle=5)(handler)
    assert client.registry.get(FN) is None


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("debounce-1s", {"debounce": Debounce(period="1s")}),
    ("debounce-7d", {"debounce": Debounce(period="7d", timeout="7d")}),
    ("debounce-timeout-equal", {"debounce": Debounce(period="1m", timeout=60)}),
    ("throttle-1s", {"throttle": Throttle(limit=1, period=1, burst=0)}),
    ("throttle-7d", {"throttle": Throttle(limit=1, period=timedelta(days=7))}),
    ("rate-24h", {"rate_limit": RateLimit(limit=1, period="24h")}),
    ("rate-1s", {"rate_limit": RateLimit(limit=1, period="1s")}),
    ("batch-2", {"batch_events": Batch(max_size=2, timeout="1s")}),
    ("batch-10m", {"batch_events": Batch(max_size=2, timeout="10m", key="event.data.t", if_exp="event.data.b")}),
    ("two-concurrency", {"concurrency": [Concurrency(1), Concurrency(2, key="event.data.a", scope="env")]}),
    ("concurrency-int", {"concurrency": 3}),
    ("singleton-cancel", {"singleton": Singleton(mode="cancel", key="event.data.u")}),
    ("priority", {"priority": Priority(run="event.data.plan == 'pro' ? 120 : 0")}),
    ("idempotency", {"idempotency": "event.data.order"}),
    ("debounce-and-singleton", {"debounce": Debounce(period="5s"), "singleton": Singleton(mode="skip")}),
]


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize("flow", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_options_at_the_bounds_are_accepted(build: Any, flow: dict[str, Any]) -> None:
    function = build(**flow)
    assert function.flow.any


def test_batch_with_cancel_is_accepted_without_batch() -> None:
    assert define(cancel=CANCEL, debounce=Debounce(period="5s")).cancel


def test_no_options_means_no_flow_control() -> None:
    function = define()
    assert not function.flow.any
    assert function.flow.describe() == {}
    assert not {"concurrency", "throttle", "rate_limit", "debounce", "batch_events", "priority", "singleton",
                "idempotency"} & function.describe().keys()


def test_describe_includes_every_flow_option() -> None:
    function = define(
        concurrency=[Concurrency(2), Concurrency(5, key="event.data.team", scope="env")],
        throttle=Throttle(limit=10, period="1m", burst=2, key="event.data.acct"),
        rate_limit=RateLimit(limit=3, period="1h", key="event.data.email"),
        debounce=Debounce(period="30s", key="event.data.doc", timeout="5m"),
        priority=Priority(run="event.data.p"),
        singleton=Singleton(mode="skip", key="event.data.user"),
    )
    described = function.describe()
    assert described["id"] == FN
    assert described["concurrency"] == [
        {"limit": 2, "key": None, "scope": "fn"}, {"limit": 5, "key": "event.data.team", "scope": "env"},
    ]
    assert described["throttle"] == {"limit": 10, "period_s": 60.0, "burst": 2, "key": "event.data.acct"}
    assert described["rate_limit"] == {"limit": 3, "period_s": 3600.0, "key": "event.data.email"}
    assert described["debounce"] == {"period_s": 30.0, "key": "event.data.doc", "timeout_s": 300.0}
    assert described["priority"] == {"run": "event.data.p"}
    assert described["singleton"] == {"mode": "skip", "key": "event.data.user"}


def test_describe_includes_batch_and_idempotency() -> None:
    batched = define(batch_events=Batch(max_size=10, timeout="5s", key="event.data.t", if_exp="event.data.ok"))
    assert batched.describe()["batch_events"] == {
        "max_size": 10, "timeout_s": 5.0, "key": "event.data.t", "if": "event.data.ok",
    }
    idempotent = create(idempotency="event.data.order")
    described = idempotent.describe()
    assert described["idempotency"] == "event.data.order"
    assert "rate_limit" not in described


def test_idempotency_is_a_rate_limit_of_one_per_day() -> None:
    rule = define(idempotency="event.data.order").flow.rate_limit
    assert rule is not None
    assert (rule.limit, rule.period, rule.reason) == (1, timedelta(hours=24), "idempotency")
    assert rule.key is not None and rule.key.source == "event.data.order"


def test_throttle_burst_defaults_to_one_and_concurrency_scope_to_fn() -> None:
    flow = define(throttle=Throttle(limit=4, period="1m"), concurrency=7).flow
    assert flow.throttle is not None and flow.throttle.burst == 1
    assert [(rule.limit, rule.key, rule.scope) for rule in flow.concurrency] == [(7, None, "fn")]
