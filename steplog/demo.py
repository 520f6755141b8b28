"""The first-contact demo: a tiny shop with four durable functions, on a SQLite file.

    checkout   on shop/order.placed       reserve-stock -> charge-card -> send-receipt
               (the card charge of the first order times out once and is retried 1 s later)
    vip-gift   on shop/order.placed, if event.data.total >= 100 (a CEL expression)
    ship-order on shop/order.placed       waits for shop/order.packed of the same order, then ships
    audit-log  on shop/* (a wildcard: every shop event)

``steplog demo`` runs it; ``create_client`` is also a plain example of defining functions.
"""

from __future__ import annotations

import secrets
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import steplog
from steplog.cli import CELL_WIDTH, check_database, duration_text, error_text, format_seconds, seconds_between, short

ORDER_PLACED = "shop/order.placed"
ORDER_PACKED = "shop/order.packed"
CART_ABANDONED = "shop/cart.abandoned"
VIP_EXPRESSION = "event.data.total >= 100"
TOTALS = (42, 180, 65, 250, 19)
DETAILED_EVENTS = 6
SEND_BATCH = 1000
WAIT_SECONDS = 60.0


# -- the functions ---------------------------------------------------------------------------------


def reserve_stock(order: dict[str, Any]) -> dict[str, Any]:
    return {"order": order["order_id"], "items": order["items"], "warehouse": "north"}


def charge_card(order: dict[str, Any], attempt: int) -> dict[str, Any]:
    if order.get("simulate") == "gateway-timeout" and attempt == 0:
        raise ConnectionError("payment gateway timed out")
    return {"charge": f"ch_{order['order_id']}", "amount": order["total"]}


def create_client(db: str | Path, **options: Any) -> steplog.Steplog:
    """A client on ``db`` with the demo's four functions defined."""
    client = steplog.Steplog(app_id="shop", db=db, **options)

    # Retry failed steps after a fixed 1 s (no jitter), up to 3 times, so the demo is quick.
    @client.create_function(
        fn_id="checkout",
        trigger=steplog.TriggerEvent(event=ORDER_PLACED),
        retries=steplog.RetryPolicy.fixed(3, "1s"),
    )
    def checkout(ctx: steplog.Context) -> dict[str, Any]:
        order = ctx.event.data
        ctx.step.run("reserve-stock", reserve_stock, order)
        # ctx.attempt is read inside the step: there it counts this step's earlier failures.
        charge = ctx.step.run("charge-card", lambda: charge_card(order, ctx.attempt))
        receipt = ctx.step.run("send-receipt", lambda: f"receipt sent to {order['email']}")
        return {"charge": charge["charge"], "receipt": receipt}

    @client.create_function(
        fn_id="vip-gift", trigger=steplog.TriggerEvent(event=ORDER_PLACED, expression=VIP_EXPRESSION)
    )
    def vip_gift(ctx: steplog.Context) -> str:
        gift = ctx.step.run("pick-gift", lambda: "tote bag")
        note: str = ctx.step.run("send-note", lambda: f"thank-you note with a {gift} for {ctx.event.data['email']}")
        return note

    @client.create_function(fn_id="ship-order", trigger=steplog.TriggerEvent(event=ORDER_PLACED))
    def ship_order(ctx: steplog.Context) -> str:
        # The run waits here, holding no thread, until the warehouse says this order is packed.
        packed = ctx.step.wait_for_event("wait-for-packing", event=ORDER_PACKED, match="data.order_id", timeout="1m")
        if packed is None:
            return "not packed within a minute"
        label: str = ctx.step.run("ship", lambda: f"shipped {packed.data['order_id']} from {packed.data['warehouse']}")
        return label

    @client.create_function(fn_id="audit-log", trigger=steplog.TriggerEvent(event="shop/*"))
    def audit_log(ctx: steplog.Context) -> str:
        line: str = ctx.step.run("record", lambda: f"{ctx.event.name} {ctx.event.id}")
        return line

    return client


def demo_events(orders: int, session: str) -> list[dict[str, Any]]:
    """``orders`` orders (the first one's card charge times out once), an abandoned cart, and the
    first order sent again with the same id (a duplicate: it starts nothing)."""
    events: list[dict[str, Any]] = []
    for n in range(1, orders + 1):
        data: dict[str, Any] = {
            "order_id": f"order-{n}", "items": n % 3 + 1, "total": TOTALS[(n - 1) % len(TOTALS)],
            "email": f"customer{n}@example.com",
        }
        if n == 1:
            data["simulate"] = "gateway-timeout"
        events.append({"name": ORDER_PLACED, "id": f"demo-{session}-order-{n}", "data": data})
    events.append({"name": CART_ABANDONED, "id": f"demo-{session}-cart-1", "data": {"cart_id": "cart-1", "items": 2}})
    events.append(dict(events[0]))
    return events


def packing_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The warehouse's "packed" event for each order sent (once per order, duplicates aside)."""
    orders = dict.fromkeys(e["data"]["order_id"] for e in events if e["name"] == ORDER_PLACED)
    return [{"name": ORDER_PACKED, "data": {"order_id": order, "warehouse": "north"}} for order in orders]


# -- running it ------------------------------------------------------------------------------------


def run_demo(db: str, *, orders: int = 2, out: TextIO = sys.stdout) -> int:
    """Run the demo against ``db`` and print what happened; returns the exit code."""
    existed = Path(db).exists()
    if existed:
        check_database(db)  # never add steplog's tables to some other SQLite file
    client = create_client(db)
    _ = client.store  # open the file now, so that a bad path fails before anything is printed
    events = demo_events(orders, secrets.token_hex(3))
    say = _printer(out)
    say(f"steplog demo: a small shop on SQLite, in {db}" + (" (adding to what it holds)" if existed else ""))
    say()
    functions = [
        ("checkout", f"on {ORDER_PLACED}", "reserve-stock -> charge-card -> send-receipt"),
        ("vip-gift", f"on {ORDER_PLACED} if {VIP_EXPRESSION}", "pick-gift -> send-note"),
        ("ship-order", f"on {ORDER_PLACED}", f"wait for {ORDER_PACKED} (same order_id) -> ship"),
        ("audit-log", "on shop/*", "record"),
    ]
    say("Functions:")
    trigger_width = max(len(trigger) for _, trigger, _ in functions)
    for fn_id, trigger, steps in functions:
        say(f"  {fn_id:<10} {trigger:<{trigger_width}}   {steps}")
    say("(charge-card times out once for order-1; checkout retries a failed step after 1 s)")
    say()
    began = time.monotonic()
    with client:
        sent: list[tuple[dict[str, Any], str]] = [(event, client.send(event)[0]) for event in events]
        handles = {internal_id: client.runs_for_event(internal_id) for _, internal_id in sent}
        say(f"Sent {len(events)} events: {orders} order{'s' if orders > 1 else ''}, an abandoned cart,"
            " and order-1 again with the same id.")
        client.run_until_idle(WAIT_SECONDS)  # every ship-order run now waits for its packing event
        packed = packing_events(events)
        for start in range(0, len(packed), SEND_BATCH):
            batch = packed[start:start + SEND_BATCH]
            sent += list(zip(batch, client.send(batch)))
        handles.update({internal_id: client.runs_for_event(internal_id) for _, internal_id in sent[-len(packed):]})
        count = sum(len(h) for h in handles.values())
        say(f"The ship-order runs wait for {ORDER_PACKED}; sent it for {len(packed)} order{'s' if len(packed) > 1 else ''}.")
        say(f"Waiting for {count} runs ...", end=" ")
        for handle in (h for hs in handles.values() for h in hs):
            if not handle.wait(WAIT_SECONDS):
                say(f"\nrun {handle.run_id} is still {handle.status} after {WAIT_SECONDS:.0f} s; giving up.")
                return 1
        say(f"all done in {format_seconds(time.monotonic() - began)}.")
        say()
        histories = {h.run_id: client.run_history(h.run_id) for hs in handles.values() for h in hs}
    retried = _print_events(sent, handles, histories, say)
    shipped = next((run_id for run_id, h in histories.items() if h.run["function_id"] == "ship-order"), None)
    _print_explore(db, retried, shipped, say)
    return 0


def _printer(out: TextIO) -> Any:
    def say(text: str = "", end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    return say


def _print_events(
    sent: list[tuple[dict[str, Any], str]], handles: dict[str, list[Any]], histories: dict[str, Any], say: Any
) -> str | None:
    """Each event with its runs, each run with its steps; returns the id of a run that retried a step."""
    retried = None
    seen: set[str] = set()
    for index, (event, internal_id) in enumerate(sent):
        duplicate = event.get("id") in seen
        seen.add(event.get("id", ""))
        runs = handles[internal_id]
        if index >= DETAILED_EVENTS:
            continue
        label = event["data"].get("order_id") or event["data"].get("cart_id")
        total = f"  total {event['data']['total']}" if "total" in event["data"] else ""
        if duplicate:
            say(f"{event['name']}  {label}{total}  again, same id: a duplicate, started nothing")
            continue
        say(f"{event['name']}  {label}{total}")
        width = max((len(histories[h.run_id].run["function_id"]) for h in runs), default=0)
        for handle in runs:
            history = histories[handle.run_id]
            if _print_run(history, width, say):
                retried = retried or handle.run_id
    if len(sent) > DETAILED_EVENTS:
        say(f"... and {len(sent) - DETAILED_EVENTS} more events; `steplog events` lists them all.")
        functions = Counter(history.run["function_id"] for history in histories.values())
        statuses = Counter(history.run["status"] for history in histories.values())
        say(f"In all: {len(histories)} runs ({', '.join(f'{n} {f}' for f, n in functions.items())}),"
            f" {', '.join(f'{n} {s}' for s, n in statuses.items())}.")
    say()
    return retried


def _print_run(history: Any, width: int, say: Any) -> bool:
    """A run on one line, its steps after it; step attempts in full only if a step needed more than one."""
    run = history.run
    took = f"{run['status']} in {duration_text(run['started_at'], run['ended_at'])}"
    say(f"  {run['function_id']:<{width}}  {took:<20}  run {run['run_id']}")
    if run.get("error"):
        say(f"      {short(error_text(run['error']), CELL_WIDTH)}")
    ended = {step.step for step in history.steps if step.status in ("completed", "failed")}
    # a wait or sleep that has ended is told by its completion alone
    steps = [step for step in history.steps if step.status not in ("waiting", "sleeping") or step.step not in ended]
    if all(step.status == "completed" and step.attempt == 0 for step in steps):
        if steps:
            say("      steps: " + ", ".join(step.step for step in steps))
        return False
    step_width = max(len(step.step) for step in steps)
    for step in steps:
        line = f"      {step.step:<{step_width}}  attempt {step.attempt + 1}  {step.status:<9}"
        if step.error is not None:
            line += "  " + short(error_text(step.error), CELL_WIDTH)
            wait = seconds_between(step.ended_at, step.retry_at)
            if wait is not None:
                line += f", retried {format_seconds(wait)} later"
        say(line.rstrip())
    return True


def _print_explore(db: str, retried: str | None, shipped: str | None, say: Any) -> None:
    path = shlex.quote(db)
    say(f"Everything above is recorded in {db}. Explore it:")
    commands = [
        (f"steplog events --db {path}", "events and the runs they started"),
        (f"steplog runs --db {path}", "runs, newest first (--function, --status, --json)"),
    ]
    if retried is not None:
        commands.append((f"steplog run {retried} --db {path}", "the checkout run whose charge was retried"))
    if shipped is not None:
        commands.append((f"steplog run {shipped} --db {path}", "a ship-order run: its wait and what matched it"))
    width = max(len(command) for command, _ in commands)
    for command, comment in commands:
        say(f"  {command:<{width}}   # {comment}")
