"""Errors of the event store.

    EventStoreError
    ├── ConcurrencyError   a stream was not at the version the writer expected
    ├── StoreClosedError   the store was used after close()
    ├── StoreBusyError     another connection held the write lock too long; nothing was written
    ├── StorageError       the database failed (I/O error, disk full, corruption SQLite found)
    └── CorruptEntryError  one log entry's bytes are damaged (its checksum or its JSON is wrong)

CorruptEntryError is not a StorageError on purpose: a StorageError means the database as a whole
cannot be trusted for writing and stops the engine, while a damaged entry spoils only what is read
from it. The engine refuses the run whose stream holds it, and every other run goes on.
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Root of every error the event store raises."""


class ConcurrencyError(EventStoreError):
    """A write expected a stream at one version and found it at another."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream!r} is at version {actual}, the write expected {expected}")


class StoreClosedError(EventStoreError):
    """The store was used after it was closed."""


class StoreBusyError(EventStoreError):
    """Another connection held the database's write lock past the busy timeout; nothing was written."""


class StorageError(EventStoreError):
    """The database failed; the store must not be used for writing again."""


class CorruptEntryError(EventStoreError):
    """A log entry read back is not what was written: its checksum does not match, or its data is
    not a JSON object. Nothing read from it is used."""

    def __init__(self, path: str, position: int, stream: str, problem: str) -> None:
        self.path = path
        self.position = position
        self.stream = stream
        self.problem = problem
        super().__init__(
            f"the log entry at position {position} (stream {stream!r}) in {path} is damaged: {problem}."
            f" Nothing read from it is used. `steplog check --db {path}` lists every damaged entry"
        )
