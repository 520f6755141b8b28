"""Regression tests from an independent review of steplog.testing.

Each test is a bug as a user meets it, marked ``xfail(strict=True)``: it fails now, for the reason
given, and turns into an XPASS (a failure, under strict) once the bug is fixed, so the marker must
then be removed.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import strategies as st

import steplog
from steplog.eventstore.errors import StoreClosedError
from steplog.testing import NondeterministicRunError, TestEngine, replay
from steplog.testing.actions import CrashDuring
from steplog.testing.stateful import DurableFunctionMachine
from steplog.testing.strategies import events


def _client(app_id: str = "review") -> steplog.Steplog:
    return steplog.Steplog(app_id=app_id, db=":memory:")


# -- the determinism check and settle() ------------------------------------------------------------


def test_the_determinism_check_does_not_rescan_runs_it_already_checked() -> None:
    client = _client()

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/go"))
    def f(ctx: Any) -> int:
        return ctx.step.run("s", lambda: 1)  # type: ignore[no-any-return]

    with TestEngine(client) as engine:
        for _ in range(40):
            engine.trigger("a/go")
        store = engine.store
        real_query = store.query
        rows_read: list[int] = []

        def counting_query(table: str, **options: Any) -> list[dict[str, Any]]:
            rows = real_query(table, **options)
            if table == "runs":
                rows_read.append(len(rows))
            return rows

        store.query = counting_query  # type: ignore[method-assign]
        engine.trigger("a/go").assert_completed(1)
        assert sum(rows_read) < 10, f"one more trigger read {sum(rows_read)} rows of runs"


def test_settle_does_not_play_a_year_of_cron_ticks() -> None:
    client = _client()

    @client.create_function(fn_id="order", trigger=steplog.TriggerEvent(event="shop/order"))
    def order(ctx: Any) -> str:
        ctx.step.run("charge", lambda: "charged")
        return "ok"

    @client.create_function(fn_id="nightly", trigger=steplog.TriggerCron("0 2 * * *"))
    def nightly(ctx: Any) -> str:
        return "report"

    with TestEngine(client) as engine:
        engine.stub("charge", fails=1)
        run = engine.trigger("shop/order")
        engine.settle()  # the docs: "both backoffs pass on virtual time: the test takes milliseconds"
        run.assert_completed("ok")
        assert len(engine.runs("nightly")) <= 1, f"settle() started {len(engine.runs('nightly'))} cron runs"


def test_a_typo_in_a_sleep_duration_is_not_reported_as_nondeterminism() -> None:
    client = _client()

    @client.create_function(fn_id="reminder", trigger=steplog.TriggerEvent(event="cart/abandoned"))
    def reminder(ctx: Any) -> str:
        ctx.step.sleep("wait", "1 hour")  # not a duration steplog reads
        return "reminded"

    with TestEngine(client) as engine:
        engine.trigger("cart/abandoned").assert_failed("SleepError", "1 hour")


def test_a_bad_wait_is_not_reported_as_nondeterminism() -> None:
    client = _client()

    @client.create_function(fn_id="ship", trigger=steplog.TriggerEvent(event="shop/placed"))
    def ship(ctx: Any) -> Any:
        return ctx.step.wait_for_event("shipped", event="shop/*", timeout="1d")

    with TestEngine(client) as engine:
        engine.trigger("shop/placed").assert_failed("WaitError")


# -- stubs -----------------------------------------------------------------------------------------


def test_a_stub_can_raise_retry_after_error() -> None:
    """Found at 18e8612: stub(raises=RetryAfterError(...)) raised TypeError instead (stubs.py copied the
    instance with copy.copy, which calls RetryAfterError(message) without retry_after). Fixed in the
    working tree during the review (stubs._fresh), so a plain regression test rather than an xfail."""
    client = _client()

    @client.create_function(fn_id="sync", trigger=steplog.TriggerEvent(event="crm/sync"))
    def sync(ctx: Any) -> str:
        return ctx.step.run("push", lambda: "pushed")  # type: ignore[no-any-return]

    with TestEngine(client) as engine:
        engine.stub("push", raises=steplog.RetryAfterError("busy", "2h"))
        run = engine.trigger("crm/sync")
        [attempt] = run.attempts
        assert attempt.error is not None and attempt.error["name"] == "RetryAfterError", attempt.error
        assert attempt.retry_at is not None and attempt.retry_at.startswith("2030-01-01T02:00:00"), attempt.retry_at


def test_crash_during_keeps_the_stub_in_place() -> None:
    client = _client()
    real_calls: list[str] = []

    @client.create_function(fn_id="refund", trigger=steplog.TriggerEvent(event="bank/refund"))
    def refund(ctx: Any) -> str:
        return ctx.step.run("credit", lambda: real_calls.append("REAL") or "credited")  # type: ignore[no-any-return]

    with TestEngine(client) as engine:
        engine.stub("credit", returns="stubbed")
        engine.crash_during("credit")
        run = engine.trigger("bank/refund")
        assert engine.crashes == 1
        assert real_calls == [], "the real body ran although the step was stubbed"
        run.assert_completed("stubbed")


def test_crash_in_crashes_a_step_stubbed_for_one_function() -> None:
    client = _client()

    @client.create_function(fn_id="sync", trigger=steplog.TriggerEvent(event="crm/sync"))
    def sync(ctx: Any) -> str:
        return ctx.step.run("push", lambda: "pushed")  # type: ignore[no-any-return]

    with TestEngine(client) as engine:
        engine.stub("push", fails=1, function="sync")  # as in a machine's setup()
        CrashDuring("push").apply(engine)  # what crash_in = ["push"] does
        engine.trigger("crm/sync")
        engine.settle()
        assert engine.crashes == 1


# -- the engine's lifecycle ------------------------------------------------------------------------


def test_a_bad_downtime_leaves_the_engine_usable() -> None:
    client = _client()

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/go"))
    def f(ctx: Any) -> int:
        return 1

    with TestEngine(client) as engine:
        with pytest.raises(ValueError, match="downtime"):
            engine.crash(downtime="-1s")
        engine.trigger("a/go").assert_completed(1)
        assert engine.crashes == 0


def test_invoke_of_a_debounced_function_says_what_happened() -> None:
    client = _client()

    @client.create_function(
        fn_id="digest", trigger=steplog.TriggerEvent(event="crm/note"), debounce=steplog.Debounce(period="5m")
    )
    def digest(ctx: Any) -> int:
        return 1

    with TestEngine(client) as engine:
        try:
            engine.invoke("digest", {"user": "ada"})
        except (AssertionError, ValueError, steplog.EngineError):
            pass  # a refusal that names the problem would do


# -- reading runs ------------------------------------------------------------------------------------


def test_the_first_use_of_a_repeated_step_id_can_be_read() -> None:
    client = _client()

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/go"))
    def f(ctx: Any) -> list[str]:
        return [ctx.step.run("charge", lambda n=n: n) for n in ("first", "second")]

    with TestEngine(client) as engine:
        run = engine.trigger("a/go")
        assert run.step_output("charge:1") == "second"
        assert run.step_output("charge") == "first"


def test_the_determinism_check_logs_nothing() -> None:
    client = _client()

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/go"))
    def f(ctx: Any) -> int:
        value = ctx.step.run("s", lambda: 1)
        ctx.logger.warning("done with %s", value)
        return value  # type: ignore[no-any-return]

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("steplog.function.f")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with TestEngine(client) as engine:
            engine.trigger("a/go").assert_completed(1)
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["done with 1"]


# -- replay ------------------------------------------------------------------------------------------


def test_replay_reports_new_code_that_raises_before_the_pending_step() -> None:
    def define(broken: bool) -> steplog.Steplog:
        client = _client()

        @client.create_function(
            fn_id="flaky", trigger=steplog.TriggerEvent(event="a/go"), retries=steplog.RetryPolicy.fixed(3, "1h")
        )
        def flaky(ctx: Any) -> str:
            ctx.step.run("first", lambda: 1)
            if broken:
                raise KeyError("customer_id")  # the new code reads a field the old events do not have
            ctx.step.run("call", lambda: 1 / 0)
            return "never"

        return client

    with TestEngine(define(broken=False)) as engine:
        run = engine.trigger("a/go").assert_waiting()  # at step 'call', waiting for its retry
        recorded = engine.export(run.run_id)
    report = replay(recorded, define(broken=True))
    assert not report.ok, report


# -- DurableFunctionMachine --------------------------------------------------------------------------


def _machine_client() -> steplog.Steplog:
    client = _client("machine")

    @client.create_function(fn_id="order", trigger=steplog.TriggerEvent(event="shop/order"), retries=0)
    def order(ctx: Any) -> str:
        if ctx.event.data.get("bad"):
            ctx.step.run("charge", lambda: 1 / 0)
        return "ok"

    return client


def test_a_machine_takes_a_client() -> None:
    client = _machine_client()

    class Orders(DurableFunctionMachine):
        functions = client  # type: ignore[assignment]
        events = events("shop/order")
        store = "memory"

    machine = Orders()
    machine.teardown()


def test_teardown_does_not_mask_the_failure_of_an_example() -> None:
    client = _machine_client()

    class Orders(DurableFunctionMachine):
        functions = [client]
        events = events("shop/order")
        store = "memory"

        def check_at_end(self) -> None:
            for run in self.engine.runs("order"):
                run.assert_completed()

    machine = Orders()
    machine.engine.trigger("shop/order", {"bad": True})
    with pytest.raises(AssertionError, match="INVARIANT"):
        try:  # what hypothesis.stateful does: rules and invariants, then teardown() in a finally
            raise AssertionError("INVARIANT: no run may fail")
        finally:
            machine.teardown()


def test_a_machine_subclass_can_turn_crash_in_back_on() -> None:
    client = _machine_client()

    class Base(DurableFunctionMachine):
        functions = [client]
        events = events("shop/order", st.fixed_dictionaries({}))
        store = "memory"

    class WithCrashes(Base):
        crash_in = ["charge"]
        cancel_runs = True

    rules = {rule.function.__name__ for rule in WithCrashes.setup_state().rules}
    assert {"crash_in_a_step", "cancel_a_run"} <= rules, sorted(rules)


# -- the pytest plugin -------------------------------------------------------------------------------


@pytest.mark.steplog(store="memory")
class TestMarkersCombine:
    @pytest.mark.steplog(check_determinism=False)
    def test_the_class_marker_still_applies(self, steplog_engine: TestEngine) -> None:
        assert steplog_engine.check_determinism is False
        assert steplog_engine.path is None, f"the engine is on SQLite at {steplog_engine.path}"


def test_review_sanity_a_plain_test_engine_works() -> None:
    """Not a bug: the baseline the tests above depart from."""
    client = _client()

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/go"))
    def f(ctx: Any) -> int:
        ctx.step.sleep("nap", timedelta(hours=1))
        return 1

    with TestEngine(client, store="memory") as engine:
        run = engine.trigger("a/go").assert_waiting()
        engine.crash(downtime="2h")
        engine.run_until_idle()
        run.assert_completed(1)
