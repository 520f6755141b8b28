"""What the test engine's determinism check costs: N runs of a 3-step function triggered one by one
on ``steplog.testing.TestEngine`` (a temporary SQLite file), with the check on and off.

    python -m benchmarks.testing_toolkit              # 1,000 and 3,000 runs
    python -m benchmarks.testing_toolkit 500 5000     # other sizes

The check replays each run that ended once, from its own history; the figures show it stays
linear (the last trigger costs the same as the first) and what share of a test it takes.
"""

from __future__ import annotations

import sys
import time

import steplog
from steplog.testing import TestEngine

client = steplog.Steplog(app_id="bench", db="never-opened.db")


@client.create_function(fn_id="three-steps", trigger=steplog.TriggerEvent(event="bench/go"))
def three_steps(ctx: steplog.Context) -> int:
    a = ctx.step.run("a", lambda: 1)
    b = ctx.step.run("b", lambda: a + 1)
    return int(ctx.step.run("c", lambda: b + 1))


def measure(runs: int, check: bool) -> tuple[float, float]:
    """Seconds for ``runs`` triggers, and milliseconds for one more at the end."""
    with TestEngine(client, check_determinism=check) as engine:
        start = time.perf_counter()
        for n in range(runs):
            engine.trigger("bench/go", {"n": n})
        elapsed = time.perf_counter() - start
        last = time.perf_counter()
        engine.trigger("bench/go", {"n": -1})
        return elapsed, (time.perf_counter() - last) * 1000


def main(argv: list[str]) -> None:
    sizes = [int(arg) for arg in argv] or [1000, 3000]
    print(f"{'runs':>6}  {'check on':>9}  {'check off':>9}  {'on/off':>6}  {'last trigger (on)':>17}")
    for runs in sizes:
        on, last_on = measure(runs, True)
        off, _ = measure(runs, False)
        print(f"{runs:>6}  {on:>8.2f}s  {off:>8.2f}s  {on / off:>6.2f}  {last_on:>14.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
