"""Identifiers: ULIDs for events and runs, and step keys (the user's id plus an occurrence)."""

from __future__ import annotations

import base64
import os
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def new_ulid(moment: datetime, randomness: bytes | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 characters, sortable by time."""
    millis = int(moment.timestamp() * 1000)
    value = (millis << 80) | int.from_bytes(randomness or os.urandom(10), "big")
    # 2 zero bits then the 128 bits make the 26 five-bit digits; base64's C base32 encoder does the
    # digit work (a Python loop of 26 divmods cost more than the rest of routing an event).
    padded = (value << 30).to_bytes(20, "big")
    return base64.b32encode(padded)[:26].decode("ascii").translate(_FROM_RFC4648)


class StepKeys:
    """Turns step ids into keys: the first use of "a" is "a", the next "a:1", then "a:2"."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next(self, step_id: str) -> str:
        count = self._seen.get(step_id, 0)
        self._seen[step_id] = count + 1
        return step_id if count == 0 else f"{step_id}:{count}"
