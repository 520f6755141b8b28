"""``steplog export`` and ``steplog replay``, run for real in subprocesses against a database the demo filled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steplog.testing import RecordedRun, replay
from steplog.demo import create_client

SAME_APP = "from steplog.demo import create_client\nclient = create_client('elsewhere.db')\n"
CHANGED_APP = '''
import steplog
from steplog.demo import create_client

client = create_client("elsewhere.db")
client.registry = steplog.engine.FunctionRegistry()
for function in create_client("elsewhere.db").registry.all():
    if function.id != "audit-log":
        client.registry.add(function)

@steplog.Steplog(app_id="x", db="unused.db").create_function(fn_id="audit-log", trigger=steplog.TriggerEvent(event="shop/*"))
def audit_log(ctx):
    return ctx.step.run("record-line", lambda: "changed")

client.registry.add(audit_log)
'''


def steplog(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STEPLOG_DB"}
    return subprocess.run(
        [sys.executable, "-m", "steplog", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("replay")
    done = steplog("demo", "--db", "demo.db", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(steplog("runs", "--db", "demo.db", "--json", cwd=cwd).stdout)
    (cwd / "same_app.py").write_text(SAME_APP)
    (cwd / "changed_app.py").write_text(CHANGED_APP)
    return {"cwd": cwd, "runs": runs}


def test_export_writes_a_recorded_run_that_loads_back(demo: dict[str, Any]) -> None:
    run = next(run for run in demo["runs"] if run["function_id"] == "checkout")
    done = steplog("export", run["run_id"][:20], "--db", "demo.db", "-o", "checkout.json", cwd=demo["cwd"])
    assert done.returncode == 0, done.stderr
    assert f"wrote run {run['run_id']}" in done.stdout
    recorded = RecordedRun.load(demo["cwd"] / "checkout.json")
    assert (recorded.run_id, recorded.function_id, recorded.status) == (run["run_id"], "checkout", run["status"])
    assert recorded.entries[0].type == "run.scheduled" and recorded.ending is not None
    assert replay(recorded, create_client(demo["cwd"] / "unused.db")).ok


def test_export_to_stdout_is_the_same_document(demo: dict[str, Any]) -> None:
    run = demo["runs"][0]
    done = steplog("export", run["run_id"], "--db", "demo.db", cwd=demo["cwd"])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["format"] == "steplog/recorded-run" and document["run_id"] == run["run_id"]
    assert RecordedRun.from_json(document).entries


def test_export_of_an_unknown_run_names_it(demo: dict[str, Any]) -> None:
    done = steplog("export", "NOSUCHRUN", "--db", "demo.db", cwd=demo["cwd"])
    assert done.returncode == 1 and "NOSUCHRUN" in done.stderr and done.stdout == ""


def test_replay_of_the_whole_database_against_the_same_code_is_clean(demo: dict[str, Any]) -> None:
    done = steplog("replay", "same_app:client", "--db", "demo.db", "--limit", "0", cwd=demo["cwd"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(demo['runs'])} runs replayed: {len(demo['runs'])} ok, 0 diverge" in done.stdout


def test_replay_against_changed_code_reports_each_diverging_run(demo: dict[str, Any]) -> None:
    audits = [run for run in demo["runs"] if run["function_id"] == "audit-log"]
    done = steplog("replay", "changed_app:client", "--db", "demo.db", "--limit", "0", cwd=demo["cwd"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{len(demo['runs']) - len(audits)} ok, {len(audits)} diverge" in done.stdout
    assert "'record-line'" in done.stdout and "'record'" in done.stdout
    for run in audits:
        assert run["run_id"] in done.stdout


def test_replay_of_files_with_json_output(demo: dict[str, Any]) -> None:
    run = next(run for run in demo["runs"] if run["function_id"] == "audit-log")
    assert steplog("export", run["run_id"], "--db", "demo.db", "-o", "audit.json", cwd=demo["cwd"]).returncode == 0
    done = steplog("replay", "changed_app:client", "audit.json", "--json", cwd=demo["cwd"])
    assert done.returncode == 1
    [report] = json.loads(done.stdout)
    assert report["run_id"] == run["run_id"] and report["ok"] is False
    assert "the code now takes a step.run step 'record-line'" in report["divergences"][0]


def test_replay_refuses_a_file_that_is_not_a_recorded_run(demo: dict[str, Any]) -> None:
    (demo["cwd"] / "bogus.json").write_text('{"hello": 1}')
    done = steplog("replay", "same_app:client", "bogus.json", cwd=demo["cwd"])
    assert done.returncode == 1 and "bogus.json" in done.stderr and "not a recorded run" in done.stderr


def test_replay_with_a_missing_app_says_so(demo: dict[str, Any]) -> None:
    done = steplog("replay", "no_such_module:client", "--db", "demo.db", cwd=demo["cwd"])
    assert done.returncode == 2 and "no_such_module" in done.stderr


def test_replay_with_an_unknown_function_is_an_error_not_zero_runs(demo: dict[str, Any]) -> None:
    done = steplog("replay", "same_app:client", "--db", "demo.db", "--function", "chekout", cwd=demo["cwd"])
    assert done.returncode == 2 and "no function 'chekout'" in done.stderr and "'checkout'" in done.stderr


def test_replay_reports_a_damaged_recorded_run_and_goes_on(demo: dict[str, Any]) -> None:
    run = next(run for run in demo["runs"] if run["function_id"] == "audit-log")
    assert steplog("export", run["run_id"], "--db", "demo.db", "-o", "good.json", cwd=demo["cwd"]).returncode == 0
    document = json.loads((demo["cwd"] / "good.json").read_text())
    document["entries"][1]["data"] = {"bogus": 1}
    (demo["cwd"] / "damaged.json").write_text(json.dumps(document))
    done = steplog("replay", "same_app:client", "damaged.json", "good.json", cwd=demo["cwd"])
    assert done.returncode == 1
    assert "cannot be replayed: KeyError" in done.stdout and "2 runs replayed: 1 ok, 1 diverge" in done.stdout
    document["entries"] = []
    (demo["cwd"] / "empty.json").write_text(json.dumps(document))
    done = steplog("replay", "same_app:client", "empty.json", cwd=demo["cwd"])
    assert done.returncode == 1 and "must begin with run.scheduled" in done.stderr
