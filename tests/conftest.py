"""Shared fixtures: a manual clock, stores of every backend, and a clean pykka registry."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pykka
import pytest
from hypothesis import HealthCheck, settings

from steplog.eventstore import EventStore, MemoryEventStore, SqliteEventStore
from steplog.engine import ManualClock, RunProjector

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "ci", deadline=None, max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long", deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("steplog", "steplog's reliability tests (tests/reliability)")
    group.addoption(
        "--tier", choices=("ci", "long"), default=os.environ.get("STEPLOG_TIER", "ci"),
        help="how hard the reliability tests push: ci (the default, minutes) or long (kills, faults and "
        "examples by the thousand; an hour or more). Env: STEPLOG_TIER",
    )
    group.addoption(
        "--soak-minutes", type=float, default=float(os.environ.get("STEPLOG_SOAK_MINUTES", "10")),
        help="how long the soak test runs (default 10). Env: STEPLOG_SOAK_MINUTES",
    )


REPORT_ENV = "STEPLOG_RELIABILITY_REPORT"


def pytest_configure(config: pytest.Config) -> None:
    # The reliability tests append one JSON line each with their numbers (kills, faults, inputs...)
    # to this file; the summary at the end of the session prints them.
    if not os.environ.get(REPORT_ENV):
        report = Path(tempfile.mkdtemp(prefix="steplog-reliability-")) / "report.jsonl"
        os.environ[REPORT_ENV] = str(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    report = Path(os.environ.get(REPORT_ENV, ""))
    if not report.is_file():
        return
    terminalreporter.section("steplog reliability numbers")
    for line in report.read_text().splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tier(request: pytest.FixtureRequest) -> str:
    """'ci' or 'long': how hard the reliability tests push (--tier)."""
    return str(request.config.getoption("--tier"))


@pytest.fixture(scope="session")
def soak_seconds(request: pytest.FixtureRequest) -> float:
    """How long the soak runs (--soak-minutes), in seconds."""
    return float(request.config.getoption("--soak-minutes")) * 60


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "steplog.db"


@pytest.fixture(params=["memory", "sqlite"])
def run_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """An event store with the engine's projections, on every backend."""
    store: EventStore
    if request.param == "memory":
        store = MemoryEventStore(RunProjector())
    else:
        store = SqliteEventStore(tmp_path / "runs.db", RunProjector())
    yield store
    store.close()


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
