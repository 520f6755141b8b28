"""eventstore: an append-only log of entries in streams, with projections derived from it.

Backends share one contract: ``MemoryEventStore`` and ``SqliteEventStore``. The package knows
nothing of the engine or the actors above it.
"""

from steplog.eventstore.base import EventStore, format_time, parse_time
from steplog.eventstore.errors import (
    ConcurrencyError,
    CorruptEntryError,
    EventStoreError,
    StorageError,
    StoreBusyError,
    StoreClosedError,
)
from steplog.eventstore.memory import MemoryEventStore
from steplog.eventstore.projections import Change, Delete, Difference, Projector, Row, Table, Upsert
from steplog.eventstore.records import Append, Committed, Entry, NewEntry, StreamWrite
from steplog.eventstore.sqlite import SqliteEventStore

__all__ = [
    "Append",
    "Change",
    "Committed",
    "ConcurrencyError",
    "CorruptEntryError",
    "Delete",
    "Difference",
    "Entry",
    "EventStore",
    "EventStoreError",
    "MemoryEventStore",
    "NewEntry",
    "Projector",
    "Row",
    "SqliteEventStore",
    "StorageError",
    "StoreBusyError",
    "StoreClosedError",
    "StreamWrite",
    "Table",
    "Upsert",
    "format_time",
    "parse_time",
]
