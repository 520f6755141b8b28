"""Regressions found by review: each test is a case that once went wrong."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from steplog.engine import Context, Engine, FunctionRegistry, ManualClock, RunProjector, TriggerEvent, define_function
from steplog.engine import records as r
from steplog.engine.coordination import Committer
from steplog.eventstore import Append, MemoryEventStore

GO, PAID = "app/go", "app/paid"


def engine_for(handler: Any, clock: ManualClock, committer: Committer | None = None) -> Engine:
    registry = FunctionRegistry()
    registry.add(define_function(handler, fn_id="f", trigger=TriggerEvent(event=GO)))
    return Engine(MemoryEventStore(RunProjector()), registry=registry, clock=clock, committer=committer)


def only_run(engine: Engine) -> str:
    [row] = engine.store.query("runs", where={"function_id": "f"})
    return str(row["run_id"])


def test_an_async_task_waiting_for_the_ended_code_is_cancelled_not_awaited(clock: ManualClock) -> None:
    async def handler(ctx: Context) -> Any:
        ready = asyncio.Event()

        async def worker() -> Any:
            await ctx.step.run("fetch", lambda: 1)
            await ready.wait()  # only the main code sets it, after its sleep
            return await ctx.step.run("use", lambda: 2)

        task = asyncio.create_task(worker())
        await asyncio.sleep(0)
        await ctx.step.sleep("nap", "1h")
        ready.set()
        return await task

    engine = engine_for(handler, clock)
    engine.send({"name": GO})
    first = threading.Thread(target=engine.run_until_idle, daemon=True)  # a hang must fail, not stall the suite
    first.start()
    first.join(timeout=10)
    assert not first.is_alive(), "the invocation hung on a task waiting for the function's ended code"
    assert engine.advance(timedelta(hours=1)) >= 1
    run = engine.store.query("runs", where={"run_id": only_run(engine)})[0]
    assert run["status"] == "completed" and run["output"] == "2"


def test_a_failed_batch_leaves_no_pause_that_was_never_registered(clock: ManualClock) -> None:
    """A registration and a matching send planned in one batch whose commit fails: neither is kept."""
    failing = {"next": False}

    def handler(ctx: Context) -> Any:
        event = ctx.step.wait_for_event("w", event=PAID, timeout="1h")
        return None if event is None else event.data

    def committer(appends: Sequence[Append]) -> Any:
        if failing["next"]:
            failing["next"] = False
            raise OSError("disk full")
        return engine.store.commit(appends, now=clock.now())

    engine = engine_for(handler, clock, committer)
    engine.send({"name": GO})
    engine.run_until_idle()
    run_id = only_run(engine)
    pause = engine.coordinator.pauses.get(run_id, "w")
    assert pause is not None
    engine.coordinator.pauses.remove(run_id, "w")  # replay the registration inside a failing batch
    from steplog.engine.coordination import RegisterWait, SendEvents

    state = engine.load(run_id)
    failing["next"] = True
    with pytest.raises(OSError):
        engine.coordinator.handle(
            [RegisterWait(run_id, state.version, (), pause), SendEvents({"name": PAID, "data": {"n": 1}})],
            clock.now(),
        )
    assert engine.coordinator.pauses.get(run_id, "w") is None


def test_a_signal_landing_during_an_invocation_still_wakes_the_run_after_a_restart(clock: ManualClock) -> None:
    holder: dict[str, Engine] = {}

    def handler(ctx: Context) -> Any:
        def waiting() -> Any:
            return ctx.step.wait_for_event("w", event=PAID, timeout="7d")

        def working() -> str:
            ctx.step.sleep("s1", "1h")
            ctx.step.run("send", lambda: holder["engine"].accept({"name": PAID}) and 1)
            ctx.step.sleep("s2", "1d")
            return "b"

        got = ctx.group.parallel((waiting, working))
        return [got[0] is not None, got[1]]

    engine = engine_for(handler, clock)
    holder["engine"] = engine
    engine.send({"name": GO})
    engine.run_until_idle()
    clock.advance(timedelta(hours=1))
    run_id = only_run(engine)
    engine.invoke(run_id)  # the woken invocation, during which the wait is resolved; then a "crash"
    restarted = Engine(engine.store, registry=engine.registry, clock=clock)
    holder["engine"] = restarted
    restarted.start()
    assert restarted.run_until_idle() == 1  # woken at once for the signal, not a day later
    state = restarted.load(run_id)
    assert state.memo["w"].output is not None


def test_a_deadline_passing_during_an_invocation_counts_for_its_due_time(clock: ManualClock) -> None:
    async def handler(ctx: Context) -> Any:
        async def short_wait() -> Any:
            return await ctx.step.wait_for_event("w", event=PAID, timeout="10s")

        async def long_work() -> str:
            await ctx.step.run("slow", lambda: clock.advance(timedelta(seconds=30)) and "done")
            await ctx.step.sleep("nap", "1d")
            return "b"

        return list(await asyncio.gather(short_wait(), long_work()))

    engine = engine_for(handler, clock)
    engine.send({"name": GO})
    engine.run_until_idle()
    entries = engine.store.read_stream(r.run_stream(only_run(engine)))
    [waiting] = [e.data for e in entries if e.type == r.STEP_WAITING]
    [sleeping] = [e.data for e in entries if e.type == r.STEP_SLEEPING]
    # recorded when the nap began, 30 s in: the wait's expiry (already past) is still the next wake,
    # so a crash right then would wake the run for it at once, not after the 1-day nap
    assert sleeping["due_at"] == waiting["pause"]["expires_at"]
    [completed_wait] = [e.data for e in entries if e.type == r.STEP_COMPLETED and e.data["step"] == "w"]
    assert completed_wait["output"] is None
