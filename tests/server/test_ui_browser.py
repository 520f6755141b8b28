"""The dev UI in a real browser: Playwright (sync API) driving Debian's Chromium, headless.

The server runs in a thread (uvicorn) over a client on a SQLite file with the real clock; the page
refreshes itself by polling, so every check waits with Playwright's auto-retrying ``expect``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import steplog

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser tests need Debian's Chromium at /usr/bin/chromium: `apt-get install -y chromium`"
    " (.ci/run installs it)",
)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright: pip install -e '.[test]'")
expect = playwright_api.expect

LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000
ServeApp = Callable[..., str]


class Boom(Exception):
    """A plain failure, retried by the policy."""


def define_functions(client: steplog.Steplog) -> None:
    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/user.created"),
                            concurrency=[steplog.Concurrency(limit=3, key="event.data.name")],
                            throttle=steplog.Throttle(limit=100, period="1m", burst=10))
    def greet(ctx: steplog.Context) -> str:
        name = ctx.step.run("load", lambda: ctx.event.data["name"])
        return str(ctx.step.run("greet", lambda: f"hello {name}"))

    @client.create_function(fn_id="nap", trigger=steplog.TriggerEvent(event="app/nap"))
    def nap(ctx: steplog.Context) -> str:
        ctx.step.run("before", lambda: "awake")
        ctx.step.sleep("long-nap", timedelta(hours=1))
        return "rested"

    @client.create_function(fn_id="flaky", trigger=steplog.TriggerEvent(event="app/flaky"),
                            retries=steplog.RetryPolicy.fixed(1, timedelta(milliseconds=20)))
    def flaky(ctx: steplog.Context) -> None:
        def fail() -> None:
            raise Boom("down again")

        ctx.step.run("call", fail)

    @client.create_function(fn_id="declined", trigger=steplog.TriggerEvent(event="app/pay"), retries=1)
    def declined(ctx: steplog.Context) -> None:
        def charge() -> None:
            raise steplog.NonRetriableError("the card was declined")

        ctx.step.run("charge", charge)

    @client.create_function(fn_id="approve", trigger=steplog.TriggerEvent(event="app/order.placed"))
    def approve(ctx: steplog.Context) -> Any:
        approval = ctx.step.wait_for_event("approval", event="app/order.approved", match="data.order", timeout="1h")
        return approval.data if approval is not None else None

    @client.create_function(fn_id="yearly", trigger=steplog.TriggerCron("0 0 1 1 *"))
    def yearly(ctx: steplog.Context) -> Any:
        return ctx.step.run("report", lambda: f"{ctx.event.name} {ctx.event.data['who']}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[steplog.Steplog]:
    client = steplog.Steplog(app_id="ui-browser", db=tmp_path / "ui.db")
    define_functions(client)
    with client:
        yield client


@pytest.fixture
def base_url(client: steplog.Steplog, serve_app: ServeApp) -> str:
    return serve_app(client)


@pytest.fixture
def allowed_console() -> list[str]:
    """Console errors a test expects (a refused request is logged by the browser), as substrings."""
    return []


@pytest.fixture
def page(browser: Any, base_url: str, allowed_console: list[str]) -> Iterator[Any]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None)
    yield page
    context.close()
    problems = [problem for problem in problems if not any(allowed in problem for allowed in allowed_console)]
    assert problems == [], problems  # no script error, no refused resource (CSP), nothing broken


@pytest.fixture(autouse=True)
def expect_timeout() -> None:
    expect.set_options(timeout=TIMEOUT_MS)


def run_of(client: steplog.Steplog, event: dict[str, Any]) -> str:
    [event_id] = client.send(event)
    [handle] = client.runs_for_event(event_id)
    return str(handle.run_id)


def step(page: Any, key: str) -> Any:
    return page.locator(f'details.step[data-step="{key}"]')


def run_status(page: Any) -> Any:
    return page.locator("header.view-head .badge")


def test_send_an_event_from_the_dialog_and_follow_its_run(page: Any, client: steplog.Steplog) -> None:
    page.goto("/runs")
    expect(page.get_by_text("No runs yet")).to_be_visible()
    page.keyboard.press("s")
    dialog = page.locator("#send-dialog")
    expect(dialog).to_be_visible()
    example = page.locator("#send-body").input_value()
    assert '"name": "app/user.created"' in example  # prefilled with a valid example
    page.locator("#send-body").fill('{"name": "app/user.created", "data": {"name": "Ada"}}')
    page.get_by_role("button", name="Send", exact=True).click()
    expect(dialog).to_be_hidden()

    row = page.locator("tr.row", has_text="greet")
    expect(row.locator(".badge")).to_have_text("completed")
    expect(row).to_contain_text("app/user.created")
    row.locator("a.id, a:has(.id)").first.click()

    expect(page).to_have_url(re.compile(r"/runs/\w+$"))
    expect(run_status(page)).to_have_text("completed")
    expect(step(page, "load").locator(".step-preview")).to_have_text("Ada")
    expect(step(page, "greet").locator(".step-preview")).to_have_text("hello Ada")
    step(page, "greet").locator("summary").click()
    expect(step(page, "greet").locator(".attempts-table")).to_contain_text("#1")
    expect(step(page, "greet").locator(".attempts-table .json")).to_have_text('"hello Ada"')
    expect(page.locator(".panel", has_text="Output").locator(".json").first).to_have_text('"hello Ada"')


def test_a_refused_event_shows_the_engines_message_in_the_dialog(page: Any, allowed_console: list[str]) -> None:
    allowed_console.append("status of 400 (Bad Request)")
    page.goto("/events")
    page.locator("#send-open").click()
    page.locator("#send-body").fill('{"data": {}}')
    page.locator("#send-body").press("Control+Enter")
    expect(page.locator("#send-error")).to_contain_text("name")
    expect(page.locator("#send-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#send-dialog")).to_be_hidden()


def test_cancel_a_sleeping_run_from_its_page(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/nap", "data": {}})
    page.goto(f"/runs/{run_id}")
    expect(step(page, "long-nap").locator(".badge")).to_have_text("sleeping")
    expect(step(page, "long-nap").locator(".step-preview")).to_contain_text(re.compile(r"until .* \(in (59m|1h 0m)\)"))
    page.get_by_role("button", name="Cancel run").click()
    expect(run_status(page)).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.locator(".log")).to_contain_text("cancelled from the dev UI")
    assert client.get_run(run_id)["status"] == "cancelled"


def test_filter_events_by_name(page: Any, client: steplog.Steplog) -> None:
    client.send([{"name": "app/user.created", "data": {"name": "Ada"}}, {"name": "app/pay", "data": {}},
                 {"name": "app/user.created", "data": {"name": "Grace"}}])
    page.goto("/events")
    rows = page.locator("tr.row")
    expect(rows).to_have_count(3)
    page.keyboard.press("/")
    expect(page.locator("#event-filter")).to_be_focused()
    page.locator("#event-filter").fill("app/pay")
    page.locator("#event-filter").press("Enter")
    expect(rows).to_have_count(1)
    expect(page.locator("#event-filter")).to_be_focused()  # filtering keeps the input as it is
    expect(rows.first).to_contain_text("app/pay")
    expect(rows.first.locator(".badge")).to_have_text("failed")  # the run it started, with its status
    assert page.url.endswith("/events?name=app%2Fpay")
    page.locator("#event-filter").fill("app/none")
    page.locator("#event-filter").press("Enter")
    expect(page.get_by_text("No event named app/none yet.")).to_be_visible()


def test_data_is_shown_as_text_never_as_html(page: Any, client: steplog.Steplog) -> None:
    markup = '<img src="x" onerror="window.injected = 1"><b>bold</b>'
    client.send({"name": "app/user.created", "data": {"name": markup}})
    page.goto("/events")
    expect(page.locator("tr.row .preview").first).to_contain_text('{"name":"<img src=')
    page.locator("tr.row a").first.click()
    expect(page.locator(".panel", has_text="Data")).to_contain_text('onerror=\\"window.injected = 1\\"><b>bold</b>')
    assert page.evaluate("window.injected") is None
    assert page.locator("main img, main b").count() == 0


def test_filter_runs_by_function_and_status(page: Any, client: steplog.Steplog) -> None:
    greeted = run_of(client, {"name": "app/user.created", "data": {"name": "Ada"}})
    declined = run_of(client, {"name": "app/pay", "data": {}})
    assert client.run(greeted).wait(15) and client.run(declined).wait(15)
    page.goto("/runs")
    rows = page.locator("tr.row")
    expect(rows).to_have_count(2)
    page.locator("#run-function").select_option("declined")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".badge")).to_have_text("failed")
    page.locator("#run-status").select_option("completed")
    expect(page.get_by_text("No run matches these filters.")).to_be_visible()
    page.locator("#run-function").select_option("")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("greet")
    assert "status=completed" in page.url


def test_functions_show_triggers_and_flow_control(page: Any) -> None:
    page.goto("/functions")
    card = page.locator('article[data-function="greet"]')
    expect(card).to_contain_text("app/user.created")
    expect(card).to_contain_text("concurrency")
    expect(card).to_contain_text("limit=3")
    expect(card).to_contain_text("key=event.data.name")
    expect(card).to_contain_text("throttle")
    expect(card).to_contain_text("burst=10")
    expect(page.locator('article[data-function="flaky"]')).to_contain_text("1 (2 attempts per step)")
    expect(page.locator('article[data-function="nap"]')).to_contain_text("none")


def test_a_failed_run_shows_the_error_and_each_attempt(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/flaky", "data": {}})
    page.goto(f"/runs/{run_id}")
    expect(run_status(page)).to_have_text("failed")
    expect(page.locator(".panel", has_text="Error").first).to_contain_text("down again")
    call = step(page, "call")
    expect(call).to_have_attribute("open", "")  # a failed step opens by itself
    attempts = call.locator("tr.attempt")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("#1")
    expect(attempts.nth(0).locator(".badge")).to_have_text("errored")
    expect(attempts.nth(0)).to_contain_text("Retry at")
    expect(attempts.nth(1).locator(".badge")).to_have_text("failed")
    expect(attempts.nth(1)).to_contain_text("Boom: down again")


def test_a_non_retriable_failure_shows_its_one_attempt(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/pay", "data": {}})
    page.goto(f"/runs/{run_id}")
    expect(run_status(page)).to_have_text("failed")
    attempts = step(page, "charge").locator("tr.attempt")
    expect(attempts).to_have_count(1)
    expect(attempts.first).to_contain_text("NonRetriableError: the card was declined")


def test_a_wait_shows_the_event_that_matched_it(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/order.placed", "data": {"order": 7}})
    page.goto(f"/runs/{run_id}")
    approval = step(page, "approval")
    expect(approval.locator(".badge")).to_have_text("waiting")
    approval.locator("summary").click()
    expect(approval).to_contain_text("Waits for app/order.approved")
    expect(approval).to_contain_text("No matching event yet.")
    [reply] = client.send({"name": "app/order.approved", "data": {"order": 7}})
    expect(run_status(page)).to_have_text("completed")  # the page refreshed by itself
    matched = approval.locator(".fact.matched")
    expect(matched).to_contain_text("Matched by app/order.approved")  # and kept the step open
    matched.get_by_role("link").click()
    expect(page.locator("h1")).to_have_text("app/order.approved")
    expect(page.locator("tr.row")).to_contain_text("resumed")
    expect(page.locator("dl.meta")).to_contain_text(reply)


def test_invoke_a_cron_function_from_its_card(page: Any, client: steplog.Steplog, allowed_console: list[str]) -> None:
    allowed_console.append("status of 400 (Bad Request)")  # the refused data below
    page.goto("/functions")
    card = page.locator('article[data-function="yearly"]')
    expect(card).to_contain_text("0 0 1 1 *")
    expect(card.get_by_role("button", name="Send test event…")).to_have_count(0)
    card.get_by_role("button", name="Invoke…").click()
    dialog = page.locator("#invoke-dialog")
    expect(dialog).to_be_visible()
    assert '"data": {}' in page.locator("#invoke-body").input_value()
    page.locator("#invoke-body").fill('{"data": [1]}')
    page.get_by_role("button", name="Invoke", exact=True).click()
    expect(page.locator("#invoke-error")).to_contain_text("object")  # refused: the dialog stays open
    page.locator("#invoke-body").fill('{"data": {"who": "Ada"}}')
    page.get_by_role("button", name="Invoke", exact=True).click()
    expect(dialog).to_be_hidden()

    expect(page).to_have_url(re.compile(r"/runs/\w+$"))
    expect(run_status(page)).to_have_text("completed")
    expect(step(page, "report").locator(".step-preview")).to_have_text("inngest/function.invoked Ada")
    [run] = client.list_runs(function_id="yearly")
    assert page.url.endswith(f"/runs/{run['run_id']}")


def test_rerun_from_the_page_starts_a_new_run(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/user.created", "data": {"name": "Ada"}})
    assert client.run(run_id).wait(15)
    page.goto(f"/runs/{run_id}")
    expect(run_status(page)).to_have_text("completed")
    page.get_by_role("button", name="Rerun").click()
    expect(page.locator("dl.meta")).to_contain_text("Rerun of")
    assert run_id not in page.url
    expect(run_status(page)).to_have_text("completed")
    runs = [run["run_id"] for run in client.list_runs(function_id="greet")]
    assert len(runs) == 2 and run_id in runs
    rerun = next(other for other in runs if other != run_id)
    assert page.url.endswith(f"/runs/{rerun}")


def test_keyboard_moves_between_views_and_rows(page: Any, client: steplog.Steplog) -> None:
    run_id = run_of(client, {"name": "app/user.created", "data": {"name": "Ada"}})
    assert client.run(run_id).wait(15)
    page.goto("/functions")
    expect(page.locator("h1")).to_have_text("Functions")
    page.keyboard.press("r")
    expect(page.locator("h1")).to_have_text("Runs")
    expect(page.locator("tr.row")).to_have_count(1)
    page.keyboard.press("j")
    expect(page.locator("tr.row.selected")).to_have_count(1)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("greet")
    page.keyboard.press("e")
    expect(page.locator("h1")).to_have_text("Events")


def test_dark_mode_follows_the_system(browser: Any, base_url: str) -> None:
    context = browser.new_context(base_url=base_url, color_scheme="dark")
    try:
        page = context.new_page()
        page.goto("/runs")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(14, 17, 22)"
    finally:
        context.close()
