"""The values the log is made of: entries to append, entries recorded, and write requests."""

from __future__ import annotations

from typing import Any

import attrs

JSONObject = dict[str, Any]


@attrs.frozen
class NewEntry:
    """An entry to append to a stream."""

    type: str
    data: JSONObject = attrs.field(factory=dict)


@attrs.frozen
class Entry:
    """An entry as recorded in the log."""

    position: int
    """Global, strictly increasing position in the whole log."""
    stream: str
    version: int
    """Version within its stream: 1, 2, 3, ... without gaps."""
    type: str
    data: JSONObject
    recorded_at: str
    """ISO 8601 UTC time given by the writer's clock."""


@attrs.frozen
class StreamWrite:
    """Entries for one stream, optionally guarded by the version the stream must be at."""

    stream: str
    entries: tuple[NewEntry, ...]
    expected_version: int | None = None
    """None appends whatever the version is; 0 means the stream must not exist yet."""


@attrs.frozen
class Append:
    """One atomic unit of a group commit: all its writes are recorded, or none.

    With an idempotency ``key``, the writes are recorded only if no append with the same key was
    recorded within ``key_window_s`` seconds; otherwise ``on_duplicate`` is recorded instead.
    """

    writes: tuple[StreamWrite, ...]
    key: str | None = None
    key_window_s: float | None = None
    on_duplicate: tuple[StreamWrite, ...] = ()


@attrs.frozen
class Committed:
    """The outcome of one append inside a group commit."""

    entries: tuple[Entry, ...]
    duplicate_of: int | None = None
    """Position of the first entry of the earlier append with the same key, when this was a duplicate."""
