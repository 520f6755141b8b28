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


def test_the_readme_server_example_serves_events_and_signed_webhooks(tmp_path: Path) -> None:
    import json
    import signal
    import time
    import urllib.request

    from steplog.engine.webhooks import signature_headers

    [_, _, _, fourth, *_] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (tmp_path / "app.py").write_text(fourth)
    server = subprocess.Popen(
        [sys.executable, "-m", "steplog", "serve", "app:client", "--dev", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = _listening_address(server)

        def post(path: str, body: bytes, headers: dict[str, str]) -> dict[str, object]:
            request = urllib.request.Request(base + path, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        event = json.dumps({"name": "shop/order.paid", "data": {"order_id": 7}}).encode()
        assert post("/e/dev", event, {})["status"] == 200
        payment = json.dumps({"order": 8}).encode()
        signed = signature_headers("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", int(time.time()), payment)
        assert post("/webhooks/payments", payment, {**signed, "content-type": "application/json"})["status"] == 200
        deadline = time.monotonic() + 30
        outputs: list[object] = []
        while time.monotonic() < deadline and len(outputs) < 2:
            with urllib.request.urlopen(base + "/api/runs?function=thank&status=completed", timeout=10) as answer:
                outputs = sorted(str(run["output"]) for run in json.loads(answer.read()))
        assert outputs == ["thanks for order 7", "thanks for order 8"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def _listening_address(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"listening on (\S+)", line)
        if found:
            return _healthy(f"http://{found.group(1)}")
    raise AssertionError("steplog serve exited before listening")


def _healthy(base: str) -> str:
    import time
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5):
                return base
        except OSError:
            time.sleep(0.05)  # polling until the server accepts, with a deadline
    raise AssertionError(f"{base} never answered /health")


def test_the_readme_testing_example_passes_under_pytest(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [example] = [block for block in blocks if block.startswith("# test_checkout.py")]
    (tmp_path / "test_checkout.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_checkout.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert not (tmp_path / "shop.db").exists()  # the client is only a bag of functions here
    broken = example.replace('timeout="7d"', 'timeout="8d"')
    (tmp_path / "test_checkout.py").write_text(broken)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_checkout.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert "1 failed, 1 passed" in done.stdout and "is waiting, expected completed" in done.stdout
