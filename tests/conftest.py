"""Shared fixtures: a manual clock, stores of every backend, and a clean pykka registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

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
