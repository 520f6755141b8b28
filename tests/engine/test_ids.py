"""ULIDs: 26 Crockford base32 digits of (milliseconds << 80 | 80 random bits); text order is time order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from steplog.engine.ids import StepKeys, new_ulid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MOMENTS = st.datetimes(
    min_value=datetime(1980, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)


def decode(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + CROCKFORD.index(char)
    return value


@given(moment=MOMENTS, randomness=st.binary(min_size=10, max_size=10))
def test_a_ulid_encodes_its_time_and_randomness(moment: datetime, randomness: bytes) -> None:
    ulid = new_ulid(moment, randomness)
    assert len(ulid) == 26 and set(ulid) <= set(CROCKFORD)
    millis = int(moment.timestamp() * 1000)
    assert decode(ulid) == (millis << 80) | int.from_bytes(randomness, "big")


@given(moment=MOMENTS, later=st.integers(min_value=1, max_value=10**9), a=st.binary(min_size=10, max_size=10),
       b=st.binary(min_size=10, max_size=10))
def test_later_ulids_sort_after_earlier_ones(moment: datetime, later: int, a: bytes, b: bytes) -> None:
    assert new_ulid(moment, a) < new_ulid(moment + timedelta(milliseconds=later), b)


def test_step_keys_count_repeats() -> None:
    keys = StepKeys()
    assert [keys.next(i) for i in ("a", "b", "a", "a", "b")] == ["a", "b", "a:1", "a:2", "b:1"]
