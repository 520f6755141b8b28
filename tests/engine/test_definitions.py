"""Function definitions: ids, names, triggers, retries, and the errors a bad definition gets at once."""

from __future__ import annotations

from datetime import timedelta

import pytest

import steplog
from steplog.engine import DefinitionError, FunctionRegistry, RetryPolicy, TriggerEvent, define_function
from steplog.engine.retry import INNGEST_BACKOFF


def handler(ctx: object) -> str:
    return "ok"


async def async_handler(ctx: object) -> str:
    return "ok"


def define(**options: object) -> object:
    options.setdefault("fn_id", "fn")
    options.setdefault("trigger", TriggerEvent(event="app/x"))
    return define_function(handler, **options)  # type: ignore[arg-type]


# -- valid definitions -----------------------------------------------------------------------


def test_defaults_name_retries_and_kind() -> None:
    function = define(fn_id="send-email")
    assert function.id == "send-email"
    assert function.name == "send-email"
    assert function.retry == RetryPolicy()
    assert function.retry.retries == 4
    assert function.retry.backoff == INNGEST_BACKOFF
    assert function.retry.jitter == timedelta(seconds=30)
    assert function.is_async is False
    assert [t.trigger for t in function.triggers] == [TriggerEvent(event="app/x")]


def test_name_async_and_describe() -> None:
    function = define_function(
        async_handler,
        fn_id="user.sync_v2",
        name="Sync users",
        trigger=[TriggerEvent(event="app/user.*"), TriggerEvent(event="app/x", expression="event.data.n > 1")],
        retries=7,
    )
    assert function.is_async is True
    assert function.describe() == {
        "id": "user.sync_v2",
        "name": "Sync users",
        "triggers": [
            {"event": "app/user.*", "expression": None},
            {"event": "app/x", "expression": "event.data.n > 1"},
        ],
        "retries": 7,
    }


@pytest.mark.parametrize("fn_id", ["a", "A1", "0start", "with-dash", "with_underscore", "dotted.name", "x" * 128])
def test_valid_ids(fn_id: str) -> None:
    assert define(fn_id=fn_id).id == fn_id


def test_ten_triggers_are_allowed() -> None:
    function = define(trigger=[TriggerEvent(event=f"app/e{i}") for i in range(10)])
    assert len(function.triggers) == 10


@pytest.mark.parametrize("retries", [0, 1, 4, 20])
def test_retries_from_0_to_20(retries: int) -> None:
    assert define(retries=retries).retry.retries == retries


def test_retry_policy_object_is_kept() -> None:
    policy = RetryPolicy.fixed(3, "10s")
    assert define(retries=policy).retry is policy


@pytest.mark.parametrize(
    ("pattern", "exact", "prefix"),
    [
        ("app/user.created", "app/user.created", None),
        ("app/*", None, "app/"),
        ("app/user.*", None, "app/user."),
    ],
)
def test_trigger_patterns_compile(pattern: str, exact: str | None, prefix: str | None) -> None:
    [trigger] = define(trigger=TriggerEvent(event=pattern)).triggers
    assert (trigger.exact, trigger.prefix) == (exact, prefix)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("app/user.created", "app/user.created", True),
        ("app/user.created", "app/user.created.x", False),
        ("app/*", "app/user.created", True),
        ("app/*", "application/x", False),
        ("app/user.*", "app/user.created", True),
        ("app/user.*", "app/user.deleted", True),
        ("app/user.*", "app/userx.created", False),
        ("app/user.*", "app/users.created", False),
    ],
)
def test_trigger_name_matching(pattern: str, name: str, matches: bool) -> None:
    [trigger] = define(trigger=TriggerEvent(event=pattern)).triggers
    assert trigger.matches_name(name) is matches


# -- invalid definitions: the message names the function and the problem ---------------------


@pytest.mark.parametrize("fn_id", ["", "bad id", "-leading-dash", "slash/in/id", "x" * 129, "é", None, 12])
def test_bad_id(fn_id: object) -> None:
    with pytest.raises(DefinitionError, match=r"function id .* is invalid"):
        define(fn_id=fn_id)


def test_no_trigger() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn' needs at least one trigger"):
        define(trigger=[])


def test_trigger_of_the_wrong_type() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn': trigger 'app/x' is not a steplog.TriggerEvent"):
        define(trigger=["app/x"])


def test_empty_trigger_event_name() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn': a trigger needs a non-empty event name"):
        define(trigger=TriggerEvent(event="  "))


def test_eleven_triggers() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn' has 11 triggers; the limit is 10"):
        define(trigger=[TriggerEvent(event=f"app/e{i}") for i in range(11)])


@pytest.mark.parametrize("pattern", ["app/us*", "app*", "app/*/created", "app/**", "app/user.*x", "*/created"])
def test_bad_wildcard(pattern: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        define(trigger=TriggerEvent(event=pattern))
    message = str(raised.value)
    assert "function 'fn'" in message
    assert repr(pattern) in message
    assert "wildcard" in message


def test_bad_cel_syntax() -> None:
    with pytest.raises(DefinitionError) as raised:
        define(trigger=TriggerEvent(event="app/x", expression="event.data.x =="))
    message = str(raised.value)
    assert "function 'fn'" in message
    assert "syntax error" in message


def test_unknown_variable_in_cel() -> None:
    with pytest.raises(DefinitionError) as raised:
        define(trigger=TriggerEvent(event="app/x", expression="user.id == 'u1'"))
    message = str(raised.value)
    assert "function 'fn'" in message
    assert "unknown name 'user'" in message


def test_cel_that_is_not_boolean() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn': trigger expression"):
        define(trigger=TriggerEvent(event="app/x", expression="'text'"))


@pytest.mark.parametrize(
    ("retries", "problem"),
    [
        (21, "retries must be from 0 to 20, got 21"),
        (-1, "got -1"),
        (True, "integer"),
        ("4", "integer"),
        (2.5, "integer"),
    ],
)
def test_bad_retries(retries: object, problem: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        define(retries=retries)
    assert "function 'fn'" in str(raised.value)
    assert problem in str(raised.value)


def test_handler_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match=r"function 'fn': the handler .* is not callable"):
        define_function("not a function", fn_id="fn", trigger=TriggerEvent(event="app/x"))  # type: ignore[arg-type]


def test_duplicate_id_in_a_registry() -> None:
    registry = FunctionRegistry()
    registry.add(define(fn_id="dup"))
    with pytest.raises(DefinitionError, match=r"function id 'dup' is already defined"):
        registry.add(define(fn_id="dup", trigger=TriggerEvent(event="app/other")))
    assert [f.id for f in registry.all()] == ["dup"]


def test_duplicate_id_on_the_client() -> None:
    client = steplog.Steplog(db=":memory:")

    @client.create_function(fn_id="dup", trigger=steplog.TriggerEvent(event="app/x"))
    def first(ctx: steplog.Context) -> None:
        return None

    with pytest.raises(DefinitionError, match=r"function id 'dup' is already defined"):

        @client.create_function(fn_id="dup", trigger=steplog.TriggerEvent(event="app/y"))
        def second(ctx: steplog.Context) -> None:
            return None

    assert client.registry.get("dup") is first


def test_client_definition_errors_come_at_definition_time() -> None:
    client = steplog.Steplog(db=":memory:")
    decorator = client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="app/x*"))
    with pytest.raises(DefinitionError, match=r"function 'f'"):
        decorator(handler)
    assert client.registry.all() == []


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"backoff": []}, "backoff must be a non-empty list"),
        ({"backoff": ["soon"]}, "backoff: cannot read 'soon'"),
        ({"jitter": -1}, "jitter: -1 is negative"),
        ({"retries": 21}, "retries must be from 0 to 20"),
    ],
)
def test_bad_retry_policy(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        RetryPolicy(**options)  # type: ignore[arg-type]
    assert problem in str(raised.value)
