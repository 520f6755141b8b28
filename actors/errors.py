"""Errors of the actor runtime."""

from __future__ import annotations

from steplog.engine import EngineError


class EngineStoppedError(EngineError):
    """The engine is not running: not started yet, stopped, or stopped by a storage failure."""


class DatabaseInUseError(EngineError):
    """Another engine is already running on the same database file."""
