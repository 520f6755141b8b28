"""Identifiers: ULIDs for events and runs, and step keys (the user's id plus an occurrence)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


RandomBytes = Callable[[int], bytes]
_RANDOMNESS: ContextVar[RandomBytes] = ContextVar("steplog_id_randomness", default=os.urandom)


def new_ulid(moment: datetime, randomness: bytes | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 characters, sortable by time."""
    return _ulid_of(int(moment.timestamp() * 1000), int.from_bytes(randomness or _RANDOMNESS.get()(10), "big"))


@contextmanager
def id_randomness(source: RandomBytes) -> Iterator[None]:
    """New ids made in this context (this thread, or task) take their random bits from ``source``:
    a test harness's seeded generator makes the same ids, and so the same retry jitter, every time."""
    token = _RANDOMNESS.set(source)
    try:
        yield
    finally:
        _RANDOMNESS.reset(token)


class StepKeys:
    """Turns step ids into keys: the first use of "a" is "a", the next "a:1", then "a:2"."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next(self, step_id: str) -> str:
        count = self._seen.get(step_id, 0)
        self._seen[step_id] = count + 1
        return step_id if count == 0 else f"{step_id}:{count}"


def seeded_ulids(seed: str, count: int) -> list[str]:
    """The ids of a send that carries Inngest's ``x-inngest-event-id-seed``: ``"<millis>,<base64 of
    10 bytes>"``. Event ``i`` gets the seed's time and its 80 bits plus ``i``, so a retried request
    gets the ids it got the first time. Raises ValueError naming what is wrong with the seed."""
    millis_text, _, entropy_text = seed.partition(",")
    try:
        millis = int(millis_text)
        entropy = base64.b64decode(entropy_text, validate=True)
    except ValueError:
        raise ValueError(f"event id seed {seed[:60]!r} is not '<milliseconds>,<base64 of 10 bytes>'") from None
    if len(entropy) != 10 or not 0 <= millis < 1 << 48:
        raise ValueError(f"event id seed {seed[:60]!r} is not '<milliseconds>,<base64 of 10 bytes>'")
    first = int.from_bytes(entropy, "big")
    return [_ulid_of(millis, (first + index) % (1 << 80)) for index in range(count)]


def _ulid_of(millis: int, randomness: int) -> str:
    # 2 zero bits then the 128 bits make the 26 five-bit digits; base64's C base32 encoder does the
    # digit work (a Python loop of 26 divmods cost more than the rest of routing an event).
    padded = (((millis << 80) | randomness) << 30).to_bytes(20, "big")
    return base64.b32encode(padded)[:26].decode("ascii").translate(_FROM_RFC4648)
