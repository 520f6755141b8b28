"""Step stubs in steplog.testing: ``TestEngine.stub`` and ``crash_during``.

returns=, raises= (an instance or a class; NonRetriableError fails at once), body= (called with the
step's arguments), fails=N then the real body (attempts counted from the log, so the same across a
crash between attempts), crashes=N (the body runs, the process dies before the result is
committed, the step runs again after the restart), function= scoping, the errors for bad stubs,
stubs in ``async def`` functions, in ``group.parallel`` branches and ``asyncio.gather`` tasks, and
stubs outliving ``crash()``. Both stores.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from steplog.engine import FunctionNotFoundError

import steplog
from steplog.testing import SimulatedCrash, Stub, StubError, TestEngine

GO = steplog.TriggerEvent(event="app/go")
RETRY = steplog.RetryPolicy.fixed(3, "10s")
"""Four attempts, ten seconds apart: no jitter, so timers fall where the tests say."""


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Shop:
    """A client with a checkout function whose step bodies write to a ledger."""

    def __init__(self, retries: Any = RETRY) -> None:
        self.client = steplog.Steplog(app_id="shop", db=":memory:")
        self.ledger: list[str] = []

        @self.client.create_function(fn_id="checkout", trigger=GO, retries=retries)
        def checkout(ctx: steplog.Context) -> dict[str, Any]:
            order = ctx.event.data.get("order", 1)
            charge = ctx.step.run("charge", self.charge, order, currency="EUR")
            receipt = ctx.step.run("receipt", lambda: self.ledger.append("receipt") or f"receipt {order}")
            return {"charge": charge, "receipt": receipt}

    def charge(self, order: int, currency: str) -> dict[str, Any]:
        self.ledger.append(f"charge {order}")
        return {"order": order, "currency": currency}


# -- what a stub does --------------------------------------------------------------------------


def test_returns_replaces_the_body(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", returns={"order": 0, "currency": "XXX"})
        run = engine.trigger("app/go", {"order": 5})
        run.assert_completed({"charge": {"order": 0, "currency": "XXX"}, "receipt": "receipt 5"})
        assert shop.ledger == ["receipt"]  # the real charge never ran
        assert (stub.calls, stub.attempts, stub.crashed) == (1, [0], 0)


def test_returns_none_is_a_stub_too(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", returns=None)
        engine.trigger("app/go").assert_step("charge", output=None)
        assert "charge 1" not in shop.ledger


def test_returns_gives_each_call_its_own_copy(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")

    @client.create_function(fn_id="mutates", trigger=GO)
    def mutates(ctx: steplog.Context) -> list[Any]:
        first = ctx.step.run("get", lambda: None)
        first.append("mutated")
        second = ctx.step.run("get", lambda: None)
        return [first, second]

    value = ["original"]
    with TestEngine(client, store=store) as engine:
        engine.stub("get", returns=value)
        engine.trigger("app/go").assert_completed([["original", "mutated"], ["original"]])
    assert value == ["original"]


def test_raises_an_instance_fails_every_attempt_then_the_run(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", raises=ConnectionError("card network down"))
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_failed(message="card network down").assert_no_step("receipt")
        assert [a.error["name"] for a in run.step_attempts("charge")] == ["ConnectionError"] * 4
        assert stub.attempts == [0, 1, 2, 3]
        assert shop.ledger == []


def test_raises_a_class_raises_a_new_instance(store: str) -> None:
    shop = Shop(retries=0)
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", raises=TimeoutError)
        run = engine.trigger("app/go")
        [attempt] = run.step_attempts("charge")
        assert attempt.status == "failed" and attempt.error["name"] == "TimeoutError"
        run.assert_failed()


def test_raises_non_retriable_error_fails_at_once(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", raises=steplog.NonRetriableError("card declined"))
        run = engine.trigger("app/go")
        run.assert_failed(message="card declined")
        assert [(a.attempt, a.status) for a in run.step_attempts("charge")] == [(0, "failed")]
        assert engine.next_timer() is None  # no retry is planned


def test_a_raised_error_can_be_caught_by_the_function(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")

    @client.create_function(fn_id="careful", trigger=GO, retries=0)
    def careful(ctx: steplog.Context) -> str:
        try:
            return str(ctx.step.run("risky", lambda: "fine"))
        except steplog.StepError as error:
            return f"caught {error.name}"

    with TestEngine(client, store=store) as engine:
        engine.stub("risky", raises=KeyError("k"))
        engine.trigger("app/go").assert_completed("caught KeyError")


def test_body_gets_the_steps_arguments(store: str) -> None:
    shop = Shop()
    seen: list[Any] = []
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", body=lambda order, currency: seen.append((order, currency)) or {"fake": order})
        engine.trigger("app/go", {"order": 3}).assert_step("charge", output={"fake": 3})
        assert seen == [(3, "EUR")]
        assert "charge 3" not in shop.ledger


def test_a_body_that_raises_is_a_failed_attempt(store: str) -> None:
    shop = Shop()
    calls: list[int] = []

    def flaky(order: int, currency: str) -> str:
        calls.append(order)
        if len(calls) < 3:
            raise RuntimeError(f"try {len(calls)}")
        return "charged"

    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", body=flaky)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_step("charge", output="charged", attempts=3)


def test_no_replacement_runs_the_real_body(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge")
        engine.trigger("app/go", {"order": 2}).assert_step("charge", output={"order": 2, "currency": "EUR"})
        assert shop.ledger == ["charge 2", "receipt"]
        assert stub.calls == 1


def test_fails_then_the_real_body(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", fails=2)
        run = engine.trigger("app/go")
        run.assert_waiting()
        engine.settle()
        run.assert_completed().assert_step("charge", attempts=3)
        assert [a.status for a in run.step_attempts("charge")] == ["errored", "errored", "completed"]
        assert all(a.error["name"] == "StubError" for a in run.step_attempts("charge")[:2])
        assert "planned failure 2 of 2" in run.step_attempts("charge")[1].error["message"]
        assert stub.attempts == [0, 1, 2]
        assert shop.ledger == ["charge 1", "receipt"]  # the real body ran once, on the third attempt


def test_fails_then_the_stubbed_value(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", fails=1, returns="stubbed")
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_step("charge", output="stubbed", attempts=2)


def test_more_planned_failures_than_retries_fail_the_run(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        engine.stub("charge", fails=10)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_failed(message="planned failure 4 of 10")
        assert shop.ledger == []


def test_planned_failures_are_counted_from_the_log_across_crashes(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", fails=2)
        run = engine.trigger("app/go")
        engine.crash()  # between the first and the second attempt
        engine.advance_to_next_timer()
        assert [a.status for a in run.step_attempts("charge")] == ["errored", "errored"]
        engine.crash()  # between the second and the third
        engine.advance_to_next_timer()
        run.assert_completed().assert_step("charge", attempts=3)
        assert stub.attempts == [0, 1, 2]
        assert shop.ledger == ["charge 1", "receipt"]


def test_stub_error_is_an_ordinary_retriable_error() -> None:
    assert issubclass(StubError, Exception)
    assert not issubclass(SimulatedCrash, Exception) and issubclass(SimulatedCrash, BaseException)


# -- simulated crashes -------------------------------------------------------------------------


def test_crashes_runs_the_body_then_dies_and_the_step_runs_again(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", crashes=2)
        run = engine.trigger("app/go", {"order": 4})
        run.assert_completed().assert_step("charge", output={"order": 4, "currency": "EUR"}, attempts=1)
        assert shop.ledger == ["charge 4", "charge 4", "charge 4", "receipt"]  # not idempotent: charged thrice
        assert engine.crashes == 2
        assert (stub.calls, stub.crashed, stub.attempts) == (3, 2, [0, 0, 0])


def test_crash_during_is_a_stub_that_crashes(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.crash_during("receipt", times=1)
        assert isinstance(stub, Stub) and stub.crashes == 1
        engine.trigger("app/go").assert_completed()
        assert shop.ledger == ["charge 1", "receipt", "receipt"]  # the charge was committed, not re-run
        assert engine.crashes == 1


def test_a_crash_after_a_stubbed_value_loses_the_value_not_the_step(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", returns="fake", crashes=1)
        engine.trigger("app/go").assert_step("charge", output="fake", attempts=1)
        assert (stub.calls, engine.crashes) == (2, 1)


def test_planned_failures_then_a_crash_then_success(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", fails=1, crashes=1)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed().assert_step("charge", attempts=2)  # the crashed entry is not an attempt
        assert stub.attempts == [0, 1, 1]
        assert engine.crashes == 1


def test_a_simulated_crash_gets_past_except_exception(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")
    entered: list[int] = []

    @client.create_function(fn_id="swallower", trigger=GO)
    def swallower(ctx: steplog.Context) -> str:
        try:
            return str(ctx.step.run("step", lambda: entered.append(1) or "ok"))
        except Exception:  # noqa: BLE001 - the point: it must not catch the crash
            return "swallowed"

    with TestEngine(client, store=store) as engine:
        engine.crash_during("step")
        engine.trigger("app/go").assert_completed("ok")
        assert engine.crashes == 1 and len(entered) == 2


def test_a_stub_that_crashes_forever_is_reported() -> None:
    shop = Shop()
    with TestEngine(shop.client, store="memory") as engine:
        engine.crash_during("charge", times=10_000)
        with pytest.raises(AssertionError, match="crash forever"):
            engine.trigger("app/go")


def test_a_crash_mid_step_leaves_other_queued_runs_to_the_restart(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        engine.crash_during("charge", times=1)
        ids = engine.send([{"name": "app/go", "data": {"order": n}} for n in (1, 2, 3)])
        engine.run_until_idle()
        assert engine.crashes == 1
        assert [engine.runs_for(i)[0].output["charge"]["order"] for i in ids] == [1, 2, 3]
        charges = [entry for entry in shop.ledger if entry.startswith("charge")]
        assert len(charges) == 4 and set(charges) == {"charge 1", "charge 2", "charge 3"}  # one ran twice
        assert shop.ledger.count("receipt") == 3


# -- scoping -----------------------------------------------------------------------------------


def two_functions_with_the_same_step() -> steplog.Steplog:
    client = steplog.Steplog(app_id="t", db=":memory:")
    for fn_id in ("a", "b"):
        @client.create_function(fn_id=fn_id, trigger=steplog.TriggerEvent(event=f"app/{fn_id}"))
        def handler(ctx: steplog.Context, fn_id: str = fn_id) -> Any:
            return ctx.step.run("shared", lambda: f"real {fn_id}")
    return client


def test_a_stub_without_function_replaces_the_step_in_every_function(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        stub = engine.stub("shared", returns="stub")
        engine.trigger("app/a").assert_completed("stub")
        engine.trigger("app/b").assert_completed("stub")
        assert stub.calls == 2


def test_function_scopes_a_stub_to_one_function(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        engine.stub("shared", returns="stub", function="a")
        engine.trigger("app/a").assert_completed("stub")
        engine.trigger("app/b").assert_completed("real b")


def test_a_functions_own_stub_wins_over_the_general_one(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        engine.stub("shared", returns="general")
        engine.stub("shared", returns="for b", function="b")
        engine.trigger("app/a").assert_completed("general")
        engine.trigger("app/b").assert_completed("for b")


def test_a_new_stub_for_the_same_step_replaces_the_old_one(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        engine.stub("shared", returns="old")
        engine.stub("shared", returns="new")
        engine.trigger("app/a").assert_completed("new")


def test_removed_and_cleared_stubs_give_back_the_real_body(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        engine.stub("shared", returns="stub")
        engine.stubs.remove("shared")
        engine.trigger("app/a").assert_completed("real a")
        engine.stub("shared", returns="stub", function="b")
        engine.stubs.clear()
        engine.trigger("app/b").assert_completed("real b")
        assert list(engine.stubs) == []


def test_a_stub_for_an_unknown_function_is_function_not_found() -> None:
    engine = TestEngine(two_functions_with_the_same_step())
    with engine, pytest.raises(FunctionNotFoundError, match=r"'shared'.*'nope'"):
        engine.stub("shared", returns=1, function="nope")


def test_a_stub_for_a_step_the_function_never_takes_is_never_called(store: str) -> None:
    with TestEngine(two_functions_with_the_same_step(), store=store) as engine:
        stub = engine.stub("elsewhere", returns=1)
        engine.trigger("app/a").assert_completed("real a")
        assert stub.calls == 0


# -- bad stubs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"returns": 1, "raises": ValueError}, r"one of returns=, raises= or body=.*'returns', 'raises'"),
        ({"raises": ValueError, "body": print}, r"'raises', 'body'"),
        ({"returns": 1, "body": print}, r"'returns', 'body'"),
        ({"fails": -1}, r"fails= must be a count.*-1"),
        ({"fails": 1.5}, r"fails= must be a count.*1\.5"),
        ({"fails": True}, r"fails= must be a count.*True"),
        ({"crashes": -2}, r"crashes= must be a count.*-2"),
        ({"crashes": "1"}, r"crashes= must be a count.*'1'"),
        ({"raises": "boom"}, r"raises= must be an exception.*'boom'"),
        ({"raises": int}, r"raises= must be an exception.*int"),
        ({"body": 3}, r"body= must be callable.*3"),
    ],
)
def test_a_bad_stub_is_a_value_error_naming_the_problem(arguments: dict[str, Any], problem: str) -> None:
    with TestEngine(two_functions_with_the_same_step()) as engine:
        with pytest.raises(ValueError, match=problem) as caught:
            engine.stub("shared", **arguments)
        assert "'shared'" in str(caught.value)  # and the step
        assert list(engine.stubs) == []  # nothing was put in place


@pytest.mark.parametrize("step_id", ["", None, 7])
def test_a_stub_needs_a_step_id(step_id: Any) -> None:
    with TestEngine() as engine, pytest.raises(ValueError, match="step id"):
        engine.stub(step_id, returns=1)


# -- async def, parallel branches, gather ------------------------------------------------------


def test_stubs_in_an_async_function(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")
    ledger: list[str] = []

    async def fetch(n: int) -> str:
        ledger.append(f"fetch {n}")
        return f"real {n}"

    @client.create_function(fn_id="async-fn", trigger=GO, retries=RETRY)
    async def async_fn(ctx: steplog.Context) -> list[Any]:
        a = await ctx.step.run("a", fetch, 1)
        b = await ctx.step.run("b", fetch, 2)
        c = await ctx.step.run("c", fetch, 3)
        return [a, b, c]

    with TestEngine(client, store=store) as engine:
        engine.stub("a", returns="stub a")
        engine.stub("b", fails=1)
        engine.stub("c", body=lambda n: f"body {n}")
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed(["stub a", "real 2", "body 3"]).assert_step("b", attempts=2)
        assert ledger == ["fetch 2"]


def test_an_async_stub_body_is_awaited(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")

    @client.create_function(fn_id="async-fn", trigger=GO)
    async def async_fn(ctx: steplog.Context) -> Any:
        return await ctx.step.run("a", lambda x: "real", 5)

    async def replacement(x: int) -> str:
        await asyncio.sleep(0)
        return f"awaited {x}"

    with TestEngine(client, store=store) as engine:
        engine.stub("a", body=replacement)
        engine.trigger("app/go").assert_completed("awaited 5")


def test_a_crash_in_an_async_step_body_happens_after_the_body_ran(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")
    ledger: list[str] = []

    async def pay() -> str:
        await asyncio.sleep(0)
        ledger.append("paid")
        return "ok"

    @client.create_function(fn_id="async-fn", trigger=GO)
    async def async_fn(ctx: steplog.Context) -> Any:
        return await ctx.step.run("pay", pay)

    with TestEngine(client, store=store) as engine:
        engine.crash_during("pay", times=1)
        engine.trigger("app/go").assert_completed("ok")
        assert ledger == ["paid", "paid"]
        assert engine.crashes == 1


PARALLEL = ["def", "async def", "gather"]


def parallel_client(kind: str, ledger: list[str]) -> steplog.Steplog:
    """A function running steps "left" and "right" concurrently (threads, tasks or gathered tasks)."""
    client = steplog.Steplog(app_id="t", db=":memory:")

    def body(name: str) -> str:
        ledger.append(name)
        return f"real {name}"

    if kind == "def":
        @client.create_function(fn_id="par", trigger=GO, retries=RETRY)
        def par(ctx: steplog.Context) -> list[Any]:
            return list(ctx.group.parallel((
                lambda: ctx.step.run("left", body, "left"),
                lambda: ctx.step.run("right", body, "right"),
            )))
    elif kind == "async def":
        @client.create_function(fn_id="par", trigger=GO, retries=RETRY)
        async def async_par(ctx: steplog.Context) -> list[Any]:
            return list(await ctx.group.parallel((
                lambda: ctx.step.run("left", body, "left"),
                lambda: ctx.step.run("right", body, "right"),
            )))
    else:
        @client.create_function(fn_id="par", trigger=GO, retries=RETRY)
        async def gathered(ctx: steplog.Context) -> list[Any]:
            return list(await asyncio.gather(ctx.step.run("left", body, "left"), ctx.step.run("right", body, "right")))
    return client


@pytest.mark.parametrize("kind", PARALLEL)
def test_stubs_in_parallel_branches(kind: str, store: str) -> None:
    ledger: list[str] = []
    with TestEngine(parallel_client(kind, ledger), store=store) as engine:
        engine.stub("left", returns="stub left")
        right = engine.stub("right", fails=2)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed(["stub left", "real right"]).assert_step("right", attempts=3)
        assert right.attempts == [0, 1, 2]
        assert ledger == ["right"]


@pytest.mark.parametrize("kind", PARALLEL)
def test_a_crash_in_a_parallel_branch(kind: str, store: str) -> None:
    ledger: list[str] = []
    with TestEngine(parallel_client(kind, ledger), store=store) as engine:
        engine.crash_during("left", times=1)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed(["real left", "real right"])
        assert engine.crashes == 1
        assert ledger.count("left") == 2 and ledger.count("right") in (1, 2)


@pytest.mark.parametrize("kind", PARALLEL)
def test_a_crash_in_a_branch_is_not_lost_when_another_branch_waits_for_a_retry(kind: str, store: str) -> None:
    ledger: list[str] = []
    with TestEngine(parallel_client(kind, ledger), store=store) as engine:
        left = engine.crash_during("left", times=1)
        engine.stub("right", fails=1)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed(["real left", "real right"])
        assert left.crashed == 1
        assert engine.crashes == 1


# -- stubs and crash() -------------------------------------------------------------------------


def test_stubs_survive_a_crash(store: str) -> None:
    shop = Shop()
    with TestEngine(shop.client, store=store) as engine:
        stub = engine.stub("charge", returns="stubbed")
        engine.crash()
        engine.trigger("app/go").assert_step("charge", output="stubbed")
        engine.crash()
        engine.trigger("app/go").assert_step("charge", output="stubbed")
        assert stub.calls == 2


def test_a_step_in_the_log_is_replayed_not_stubbed(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")

    @client.create_function(fn_id="slow", trigger=GO)
    def slow(ctx: steplog.Context) -> Any:
        value = ctx.step.run("fetch", lambda: "real")
        ctx.step.sleep("nap", "1h")
        return value

    with TestEngine(client, store=store) as engine:
        run = engine.trigger("app/go")
        stub = engine.stub("fetch", returns="too late")
        engine.crash()
        engine.advance("1h")
        run.assert_completed("real")
        assert stub.calls == 0


def test_a_stub_applies_to_every_use_of_a_repeated_step_id(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")

    @client.create_function(fn_id="loop", trigger=GO, retries=RETRY)
    def loop(ctx: steplog.Context) -> list[Any]:
        return [ctx.step.run("item", lambda i=i: i) for i in range(3)]

    with TestEngine(client, store=store) as engine:
        stub = engine.stub("item", fails=1)
        run = engine.trigger("app/go")
        engine.settle()
        run.assert_completed([0, 1, 2])
        assert stub.attempts == [0, 1, 0, 1, 0, 1]  # each use ("item", "item:1", "item:2") counts its own
        assert [a.step for a in run.attempts if a.status == "completed"] == ["item", "item:1", "item:2"]


def test_a_crash_in_an_async_body_of_a_def_function(store: str) -> None:
    client = steplog.Steplog(app_id="t", db=":memory:")
    ledger: list[str] = []

    async def pay() -> str:
        ledger.append("paid")
        return "ok"

    @client.create_function(fn_id="sync-fn", trigger=GO)
    def sync_fn(ctx: steplog.Context) -> Any:
        return ctx.step.run("pay", pay)

    with TestEngine(client, store=store) as engine:
        engine.crash_during("pay", times=1)
        engine.trigger("app/go").assert_completed("ok")
        assert ledger == ["paid", "paid"] and engine.crashes == 1
