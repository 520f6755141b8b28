"""Errors of the event store.

    EventStoreError
    ├── ConcurrencyError   a stream was not at the version the writer expected
    ├── StoreClosedError   the store was used after close()
    ├── StoreBusyError     another connection held the write lock too long; nothing was written
    └── StorageError       the database failed (I/O error, disk full, corruption)
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
