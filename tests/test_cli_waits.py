"""``steplog run`` shows waits, what matched them, invoked runs and cancel requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import steplog
from steplog import cli

WAIT = 10.0


def test_a_runs_timeline_shows_its_invoke_its_wait_and_the_event_that_matched(
    tmp_path: Path, clock: steplog.ManualClock, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    client = steplog.Steplog(db=db, clock=clock)

    @client.create_function(fn_id="child", trigger=steplog.TriggerEvent(event="app/unused"))
    def child(ctx: steplog.Context) -> int:
        return ctx.step.run("five", lambda: 5)  # type: ignore[no-any-return]

    @client.create_function(fn_id="parent", trigger=steplog.TriggerEvent(event="app/start"))
    def parent(ctx: steplog.Context) -> Any:
        value = ctx.step.invoke("call", function=child)
        ctx.step.wait_for_event("approve", event="app/ok", match="data.k", timeout="1h")
        ctx.step.wait_for_event("later", event="app/later", match="data.k", timeout="1h")
        return value

    with client:
        [event_id] = client.send({"name": "app/start", "data": {"k": 1}})
        client.run_until_idle(timeout=WAIT)
        [ok_id] = client.send({"name": "app/ok", "data": {"k": 1}})
        client.run_until_idle(timeout=WAIT)
        [run] = client.runs_for_event(event_id)
        child_run = client.list_runs(function_id="child")[0]["run_id"]
        run.cancel("no longer needed")
        run.wait(timeout=WAIT)

    assert cli.main(["run", run.run_id, "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    timeline = "\n".join(lines)
    assert "status     cancelled" in timeline
    assert f"invoked run {child_run} of child completed" in timeline
    assert f"matched app/ok {ok_id}" in timeline
    assert any(line.startswith("later") and "waiting for app/later until 2026-01-01 13:00:00" in line for line in lines)
    assert "cancel requested: no longer needed" in timeline
