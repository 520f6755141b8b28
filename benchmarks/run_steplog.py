"""steplog side of the benchmarks.

``python -m benchmarks.run_steplog W1 --n 2000`` prints one JSON line per result on stdout.

steplog runs embedded with its defaults (SQLite file in a fresh directory, ``synchronous=FULL``),
except that the per-run step limit is raised to ``workloads.MAX_STEPS_PER_RUN`` so W2 can run
5,000 steps. Starting the engine (``with client:``) is outside the timed region, as
``DBOS.launch()`` is on the DBOS side.

W7 and W8 (flow control) build their own clients, with the concurrency or throttle option, and time
steplog's admission calls by wrapping them on the started client (``client.slots.offer`` and
``release``, and the flow gate's ``key_of``); nothing in steplog is changed.

W9 (ingest) serves ``steplog.server.create_app(client, ServerConfig(dev=True, ...))`` with uvicorn on a
thread of this process, with the client started, and drives it from 8 client processes (``ingest``).

Every use of steplog's API is in this module, in the "API" sections below: fix it there if it moves.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import flow, ingest
from benchmarks import workloads as wl

try:
    from steplog.actors.runtime import DEFAULT_MAX_ACTIVE
    from steplog.actors.slots import Slots
    from steplog.engine.expressions import compile_expression
    from steplog.engine.flow import gate as flow_gate

    import steplog
except ImportError as exc:  # pragma: no cover - exercised only where steplog is not importable
    print(f"steplog is not importable from the repo root: {exc}", file=sys.stderr)
    raise SystemExit(3) from None

SYSTEM = "steplog"
APP_ID = "bench"
EVENT_W1 = "bench/w1"
EVENT_W2 = "bench/w2"
EVENT_W3 = "bench/w3"
EVENT_W4 = "bench/w4"
EVENT_W6 = "bench/w6"
EVENT_W7 = "bench/w7"
EVENT_W8 = "bench/w8"
W7_KEY = "event.data.k"
EVENT_REPLY = "app/reply"
RESULT_TIMEOUT_S = wl.RUN_TIMEOUT_S

#: W4 on the real clock: when each run first reached its sleep and when its last step ran
#: (``perf_counter``, by run id). Left empty on the manual clock, so that it costs no memory there.
ASLEEP: dict[str, float] = {}
FINISHED: dict[str, float] = {}
MARK_TIMES = False


# --------------------------------------------------------------------------- API (steplog contract)


def _one() -> int:
    return 1


def _two() -> int:
    return 2


def _event_data(ctx: steplog.Context) -> dict[str, Any]:
    """``ctx.event.data``, as in Inngest's SDK."""
    event = ctx.event
    return dict(event.data)


def _after_nap(run_id: str) -> int:
    if MARK_TIMES:
        FINISHED[run_id] = wl.now()
    return 1


def make_client(db_dir: Path, clock: steplog.ManualClock | None = None) -> steplog.Steplog:
    """A client on a fresh SQLite file with the benchmark functions registered."""
    client = steplog.Steplog(
        app_id=APP_ID,
        db=str(db_dir / "steplog.sqlite"),
        clock=clock,
        max_steps_per_run=wl.MAX_STEPS_PER_RUN,
    )

    @client.create_function(fn_id="w1", trigger=steplog.TriggerEvent(event=EVENT_W1))
    def w1(ctx: steplog.Context) -> int:
        a = int(ctx.step.run("s1", _one))
        b = int(ctx.step.run("s2", _two))
        return int(ctx.step.run("s3", lambda: a + b))

    @client.create_function(fn_id="w2", trigger=steplog.TriggerEvent(event=EVENT_W2))
    def w2(ctx: steplog.Context) -> int:
        total = 0
        for _ in range(int(_event_data(ctx)["steps"])):
            total += int(ctx.step.run("s", _one))  # same id repeated: s, s:1, s:2, ...
        return total

    @client.create_function(fn_id="w3", trigger=steplog.TriggerEvent(event=EVENT_W3))
    def w3(ctx: steplog.Context) -> int:
        return int(ctx.step.run("s1", _one))

    @client.create_function(fn_id="w4", trigger=steplog.TriggerEvent(event=EVENT_W4))
    def w4(ctx: steplog.Context) -> int:
        if MARK_TIMES:
            ASLEEP.setdefault(ctx.run_id, wl.now())  # the function replays after its sleep
        ctx.step.sleep("nap", int(_event_data(ctx)["sleep"]))
        return int(ctx.step.run("after", _after_nap, ctx.run_id))

    @client.create_function(fn_id="w6", trigger=steplog.TriggerEvent(event=EVENT_W6))
    def w6(ctx: steplog.Context) -> Any:
        reply = ctx.step.wait_for_event("w", event=EVENT_REPLY, match="data.k", timeout="1h")
        return None if reply is None else reply.data["k"]

    return client


def send(client: steplog.Steplog, name: str, datas: Sequence[dict[str, Any]]) -> list[str]:
    """Send events; returns their ids once the events are committed."""
    return list(client.send([steplog.Event(name=name, data=data) for data in datas]))


def send_batched(client: steplog.Steplog, name: str, datas: Sequence[dict[str, Any]]) -> list[str]:
    """Send events in sends of at most ``wl.SEND_BATCH`` (steplog's per-send limit)."""
    ids: list[str] = []
    for batch in wl.batches(datas):
        ids.extend(send(client, name, batch))
    return ids


def runs_with_status(client: steplog.Steplog, function_id: str, status: str) -> list[dict[str, Any]]:
    return list(client.list_runs(function_id=function_id, status=status, limit=None))


def result_of(client: steplog.Steplog, event_id: str) -> Any:
    """Wait for the (single) run triggered by ``event_id`` and return its output.

    A send commits the event and the runs it starts together, so the run is there at once.
    """
    handles = client.runs_for_event(event_id)
    if len(handles) != 1:
        raise RuntimeError(f"event {event_id}: expected 1 run, found {len(handles)}")
    return handles[0].result(timeout=RESULT_TIMEOUT_S)


def completed_runs(client: steplog.Steplog, function_id: str) -> int:
    return len(client.list_runs(function_id=function_id, status="completed", limit=None))


def version() -> str:
    try:
        return metadata.version("steplog")
    except metadata.PackageNotFoundError:
        return str(getattr(steplog, "__version__", "unknown"))


@contextmanager
def running(db_dir: Path, clock: steplog.ManualClock | None = None) -> Iterator[steplog.Steplog]:
    """The client with its engine threads started; stopped on exit."""
    client = make_client(db_dir, clock)
    with client:
        yield client


# --------------------------------------------------------------------------- workloads


def run_w1(db_dir: Path, n: int) -> dict[str, Any]:
    """Send ``n`` events in one call, then wait until nothing is runnable."""
    with running(db_dir) as client:
        t0 = wl.now()
        send(client, EVENT_W1, [{"i": i} for i in range(n)])
        t_sent = wl.now()
        client.run_until_idle()
        seconds = wl.now() - t0
        done = completed_runs(client, "w1")
    if done != n:
        raise RuntimeError(f"W1: expected {n} completed runs, found {done}")
    record = wl.throughput_record(
        wl.W1, SYSTEM, runs=n, steps=n * wl.STEPS_PER_RUN_W1, seconds=seconds
    )
    record["send_seconds"] = round(t_sent - t0, 4)
    return record


def run_w2(db_dir: Path, steps: int) -> dict[str, Any]:
    """One run of ``steps`` sequential steps, timed from send to result."""
    with running(db_dir) as client:
        t0 = wl.now()
        (event_id,) = send(client, EVENT_W2, [{"steps": steps}])
        result = result_of(client, event_id)
        seconds = wl.now() - t0
    if result != steps:
        raise RuntimeError(f"W2: expected {steps}, got {result!r}")
    record = wl.throughput_record(wl.W2, SYSTEM, runs=1, steps=steps, seconds=seconds)
    record["steps"] = steps
    return record


def run_w3(db_dir: Path, n: int) -> dict[str, Any]:
    """``n`` one-step runs in sequence; each timed from send to result."""
    latencies: list[float] = []
    with running(db_dir) as client:
        for i in range(-wl.W3_WARMUP_RUNS, n):
            t0 = wl.now()
            (event_id,) = send(client, EVENT_W3, [{"i": i}])
            result = result_of(client, event_id)
            elapsed = wl.now() - t0
            if result != 1:
                raise RuntimeError(f"W3: expected 1, got {result!r}")
            if i >= 0:
                latencies.append(elapsed)
    return wl.latency_record(
        wl.W3, SYSTEM, latencies_s=latencies, steps_per_run=wl.STEPS_PER_RUN_W3
    )


def run_w4(db_dir: Path, n: int, clock: str) -> dict[str, Any]:
    """``n`` runs that sleep and then run one step; see run_w4_manual and run_w4_real."""
    if clock == wl.CLOCK_MANUAL:
        return run_w4_manual(db_dir, n)
    return run_w4_real(db_dir, n)


def run_w4_manual(db_dir: Path, n: int) -> dict[str, Any]:
    """On a ManualClock: park ``n`` runs in a 60 s sleep, read RSS, advance 60 s, time the wake-up."""
    with running(db_dir, steplog.ManualClock()) as client:
        t0 = wl.now()
        send_batched(client, EVENT_W4, [{"i": i, "sleep": wl.W4_MANUAL_SLEEP_S} for i in range(n)])
        client.run_until_idle()  # every run has committed its sleep and left its worker
        park_seconds = wl.now() - t0
        sleeping_peak, sleeping_now = wl.peak_rss_mb(), wl.current_rss_mb()
        asleep = len(runs_with_status(client, "w4", "waiting"))
        if asleep != n:
            raise RuntimeError(f"W4 manual: expected {n} sleeping runs, found {asleep}")
        t0 = wl.now()
        client.advance(wl.W4_MANUAL_SLEEP_S)  # fires every timer, then waits until idle
        seconds = wl.now() - t0
        done = completed_runs(client, "w4")
    if done != n:
        raise RuntimeError(f"W4 manual: expected {n} completed runs, found {done}")
    record = wl.sleep_record(
        SYSTEM, runs=n, clock=wl.CLOCK_MANUAL, seconds=seconds, rss_mb=sleeping_peak,
        sleeping_rss_mb=sleeping_now, park_seconds=park_seconds,
    )
    record["peak_rss_end_mb"] = wl.peak_rss_mb()
    return record


def run_w4_real(db_dir: Path, n: int) -> dict[str, Any]:
    """On the real clock: ``n`` runs sleep 2 s; time from the latest deadline to the last completion."""
    global MARK_TIMES
    MARK_TIMES = True
    ASLEEP.clear()
    FINISHED.clear()
    with running(db_dir) as client:
        t0 = wl.now()
        event_ids = send_batched(client, EVENT_W4, [{"i": i, "sleep": wl.W4_REAL_SLEEP_S} for i in range(n)])
        client.run_until_idle()
        park_seconds = wl.now() - t0
        sleeping_now = wl.current_rss_mb()
        handles = [handle for event_id in event_ids for handle in client.runs_for_event(event_id)]
        results = [handle.result(timeout=RESULT_TIMEOUT_S) for handle in handles]
        t_end = wl.now()
    if results != [1] * n or len(ASLEEP) != n or len(FINISHED) != n:
        raise RuntimeError(f"W4 real: expected {n} results of 1, got {len(results)} ({len(FINISHED)} marked)")
    return _real_sleep_record(SYSTEM, n, t_end, park_seconds, sleeping_now, ASLEEP, FINISHED)


def _real_sleep_record(
    system: str, n: int, t_end: float, park_seconds: float, sleeping_now: float | None,
    asleep: dict[Any, float], finished: dict[Any, float],
) -> dict[str, Any]:
    deadlines = {key: t + wl.W4_REAL_SLEEP_S for key, t in asleep.items()}
    latest = max(deadlines.values())
    return wl.sleep_record(
        system, runs=n, clock=wl.CLOCK_REAL, seconds=t_end - latest, rss_mb=wl.peak_rss_mb(),
        sleeping_rss_mb=sleeping_now, park_seconds=park_seconds,
        lateness_s=[finished[key] - deadlines[key] for key in deadlines],
        deadline_spread_s=latest - min(deadlines.values()),
    )


def run_w6(db_dir: Path, waits: int) -> dict[str, Any]:
    """``waits`` runs each wait for the reply with its key; time from the first reply to the last completion."""
    with running(db_dir) as client:
        t0 = wl.now()
        send_batched(client, EVENT_W6, [{"k": k} for k in range(waits)])
        client.run_until_idle()  # every run has registered its wait and left its worker
        park_seconds = wl.now() - t0
        waiting = len(runs_with_status(client, "w6", "waiting"))
        if waiting != waits:
            raise RuntimeError(f"W6: expected {waits} waiting runs, found {waiting}")
        t0 = wl.now()
        send_batched(client, EVENT_REPLY, [{"k": k} for k in range(waits)])
        t_sent = wl.now()
        client.run_until_idle()
        seconds = wl.now() - t0
        outputs = sorted(row["output"] for row in runs_with_status(client, "w6", "completed"))
    if outputs != list(range(waits)):
        raise RuntimeError(f"W6: expected {waits} runs with their own reply, found {len(outputs)} completed")
    return wl.fan_in_record(
        SYSTEM, waits=waits, seconds=seconds, send_seconds=t_sent - t0, park_seconds=park_seconds
    )


# --------------------------------------------------------------------------- API for W7 and W8 (flow control)


def make_w7_client(db_dir: Path, keyed: bool, peaks: flow.PeakPerKey) -> steplog.Steplog:
    """W7's client: one function whose one step sleeps 5 ms; with ``keyed``, at most 2 per key execute."""
    client = steplog.Steplog(app_id=APP_ID, db=str(db_dir / "steplog.sqlite"))
    options: dict[str, Any] = {}
    if keyed:
        options["concurrency"] = [steplog.Concurrency(limit=flow.W7_LIMIT, key=W7_KEY)]

    @client.create_function(fn_id="w7", trigger=steplog.TriggerEvent(event=EVENT_W7), **options)
    def w7(ctx: steplog.Context) -> int:
        key = str(_event_data(ctx)["k"])
        return int(ctx.step.run("work", peaks.work, key, flow.W7_STEP_SLEEP_S))

    return client


def make_w8_client(db_dir: Path, starts: dict[str, float], done: flow.Countdown) -> steplog.Steplog:
    """W8's client: one function throttled to 100 starts/s (burst 1) with one trivial step.

    The handler notes when each run first enters it (``perf_counter``; setdefault, in case it replays).
    """
    client = steplog.Steplog(app_id=APP_ID, db=str(db_dir / "steplog.sqlite"))
    throttle = steplog.Throttle(limit=flow.W8_LIMIT, period=f"{flow.W8_PERIOD_S}s", burst=flow.W8_BURST)

    @client.create_function(fn_id="w8", trigger=steplog.TriggerEvent(event=EVENT_W8), throttle=throttle)
    def w8(ctx: steplog.Context) -> int:
        starts.setdefault(ctx.run_id, wl.now())
        return int(ctx.step.run("s1", done.add))

    return client


@contextmanager
def timed_admission(client: steplog.Steplog, calls: flow.CallTimer) -> Iterator[None]:
    """Add up the wall time of every ``Slots.offer``/``release`` (the supervisors' admission) and of the
    flow gate's ``key_of`` (the concurrency key of each event, at send) while the block runs."""
    slots = client.slots
    slots.offer = calls.wrap("Slots.offer", slots.offer)
    slots.release = calls.wrap("Slots.release", slots.release)
    key_of = flow_gate.key_of
    flow_gate.key_of = calls.wrap("gate.key_of", key_of)
    try:
        yield
    finally:
        flow_gate.key_of = key_of
        del slots.offer, slots.release  # back to the class's methods


def peak_slots_probe(client: steplog.Steplog, held: list[int]) -> Callable[[], None]:
    """A probe for ``flow.Sampler``: the most slots of one concurrency key held at once (``held[0]``).

    ``client.slots.counts()`` also lists the function's own limit (``max:<fn>``), which is left out.
    """

    def probe() -> None:
        counts = client.slots.counts()
        top = max((count for key, count in counts.items() if not key.startswith("max:")), default=0)
        held[0] = max(held[0], top)

    return probe


def slots_isolated_seconds(n: int) -> float:
    """W7's admission pattern on a bare ``Slots``, with no engine around it: ``n`` runs over 100 keys
    (limit 2 each, plus the function's own limit) all offered at once, then released first in, first
    out, each release admitting the runs it lets start. Returns the wall time of the offers and releases."""
    slots = Slots()
    own = ("max:w7", DEFAULT_MAX_ACTIVE)
    constraints = [(own, (f"fn:w7:{flow.w7_key(i)}", flow.W7_LIMIT)) for i in range(n)]
    run_ids = [f"run-{i}" for i in range(n)]
    executing: deque[str] = deque()
    released = 0
    t0 = wl.now()
    for i in range(n):
        if slots.offer(run_ids[i], "w7", constraints[i], float(i)):
            executing.append(run_ids[i])
    while executing:
        released += 1
        executing.extend(run_id for _, run_id in slots.release(executing.popleft()))
    seconds = wl.now() - t0
    if released != n or slots.counts() or slots.waiting_count():
        raise RuntimeError(f"W7 isolated Slots: released {released} of {n}, {slots.waiting_count()} still waiting")
    return seconds


def key_isolated_seconds(n: int) -> float:
    """The flow gate's ``key_of`` for W7's key (``event.data.k``) on ``n`` W7-shaped events, alone on one
    thread: the CPU cost of evaluating a concurrency key, without the engine's threads competing."""
    expression = compile_expression(W7_KEY, names=("event",))
    events = [{"name": EVENT_W7, "data": {"i": i, "k": flow.w7_key(i)}, "id": f"e{i}", "ts": 0} for i in range(n)]
    errors: list[str] = []
    t0 = wl.now()
    keys = [flow_gate.key_of(expression, event, errors, "concurrency.key") for event in events]
    seconds = wl.now() - t0
    if errors or keys[: flow.W7_KEYS] != [flow.w7_key(i) for i in range(flow.W7_KEYS)]:
        raise RuntimeError(f"W7 isolated key_of: unexpected keys or errors {errors[:3]}")
    return seconds


def parse_started_at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # Python 3.11 reads the trailing Z


# --------------------------------------------------------------------------- W7 and W8


class W7Pass(NamedTuple):
    seconds: float
    send_seconds: float
    peaks: flow.PeakPerKey
    calls: flow.CallTimer
    peak_slots_held: int


def _w7_pass(db_dir: Path, n: int, keyed: bool) -> W7Pass:
    """Send ``n`` W7 events (5,000 to a send) and wait until every run has completed."""
    db_dir.mkdir()
    peaks, calls, held = flow.PeakPerKey(), flow.CallTimer(), [0]
    datas = [{"i": i, "k": flow.w7_key(i)} for i in range(n)]
    with make_w7_client(db_dir, keyed, peaks) as client:
        with timed_admission(client, calls), flow.Sampler(peak_slots_probe(client, held)):
            t0 = wl.now()
            send_batched(client, EVENT_W7, datas)
            t_sent = wl.now()
            client.run_until_idle()
            seconds = wl.now() - t0
        done = completed_runs(client, "w7")
    if done != n:
        raise RuntimeError(f"W7 ({'keyed' if keyed else 'no limit'}): expected {n} completed runs, found {done}")
    return W7Pass(seconds, t_sent - t0, peaks, calls, held[0])


def run_w7(db_dir: Path, n: int) -> dict[str, Any]:
    """``n`` runs over 100 keys, 2 per key at once; timed without the limit, then with it."""
    _w7_pass(db_dir / "warmup-free", flow.W7_WARMUP_RUNS, keyed=False)
    _w7_pass(db_dir / "warmup-keyed", flow.W7_WARMUP_RUNS, keyed=True)
    free = _w7_pass(db_dir / "free", n, keyed=False)
    keyed = _w7_pass(db_dir / "keyed", n, keyed=True)
    isolated = slots_isolated_seconds(n)
    keys_isolated = key_isolated_seconds(n)
    return flow.concurrency_record(
        SYSTEM, runs=n, seconds=keyed.seconds, seconds_without=free.seconds, send_seconds=keyed.send_seconds,
        peak=keyed.peaks, peak_without=free.peaks, calls=keyed.calls, calls_without=free.calls,
        extra={
            "send_seconds_without": round(free.send_seconds, 4),
            "peak_slots_held_per_key": keyed.peak_slots_held,
            "us_slots_isolated_per_run": round(isolated * 1e6 / n, 3),
            "us_key_isolated_per_run": round(keys_isolated * 1e6 / n, 3),
        },
    )


def run_w8(db_dir: Path, n: int) -> dict[str, Any]:
    """Send ``n`` events to a function throttled to 100 starts/s; wait until every run has completed."""
    starts: dict[str, float] = {}
    done = flow.Countdown()
    datas = [{"i": i} for i in range(n)]
    with make_w8_client(db_dir, starts, done) as client:
        user0, sys0 = flow.cpu_times()
        t0 = wl.now()
        send_batched(client, EVENT_W8, datas)
        t_sent = wl.now()
        # throttled runs wait on the timer, which run_until_idle does not wait for: count their steps first
        all_ran = done.wait_for(n, wl.RUN_TIMEOUT_S + n * flow.W8_PERIOD_S / flow.W8_LIMIT)
        client.run_until_idle()
        seconds = wl.now() - t0
        user1, sys1 = flow.cpu_times()
        rows = list(client.list_runs(function_id="w8", limit=None))
    statuses = Counter(row["status"] for row in rows)
    logged = [parse_started_at(row["started_at"]) for row in rows if row.get("started_at")]
    return flow.throttle_record(
        SYSTEM, events=n, completed=statuses.get("completed", 0), seconds=seconds, send_seconds=t_sent - t0,
        cpu_seconds=(user1 - user0) + (sys1 - sys0), starts=list(starts.values()), t0=t0,
        extra={
            "cpu_user_s": round(user1 - user0, 3),
            "cpu_sys_s": round(sys1 - sys0, 3),
            "max_starts_per_s_log": flow.max_in_window(logged),
            "statuses": dict(statuses),
            "timed_out": not all_ran,
        },
    )


# --------------------------------------------------------------------------- API for W9 (ingest)


def make_w9_client(db_dir: Path) -> steplog.Steplog:
    """W9's client: one trivial function on ``bench/ingest``, so that every event is routed and starts a run."""
    client = steplog.Steplog(app_id=APP_ID, db=str(db_dir / "steplog.sqlite"))

    @client.create_function(fn_id="w9", trigger=steplog.TriggerEvent(event=ingest.EVENT_NAME))
    def w9(ctx: steplog.Context) -> None:
        return None

    return client


def make_w9_app(client: steplog.Steplog, port: int) -> Any:
    """steplog's own server app (the event API is ``POST /e/{event_key}``); ``dev=True`` accepts any key."""
    from steplog.server import ServerConfig, create_app

    return create_app(client, ServerConfig(dev=True, host=ingest.HOST, port=port))


def logged_event_ids(client: steplog.Steplog) -> list[str]:
    """The ids of every ``bench/ingest`` event in the log."""
    return [row["id"] for row in client.list_events(name=ingest.EVENT_NAME, limit=None)]


# --------------------------------------------------------------------------- W9


def run_w9(db_dir: Path, n: int, batch: int) -> dict[str, Any]:
    """8 client processes post ``n`` events in batches of ``batch`` to steplog's event API; then the log
    must hold exactly the ``n`` acknowledged events, and (after ``run_until_idle``) ``n`` completed runs."""
    sock, port = ingest.listener()
    with make_w9_client(db_dir) as client, ingest.serving(make_w9_app(client, port), sock):
        result = ingest.drive(port, n, batch)
        t_idle = wl.now()
        client.run_until_idle()  # the runs started by the events; not part of the timed ingest
        drain_seconds = wl.now() - t_idle
        logged = logged_event_ids(client)
        done = completed_runs(client, "w9")
    ingest.check_ids(result, logged, n, "the event log")
    if done != n:
        raise RuntimeError(f"W9: expected {n} completed runs, found {done}")
    return ingest.ingest_record(
        SYSTEM, events=n, batch=batch, result=result,
        extra={"drain_seconds": round(drain_seconds, 3), "runs_completed": done},
    )


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    wl.W1: run_w1, wl.W2: run_w2, wl.W3: run_w3, wl.W4: run_w4, wl.W6: run_w6, wl.W7: run_w7, wl.W8: run_w8,
    wl.W9: run_w9,
}


def main() -> int:
    return wl.child_main(SYSTEM, version, RUNNERS)


if __name__ == "__main__":
    raise SystemExit(main())
