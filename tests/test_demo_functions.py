"""steplog's own demo shop (``steplog.demo.create_client``), tested the way a user tests theirs: with
``steplog.testing`` (the ``steplog_engine`` fixture on virtual time, step stubs, crashes, replay).

- checkout: the charge is retried 1 s later (the demo's own gateway timeout, or a stub), fails the
  run once its retries are spent or at once on a NonRetriableError, and runs again after a crash
  in the middle of the charge;
- vip-gift: only for totals of 100 or more;
- ship-order: waits up to a minute for its order's packing event: packed in time, not packed,
  packed around a crash;
- audit-log: one run per shop/* event, none for other events or a duplicate;
- every run ``steplog demo`` records (really, on a SQLite file) replays against the demo's code.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from steplog.engine import RunProjector, queries
from steplog.engine import records as r
from steplog.eventstore import SqliteEventStore, parse_time

import steplog
from steplog.demo import CART_ABANDONED, ORDER_PACKED, ORDER_PLACED, create_client, run_demo
from steplog.testing import RecordedRun, TestEngine, TestRun, assert_replays, export_run, replay

TICK = timedelta(microseconds=1)
MINUTE = timedelta(minutes=1)
SHIPPED = "shipped order-1 from north"
NOT_PACKED = "not packed within a minute"


@pytest.fixture
def steplog_functions() -> steplog.Steplog:
    """The functions ``steplog_engine`` runs: the demo's client (never started, so it opens no database)."""
    return create_client(":memory:")


def order(n: int = 1, *, total: int = 42, **extra: Any) -> dict[str, Any]:
    data = {"order_id": f"order-{n}", "items": 2, "total": total, "email": f"customer{n}@example.com", **extra}
    return {"name": ORDER_PLACED, "data": data}


def packed(n: int = 1) -> dict[str, Any]:
    return {"name": ORDER_PACKED, "data": {"order_id": f"order-{n}", "warehouse": "north"}}


def place(engine: TestEngine, event: dict[str, Any]) -> dict[str, TestRun]:
    """Send an event, run until idle, and return the runs it started by function id."""
    [event_id] = engine.send(event)
    engine.run_until_idle()
    runs = {run.function_id: run for run in engine.runs_for(event_id)}
    assert len(runs) == len(engine.runs_for(event_id)), "two runs of one function for one event"
    return runs


# -- checkout: the charge and its retries ------------------------------------------------------------


def test_a_charge_that_times_out_once_is_retried_a_second_later(steplog_engine: TestEngine) -> None:
    started = steplog_engine.now
    checkout = place(steplog_engine, order(total=42, simulate="gateway-timeout"))["checkout"]
    checkout.assert_waiting()
    [failed] = checkout.step_attempts("charge-card")
    assert failed.error is not None and (failed.error["name"], failed.error["message"]) == (
        "ConnectionError", "payment gateway timed out")
    assert parse_time(failed.retry_at) == started + timedelta(seconds=1)

    assert steplog_engine.advance(timedelta(seconds=1) - TICK) == 0  # not a microsecond early
    checkout.assert_waiting()
    steplog_engine.advance(TICK)
    checkout.assert_completed({"charge": "ch_order-1", "receipt": "receipt sent to customer1@example.com"})
    checkout.assert_step("reserve-stock", attempts=1).assert_step("charge-card", attempts=2)
    checkout.assert_step("send-receipt", output="receipt sent to customer1@example.com", attempts=1)
    assert checkout.ended_at == started + timedelta(seconds=1)


def test_an_order_without_trouble_is_charged_at_once(steplog_engine: TestEngine) -> None:
    checkout = place(steplog_engine, order(2, total=65))["checkout"]
    checkout.assert_completed({"charge": "ch_order-2", "receipt": "receipt sent to customer2@example.com"})
    checkout.assert_step("charge-card", output={"charge": "ch_order-2", "amount": 65}, attempts=1)
    assert checkout.completed_steps == ["reserve-stock", "charge-card", "send-receipt"]


def test_a_stubbed_charge_succeeds_on_its_last_retry(steplog_engine: TestEngine) -> None:
    charge = steplog_engine.stub("charge-card", fails=3, function="checkout")  # the policy allows 3 retries
    started = steplog_engine.now
    checkout = place(steplog_engine, order())["checkout"]
    steplog_engine.settle()
    checkout.assert_completed().assert_step("charge-card", output={"charge": "ch_order-1", "amount": 42}, attempts=4)
    assert charge.attempts == [0, 1, 2, 3]
    tried = checkout.step_attempts("charge-card")
    assert [parse_time(a.started_at) - started for a in tried] == [timedelta(seconds=s) for s in (0, 1, 2, 3)]


def test_a_charge_that_keeps_failing_fails_the_checkout_without_a_receipt(steplog_engine: TestEngine) -> None:
    charge = steplog_engine.stub("charge-card", fails=4, function="checkout")
    checkout = place(steplog_engine, order())["checkout"]
    steplog_engine.settle()
    checkout.assert_failed("StepError", "step 'charge-card' failed: StubError")
    checkout.assert_no_step("send-receipt")
    assert charge.attempts == [0, 1, 2, 3]
    assert [a.status for a in checkout.step_attempts("charge-card")] == ["errored"] * 3 + ["failed"]


def test_a_declined_card_fails_the_checkout_at_once(steplog_engine: TestEngine) -> None:
    charge = steplog_engine.stub("charge-card", raises=steplog.NonRetriableError("card declined"))
    checkout = place(steplog_engine, order())["checkout"]
    checkout.assert_failed("StepError", "NonRetriableError: card declined").assert_no_step("send-receipt")
    assert charge.calls == 1
    assert steplog_engine.next_timer() is not None  # only ship-order's wait is left
    steplog_engine.settle()
    assert charge.calls == 1


def test_a_crash_in_the_middle_of_the_charge_charges_again(steplog_engine: TestEngine) -> None:
    """The charge is not idempotent: a crash after the gateway answered and before the commit
    charges the card a second time (what an idempotency key would be for)."""
    charge = steplog_engine.crash_during("charge-card")
    checkout = place(steplog_engine, order())["checkout"]
    checkout.assert_completed().assert_step("charge-card", attempts=1)
    assert (charge.calls, charge.crashed, steplog_engine.crashes) == (2, 1, 1)
    assert charge.attempts == [0, 0]  # the lost attempt left nothing in the log


# -- vip-gift ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "gift"), [(99, False), (100, True), (250, True)])
def test_a_gift_for_orders_of_100_or_more(steplog_engine: TestEngine, total: int, gift: bool) -> None:
    runs = place(steplog_engine, order(total=total))
    assert set(runs) == {"checkout", "ship-order", "audit-log"} | ({"vip-gift"} if gift else set())
    if gift:
        runs["vip-gift"].assert_completed("thank-you note with a tote bag for customer1@example.com")


# -- ship-order: a one-minute wait for the packing event ------------------------------------------------


def test_an_order_packed_within_the_minute_is_shipped(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order())["ship-order"]
    ship.assert_waiting()
    [waiting] = ship.step_attempts("wait-for-packing")
    assert waiting.waiting_for == ORDER_PACKED
    assert parse_time(waiting.wake_at) == steplog_engine.now + MINUTE
    steplog_engine.advance(MINUTE - TICK)
    ship.assert_waiting()
    place(steplog_engine, packed())
    ship.assert_completed(SHIPPED).assert_step("ship", output=SHIPPED, attempts=1)


def test_another_orders_packing_does_not_ship_this_one(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order(1))["ship-order"]
    place(steplog_engine, packed(2))
    ship.assert_waiting()
    steplog_engine.advance(MINUTE)
    ship.assert_completed(NOT_PACKED).assert_no_step("ship")


def test_an_order_not_packed_within_the_minute_is_not_shipped(steplog_engine: TestEngine) -> None:
    started = steplog_engine.now
    ship = place(steplog_engine, order())["ship-order"]
    steplog_engine.advance(MINUTE - TICK)
    ship.assert_waiting()
    steplog_engine.advance(TICK)
    ship.assert_completed(NOT_PACKED).assert_no_step("ship")
    assert ship.ended_at == started + MINUTE
    late = place(steplog_engine, packed())  # too late: the audit log notes it, nothing else runs
    assert set(late) == {"audit-log"}
    ship.assert_completed(NOT_PACKED)


def test_packing_at_the_deadline_is_too_late(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order())["ship-order"]
    steplog_engine.advance(MINUTE)
    place(steplog_engine, packed())
    ship.assert_completed(NOT_PACKED).assert_no_step("ship")


def test_an_order_packed_after_a_crash_is_shipped(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order())["ship-order"]
    steplog_engine.crash(downtime="30s")  # the wait outlives the process
    steplog_engine.run_until_idle()
    ship.assert_waiting()
    place(steplog_engine, packed())
    ship.assert_completed(SHIPPED)


def test_a_packing_acknowledged_before_a_crash_ships_however_late_the_restart(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order())["ship-order"]
    steplog_engine.advance("50s")
    steplog_engine.send(packed())  # acknowledged (committed), then the process dies before it runs anything
    steplog_engine.crash(downtime="5m")  # back well after the deadline
    steplog_engine.run_until_idle()
    ship.assert_completed(SHIPPED)
    audits = steplog_engine.runs(function_id="audit-log")
    assert [run.status for run in audits] == ["completed", "completed"]  # the order, then its packing
    assert [run.event["name"] for run in audits] == [ORDER_PLACED, ORDER_PACKED]


def test_an_order_whose_minute_passed_while_down_is_not_shipped(steplog_engine: TestEngine) -> None:
    ship = place(steplog_engine, order())["ship-order"]
    steplog_engine.crash(downtime="2m")
    steplog_engine.run_until_idle()
    ship.assert_completed(NOT_PACKED)
    place(steplog_engine, packed())
    ship.assert_completed(NOT_PACKED).assert_no_step("ship")


# -- audit-log ---------------------------------------------------------------------------------------


def test_every_shop_event_is_audited_once(steplog_engine: TestEngine) -> None:
    sent = [
        {**order(1), "id": "order-1-placed"},
        {"name": CART_ABANDONED, "id": "cart-1", "data": {"cart_id": "cart-1", "items": 2}},
        packed(1),
        {"name": "shop/refund.requested", "data": {"order_id": "order-1"}},
    ]
    ids = steplog_engine.send(sent)
    steplog_engine.send({"name": "billing/invoice.sent", "data": {}})  # not a shop event
    steplog_engine.send({**order(1), "id": "order-1-placed"})  # a duplicate: starts nothing
    steplog_engine.settle()
    audits = steplog_engine.runs(function_id="audit-log")
    assert len(audits) == len(sent)
    for event, event_id in zip(sent, ids, strict=True):
        [audit] = [run for run in steplog_engine.runs_for(event_id) if run.function_id == "audit-log"]
        audit.assert_completed(f"{event['name']} {event.get('id', event_id)}").assert_step("record", attempts=1)


# -- the real demo, replayed ---------------------------------------------------------------------------


def test_every_run_of_the_demo_replays_against_its_code(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    out = io.StringIO()
    assert run_demo(str(db), out=out) == 0, out.getvalue()

    store = SqliteEventStore(db, RunProjector(), read_only=True)
    try:
        rows = queries.list_runs(store, limit=None)
        recorded = [export_run(store, row["run_id"]) for row in rows]
    finally:
        store.close()
    # two orders (the second a VIP's), an abandoned cart, a duplicate, two packing events
    assert sorted(run.function_id for run in recorded) == sorted(
        ["checkout"] * 2 + ["vip-gift"] + ["ship-order"] * 2 + ["audit-log"] * 5)
    assert {run.status for run in recorded} == {"completed"}

    demo = create_client(":memory:")
    for run in recorded:
        report = assert_replays(run, demo)
        assert report.ended == "completed", report
        saved = RecordedRun.load(run.save(tmp_path / f"{run.run_id}.json"))  # as `steplog export` files
        assert assert_replays(saved, demo).reached == report.reached
    retried = [run for run in recorded if run.function_id == "checkout"
               and any(e.type == r.STEP_ERRORED for e in run.entries)]
    assert len(retried) == 1  # order-1's charge timed out once, and that run replays too

    # the check has teeth: a checkout whose charge step got a new id does not replay
    changed = steplog.Steplog(app_id="shop", db=":memory:")

    @changed.create_function(fn_id="checkout", trigger=steplog.TriggerEvent(event=ORDER_PLACED),
                             retries=steplog.RetryPolicy.fixed(3, "1s"))
    def checkout(ctx: steplog.Context) -> Any:
        ctx.step.run("reserve-stock", lambda: None)
        ctx.step.run("charge", lambda: None)
        return None

    for run in recorded:
        if run.function_id == "checkout":
            report = replay(run, changed)  # replay (not assert_replays) returns the report of a divergence
            assert not report.ok and "'charge'" in str(report), report
