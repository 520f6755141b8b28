"""docs/guarantees.md names, for every promise, the tests that check it: each named file and test
must exist, so that renaming or deleting a test cannot leave a promise unchecked in silence."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARANTEES = ROOT / "docs" / "guarantees.md"
# `tests/x.py::test_a`, then `::test_b` for more tests of the same file on the same line or the next
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)?)`|`::(\w+)`")


def _references() -> list[tuple[str, str | None]]:
    references: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in REFERENCE.finditer(GUARANTEES.read_text()):
        path, test, more = match.groups()
        if path:
            current = path
            references.append((path, test[2:] or None))
        else:
            assert current is not None, f"`::{more}` before any file in {GUARANTEES}"
            references.append((current, more))
    return references


def _defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    names |= {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
              for target in node.targets if isinstance(target, ast.Name)}
    return names


def test_every_promise_names_tests_that_exist() -> None:
    references = _references()
    assert len(references) >= 30
    missing = []
    for path, test in references:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif test is not None and test not in _defined_names(file):
            missing.append(f"{path}::{test}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_every_reliability_test_file_is_named_by_a_promise() -> None:
    named = {path for path, _ in _references()}
    unnamed = sorted(
        str(file.relative_to(ROOT)) for file in (ROOT / "tests" / "reliability").glob("test_*.py")
        if str(file.relative_to(ROOT)) not in named
    )
    assert not unnamed, f"reliability tests that docs/guarantees.md does not mention: {unnamed}"
