"""docs/testing.md runs as written.

Each complete example of the page starts at an ``<!-- example: NAME -->`` marker (``from BASE``
starts from BASE's files); every following ```python block whose first line is ``# FILE.py`` is a
file of it, up to the next marker (a later block of the same name replaces the earlier one, as a
fix does). Each example is written to a folder of its own and run with ``python -m pytest`` in a
subprocess, as a user would run it; the broken examples must fail, with the text the page shows
(``<!-- output: NAME -->`` blocks: every line but ``...`` must appear in the real output, once run
ids, times and uuids are masked).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
TOKENS = re.compile(
    r"<!-- example: (?P<example>[\w-]+)(?: from (?P<base>[\w-]+))? -->"
    r"|<!-- output: (?P<output>[\w-]+) -->"
    r"|(?P<end><!-- end of examples -->)"
    r"|```(?P<lang>\w*)\n(?P<code>.*?)```",
    re.DOTALL,
)
FILE_HEADER = re.compile(r"# (?P<name>[\w./-]+\.py)\n")

EXPECTED_FILES = {
    "first": ["app.py", "conftest.py", "test_receipts.py"],
    "failure-message": ["app.py", "conftest.py", "test_receipts.py", "test_failure_message.py"],
    "schedules": ["app.py", "conftest.py", "test_receipts.py", "test_receipts_property.py"],
    "replay": ["app.py", "conftest.py", "test_receipts.py", "test_recorded_runs.py"],
    "saga": ["trip.py", "test_trip.py"],
    "orders": ["orders.py", "conftest.py", "test_orders.py"],
    "throttle": ["contacts.py", "test_contacts.py"],
    "ledger-broken": ["refunds.py", "test_refunds.py"],
    "ledger-fixed": ["refunds.py", "test_refunds.py"],
    "prices-broken": ["prices.py", "conftest.py", "test_prices.py"],
    "prices-fixed": ["prices.py", "conftest.py", "test_prices.py"],
}


@dataclass
class Page:
    examples: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    python_blocks: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)
    """Blocks headed ``# FILE.py`` outside any example: a complete module the tests would not run."""


def read_page() -> Page:
    page = Page()
    current: dict[str, str] | None = None
    pending_output: str | None = None
    for token in TOKENS.finditer(DOC.read_text(encoding="utf-8")):
        if token["example"]:
            current = dict(page.examples[token["base"]]) if token["base"] else {}
            page.examples[token["example"]] = current
        elif token["output"]:
            pending_output = token["output"]
        elif token["end"]:
            current = None
        elif pending_output is not None:
            page.outputs[pending_output] = token["code"]
            pending_output = None
        elif token["lang"] == "python":
            page.python_blocks.append(token["code"])
            header = FILE_HEADER.match(token["code"])
            if header and current is not None:
                current[header["name"]] = token["code"]
            elif header:
                page.stray_files.append(header["name"])
    return page


PAGE = read_page()


@dataclass
class Outcome:
    returncode: int
    output: str
    counts: dict[str, int]


def write_example(name: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text("[pytest]\n")  # no configuration from the folders above
    for filename, code in PAGE.examples[name].items():
        (directory / filename).write_text(code, encoding="utf-8")
    return directory


def run_pytest(directory: Path, *args: str) -> Outcome:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "HYPOTHESIS"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0",
         "-W", "error::pytest.PytestUnknownMarkWarning", *args],
        cwd=directory, capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    output = done.stdout + done.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {word.rstrip("s") if word.startswith("error") else word: int(n)
              for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary)}
    return Outcome(done.returncode, output, counts)


def run_example(name: str, tmp_path: Path, *args: str) -> Outcome:
    return run_pytest(write_example(name, tmp_path / name), *args)


def steplog_command(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steplog", *args], cwd=directory, capture_output=True, text=True,
                          timeout=120, check=False)


MASKS = [
    (re.compile(r"\b0[0-9A-HJKMNP-TV-Z]{25}\b"), "<RUN-ID>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"), "<TIME>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<UUID>"),
    (re.compile(r" in [\d.]+s(?: \([\d:]+\))?"), " in <SECONDS>"),
    (re.compile(r"steplog\.testing\.harness\.NondeterministicRunError"), "NondeterministicRunError"),
]


def masked(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def assert_page_output_shown(name: str, output: str) -> None:
    """Every line of the page's output block NAME (but ``...``) appears in ``output``, masked."""
    actual = masked(output)
    missing = [line for line in masked(PAGE.outputs[name]).splitlines()
               if line.strip() and line.strip() != "..." and line.strip() not in actual]
    assert not missing, f"docs/testing.md shows lines the real output ({name}) does not have: {missing}\n---\n{output}"


def assert_outcome(outcome: Outcome, **counts: int) -> None:
    assert outcome.counts == counts, f"expected {counts}, got {outcome.counts}\n{outcome.output}"
    assert outcome.returncode == (1 if counts.get("failed") else 0), outcome.output


# -- the page itself ---------------------------------------------------------------------------------


def test_the_page_holds_the_examples_this_file_runs() -> None:
    assert {name: sorted(files) for name, files in PAGE.examples.items()} == {
        name: sorted(files) for name, files in EXPECTED_FILES.items()
    }
    assert PAGE.stray_files == [], "complete modules outside an <!-- example --> marker are never run"
    assert set(PAGE.outputs) == {"failure-message", "replay-diverges", "ledger-broken", "prices-broken"}


def test_every_python_block_on_the_page_compiles() -> None:
    assert len(PAGE.python_blocks) >= 17
    for number, code in enumerate(PAGE.python_blocks):
        compile(code, f"docs/testing.md python block {number + 1}", "exec")


def test_the_broken_examples_differ_from_their_fixes_only_where_the_page_says() -> None:
    assert PAGE.examples["ledger-broken"]["test_refunds.py"] == PAGE.examples["ledger-fixed"]["test_refunds.py"]
    assert PAGE.examples["ledger-broken"]["refunds.py"] != PAGE.examples["ledger-fixed"]["refunds.py"]
    assert "uuid4()" in PAGE.examples["prices-broken"]["prices.py"]
    assert "uuid" not in PAGE.examples["prices-fixed"]["prices.py"]


# -- the examples ------------------------------------------------------------------------------------


def test_the_first_example_passes_and_never_opens_the_apps_database(tmp_path: Path) -> None:
    outcome = run_example("first", tmp_path)
    assert_outcome(outcome, passed=2)
    assert not (tmp_path / "first" / "shop.db").exists()


def test_a_failed_assertion_prints_the_run_as_the_page_shows(tmp_path: Path) -> None:
    outcome = run_example("failure-message", tmp_path, "test_failure_message.py")
    assert_outcome(outcome, failed=1)
    assert_page_output_shown("failure-message", "\n".join(
        line[1:].strip() if line.startswith("E ") else line for line in outcome.output.splitlines()
    ))
    # the page's block is the message itself: check its indentation too
    assert "\n  run 'email' attempt 5: failed - ConnectionError: smtp.example.com refused\n" in PAGE.outputs[
        "failure-message"]


def test_the_schedules_property_passes(tmp_path: Path) -> None:
    assert_outcome(run_example("schedules", tmp_path, "test_receipts_property.py"), passed=1)


def test_worked_example_1_the_saga_passes(tmp_path: Path) -> None:
    assert_outcome(run_example("saga", tmp_path), passed=2)


WITHOUT_EXPLAIN_PHASE = """
from hypothesis import Phase, settings

settings.register_profile("no-explain", phases=[phase for phase in Phase if phase is not Phase.explain])
settings.load_profile("no-explain")
"""


def test_worked_example_1_without_a_compensation_fails_as_the_page_says(tmp_path: Path) -> None:
    directory = write_example("saga", tmp_path / "saga")
    trip = directory / "trip.py"
    code = trip.read_text()
    assert code.count('        undo.append(("cancel-hotel", hotels.release))\n') == 1
    trip.write_text(code.replace('        undo.append(("cancel-hotel", hotels.release))\n', ""))
    (directory / "conftest.py").write_text(WITHOUT_EXPLAIN_PHASE)  # it takes ~12 s, and the page shows no output of it
    outcome = run_pytest(directory, "test_trip.py::test_a_trip_is_booked_entirely_or_not_at_all")
    assert_outcome(outcome, failed=1)
    assert "AssertionError: [False, True, False] still held after {'booked': False, 'failed': 'charge-card'}" in (
        outcome.output)
    assert "forward = FailurePlan(fails={}, fatal={'charge-card'}, crashes={})" in outcome.output


def test_worked_example_2_the_payment_timeout_passes(tmp_path: Path) -> None:
    assert_outcome(run_example("orders", tmp_path), passed=8)


def test_worked_example_3_the_throttle_machine_passes(tmp_path: Path) -> None:
    assert_outcome(run_example("throttle", tmp_path), passed=1)


def test_a_step_that_is_not_idempotent_is_caught(tmp_path: Path) -> None:
    outcome = run_example("ledger-broken", tmp_path)
    assert_outcome(outcome, failed=2)
    # each failing test shows the double charge at least once; hypothesis may print it again when it reports
    # the shrunk example, so the exact count varies with how the failure was found
    assert outcome.output.count("AssertionError: assert [('ada', 5), ('ada', 5)] == [('ada', 5)]") >= 2
    assert_page_output_shown("ledger-broken", outcome.output)


def test_the_idempotent_step_passes(tmp_path: Path) -> None:
    assert_outcome(run_example("ledger-fixed", tmp_path), passed=2)


def test_a_step_id_that_changes_is_caught_by_the_determinism_check(tmp_path: Path) -> None:
    outcome = run_example("prices-broken", tmp_path)
    assert_outcome(outcome, failed=1)
    assert "NondeterministicRunError" in outcome.output
    assert "that the recorded run does not have (a new step, or a step id that changed)" in outcome.output
    assert_page_output_shown("prices-broken", "\n".join(
        line[1:].strip() if line.startswith("E ") else line for line in outcome.output.splitlines()
    ))


def test_step_ids_from_the_data_pass(tmp_path: Path) -> None:
    assert_outcome(run_example("prices-fixed", tmp_path), passed=1)


RECORD_TWO_RUNS = """
from steplog.testing import TestEngine

from app import client

with TestEngine(client, path="shop.db") as engine:
    engine.stub("email", returns=None)
    print(engine.trigger("shop/order.paid", {"order_id": 42}).assert_completed().run_id)
    engine.trigger("shop/order.paid", {"order_id": 43}).assert_completed()
"""


def test_export_and_replay_as_the_page_shows(tmp_path: Path) -> None:
    directory = write_example("replay", tmp_path / "replay")
    made = subprocess.run([sys.executable, "-c", RECORD_TWO_RUNS], cwd=directory, capture_output=True, text=True,
                          timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    run_id = made.stdout.strip()
    (directory / "runs").mkdir()

    # steplog export 01Q3... --db shop.db -o runs/receipt-42.json  (a prefix of the id is enough)
    exported = steplog_command(directory, "export", run_id[:16], "--db", "shop.db", "-o", "runs/receipt-42.json")
    assert exported.returncode == 0, exported.stderr
    assert f"wrote run {run_id}" in exported.stdout
    replayed = steplog_command(directory, "replay", "app:client", "runs/receipt-42.json")
    assert (replayed.returncode, replayed.stdout) == (0, "1 run replayed: 1 ok, 0 diverge\n"), replayed.stderr
    replayed = steplog_command(directory, "replay", "app:client", "--db", "shop.db", "--function", "send-receipt",
                               "--status", "completed")
    assert (replayed.returncode, replayed.stdout) == (0, "2 runs replayed: 2 ok, 0 diverge\n"), replayed.stderr
    assert_outcome(run_pytest(directory, "test_recorded_runs.py"), passed=1)

    # "Rename the step "email" to "send-email" in app.py"
    app = directory / "app.py"
    assert app.read_text().count('ctx.step.run("email",') == 1
    app.write_text(app.read_text().replace('ctx.step.run("email",', 'ctx.step.run("send-email",'))
    replayed = steplog_command(directory, "replay", "app:client", "runs/receipt-42.json")
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert masked(replayed.stdout) == masked(PAGE.outputs["replay-diverges"])
    outcome = run_pytest(directory, "test_recorded_runs.py")
    assert_outcome(outcome, failed=1)
    assert "the code now takes a step.run step 'send-email' that the recorded run does not have" in outcome.output

