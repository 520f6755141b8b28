"""The app that tests/scenarios/test_wait_crashes.py kills and restarts.

    python wait_app.py DB park N     send N orders; each run waits for its reply; print "parked", then idle
    python wait_app.py DB reply N    send the N replies (ids reply-<i>, in sends of 10), wait until every
                                     run ended, print "done" and exit 0 (3 if not all ended in time)

Uses the threaded ``steplog.Steplog`` on the SQLite file DB with the real clock. Each run waits for
``test/reply`` with its own ``data.k`` (match), then records the reply's ``n`` in a step, so the
parent can check that every wait resolved exactly once, with its own reply, across SIGKILLs.
"""

from __future__ import annotations

import sys
import time

import steplog

ORDER, REPLY, FUNCTION = "test/order", "test/reply", "waiter"
BATCH = 10
FINISH_TIMEOUT_S = 60.0


def client(db: str) -> steplog.Steplog:
    app = steplog.Steplog(app_id="wait-crash", db=db)

    @app.create_function(fn_id=FUNCTION, trigger=steplog.TriggerEvent(event=ORDER))
    def waiter(ctx: steplog.Context) -> dict[str, int]:
        reply = ctx.step.wait_for_event("reply", event=REPLY, match="data.k", timeout="1h")
        assert reply is not None, "the reply never came"
        n = ctx.step.run("record", lambda: reply.data["n"])
        return {"k": ctx.event.data["k"], "n": n}

    return app


def park(db: str, n: int) -> int:
    with client(db) as app:
        app.send([{"name": ORDER, "id": f"order-{i}", "data": {"k": i}} for i in range(n)])
        app.run_until_idle()
        print("parked", flush=True)
        while True:
            time.sleep(1)


def reply(db: str, n: int) -> int:
    with client(db) as app:
        for start in range(0, n, BATCH):
            app.send([{"name": REPLY, "id": f"reply-{i}", "data": {"k": i, "n": i * 7}}
                      for i in range(start, min(n, start + BATCH))])
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while time.monotonic() < deadline:
            app.run_until_idle(timeout=1)
            if not app.list_runs(function_id=FUNCTION, status="waiting", limit=1) and not app.list_runs(
                function_id=FUNCTION, status="running", limit=1
            ):
                print("done", flush=True)
                return 0
        return 3


if __name__ == "__main__":
    path, phase, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.exit(park(path, count) if phase == "park" else reply(path, count))
