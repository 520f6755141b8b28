"""Events: what users send, checked before anything of a send is accepted."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from steplog.engine.errors import EventError, EventTooLargeError
from steplog.engine.ids import new_ulid, seeded_ulids
from steplog.engine.jsonvalues import NotJSONError, encode, size_of
from steplog.engine.limits import Limits

MAX_NAME_LENGTH = 256
RESERVED_PREFIX = "inngest/"
_MIN_TS = int(datetime(1980, 1, 1, tzinfo=UTC).timestamp() * 1000)
_MAX_TS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)


@attrs.frozen
class Event:
    """An event, in the shape of Inngest's: ``name``, ``data``, optional ``id``, ``ts`` (ms), ``user``, ``v``.

    A non-empty ``id`` deduplicates: another event with the same id within 24 hours is recorded
    as a duplicate and starts nothing. ``ts`` defaults to the time the event is received.
    """

    name: str
    data: dict[str, Any] = attrs.field(factory=dict)
    id: str = ""
    ts: int = 0
    user: dict[str, Any] | None = None
    v: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object, leaving out empty optional fields."""
        out: dict[str, Any] = {"name": self.name, "data": self.data, "id": self.id, "ts": self.ts}
        if self.user is not None:
            out["user"] = self.user
        if self.v is not None:
            out["v"] = self.v
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        """An event from its JSON object (unknown fields are ignored)."""
        return cls(
            name=raw.get("name"),  # type: ignore[arg-type]
            data=raw.get("data", {}) if raw.get("data") is not None else {},
            id=raw.get("id") or "",
            ts=raw.get("ts") or 0,
            user=raw.get("user"),
            v=raw.get("v"),
        )


@attrs.frozen
class ReceivedEvent:
    """An accepted event: its internal id, the event with ``id`` and ``ts`` filled in, its JSON."""

    internal_id: str
    event: Event
    dedup_id: str | None
    """The user's id, if any: the key that deduplicates."""


def prepare_events(
    events: Event | Mapping[str, Any] | Sequence[Event | Mapping[str, Any]],
    *,
    now: datetime,
    limits: Limits,
    allow_reserved: bool = False,
    id_seed: str | None = None,
) -> list[ReceivedEvent]:
    """Check every event of a send and give each an internal id; raise EventError for the first bad one.

    ``id_seed`` (Inngest's ``x-inngest-event-id-seed``) makes the internal ids the seed's, not new ones.
    """
    items = _items(events)
    if len(items) > limits.events_per_send:
        raise EventTooLargeError(f"a send holds {len(items)} events; the limit is {limits.events_per_send}")
    ids = _seeded(id_seed, len(items)) if id_seed is not None else [new_ulid(now) for _ in items]
    return [
        _prepare(item, index, len(items), ids[index], now, limits, allow_reserved) for index, item in enumerate(items)
    ]


def _items(events: object) -> list[Any]:
    if isinstance(events, (Event, Mapping)):
        return [events]
    if isinstance(events, (str, bytes, bytearray)) or not isinstance(events, Iterable):
        kind = "null" if events is None else type(events).__name__
        raise EventError(f"send an event (a steplog.Event or a JSON object) or a list of events, not {kind}")
    return list(events)


def _seeded(id_seed: str, count: int) -> list[str]:
    try:
        return seeded_ulids(id_seed, count)
    except ValueError as error:
        raise EventError(str(error)) from None


def _prepare(
    item: object, index: int, count: int, internal_id: str, now: datetime, limits: Limits, allow_reserved: bool
) -> ReceivedEvent:
    where = f"event {index}" if count > 1 else "event"
    event = _coerce(item, where)
    where = f"{where} ({event.name!r})" if isinstance(event.name, str) else where
    _check_name(event.name, where, allow_reserved)
    _check_fields(event, where)
    millis = int(now.timestamp() * 1000)
    filled = attrs.evolve(event, id=event.id or internal_id, ts=event.ts or millis)
    try:
        text = encode(filled.to_dict(), what=f"{where} data")
    except NotJSONError as error:
        raise EventError(str(error)) from None
    if size_of(text) > limits.event_bytes:
        raise EventTooLargeError(f"{where} is {size_of(text)} bytes; the limit is {limits.event_bytes} bytes")
    # the event as the log gives it back: nothing shared with the caller's objects, tuples as lists
    return ReceivedEvent(internal_id, Event.from_dict(json.loads(text)), event.id or None)


def _coerce(item: object, where: str) -> Event:
    if isinstance(item, Event):
        return item
    if isinstance(item, Mapping):
        return Event.from_dict(item)
    raise EventError(f"{where} is a {type(item).__name__}; send steplog.Event objects or JSON objects")


def _check_name(name: object, where: str, allow_reserved: bool) -> None:
    if name is None or (isinstance(name, str) and not name.strip()):
        raise EventError(f"{where} has no name: every event needs a non-empty string 'name'")
    if not isinstance(name, str):
        raise EventError(f"{where}: name must be a string, got {type(name).__name__} {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise EventError(f"{where}: name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")
    if name.startswith(RESERVED_PREFIX) and not allow_reserved:
        raise EventError(f"{where}: names starting with {RESERVED_PREFIX!r} are reserved for the engine")


def _check_fields(event: Event, where: str) -> None:
    if not isinstance(event.data, dict):
        raise EventError(f"{where}: data must be a JSON object, got {type(event.data).__name__}")
    if not isinstance(event.id, str):
        raise EventError(f"{where}: id must be a string, got {type(event.id).__name__}")
    if event.user is not None and not isinstance(event.user, dict):
        raise EventError(f"{where}: user must be a JSON object, got {type(event.user).__name__}")
    if event.v is not None and not isinstance(event.v, str):
        raise EventError(f"{where}: v must be a string, got {type(event.v).__name__}")
    if isinstance(event.ts, bool) or not isinstance(event.ts, int):
        raise EventError(f"{where}: ts must be an integer of milliseconds, got {event.ts!r}")
    if event.ts and not _MIN_TS <= event.ts <= _MAX_TS:
        raise EventError(f"{where}: ts {event.ts} is outside 1980-01-01..2100-01-01 (milliseconds since the epoch)")
