"""``steplog serve``: a real subprocess serving a small app written to tmp_path, stopped by signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from steplog import Steplog
from steplog.server import ServerConfig
from steplog.server.serve import ServeError, ServeOptions, config_of, load_client

DEADLINE = 30.0
TOKEN = "tok-9f3a71"
APP = """
import os

import steplog

client = steplog.Steplog(app_id="served", db=os.path.join(os.path.dirname(__file__), "served.db"))


@client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/greet"))
def greet(ctx):
    return ctx.step.run("greet", lambda: "hello " + ctx.event.data["name"])
"""


class Served:
    """A ``steplog serve`` subprocess; its output goes to files (a full pipe would block the server)."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.stdout_path, self.stderr_path = cwd / "serve.out", cwd / "serve.err"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "steplog", "serve", *args], cwd=cwd, stdout=out, stderr=err,
                env={**environ, **(env or {})},
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_until_healthy(self, base_url: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"steplog serve exited with {self.process.returncode}: {self.stderr}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"steplog serve did not answer /health within {DEADLINE} s: {self.stderr}")
            time.sleep(0.05)  # the next poll of /health, not a wait for a guessed moment

    def wait(self) -> int:
        return self.process.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app_module.py").write_text(APP)
    return tmp_path


@pytest.fixture
def launched() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for served in servers:
        served.kill()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def committed(app_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The events in the served app's database, and each greet run's output by its event."""
    client = Steplog(app_id="reader", db=app_dir / "served.db")
    try:
        events = [event["internal_id"] for event in client.list_events(limit=None)]
        outputs = {run["event_id"]: run["output"] for run in client.list_runs(status="completed", limit=None)}
        return events, outputs
    finally:
        client.store.close()


@pytest.mark.parametrize(
    ("stop_signal", "dev"),
    [(signal.SIGTERM, ["--dev"]), (signal.SIGINT, [])],
    ids=["SIGTERM", "SIGINT-dev-from-env"],
)
def test_a_signal_stops_the_server_and_every_acknowledged_event_is_committed(
    app_dir: Path, launched: list[Served], stop_signal: signal.Signals, dev: list[str]
) -> None:
    port = free_port()
    served = Served(app_dir, ["app_module:client", "--port", str(port), *dev], env={"STEPLOG_DEV": "1"} if not dev else {})
    launched.append(served)
    base_url = f"http://127.0.0.1:{port}"
    served.wait_until_healthy(base_url)
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def sender(number: int) -> None:
        with httpx.Client(timeout=DEADLINE) as http:
            for index in range(10_000):
                try:
                    answer = http.post(f"{base_url}/e/any-key", json={"name": "app/greet", "data": {"name": f"{number}-{index}"}})
                except httpx.TransportError:
                    return  # the server stopped accepting
                if answer.status_code != 200:
                    return
                with lock:
                    acknowledged.extend(answer.json()["ids"])
                    if len(acknowledged) >= 40:
                        enough.set()

    senders = [threading.Thread(target=sender, args=(number,)) for number in range(8)]
    for thread in senders:
        thread.start()
    assert enough.wait(DEADLINE), served.stderr
    served.process.send_signal(stop_signal)  # while the senders are still posting
    code = served.wait()
    for thread in senders:
        thread.join(DEADLINE)

    assert code == 0, served.stderr
    assert "Traceback" not in served.stderr
    events, outputs = committed(app_dir)
    assert set(acknowledged) <= set(events)
    assert all(outputs.get(event_id, "").startswith("hello ") for event_id in acknowledged)
    assert "steplog: stopped" in served.stdout


def test_the_banner_says_where_it_listens_with_port_0_and_that_dev_mode_takes_any_key(
    app_dir: Path, launched: list[Served]
) -> None:
    served = Served(app_dir, ["app_module", "--port", "0", "--dev"])
    launched.append(served)
    deadline = time.monotonic() + DEADLINE
    while "stop with Ctrl-C" not in served.stdout:
        assert served.process.poll() is None, served.stderr
        assert time.monotonic() < deadline, served.stdout
        time.sleep(0.05)  # polling the banner file

    banner = served.stdout
    [ui_line] = [line for line in banner.splitlines() if line.startswith("UI: ")]
    base_url = ui_line.removeprefix("UI: ").rstrip("/")
    assert "steplog: serving app 'served' (1 function)" in banner
    assert "dev mode: any event key is accepted" in banner
    assert f"event API: POST {base_url}/e/<event key>" in banner
    served.wait_until_healthy(base_url)
    answer = httpx.post(f"{base_url}/e/whatever", json={"name": "app/greet", "data": {"name": "ada"}})
    assert answer.status_code == 200
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0


def test_keys_and_the_api_token_come_from_the_environment(app_dir: Path, launched: list[Served]) -> None:
    port = free_port()
    served = Served(
        app_dir, ["app_module:client", "--port", str(port)],
        env={"STEPLOG_EVENT_KEY": "first, second", "STEPLOG_API_TOKEN": TOKEN},
    )
    launched.append(served)
    base_url = f"http://127.0.0.1:{port}"
    served.wait_until_healthy(base_url)

    def status(key: str) -> int:
        return httpx.post(f"{base_url}/e/{key}", json={"name": "app/greet", "data": {"name": key}}).status_code

    assert [status("first"), status("second"), status("third")] == [200, 200, 401]
    assert httpx.get(f"{base_url}/api/functions").status_code == 401
    assert httpx.get(f"{base_url}/api/functions", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert "event keys: 2 configured; other keys are refused" in served.stdout
    assert httpx.get(f"{base_url}/runs", params={"token": TOKEN}).status_code == 303
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0
    assert TOKEN not in served.stdout + served.stderr  # neither printed nor in the access log
    assert "GET /runs?token=<redacted> HTTP/1.1" in served.stdout + served.stderr


# -- refusing to start -----------------------------------------------------------------------------

MODULES = {
    "empty_module.py": "VALUE = 3\n",
    "two_clients.py": "import steplog\na = steplog.Steplog(db=':memory:')\nb = steplog.Steplog(db=':memory:')\n",
    "broken.py": "import steplog\nraise RuntimeError('boom')\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module:client", "--dev"], "cannot import 'no_such_module': no module named 'no_such_module'"),
        (["app_module.py", "--dev"], "'app_module.py' is a file name: give the module's name, like app_module:client"),
        (["empty_module", "--dev"], "module 'empty_module' holds no Steplog client: name it as module:attr"),
        (["empty_module:client", "--dev"], "module 'empty_module' has no attribute 'client'"),
        (["empty_module:VALUE", "--dev"], "empty_module:VALUE is a int, not a Steplog client or a function returning one"),
        (["two_clients", "--dev"], "module 'two_clients' holds several Steplog clients (a, b): choose one"),
        (["broken:client", "--dev"], "importing 'broken' failed: RuntimeError: boom ("),
        (["app_module:client", "--dev", "--host", "0.0.0.0"], "not a loopback address, needs an API token"),
        (["app_module:client"], "no event key is configured: give --event-key KEY"),
        (["app_module:client", "--dev", "--port", "70000"], "port 70000 is not between 0 and 65535"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_no_traceback(
    app_dir: Path, launched: list[Served], args: list[str], message: str
) -> None:
    for name, text in MODULES.items():
        (app_dir / name).write_text(text)
    served = Served(app_dir, [*args, "--port", str(free_port())] if "--port" not in args else args)
    launched.append(served)

    code = served.wait()

    assert code == 2
    [line] = served.stderr.splitlines()
    assert line.startswith("steplog: error: ")
    assert message in line


def test_a_port_in_use_exits_2(app_dir: Path, launched: list[Served]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        served = Served(app_dir, ["app_module:client", "--dev", "--port", str(taken.getsockname()[1])])
        launched.append(served)

        assert served.wait() == 2
    assert "cannot listen on 127.0.0.1:" in served.stderr


# -- loading the client and the settings, in process -----------------------------------------------


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_client_may_be_named_found_alone_made_by_a_factory_or_reached_through_attributes(
    importable: Path,
) -> None:
    (importable / "loadable_app.py").write_text(textwrap.dedent("""
        import types
        import steplog

        client = steplog.Steplog(db=":memory:")
        also_client = client  # the same client under two names is still one client

        def build():
            return client

        holder = types.SimpleNamespace(inner=client)
    """))

    from_module = load_client("loadable_app")

    assert load_client("loadable_app:client") is from_module
    assert load_client("loadable_app:build") is from_module
    assert load_client("loadable_app:holder.inner") is from_module


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def build(x):\n    return x\n", "loadable_bad:build was called with no arguments to make the client and failed"),
        ("def build():\n    return 42\n", "loadable_bad:build() returned a int, not a Steplog client"),
        ("import steplog\nbuild = steplog.Steplog\n", "loadable_bad:build is a type, not a Steplog client"),
    ],
)
def test_a_target_that_gives_no_client_says_what_it_gave(
    importable: Path, source: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (importable / "loadable_bad.py").write_text(source)
    monkeypatch.delitem(sys.modules, "loadable_bad", raising=False)

    with pytest.raises(ServeError) as raised:
        load_client("loadable_bad:build")

    assert message in str(raised.value)


def test_options_take_the_environment_as_defaults() -> None:
    environ = {"STEPLOG_EVENT_KEY": " a, ,b ", "STEPLOG_API_TOKEN": "tok", "STEPLOG_DEV": "1"}

    from_env = config_of(ServeOptions(target="app"), environ)
    given = config_of(ServeOptions(target="app", event_keys=("c",), api_token="other"), environ)

    assert from_env == ServerConfig(event_keys=("a", "b"), api_token="tok", dev=True)
    assert (given.event_keys, given.api_token) == (("c",), "other")
    assert config_of(ServeOptions(target="app", dev=True), {}).dev
    with pytest.raises(ServeError, match="no event key is configured"):
        config_of(ServeOptions(target="app"), {"STEPLOG_DEV": "0"})
