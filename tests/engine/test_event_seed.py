"""Inngest's ``x-inngest-event-id-seed``: a retried send gets the same ids and starts nothing twice."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

import steplog
from steplog.engine.ids import seeded_ulids


def _seed(millis: int, entropy: bytes) -> str:
    return f"{millis},{base64.b64encode(entropy).decode()}"


@given(st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10), st.integers(1, 50))
def test_seeded_ids_are_distinct_sorted_ulids_of_the_seed_time(millis: int, entropy: bytes, count: int) -> None:
    ids = seeded_ulids(_seed(millis, entropy), count)
    assert ids == seeded_ulids(_seed(millis, entropy), count)
    assert len(set(ids)) == count
    assert all(len(one) == 26 for one in ids)
    assert all(one[:10] == ids[0][:10] for one in ids)  # same 48-bit time prefix


@pytest.mark.parametrize("seed", ["", "abc", "12,", "12,!!!", f"12,{base64.b64encode(b'short').decode()}", "-1,AAAAAAAAAAAAAA=="])
def test_a_malformed_seed_is_refused_with_its_form(seed: str) -> None:
    with pytest.raises(ValueError, match="milliseconds>,<base64 of 10 bytes"):
        seeded_ulids(seed, 1)


def _client() -> steplog.Steplog:
    client = steplog.Steplog(db=":memory:", clock=steplog.ManualClock())

    @client.create_function(fn_id="count", trigger=steplog.TriggerEvent(event="app/ping"))
    def count(ctx: steplog.Context) -> int:
        return 1

    return client


def test_a_retried_seeded_send_returns_the_same_ids_and_starts_nothing_twice() -> None:
    seed = _seed(1_700_000_000_000, bytes(range(10)))
    with _client() as client:
        first = client.send([{"name": "app/ping"}, {"name": "app/ping", "id": "mine"}], id_seed=seed)
        again = client.send([{"name": "app/ping"}, {"name": "app/ping", "id": "mine"}], id_seed=seed)
        client.run_until_idle()
        assert again == first
        assert len(client.list_events()) == 2
        assert len(client.list_runs()) == 2
        assert client.rebuild_projections(apply=False) == []


def test_different_seeds_give_different_ids() -> None:
    with _client() as client:
        first = client.send({"name": "app/ping"}, id_seed=_seed(1, bytes(10)))
        second = client.send({"name": "app/ping"}, id_seed=_seed(1, bytes(9) + b"\x01"))
        client.run_until_idle()
        assert first != second
        assert len(client.list_runs()) == 2


def test_a_malformed_seed_refuses_the_send_and_records_nothing() -> None:
    with _client() as client:
        with pytest.raises(steplog.EventError, match="event id seed"):
            client.send({"name": "app/ping"}, id_seed="not a seed")
        assert client.list_events() == []
