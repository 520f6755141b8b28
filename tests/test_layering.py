"""The layers' import rules, checked on the source with ``ast``.

    eventstore  imports nothing of engine, actors, steplog, pykka
    engine      imports nothing of actors, steplog, pykka, sqlite3, sqlite_utils, threading; reads no
                wall clock outside engine/clock.py
    actors      imports anything but steplog
    server      (steplog/server, the HTTP face) sits on actors; no layer imports it, nor starlette or uvicorn
    croniter    only in engine/cron.py, so the cron library stays swappable
    testing     (steplog/testing, the users' test toolkit) sits on engine and eventstore: no actors,
                server, pykka or threads, so a test runs in its own thread on virtual time;
                hypothesis only in its strategies and stateful modules; the pytest plugin, which
                every pytest run in the user's environment loads, imports no more at its top

Locks are not threads: engine/clock.py (ManualClock, shared with the actors' threads),
engine/expressions.py (celpy's parser is not thread-safe) and engine/invocation.py (commits from
parallel branches) may use ``threading.Lock`` and nothing else of threading. engine/parallel.py is
the one exception: a ``def`` function's ``group.parallel`` branches are user code that must run
concurrently, so it starts threads, and joins them before the call returns. Any other use of
threading in the engine fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eventstore", "engine", "actors", "steplog")

WEB = {"starlette", "uvicorn"}
FORBIDDEN = {
    "eventstore": {"engine", "actors", "steplog", "pykka", *WEB},
    "engine": {"actors", "steplog", "pykka", "threading", "sqlite3", "sqlite_utils", *WEB},
    "actors": {"steplog", *WEB},
}
CRON_MODULE = "engine/cron.py"
LOCK_ONLY_THREADING = {"engine/clock.py", "engine/expressions.py", "engine/invocation.py"}
LOCK_NAMES = {"Lock", "RLock"}
BRANCH_THREADS = {"engine/parallel.py": {"Thread", "Event"}}
CLOCK_MODULE = "engine/clock.py"
CLOCK_READS = {
    "datetime": {"now", "utcnow", "today"},
    "date": {"today"},
    "time": {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "localtime", "gmtime"},
}


def modules(package: str) -> list[Path]:
    return sorted(path for path in (ROOT / package).rglob("*.py") if "__pycache__" not in path.parts)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module an import statement names, absolute, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno


LAYERS = {"engine", "actors", "eventstore"}


def top(module: str) -> str:
    """The layer or library a module belongs to: ``steplog.engine.clock`` -> ``engine``."""
    parts = module.split(".")
    if parts[0] == "steplog" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return parts[0]


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_exist(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    assert modules(package)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_use_absolute_imports(package: str) -> None:
    paths = modules(package)
    relative_imports = [
        f"{relative(path)}:{node.lineno}"
        for path in paths
        for node in ast.walk(parse(path))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    # relative imports would slip past the checks below; the code base uses absolute ones
    assert relative_imports == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package: str) -> None:
    violations = []
    for path in modules(package):
        name = relative(path)
        for module, line in imported_modules(parse(path)):
            if top(module) not in FORBIDDEN[package]:
                continue
            if top(module) == "threading" and (name in LOCK_ONLY_THREADING or name in BRANCH_THREADS):
                continue  # checked by test_engine_uses_threading_only_for_locks
            violations.append(f"{name}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_engine_uses_threading_only_for_locks() -> None:
    uses = []
    for path in modules("engine"):
        name = relative(path)
        tree = parse(path)
        for node in ast.walk(tree):
            allowed = BRANCH_THREADS.get(name, LOCK_NAMES if name in LOCK_ONLY_THREADING else set())
            if isinstance(node, ast.ImportFrom) and node.module == "threading":
                uses.extend(f"{name}:{node.lineno} from threading import {a.name}" for a in node.names
                            if a.name not in allowed)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "threading"
                and node.attr not in allowed
            ):
                uses.append(f"{name}:{node.lineno} threading.{node.attr}")
    assert not uses, "\n".join(uses)


def test_engine_reads_the_wall_clock_only_in_clock_module() -> None:
    reads = []
    seen_in_clock = False
    for path in modules("engine"):
        name = relative(path)
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and node.module == "time":
                # `from time import time` would hide the call from the check below
                reads.extend(f"{name}:{node.lineno} from time import {a.name}" for a in node.names)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            owner_name = (
                owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else None
            )
            if owner_name in CLOCK_READS and node.func.attr in CLOCK_READS[owner_name]:
                if name == CLOCK_MODULE:
                    seen_in_clock = True
                else:
                    reads.append(f"{name}:{node.lineno} {owner_name}.{node.func.attr}()")
    assert not reads, "\n".join(reads)
    assert seen_in_clock, "SystemClock should read datetime.now() in engine/clock.py (is the check still working?)"


def test_the_checks_catch_violations() -> None:
    """The walkers see through the usual spellings of an import and of a clock read."""
    source = (
        "import pykka\nimport actors.runtime as r\nfrom steplog import Steplog\nimport time\n"
        "def f():\n    return time.time(), datetime.datetime.now(), datetime.now(timezone.utc)\n"
    )
    tree = ast.parse(source)
    assert {top(m) for m, _ in imported_modules(tree)} == {"pykka", "actors", "steplog", "time"}
    calls = [
        n.func.attr for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert sorted(calls) == ["now", "now", "time"]


def test_the_checks_fail_on_a_package_that_breaks_the_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "__init__.py").write_text("")
    (engine / "clock.py").write_text("from datetime import datetime\ndef now():\n    return datetime.now()\n")
    (engine / "bad.py").write_text(
        "import threading\nfrom actors.runtime import Steplog\nimport time\n"
        "def f():\n    threading.Thread(target=f).start()\n    return time.time()\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    expected = r"engine/bad.py:1 imports threading\s+engine/bad.py:2 imports actors.runtime"
    with pytest.raises(AssertionError, match=expected):
        test_forbidden_imports("engine")
    with pytest.raises(AssertionError, match=r"engine/bad.py:5 threading.Thread"):
        test_engine_uses_threading_only_for_locks()
    with pytest.raises(AssertionError, match=r"engine/bad.py:6 time.time\(\)"):
        test_engine_reads_the_wall_clock_only_in_clock_module()


def test_croniter_is_imported_only_by_the_cron_module() -> None:
    importers = [
        relative(path)
        for package in PACKAGES
        for path in modules(package)
        for module, _ in imported_modules(parse(path))
        if module.split(".")[0] == "croniter"
    ]
    assert importers == [CRON_MODULE]


TESTING = "steplog/testing"
TESTING_FORBIDDEN = {"actors", "pykka", "threading", "concurrent", "steplog.server", *WEB}
HYPOTHESIS_MODULES = {"steplog/testing/strategies.py", "steplog/testing/stateful.py"}
PLUGIN = "steplog/testing/pytest_plugin.py"


def test_the_testing_toolkit_stays_on_the_engine() -> None:
    violations = []
    for path in sorted((ROOT / TESTING).glob("*.py")):
        name = relative(path)
        for module, line in imported_modules(parse(path)):
            layer = "steplog.server" if module.startswith("steplog.server") else top(module)
            if layer in TESTING_FORBIDDEN or (layer == "hypothesis" and name not in HYPOTHESIS_MODULES):
                violations.append(f"{name}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_the_pytest_plugin_imports_little_at_its_top() -> None:
    tree = parse(ROOT / PLUGIN)
    top_level = [
        module for node in tree.body  # type: ignore[attr-defined]
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for module, _ in imported_modules(node)
    ]
    assert top_level and all(module.split(".")[0] in {"__future__", "collections", "pathlib", "typing", "pytest"}
                              for module in top_level), top_level
