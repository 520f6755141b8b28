"""Messages between the actors: frozen values, one class per request."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import pykka

from eventstore import Append


@attrs.frozen
class Commit:
    """Writer: record these appends in the next group commit, then answer on ``reply``."""

    appends: Sequence[Append]
    reply: pykka.Future[Any]


@attrs.frozen
class StartRun:
    """Supervisor: start (or resume) a run."""

    run_id: str
    state: Any = None
    """The run's state when the sender already has it (a run just scheduled); else it is read from the log."""


@attrs.frozen
class RunEnded:
    """Supervisor: a run actor's invocation ended with this outcome."""

    run_id: str
    outcome: Any


@attrs.frozen
class RunCrashed:
    """Supervisor: a run actor died of an unexpected error."""

    run_id: str
    error: BaseException


@attrs.frozen
class Arm:
    """Timer: wake this run at this time."""

    due: datetime
    run_id: str
    function_id: str


@attrs.frozen
class Tick:
    """Timer: start every run that is due now."""
