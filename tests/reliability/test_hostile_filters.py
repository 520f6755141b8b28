"""Hostile filter values: SQL metacharacters (quotes, ``;``, ``--``, ``%``, ``_``, brackets, backticks,
backslashes, NUL) and unicode in every query filter and in the names used as filters, through every
way to query: ``store.query(where=...)``, the client's ``list_events``/``list_runs``/``get_run``, the
UI's JSON API and the CLI (``steplog events/runs/run``, in-process). Each result must be exact (a
name holding ``%`` matches only itself) and nothing may error.

And a static check: the installed package never unpickles, unmarshals, evaluates or executes data.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

import steplog
from steplog import Context, TriggerEvent, cli
from steplog.server import ServerConfig, create_app

DEADLINE = 30.0
def _load_sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"steplog_reliability_{Path(name).stem}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOSTILE = _load_sibling("hostile_cases.py")
within = HOSTILE.within
TRIED = HOSTILE.InputsTried("filters")
tried = TRIED.add
_report = HOSTILE.reporting(TRIED)


NAMES = [
    "a%", "a_", "%", "_", "a'b", 'a"b', "a;--", "'; DROP TABLE events; --", "' OR '1'='1", "a]b", "a[b",
    "[events]", "a`b", "a\\b", "a\\%", "a\x00b", "a\x00", "aé", "ae\u0301", "a\u202eb", "a*", "a?", "a/%/_",
    "a\tb", "日本/イベント", "😀", "A", "a", " a", "a ", "a\u00a0", "ａ",
]
"""Event names (and user-given event ids) that a sloppy query would confuse with one another."""
FUNCTION_IDS = ["fn_1", "fnx1", "fn.1", "fn-1", "fn11"]
"""Function ids may hold '_' and '.': a LIKE or GLOB filter would match the wrong ones."""
WILD_FILTERS = ["%", "_", "*", "fn%", "fn_", "fn_%", "' OR 1=1 --", "fn_1' --", "[fn_1]", "fn_1\x00", "FN_1", "fn_1 "]
"""Filters that match no function id (each is compared as text, exactly)."""








@contextmanager
def served(app: Any) -> Iterator[str]:
    """uvicorn on a loopback port that already listens (requests queue until it serves them)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="filters-uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        listener.close()
        assert not thread.is_alive(), "the server did not stop"


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``steplog ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = within(DEADLINE, lambda: cli.main(list(argv)))
        except SystemExit as exit_:  # argparse refuses bad arguments this way
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


class Logged:
    """A log holding one event per hostile name (two for the first), each with a user-given id equal
    to the name, and one run per event of each function id."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.client = steplog.Steplog(app_id="filters", db=db)
        for index, name in enumerate(NAMES):
            if "*" not in name:
                self.client.create_function(fn_id=f"by-name-{index}", trigger=TriggerEvent(event=name))(_noop)
        for fn_id in FUNCTION_IDS:
            self.client.create_function(fn_id=fn_id, trigger=TriggerEvent(event=f"ids/{fn_id}"))(_noop)
        self.sent: dict[str, list[str]] = {}
        self.runs: dict[str, list[str]] = {}

    def fill(self) -> None:
        for name in [NAMES[0], *NAMES]:
            self.sent.setdefault(name, []).extend(self.client.send({"name": name, "data": {"name": name}}))
        for name in NAMES:
            self.client.send({"name": "ids/tagged", "data": {}, "id": name})
        for fn_id in FUNCTION_IDS:
            for _ in range(2):
                [event_id] = self.client.send({"name": f"ids/{fn_id}", "data": {}})
                self.runs.setdefault(fn_id, []).extend(handle.run_id for handle in self.client.runs_for_event(event_id))
        assert self.client.run_until_idle(DEADLINE)


def _noop(ctx: Context) -> str:
    return str(ctx.event.name)


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Logged]:
    log = Logged(tmp_path / "filters.db")
    with log.client:
        log.fill()
        yield log


def test_every_name_filter_matches_exactly_its_own_events_everywhere(logged: Logged) -> None:
    client, store = logged.client, logged.client.store
    with served(create_app(client, ServerConfig(dev=True))) as base_url, httpx.Client(base_url=base_url) as http:
        for name, ids in logged.sent.items():
            expected = sorted(ids)
            for entry_point in ("store.query", "client.list_events", "GET /api/events"):
                tried(entry_point, repr(name))
            rows = within(DEADLINE, partial(store.query, "events", where={"name": name}))
            assert sorted(row["internal_id"] for row in rows) == expected, name
            listed = within(DEADLINE, partial(client.list_events, name=name, limit=None))
            assert sorted(event["internal_id"] for event in listed) == expected, name
            assert {event["data"]["name"] for event in listed} == {name}
            answer = within(DEADLINE, partial(http.get, f"/api/events?name={quote(name)}&limit=500"))
            assert answer.status_code == 200, (name, answer.text)
            assert sorted(event["internal_id"] for event in answer.json()) == expected, name
            if name.strip():  # a blank filter means no filter, in the UI as in the CLI
                by_name = [run for run in client.list_runs(limit=None) if run["event_id"] in ids]
                assert all(run["status"] == "completed" for run in by_name) and len(by_name) == (
                    0 if "*" in name else len(ids)), name


def test_every_name_filter_matches_exactly_through_the_cli(logged: Logged) -> None:
    logged.client.stop()  # the CLI reads the file like any other process
    for name, ids in logged.sent.items():
        if not name.strip() or "\x00" in name:
            continue  # a shell cannot pass NUL, and a blank --name means no filter
        tried("steplog events --name", repr(name))
        code, out, err = run_cli("events", "--db", str(logged.db), "--name", name, "--json", "--limit", "500")
        assert (code, err) == (0, ""), (name, err)
        assert sorted(event["internal_id"] for event in json.loads(out)) == sorted(ids), name


def test_function_and_status_filters_are_exact(logged: Logged) -> None:
    client = logged.client
    with served(create_app(client, ServerConfig(dev=True))) as base_url, httpx.Client(base_url=base_url) as http:
        for fn_id, run_ids in logged.runs.items():
            tried("client.list_runs(function_id)", fn_id)
            tried("GET /api/runs?function", fn_id)
            assert sorted(run["run_id"] for run in client.list_runs(function_id=fn_id, limit=None)) == sorted(run_ids)
            answer = http.get(f"/api/runs?function={quote(fn_id)}&limit=500")
            assert sorted(run["run_id"] for run in answer.json()) == sorted(run_ids), answer.text
        for wild in WILD_FILTERS:
            for entry_point in ("client.list_runs(function_id)", "store.query(runs)", "GET /api/runs?function"):
                tried(entry_point, repr(wild))
            assert client.list_runs(function_id=wild, limit=None) == [], wild
            assert client.store.query("runs", where={"function_id": wild}) == [], wild
            answer = http.get(f"/api/runs?function={quote(wild)}")
            assert (answer.status_code, answer.json()) == (200, []), (wild, answer.text)
            tried("GET /api/runs?status", repr(wild))
            refused = http.get(f"/api/runs?status={quote(wild)}")
            assert refused.status_code == 400 and "unknown run status" in refused.json()["error"], refused.text
            with pytest.raises(ValueError, match="unknown run status"):
                client.list_runs(status=wild)


def test_event_ids_and_run_ids_with_metacharacters_are_looked_up_exactly(logged: Logged) -> None:
    client = logged.client
    tagged = {event["id"]: event["internal_id"] for event in client.list_events(name="ids/tagged", limit=None)}
    assert set(tagged) == set(NAMES)
    with served(create_app(client, ServerConfig(dev=True))) as base_url, httpx.Client(base_url=base_url) as http:
        for name in NAMES:
            for entry_point in ("client.list_runs(event_id)", "GET /api/events/{id}", "GET /api/runs/{id}",
                                "client.get_run"):
                tried(entry_point, repr(name))
            assert client.list_runs(event_id=name) == []  # the tagged events started nothing
            if "/" not in name and name.strip() == name and name:
                answer = http.get(f"/api/events/{quote(name, safe='')}")
                assert answer.status_code == 200 and answer.json()["internal_id"] == tagged[name], (name, answer.text)
                missing = http.get(f"/api/runs/{quote(name, safe='')}")
                assert missing.status_code == 404 and "no run" in missing.json()["error"], (name, missing.text)
            with pytest.raises(steplog.RunNotFoundError):
                client.get_run(name)
        for fn_id, run_ids in logged.runs.items():
            assert client.get_run(run_ids[0])["function_id"] == fn_id


def test_run_and_event_lookups_through_the_cli_are_exact(logged: Logged) -> None:
    some_run = logged.runs["fn_1"][0]
    logged.client.stop()
    db = str(logged.db)
    for wild in [*WILD_FILTERS, some_run[:5] + "%", some_run.lower() + "_"]:
        if "\x00" in wild:
            continue
        for entry_point in ("steplog run RUN_ID", "steplog runs --function", "steplog runs --event"):
            tried(entry_point, repr(wild))
        code, out, err = run_cli("run", "--db", db, wild.strip() or "x")
        assert code == 1 and "no run" in err, (wild, code, err)
        code, out, err = run_cli("runs", "--db", db, "--function", wild, "--json")
        assert (code, json.loads(out)) == (0, []), (wild, err)
        code, out, err = run_cli("runs", "--db", db, "--event", wild, "--json")
        assert (code, json.loads(out)) == (0, []), (wild, err)
    code, out, _ = run_cli("run", "--db", db, some_run[:12], "--json")  # a unique prefix still works
    assert code == 0 and json.loads(out)["run"]["run_id"] == some_run


@pytest.mark.parametrize("argv", [
    ["events", "--name", "app/\udcff"], ["runs", "--function", "fn\udcff"], ["runs", "--event", "\udcff"],
    ["run", "01\udcff"],
], ids=["events --name", "runs --function", "runs --event", "run"])
def test_a_cli_filter_that_is_not_utf8_is_refused_naming_it(logged: Logged, argv: list[str]) -> None:
    """Undecodable bytes in ``sys.argv`` reach Python as lone surrogates; SQLite cannot bind them.
    Before the fix each of these ended in a UnicodeEncodeError traceback."""
    tried(f"steplog {argv[0]}", "undecodable argument")
    logged.client.stop()
    code, out, err = run_cli(*argv, "--db", str(logged.db))
    assert code == 2 and out == ""
    assert "is not valid UTF-8 text" in err and "\\udcff" in err, err


@pytest.mark.parametrize("value", ["\ud800", "app/\udfff", "a\udcff%"], ids=["alone", "in-name", "with-%"])
def test_a_lone_surrogate_filter_matches_nothing_and_raises_nothing(logged: Logged, value: str) -> None:
    """Nothing stored can hold a lone surrogate, so nothing equals it: the SQLite store now answers
    [] as the memory store always did, instead of raising UnicodeEncodeError."""
    client = logged.client
    for entry_point in ("store.query", "client.list_events", "client.list_runs", "client.get_run"):
        tried(entry_point, "lone surrogate")
    assert client.store.query("events", where={"name": value}) == []
    assert client.list_events(name=value) == []
    assert client.list_runs(function_id=value) == [] and client.list_runs(event_id=value) == []
    with pytest.raises(steplog.RunNotFoundError):
        client.get_run(value)
    assert len(client.list_events(limit=None)) == sum(len(ids) for ids in logged.sent.values()) + len(NAMES) + 2 * len(
        FUNCTION_IDS)


def test_time_range_filters_with_metacharacters_are_refused_clearly(logged: Logged) -> None:
    client = logged.client
    with served(create_app(client, ServerConfig(dev=True))) as base_url, httpx.Client(base_url=base_url) as http:
        for text in ["'; --", "2026-01-01' OR 1=1 --", "%", "1d; DROP", "\x00"]:
            tried("client.list_events(since)", repr(text))
            with pytest.raises(ValueError, match="is not a time"):
                client.list_events(since=text)
            tried("steplog events --since", repr(text))
            if "\x00" not in text:
                code, _, err = run_cli("events", "--db", str(logged.db), "--since", text)
                assert code == 2 and "is not a time" in err, err
            assert http.get("/api/events?limit=1%27").status_code == 400


# -- static: nothing in the package unpickles, unmarshals, evaluates or executes ------------------------

FORBIDDEN_MODULES = frozenset({"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                               "jsonpickle", "copyreg", "yaml"})
FORBIDDEN_CALLS = frozenset({"eval", "exec", "compile", "__import__", "execfile", "input"})
ALLOWED: dict[tuple[str, str], str] = {
    ("steplog/server/serve.py", "importlib.import_module"):
        "imports the module a user names on the command line (`steplog serve app:client`), never data",
}
"""(file, call) -> why it is safe."""


def _package_roots() -> dict[str, Path]:
    import steplog.actors
    import steplog.engine
    import steplog.eventstore

    return {name: Path(str(module.__file__)).parent for name, module in
            {"steplog": steplog, "steplog/engine": steplog.engine, "steplog/actors": steplog.actors,
             "steplog/eventstore": steplog.eventstore}.items()}


def _findings(path: Path, shown: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{shown}:{node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{shown}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.split(".")[-1] in FORBIDDEN_CALLS and name.split(".")[0] in ("builtins", name):
                found.append(f"{shown}:{node.lineno}: {name}()")
            elif name.endswith("import_module") and (shown, name) not in ALLOWED:
                found.append(f"{shown}:{node.lineno}: {name}() is not allowlisted")
    return found


def test_the_package_never_unpickles_evaluates_or_executes() -> None:
    files = 0
    findings: list[str] = []
    for prefix, root in _package_roots().items():
        for path in sorted(root.rglob("*.py")):
            if prefix == "steplog" and path.relative_to(root).parts[0] in ("engine", "actors", "eventstore"):
                continue
            files += 1
            findings += _findings(path, f"{prefix}/{path.relative_to(root).as_posix()}")
    tried("static scan", "package source")
    assert files > 40, f"only {files} files scanned: the package was not found"
    assert findings == [], "\n".join(findings)


def test_the_static_check_notices_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle\nfrom marshal import loads\nimport builtins\n"
                      "eval('1')\nbuiltins.exec('x = 1')\ncompile('1', 'f', 'eval')\n"
                      "import importlib\nimportlib.import_module('os')\nre_compile = 1\n")
    found = _findings(sample, "sample.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "import pickle", "from marshal import ...", "eval()", "builtins.exec()", "compile()",
        "importlib.import_module() is not allowlisted",
    ]
