"""The official ``inngest`` SDK's client sends its events to steplog's server, as to Inngest's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import inngest
import pytest
from inngest._internal.client_lib import client as inngest_client_module
from inngest._internal.errors import SendEventsError
from steplog.engine.ids import seeded_ulids

from steplog import Context, Steplog, TriggerEvent
from steplog.server import ServerConfig
from steplog.server.event_api import EVENT_ID_SEED_HEADER

ServeApp = Callable[..., str]
RESULT_TIMEOUT = 30.0
KEY = "inngest-test-key"
FIXED_SEED = "1767225600000,MDEyMzQ1Njc4OQ=="
"""What Inngest's client puts in x-inngest-event-id-seed: milliseconds, then 10 random bytes in base64."""


@pytest.fixture(autouse=True)
def _no_inngest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the SDK reads its settings from INNGEST_* variables too; the tests give them as arguments
    for name in ("INNGEST_DEV", "INNGEST_EVENT_KEY", "INNGEST_BASE_URL", "INNGEST_EVENT_API_BASE_URL", "INNGEST_ENV"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Steplog]:
    client = Steplog(app_id="inngest-sdk-test", db=tmp_path / "app.db")

    @client.create_function(fn_id="greet", trigger=TriggerEvent(event="app/greet"))
    def greet(ctx: Context) -> Any:
        return ctx.step.run("greet", lambda: f"hello {ctx.event.data['name']}")

    with client:
        yield client


@pytest.fixture
def dev_url(client: Steplog, serve_app: ServeApp) -> str:
    return serve_app(client, ServerConfig(dev=True))


def sdk(base_url: str, event_key: str | None = None) -> inngest.Inngest:
    """Inngest's client, in dev mode, with its event API pointed at our server."""
    return inngest.Inngest(app_id="sdk", is_production=False, event_api_base_url=base_url, event_key=event_key)


def greeting(name: str) -> inngest.Event:
    return inngest.Event(name="app/greet", data={"name": name})


def outputs_of(client: Steplog, ids: list[str]) -> list[Any]:
    return [run.result(timeout=RESULT_TIMEOUT) for event_id in ids for run in client.runs_for_event(event_id)]


def test_send_sync_of_one_event_and_of_a_list_returns_steplogs_ids(client: Steplog, dev_url: str) -> None:
    sender = sdk(dev_url)  # no event key: the SDK posts to /e/NO_EVENT_KEY_SET, which dev mode accepts

    [one] = sender.send_sync(greeting("ada"))
    many = sender.send_sync([greeting("bob"), greeting("cy")])

    assert [event["internal_id"] for event in reversed(client.list_events())] == [one, *many]
    assert outputs_of(client, [one, *many]) == ["hello ada", "hello bob", "hello cy"]


def test_the_async_send_returns_steplogs_ids(client: Steplog, dev_url: str) -> None:
    sender = sdk(dev_url)

    async def send_both() -> tuple[list[str], list[str]]:
        return await sender.send(greeting("ada")), await sender.send([greeting("bob"), greeting("cy")])

    one, many = asyncio.run(send_both())

    assert [event["internal_id"] for event in reversed(client.list_events())] == [*one, *many]
    assert outputs_of(client, [*one, *many]) == ["hello ada", "hello bob", "hello cy"]


def test_the_sdk_with_an_event_key_is_accepted_and_a_wrong_key_is_refused(
    client: Steplog, serve_app: ServeApp
) -> None:
    base_url = serve_app(client, ServerConfig(event_keys=(KEY,)))

    [event_id] = sdk(base_url, event_key=KEY).send_sync(greeting("ada"))
    with pytest.raises(SendEventsError, match="event key not accepted"):
        sdk(base_url, event_key="wrong").send_sync(greeting("bob"))

    assert [event["internal_id"] for event in client.list_events()] == [event_id]


def test_the_sdk_raises_the_engines_message_for_a_bad_event(client: Steplog, dev_url: str) -> None:
    with pytest.raises(SendEventsError, match="names starting with 'inngest/' are reserved"):
        sdk(dev_url).send_sync([greeting("ada"), inngest.Event(name="inngest/function.failed")])

    assert client.list_events() == []


def test_the_sdk_sends_its_id_seed_and_a_resend_gets_the_same_ids_and_starts_nothing_twice(
    client: Steplog, dev_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inngest's client makes a new seed per send and keeps it across its own retries; fixing it
    # here stands for such a retry, and lets the ids be predicted from the seed.
    monkeypatch.setattr(inngest_client_module, "_seed", lambda: FIXED_SEED)
    sender = sdk(dev_url)

    first = sender.send_sync([greeting("ada"), greeting("bob")])
    again = sender.send_sync([greeting("ada"), greeting("bob")])

    assert first == again == seeded_ulids(FIXED_SEED, 2)
    assert client.run_until_idle(RESULT_TIMEOUT)
    assert sorted(run["output"] for run in client.list_runs()) == ["hello ada", "hello bob"]


def test_the_sdk_header_is_the_one_the_server_reads(dev_url: str) -> None:
    request = sdk(dev_url)._build_send_request([greeting("ada")])

    assert isinstance(request, httpx.Request)
    seed = request.headers[EVENT_ID_SEED_HEADER]
    assert len(seeded_ulids(seed, 1)) == 1  # a seed the server accepts
