"""The ``steplog`` command, run for real in a subprocess against a database the demo filled."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steplog import cli

NO_DB = "no steplog database at {path}; run `steplog demo` or point --db at your app's database"


def in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The command run through ``cli.main`` in this process (quicker, for the secondary checks)."""
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def steplog(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "STEPLOG_DB"}
    return subprocess.run(
        [sys.executable, "-m", "steplog", *map(str, args)],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60, check=False,
    )


def as_json(*args: str | Path, cwd: Path) -> Any:
    done = steplog(*args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo run once (2 orders, an abandoned cart, a repeated order, then each order packed) into a fresh file."""
    cwd = tmp_path_factory.mktemp("cli")
    db = cwd / "demo.db"
    done = steplog("demo", "--db", db, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"cwd": cwd, "db": db, "output": done.stdout}


@pytest.fixture(scope="module")
def runs(demo: dict[str, Any]) -> list[dict[str, Any]]:
    return as_json("runs", "--db", demo["db"], cwd=demo["cwd"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def events(demo: dict[str, Any]) -> list[dict[str, Any]]:
    return as_json("events", "--db", demo["db"], cwd=demo["cwd"])  # type: ignore[no-any-return]


def by_function(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["function_id"], []).append(run)
    return grouped


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_shows_each_run_and_ends_with_commands_to_explore(demo: dict[str, Any], runs: list[Any]) -> None:
    output, db = demo["output"], demo["db"]
    assert "ConnectionError: payment gateway timed out" in output
    assert "a duplicate, started nothing" in output
    assert "The ship-order runs wait for shop/order.packed; sent it for 2 orders." in output
    assert "# a ship-order run: its wait and what matched it" in output
    assert f"steplog runs --db {db}" in output
    match = re.search(rf"steplog run (\w+) --db {re.escape(str(db))}", output)
    assert match is not None, output
    functions = {run["run_id"]: run["function_id"] for run in runs}
    assert functions[match.group(1)] == "checkout"
    assert sorted(re.findall(r"run (\w{26})$", output, re.MULTILINE)) == sorted(functions)  # every run, once


def test_events_newest_first_with_their_runs_and_duplicates_marked(
    demo: dict[str, Any], events: list[Any], runs: list[Any]
) -> None:
    cwd, db = demo["cwd"], demo["db"]
    run_by_id = {run["run_id"]: run for run in runs}
    assert [e["name"] for e in events] == [
        "shop/order.packed", "shop/order.packed",
        "shop/order.placed", "shop/cart.abandoned", "shop/order.placed", "shop/order.placed",
    ]
    assert [e["position"] for e in events] == sorted((e["position"] for e in events), reverse=True)
    packed2, packed1, duplicate, cart, order2, order1 = events
    assert duplicate["duplicate"] is True and duplicate["runs"] == []
    assert duplicate["id"] == order1["id"] and order1["duplicate"] is False
    started = {e["data"].get("order_id") or e["data"]["cart_id"]: sorted(run_by_id[r]["function_id"] for r in e["runs"])
               for e in (cart, order2, order1)}
    assert started == {
        "order-1": ["audit-log", "checkout", "ship-order"],  # total 42: not a VIP order
        "order-2": ["audit-log", "checkout", "ship-order", "vip-gift"],  # total 180: event.data.total >= 100
        "cart-1": ["audit-log"],  # only the shop/* wildcard matches
    }
    assert [packed1["data"]["order_id"], packed2["data"]["order_id"]] == ["order-1", "order-2"]
    assert [run_by_id[r]["function_id"] for e in (packed1, packed2) for r in e["runs"]] == ["audit-log"] * 2
    assert sorted(run_by_id) == sorted(r for e in events for r in e["runs"])

    only_carts = as_json("events", "--name", "shop/cart.abandoned", "--db", db, cwd=cwd)
    assert [e["internal_id"] for e in only_carts] == [cart["internal_id"]]
    window = as_json("events", "--since", "1d", "--until", "2099-01-01", "--limit", "2", "--db", db, cwd=cwd)
    assert window == events[:2]


def test_runs_filtered_by_function_status_and_event(
    demo: dict[str, Any], events: list[Any], runs: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, db = demo["cwd"], demo["db"]
    assert {f: len(rs) for f, rs in by_function(runs).items()} == {
        "checkout": 2, "vip-gift": 1, "ship-order": 2, "audit-log": 5
    }
    assert sorted(r["output"] for r in by_function(runs)["ship-order"]) == [
        "shipped order-1 from north", "shipped order-2 from north"
    ]
    assert all(run["status"] == "completed" for run in runs)

    checkout = as_json("runs", "--function", "checkout", "--db", db, cwd=cwd)
    assert [r["run_id"] for r in checkout] == [r["run_id"] for r in runs if r["function_id"] == "checkout"]
    assert all(r["output"]["charge"].startswith("ch_order-") for r in checkout)
    completed = as_json("runs", "--status", "completed", "--function", "vip-gift", "--db", db, cwd=cwd)
    assert [r["function_id"] for r in completed] == ["vip-gift"]
    assert in_process(capsys, "runs", "--status", "failed", "--json", "--db", db) == (0, "[]\n", "")

    order1 = events[-1]
    started = as_json("runs", "--event", order1["id"], "--db", db, cwd=cwd)  # the user's id, shared with the duplicate
    assert sorted(r["run_id"] for r in started) == sorted(order1["runs"])
    code, out, _ = in_process(capsys, "runs", "--event", order1["internal_id"], "--json", "--db", db)
    assert code == 0
    assert sorted(r["run_id"] for r in json.loads(out)) == sorted(order1["runs"])


def test_run_history_has_the_errored_attempt_then_the_completed_one(demo: dict[str, Any], runs: list[Any]) -> None:
    cwd, db = demo["cwd"], demo["db"]
    retried = next(r for r in runs if r["function_id"] == "checkout" and r["output"]["charge"] == "ch_order-1")
    history = as_json("run", retried["run_id"], "--db", db, cwd=cwd)
    assert history["run"]["status"] == "completed" and history["run"]["steps"] == 3
    steps = [(s["step"], s["attempt"], s["status"]) for s in history["steps"]]
    assert steps == [
        ("reserve-stock", 0, "completed"),
        ("charge-card", 0, "errored"),
        ("charge-card", 1, "completed"),
        ("send-receipt", 0, "completed"),
    ]
    errored, retry = history["steps"][1], history["steps"][2]
    assert errored["error"]["name"] == "ConnectionError"
    assert errored["error"]["message"] == "payment gateway timed out"
    assert "Traceback" in errored["error"]["stack"] and "charge_card" in errored["error"]["stack"]
    assert errored["ended_at"] < errored["retry_at"] <= retry["started_at"]  # ISO UTC text sorts as time
    assert retry["output"] == {"charge": "ch_order-1", "amount": 42}
    assert all(s["duration_ms"] >= 0 for s in history["steps"])
    assert [e["type"] for e in history["entries"]][:2] == ["run.scheduled", "run.started"]

    table = steplog("run", retried["run_id"][:20], "--db", db, cwd=cwd)  # a unique prefix is enough
    assert table.returncode == 0, table.stderr
    assert retried["run_id"] in table.stdout
    errored_line = next(line for line in table.stdout.splitlines() if " errored " in line)
    assert errored_line.startswith("charge-card") and "ConnectionError: payment gateway timed out" in errored_line
    assert "retry at" in errored_line and "Traceback" not in table.stdout


def test_tables_show_the_ids(
    demo: dict[str, Any], events: list[Any], runs: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, db = demo["cwd"], demo["db"]

    table = steplog("runs", "--db", db, cwd=cwd)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["RUN", "ID", "FUNCTION"]
    for run in runs:
        assert re.search(rf"^{run['run_id']}\s+{run['function_id']}\s+completed\s", table.stdout, re.MULTILINE)

    table = steplog("events", "--db", db, cwd=cwd)
    assert table.returncode == 0, table.stderr
    assert all(run["run_id"] in table.stdout for run in runs)
    assert all(event["id"] in table.stdout for event in events)
    assert "duplicate" in table.stdout

    assert in_process(capsys, "runs", "--status", "failed", "--db", db) == (0, "no runs match\n", "")


def test_query_commands_only_read(demo: dict[str, Any], runs: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    db = demo["db"]
    before = digest(db)
    for args in (["events"], ["runs", "--event", runs[0]["event_id"]], ["run", runs[0]["run_id"], "--json"]):
        code, out, err = in_process(capsys, *args, "--db", db)
        assert (code, err) == (0, ""), args
        assert runs[0]["run_id"] in out
    assert digest(db) == before


def test_db_from_the_environment(
    demo: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPLOG_DB", str(demo["db"]))
    code, out, _ = in_process(capsys, "runs", "--json")
    assert code == 0
    assert len(json.loads(out)) == 10


def status_in(db: Path, run_id: str) -> str:
    with sqlite3.connect(db) as conn:
        [(status,)] = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchall()
    conn.close()
    return str(status)


def test_rebuild_reports_no_difference_then_the_tampered_row(
    demo: dict[str, Any], runs: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "copy.db"
    with sqlite3.connect(demo["db"]) as source, sqlite3.connect(db) as target:
        source.backup(target)
    source.close()
    target.close()

    clean = steplog("rebuild", "--check", "--db", db, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "no differences" in clean.stdout

    run_id = by_function(runs)["vip-gift"][0]["run_id"]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (run_id,))
    conn.close()

    check = steplog("rebuild", "--check", "--db", db, cwd=tmp_path)
    assert check.returncode == 1
    assert f"runs {run_id}: status: failed (live) vs completed (log)" in check.stdout
    code, out, _ = in_process(capsys, "rebuild", "--check", "--json", "--db", db)
    report = json.loads(out)
    assert code == 1
    assert report["applied"] is False
    assert [(d["table"], d["key"], d["columns"]) for d in report["differences"]] == [("runs", [run_id], ["status"])]
    assert status_in(db, run_id) == "failed"  # --check changed nothing

    fixed = steplog("rebuild", "--db", db, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "1 difference, corrected" in fixed.stdout
    assert status_in(db, run_id) == "completed"
    assert in_process(capsys, "rebuild", "--check", "--db", db)[0] == 0


def test_a_missing_database_is_a_clear_error_and_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nothing-here.db"
    done = steplog("runs", "--db", db, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.strip() == f"steplog: error: {NO_DB.format(path=db)}"

    monkeypatch.delenv("STEPLOG_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    for args in (["events", "--json"], ["run", "01ABC"], ["rebuild", "--check"], ["rebuild"], ["runs"]):
        assert cli.main(args) == 1, args  # no --db: ./steplog.db
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.strip() == f"steplog: error: {NO_DB.format(path='steplog.db')}"
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_exit_2_with_a_message(demo: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cwd, db = demo["cwd"], demo["db"]
    for args, message in {
        ("runs", "--since", "last tuesday"): "argument --since: 'last tuesday' is not a time",
        ("runs", "--status", "exploded"): "argument --status: invalid choice: 'exploded'",
    }.items():
        done = steplog(*args, "--db", db, cwd=cwd)
        assert (done.returncode, done.stdout) == (2, ""), args
        assert message in done.stderr, (args, done.stderr)

    for argv, message in {
        ("events", "--until", "2026-13-45"): "'2026-13-45' is not a time",
        ("runs", "--limit", "-1"): "'-1' is not a count",
        ("runs", "--since", "2026-02-01", "--until", "2026-01-01"): "--since (2026-02-01T00:00:00Z) is after --until",
        ("demo", "--events", "0"): "'0': use a whole number from 1 to 10000",
        ("run",): "the following arguments are required: RUN_ID",
        ("explode",): "invalid choice: 'explode'",
    }.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--db", str(db)])
        captured = capsys.readouterr()
        assert (exit_info.value.code, captured.out) == (2, ""), argv
        assert message in captured.err, (argv, captured.err)

    assert cli.main(["run", "01NOSUCHRUN", "--db", str(db)]) == 1
    assert "no run '01NOSUCHRUN'" in capsys.readouterr().err


def test_a_file_that_is_not_a_steplog_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    before = digest(other)
    done = steplog("runs", "--db", other, cwd=tmp_path)
    assert done.returncode == 1
    assert "is not a steplog database (it has no `log` table)" in done.stderr
    assert digest(other) == before


def test_check_says_ok_then_names_the_damaged_entry_and_refuses_its_run(
    demo: dict[str, Any], runs: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "copy.db"
    with sqlite3.connect(demo["db"]) as source, sqlite3.connect(db) as target:
        source.backup(target)
    source.close()
    target.close()
    clean = steplog("check", db, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    run_id = by_function(runs)["vip-gift"][0]["run_id"]
    with sqlite3.connect(db) as conn:  # the gift changes: valid JSON, a result the run never had
        [(entries,)] = conn.execute("SELECT count(*) FROM log").fetchall()
        [(position,)] = conn.execute(
            "SELECT position FROM log WHERE stream = ? AND type = 'step.completed' LIMIT 1", (f"run/{run_id}",)
        ).fetchall()
        conn.execute("UPDATE log SET data = replace(data, 'tote bag', 'tote bat') WHERE position = ?", (position,))
    conn.close()
    assert clean.stdout == f"ok: {entries} entries\n"

    damaged = steplog("check", "--db", db, cwd=tmp_path)
    assert damaged.returncode == 1
    assert f"damaged: position {position}, stream 'run/{run_id}': its checksum does not match" in damaged.stdout
    assert "NOT OK" in damaged.stdout
    code, out, _ = in_process(capsys, "check", db, "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["entries"]) == (1, False, entries)
    assert [(d["position"], d["stream"]) for d in report["damaged"]] == [(position, f"run/{run_id}")]
    code, out, err = in_process(capsys, "run", run_id, "--db", db)
    assert code == 1 and out == ""
    assert f"the log entry at position {position} (stream 'run/{run_id}') in {db} is damaged" in err
    assert "Traceback" not in err


def test_rebuild_waits_for_the_engine_to_stop_but_check_does_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import steplog

    db = tmp_path / "live.db"
    client = steplog.Steplog(db=db)

    @client.create_function(fn_id="f", trigger=steplog.TriggerEvent(event="a/b"))
    def f(ctx: steplog.Context) -> int:
        return 1

    with client:
        client.send({"name": "a/b"})
        client.run_until_idle(timeout=10)
        assert cli.main(["rebuild", "--db", str(db)]) == 1
        assert "stop it before `steplog rebuild`, or use --check" in capsys.readouterr().err
        assert cli.main(["rebuild", "--check", "--db", str(db)]) == 0
    assert cli.main(["rebuild", "--db", str(db)]) == 0
