"""Durations as users write them: timedelta, seconds, or text like "1m30s"."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steplog.engine import RetryPolicy, parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(0), timedelta(0)),
        (0, timedelta(0)),
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1.5)),
        ("0s", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1m30s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("1.5h", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1h 30m", timedelta(minutes=90)),
        ("1H30M", timedelta(minutes=90)),
        ("1m1m", timedelta(minutes=2)),
    ],
)
def test_accepted(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "cannot read ''"),
        ("   ", "cannot read"),
        ("soon", "cannot read 'soon'"),
        ("5", "cannot read '5'"),
        ("1m30", "cannot read '1m30'"),
        ("1x", "cannot read '1x'"),
        ("m", "cannot read 'm'"),
        ("-1s", "cannot read '-1s'"),
        ("1,5s", "cannot read '1,5s'"),
        (-1, "-1 is negative"),
        (-0.5, "is negative"),
        (timedelta(seconds=-1), "is negative"),
        (True, "True is not a duration"),
        (None, "None is not a duration"),
        ([1], "is not a duration"),
    ],
)
def test_refused_with_a_message_naming_what_and_why(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_duration(value, what="timeout")  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith("timeout: ")
    assert problem in message


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e20, "999999999999d", "1" * 40 + "w"])
def test_out_of_range_is_a_value_error_naming_what(value: object) -> None:
    with pytest.raises(ValueError, match=r"^retry_after: .* is out of range for a duration$"):
        parse_duration(value, what="retry_after")  # type: ignore[arg-type]


def test_out_of_range_backoff_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"backoff: 1e\+20 is out of range"):
        RetryPolicy(backoff=[1e20])


def test_the_error_for_text_shows_examples() -> None:
    with pytest.raises(ValueError, match=r"examples: '30s', '1m30s'"):
        parse_duration("an hour")


@given(
    st.integers(0, 100), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999)
)
def test_text_round_trips(days: int, hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{days}d{hours}h{minutes}m{seconds}s{millis}ms"
    expected = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=millis)
    assert abs(parse_duration(text) - expected) < timedelta(microseconds=1)


@given(st.integers(0, 10**7))
def test_seconds_and_text_agree(seconds: int) -> None:
    assert parse_duration(seconds) == parse_duration(f"{seconds}s") == timedelta(seconds=seconds)


def test_policies_take_every_form_of_duration() -> None:
    policy = RetryPolicy(retries=3, backoff=[1, "2s", timedelta(seconds=3), 4.5], jitter="250ms")
    assert policy.backoff == (
        timedelta(seconds=1), timedelta(seconds=2), timedelta(seconds=3), timedelta(seconds=4.5)
    )
    assert policy.jitter == timedelta(milliseconds=250)
    assert RetryPolicy.fixed(1, "1m").backoff == (timedelta(minutes=1),)
    assert RetryPolicy.fixed(1, "1m").jitter == timedelta(0)
