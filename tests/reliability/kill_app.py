"""The app that tests/reliability/test_kill9.py SIGKILLs and restarts, many times.

    python kill_app.py DB LEDGER ACKS ROUNDS

Uses the threaded ``steplog.Steplog`` on the SQLite file DB with the real clock and runs a mixed
workload (see ``plan``): ``pipeline`` (steps, retries after plain errors with a short backoff, a
durable sleep, an invoke of ``double``, and a final failure for some runs), ``waiter`` (a
``wait_for_event`` that this app's driver answers, or that times out), ``throttled`` (a keyed
throttle) and ``limited`` (a keyed concurrency limit).

The driver sends rounds 0..ROUNDS-1 (``plan(r)``, fixed event ids), one ``send`` per round,
``ROUND_S`` apart. After a send returned it appends the ids it covered to ACKS, one a line
(flushed and fsynced): those events are acknowledged. A restart sends again every round not wholly
acknowledged (an event already committed comes back as a duplicate and starts nothing). Replies
are sent only to waits the log holds (``waits`` projection), so a reply is never lost to a wait
that did not listen yet; they are acknowledged the same way.

Every step body appends, at its start and at its end, one line

    <pid> enter|exit <function> <run_id> <key> <step> <attempt> <unix time>

to LEDGER (under one lock, flushed and fsynced before the body goes on), so that the parent sees
which bodies ran, in which process and when, even when this process is SIGKILLed; the exit line is
written before the body returns or raises. Once the engine has started the process appends
``<pid> started - - - - - <unix time>``. When every round is acknowledged and every run has
ended, it prints "done" and exits 0; 3 if that did not happen within ``DRAIN_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import steplog

ROUND_S = 0.1
DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.02
WORK_S = 0.01
CONC_WORK_S = 0.04
NAP_S = 0.3
BACKOFF_S = 0.2
SHORT_WAIT_S = 0.5

ORDER, ASK, REPLY, TICK, JOB, NEVER = "kill/order", "kill/ask", "kill/reply", "kill/tick", "kill/job", "kill/never"
PIPELINE, DOUBLE, WAITER, THROTTLED, LIMITED = "pipeline", "double", "waiter", "throttled", "limited"
THROTTLE_LIMIT, THROTTLE_PERIOD_S, THROTTLE_BURST = 3, 1.0, 1
CONCURRENCY_LIMIT = 2


def plan(r: int) -> list[dict[str, Any]]:
    """The events of round r (the parent imports this to know what was sent)."""
    events: list[dict[str, Any]] = [
        {"name": ORDER, "id": f"order-{r}", "data": {"i": r}},
        {"name": ASK, "id": f"ask-{r}", "data": {"k": r}},
    ]
    # throttle: key a at 5/s (over the limit of 3/s: a backlog queues), b at 2.5/s
    if r % 2 == 0:
        events.append({"name": TICK, "id": f"tick-{r}-a", "data": {"k": "a"}})
    if r % 4 == 1:
        events.append({"name": TICK, "id": f"tick-{r}-b", "data": {"k": "b"}})
    # concurrency: bursts of 3 x and 2 y every other round, one z in between; 2 at once per key
    keys = ["x", "x", "x", "y", "y"] if r % 2 == 0 else ["z"]
    events += [{"name": JOB, "id": f"job-{r}-{n}", "data": {"k": key}} for n, key in enumerate(keys)]
    return events


def replied(k: int) -> bool:
    """Whether the driver answers the wait of ask k (the others time out)."""
    return k % 3 != 0


def reply_to(k: int) -> dict[str, Any]:
    return {"name": REPLY, "id": f"reply-{k}", "data": {"k": k, "n": k * 7}}


def fails_finally(i: int) -> bool:
    """Whether pipeline run i fails (its step c raises NonRetriableError)."""
    return i % 10 == 7


def expected(function: str, data: dict[str, Any]) -> tuple[str, Any]:
    """The status and output a run of ``function`` started by an event with ``data`` must end with."""
    if function == PIPELINE:
        i = data["i"]
        return ("failed", None) if fails_finally(i) else ("completed", {"i": i, "total": 20 * (i + 1) + i})
    if function == DOUBLE:
        return "completed", data["n"] * 2
    if function == WAITER:
        k = data["k"]
        return "completed", {"k": k, "n": k * 7 if replied(k) else None}
    if function in (THROTTLED, LIMITED):
        return "completed", data["k"]
    raise AssertionError(f"unknown function {function}")


class Ledger:
    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def record(self, *fields: object) -> None:
        at = time.time()  # before waiting for the lock: the time the body got here
        line = " ".join(str(field) for field in (self._pid, *fields)) + f" {at:.6f}\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def body(
        self, ctx: steplog.Context, function: str, key: str, step: str, value: Any,
        *, work: float = WORK_S, fail: Callable[[int], BaseException | None] = lambda _attempt: None,
    ) -> Any:
        """``ctx.step.run(step)`` of a body that records itself and returns ``value`` (or raises ``fail``)."""
        def run() -> Any:
            attempt = ctx.attempt
            self.record("enter", function, ctx.run_id, key, step, attempt)
            time.sleep(work)
            self.record("exit", function, ctx.run_id, key, step, attempt)
            error = fail(attempt)
            if error is not None:
                raise error
            return value

        return ctx.step.run(step, run)


def define(client: steplog.Steplog, ledger: Ledger) -> None:
    policy = steplog.RetryPolicy(retries=3, backoff=[BACKOFF_S], jitter=0)

    @client.create_function(fn_id=DOUBLE, trigger=steplog.TriggerEvent(event=NEVER))
    def double(ctx: steplog.Context) -> Any:
        return ledger.body(ctx, DOUBLE, "-", "twice", ctx.event.data["n"] * 2)

    @client.create_function(fn_id=PIPELINE, trigger=steplog.TriggerEvent(event=ORDER), retries=policy)
    def pipeline(ctx: steplog.Context) -> Any:
        i = ctx.event.data["i"]
        a = ledger.body(ctx, PIPELINE, "-", "a", i,
                        fail=lambda attempt: RuntimeError("a: first try") if i % 2 == 0 and attempt == 0 else None)
        b = ledger.body(ctx, PIPELINE, "-", "b", a + 1,
                        fail=lambda attempt: RuntimeError("b: not yet") if i % 3 == 0 and attempt < 2 else None)
        ctx.step.sleep("nap", NAP_S)
        c = ledger.body(ctx, PIPELINE, "-", "c", b * 10,
                        fail=lambda _attempt: steplog.NonRetriableError("c: never") if fails_finally(i) else None)
        d = ctx.step.invoke("call", function=DOUBLE, data={"n": c})
        total = ledger.body(ctx, PIPELINE, "-", "e", d + i)
        return {"i": i, "total": total}

    @client.create_function(fn_id=WAITER, trigger=steplog.TriggerEvent(event=ASK))
    def waiter(ctx: steplog.Context) -> Any:
        k = ctx.event.data["k"]
        timeout: Any = "10m" if replied(k) else SHORT_WAIT_S
        reply = ctx.step.wait_for_event("reply", event=REPLY, match="data.k", timeout=timeout)
        n = ledger.body(ctx, WAITER, "-", "record", None if reply is None else reply.data["n"])
        return {"k": k, "n": n}

    @client.create_function(
        fn_id=THROTTLED, trigger=steplog.TriggerEvent(event=TICK),
        throttle=steplog.Throttle(limit=THROTTLE_LIMIT, period=THROTTLE_PERIOD_S, burst=THROTTLE_BURST,
                                  key="event.data.k"),
    )
    def throttled(ctx: steplog.Context) -> Any:
        key = ctx.event.data["k"]
        return ledger.body(ctx, THROTTLED, key, "go", key)

    @client.create_function(
        fn_id=LIMITED, trigger=steplog.TriggerEvent(event=JOB),
        concurrency=steplog.Concurrency(limit=CONCURRENCY_LIMIT, key="event.data.k"),
    )
    def limited(ctx: steplog.Context) -> Any:
        key = ctx.event.data["k"]
        ledger.body(ctx, LIMITED, key, "one", 1, work=CONC_WORK_S)
        return ledger.body(ctx, LIMITED, key, "two", key, work=CONC_WORK_S)


def acknowledged(acks: Path) -> set[str]:
    """The ids of the events whose send returned (the parent imports this too)."""
    return {raw.strip() for raw in acks.read_text().splitlines(keepends=True) if raw.endswith("\n") and raw.strip()}


class Driver:
    """Sends the rounds and the replies, and records what each send acknowledged."""

    def __init__(self, client: steplog.Steplog, acks_path: Path, acks: TextIO) -> None:
        self.client = client
        self.acks = acks
        self.acked = acknowledged(acks_path)

    def send(self, events: list[dict[str, Any]]) -> None:
        self.client.send(events)
        ids = [event["id"] for event in events]
        self.acks.write("".join(f"{id_}\n" for id_ in ids))
        self.acks.flush()
        os.fsync(self.acks.fileno())
        self.acked.update(ids)

    def send_round(self, r: int) -> bool:
        """Send round r unless it was all acknowledged; whether it was sent."""
        events = plan(r)
        if all(event["id"] in self.acked for event in events):
            return False
        self.send(events)
        return True

    def answer_waits(self) -> None:
        """Reply to every wait for a reply the log holds, that should be answered."""
        answers = []
        for row in self.client.store.query("waits", where={"function_id": WAITER}):
            k = self.asked(row["run_id"])
            if k is not None and replied(k):
                answers.append(reply_to(k))
        if answers:
            self.send(answers)

    def asked(self, run_id: str) -> int | None:
        rows = self.client.store.query("runs", where={"run_id": run_id})
        if not rows:
            return None
        events = self.client.store.query("events", where={"internal_id": rows[0]["event_id"]})
        return int(json.loads(events[0]["data"])["k"]) if events else None

    def drained(self) -> bool:
        return not any(self.client.list_runs(status=status, limit=1) for status in ("queued", "running", "waiting"))


def _newline(file: TextIO) -> None:
    """A line cut short by a kill stays alone on its line (readers skip it)."""
    if file.tell() > 0:
        file.seek(file.tell() - 1)
        if file.read(1) != "\n":
            file.write("\n")
            file.flush()


def main(db: str, ledger_path: str, acks_path: str, rounds: int) -> int:
    with open(ledger_path, "a+", encoding="utf-8") as ledger_file, open(acks_path, "a+", encoding="utf-8") as acks:
        _newline(ledger_file)
        _newline(acks)
        client = steplog.Steplog(app_id="kill9", db=db)
        ledger = Ledger(ledger_file)
        define(client, ledger)
        with client:
            ledger.record("started", "-", "-", "-", "-", "-")
            driver = Driver(client, Path(acks_path), acks)
            for r in range(rounds):
                if driver.send_round(r):
                    driver.answer_waits()
                    time.sleep(ROUND_S)  # the workload's pace, not a synchronisation
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not driver.drained():
                if time.monotonic() > deadline:
                    print("not drained in time", file=sys.stderr, flush=True)
                    return 3
                driver.answer_waits()
                time.sleep(POLL_S)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
