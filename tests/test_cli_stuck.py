"""``steplog runs --stuck``: runs eligible to progress that have not, with their history; exit 1 if any."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from steplog.engine import Context, Engine, FunctionRegistry, ManualClock, RunProjector, TriggerEvent, define_function
from steplog.eventstore import SqliteEventStore

from steplog import cli


def database_with_a_run_never_started(db: Path, at: datetime) -> str:
    """A database whose one run was accepted at ``at`` and never started (nobody ran the engine)."""
    registry = FunctionRegistry()

    def one_step(ctx: Context) -> int:
        return int(ctx.step.run("a", lambda: 1))

    registry.add(define_function(one_step, fn_id="one", trigger=TriggerEvent(event="app/go")))
    store = SqliteEventStore(db, RunProjector())
    [run] = Engine(store, registry=registry, clock=ManualClock(at)).accept({"name": "app/go", "data": {}}).runs
    store.close()
    return run.run_id


def test_a_run_ready_for_longer_than_the_window_is_listed_with_its_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    run_id = database_with_a_run_never_started(db, datetime(2026, 1, 1, 12, 0, tzinfo=UTC))

    assert cli.main(["runs", "--stuck", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert f"run {run_id} (one, queued): queued and ready since 2026-01-01T12:00:00.000000Z" in out
    assert "run.scheduled" in out

    assert cli.main(["runs", "--stuck", "90s", "--json", "--db", str(db)]) == 1
    [stuck] = json.loads(capsys.readouterr().out)
    assert (stuck["run_id"], stuck["reason"], stuck["history"][0]["type"]) == (run_id, "queued", "run.scheduled")


def test_nothing_stuck_within_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "app.db"
    database_with_a_run_never_started(db, datetime.now(UTC))  # ready just now: within a day's window

    assert cli.main(["runs", "--stuck", "1d", "--db", str(db)]) == 0
    assert capsys.readouterr().out == "no stuck runs (none eligible to progress for 24h00m)\n"
    assert cli.main(["runs", "--stuck", "86400", "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("window", ["0", "-5", "soon"])
def test_a_window_that_is_not_a_positive_duration_is_refused(
    tmp_path: Path, window: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["runs", f"--stuck={window}", "--db", str(tmp_path / "app.db")])
    assert exit_info.value.code == 2
    assert "--stuck" in capsys.readouterr().err


def test_function_and_status_narrow_the_stuck_runs_and_other_filters_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    run_id = database_with_a_run_never_started(db, datetime(2026, 1, 1, 12, 0, tzinfo=UTC))

    assert cli.main(["runs", "--stuck", "--function", "one", "--status", "queued", "--db", str(db)]) == 1
    assert f"run {run_id} (one, queued)" in capsys.readouterr().out
    assert cli.main(["runs", "--stuck", "--function", "another", "--db", str(db)]) == 0
    assert cli.main(["runs", "--stuck", "--status", "running", "--db", str(db)]) == 0
    assert capsys.readouterr().out.count("no stuck runs") == 2

    assert cli.main(["runs", "--stuck", "--event", "e1", "--since", "2026-01-01", "--db", str(db)]) == 2
    assert "--stuck takes --function and --status, not --event, --since" in capsys.readouterr().err
