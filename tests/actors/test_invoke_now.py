"""client.invoke: a run of a function now, whatever its triggers (the dev UI's Invoke)."""

from __future__ import annotations

from pathlib import Path

import pytest

import steplog


def _client(tmp_path: Path) -> steplog.Steplog:
    client = steplog.Steplog(db=str(tmp_path / "invoke.db"), clock=steplog.ManualClock())

    @client.create_function(fn_id="nightly", trigger=steplog.TriggerCron("0 2 * * *"))
    def nightly(ctx: steplog.Context) -> str:
        return f"{ctx.event.name} {ctx.event.data.get('who', 'nobody')}"

    return client


def test_invoke_starts_a_cron_function_now_with_its_data(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        [event_id] = client.invoke("nightly", {"who": "Ada"})
        [run] = client.runs_for_event(event_id)
        assert run.result(timeout=10) == "inngest/function.invoked Ada"
        [no_data] = client.invoke("nightly")
        assert client.runs_for_event(no_data)[0].result(timeout=10) == "inngest/function.invoked nobody"
        assert client.rebuild_projections(apply=False) == []


def test_invoke_refuses_an_unknown_function_and_data_that_is_not_an_object(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        with pytest.raises(steplog.EngineError, match="no function 'missing'"):
            client.invoke("missing")
        with pytest.raises(steplog.EventError, match="must be a JSON object"):
            client.invoke("nightly", ["not", "an", "object"])  # type: ignore[arg-type]
        with pytest.raises(steplog.EventError, match="limit"):
            client.invoke("nightly", {"blob": "x" * 300_000})
        assert client.list_runs() == []
