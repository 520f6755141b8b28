"""DBOS Transact side of the benchmarks.

``python -m benchmarks.run_dbos W1 --n 2000`` prints one JSON line per result on stdout.

DBOS is used with its defaults and a SQLite system database
(``system_database_url="sqlite:///<fresh dir>/dbos.sqlite"``), as in
``shared/reference/peer-measurements.md``: rollback journal + ``synchronous=FULL``, unbounded
executor threads, one thread per started workflow. ``DBOS.launch()`` is outside the timed region.
W4 runs on the real clock only (DBOS has no manual clock); W6 uses ``DBOS.recv`` and ``DBOS.send_bulk``.
W7 uses a partitioned queue (``DBOS.register_queue(name, partition_concurrency=2)``, one partition per
key, ``SetEnqueueOptions(queue_partition_key=...)``), W8 a queue with ``limiter={"limit": 100, "period": 1}``;
both with the default polling interval (1 s). For W7's ``us_admission_calls_per_run``, the queue
thread's dequeue calls on the system database are wrapped with timers while the pass runs (DBOS's
private ``_get_dbos_instance()._sys_db``; instrumentation only).
W9 (ingest): DBOS has no event API, so the runner builds what a DBOS user would (``make_w9_app``): a
Starlette endpoint ``POST /e/{event_key}``, served by uvicorn on a thread of this process as steplog's is,
that enqueues one workflow per event on a DBOS queue (``queue.enqueue(w9, event)``, each enqueue its own
committed transaction) and answers ``{"ids": [workflow ids], "status": 200}`` once every enqueue returned.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import flow, ingest
from benchmarks import workloads as wl

try:
    from dbos import DBOS, SendMessage, SetEnqueueOptions, SetWorkflowID
    from dbos._dbos import _get_dbos_instance
except ImportError:  # pragma: no cover - exercised only where dbos is missing
    print(
        "dbos is not installed: `pip install dbos` (the benchmarks were written against 3.4.0)",
        file=sys.stderr,
    )
    raise SystemExit(3) from None

SYSTEM = "dbos"
REPLY_TOPIC = "reply"
W6_RECV_TIMEOUT_S = 3600.0
#: After the last W6 workflow has reached ``DBOS.recv``, let its registration settle before timing.
W6_SETTLE_S = 1.0

#: W4: when each workflow reached its sleep and when its last step ran (``perf_counter``, by i).
ASLEEP: dict[int, float] = {}
FINISHED: dict[int, float] = {}


class Counter:
    """How many W6 workflows have reached ``DBOS.recv``; ``wait_for(n)`` blocks until n have."""

    def __init__(self) -> None:
        self._count = 0
        self._condition = threading.Condition()

    def add(self) -> None:
        with self._condition:
            self._count += 1
            self._condition.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self._count >= n, timeout)


RECEIVING = Counter()

#: W7: step bodies executing per key (replaced for each pass). W8: when each workflow started, by i.
W7_PEAKS = flow.PeakPerKey()
W8_STARTS: dict[int, float] = {}
W7_QUEUE = "w7"
W8_QUEUE = "w8"
W9_QUEUE = "ingest"
#: The queue thread's calls on the system database that decide which enqueued workflows start now.
DEQUEUE_CALLS = (
    "dequeue_scopes",
    "get_queue_partitions",
    "count_pending_queue_workflows",
    "start_queued_workflows",
    "start_queued_partitioned_workflows",
)


# --------------------------------------------------------------------------- steps and workflows


@DBOS.step()
def one() -> int:
    return 1


@DBOS.step()
def two() -> int:
    return 2


@DBOS.step()
def add(a: int, b: int) -> int:
    return a + b


@DBOS.workflow()
def w1(i: int) -> int:
    a = one()
    b = two()
    return add(a, b)


@DBOS.workflow()
def w2(steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += one()
    return total


@DBOS.workflow()
def w3(i: int) -> int:
    return one()


@DBOS.step()
def after_nap(i: int) -> int:
    FINISHED[i] = wl.now()
    return 1


@DBOS.workflow()
def w4(i: int) -> int:
    ASLEEP.setdefault(i, wl.now())
    DBOS.sleep(wl.W4_REAL_SLEEP_S)
    return after_nap(i)


@DBOS.workflow()
def w6(k: int) -> Any:
    RECEIVING.add()
    return DBOS.recv(REPLY_TOPIC, timeout_seconds=W6_RECV_TIMEOUT_S)


def w6_id(k: int) -> str:
    return f"w6-{k}"


@DBOS.step()
def w7_work(key: str) -> int:
    return W7_PEAKS.work(key, flow.W7_STEP_SLEEP_S)


@DBOS.workflow()
def w7(key: str) -> int:
    return w7_work(key)


@DBOS.workflow()
def w8(i: int) -> int:
    W8_STARTS.setdefault(i, wl.now())
    return one()


@DBOS.workflow()
def w9(event: dict[str, Any]) -> None:
    """W9's workflow, one per event: it does nothing (W9 measures accepting the events, not running them)."""


# --------------------------------------------------------------------------- lifecycle


@contextmanager
def launched(db_dir: Path) -> Iterator[None]:
    """Configure DBOS with a fresh SQLite system database, launch it, and shut it down after."""
    url = f"sqlite:///{db_dir / 'dbos.sqlite'}"
    DBOS(config={"name": "bench", "system_database_url": url})
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


def version() -> str:
    return metadata.version("dbos")


# --------------------------------------------------------------------------- workloads


def run_w1(db_dir: Path, n: int) -> dict[str, Any]:
    """Start ``n`` workflows back to back, then wait for every result."""
    with launched(db_dir):
        t0 = wl.now()
        handles = [DBOS.start_workflow(w1, i) for i in range(n)]
        t_started = wl.now()
        results = [handle.get_result() for handle in handles]
        seconds = wl.now() - t0
    if results != [3] * n:
        raise RuntimeError(f"W1: expected {n} results of 3, got {len(results)} ({set(results)})")
    record = wl.throughput_record(
        wl.W1, SYSTEM, runs=n, steps=n * wl.STEPS_PER_RUN_W1, seconds=seconds
    )
    record["send_seconds"] = round(t_started - t0, 4)
    return record


def run_w2(db_dir: Path, steps: int) -> dict[str, Any]:
    """One workflow of ``steps`` sequential steps, timed from start to result."""
    with launched(db_dir):
        t0 = wl.now()
        result = DBOS.start_workflow(w2, steps).get_result()
        seconds = wl.now() - t0
    if result != steps:
        raise RuntimeError(f"W2: expected {steps}, got {result!r}")
    record = wl.throughput_record(wl.W2, SYSTEM, runs=1, steps=steps, seconds=seconds)
    record["steps"] = steps
    return record


def run_w3(db_dir: Path, n: int) -> dict[str, Any]:
    """``n`` one-step workflows in sequence; each timed from start to result."""
    latencies: list[float] = []
    with launched(db_dir):
        for i in range(-wl.W3_WARMUP_RUNS, n):
            t0 = wl.now()
            result = DBOS.start_workflow(w3, i).get_result()
            elapsed = wl.now() - t0
            if result != 1:
                raise RuntimeError(f"W3: expected 1, got {result!r}")
            if i >= 0:
                latencies.append(elapsed)
    return wl.latency_record(
        wl.W3, SYSTEM, latencies_s=latencies, steps_per_run=wl.STEPS_PER_RUN_W3
    )


def run_w4(db_dir: Path, n: int, clock: str) -> dict[str, Any]:
    """Real clock only: ``n`` workflows sleep 2 s, then run one step; from the latest deadline to the last result."""
    if clock != wl.CLOCK_REAL:
        raise RuntimeError(wl.UNSUPPORTED[(SYSTEM, wl.W4, clock)])
    ASLEEP.clear()
    FINISHED.clear()
    with launched(db_dir):
        t0 = wl.now()
        handles = [DBOS.start_workflow(w4, i) for i in range(n)]
        park_seconds = wl.now() - t0  # start loop; the first deadlines have passed long before it ends
        sleeping_now = wl.current_rss_mb()
        results = [handle.get_result() for handle in handles]
        t_end = wl.now()
    if results != [1] * n or len(ASLEEP) != n or len(FINISHED) != n:
        raise RuntimeError(f"W4 real: expected {n} results of 1, got {len(results)} ({len(FINISHED)} marked)")
    deadlines = {i: t + wl.W4_REAL_SLEEP_S for i, t in ASLEEP.items()}
    latest = max(deadlines.values())
    return wl.sleep_record(
        SYSTEM, runs=n, clock=wl.CLOCK_REAL, seconds=t_end - latest, rss_mb=wl.peak_rss_mb(),
        sleeping_rss_mb=sleeping_now, park_seconds=park_seconds,
        lateness_s=[FINISHED[i] - deadlines[i] for i in deadlines],
        deadline_spread_s=latest - min(deadlines.values()),
    )


def run_w6(db_dir: Path, waits: int) -> dict[str, Any]:
    """``waits`` workflows block in ``DBOS.recv``; then one message each, by ``send_bulk`` in batches."""
    global RECEIVING
    RECEIVING = Counter()

    with launched(db_dir):
        t0 = wl.now()
        handles = []
        for k in range(waits):
            with SetWorkflowID(w6_id(k)):
                handles.append(DBOS.start_workflow(w6, k))
        if not RECEIVING.wait_for(waits, wl.RUN_TIMEOUT_S):
            raise RuntimeError(f"W6: not all {waits} workflows reached DBOS.recv")
        time.sleep(W6_SETTLE_S)
        park_seconds = wl.now() - t0
        t0 = wl.now()
        for batch in wl.batches(range(waits)):
            DBOS.send_bulk([SendMessage(w6_id(k), k, REPLY_TOPIC) for k in batch])
        t_sent = wl.now()
        results = [handle.get_result() for handle in handles]
        seconds = wl.now() - t0
    if results != list(range(waits)):
        raise RuntimeError(f"W6: expected each workflow to receive its own message, got {len(results)} results")
    return wl.fan_in_record(
        SYSTEM, waits=waits, seconds=seconds, send_seconds=t_sent - t0, park_seconds=park_seconds
    )


@contextmanager
def timed_dequeue(calls: flow.CallTimer) -> Iterator[None]:
    """Add up the wall time of the queue thread's dequeue calls (``DEQUEUE_CALLS``) while the block runs."""
    sys_db = _get_dbos_instance()._sys_db
    for name in DEQUEUE_CALLS:
        setattr(sys_db, name, calls.wrap(name, getattr(sys_db, name)))
    try:
        yield
    finally:
        for name in DEQUEUE_CALLS:
            delattr(sys_db, name)  # back to the class's methods


class W7Pass(NamedTuple):
    seconds: float
    send_seconds: float
    peaks: flow.PeakPerKey
    calls: flow.CallTimer


def _w7_pass(db_dir: Path, n: int, keyed: bool) -> W7Pass:
    """Enqueue ``n`` W7 workflows (keyed: one partition per key, 2 at once each) and wait for every result."""
    global W7_PEAKS
    W7_PEAKS = flow.PeakPerKey()
    calls = flow.CallTimer()
    db_dir.mkdir()
    keys = [flow.w7_key(i) for i in range(n)]
    with launched(db_dir):
        if keyed:
            queue = DBOS.register_queue(W7_QUEUE, partition_concurrency=flow.W7_LIMIT)
        else:
            queue = DBOS.register_queue(W7_QUEUE)
        with timed_dequeue(calls):
            t0 = wl.now()
            handles = []
            for key in keys:
                if keyed:
                    with SetEnqueueOptions(queue_partition_key=key):
                        handles.append(queue.enqueue(w7, key))
                else:
                    handles.append(queue.enqueue(w7, key))
            t_sent = wl.now()
            results = [handle.get_result() for handle in handles]
            seconds = wl.now() - t0
    if results != [1] * n:
        raise RuntimeError(f"W7 ({'keyed' if keyed else 'no limit'}): expected {n} results of 1, got {len(results)}")
    return W7Pass(seconds, t_sent - t0, W7_PEAKS, calls)


def run_w7(db_dir: Path, n: int) -> dict[str, Any]:
    """``n`` workflows over 100 partitions, 2 per partition at once; timed without the limit, then with it."""
    _w7_pass(db_dir / "warmup-free", flow.W7_WARMUP_RUNS, keyed=False)
    _w7_pass(db_dir / "warmup-keyed", flow.W7_WARMUP_RUNS, keyed=True)
    free = _w7_pass(db_dir / "free", n, keyed=False)
    keyed = _w7_pass(db_dir / "keyed", n, keyed=True)
    return flow.concurrency_record(
        SYSTEM, runs=n, seconds=keyed.seconds, seconds_without=free.seconds, send_seconds=keyed.send_seconds,
        peak=keyed.peaks, peak_without=free.peaks, calls=keyed.calls, calls_without=free.calls,
        extra={"send_seconds_without": round(free.send_seconds, 4)},
    )


def run_w8(db_dir: Path, n: int) -> dict[str, Any]:
    """Enqueue ``n`` workflows on a queue limited to 100 starts/s; wait for every result."""
    W8_STARTS.clear()
    with launched(db_dir):
        queue = DBOS.register_queue(W8_QUEUE, limiter={"limit": flow.W8_LIMIT, "period": float(flow.W8_PERIOD_S)})
        user0, sys0 = flow.cpu_times()
        t0 = wl.now()
        handles = [queue.enqueue(w8, i) for i in range(n)]
        t_sent = wl.now()
        results = [handle.get_result() for handle in handles]
        seconds = wl.now() - t0
        user1, sys1 = flow.cpu_times()
    return flow.throttle_record(
        SYSTEM, events=n, completed=sum(1 for result in results if result == 1), seconds=seconds,
        send_seconds=t_sent - t0, cpu_seconds=(user1 - user0) + (sys1 - sys0), starts=list(W8_STARTS.values()),
        t0=t0, burst=None, bound=flow.W8_BOUND_DBOS, extra={"cpu_user_s": round(user1 - user0, 3), "cpu_sys_s": round(sys1 - sys0, 3)},
    )


# --------------------------------------------------------------------------- W9 (ingest)


def make_w9_app(queue: Any) -> Any:
    """An event endpoint on DBOS, as a DBOS user would write one (DBOS has none): ``POST /e/{event_key}``
    takes one event object or a JSON array of them, enqueues one ``w9`` workflow per event on ``queue``
    (each ``enqueue`` commits its own transaction before it returns), then answers Inngest's
    ``{"ids": [...], "status": 200}`` with the workflow ids. The enqueues run in Starlette's thread pool
    (they block), one request's events one after another. ``GET /health`` answers ``{"status": "ok"}``.
    No key check and no validation beyond the JSON shape: it is the benchmark's endpoint, not a product."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def enqueue_all(events: list[dict[str, Any]]) -> list[str]:
        return [queue.enqueue(w9, event).workflow_id for event in events]

    async def receive(request: Request) -> Response:
        value = json.loads(await request.body())
        events = [value] if isinstance(value, dict) else list(value)
        ids = await run_in_threadpool(enqueue_all, events)
        return JSONResponse({"ids": ids, "status": 200})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/e/{event_key}", receive, methods=["POST"]), Route("/health", health)])


def run_w9(db_dir: Path, n: int, batch: int) -> dict[str, Any]:
    """8 client processes post ``n`` events in batches of ``batch`` to the endpoint above; then the system
    database must hold exactly one ``w9`` workflow per acknowledged event (``list_workflows`` on the queue)."""
    sock, port = ingest.listener()
    with launched(db_dir):
        queue = DBOS.register_queue(W9_QUEUE)
        with ingest.serving(make_w9_app(queue), sock):
            result = ingest.drive(port, n, batch)
        rows = DBOS.list_workflows(queue_name=W9_QUEUE, load_input=False, load_output=False)
        logged = [row.workflow_id for row in rows]
    ingest.check_ids(result, logged, n, "the system database")
    return ingest.ingest_record(SYSTEM, events=n, batch=batch, result=result)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    wl.W1: run_w1, wl.W2: run_w2, wl.W3: run_w3, wl.W4: run_w4, wl.W6: run_w6, wl.W7: run_w7, wl.W8: run_w8,
    wl.W9: run_w9,
}


def main() -> int:
    return wl.child_main(SYSTEM, version, RUNNERS)


if __name__ == "__main__":
    raise SystemExit(main())
