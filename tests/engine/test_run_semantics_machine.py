"""steplog's documented run guarantees as a ``steplog.testing.stateful.DurableFunctionMachine``.

Four small functions cover the step kinds:

- ``flow`` (on ``app/start``): step ``a``, a 10 s sleep, a 1-minute ``wait_for_event`` for an
  ``app/reply`` with its key, ``invoke`` of ``child``, ``send_event`` of ``app/sent``, step ``b``;
  it returns what each step gave it;
- ``child`` (invoked): step ``c``;
- ``listener`` (on ``app/sent``, which ``flow`` sends): step ``heard``;
- ``flaky`` (on ``app/flaky``, 2 retries 5 s apart): step ``f``.

How steps fail is drawn once per example (``failure_plans``: planned failures, maybe one step that
always fails); the machine sends events (some duplicates), moves the clock (to the sleep, the wait
and the retry times and a microsecond either side), crashes between commits (with downtime) and in
the middle of steps, and cancels runs. Every step body records each call and returns a new token,
so a body that ran twice, or a run that saw a second result, shows.

Invariants after every rule (besides the machine's own: determinism replay of every run that
ends, projections equal to the log):

- every step body ran once per committed result, plus once per simulated crash in it: only the
  steps in ``crash_in`` ever ran without committing, as often as those stubs crashed;
- a step completes at most once, with a result its body returned in that run, and the function
  (and a parent that invoked it) sees that first committed result;
- every ``send_event`` committed started exactly one listener run, every invoke one child run;
- a run that ended stays ended, with the same status, output and end time;
- at the end, after every timer has fired, every run has ended.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule
from steplog.engine import Context, FunctionDef, RetryPolicy, TriggerEvent, define_function
from steplog.engine.queries import StepAttempt

from steplog.testing import TestRun
from steplog.testing.actions import FailurePlan, Send
from steplog.testing.stateful import DurableFunctionMachine
from steplog.testing.strategies import EVENT_IDS, durations, events, failure_plans

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
EXAMPLES = 100 if _PROFILE == "default" else settings().max_examples
STEP_COUNT = 30

KEYS = st.sampled_from(["x", "y"])
ENDED = ("completed", "failed", "cancelled")
RUN_STEPS = {"flow": ("a", "b"), "child": ("c",), "listener": ("heard",), "flaky": ("f",)}
"""The ``step.run`` steps of each function (their bodies are the ones recorded)."""


class Ledger:
    """Every call of a step body: (run id, step id) -> the tokens it returned, in order."""

    def __init__(self) -> None:
        self.calls: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        self.tokens = itertools.count(1)

    def body(self, ctx: Context, step_id: str) -> Callable[[], str]:
        def run() -> str:
            token = f"{step_id}#{next(self.tokens)}"
            self.calls[(ctx.run_id, step_id)].append(token)
            return token

        return run


LEDGER = Ledger()
"""Module-level, as the functions are; each example starts with a new one (``setup``)."""


def flow(ctx: Context) -> dict[str, Any]:
    key = ctx.event.data["k"]
    a = ctx.step.run("a", LEDGER.body(ctx, "a"))
    ctx.step.sleep("nap", "10s")
    reply = ctx.step.wait_for_event("w", event="app/reply", match="data.k", timeout="1m")
    child = ctx.step.invoke("inv", function="child", data={"k": key})
    sent = ctx.step.send_event("send", {"name": "app/sent", "data": {"k": key}})
    b = ctx.step.run("b", LEDGER.body(ctx, "b"))
    return {"a": a, "reply": None if reply is None else reply.data, "child": child, "sent": len(sent), "b": b}


def child(ctx: Context) -> dict[str, Any]:
    return {"c": ctx.step.run("c", LEDGER.body(ctx, "c"))}


def listener(ctx: Context) -> str:
    heard: str = ctx.step.run("heard", LEDGER.body(ctx, "heard"))
    return heard


def flaky(ctx: Context) -> str:
    done: str = ctx.step.run("f", LEDGER.body(ctx, "f"))
    return done


# Fixed retry delays, without jitter: the jitter is seeded by the run id, which has random bits, so
# jittered retry times differ each time hypothesis replays an example (see the machine's cancel rule).
RETRIES = RetryPolicy.fixed(3, "15s")
FUNCTIONS: list[FunctionDef] = [
    define_function(flow, fn_id="flow", trigger=TriggerEvent(event="app/start"), retries=RETRIES),
    define_function(child, fn_id="child", trigger=TriggerEvent(event="app/child"), retries=RETRIES),  # only invoked
    define_function(listener, fn_id="listener", trigger=TriggerEvent(event="app/sent")),
    define_function(flaky, fn_id="flaky", trigger=TriggerEvent(event="app/flaky"),
                    retries=RetryPolicy.fixed(2, "5s")),
]

EVENTS = st.one_of(
    events("app/start", st.fixed_dictionaries({"k": KEYS})),
    events("app/reply", st.fixed_dictionaries({"k": KEYS}), ids=EVENT_IDS),
    events("app/flaky", ids=EVENT_IDS),
)


@dataclass
class Seen:
    """One run as the log has it now: read once per check."""

    run: TestRun
    function_id: str
    status: str
    output: Any
    ended_at: Any
    attempts: list[StepAttempt]
    outputs: dict[str, Any]
    """Each completed step's committed output, by step id."""


def look_at(run: TestRun) -> Seen:
    row = run.row
    attempts = run.attempts
    done = [attempt for attempt in attempts if attempt.status == "completed"]
    twice = [step for step, n in Counter(a.id for a in done).items() if n > 1]
    assert not twice, f"steps {twice} completed more than once\n{run.describe()}"
    return Seen(run, row["function_id"], row["status"], row["output"], row["ended_at"], attempts,
                {attempt.id: attempt.output for attempt in done})


class RunSemanticsMachine(DurableFunctionMachine):
    functions = FUNCTIONS
    events = EVENTS
    advance = durations(timedelta(minutes=5), points=[timedelta(seconds=s) for s in (5, 10, 15, 60)])
    downtime = st.sampled_from([timedelta(0), timedelta(0), timedelta(seconds=30), timedelta(minutes=2)])
    crash_in: ClassVar[list[str]] = ["a", "b", "c", "heard", "f"]
    cancel_runs = False  # the built-in CancelRun picks by run id, which has random bits: see cancel_a_live_run

    def setup(self) -> None:
        global LEDGER
        LEDGER = Ledger()
        self.ended: dict[str, tuple[str, Any, Any]] = {}

    @initialize(plan=failure_plans(["a", "c", "f"], max_failures=3, crashes=False))
    def plan_the_failures(self, plan: FailurePlan) -> None:
        """How steps fail in this example, drawn once, before anything is sent."""
        plan.install(self.engine)
        event(f"fatal steps: {sorted(plan.fatal)}")

    def _listening(self) -> list[TestRun]:
        """Flow runs waiting for their reply (random replies rarely come within the minute)."""
        return [seen.run for seen in map(look_at, self.engine.runs(function_id="flow", status="waiting"))
                if any(a.id == "w" and a.status == "waiting" for a in seen.attempts) and "w" not in seen.outputs]

    @precondition(lambda self: bool(self._listening()))
    @rule(index=st.integers(0, 9))
    def reply_to_a_waiting_run(self, index: int) -> None:
        listening = self._listening()
        reply = {"name": "app/reply", "data": {"k": listening[index % len(listening)].event["data"]["k"]}}
        Send((reply,)).apply(self.engine)
        self.sent.append(reply)

    @rule(index=st.integers(0, 9))
    def cancel_a_live_run(self, index: int) -> None:
        """Cancel the ``index``-th live run in the order runs were scheduled (the log's), which is the
        same each time hypothesis replays the example; the machine's own ``CancelRun`` sorts by run id,
        whose random bits make it cancel another run on each replay (a flaky example)."""
        live = [run for run in self.engine.runs() if run.status not in ENDED]
        if live:
            self.engine.cancel(live[index % len(live)].run_id)

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def the_documented_guarantees_hold(self) -> None:
        self._check(list(map(look_at, self.engine.runs())))

    def check_at_end(self) -> None:
        seen = list(map(look_at, self.engine.runs()))
        self._check(seen)
        live = [one.run for one in seen if one.status not in ENDED]
        assert not live, f"runs still live after every timer fired: {live}\n" + "\n".join(r.describe() for r in live)
        for one in seen:
            event(f"a {one.function_id} run {one.status}")
            if one.function_id == "flow" and one.status == "completed":
                event("a flow's wait " + ("timed out" if one.output["reply"] is None else "got its reply"))
        if any(stub.crashed for stub in self.engine.stubs):
            event("a step crashed mid-body")

    def _check(self, seen: list[Seen]) -> None:
        self._bodies_ran_once_per_commit_plus_crashes(seen)
        self._functions_see_the_first_committed_result(seen)
        self._each_send_and_invoke_started_one_run(seen)
        self._ended_runs_stay_ended(seen)

    def _bodies_ran_once_per_commit_plus_crashes(self, seen: list[Seen]) -> None:
        committed = {(one.run.run_id, step_id): one.outputs[step_id]
                     for one in seen for step_id in RUN_STEPS[one.function_id] if step_id in one.outputs}
        uncommitted = 0
        for (run_id, step_id), tokens in LEDGER.calls.items():
            output = committed.get((run_id, step_id))
            if output is not None:
                assert output in tokens, f"step {step_id!r} of run {run_id} committed {output!r}, not from its body"
            extra = len(tokens) - (output is not None)
            assert extra >= 0
            assert extra == 0 or step_id in self.crash_in, (
                f"step {step_id!r} of run {run_id} ran {len(tokens)} times for {int(output is not None)} commit(s)")
            uncommitted += extra
        missing = [key for key in committed if key not in LEDGER.calls]
        assert not missing, f"steps committed without their body running: {missing}"
        # a stub that raises in place of the body (a fatal plan) crashes without the body running
        crashed = sum(stub.crashed for stub in self.engine.stubs if stub.raises is None)
        assert uncommitted == crashed, f"{uncommitted} body calls never committed, {crashed} simulated crashes"

    def _functions_see_the_first_committed_result(self, seen: list[Seen]) -> None:
        children = {one.outputs["c"] for one in seen if one.function_id == "child" and "c" in one.outputs}
        for one in seen:
            if one.status != "completed":
                continue
            out, outputs = one.output, one.outputs
            if one.function_id == "flow":
                assert (out["a"], out["b"], out["sent"]) == (outputs["a"], outputs["b"], 1), one.run.describe()
                assert out["child"] == outputs["inv"] and out["child"]["c"] in children, one.run.describe()
                assert out["reply"] == (None if outputs["w"] is None else outputs["w"]["data"]), one.run.describe()
            elif one.function_id == "child":
                assert out == {"c": outputs["c"]}, one.run.describe()
            else:
                [step_id] = RUN_STEPS[one.function_id]
                assert out == outputs[step_id], one.run.describe()

    def _each_send_and_invoke_started_one_run(self, seen: list[Seen]) -> None:
        flows = [one for one in seen if one.function_id == "flow"]
        sends = sum(1 for one in flows if "send" in one.outputs)
        invokes = sum(1 for one in flows if any(a.id == "inv" for a in one.attempts))
        started = Counter(one.function_id for one in seen)
        assert (started["listener"], started["child"]) == (sends, invokes)

    def _ended_runs_stay_ended(self, seen: list[Seen]) -> None:
        for one in seen:
            now = (one.status, one.output, one.ended_at)
            if one.run.run_id in self.ended:
                assert now == self.ended[one.run.run_id], f"{one.run} ended as {self.ended[one.run.run_id]}, now {now}"
            elif one.status in ENDED:
                self.ended[one.run.run_id] = now


RunSemanticsMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEP_COUNT,
                                                 deadline=None)
test_run_semantics = RunSemanticsMachine.TestCase
