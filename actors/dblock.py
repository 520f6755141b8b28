"""One engine per database file: an advisory lock on ``<db>.lock``, held while the engine runs.

Two engines on one file would both resume the same interrupted runs and run their steps twice.
The lock is an ``flock``: the operating system releases it when the process dies, so a crash
never leaves a stale lock behind. Readers (the CLI, queries) do not take it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from steplog.actors.errors import DatabaseInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; the lock is then skipped
    fcntl = None  # type: ignore[assignment]


class DatabaseLock:
    """Holds the lock file of one database while the engine runs."""

    def __init__(self, db_path: str) -> None:
        self.path = Path(db_path + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        file = self.path.open("a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise DatabaseInUseError(
                f"another steplog engine (pid {holder}) is running on {self.path.with_suffix('')};"
                " run one engine per database file (queries and the CLI need no engine)"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
