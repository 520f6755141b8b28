"""The README's first example runs as written, in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_runs_and_prints_its_result(tmp_path: Path) -> None:
    [first, *_] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    script = tmp_path / "example.py"
    script.write_text(first)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["to ada@example.com: receipt for order 42", "sent"]
    assert (tmp_path / "shop.db").is_file()


def test_the_readme_waiting_example_runs_and_prints_its_result(tmp_path: Path) -> None:
    [_, second, *_] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    script = tmp_path / "waiting.py"
    script.write_text(second)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["paid 30, reserved, label"]


def test_the_readme_flow_control_example_runs_and_prints_its_result(tmp_path: Path) -> None:
    [_, _, third, *_] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    script = tmp_path / "flow.py"
    script.write_text(third)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "digest for ada up to note 2",
        "['completed', 'completed', 'completed', 'skipped', 'skipped', 'skipped']",
    ]
