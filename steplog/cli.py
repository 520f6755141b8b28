"""The ``steplog`` command: look into a steplog database, rebuild its projections, run the demo.

    steplog events  [--name NAME] [--since T] [--until T] [--limit N] [--json]
    steplog runs    [--function ID] [--status S] [--event ID] [--since T] [--until T] [--limit N] [--json]
    steplog runs    --stuck [WINDOW] [--json]
    steplog run     RUN_ID [--json]
    steplog rebuild [--check] [--json]
    steplog check   [DB] [--json]
    steplog demo    [--events N]
    steplog serve   MODULE[:CLIENT] [--host H] [--port P] [--event-key KEY ...] [--dev] [--api-token T]

Every command takes ``--db PATH`` (default ``$STEPLOG_DB``, else ``steplog.db``). The query commands
only read: they open the file read-only and start no actor, so they are safe next to a running app.
Times are shown in UTC. Exit codes: 0 ok, 1 an error (no database, no such run, ``rebuild
--check`` found differences, ``check`` found damage, or ``runs --stuck`` found stuck runs), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from steplog.actors.dblock import DatabaseLock
from steplog.actors.errors import DatabaseInUseError
from steplog.engine import Engine, RunNotFoundError, RunProjector, parse_duration, queries, stuck_runs
from steplog.eventstore import Difference, EventStoreError, SqliteEventStore, parse_time
from steplog.eventstore.sqlite import BUSY_TIMEOUT_MS, CheckReport

DEFAULT_DB = "steplog.db"
DB_ENV = "STEPLOG_DB"
DEFAULT_LIMIT = 100
STATUSES = queries.STATUSES
PROJECTION_TABLES = tuple(table.name for table in RunProjector.tables)
CELL_WIDTH = 60
MAX_LISTED_DIFFERENCES = 50


class CliError(Exception):
    """A problem to report on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    args.db = args.db or os.environ.get(DB_ENV) or DEFAULT_DB
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since > until:
        args.subparser.error(f"--since ({_iso(since)}) is after --until ({_iso(until)})")
    undecodable = _undecodable_filter(args)
    if undecodable is not None:
        args.subparser.error(f"{undecodable}: the argument is not valid UTF-8 text")
    try:
        return int(args.handler(args, sys.stdout))
    except CliError as error:
        print(f"steplog: error: {error}", file=sys.stderr)
        return error.code
    except EventStoreError as error:
        print(f"steplog: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `steplog runs | head`: the reader went away; stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("steplog: interrupted", file=sys.stderr)
        return 130


FILTER_ARGUMENTS = ("name", "function", "status", "event", "run_id", "if_exp", "reason")
"""Arguments compared with what the log holds: text, which undecodable bytes (in a lone surrogate,
as Python passes them in ``sys.argv``) can never equal."""


def _undecodable_filter(args: argparse.Namespace) -> str | None:
    """The first filter argument that is not valid UTF-8 text, as the user would recognise it; or None."""
    for name in FILTER_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{name.replace('_', '-')} {value!r}"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``steplog`` command."""
    parser = argparse.ArgumentParser(
        prog="steplog",
        description="Durable functions on SQLite: look into a steplog database, or run the demo.",
        epilog="Start with `steplog demo`, then `steplog runs` and `steplog run RUN_ID`.",
    )
    db_help = f"the SQLite database (default: ${DB_ENV}, else {DEFAULT_DB})"
    parser.add_argument("--db", metavar="PATH", default=None, help=db_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=db_help)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    window = argparse.ArgumentParser(add_help=False)
    time_help = "ISO 8601 time (UTC unless it has an offset) or a duration ago, like 30m, 2h, 1d"
    window.add_argument("--since", type=_time_arg, metavar="TIME", help=f"not before this time: {time_help}")
    window.add_argument("--until", type=_time_arg, metavar="TIME", help="not after this time (same forms)")
    window.add_argument(
        "--limit", type=_limit_arg, default=DEFAULT_LIMIT, metavar="N",
        help=f"at most N rows, newest first (default {DEFAULT_LIMIT}; 0 for all)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], parents: list[argparse.ArgumentParser], **kw: Any) -> Any:
        sub = commands.add_parser(name, parents=[common, *parents], **kw)
        sub.set_defaults(handler=handler, subparser=sub)
        return sub

    events = command(
        "events", cmd_events, [window, as_json], help="events received, newest first, with the runs they started",
        description="Events received, newest first, with the runs each started; duplicates are marked."
        " --since/--until select by the time the event was received.",
    )
    events.add_argument("--name", help="only events with this name")

    runs = command(
        "runs", cmd_runs, [window, as_json], help="runs, newest first",
        description="Runs, newest first. --since/--until select by the time the run was scheduled.",
    )
    runs.add_argument("--function", metavar="ID", help="only runs of this function")
    runs.add_argument("--status", choices=STATUSES, help="only runs with this status")
    runs.add_argument("--event", metavar="EVENT_ID", help="only runs started by this event (its id or internal id)")
    runs.add_argument(
        "--stuck", nargs="?", const=timedelta(seconds=60), type=_window_arg, metavar="WINDOW",
        help="instead: runs eligible to progress (ready, due, woken or running) that have recorded nothing for"
        " WINDOW (default 60s), each with its history (--function and --status narrow them); exit 1 if there"
        " are any",
    )

    run = command(
        "run", cmd_run, [as_json], help="one run: its summary and each step attempt",
        description="A run's summary and history: each step attempt with its status, times, duration and"
        " output or error. --json includes full error stacks and every log entry of the run.",
    )
    run.add_argument("run_id", metavar="RUN_ID", help="the run's id (a unique prefix is enough)")

    cancel = command(
        "cancel", cmd_cancel, [as_json], help="cancel one run, or the runs of a function matching filters",
        description="Cancel a run (RUN_ID), or every run of --function that has not ended and matches"
        " --status, --since/--until (scheduling time) and --if (CEL over the trigger `event`). The"
        " request is recorded at once; each run stops before its next step when an engine runs it."
        " Needs the database to itself: while your app's engine runs, cancel from it (client.cancel).",
    )
    cancel.add_argument("run_id", metavar="RUN_ID", nargs="?", help="the run's id (a unique prefix is enough)")
    cancel.add_argument("--function", metavar="ID", help="cancel the runs of this function that match the filters")
    cancel.add_argument("--status", choices=queries.ACTIVE_STATUSES, help="only runs with this status")
    cancel.add_argument("--since", type=_time_arg, metavar="TIME", help="only runs scheduled at or after this time")
    cancel.add_argument("--until", type=_time_arg, metavar="TIME", help="only runs scheduled at or before this time")
    cancel.add_argument("--if", dest="if_exp", metavar="CEL", help="only runs whose trigger satisfies this expression")
    cancel.add_argument("--reason", default="cancelled from the command line", help="recorded with each run")

    rebuild = command(
        "rebuild", cmd_rebuild, [as_json], help="rebuild the projections from the log",
        description=f"Rebuild the projection tables ({', '.join(PROJECTION_TABLES)}) from the log and report"
        " every row where the live tables differed. Rebuilding locks the database for writes while it"
        " runs; prefer to run it while your app is stopped.",
    )
    rebuild.add_argument("--check", action="store_true", help="only report differences; exit 1 if there are any")

    check = command(
        "check", cmd_check, [as_json], help="verify the database: SQLite's integrity, every entry's checksum",
        description="Verify the database without changing it: SQLite's PRAGMA integrity_check, every log"
        " entry's checksum and JSON, positions and stream versions without gaps, and the projections against"
        " a rebuild from the log. Lists each damaged entry (position, stream, what is wrong); exit 1 if"
        " anything is wrong, else prints `ok: N entries`. Safe next to a running app.",
    )
    check.add_argument("database", metavar="DB", nargs="?", help="the database (instead of --db)")

    export = command(
        "export", cmd_export, [], help="write a run's recorded history as JSON, to replay in a test",
        description="Write the recorded history of a run (its log entries and the signals sent to it) as one"
        " JSON document, to stdout or --output. steplog.testing.RecordedRun.load reads it back, and"
        " steplog.testing.replay checks it against your current code.",
    )
    export.add_argument("run_id", metavar="RUN_ID", help="the run's id (a unique prefix is enough)")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    replay = command(
        "replay", cmd_replay, [as_json], help="replay recorded runs against your current code",
        description="Replay runs against the functions of MODULE[:CLIENT] (imported, never started): the"
        " recorded run FILEs (from `steplog export`), or else the runs in the database (--function,"
        " --status, --limit select them). No step body runs and nothing is written. Reports each run whose"
        " code now diverges (a new, vanished or changed step, or another ending); exit 1 if any does.",
    )
    replay.add_argument("target", metavar="MODULE[:CLIENT]", help="where your client is, like app:client")
    replay.add_argument("files", metavar="FILE", nargs="*", help="recorded runs; none: runs in the database")
    replay.add_argument("--function", metavar="ID", help="only runs of this function")
    replay.add_argument("--status", choices=STATUSES, help="only runs with this status")
    replay.add_argument(
        "--limit", type=_limit_arg, default=DEFAULT_LIMIT, metavar="N",
        help=f"at most N runs, newest first (default {DEFAULT_LIMIT}; 0 for all)",
    )

    demo = command(
        "demo", cmd_demo, [], help="run the first-contact demo on a SQLite file",
        description="Define four small functions, send some events (one kind of run waits for a later event),"
        " wait for the runs and show what happened, all in a SQLite file you can then explore with the other"
        " commands.",
    )
    demo.add_argument("--events", type=_count_arg, default=2, metavar="N", help="how many orders to send (default 2)")
    _add_serve(commands)
    return parser


def _add_serve(commands: Any) -> None:
    # no --db: the user's module builds its client on its own database
    serve = commands.add_parser(
        "serve", help="serve your app's client over HTTP: Inngest's event API, webhooks and the UI",
        description="Import MODULE (from the current directory first), take its Steplog client (MODULE:NAME"
        " names it, or a function returning it; MODULE alone takes the only client in it), start it and"
        " serve POST /e/{event_key} (Inngest's event API), /webhooks/... and the UI. SIGINT or SIGTERM"
        " stops it gracefully: requests in flight are answered (after their commit), then the engine stops.",
    )
    serve.set_defaults(handler=cmd_serve, subparser=serve)
    serve.add_argument("target", metavar="MODULE[:CLIENT]", help="where the client is, like app:client")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8288, help="port to listen on (default 8288, as Inngest's dev server)")
    serve.add_argument(
        "--event-key", dest="event_keys", action="append", default=[], metavar="KEY",
        help="an event key POST /e/KEY accepts (repeatable; default: $STEPLOG_EVENT_KEY, comma separated)",
    )
    serve.add_argument(
        "--dev", action="store_true", help="accept any event key (default: on if $STEPLOG_DEV is 1)",
    )
    serve.add_argument(
        "--api-token", metavar="TOKEN", default=None,
        help="token the UI and /api/ need, required off loopback (default: $STEPLOG_API_TOKEN, which other"
        " users cannot see in the process list)",
    )


# -- argument types ------------------------------------------------------------------------------


def _time_arg(text: str) -> datetime:
    try:
        moment = queries.parse_when(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    assert moment is not None
    return moment


def _limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: use a whole number, 0 for no limit")
    return value


def _window_arg(text: str) -> timedelta:
    try:
        seconds: float | str = float(text)  # a bare number is seconds, as everywhere in steplog
    except ValueError:
        seconds = text
    try:
        window = parse_duration(seconds, what="window")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if window <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r}: the window must be longer than zero")
    return window


def _print_stuck(args: argparse.Namespace, out: TextIO) -> int:
    unused = [flag for flag, value in (("--event", args.event), ("--since", args.since), ("--until", args.until))
              if value is not None]
    if unused:
        raise CliError(f"--stuck takes --function and --status, not {', '.join(unused)}", code=2)
    with open_reader(args.db) as store:
        stuck = stuck_runs(store, now=datetime.now(UTC), window=args.stuck)
    stuck = [run for run in stuck if args.function in (None, run.function_id) and args.status in (None, run.status)]
    if args.json:
        _print_json([run.to_dict() for run in stuck], out)
    elif not stuck:
        print(f"no stuck runs (none eligible to progress for {format_seconds(args.stuck.total_seconds())})", file=out)
    else:
        print("\n\n".join(run.describe() for run in stuck), file=out)
    return 1 if stuck else 0


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number from 1 to 10000")
    return value


# -- opening the database ------------------------------------------------------------------------


def _read_only_uri(path: str) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


def check_database(path: str) -> set[str]:
    """Make sure ``path`` is a steplog database without changing it; return its table names."""
    file = Path(path)
    if not file.exists():
        raise CliError(f"no steplog database at {path}; run `steplog demo` or point --db at your app's database")
    if file.is_dir():
        raise CliError(f"{path} is a directory, not a steplog database; point --db at the database file")
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as error:  # a damaged schema may hold text that is not UTF-8
        raise CliError(f"cannot read {path} as a SQLite database: {error}") from error
    if "log" not in tables:
        raise CliError(f"{path} is not a steplog database (it has no `log` table)")
    return tables


@contextmanager
def open_reader(path: str) -> Iterator[SqliteEventStore]:
    """The database at ``path``, read-only, with the engine's projections; no actor is started."""
    tables = check_database(path)
    missing = [name for name in PROJECTION_TABLES if name not in tables]
    if missing:
        raise CliError(
            f"{path} has a log but no {', '.join(missing)} table(s); `steplog rebuild --db {shlex.quote(path)}`"
            " creates them from the log"
        )
    store = SqliteEventStore(path, RunProjector(), read_only=True)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def exclusive(path: str, hint: str) -> Iterator[None]:
    """The database's engine lock, held while the block writes; CliError ending with ``hint`` if an engine has it."""
    lock = DatabaseLock(path)
    try:
        lock.acquire()
    except DatabaseInUseError as error:
        raise CliError(f"{error}; {hint}") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def open_writer(path: str) -> Iterator[SqliteEventStore]:
    """The database at ``path`` opened for writing (creating missing projection tables)."""
    check_database(path)
    store = SqliteEventStore(path, RunProjector())
    try:
        yield store
    finally:
        store.close()


# -- commands ------------------------------------------------------------------------------------


def cmd_events(args: argparse.Namespace, out: TextIO) -> int:
    with open_reader(args.db) as store:
        events = queries.list_events(
            store, name=args.name, since=args.since, until=args.until, limit=args.limit or None
        )
        if args.json:
            return _print_json(events, out)
        runs = {run_id: _run_or_none(store, run_id) for event in events for run_id in event["runs"]}
    if not events:
        print("no events" + (" match" if args.name or args.since or args.until else " yet"), file=out)
        return 0
    rows: list[list[str]] = []
    for event in events:
        first = [_when(event["received_at"]), event["name"], event["id"]]
        if event["duplicate"]:
            rows.append([*first, "", "duplicate id: started nothing"])
            continue
        held = [f"{note['function_id']} ({note['outcome']})" for note in event["flow"]
                if note.get("outcome") not in (None, "skipped")]
        if not event["runs"] and not held:
            rows.append([*first, "", "no function matched"])
            continue
        lines = []
        for run_id in event["runs"]:
            run = runs.get(run_id) or {}
            details = f"{run.get('function_id', '?')} ({run.get('status', '?')})"
            if run.get("status") == "skipped":
                details += f": {(run.get('error') or {}).get('message', '')}"
            lines.append([run_id, details])
        lines.extend(["", text] for text in held)
        for index, line in enumerate(lines):
            rows.append([*(first if index == 0 else ["", "", ""]), *line])
    print_table(["RECEIVED (UTC)", "NAME", "ID", "RUNS", ""], rows, out)
    _print_more(len(events), args.limit, "events", out)
    return 0


def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    if args.stuck is not None:
        return _print_stuck(args, out)
    filters = {"function_id": args.function, "status": args.status, "since": args.since, "until": args.until}
    limit = args.limit or None
    with open_reader(args.db) as store:
        if args.event is None:
            runs = queries.list_runs(store, **filters, limit=limit)
        else:
            runs = []
            for internal_id in queries.event_internal_ids(store, args.event):
                runs.extend(queries.list_runs(store, **filters, event_id=internal_id, limit=limit))
        runs.sort(key=lambda run: (run["scheduled_at"] or "", run["run_id"]), reverse=True)
        runs = runs[:limit]
        if not args.json:
            names = _event_names(store, {run["event_id"] for run in runs if run["event_id"]})
    if args.json:
        return _print_json(runs, out)
    if not runs:
        filtered = any(v is not None for v in (*filters.values(), args.event))
        print("no runs" + (" match" if filtered else " yet"), file=out)
        return 0
    rows = [
        [
            run["run_id"], run["function_id"], run["status"], _when(run["scheduled_at"]),
            duration_text(run["started_at"], run["ended_at"]), str(run["steps"] if run["steps"] is not None else ""),
            names.get(run["event_id"], run["event_id"] or ""),
        ]
        for run in runs
    ]
    print_table(["RUN ID", "FUNCTION", "STATUS", "SCHEDULED (UTC)", "DURATION", "STEPS", "EVENT"], rows, out)
    _print_more(len(runs), args.limit, "runs", out)
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    with open_reader(args.db) as store:
        run_id = _resolve_run_id(store, args.run_id)
        history = queries.run_history(store, run_id)
        event = _first_event(history)
    if args.json:
        document = history.to_dict()
        document["run"]["duration_ms"] = _millis(history.run["started_at"], history.run["ended_at"])
        for step in document["steps"]:
            step["duration_ms"] = _millis(step["started_at"], step["ended_at"])
        return _print_json(document, out)
    print_run(history, event, out)
    return 0


def cmd_cancel(args: argparse.Namespace, out: TextIO) -> int:
    if (args.run_id is None) == (args.function is None):
        raise CliError("give a RUN_ID, or --function with filters (not both)", code=2)
    if args.run_id is not None and (args.status or args.since or args.until or args.if_exp):
        raise CliError("--status, --since, --until and --if select runs of --function; with a RUN_ID leave them out",
                       code=2)
    check_database(args.db)
    with exclusive(args.db, "cancel from the running app (client.cancel), or stop it first"), \
            open_writer(args.db) as store:
        cancelled, ended = _cancel_runs(store, args)
    if args.json:
        return _print_json({"cancelled": cancelled, "already_ended": ended}, out)
    for run_id in cancelled:
        print(f"cancel requested: {run_id}", file=out)
    for run_id in ended:
        print(f"already ended, not cancelled: {run_id}", file=out)
    if not cancelled and not ended:
        print("no run matched; nothing cancelled", file=out)
    elif cancelled:
        print("Each run stops before its next step, once your app's engine runs it.", file=out)
    return 0


def _cancel_runs(store: SqliteEventStore, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    engine = Engine(store)
    if args.run_id is not None:
        run_ids = [_resolve_run_id(store, args.run_id)]
    else:
        try:
            run_ids = queries.runs_to_cancel(
                store, function_id=args.function, status=args.status, since=args.since, until=args.until,
                if_exp=args.if_exp,
            )
        except ValueError as error:
            raise CliError(str(error), code=2) from None
    cancelled: list[str] = []
    ended: list[str] = []
    for run_id in run_ids:
        (cancelled if engine.cancel(run_id, args.reason) else ended).append(run_id)
    return cancelled, ended


def cmd_rebuild(args: argparse.Namespace, out: TextIO) -> int:
    check_database(args.db)
    # rewriting the projections under a running engine would confuse its caches
    locked = nullcontext() if args.check else exclusive(args.db, "stop it before `steplog rebuild`, or use --check")
    with locked, open_writer(args.db) as store:
        differences = store.rebuild_projections(apply=not args.check)
        entries = store.last_position()
    if args.json:
        document = {
            "applied": bool(differences) and not args.check,
            "differences": [_difference_json(d) for d in differences],
        }
        _print_json(document, out)
        return 1 if differences and args.check else 0
    tables = ", ".join(PROJECTION_TABLES)
    if not differences:
        print(f"The projections ({tables}) match the log ({entries} entries): no differences.", file=out)
        return 0
    count = f"{len(differences)} difference{'s' if len(differences) != 1 else ''}"
    if args.check:
        print(f"The projections differ from the log ({entries} entries): {count}, not corrected.", file=out)
    else:
        print(f"Rebuilt the projections from the log ({entries} entries): {count}, corrected.", file=out)
    for difference in differences[:MAX_LISTED_DIFFERENCES]:
        print("  " + describe_difference(difference), file=out)
    if len(differences) > MAX_LISTED_DIFFERENCES:
        print(f"  ... and {len(differences) - MAX_LISTED_DIFFERENCES} more (--json lists them all)", file=out)
    if args.check:
        print(f"Run `steplog rebuild --db {shlex.quote(args.db)}` to correct them.", file=out)
        return 1
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    path = args.database or args.db
    with open_reader(path) as store:
        report = store.check()
    if args.json:
        _print_json(_check_json(report), out)
        return 0 if report.ok else 1
    if report.ok:
        unverified = f" ({report.unverified} written before schema 2 have no checksum)" if report.unverified else ""
        print(f"ok: {report.entries} entries{unverified}", file=out)
        return 0
    for line in report.integrity:
        print(f"SQLite integrity_check: {line}", file=out)
    for damaged in report.damaged[:MAX_LISTED_DIFFERENCES]:
        print(f"damaged: position {damaged.position}, stream {damaged.stream!r}: {damaged.problem}", file=out)
    if len(report.damaged) > MAX_LISTED_DIFFERENCES:
        print(f"  ... and {len(report.damaged) - MAX_LISTED_DIFFERENCES} more (--json lists them all)", file=out)
    if report.differences:
        rows = "1 row differs" if len(report.differences) == 1 else f"{len(report.differences)} rows differ"
        print(f"projections: {rows} from the log; `steplog rebuild --db {shlex.quote(path)}` corrects them", file=out)
        for difference in report.differences[:MAX_LISTED_DIFFERENCES]:
            print("  " + describe_difference(difference), file=out)
    if report.integrity or report.damaged:
        print(f"NOT OK: {path} ({report.entries} entries) is damaged. The engine refuses each run whose entries"
              " are damaged; restore the file from a backup, or keep a copy aside to inspect.", file=out)
    else:
        print(f"NOT OK: the log of {path} ({report.entries} entries) is sound; its projections are not.", file=out)
    return 1


def _check_json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "entries": report.entries,
        "unverified": report.unverified,
        "integrity": list(report.integrity),
        "damaged": [{"position": d.position, "stream": d.stream, "problem": d.problem} for d in report.damaged],
        "differences": None if report.differences is None else [_difference_json(d) for d in report.differences],
    }


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from steplog.testing.replay import export_run

    with open_reader(args.db) as store:
        recorded = export_run(store, _resolve_run_id(store, args.run_id))
    if args.output:
        try:
            recorded.save(args.output)
        except OSError as error:
            raise CliError(f"cannot write {args.output}: {error.strerror or error}") from None
        print(f"wrote run {recorded.run_id} ({len(recorded.entries)} entries) to {args.output}", file=out)
        return 0
    return _print_json(recorded.to_json(), out)


def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    from steplog.server.serve import ServeError, load_client
    from steplog.testing.replay import RecordedRun, export_run

    try:
        client = load_client(args.target)
    except ServeError as error:
        raise CliError(str(error), code=2) from None
    if args.function is not None and client.registry.get(args.function) is None:
        known = ", ".join(repr(f.id) for f in client.registry.all()) or "none"
        raise CliError(f"{args.target} has no function {args.function!r} (its functions: {known})", code=2)
    recorded: list[RecordedRun] = []
    for path in args.files:
        try:
            recorded.append(RecordedRun.load(path))
        except (OSError, ValueError) as error:
            raise CliError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    if not args.files:
        with open_reader(args.db) as store:
            rows = queries.list_runs(store, function_id=args.function, status=args.status, limit=args.limit or None)
            recorded = [export_run(store, row["run_id"]) for row in rows if row["status"] != "skipped"]
    reports = [_replayed(run, client) for run in recorded]
    diverged = [report for report in reports if not report.ok]
    if args.json:
        _print_json([{"run_id": rep.run_id, "function_id": rep.function_id, "ok": rep.ok,
                      "divergences": list(rep.divergences)} for rep in reports], out)
    else:
        for report in diverged:
            print(report, file=out)
        runs = "run" if len(reports) == 1 else "runs"
        print(f"{len(reports)} {runs} replayed: {len(reports) - len(diverged)} ok, {len(diverged)} diverge", file=out)
    return 1 if diverged else 0


def _replayed(recorded: Any, client: Any) -> Any:
    """The replay report of one run; a run that cannot even be replayed (a damaged file) is reported, not raised."""
    from steplog.testing.replay import ReplayReport, replay

    try:
        return replay(recorded, client.registry, limits=client.limits)
    except Exception as error:  # noqa: BLE001 - one damaged run must not hide the report of the others
        problem = f"cannot be replayed: {type(error).__name__}: {error}"
        return ReplayReport(recorded.run_id, recorded.function_id, (problem,), (), None)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from steplog import demo

    return demo.run_demo(args.db, orders=args.events, out=out)


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from steplog.server import serve  # imported here: the other commands need no web server

    options = serve.ServeOptions(
        target=args.target, host=args.host, port=args.port, event_keys=tuple(args.event_keys), dev=args.dev,
        api_token=args.api_token,
    )
    try:
        return serve.run(options, out=out)
    except serve.ServeError as error:
        raise CliError(str(error), code=2) from None


# -- helpers for the commands --------------------------------------------------------------------


def _run_or_none(store: SqliteEventStore, run_id: str) -> dict[str, Any] | None:
    try:
        return queries.get_run(store, run_id)
    except RunNotFoundError:
        return None


def _event_names(store: SqliteEventStore, internal_ids: set[str]) -> dict[str, str]:
    names = {}
    for internal_id in internal_ids:
        rows = store.query("events", where={"internal_id": internal_id}, limit=1)
        if rows:
            names[internal_id] = str(rows[0]["name"])
    return names


def _resolve_run_id(store: SqliteEventStore, text: str) -> str:
    """The run id ``text`` names: itself, or the one run whose id starts with it."""
    text = text.strip()
    if not text:
        raise CliError("the run id is empty", code=2)
    if store.query("runs", where={"run_id": text}, limit=1):
        return text
    for prefix in dict.fromkeys((text, text.upper())):
        rows = store.query("runs", ranges={"run_id": (prefix, prefix + "\U0010ffff")}, order_by="run_id", limit=6)
        if len(rows) == 1:
            return str(rows[0]["run_id"])
        if len(rows) > 1:
            shown = ", ".join(row["run_id"] for row in rows[:5])
            raise CliError(f"{text!r} is the start of several run ids ({shown}{', ...' if len(rows) > 5 else ''})")
    raise CliError(f"no run {text!r} in {store.path}; `steplog runs --db {shlex.quote(store.path)}` lists the runs")


def _first_event(history: queries.RunHistory) -> dict[str, Any] | None:
    for entry in history.entries:
        if entry.type == "run.scheduled":
            events = entry.data.get("events") or []
            return events[0] if events else None
    return None


def _difference_json(difference: Difference) -> dict[str, Any]:
    return {
        "table": difference.table,
        "key": list(difference.key),
        "columns": _changed_columns(difference),
        "live": difference.live,
        "rebuilt": difference.rebuilt,
    }


def _changed_columns(difference: Difference) -> list[str]:
    live, rebuilt = difference.live or {}, difference.rebuilt or {}
    return [column for column in {**live, **rebuilt} if live.get(column) != rebuilt.get(column)]


def describe_difference(difference: Difference) -> str:
    """One line saying how a live row differs from the row rebuilt from the log."""
    key = "/".join(str(part) for part in difference.key)
    where = f"{difference.table} {key}"
    if difference.live is None:
        return f"{where}: missing from the live table (the log has it)"
    if difference.rebuilt is None:
        return f"{where}: in the live table but not in the log"
    live, rebuilt = difference.live, difference.rebuilt
    changes = [
        f"{column}: {short(live.get(column), 40)} (live) vs {short(rebuilt.get(column), 40)} (log)"
        for column in _changed_columns(difference)
    ]
    return f"{where}: " + "; ".join(changes)


def print_run(history: queries.RunHistory, event: dict[str, Any] | None, out: TextIO) -> None:
    """A run's summary, then a table of its step attempts."""
    run = history.run
    summary = [
        ("run", run["run_id"]),
        ("function", run["function_id"]),
        ("status", run["status"]),
        ("event", f"{event['name']} {event.get('id', '')}".strip() if event else run["event_id"] or "-"),
        ("scheduled", _when(run["scheduled_at"]) + " UTC"),
        ("started", _when(run["started_at"])),
        ("ended", _when(run["ended_at"])),
        ("duration", duration_text(run["started_at"], run["ended_at"])),
    ]
    if run["status"] == "completed":
        summary.append(("output", short(run["output"], 100)))
    if run.get("error"):
        summary.append(("error", error_text(run["error"])))
    for label, value in summary:
        print(f"{label:<10} {value}", file=out)
    rows = _attempt_rows(history)
    print(file=out)
    if not rows:
        print("no steps yet", file=out)
        return
    print_table(["STEP", "ATTEMPT", "STATUS", "STARTED (UTC)", "ENDED", "DURATION", "OUTPUT OR ERROR"], rows, out)


def _attempt_rows(history: queries.RunHistory) -> list[list[str]]:
    """One row per step attempt, and one per error of the code outside steps, in log order."""
    steps = iter(history.steps)
    rows: list[list[str]] = []
    for entry in history.entries:
        if entry.type in ("step.completed", "step.errored", "step.failed", "step.sleeping", "step.waiting"):
            step = next(steps)
            rows.append([
                step.step, str(step.attempt + 1), step.status, _when(step.started_at),
                _when(step.ended_at, time_only=True), duration_text(step.started_at, step.ended_at),
                _step_text(step),
            ])
        elif entry.type == "run.errored":
            data = entry.data
            rows.append([
                "(function)", str(int(data.get("attempt", 0)) + 1), "errored", "", _when(entry.recorded_at, True), "",
                _outcome_text(None, data.get("error"), data.get("retry_at"), entry.recorded_at),
            ])
        elif entry.type in SIGNAL_TEXT:
            rows.append([entry.data.get("step", "(run)"), "", "signal", _when(entry.recorded_at), "", "",
                         short(SIGNAL_TEXT[entry.type](entry.data), CELL_WIDTH)])
    return rows


def _matched_text(data: dict[str, Any]) -> str:
    event = data["event"]
    if event.get("name") == "inngest/function.finished":  # an invoke's result
        finished = event.get("data", {})
        status = finished.get("_inngest", {}).get("status", "ended")
        return f"invoked run {finished.get('run_id')} of {finished.get('function_id')} {status}"
    return f"matched {event.get('name')} {event.get('id')}"


SIGNAL_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "wait.resolved": _matched_text,
    "wait.expired": lambda data: "timed out",
    "cancel.requested": lambda data: f"cancel requested: {data.get('reason')}",
}


def _step_text(step: queries.StepAttempt) -> str:
    if step.status == "waiting":
        return f"waiting for {step.waiting_for} until {_when(step.wake_at)}"
    if step.status == "sleeping":
        return f"sleeping until {_when(step.wake_at)}"
    return _outcome_text(step.output, step.error, step.retry_at, step.ended_at)


def _outcome_text(output: Any, error: dict[str, Any] | None, retry_at: str | None, ended_at: str | None) -> str:
    if error is None:
        return short(output, CELL_WIDTH)
    text = short(error_text(error), CELL_WIDTH)
    if retry_at:
        text += f"; retry at {_when(retry_at, time_only=True)}"
        wait = seconds_between(ended_at, retry_at)
        if wait is not None:
            text += f" (+{format_seconds(wait)})"
    return text


def error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


def _print_more(shown: int, limit: int, what: str, out: TextIO) -> None:
    if limit and shown >= limit:
        print(f"(showing the newest {limit} {what}; --limit N shows more, --limit 0 all)", file=out)


# -- formatting ----------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns, two spaces apart, trailing spaces trimmed."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def _print_json(document: Any, out: TextIO) -> int:
    json.dump(document, out, indent=2, ensure_ascii=False, default=str)
    out.write("\n")
    return 0


def short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) and value.isprintable() and value else None
    if text is None:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return parse_time(iso)
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _when(iso: str | None, time_only: bool = False) -> str:
    moment = _parse(iso)
    if moment is None:
        return iso or "-"
    return moment.strftime("%H:%M:%S.%f" if time_only else "%Y-%m-%d %H:%M:%S.%f")[:-3]


def seconds_between(start: str | None, end: str | None) -> float | None:
    begin, finish = _parse(start), _parse(end)
    if begin is None or finish is None:
        return None
    return (finish - begin) / timedelta(seconds=1)


def _millis(start: str | None, end: str | None) -> float | None:
    seconds = seconds_between(start, end)
    return None if seconds is None else round(seconds * 1000, 3)


def duration_text(start: str | None, end: str | None) -> str:
    seconds = seconds_between(start, end)
    return "-" if seconds is None else format_seconds(seconds)


def format_seconds(seconds: float) -> str:
    if seconds < 0.0005:
        return "<1 ms"
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)} ms"
    if seconds < 59.995:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


if __name__ == "__main__":
    raise SystemExit(main())
