"""What the hostile-input tests (test_hostile_*.py) share: a guard against a case that hangs, and
the count of inputs tried per entry point that each file reports for the closing numbers."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
REPORT_ENV = "STEPLOG_RELIABILITY_REPORT"


def within(seconds: float, action: Callable[[], T]) -> T:
    """``action()``'s result or exception; the test fails if it has not returned after ``seconds``
    (generous: timing itself belongs in benchmarks/, this only catches a hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:  # noqa: BLE001 - handed back to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="hostile-case", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no answer within {seconds} s: the case hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


class InputsTried:
    """entry point -> the hostile inputs tried there; one JSON line in the session's report."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.by_entry_point: dict[str, set[str]] = {}

    def add(self, entry_point: str, label: str) -> None:
        self.by_entry_point.setdefault(entry_point, set()).add(label)

    def report(self) -> None:
        path = os.environ.get(REPORT_ENV)
        if not path or not self.by_entry_point:
            return
        inputs = len({label for labels in self.by_entry_point.values() for label in labels})
        line = {"test": "hostile_input", "part": self.part, "inputs": inputs,
                "entry_points": {name: len(labels) for name, labels in sorted(self.by_entry_point.items())}}
        with Path(path).open("a", encoding="utf-8") as report:
            report.write(json.dumps(line) + "\n")


def reporting(tried: InputsTried) -> Any:
    """A module fixture (autouse) that writes ``tried``'s report line once the module's tests ran."""

    @pytest.fixture(scope="module", autouse=True)
    def report_inputs_tried() -> Iterator[None]:
        yield
        tried.report()

    return report_inputs_tried
