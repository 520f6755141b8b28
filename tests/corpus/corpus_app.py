"""The functions whose runs make up the recorded corpus (tests/corpus/runs).

One function per scenario, each triggered by its own event ``corpus/<scenario>``, so that between
them they use every step tool and reach every outcome: step values of each JSON type, retries that
succeed and retries that run out (caught or not), ``NonRetriableError``, ``RetryAfterError``, code
outside steps that fails and is retried, repeated step ids, parallel steps, sleeps, waits that are
resolved or time out, invokes that succeed, fail or time out, ``send_event``, cancellation, failure
handlers, batches, cron ticks and ``async def`` functions.

``scripted`` builds a function from a list of ``(step id, kind)``: the in-flight runs that
tests/reliability/test_corpus.py continues with changed code are recorded from such functions, so
the test can rebuild the same function with one step added, removed or turned into another kind.

Changing a function here changes what its recorded runs must replay to: re-record (see README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steplog.engine import define_function

import steplog

client = steplog.Steplog(app_id="corpus", db="corpus-never-opened.db")
"""Never started: the recorder and the tests hand it (or some of its functions) to a TestEngine."""

QUICK_RETRIES = steplog.RetryPolicy.fixed(2, "10s")
"""Two retries, 10 s apart, without jitter: short histories that re-record to the same bytes."""

STEP_KINDS = ("run", "sleep", "wait", "invoke", "send")
"""The step kinds as the log names them (``send`` is send_event)."""


def on(scenario: str) -> steplog.TriggerEvent:
    return steplog.TriggerEvent(event=f"corpus/{scenario}")


# -- step.run: values and retries ----------------------------------------------------------------


@client.create_function(fn_id="json-values", trigger=on("json-values"))
def json_values(ctx: steplog.Context) -> dict[str, Any]:
    """step.run returning each JSON type."""
    return {
        "string": ctx.step.run("string", lambda: "héllo"),
        "integer": ctx.step.run("integer", lambda: 42),
        "float": ctx.step.run("float", lambda: 2.5),
        "true": ctx.step.run("true", lambda: True),
        "false": ctx.step.run("false", lambda: False),
        "null": ctx.step.run("null", lambda: None),
        "list": ctx.step.run("list", lambda: [1, "two", None, [3.0]]),
        "object": ctx.step.run("object", lambda: {"nested": {"deep": [True, {}]}, "empty": []}),
    }


def flaky(ctx: steplog.Context, failures: int) -> str:
    """A step body that fails its first ``failures`` attempts (ctx.attempt is the step's attempt)."""
    if ctx.attempt < failures:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return f"succeeded on attempt {ctx.attempt}"


@client.create_function(fn_id="retry-succeeds", trigger=on("retry-succeeds"), retries=QUICK_RETRIES)
def retry_succeeds(ctx: steplog.Context) -> str:
    result: str = ctx.step.run("flaky", lambda: flaky(ctx, 2))
    return result


def always_fails() -> None:
    raise ConnectionError("the service is down")


@client.create_function(fn_id="retries-exhausted-caught", trigger=on("retries-exhausted-caught"), retries=QUICK_RETRIES)
def retries_exhausted_caught(ctx: steplog.Context) -> dict[str, Any]:
    try:
        ctx.step.run("doomed", always_fails)
    except steplog.StepError as error:
        fallback = ctx.step.run("fallback", lambda: "used the fallback")
        return {"caught": str(error), "fallback": fallback}
    raise AssertionError("unreachable: 'doomed' always fails")


@client.create_function(
    fn_id="retries-exhausted-uncaught", trigger=on("retries-exhausted-uncaught"), retries=QUICK_RETRIES
)
def retries_exhausted_uncaught(ctx: steplog.Context) -> None:
    ctx.step.run("doomed", always_fails)


def refuse() -> None:
    raise steplog.NonRetriableError("the card was declined")


@client.create_function(fn_id="non-retriable", trigger=on("non-retriable"), retries=QUICK_RETRIES)
def non_retriable(ctx: steplog.Context) -> None:
    ctx.step.run("charge", refuse)


def busy_once(ctx: steplog.Context) -> str:
    if ctx.attempt == 0:
        raise steplog.RetryAfterError("rate limited", "45s")
    return "went through"


@client.create_function(fn_id="retry-after", trigger=on("retry-after"), retries=QUICK_RETRIES)
def retry_after(ctx: steplog.Context) -> str:
    result: str = ctx.step.run("call-api", lambda: busy_once(ctx))
    return result


@client.create_function(fn_id="outside-steps-retry", trigger=on("outside-steps-retry"), retries=QUICK_RETRIES)
def outside_steps_retry(ctx: steplog.Context) -> str:
    """Code outside any step fails on the run's first attempt, then succeeds on its retry."""
    loaded: str = ctx.step.run("load", lambda: "loaded")
    if ctx.attempt == 0:
        raise RuntimeError("the code outside steps failed")
    return f"{loaded} on attempt {ctx.attempt}"


@client.create_function(fn_id="repeated-ids", trigger=on("repeated-ids"))
def repeated_ids(ctx: steplog.Context) -> list[int]:
    """The same id three times: the log keys them item, item:1, item:2."""
    return [ctx.step.run("item", lambda n=n: n * n) for n in range(3)]


@client.create_function(fn_id="parallel", trigger=on("parallel"))
def parallel(ctx: steplog.Context) -> list[Any]:
    results = ctx.group.parallel([
        lambda: ctx.step.run("left", lambda: "L"),
        lambda: ctx.step.run("middle", lambda: 2),
        lambda: ctx.step.run("right", lambda: ["R"]),
    ])
    return list(results)


# -- sleeps, waits, events -----------------------------------------------------------------------


@client.create_function(fn_id="sleeps", trigger=on("sleeps"))
def sleeps(ctx: steplog.Context) -> str:
    ctx.step.sleep("nap", "1h")
    ctx.step.sleep_until("until-tomorrow", "2030-01-02T00:00:00Z")
    done: str = ctx.step.run("after", lambda: "woke up")
    return done


@client.create_function(fn_id="wait-match", trigger=on("wait-match"))
def wait_match(ctx: steplog.Context) -> Any:
    packed = ctx.step.wait_for_event("packed", event="corpus/packed", match="data.order", timeout="1h")
    return None if packed is None else packed.data


@client.create_function(fn_id="wait-if", trigger=on("wait-if"))
def wait_if(ctx: steplog.Context) -> Any:
    approval = ctx.step.wait_for_event(
        "approval", event="corpus/approved", if_exp="async.data.amount >= event.data.amount", timeout="1h"
    )
    return None if approval is None else approval.data


@client.create_function(fn_id="wait-timeout", trigger=on("wait-timeout"))
def wait_timeout(ctx: steplog.Context) -> str:
    reply = ctx.step.wait_for_event("reply", event="corpus/reply", match="data.order", timeout="30m")
    return "timed out" if reply is None else "replied"


@client.create_function(fn_id="send-event", trigger=on("send-event"))
def send_event(ctx: steplog.Context) -> int:
    ids = ctx.step.send_event("notify", [{"name": "corpus/notified", "data": {"n": n}} for n in range(2)])
    return len(ids)


# -- invoke --------------------------------------------------------------------------------------


@client.create_function(fn_id="child-ok", trigger=on("child-ok"))
def child_ok(ctx: steplog.Context) -> dict[str, Any]:
    doubled = ctx.step.run("double", lambda: ctx.event.data.get("n", 0) * 2)
    return {"doubled": doubled}


@client.create_function(fn_id="child-fails", trigger=on("child-fails"), retries=0)
def child_fails(ctx: steplog.Context) -> None:
    ctx.step.run("refuse", refuse)


@client.create_function(fn_id="child-slow", trigger=on("child-slow"))
def child_slow(ctx: steplog.Context) -> str:
    ctx.step.sleep("take-your-time", "2h")
    return "too late"


@client.create_function(fn_id="invoke-ok", trigger=on("invoke-ok"))
def invoke_ok(ctx: steplog.Context) -> Any:
    return ctx.step.invoke("call-child", function="child-ok", data={"n": 21})


@client.create_function(fn_id="invoke-fails", trigger=on("invoke-fails"))
def invoke_fails(ctx: steplog.Context) -> str:
    try:
        ctx.step.invoke("call-child", function="child-fails", data={})
    except steplog.StepError as error:
        return f"the child failed: {error}"
    return "the child did not fail"


@client.create_function(fn_id="invoke-timeout", trigger=on("invoke-timeout"))
def invoke_timeout(ctx: steplog.Context) -> Any:
    return ctx.step.invoke("call-child", function="child-slow", data={}, timeout="30m")


# -- cancellation, failure handlers, batches, cron ----------------------------------------------


@client.create_function(
    fn_id="cancel-sleeping", trigger=on("cancel-sleeping"),
    cancel=[steplog.Cancel(event="corpus/cancel", match="data.order")],
)
def cancel_sleeping(ctx: steplog.Context) -> str:
    ctx.step.run("before", lambda: "started")
    ctx.step.sleep("long-nap", "1d")
    return "never: cancelled while asleep"


@client.create_function(fn_id="cancel-waiting", trigger=on("cancel-waiting"))
def cancel_waiting(ctx: steplog.Context) -> str:
    ctx.step.run("before", lambda: "started")
    ctx.step.wait_for_event("confirmation", event="corpus/confirmed", timeout="1d")
    return "never: cancelled while waiting"


def report_failure(ctx: steplog.Context) -> str:
    message: str = ctx.step.run("alert", lambda: f"alert: {ctx.event.data['error']['message']}")
    return message


@client.create_function(fn_id="with-failure-handler", trigger=on("with-failure-handler"), retries=0,
                        on_failure=report_failure)
def with_failure_handler(ctx: steplog.Context) -> None:
    ctx.step.run("doomed", always_fails)


@client.create_function(fn_id="batched", trigger=on("batched"), batch_events=steplog.Batch(max_size=3, timeout="1m"))
def batched(ctx: steplog.Context) -> int:
    total: int = ctx.step.run("sum", lambda: sum(event.data["n"] for event in ctx.events))
    return total


@client.create_function(fn_id="hourly", trigger=steplog.TriggerCron("0 * * * *"))
def hourly(ctx: steplog.Context) -> str:
    tick: str = ctx.step.run("tick", lambda: str(ctx.event.data["cron"]))
    return tick


# -- async def -----------------------------------------------------------------------------------


async def async_double(n: int) -> int:
    return n * 2


@client.create_function(fn_id="async-steps", trigger=on("async-steps"))
async def async_steps(ctx: steplog.Context) -> dict[str, Any]:
    doubled = await ctx.step.run("double", async_double, 21)
    await ctx.step.sleep("nap", "5m")
    pair = await ctx.group.parallel([
        lambda: ctx.step.run("left", lambda: "L"),
        lambda: ctx.step.run("right", async_double, 1),
    ])
    signal = await ctx.step.wait_for_event("signal", event="corpus/signal", match="data.order", timeout="1h")
    return {"doubled": doubled, "pair": list(pair), "signal": None if signal is None else signal.data}


# -- scripted functions: in flight at recording time, continued with changed code ---------------


Script = Sequence[tuple[str, str]]
"""A function's steps, in order: (step id, kind)."""

MIXED_DONE: Script = (("a", "run"), ("b", "sleep"), ("c", "wait"), ("d", "invoke"), ("e", "send"))
"""A step of every kind, all completed before the run stops at its pending step."""
SLEEPING_SCRIPT: Script = (*MIXED_DONE, ("nap", "sleep"), ("f", "run"))
WAITING_SCRIPT: Script = (*MIXED_DONE, ("hold", "wait"), ("f", "run"))
SCRIPTS = {"mixed-sleeping": SLEEPING_SCRIPT, "mixed-waiting": WAITING_SCRIPT}
SLEEPS = {"b": "1m"}
"""How long a scripted sleep lasts, if not an hour."""


def take_step(ctx: steplog.Context, step_id: str, kind: str) -> Any:
    """Take one step of ``kind`` with id ``step_id``, the same way in every version of a script."""
    if kind == "run":
        return ctx.step.run(step_id, lambda: f"ran {step_id}")
    if kind == "sleep":
        return ctx.step.sleep(step_id, SLEEPS.get(step_id, "1h"))
    if kind == "wait":
        found = ctx.step.wait_for_event(step_id, event="corpus/go", match="data.order", timeout="1h")
        return None if found is None else found.data
    if kind == "invoke":
        return ctx.step.invoke(step_id, function="child-ok", data={"n": 1})
    if kind == "send":
        return len(ctx.step.send_event(step_id, {"name": "corpus/sent", "data": {"by": step_id}}))
    raise ValueError(f"unknown step kind {kind!r}")


def scripted(fn_id: str, script: Script) -> steplog.FunctionDef:
    """A function (not registered anywhere) that takes ``script``'s steps in order and returns what
    each returned, by id: the tests build changed versions of a scripted function with it."""

    def handler(ctx: steplog.Context) -> dict[str, Any]:
        return {step_id: take_step(ctx, step_id, kind) for step_id, kind in script}

    return define_function(handler, fn_id=fn_id, trigger=on(fn_id), retries=QUICK_RETRIES)


MIXED_SLEEPING = client.create_function(fn_id="mixed-sleeping", trigger=on("mixed-sleeping"), retries=QUICK_RETRIES)(
    scripted("mixed-sleeping", SLEEPING_SCRIPT).handler
)
MIXED_WAITING = client.create_function(fn_id="mixed-waiting", trigger=on("mixed-waiting"), retries=QUICK_RETRIES)(
    scripted("mixed-waiting", WAITING_SCRIPT).handler
)
