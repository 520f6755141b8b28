"""The app that tests/scenarios/test_crash_recovery.py kills and restarts.

    python crash_app.py DB LEDGER N

Uses the threaded ``steplog.Steplog`` on the SQLite file DB with the real clock. On its first
start (no event in the log yet) it sends N events, with ids, in one send; on every later start it
sends nothing and only recovers. Each run has five steps; every step body appends one line

    <run_id> <step key> <attempt> <unix time at body start>

to LEDGER (opened in append mode, flushed and fsynced before the body returns), so the parent
knows which bodies ran even when this process is SIGKILLed. ``charge`` fails its first attempt of
every run with RetryAfterError(…, 1 s), ``reserve`` does for odd runs and ``notify`` for runs
divisible by 3, so that retry schedules are in flight when the parent kills. The process exits 0
when all N runs have ended, and 3 if they did not end within the time given.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

import steplog

EVENT = "test/order"
FUNCTION = "pipeline"
WORK_S = 0.02
"""Each body takes this long, so that the parent's kills land inside bodies as well as between them."""
FINISH_TIMEOUT_S = 60.0


def expected_output(i: int) -> dict[str, int]:
    """What run i must return (the parent imports this)."""
    charge = i * 2
    reserve = charge + 1
    ship = reserve * 10
    return {"i": i, "total": ship + i}


def main(db_path: str, ledger_path: str, n: int) -> int:
    with open(ledger_path, "a+", encoding="utf-8") as ledger:
        # a line cut short by a kill stays alone on its line (the parent skips it)
        if ledger.tell() > 0:
            ledger.seek(ledger.tell() - 1)
            if ledger.read(1) != "\n":
                ledger.write("\n")
        return serve(db_path, ledger, n)


def serve(db_path: str, ledger: TextIO, n: int) -> int:
    client = steplog.Steplog(app_id="crash-test", db=db_path)
    ledger_lock = threading.Lock()

    def record(run_id: str, key: str, attempt: int) -> None:
        line = f"{run_id} {key} {attempt} {time.time():.6f}\n"
        with ledger_lock:
            ledger.write(line)
            ledger.flush()
            os.fsync(ledger.fileno())

    policy = steplog.RetryPolicy(retries=3, backoff=[1], jitter=0)

    @client.create_function(fn_id=FUNCTION, trigger=steplog.TriggerEvent(event=EVENT), retries=policy)
    def pipeline(ctx: steplog.Context) -> Any:
        i = ctx.event.data["i"]

        def step(key: str, fail_once: bool, value: int) -> Any:
            def body() -> int:
                attempt = ctx.attempt
                record(ctx.run_id, key, attempt)
                time.sleep(WORK_S)
                if fail_once and attempt == 0:
                    raise steplog.RetryAfterError(f"{key} is not ready yet", "1s")
                return value

            return ctx.step.run(key, body)

        load = step("load", False, i)
        charge = step("charge", True, load * 2)
        reserve = step("reserve", i % 2 == 1, charge + 1)
        ship = step("ship", False, reserve * 10)
        total = step("notify", i % 3 == 0, ship + i)
        return {"i": i, "total": total}

    with client:
        if not client.list_events(limit=1):
            client.send([{"name": EVENT, "id": f"order-{i}", "data": {"i": i}} for i in range(n)])
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        runs = client.list_runs(function_id=FUNCTION, limit=None)
        for row in runs:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not client.run(row["run_id"]).wait(timeout=remaining):
                print(f"run {row['run_id']} did not end in time", file=sys.stderr)
                return 3
    print(f"done: {len(runs)} runs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
