"""W9 (ingest): loopback HTTP clients post events to an event endpoint; events/s accepted and ack latency.

Shared by ``run_steplog`` and ``run_dbos`` and read by the CLI; like ``workloads`` it imports no system
under test (uvicorn is imported where the server starts).

The benchmark's child process (``python -m benchmarks.run_<system> W9 --n N --batch B``) builds its
system's app, serves it with uvicorn on a thread of that process (``serving``), and ``drive`` starts
``W9_CLIENTS`` load-generator processes (``python -m benchmarks.ingest``, this module's ``main``), each
with one persistent keep-alive connection (``http.client``). The N events are cut into consecutive
batches of B; client c posts batches c, c + 8, c + 16, ... one after another, each as a JSON array to
``POST /e/<key>``, and times each request from just before it is sent until its answer has been read.
Every answer must be ``200`` with one id per event posted. The clients connect and do one
``GET /health`` first, then say ``ready``; once all are ready, the parent tells them ``go``.

Why processes: on 2 cores, client threads in one process would share one GIL with each other, so a
thread whose answer has arrived could wait for another thread's JSON or socket work before taking its
timestamp. Separate processes take their timestamps independently; ``perf_counter`` is
``CLOCK_MONOTONIC`` on Linux, the same clock in every process, so the wall time runs from the earliest
first send to the latest last answer across the 8 processes. Each client builds its request bodies before
saying ``ready``, so the timed loop is only ``request`` + ``getresponse`` + ``read``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl

EVENT_NAME = "bench/ingest"
EVENT_KEY = "bench-key"
PAD = "x" * 64
HOST = "127.0.0.1"
W9_CLIENTS = 8
#: The target: steplog accepts at least this many events/s with batches of ``W9_TARGET_BATCH``.
W9_TARGET_EVENTS_PER_S = 5000.0
W9_TARGET_BATCH = 100
#: uvicorn's keep-alive timeout (its default is 5 s): the clients connect before the others are ready,
#: and on a busy 2-core machine starting 8 Python processes can take longer than 5 s.
KEEP_ALIVE_S = 120
#: Limits for one point: clients starting (imports, building bodies), and the whole timed run.
READY_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 1500.0
SERVER_START_TIMEOUT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parent.parent

#: JSON-only W9 figures that the CLI also reports as the median of the repeats.
MEDIAN_EXTRAS: tuple[str, ...] = (
    "wall_s", "mean_ms", "max_ms", "server_cpu_s", "clients_cpu_s", "drain_seconds",
)

LATENCY_METHOD = (
    "each request timed in its client process from just before http.client's request() until the answer's"
    " body was read (status 200 and one id per event posted); events_per_s = events / wall_s, wall_s from the"
    " earliest first send to the latest last answer across the clients (CLOCK_MONOTONIC in every process)"
)


def event(i: int) -> dict[str, Any]:
    """The ``i``-th event of a run."""
    return {"name": EVENT_NAME, "data": {"i": i, "pad": PAD}}


def client_batches(n: int, batch: int, client: int, clients: int = W9_CLIENTS) -> list[range]:
    """The event numbers client ``client`` posts: batches ``client``, ``client + clients``, ... of the N
    events cut into consecutive batches of ``batch`` (the last one may be shorter)."""
    starts = range(client * batch, n, clients * batch)
    return [range(start, min(start + batch, n)) for start in starts]


# --------------------------------------------------------------------------- server side


def listener() -> tuple[socket.socket, int]:
    """A listening socket on a free loopback port (handed to uvicorn, so no other process can take it).

    ``IPPROTO_TCP`` must be given: asyncio sets ``TCP_NODELAY`` on an accepted connection only if its
    ``proto`` is ``IPPROTO_TCP``, and a socket made with proto 0 passes 0 to the connections it accepts.
    Without ``TCP_NODELAY``, uvicorn's two writes per answer (head, then body) meet the client's delayed
    ACK and every request takes about 44 ms. (``steplog serve`` builds its socket from ``getaddrinfo``,
    which gives ``IPPROTO_TCP``, as uvicorn does when it binds the port itself.)
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(2048)  # uvicorn's default backlog
    return sock, int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(app: Any, sock: socket.socket) -> Iterator[None]:
    """Serve ``app`` with uvicorn on ``sock``, on a thread of this process, until the block ends.

    ``uvicorn.Config(app, host, port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)``; everything
    else at uvicorn's defaults (here: asyncio's event loop and h11, as neither uvloop nor httptools is
    installed).
    """
    import uvicorn

    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host=HOST, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # noqa: BLE001 - reported to the main thread below
            failure.append(error)

    thread = threading.Thread(target=serve, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"W9: uvicorn did not start: {failure[0] if failure else 'timeout or exit'}")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(30.0)
        sock.close()


@dataclass(frozen=True)
class Drive:
    """What the clients measured: per-request latencies (s), the ids answered, the wall (s)."""

    latencies_s: list[float]
    ids: list[str]
    first_send: float
    last_answer: float
    requests: int
    server_cpu_user_s: float
    server_cpu_sys_s: float
    server_context_switches: int
    clients_cpu_s: float

    @property
    def server_cpu_s(self) -> float:
        return self.server_cpu_user_s + self.server_cpu_sys_s

    @property
    def wall_s(self) -> float:
        return self.last_answer - self.first_send


def drive(port: int, n: int, batch: int, clients: int = W9_CLIENTS) -> Drive:
    """Start ``clients`` client processes against ``port``, let them post N events in batches, collect.

    Raises RuntimeError if a client fails (a non-200 answer, a wrong number of ids, a lost connection).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ingest", "--port", str(port), "--n", str(n), "--batch", str(batch),
             "--client", str(c), "--clients", str(clients)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for c in range(clients)
    ]
    try:
        for c, proc in enumerate(procs):
            line = _readline(proc, READY_TIMEOUT_S)
            if line.strip() != "ready":
                raise RuntimeError(f"W9 client {c} did not get ready: {line!r}\n{_stderr_tail(proc)}")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        for proc in procs:  # all ready: let them go (a few microseconds apart)
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = []
        for c, proc in enumerate(procs):
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"W9 client {c} exited {proc.returncode}:\n{err.strip()[-2000:]}")
            outputs.append(json.loads(out))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    latencies = [t for out in outputs for t in out["latencies_s"]]
    return Drive(
        latencies_s=latencies,
        ids=[event_id for out in outputs for event_id in out["ids"]],
        first_send=min(out["first_send"] for out in outputs),
        last_answer=max(out["last_answer"] for out in outputs),
        requests=len(latencies),
        server_cpu_user_s=cpu1.ru_utime - cpu0.ru_utime,
        server_cpu_sys_s=cpu1.ru_stime - cpu0.ru_stime,
        server_context_switches=(cpu1.ru_nvcsw + cpu1.ru_nivcsw) - (cpu0.ru_nvcsw + cpu0.ru_nivcsw),
        clients_cpu_s=sum(out["cpu_s"] for out in outputs),
    )


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def _stderr_tail(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    _, err = proc.communicate()
    return err.strip()[-2000:]


def check_ids(drive_result: Drive, logged_ids: Sequence[str], n: int, what: str) -> None:
    """Every acknowledged id is in the log, and the log holds exactly the ``n`` events acknowledged."""
    answered = set(drive_result.ids)
    if len(drive_result.ids) != n or len(answered) != n:
        raise RuntimeError(f"W9: {len(drive_result.ids)} ids answered ({len(answered)} distinct), expected {n}")
    logged = set(logged_ids)
    if len(logged_ids) != n or logged != answered:
        missing = len(answered - logged)
        raise RuntimeError(f"W9: {what} holds {len(logged_ids)} events, expected {n}; {missing} acknowledged missing")


def ingest_record(
    system: str, *, events: int, batch: int, result: Drive, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A W9 record for ``events`` events posted in requests of ``batch`` events."""
    latencies = result.latencies_s
    record: dict[str, Any] = {
        "workload": wl.W9,
        "system": system,
        "batch": batch,
        "events": events,
        "clients": W9_CLIENTS,
        "requests": result.requests,
        "events_per_s": round(events / result.wall_s, 1),
        "p50_ms": round(wl.percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(wl.percentile(latencies, 99) * 1e3, 3),
        "mean_ms": round(sum(latencies) / len(latencies) * 1e3, 3),
        "max_ms": round(max(latencies) * 1e3, 3),
        "wall_s": round(result.wall_s, 4),
        "peak_rss_mb": wl.peak_rss_mb(),
        "server_cpu_s": round(result.server_cpu_s, 3),
        "server_cpu_user_s": round(result.server_cpu_user_s, 3),
        "server_cpu_sys_s": round(result.server_cpu_sys_s, 3),
        "server_context_switches": result.server_context_switches,
        "clients_cpu_s": round(result.clients_cpu_s, 3),
        "latency_method": LATENCY_METHOD,
    }
    record.update(extra or {})
    return record


# --------------------------------------------------------------------------- client process


def client_main(argv: Sequence[str] | None = None) -> int:
    """One load-generator client: build its bodies, connect, say ready, wait for go, post, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description="one W9 client process")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--clients", type=int, default=W9_CLIENTS)
    ns = parser.parse_args(argv)
    bodies = [
        json.dumps([event(i) for i in numbers]).encode()
        for numbers in client_batches(ns.n, ns.batch, ns.client, ns.clients)
    ]
    sizes = [len(numbers) for numbers in client_batches(ns.n, ns.batch, ns.client, ns.clients)]
    path = f"/e/{EVENT_KEY}"
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(HOST, ns.port, timeout=RUN_TIMEOUT_S)
    conn.request("GET", "/health")
    warm = conn.getresponse()
    warm.read()
    if warm.status != 200:
        print(f"GET /health answered {warm.status}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    latencies: list[float] = []
    answers: list[bytes] = []
    statuses: list[int] = []
    clock = time.perf_counter
    cpu0 = os.times()
    first_send = clock()
    for body in bodies:
        t0 = clock()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        latencies.append(clock() - t0)
        statuses.append(response.status)
        answers.append(data)
    last_answer = clock()
    cpu1 = os.times()
    conn.close()
    ids: list[str] = []
    for k, (status, data, size) in enumerate(zip(statuses, answers, sizes, strict=True)):
        answer = json.loads(data) if data.startswith(b"{") else {}
        got = answer.get("ids") or []
        if status != 200 or answer.get("status") != 200 or len(got) != size:
            print(f"request {k}: HTTP {status}, {len(got)} ids for {size} events: {data[:500]!r}", file=sys.stderr)
            return 1
        ids.extend(got)
    json.dump(
        {
            "latencies_s": latencies, "ids": ids, "first_send": first_send, "last_answer": last_answer,
            "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        },
        sys.stdout,
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(client_main())
