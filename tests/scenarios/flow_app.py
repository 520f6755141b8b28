"""The app that tests/scenarios/test_flow_crashes.py kills and restarts: flow control across SIGKILLs.

    python flow_app.py DB LEDGER ACKS ROUNDS
    python flow_app.py DB LEDGER ACKS burst=N

Uses the threaded ``steplog.Steplog`` on the SQLite file DB with the real clock, and defines one
function per flow-control option (see ``FUNCTIONS``). It sends the events of rounds 0..ROUNDS-1
(``plan(r)``, fixed ids), one ``send`` per round, ``ROUND_S`` apart; with ``burst=N``, one round
only: N events for the throttled function's key "a" (``burst(n)``). After each send returned it
appends ``<round> <unix time>`` to ACKS (flushed and fsynced): the parent counts only the events of
acknowledged rounds. A restart resumes with the first round not acknowledged; if that round's send
had committed before the kill, its events come back as duplicates and start nothing.

Every step body appends, at its start and at its end, one line

    <pid> <function> <run_id> <key> <step> enter|exit <unix time>

to LEDGER (under one lock, flushed and fsynced before the body goes on), so that the parent sees
which bodies ran, in which process, and when, even when this process is SIGKILLed. The lines of a
process are in the order their bodies got the lock (an enter after the body began, an exit before
it returned); their times are taken just before, so they may be slightly out of order. Once the engine
has started (and its recovery has started what was due), the process appends
``<pid> - - - - started <unix time>``.

Once every round is acknowledged, the app waits until nothing is left to do (no run queued,
running or waiting, no pending debounce or batch), prints "done" and exits 0; 3 if that did not
happen within ``DRAIN_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import steplog

ROUND_S = 0.1
DRAIN_TIMEOUT_S = 90.0
POLL_S = 0.02
WORK_S = 0.01
"""How long a step body takes between its enter and exit lines (concurrency's take longer)."""
CONC_WORK_S = 0.04

THROTTLE = ("flow/throttle", "throttled")
CONCURRENCY = ("flow/conc", "limited")
DEBOUNCE = ("flow/debounce", "debounced")
BATCH = ("flow/batch", "batched")
SINGLETON = ("flow/singleton", "single")
IDEMPOTENCY = ("flow/idem", "idempotent")
RATE = ("flow/rate", "rated")
FUNCTIONS = (THROTTLE, CONCURRENCY, DEBOUNCE, BATCH, SINGLETON, IDEMPOTENCY, RATE)
"""(event name, function id) of each function; each function is triggered by its own event."""

THROTTLE_LIMIT, THROTTLE_PERIOD_S, THROTTLE_BURST = 5, 1.0, 0
CONCURRENCY_LIMIT = 2
DEBOUNCE_PERIOD_S = 1.0
BATCH_SIZE, BATCH_TIMEOUT_S = 5, 2.0
SINGLETON_NAP_S = 0.5
RATE_PERIOD_S = 60.0


def plan(r: int) -> list[dict[str, Any]]:
    """The events of round r (the parent imports this to know what an acknowledgement covers)."""
    events: list[dict[str, Any]] = []

    def add(kind: tuple[str, str], key: str) -> None:
        name = kind[0]
        events.append({"name": name, "id": f"{name.split('/')[1]}-{r}-{len(events)}", "data": {"k": key, "r": r}})

    # throttle: key a at 10/s, b at 5/s, both over the limit (5/s): a backlog queues behind the bucket
    add(THROTTLE, "a")
    if r % 2 == 0:
        add(THROTTLE, "b")
    # concurrency: 3 runs of x and 2 of y every 0.2 s, each run ~0.1 s, 2 at once per key
    if r % 2 == 0:
        for _ in range(3):
            add(CONCURRENCY, "x")
        for _ in range(2):
            add(CONCURRENCY, "y")
    # debounce: p in bursts (1.5 s of events every 0.1 s, then 1.5 s quiet: fires in the gaps);
    # q every 0.5 s (never quiet for 1 s: fires only after the last round)
    if (r // 15) % 2 == 0:
        add(DEBOUNCE, "p")
    if r % 5 == 0:
        add(DEBOUNCE, "q")
    # batch: 2 events in two rounds of three, in stretches of 2 s with gaps (timeouts flush the rest)
    if (r // 20) % 2 == 0 and r % 3 != 2:
        add(BATCH, "-")
        add(BATCH, "-")
    # singleton: one every 0.3 s; a run naps 0.5 s, so about every other one is skipped
    if r % 3 == 0:
        add(SINGLETON, "s")
    # idempotency: 4 events per key (one run each key); rate limit: 5 per key, 1 per minute
    if r % 2 == 1:
        add(IDEMPOTENCY, f"i{r // 8}")
    if r % 2 == 0:
        add(RATE, f"r{r // 10}")
    return events


class Ledger:
    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def record(self, function: str, run_id: str, key: str, step: str, what: str) -> None:
        at = time.time()  # before waiting for the lock (other bodies' fsyncs): the time the body got here
        with self._lock:
            self._file.write(f"{self._pid} {function} {run_id} {key} {step} {what} {at:.6f}\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def body(self, ctx: steplog.Context, function: str, key: str, step: str, work: float, value: Any) -> Any:
        def run() -> Any:
            self.record(function, ctx.run_id, key, step, "enter")
            time.sleep(work)
            self.record(function, ctx.run_id, key, step, "exit")
            return value

        return ctx.step.run(step, run)


def define(client: steplog.Steplog, ledger: Ledger) -> None:
    def trigger(kind: tuple[str, str]) -> steplog.TriggerEvent:
        return steplog.TriggerEvent(event=kind[0])

    @client.create_function(
        fn_id=THROTTLE[1], trigger=trigger(THROTTLE),
        throttle=steplog.Throttle(limit=THROTTLE_LIMIT, period=THROTTLE_PERIOD_S, burst=THROTTLE_BURST,
                                  key="event.data.k"),
    )
    def throttled(ctx: steplog.Context) -> Any:
        return ledger.body(ctx, THROTTLE[1], ctx.event.data["k"], "go", WORK_S, ctx.event.id)

    @client.create_function(
        fn_id=CONCURRENCY[1], trigger=trigger(CONCURRENCY),
        concurrency=steplog.Concurrency(limit=CONCURRENCY_LIMIT, key="event.data.k"),
    )
    def limited(ctx: steplog.Context) -> Any:
        key = ctx.event.data["k"]
        first = ledger.body(ctx, CONCURRENCY[1], key, "one", CONC_WORK_S, 1)
        return first + ledger.body(ctx, CONCURRENCY[1], key, "two", CONC_WORK_S, 1)

    @client.create_function(
        fn_id=DEBOUNCE[1], trigger=trigger(DEBOUNCE),
        debounce=steplog.Debounce(period=DEBOUNCE_PERIOD_S, key="event.data.k"),
    )
    def debounced(ctx: steplog.Context) -> Any:
        return ledger.body(ctx, DEBOUNCE[1], ctx.event.data["k"], "go", WORK_S, ctx.event.id)

    @client.create_function(
        fn_id=BATCH[1], trigger=trigger(BATCH),
        batch_events=steplog.Batch(max_size=BATCH_SIZE, timeout=BATCH_TIMEOUT_S),
    )
    def batched(ctx: steplog.Context) -> Any:
        ids = [event.id for event in ctx.events]
        return ledger.body(ctx, BATCH[1], str(len(ids)), "go", WORK_S, ids)

    @client.create_function(
        fn_id=SINGLETON[1], trigger=trigger(SINGLETON),
        singleton=steplog.Singleton(key="event.data.k", mode="skip"),
    )
    def single(ctx: steplog.Context) -> Any:
        key = ctx.event.data["k"]
        ledger.body(ctx, SINGLETON[1], key, "work", WORK_S, 1)
        ctx.step.sleep("nap", SINGLETON_NAP_S)
        return ledger.body(ctx, SINGLETON[1], key, "done", WORK_S, ctx.event.id)

    @client.create_function(fn_id=IDEMPOTENCY[1], trigger=trigger(IDEMPOTENCY), idempotency="event.data.k")
    def idempotent(ctx: steplog.Context) -> Any:
        return ledger.body(ctx, IDEMPOTENCY[1], ctx.event.data["k"], "go", WORK_S, ctx.event.id)

    @client.create_function(
        fn_id=RATE[1], trigger=trigger(RATE),
        rate_limit=steplog.RateLimit(limit=1, period=RATE_PERIOD_S, key="event.data.k"),
    )
    def rated(ctx: steplog.Context) -> Any:
        return ledger.body(ctx, RATE[1], ctx.event.data["k"], "go", WORK_S, ctx.event.id)


def acknowledged(acks: Path) -> set[int]:
    """The rounds whose send returned (the parent imports this too)."""
    rounds = set()
    for raw in acks.read_text().splitlines(keepends=True):
        fields = raw.split()
        if raw.endswith("\n") and len(fields) == 2:
            rounds.add(int(fields[0]))
    return rounds


def _newline(file: TextIO) -> None:
    """A line cut short by a kill stays alone on its line (readers skip it)."""
    if file.tell() > 0:
        file.seek(file.tell() - 1)
        if file.read(1) != "\n":
            file.write("\n")
            file.flush()


def burst(n: int) -> list[dict[str, Any]]:
    """The one round of ``burst=N``: N throttled events of one key, sent at once."""
    return [{"name": THROTTLE[0], "id": f"burst-{i}", "data": {"k": "a", "r": 0}} for i in range(n)]


def main(db: str, ledger_path: str, acks_path: str, workload: str) -> int:
    events_of: Callable[[int], list[dict[str, Any]]] = plan
    if workload.startswith("burst="):
        rounds, events_of = 1, lambda _r: burst(int(workload.partition("=")[2]))
    else:
        rounds = int(workload)
    with open(ledger_path, "a+", encoding="utf-8") as ledger_file, open(acks_path, "a+", encoding="utf-8") as acks:
        _newline(ledger_file)
        _newline(acks)
        client = steplog.Steplog(app_id="flow-crash", db=db)
        ledger = Ledger(ledger_file)
        define(client, ledger)
        with client:
            ledger.record("-", "-", "-", "-", "started")  # the engine runs: recovery started what was due
            done = acknowledged(Path(acks_path))
            for r in range(rounds):
                if r in done:
                    continue
                client.send(events_of(r))
                acks.write(f"{r} {time.time():.6f}\n")
                acks.flush()
                os.fsync(acks.fileno())
                time.sleep(ROUND_S)  # the workload's pace, not a synchronisation
            if not _drained(client, DRAIN_TIMEOUT_S):
                print("not drained in time", file=sys.stderr, flush=True)
                return 3
    print("done", flush=True)
    return 0


def _drained(client: steplog.Steplog, timeout: float) -> bool:
    def idle() -> bool:
        for status in ("queued", "running", "waiting"):
            if client.list_runs(status=status, limit=1):
                return False
        return not client.store.query("debounces") and not client.store.query("batched")

    return _poll(idle, timeout)


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]))
