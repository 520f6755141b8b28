"""The checksum of a log entry, stored beside it in SQLite's ``log.checksum``.

SQLite keeps no checksum of its pages (unless built with the checksum VFS), so a flipped byte
inside a stored JSON text goes unnoticed by SQLite: the entry would be read back, parsed, and a
run replayed from a result it never had. Each entry therefore carries a CRC-32 of everything that
identifies it, and every read verifies it.

What is summed, as UTF-8 bytes: a header ``"{position}:{version}:{len(stream)}:{len(type)}:{len(recorded_at)}:"``
followed by stream, type, recorded_at and data. The lengths make the encoding unambiguous (no
two different entries give the same bytes), and the position is in it so that an entry moved to
another place in the log is caught too. CRC-32 (zlib, a few microseconds for a step's JSON)
detects every error of up to 32 consecutive bits, and misses a random one with odds of 1 in 2^32.
It guards against damage, not against someone rewriting an entry on purpose: that would need a key.
"""

from __future__ import annotations

import zlib


def entry_checksum(position: int, stream: bytes, version: int, type_: bytes, recorded_at: bytes, data: bytes) -> int:
    """The CRC-32 of one entry, from its columns as stored (text columns as UTF-8 bytes)."""
    head = b"%d:%d:%d:%d:%d:" % (position, version, len(stream), len(type_), len(recorded_at))
    return zlib.crc32(data, zlib.crc32(b"".join((head, stream, type_, recorded_at))))


def text_checksum(position: int, stream: str, version: int, type_: str, recorded_at: str, data: str) -> int:
    """``entry_checksum`` of an entry whose columns are held as text, as a writer holds them."""
    return entry_checksum(position, stream.encode(), version, type_.encode(), recorded_at.encode(), data.encode())
