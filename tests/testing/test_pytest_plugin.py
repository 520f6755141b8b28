"""The pytest fixtures come with the installed package: a user's project gets them with no import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = '''
import pytest
import steplog

client = steplog.Steplog(app_id="shop", db="never-opened.db")

@client.create_function(fn_id="remind", trigger=steplog.TriggerEvent(event="shop/cart.abandoned"))
def remind(ctx):
    ctx.step.sleep("wait-a-day", "1d")
    return ctx.step.run("email", lambda: f"reminded {ctx.event.data['user']}")

@pytest.fixture
def steplog_functions():
    return client
'''

TESTS = '''
from datetime import timedelta
import pytest

def test_virtual_time(steplog_engine, manual_clock):
    start = manual_clock.now()
    run = steplog_engine.trigger("shop/cart.abandoned", {"user": "ada"})
    run.assert_waiting()
    steplog_engine.advance(timedelta(days=1) - timedelta(microseconds=1))
    run.assert_waiting()
    steplog_engine.advance(timedelta(microseconds=1))
    run.assert_completed("reminded ada")
    assert manual_clock.now() - start == timedelta(days=1)
    assert steplog_engine.path.parent.name.startswith("test_virtual_time")  # in the test's tmp_path

def test_survives_a_crash(steplog_engine):
    run = steplog_engine.trigger("shop/cart.abandoned", {"user": "bob"})
    steplog_engine.crash(downtime="2d")
    steplog_engine.run_until_idle()
    run.assert_completed("reminded bob")

@pytest.mark.steplog(store="memory")
def test_memory_store(steplog_engine):
    assert steplog_engine.path is None
    steplog_engine.trigger("shop/cart.abandoned", {"user": "cy"}).assert_waiting()

@pytest.mark.steplog(stor="memory")
def test_misspelt_option(steplog_engine):
    pass

def test_failure_shows_the_timeline(steplog_engine):
    steplog_engine.trigger("shop/cart.abandoned", {"user": "dee"}).assert_completed()
'''


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_a_project_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_reminders.py").write_text(TESTS)
    done = run_pytest(tmp_path)
    out = done.stdout
    assert "1 failed, 3 passed, 1 error" in out, out
    assert "unknown option(s) ['stor']" in out
    assert "is waiting, expected completed" in out and "sleep 'wait-a-day' attempt 1: sleeping" in out
    assert not (tmp_path / "never-opened.db").exists()  # the client itself is never started


def test_the_plugin_can_be_switched_off(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one(steplog_engine):\n    pass\n")
    done = run_pytest(tmp_path, "-p", "no:steplog")
    assert "fixture 'steplog_engine' not found" in done.stdout, done.stdout
