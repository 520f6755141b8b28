"""``steplog cancel``: requests recorded in the log, carried out by the next engine that runs the runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import steplog
from steplog import cli

WAIT = 10.0


def napping_app(db: Path) -> steplog.Steplog:
    client = steplog.Steplog(db=db)

    @client.create_function(fn_id="napper", trigger=steplog.TriggerEvent(event="app/nap"))
    def napper(ctx: steplog.Context) -> int:
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("nap", "1d")
        return ctx.step.run("after", lambda: 2)  # type: ignore[no-any-return]

    return client


def statuses(db: Path) -> dict[int, str]:
    """Each run's status by the ``i`` of the event that started it, after an engine ran them."""
    with napping_app(db) as client:
        client.run_until_idle(timeout=WAIT)
        return {
            event["data"]["i"]: client.get_run(event["runs"][0])["status"]
            for event in client.list_events(name="app/nap")
        }


@pytest.fixture
def napping(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    with napping_app(db) as client:
        client.send([{"name": "app/nap", "data": {"i": i}} for i in range(3)])
        client.run_until_idle(timeout=WAIT)
    return db


def run_ids(db: Path) -> list[str]:
    """The runs by the ``i`` of the event that started them."""
    with napping_app(db) as client:
        events = sorted(client.list_events(name="app/nap"), key=lambda event: event["data"]["i"])
        return [event["runs"][0] for event in events]


def test_cancel_by_filter_is_carried_out_at_the_next_start(napping: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["cancel", "--db", str(napping), "--function", "napper", "--if", "event.data.i >= 1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(steplog_json(out)["cancelled"]) == 2
    assert statuses(napping) == {0: "waiting", 1: "cancelled", 2: "cancelled"}


def test_cancel_one_run_by_prefix_and_again_says_it_ended(napping: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = run_ids(napping)[0]
    assert cli.main(["cancel", first[:20], "--db", str(napping)]) == 0
    assert f"cancel requested: {first}" in capsys.readouterr().out
    assert statuses(napping)[0] == "cancelled"
    assert cli.main(["cancel", first, "--db", str(napping)]) == 0
    assert f"already ended, not cancelled: {first}" in capsys.readouterr().out


def test_cancel_refuses_while_an_engine_holds_the_database(napping: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with napping_app(napping):
        code = cli.main(["cancel", "--db", str(napping), "--function", "napper"])
    assert code == 1
    assert "client.cancel" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a RUN_ID, or --function"),
        (["RUN", "--function", "napper"], "give a RUN_ID, or --function"),
        (["RUN", "--status", "waiting"], "with a RUN_ID leave them out"),
        (["--function", "napper", "--if", "event.data.("], "syntax error"),
    ],
)
def test_cancel_explains_bad_arguments(
    napping: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["cancel", "--db", str(napping), *args]) == 2
    assert message in capsys.readouterr().err


def steplog_json(text: str) -> dict[str, list[str]]:
    import json

    return json.loads(text)  # type: ignore[no-any-return]
