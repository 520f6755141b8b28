"""The soak's child process: the real threaded client on a SQLite file with the real clock, and a
load driver sending a steady mixed load for a given time.

    python soak_app.py DB --seconds 600 --rate 30 --status STATUS --acks ACKS [--wedge] [--trace TRACE]
                      [--census CENSUS]

The load, per event sent (``--rate`` a second, one event per ``send``):

    soak/order      35%  steps that fail ~1% of the time (retried after 0.2 s), a 1-5 s sleep, a wait for
                         its payment (5 s timeout), ``invoke`` of soak-charge (the default timeout,
                         a year: the run's timer is armed that far and dropped when it ends), a last step
    soak/payment         sent for ~80% of orders, 1-4 s after the order's sleep: most resolve their
                         wait, some arrive before it began or after it timed out, so those time out
    soak/throttled  15%  a throttled function (10/s, burst 2)
    soak/keyed      20%  concurrency 2 per account (8 accounts), steps that each work 20 ms
    soak/ping       ~27% one step
    duplicates      ~3%  an earlier event sent again with the same id: recorded, starts nothing

The child appends JSON lines to ``STATUS`` (``ready``, ``warm``, ``load_done``, ``stopped``, and
every 10 s ``mem``: SQLite's allocator, Python's blocks, threads, the engine's largest containers)
and every id that ``send`` acknowledged to ``ACKS``. After the load it keeps the engine running
until SIGTERM, then stops it cleanly. ``--wedge`` adds a function whose second step blocks until
SIGTERM, and sends it one event first: the stuck-run detector's positive control.

To find a leak: ``--trace`` writes the largest tracemalloc growths between the end of warm-up and
the end of the load to ``TRACE``; ``--census`` writes the size of every container reachable from
the client (engine, actors, store) at SIGTERM to ``CENSUS``: after the backlog drained, anything
that holds per-run state should be empty.
"""

from __future__ import annotations

import _sqlite3
import argparse
import ctypes
import heapq
import json
import os
import random
import signal
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

import steplog

RETRY = steplog.RetryPolicy.fixed(4, 0.2)
STEP_FAILURE_RATE = 0.01
PAYMENT_SHARE = 0.8
WAIT_TIMEOUT_S = 5
ACCOUNTS = 8
KEYED_WORK_S = 0.02
WARM_UP_SHARE = 0.2
MEMORY_REPORT_S = 10.0
CENSUS_TOP = 6
MIX: tuple[tuple[str, float], ...] = (
    ("order", 0.35), ("throttled", 0.15), ("keyed", 0.20), ("duplicate", 0.03), ("ping", 0.27),
)


class FlakyStepError(Exception):
    """A step body's simulated transient failure; the retry policy tries it again."""


def flaky(value: Any) -> Callable[[], Any]:
    """A step body that fails about once in a hundred attempts."""

    def body() -> Any:
        if random.random() < STEP_FAILURE_RATE:
            raise FlakyStepError("transient failure (simulated)")
        return value

    return body


def define_functions(client: steplog.Steplog, wedge: threading.Event | None) -> None:
    """The soak's functions on ``client``; with ``wedge``, also one whose second step blocks on it."""

    @client.create_function(fn_id="soak-charge", trigger=steplog.TriggerEvent(event="soak/charge.manual"),
                            retries=RETRY)
    def charge(ctx: steplog.Context) -> dict[str, Any]:
        amount = ctx.step.run("authorize", flaky(ctx.event.data.get("amount", 0)))
        return {"charged": ctx.step.run("capture", flaky(amount))}

    @client.create_function(fn_id="soak-order", trigger=steplog.TriggerEvent(event="soak/order"), retries=RETRY)
    def order(ctx: steplog.Context) -> dict[str, Any]:
        data = ctx.event.data
        ctx.step.run("reserve", flaky(data["order"]))
        amount = ctx.step.run("price", flaky(data["amount"]))
        ctx.step.sleep("cool-off", data["nap"])
        payment = ctx.step.wait_for_event("payment", event="soak/payment", timeout=WAIT_TIMEOUT_S, match="data.order")
        charged = None
        if payment is not None:
            charged = ctx.step.invoke("charge", function=charge, data={"amount": amount})  # times out in a year
        return {"paid": payment is not None, "charged": charged, "done": ctx.step.run("confirm", flaky(True))}

    @client.create_function(fn_id="soak-throttled", trigger=steplog.TriggerEvent(event="soak/throttled"),
                            retries=RETRY, throttle=steplog.Throttle(limit=10, period="1s", burst=2))
    def throttled(ctx: steplog.Context) -> int:
        first = ctx.step.run("first", flaky(1))
        return int(ctx.step.run("second", flaky(first + 1)))

    def work(value: Any) -> Callable[[], Any]:
        def body() -> Any:
            time.sleep(KEYED_WORK_S)
            return flaky(value)()

        return body

    @client.create_function(fn_id="soak-keyed", trigger=steplog.TriggerEvent(event="soak/keyed"), retries=RETRY,
                            concurrency=steplog.Concurrency(limit=2, key="event.data.account"))
    def keyed(ctx: steplog.Context) -> int:
        ctx.step.run("load", work(1))
        return int(ctx.step.run("store", work(2)))

    @client.create_function(fn_id="soak-ping", trigger=steplog.TriggerEvent(event="soak/ping"), retries=RETRY)
    def ping(ctx: steplog.Context) -> str:
        return str(ctx.step.run("pong", flaky("pong")))

    if wedge is not None:
        @client.create_function(fn_id="soak-wedged", trigger=steplog.TriggerEvent(event="soak/wedge"), retries=0)
        def wedged(ctx: steplog.Context) -> str:
            ctx.step.run("before", lambda: "fine")
            return str(ctx.step.run("blocked", lambda: wedge.wait()))


class Driver:
    """Sends the mixed load at a steady rate and records every acknowledged id."""

    def __init__(self, client: steplog.Steplog, acks: Path, rate: float, seed: int) -> None:
        self.client = client
        self.rate = rate
        self.rng = random.Random(seed)
        self.acks = acks.open("a", encoding="utf-8")
        self.sent = 0
        self.payments: list[tuple[float, int, dict[str, Any]]] = []  # (due, n, event), a heap
        self.recent: list[dict[str, Any]] = []  # events that a duplicate may repeat

    def send(self, event: dict[str, Any]) -> None:
        ids = self.client.send(event)
        self.acks.write("".join(f"{event_id}\n" for event_id in ids))
        self.sent += 1

    def run(self, seconds: float, stop: threading.Event, on_warm: Callable[[], None]) -> None:
        start = time.monotonic()
        warm_at = start + seconds * WARM_UP_SHARE
        n = 0
        while not stop.is_set():
            now = time.monotonic()
            if now - start >= seconds:
                break
            if on_warm is not None and now >= warm_at:
                on_warm()
                on_warm = None  # type: ignore[assignment]
            self.send_due_payments(now)
            self.send(self.next_event(n, now))
            n += 1
            self.acks.flush()
            stop.wait(max(0.0, start + n / self.rate - time.monotonic()))
        self.acks.flush()

    def send_due_payments(self, now: float) -> None:
        while self.payments and self.payments[0][0] <= now:
            _, _, payment = heapq.heappop(self.payments)
            self.send(payment)

    def next_event(self, n: int, now: float) -> dict[str, Any]:
        kind = self.rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        if kind == "duplicate" and self.recent:
            return self.rng.choice(self.recent)
        if kind == "order":
            return self.order(n, now)
        data: dict[str, Any] = {"n": n}
        if kind == "keyed":
            data["account"] = f"acct-{self.rng.randrange(ACCOUNTS)}"
        event = {"name": f"soak/{'ping' if kind == 'duplicate' else kind}", "id": f"e-{n}", "data": data}
        self.remember(event)
        return event

    def order(self, n: int, now: float) -> dict[str, Any]:
        nap = self.rng.randint(1, 5)
        event = {"name": "soak/order", "id": f"e-{n}", "data": {"order": f"o-{n}", "amount": n % 97, "nap": nap}}
        if self.rng.random() < PAYMENT_SHARE:
            due = now + nap + self.rng.uniform(1.0, 4.0)
            heapq.heappush(self.payments, (due, n, {"name": "soak/payment", "id": f"p-{n}",
                                                    "data": {"order": f"o-{n}"}}))
        self.remember(event)
        return event

    def remember(self, event: dict[str, Any]) -> None:
        self.recent.append(event)
        if len(self.recent) > 100:
            del self.recent[:50]


class Status:
    """The JSON lines the parent reads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, **fields: Any) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"t": time.time(), **fields}) + "\n")


def sqlite_memory_used() -> int:
    """Bytes SQLite's allocator holds in this process (page caches, statements), via the C API."""
    used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used())


def report_memory(client: steplog.Steplog, status: Status, stop: threading.Event, every_s: float) -> None:
    """Where the memory is, every few seconds: SQLite's allocator, Python's blocks, threads, and the
    engine's largest containers."""
    while not stop.wait(every_s):
        try:
            sizes = census(client)
        except RuntimeError:  # a container changed size while it was read: next time
            sizes = {}
        largest = dict(sorted(sizes.items(), key=lambda item: -item[1])[:CENSUS_TOP])
        status.write(mem=True, sqlite_mb=round(sqlite_memory_used() / 2**20, 2), py_blocks=sys.getallocatedblocks(),
                     threads=threading.active_count(), largest=largest)


def census(root: Any, name: str = "client", depth: int = 4, seen: set[int] | None = None) -> dict[str, int]:
    """The size of every container held by steplog's objects reachable from ``root``: what a leak
    of per-run state would show as growing with the number of runs."""
    seen = set() if seen is None else seen
    sizes: dict[str, int] = {}
    if id(root) in seen or depth == 0:
        return sizes
    seen.add(id(root))
    for attribute, value in _attributes(root):
        path = f"{name}.{attribute}"
        if isinstance(value, (dict, list, set, frozenset, tuple, deque)):
            sizes[path] = len(value)
            values = value.values() if isinstance(value, dict) else value
            for index, item in enumerate(list(values)[:64]):
                if isinstance(item, pykka.ActorRef):
                    sizes.update(census(item._actor_weakref(), f"{path}[{index}]", depth - 1, seen))
                elif type(item).__module__.startswith("steplog"):
                    sizes.update(census(item, f"{path}[{index}]", depth - 1, seen))
        elif isinstance(value, pykka.ActorRef):
            sizes.update(census(value._actor_weakref(), path, depth - 1, seen))
        elif type(value).__module__.startswith("steplog"):
            sizes.update(census(value, path, depth - 1, seen))
    return sizes


def _attributes(value: Any) -> list[tuple[str, Any]]:
    try:
        return list(vars(value).items())
    except TypeError:  # slotted
        return [(slot, getattr(value, slot)) for slot in getattr(type(value), "__slots__", ()) if hasattr(value, slot)]


def trace_growth(trace: Path, baseline: tracemalloc.Snapshot) -> None:
    """The 30 source lines whose allocations grew most since ``baseline``."""
    stats = tracemalloc.take_snapshot().compare_to(baseline, "lineno")
    with trace.open("w", encoding="utf-8") as out:
        for stat in stats[:30]:
            out.write(f"{stat}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--acks", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wedge", action="store_true")
    parser.add_argument("--trace", type=Path)
    parser.add_argument("--census", type=Path)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    wedge = threading.Event() if args.wedge else None
    if args.trace:
        tracemalloc.start(8)
    status = Status(args.status)
    client = steplog.Steplog(app_id="soak", db=args.db)
    define_functions(client, wedge)
    client.start()
    status.write(ready=True, pid=os.getpid())
    threading.Thread(target=report_memory, args=(client, status, stop, MEMORY_REPORT_S), daemon=True).start()
    driver = Driver(client, args.acks, args.rate, args.seed)
    if wedge is not None:
        driver.send({"name": "soak/wedge", "id": "wedge-1", "data": {}})
        driver.acks.flush()
    baseline: list[tracemalloc.Snapshot] = []

    def warm() -> None:
        status.write(warm=True, sent=driver.sent)
        if args.trace:
            baseline.append(tracemalloc.take_snapshot())

    driver.run(args.seconds, stop, warm)
    if args.trace and baseline:
        trace_growth(args.trace, baseline[0])
    status.write(load_done=True, sent=driver.sent)
    stop.wait()
    if args.census:
        args.census.write_text(json.dumps(census(client), indent=0, sort_keys=True), encoding="utf-8")
    if wedge is not None:
        wedge.set()
    client.stop(timeout=30)
    status.write(stopped=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
