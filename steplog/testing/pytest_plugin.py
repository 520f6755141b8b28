"""pytest fixtures for steplog, registered by the package's ``pytest11`` entry point: installing
steplog is enough to have them.

- ``manual_clock``: a ``ManualClock`` at ``steplog.testing.DEFAULT_START``.
- ``steplog_functions``: the functions ``steplog_engine`` runs; empty unless you override it in
  your ``conftest.py`` (return your Steplog client, or a list of functions).
- ``steplog_engine``: a ``TestEngine`` with those functions on ``manual_clock`` and a SQLite file in
  the test's ``tmp_path``. ``@pytest.mark.steplog(store="memory", check_determinism=False)`` (on a
  module, class or test; the nearer one wins option by option) changes how it is built.

Loading the plugin imports the steplog package (about 0.4 s); nothing is built until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from steplog.engine.clock import ManualClock
    from steplog.testing.harness import TestEngine

MARKER_OPTIONS = {"store", "check_determinism", "limits"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "steplog(store='sqlite'|'memory', check_determinism=True, limits=None): how the steplog_engine fixture"
        " builds its TestEngine",
    )


@pytest.fixture
def manual_clock() -> ManualClock:
    """A manual clock at a fixed start time: time moves only when the test moves it."""
    from steplog.engine.clock import ManualClock
    from steplog.testing.harness import DEFAULT_START

    return ManualClock(DEFAULT_START)


@pytest.fixture
def steplog_functions() -> Any:
    """The functions ``steplog_engine`` runs: override this fixture to return your client or functions."""
    return []


@pytest.fixture
def steplog_engine(
    request: pytest.FixtureRequest, manual_clock: ManualClock, steplog_functions: Any, tmp_path: Path
) -> Iterator[TestEngine]:
    """A TestEngine with ``steplog_functions`` on ``manual_clock`` and a SQLite file in ``tmp_path``."""
    from steplog.testing.harness import TestEngine

    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("steplog"))):  # module, class, then the test's own
        if marker.args:
            raise pytest.UsageError("@pytest.mark.steplog takes keyword arguments only")
        unknown = set(marker.kwargs) - MARKER_OPTIONS
        if unknown:
            raise pytest.UsageError(
                f"@pytest.mark.steplog: unknown option(s) {sorted(unknown)}; options: {sorted(MARKER_OPTIONS)}"
            )
        options.update(marker.kwargs)
    if options.get("store", "sqlite") == "sqlite":
        options["path"] = tmp_path / "steplog.db"
    engine = TestEngine(steplog_functions, clock=manual_clock, **options)
    try:
        yield engine
    finally:
        engine.close()
