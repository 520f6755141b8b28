"""The dev UI's JSON endpoints and pages, over real HTTP (uvicorn in a thread, a client on a SQLite file)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import steplog
from steplog.server import ServerConfig

ServeApp = Callable[..., str]
JSON_HEADERS = {"Content-Type": "application/json"}
DEADLINE_S = 15.0


class Boom(Exception):
    """A plain failure, retried by the policy."""


def define_functions(client: steplog.Steplog) -> None:
    @client.create_function(fn_id="greet", trigger=steplog.TriggerEvent(event="app/user.created"),
                            concurrency=[steplog.Concurrency(limit=3, key="event.data.name")])
    def greet(ctx: steplog.Context) -> str:
        name = ctx.step.run("load", lambda: ctx.event.data["name"])
        return str(ctx.step.run("greet", lambda: f"hello {name}"))

    @client.create_function(fn_id="nap", trigger=steplog.TriggerEvent(event="app/nap"))
    def nap(ctx: steplog.Context) -> str:
        ctx.step.run("before", lambda: "awake")
        ctx.step.sleep("long-nap", timedelta(hours=1))
        return "rested"

    @client.create_function(fn_id="declined", trigger=steplog.TriggerEvent(event="app/pay"), retries=1)
    def declined(ctx: steplog.Context) -> None:
        def charge() -> None:
            raise steplog.NonRetriableError("the card was declined")

        ctx.step.run("charge", charge)

    @client.create_function(fn_id="flaky", trigger=steplog.TriggerEvent(event="app/flaky"),
                            retries=steplog.RetryPolicy.fixed(1, timedelta(milliseconds=20)))
    def flaky(ctx: steplog.Context) -> None:
        def fail() -> None:
            raise Boom("down again")

        ctx.step.run("call", fail)

    @client.create_function(fn_id="approve", trigger=steplog.TriggerEvent(event="app/order.placed"))
    def approve(ctx: steplog.Context) -> Any:
        approval = ctx.step.wait_for_event("approval", event="app/order.approved", match="data.order", timeout="1h")
        return approval.data if approval is not None else None

    @client.create_function(fn_id="double", trigger=steplog.TriggerEvent(event="app/double"))
    def double(ctx: steplog.Context) -> int:
        return int(ctx.event.data["n"]) * 2

    @client.create_function(fn_id="caller", trigger=steplog.TriggerEvent(event="app/call"))
    def caller(ctx: steplog.Context) -> Any:
        return ctx.step.invoke("twice", function=double, data={"n": 21})

    @client.create_function(fn_id="yearly", trigger=steplog.TriggerCron("0 0 1 1 *"))
    def yearly(ctx: steplog.Context) -> Any:
        return {"event": ctx.event.name, "data": ctx.event.data}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[steplog.Steplog]:
    client = steplog.Steplog(app_id="ui-tests", db=tmp_path / "ui.db")
    define_functions(client)
    with client:
        yield client


@pytest.fixture
def http(client: steplog.Steplog, serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app(client), timeout=10.0) as http:
        yield http


def send(http: httpx.Client, event: Any) -> dict[str, Any]:
    response = http.post("/api/events", json=event)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def run_detail(http: httpx.Client, run_id: str) -> dict[str, Any]:
    response = http.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


def wait_for_status(http: httpx.Client, run_id: str, statuses: set[str]) -> dict[str, Any]:
    """Poll the run until its status is one of ``statuses``; fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        detail = run_detail(http, run_id)
        if detail["run"]["status"] in statuses:
            return detail
        assert time.monotonic() < deadline, f"run {run_id} is {detail['run']['status']}, not in {statuses}"
        time.sleep(0.02)


def wait_for_step(http: httpx.Client, run_id: str, key: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        detail = run_detail(http, run_id)
        steps = {step["key"]: step for step in detail["steps"]}
        if key in steps and steps[key]["status"] == status:
            return detail
        assert time.monotonic() < deadline, f"step {key!r} of run {run_id} never became {status}: {steps}"
        time.sleep(0.02)


# -- pages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/events", "/events/some-id", "/runs", "/runs/some-run", "/functions"])
def test_every_page_path_serves_the_app_shell(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_static_assets_are_served_with_their_types_and_nothing_else(http: httpx.Client) -> None:
    script = http.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text  # everything is shown with textContent
    assert http.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert http.get("/static/secrets.txt").status_code == 404
    assert http.get("/static/..%2Fui.py").status_code == 404


# -- events --------------------------------------------------------------------------------------


def test_send_returns_the_ids_and_the_runs_started(http: httpx.Client, client: steplog.Steplog) -> None:
    answer = send(http, {"name": "app/user.created", "data": {"name": "Ada"}})
    [event_id] = answer["ids"]
    [run_id] = answer["runs"]
    assert client.run(run_id).wait(DEADLINE_S)
    assert client.get_run(run_id)["output"] == "hello Ada"
    assert [handle.run_id for handle in client.runs_for_event(event_id)] == [run_id]


def test_a_refused_event_is_a_400_with_the_engines_message(http: httpx.Client) -> None:
    response = http.post("/api/events", json={"data": {}})
    assert response.status_code == 400
    assert "name" in response.json()["error"]
    response = http.post("/api/events", json={"name": "app/x", "data": [1, 2]})
    assert response.status_code == 400 and "data" in response.json()["error"]
    assert http.post("/api/events", content=b"{not json", headers=JSON_HEADERS).status_code == 400
    assert http.post("/api/events", json=[]).status_code == 400


def test_a_post_that_is_not_json_is_refused(http: httpx.Client, client: steplog.Steplog) -> None:
    form = http.post("/api/events", content=b'{"name": "app/x"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    assert client.list_events(name="app/x") == []


def test_a_body_over_the_limit_is_refused(client: steplog.Steplog, serve_app: ServeApp) -> None:
    base = serve_app(client, ServerConfig(dev=True, max_body_bytes=1024))
    response = httpx.post(f"{base}/api/events", json={"name": "app/big", "data": {"blob": "x" * 2000}})
    assert response.status_code == 413


def test_events_are_listed_newest_first_and_filtered_by_name(http: httpx.Client) -> None:
    first = send(http, {"name": "app/user.created", "data": {"name": "Ada"}})["ids"][0]
    send(http, {"name": "app/other", "data": {}})
    last = send(http, {"name": "app/user.created", "data": {"name": "Grace"}})["ids"][0]
    events = http.get("/api/events").json()
    assert [event["name"] for event in events][:3] == ["app/user.created", "app/other", "app/user.created"]
    named = http.get("/api/events", params={"name": "app/user.created"}).json()
    assert [event["id"] for event in named] == [last, first]
    assert named[0]["data"] == {"name": "Grace"}
    [started] = named[0]["runs"]
    assert started["relation"] == "started" and started["function_id"] == "greet"
    assert [event["id"] for event in http.get("/api/events", params={"limit": 1}).json()] == [last]
    assert http.get("/api/events", params={"limit": "0"}).status_code == 400
    assert http.get("/api/events", params={"limit": "lots"}).status_code == 400


def test_an_event_is_found_by_its_senders_id_and_lists_its_runs(http: httpx.Client) -> None:
    answer = send(http, {"name": "app/user.created", "id": "signup-7", "data": {"name": "Ada"}})
    event = http.get("/api/events/signup-7").json()
    assert event["id"] == "signup-7" and event["name"] == "app/user.created"
    assert [run["run_id"] for run in event["runs"]] == answer["runs"]
    duplicate = send(http, {"name": "app/user.created", "id": "signup-7", "data": {"name": "Ada"}})
    assert duplicate["runs"] == []
    missing = http.get("/api/events/no-such-event")
    assert missing.status_code == 404 and "no-such-event" in missing.json()["error"]


# -- runs ------------------------------------------------------------------------------------------


def test_runs_are_filtered_by_function_and_status(http: httpx.Client, client: steplog.Steplog) -> None:
    [greeted] = send(http, {"name": "app/user.created", "data": {"name": "Ada"}})["runs"]
    [declined] = send(http, {"name": "app/pay", "data": {}})["runs"]
    assert client.run(greeted).wait(DEADLINE_S) and client.run(declined).wait(DEADLINE_S)
    by_function = http.get("/api/runs", params={"function": "greet"}).json()
    assert [run["run_id"] for run in by_function] == [greeted]
    assert by_function[0]["event_name"] == "app/user.created"
    assert by_function[0]["duration_ms"] >= 0
    failed = http.get("/api/runs", params={"status": "failed"}).json()
    assert [run["run_id"] for run in failed] == [declined]
    assert http.get("/api/runs", params={"function": "greet", "status": "failed"}).json() == []
    bad = http.get("/api/runs", params={"status": "exploded"})
    assert bad.status_code == 400 and "exploded" in bad.json()["error"]


def test_a_completed_runs_timeline_has_each_step_with_its_output(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/user.created", "data": {"name": "Ada"}})["runs"]
    detail = wait_for_status(http, run_id, {"completed"})
    assert detail["run"]["output"] == "hello Ada"
    assert detail["function"]["id"] == "greet"
    assert [event["name"] for event in detail["events"]] == ["app/user.created"]
    assert [(s["key"], s["kind"], s["status"], s["output"]) for s in detail["steps"]] == [
        ("load", "run", "completed", "Ada"), ("greet", "run", "completed", "hello Ada"),
    ]
    for step in detail["steps"]:
        [attempt] = step["attempts"]
        assert attempt["attempt"] == 1 and attempt["duration_ms"] >= 0 and step["duration_ms"] >= 0
    whats = [note["what"] for note in detail["log"]]
    assert whats[:2] == ["scheduled", "started"] and whats[-1] == "completed"
    assert detail["active"] is False


def test_a_failed_run_shows_the_error_of_its_only_attempt(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/pay", "data": {}})["runs"]
    detail = wait_for_status(http, run_id, {"failed"})
    assert "the card was declined" in detail["run"]["error"]["message"]
    [step] = detail["steps"]
    assert step["status"] == "failed"
    [attempt] = step["attempts"]
    assert attempt["status"] == "failed"
    assert attempt["error"]["name"] == "NonRetriableError"
    assert attempt["error"]["message"] == "the card was declined"


def test_a_retried_step_shows_each_attempt(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/flaky", "data": {}})["runs"]
    detail = wait_for_status(http, run_id, {"failed"})
    [step] = detail["steps"]
    assert [(a["attempt"], a["status"]) for a in step["attempts"]] == [(1, "errored"), (2, "failed")]
    assert step["attempts"][0]["retry_at"] is not None
    assert all(a["error"]["message"] == "down again" for a in step["attempts"])


def test_a_sleeping_run_is_cancelled(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/nap", "data": {}})["runs"]
    detail = wait_for_step(http, run_id, "long-nap", "sleeping")
    sleep = {step["key"]: step for step in detail["steps"]}["long-nap"]
    assert sleep["kind"] == "sleep" and sleep["sleep"]["until"] > detail["run"]["scheduled_at"]
    assert detail["active"] is True
    response = http.post(f"/api/runs/{run_id}/cancel", headers=JSON_HEADERS)
    assert response.status_code == 200 and response.json() == {"cancelled": True}
    detail = wait_for_status(http, run_id, {"cancelled"})
    assert "cancelled from the dev UI" in [note.get("reason") for note in detail["log"]]
    assert http.post(f"/api/runs/{run_id}/cancel", headers=JSON_HEADERS).json() == {"cancelled": False}
    assert http.post("/api/runs/nope/cancel", headers=JSON_HEADERS).status_code == 404
    assert http.post(f"/api/runs/{run_id}/cancel").status_code == 415


def test_a_wait_shows_the_event_that_matched_it(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/order.placed", "data": {"order": 7}})["runs"]
    detail = wait_for_step(http, run_id, "approval", "waiting")
    wait = detail["steps"][0]["wait"]
    assert wait["event"] == "app/order.approved" and wait["matched"] is None and wait["expires_at"]
    [reply] = send(http, {"name": "app/order.approved", "data": {"order": 7}})["ids"]
    detail = wait_for_status(http, run_id, {"completed"})
    [step] = detail["steps"]
    assert step["kind"] == "wait" and step["status"] == "completed"
    assert step["wait"]["matched"]["id"] == reply
    assert detail["run"]["output"] == {"order": 7}
    resumed = http.get(f"/api/events/{reply}").json()["runs"]
    assert [(run["run_id"], run["relation"], run["step"]) for run in resumed] == [(run_id, "resumed", "approval")]
    listed = http.get("/api/events", params={"name": "app/order.approved"}).json()
    assert [run["relation"] for run in listed[0]["runs"]] == ["resumed"]


def test_one_event_resuming_many_waits_lists_each_run(http: httpx.Client) -> None:
    waiting = [send(http, {"name": "app/order.placed", "data": {"order": 9}})["runs"][0] for _ in range(3)]
    for run_id in waiting:
        wait_for_step(http, run_id, "approval", "waiting")
    [reply] = send(http, {"name": "app/order.approved", "data": {"order": 9}})["ids"]
    for run_id in waiting:
        wait_for_status(http, run_id, {"completed"})
    resumed = http.get(f"/api/events/{reply}").json()["runs"]
    assert sorted(run["run_id"] for run in resumed) == sorted(waiting)
    assert {run["relation"] for run in resumed} == {"resumed"}


def test_an_invoke_links_both_runs(http: httpx.Client) -> None:
    [run_id] = send(http, {"name": "app/call", "data": {}})["runs"]
    detail = wait_for_status(http, run_id, {"completed"})
    [step] = detail["steps"]
    assert step["kind"] == "invoke" and step["output"] == 42
    invoke = step["invoke"]
    assert invoke["function_id"] == "double" and invoke["status"] == "completed"
    child = run_detail(http, invoke["run_id"])
    assert child["run"]["function_id"] == "double"
    assert child["invoked_by"] == {"run_id": run_id, "step": "twice"}


def test_rerun_starts_a_new_run_with_the_same_event(http: httpx.Client) -> None:
    [original] = send(http, {"name": "app/user.created", "data": {"name": "Ada"}})["runs"]
    wait_for_status(http, original, {"completed"})
    response = http.post(f"/api/runs/{original}/rerun", headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    rerun = response.json()["run_id"]
    assert rerun != original
    detail = wait_for_status(http, rerun, {"completed"})
    assert detail["rerun_of"] == original
    assert detail["run"]["output"] == "hello Ada"
    assert detail["events"] == run_detail(http, original)["events"]
    assert http.post("/api/runs/nope/rerun", headers=JSON_HEADERS).status_code == 404


def test_an_unknown_run_is_a_404(http: httpx.Client) -> None:
    response = http.get("/api/runs/no-such-run")
    assert response.status_code == 404 and "no-such-run" in response.json()["error"]


def invoke(http: httpx.Client, fn_id: str, body: Any) -> dict[str, Any]:
    response = http.post(f"/api/functions/{fn_id}/invoke", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_invoke_runs_a_cron_function_now_with_the_data_given(http: httpx.Client) -> None:
    answer = invoke(http, "yearly", {"data": {"reason": "by hand"}})
    [event_id] = answer["ids"]
    [run_id] = answer["runs"]
    detail = wait_for_status(http, run_id, {"completed"})
    assert detail["run"]["function_id"] == "yearly"
    output = detail["run"]["output"]
    assert output["event"] == "inngest/function.invoked"
    assert output["data"]["reason"] == "by hand"
    assert output["data"]["_inngest"]["fn_id"] == "yearly"
    assert detail["invoked_by"] is None  # no run waits for it
    assert [run["run_id"] for run in http.get(f"/api/events/{event_id}").json()["runs"]] == [run_id]


def test_invoke_runs_an_event_function_whatever_its_trigger(http: httpx.Client) -> None:
    [run_id] = invoke(http, "greet", {"data": {"name": "Ada"}})["runs"]
    detail = wait_for_status(http, run_id, {"completed"})
    assert detail["run"]["output"] == "hello Ada"
    assert [event["name"] for event in detail["events"]] == ["inngest/function.invoked"]
    empty = http.post("/api/functions/yearly/invoke", headers=JSON_HEADERS)  # no body: empty data
    assert empty.status_code == 200, empty.text
    [run_id] = empty.json()["runs"]
    data = wait_for_status(http, run_id, {"completed"})["run"]["output"]["data"]
    assert set(data) == {"_inngest"} and data["_inngest"]["correlation_id"].startswith("invoke-")


def test_invoke_refuses_data_that_is_not_an_object_and_unknown_functions(http: httpx.Client) -> None:
    for body in ({"data": [1, 2]}, {"data": "text"}, [1]):
        response = http.post("/api/functions/yearly/invoke", json=body)
        assert response.status_code == 400, body
        assert "error" in response.json()
    response = http.post("/api/functions/nope/invoke", json={"data": {}})
    assert response.status_code == 404 and "nope" in response.json()["error"]
    refused = http.post("/api/functions/yearly/invoke", content=b'{"data": {}}', headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert http.get("/api/runs?function=yearly").json() == []


# -- functions and changes ------------------------------------------------------------------------


def test_functions_show_triggers_retries_and_flow_control(http: httpx.Client) -> None:
    functions = {function["id"]: function for function in http.get("/api/functions").json()}
    assert set(functions) == {"greet", "nap", "declined", "flaky", "approve", "double", "caller", "yearly"}
    greet = functions["greet"]
    assert greet["triggers"] == [{"event": "app/user.created", "expression": None}]
    assert greet["retries"] == 4
    assert greet["concurrency"] == [{"limit": 3, "key": "event.data.name", "scope": "fn"}]
    assert functions["declined"]["retries"] == 1


def test_changes_move_when_the_log_does(http: httpx.Client) -> None:
    before = http.get("/api/changes").json()
    assert before["now"].endswith("Z")
    send(http, {"name": "app/other", "data": {}})
    after = http.get("/api/changes").json()
    assert after["position"] > before["position"]
