"""steplog side of the benchmarks.

``python -m benchmarks.run_steplog W1 --n 2000`` prints one JSON line per result on stdout.

steplog runs embedded with its defaults (SQLite file in a fresh directory, ``synchronous=FULL``),
except that the per-run step limit is raised to ``workloads.MAX_STEPS_PER_RUN`` so W2 can run
5,000 steps. Starting the engine (``with client:``) is outside the timed region, as
``DBOS.launch()`` is on the DBOS side.

Every use of steplog's API is in this module, in the "API" section below: fix it there if it moves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl

try:
    import steplog
except ImportError as exc:  # pragma: no cover - exercised only where steplog is not importable
    print(f"steplog is not importable from the repo root: {exc}", file=sys.stderr)
    raise SystemExit(3) from None

SYSTEM = "steplog"
APP_ID = "bench"
EVENT_W1 = "bench/w1"
EVENT_W2 = "bench/w2"
EVENT_W3 = "bench/w3"
RESULT_TIMEOUT_S = wl.RUN_TIMEOUT_S


# --------------------------------------------------------------------------- API (steplog contract)


def _one() -> int:
    return 1


def _two() -> int:
    return 2


def _event_data(ctx: steplog.Context) -> dict[str, Any]:
    """``ctx.event.data``, as in Inngest's SDK."""
    event = ctx.event
    return dict(event.data)


def make_client(db_dir: Path) -> steplog.Steplog:
    """A client on a fresh SQLite file with the three benchmark functions registered."""
    client = steplog.Steplog(
        app_id=APP_ID,
        db=str(db_dir / "steplog.sqlite"),
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

    return client


def send(client: steplog.Steplog, name: str, datas: list[dict[str, Any]]) -> list[str]:
    """Send events; returns their ids once the events are committed."""
    return list(client.send([steplog.Event(name=name, data=data) for data in datas]))


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
def running(db_dir: Path) -> Iterator[steplog.Steplog]:
    """The client with its engine threads started; stopped on exit."""
    client = make_client(db_dir)
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


RUNNERS = {wl.W1: run_w1, wl.W2: run_w2, wl.W3: run_w3}


def main() -> int:
    return wl.child_main(SYSTEM, version, RUNNERS)


if __name__ == "__main__":
    raise SystemExit(main())
