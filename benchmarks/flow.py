"""W7 (keyed concurrency) and W8 (throttled flood): their constants, instruments and records.

Shared by ``run_steplog`` and ``run_dbos``, and read by the CLI; like ``workloads`` it imports no
system under test.

W7: N runs over ``W7_KEYS`` keys (run i has key ``i % W7_KEYS``), at most ``W7_LIMIT`` executing per
key; each run has one step whose body sleeps ``W7_STEP_SLEEP_S`` (``time.sleep``: the simulated
work). The runner times the same N runs twice in one process, each on a fresh database: without
the per-key limit, then with it, and reports ``us_admission_per_run = (t_with - t_without) / N``.
It also times the admission calls themselves while the keyed pass runs (``us_admission_calls_per_run``).

W8: N events against a throttle of ``W8_LIMIT`` starts per ``W8_PERIOD_S`` (burst ``W8_BURST``). The
runner notes when each run starts (in its handler), and reports the most starts in any window of
``W8_WINDOW_S``, the runs that did not complete, and the cost of accepting an event.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

from benchmarks import workloads as wl

W7_KEYS = 100
W7_LIMIT = 2
W7_STEP_SLEEP_S = 0.005
#: Before the two timed passes, each variant runs this many runs once on a throwaway database
#: (imports, caches), so that neither timed pass pays the process's warm-up.
W7_WARMUP_RUNS = 100

W8_LIMIT = 100
W8_PERIOD_S = 1
W8_BURST = 1
W8_WINDOW_S = 1.0
#: steplog's bound, GCRA's own (``engine/flow/gcra.py``): over any window of length W at most
#: W / T + burst + 1 starts, with T = period / limit. For 100/s, burst 1 and W = 1 s: 102.
W8_BOUND = int(W8_LIMIT * W8_WINDOW_S / W8_PERIOD_S) + W8_BURST + 1
#: DBOS's bound: its queue limiter starts at most ``limit`` workflows in any rolling ``period`` (no burst).
W8_BOUND_DBOS = W8_LIMIT

#: How the W7 and W8 cost figures are measured; written into every record.
W7_ADMISSION_METHOD = (
    "us_admission_per_run = (seconds - seconds_without) / runs * 1e6: the same runs timed without the"
    " per-key limit, then with it, in one process, each on a fresh database; us_admission_calls_per_run ="
    " wall time inside the admission calls during the keyed pass / runs"
)
W8_COST_METHOD = (
    "us_per_event = wall time of the send/enqueue calls that accept the events / events * 1e6;"
    " cpu_us_per_event = process CPU (user + sys, all threads) from the first send to the last"
    " completion / events * 1e6"
)

#: JSON-only W7/W8 figures that the CLI also reports as the median of the repeats.
MEDIAN_EXTRAS: tuple[str, ...] = (
    "seconds_without",
    "us_admission_calls_per_run",
    "us_admission_calls_per_run_without",
    "us_slots_isolated_per_run",
    "us_key_isolated_per_run",
    "peak_slots_held_per_key",
    "max_starts_per_s_log",
    "cpu_us_per_event",
)


def w7_key(i: int) -> str:
    return f"k{i % W7_KEYS}"


# --------------------------------------------------------------------------- instruments


class PeakPerKey:
    """Counts the step bodies executing per key, under a lock, and keeps each key's peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)

    def enter(self, key: str) -> None:
        with self._lock:
            count = self._now[key] + 1
            self._now[key] = count
            self._peak[key] = max(self._peak[key], count)

    def exit(self, key: str) -> None:
        with self._lock:
            self._now[key] -= 1

    def work(self, key: str, seconds: float) -> int:
        """The W7 step body: count in, sleep, count out."""
        self.enter(key)
        try:
            time.sleep(seconds)
        finally:
            self.exit(key)
        return 1

    def peak(self) -> int:
        with self._lock:
            return max(self._peak.values(), default=0)

    def keys_at_peak(self) -> int:
        with self._lock:
            top = max(self._peak.values(), default=0)
            return sum(1 for value in self._peak.values() if value == top)


class CallTimer:
    """Wraps callables so that the wall time spent inside them (by any thread) adds up here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = clock() - t0
                with self._lock:
                    self.seconds[name] += elapsed
                    self.calls[name] += 1

        return timed

    def total(self) -> float:
        with self._lock:
            return sum(self.seconds.values())

    def breakdown_us_per_run(self, runs: int) -> dict[str, Any]:
        """{name: [calls, us per run]} for the JSON record."""
        with self._lock:
            return {
                name: [self.calls[name], round(self.seconds[name] * 1e6 / runs, 2)] for name in sorted(self.seconds)
            }


class Countdown:
    """Counts completions; ``wait_for(n)`` blocks until n have been counted."""

    def __init__(self) -> None:
        self._count = 0
        self._condition = threading.Condition()

    def add(self) -> int:
        with self._condition:
            self._count += 1
            self._condition.notify_all()
            return 1

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self._count >= n, timeout)

    @property
    def count(self) -> int:
        with self._condition:
            return self._count


class Sampler:
    """Calls ``probe`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, probe: Callable[[], None], interval: float = 0.005) -> None:
        self._probe = probe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._probe()


def max_in_window(times: Iterable[float], window: float = W8_WINDOW_S) -> int:
    """The most of ``times`` (seconds) that fall in any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, t + window, lo=i) - i)
    return best


# --------------------------------------------------------------------------- records


def _record(workload: str, system: str, *, runs: int, seconds: float) -> dict[str, Any]:
    record: dict[str, Any] = {"workload": workload, "system": system, "runs": runs, "total_steps": runs}
    record.update(dict.fromkeys(wl.FIGURES))
    record.update(dict.fromkeys(wl.FLOW_FIGURES))
    record["runs_per_s"] = round(runs / seconds, 2)  # one step per run: steps/s would say the same
    record["peak_rss_mb"] = wl.peak_rss_mb()
    record["seconds"] = round(seconds, 4)
    return record


def concurrency_record(
    system: str,
    *,
    runs: int,
    seconds: float,
    seconds_without: float,
    send_seconds: float,
    peak: PeakPerKey,
    peak_without: PeakPerKey,
    calls: CallTimer,
    calls_without: CallTimer,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A W7 record: ``seconds`` from the first send to the last completion, with the per-key limit."""
    record = _record(wl.W7, system, runs=runs, seconds=seconds)
    record["keys"] = W7_KEYS
    record["limit_per_key"] = W7_LIMIT
    record["step_sleep_ms"] = W7_STEP_SLEEP_S * 1e3
    record["peak_executing_per_key"] = peak.peak()
    record["keys_at_peak"] = peak.keys_at_peak()
    record["us_admission_per_run"] = round((seconds - seconds_without) * 1e6 / runs, 2)
    record["seconds_without"] = round(seconds_without, 4)
    record["peak_executing_per_key_without"] = peak_without.peak()
    record["send_seconds"] = round(send_seconds, 4)
    record["us_admission_calls_per_run"] = round(calls.total() * 1e6 / runs, 2)
    record["us_admission_calls_per_run_without"] = round(calls_without.total() * 1e6 / runs, 2)
    record["admission_calls"] = calls.breakdown_us_per_run(runs)
    record["admission_calls_without"] = calls_without.breakdown_us_per_run(runs)
    record["admission_method"] = W7_ADMISSION_METHOD
    record.update(extra or {})
    return record


def throttle_record(
    system: str,
    *,
    events: int,
    completed: int,
    seconds: float,
    send_seconds: float,
    cpu_seconds: float,
    starts: Sequence[float],
    t0: float,
    burst: int | None = W8_BURST,
    bound: int = W8_BOUND,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A W8 record: ``seconds`` from the first send (at ``t0``) to the last completion; ``starts`` are
    the runs' start times on the same clock. ``bound`` is the most starts the system promises in any
    window of ``W8_WINDOW_S`` (``burst`` None: the system has no burst setting)."""
    record = _record(wl.W8, system, runs=events, seconds=seconds)
    record["events"] = events
    record["completed"] = completed
    record["started"] = len(starts)
    record["limit_per_s"] = W8_LIMIT / W8_PERIOD_S
    record["burst"] = burst
    record["bound_per_window"] = bound
    record["max_starts_per_s"] = max_in_window(starts)
    record["dropped"] = events - completed
    record["us_per_event"] = round(send_seconds * 1e6 / events, 2)
    record["cpu_us_per_event"] = round(cpu_seconds * 1e6 / events, 2)
    record["send_seconds"] = round(send_seconds, 4)
    record["floor_seconds"] = round(max(0, events - W8_BURST - 1) * W8_PERIOD_S / W8_LIMIT, 2)
    record["start_span_s"] = round(max(starts) - min(starts), 3) if starts else None
    # the first run's start after the first send, and how many started within a window of it: a late
    # first start shows as a crowded first window
    record["first_start_s"] = round(min(starts) - t0, 4) if starts else None
    record["starts_in_first_window"] = sum(1 for t in starts if t < min(starts) + W8_WINDOW_S) if starts else 0
    record["cost_method"] = W8_COST_METHOD
    record.update(extra or {})
    return record


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads, so far."""
    times = os.times()
    return times.user, times.system
