"""``python -m benchmarks [WORKLOAD ...] [--systems steplog,dbos] [--quick] [--json FILE]``.

Runs each workload point on each system in its own fresh subprocess
(``python -m benchmarks.run_<system> WORKLOAD --n SIZE``), collects the JSON lines the child prints,
prints a table with the steplog/dbos ratio of every figure and the targets, and optionally writes
the results as JSON lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import flow, ingest
from benchmarks import workloads as wl

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 1800.0
STDERR_TAIL_LINES = 15

Record = dict[str, Any]


# --------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class Options:
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    sizes: wl.Sizes
    json_path: Path | None
    repeat: int


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run steplog and DBOS on the same workloads and print steplog/dbos ratios.",
        epilog="; ".join(f"{name}: {text}" for name, text in wl.DESCRIPTIONS.items()),
    )
    parser.add_argument(
        "workloads",
        nargs="*",
        type=_workload,
        metavar="WORKLOAD",
        help=f"any of {', '.join(wl.WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(wl.SYSTEMS),
        type=_system_list,
        help="comma-separated systems to run (default: steplog,dbos)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke sizes: W1 {wl.QUICK.w1_runs} runs, "
        f"W2 S={','.join(map(str, wl.QUICK.w2_steps))}, W3 {wl.QUICK.w3_runs} runs, "
        f"W4 {wl.QUICK.w4_manual_runs} (manual clock) and {wl.QUICK.w4_real_runs} (real clock) runs, "
        f"W6 W={','.join(map(str, wl.QUICK.w6_waits))}, W7 {wl.QUICK.w7_runs} runs, W8 {wl.QUICK.w8_events} events,"
        f" W9 {wl.QUICK.w9_events} events",
    )
    parser.add_argument(
        "--json", dest="json_path", type=Path, help="write one JSON object per line"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="run each point N times, systems interleaved, and report the median"
        " (default 3; 1 with --quick)",
    )
    ns = parser.parse_args(argv)
    repeat = ns.repeat if ns.repeat is not None else (1 if ns.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    workloads = tuple(dict.fromkeys(ns.workloads)) or wl.WORKLOADS
    return Options(
        workloads=workloads,
        systems=ns.systems,
        sizes=wl.QUICK if ns.quick else wl.FULL,
        json_path=ns.json_path,
        repeat=repeat,
    )


def _workload(text: str) -> str:
    name = text.strip().upper()
    if name not in wl.WORKLOADS:
        raise argparse.ArgumentTypeError(
            f"unknown workload {text!r}; expected one of {', '.join(wl.WORKLOADS)}"
        )
    return name


def _system_list(text: str) -> tuple[str, ...]:
    systems = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    unknown = [s for s in systems if s not in wl.SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {', '.join(unknown) or '(none)'}; "
            f"expected some of {', '.join(wl.SYSTEMS)}"
        )
    return systems


def available_systems(requested: tuple[str, ...]) -> tuple[str, ...]:
    """Drop DBOS with a clear note when it is not installed; steplog always runs if asked for."""
    if "dbos" in requested and importlib.util.find_spec("dbos") is None:
        note(
            "NOTE: dbos is not installed, so only steplog runs and every ratio is n/a. "
            "Install it with `pip install dbos` (figures in benchmarks/README.md use dbos 3.4.0)."
        )
        return tuple(s for s in requested if s != "dbos")
    return requested


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child processes


def child_command(system: str, workload: str, point: wl.Point) -> list[str]:
    command = [sys.executable, "-m", f"benchmarks.run_{system}", workload, "--n", str(point.size)]
    if point.clock is not None:
        command += ["--clock", point.clock]
    if point.batch is not None:
        command += ["--batch", str(point.batch)]
    return command


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def run_child(system: str, workload: str, point: wl.Point) -> list[Record]:
    """Run one workload point in a fresh process; its records, or [] and a note on failure."""
    label = f"{workload} {point_label(workload, point)} on {system}"
    note(f"running {label} ...")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            child_command(system, workload, point),
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        note(f"  FAILED: {label} did not finish within {CHILD_TIMEOUT_S:.0f} s")
        return []
    records = parse_records(proc.stdout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not records:
        tail = "\n".join(proc.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
        note(f"  FAILED: {label} exited {proc.returncode} after {elapsed:.1f} s\n{indent(tail)}")
        return []
    note(f"  done in {elapsed:.1f} s (process included)")
    return records


def parse_records(stdout: str) -> list[Record]:
    records: list[Record] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "workload" in obj and "system" in obj:
            records.append(obj)
    return records


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def run_all(options: Options, systems: tuple[str, ...]) -> tuple[list[Record], int]:
    records: list[Record] = []
    failures = 0
    for workload in options.workloads:
        for point in options.sizes.points(workload):
            able = [s for s in systems if (s, workload, point.clock) not in wl.UNSUPPORTED]
            samples: dict[str, list[Record]] = {system: [] for system in able}
            for _ in range(options.repeat):
                for system in able:  # interleaved, so that a noisy minute hits both systems
                    got = run_child(system, workload, point)
                    failures += not got
                    samples[system].extend(got)
            records.extend(median_record(got) for got in samples.values() if got)
    return records, failures


#: JSON-only figures that are also reported as the median of the repeats.
MEDIAN_EXTRAS = (
    "send_seconds", "park_seconds", "sleeping_rss_mb", "peak_rss_end_mb", "deadline_spread_s", *flow.MEDIAN_EXTRAS,
    *ingest.MEDIAN_EXTRAS,
)
#: Every figure of the table, in its order (only W9 records carry the ingest figures, so putting them first
#: changes no other workload's rows).
TABLE_FIGURES = (*wl.INGEST_FIGURES, *wl.FIGURES, *wl.FLOW_FIGURES)


def median_record(samples: list[Record]) -> Record:
    """One record whose figures are the medians of the samples; ``repeats`` says how many."""
    merged = dict(samples[0])
    for key in (*TABLE_FIGURES, *MEDIAN_EXTRAS):
        values = [s.get(key) for s in samples]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = round(statistics.median(values), 3)  # type: ignore[arg-type]
    merged["repeats"] = len(samples)
    if all(isinstance(s.get("steps_per_s"), (int, float)) for s in samples):
        merged["steps_per_s_range"] = [min(s["steps_per_s"] for s in samples), max(s["steps_per_s"] for s in samples)]
    return merged


# --------------------------------------------------------------------------- table


def size_of(record: Record) -> int:
    if record["workload"] == wl.W2:
        return int(record["steps"])
    if record["workload"] == wl.W6:
        return int(record["waits"])
    if record["workload"] == wl.W9:
        return int(record["events"])
    return int(record["runs"])


def point_of(record: Record) -> wl.Point:
    return wl.Point(size_of(record), record.get("clock"), record.get("batch"))


def point_label(workload: str, point: wl.Point) -> str:
    if workload == wl.W2:
        return f"S={point.size}"
    if workload == wl.W6:
        return f"W={point.size}"
    if point.batch is not None:
        return f"batch={point.batch} n={point.size}"
    if point.clock is not None:
        return f"{point.clock} n={point.size}"
    return f"n={point.size}"


Key = tuple[str, wl.Point, str]


def index(records: list[Record]) -> dict[Key, Record]:
    return {(r["workload"], point_of(r), r["system"]): r for r in records}


def ratio(mine: Any, theirs: Any) -> float | None:
    if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs:
        return float(mine) / float(theirs)
    return None


def fmt(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    if isinstance(value, int):  # counts (W7's peak per key, W8's starts and drops)
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table_rows(options: Options, records: list[Record]) -> list[tuple[str, ...]]:
    by_key = index(records)
    rows: list[tuple[str, ...]] = []
    for workload in options.workloads:
        for point in options.sizes.points(workload):
            mine = by_key.get((workload, point, "steplog"), {})
            theirs = by_key.get((workload, point, "dbos"), {})
            for figure in TABLE_FIGURES:
                a, b = mine.get(figure), theirs.get(figure)
                if a is None and b is None:
                    continue
                goal = "higher" if wl.HIGHER_IS_BETTER[figure] else "lower"
                rows.append(
                    (
                        f"{workload} {point_label(workload, point)}",
                        figure,
                        fmt(a),
                        fmt(b),
                        fmt_ratio(ratio(a, b)),
                        goal,
                    )
                )
    return rows


def render_table(rows: list[tuple[str, ...]]) -> str:
    header = ("workload", "figure", "steplog", "dbos", "steplog/dbos", "better")
    all_rows = [header, *rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    right = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


# --------------------------------------------------------------------------- targets


def target_lines(records: list[Record]) -> list[str]:
    by_key = index(records)
    return [
        _target_w1(records, by_key), _target_w2(records), _target_w3(records), *_target_w6(records),
        *_target_w7(records), *_target_w8(records), _target_w9(records),
    ]


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a "}[ok]


def _target_w1(records: list[Record], by_key: dict[Key, Record]) -> str:
    sizes = sorted({size_of(r) for r in records if r["workload"] == wl.W1})
    value = None
    for size in sizes:
        value = ratio(
            by_key.get((wl.W1, wl.Point(size), "steplog"), {}).get("steps_per_s"),
            by_key.get((wl.W1, wl.Point(size), "dbos"), {}).get("steps_per_s"),
        )
    ok = None if value is None else value >= 20.0
    return f"{_verdict(ok)}  W1 steplog steps/s >= 20x DBOS: {fmt_ratio(value)}"


def _target_w2(records: list[Record]) -> str:
    mine = {
        size_of(r): r["us_per_step"]
        for r in records
        if r["workload"] == wl.W2 and r["system"] == "steplog"
    }
    if len(mine) < 2:
        return f"{_verdict(None)}  W2 steplog us/step at largest S within 1.3x of smallest S: n/a"
    small, large = min(mine), max(mine)
    value = ratio(mine[large], mine[small])
    ok = None if value is None else value <= 1.3
    return (
        f"{_verdict(ok)}  W2 steplog us/step at S={large} within 1.3x of S={small}: "
        f"{fmt(mine[large])} vs {fmt(mine[small])} us = {fmt_ratio(value)}"
    )


def _target_w3(records: list[Record]) -> str:
    p50 = next(
        (r["p50_ms"] for r in records if r["workload"] == wl.W3 and r["system"] == "steplog"), None
    )
    ok = None if p50 is None else p50 < 2.0
    return f"{_verdict(ok)}  W3 steplog p50 < 2 ms: {fmt(p50)} ms"


W6_TARGET_WAITS = 10_000
W6_TARGET_S = 10.0
W6_LINEAR_SLACK = 1.3


def _target_w6(records: list[Record]) -> list[str]:
    mine = {
        size_of(r): r["seconds"]
        for r in records
        if r["workload"] == wl.W6 and r["system"] == "steplog"
    }
    at_target = mine.get(W6_TARGET_WAITS)
    ok = None if at_target is None else at_target < W6_TARGET_S
    lines = [
        f"{_verdict(ok)}  W6 steplog {W6_TARGET_WAITS:,} waits resumed in < {W6_TARGET_S:.0f} s: {fmt(at_target)} s"
    ]
    if len(mine) < 2:
        lines.append(f"{_verdict(None)}  W6 steplog time per wait at largest W within 1.3x of smallest W (linear): n/a")
        return lines
    per_wait = {w: seconds / w for w, seconds in sorted(mine.items())}
    small, large = min(per_wait), max(per_wait)
    growth = ratio(per_wait[large], per_wait[small])
    ok = None if growth is None else growth <= W6_LINEAR_SLACK
    shown = ", ".join(f"{us * 1e6:.0f} at W={w}" for w, us in per_wait.items())
    lines.append(
        f"{_verdict(ok)}  W6 steplog time per wait at W={large} within {W6_LINEAR_SLACK}x of W={small} (linear): "
        f"{shown} us = {fmt_ratio(growth)}"
    )
    return lines


def _flow_records(records: list[Record], workload: str) -> list[Record]:
    """The records of ``workload``, steplog first."""
    return sorted((r for r in records if r["workload"] == workload), key=lambda r: r["system"] != "steplog")


def _target_w7(records: list[Record]) -> list[str]:
    """W7 checks: no key ever had more than its limit executing (on every system that ran)."""
    lines = []
    for r in _flow_records(records, wl.W7):
        peak = r.get("peak_executing_per_key")
        ok = None if peak is None else peak <= flow.W7_LIMIT
        lines.append(
            f"{_verdict(ok)}  W7 {r['system']} n={size_of(r)} peak executing per key <= {flow.W7_LIMIT}: {fmt(peak)}"
        )
    return lines or [f"{_verdict(None)}  W7 peak executing per key <= {flow.W7_LIMIT}: n/a"]


def _target_w8(records: list[Record]) -> list[str]:
    """W8 checks: no event dropped, and no 1 s window with more starts than the system's own bound
    (steplog: GCRA's limit + burst + 1 = 102; DBOS: its limiter's 100 in any rolling second)."""
    lines = []
    for r in _flow_records(records, wl.W8):
        dropped, peak, bound = r.get("dropped"), r.get("max_starts_per_s"), r.get("bound_per_window")
        ok = None if dropped is None else dropped == 0
        lines.append(f"{_verdict(ok)}  W8 {r['system']} n={size_of(r)} dropped == 0: {fmt(dropped)}")
        ok = None if peak is None or bound is None else peak <= bound
        lines.append(
            f"{_verdict(ok)}  W8 {r['system']} n={size_of(r)} max starts in any 1 s window <= {fmt(bound)}: {fmt(peak)}"
            f" (first start {fmt(r.get('first_start_s'))} s after the first send;"
            f" {fmt(r.get('starts_in_first_window'))} in the 1 s from it)"
        )
    if not lines:
        lines.append(f"{_verdict(None)}  W8 dropped == 0 and max starts per 1 s window within the bound: n/a")
    return lines


def _target_w9(records: list[Record]) -> str:
    """W9: steplog accepts at least 5,000 events/s with batches of 100 (8 clients, every answer committed)."""
    goal, batch = ingest.W9_TARGET_EVENTS_PER_S, ingest.W9_TARGET_BATCH
    value = next(
        (r["events_per_s"] for r in records
         if r["workload"] == wl.W9 and r["system"] == "steplog" and r.get("batch") == batch),
        None,
    )
    ok = None if value is None else value >= goal
    return f"{_verdict(ok)}  W9 steplog accepts >= {goal:,.0f} events/s with batches of {batch}: {fmt(value)} events/s"


# --------------------------------------------------------------------------- output


def write_json(path: Path, records: list[Record]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


def report(options: Options, records: list[Record], ran: tuple[str, ...]) -> None:
    sizes = "quick" if options.sizes == wl.QUICK else "full"
    print(f"steplog benchmarks ({sizes} sizes; systems run: {', '.join(ran) or 'none'})")
    print("ratio = steplog / dbos; 'better' says which direction is good for that figure")
    print()
    print(render_table(table_rows(options, records)))
    notes = unsupported_notes(options, ran)
    if notes:
        print()
        print("n/a by design:")
        for text in notes:
            print("  " + text)
    print()
    print("targets:")
    for text in target_lines(records):
        print("  " + text)


def unsupported_notes(options: Options, ran: tuple[str, ...]) -> list[str]:
    notes = []
    for workload in options.workloads:
        for point in options.sizes.points(workload):
            for system in ran:
                reason = wl.UNSUPPORTED.get((system, workload, point.clock))
                if reason is not None:
                    notes.append(f"{workload} {point_label(workload, point)} on {system}: {reason}")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    systems = available_systems(options.systems)
    records, failures = run_all(options, systems)
    report(options, records, systems)
    if options.json_path is not None:
        write_json(options.json_path, records)
        note(f"wrote {len(records)} result(s) to {options.json_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
