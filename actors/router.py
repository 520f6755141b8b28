"""The event router: the actor that hosts the engine's coordinator. Every send, wait
registration, wait expiry, cancel request and announced run end passes through it, one batch at
a time, so that a wait sees exactly the events committed after it (see engine.coordination).

Requests that arrive while the router is busy are planned together and recorded in one commit
(each still all or nothing): many threads sending at once share fsyncs as step commits do. Each
request is answered only after it is committed; then the runs it scheduled or woke are handed to
the supervisors of their functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import Arm, Disarm, Reply, SetFlowTarget, StartRun
from steplog.actors.timer import FLOW_TIMER
from steplog.engine import Engine
from steplog.engine.coordination import Accepted, Answer, FireDue, Request, accepted_of


@attrs.frozen
class Coordinate:
    """Router: plan and commit this request, then answer with the coordinator's answer on ``reply``."""

    request: Request
    reply: Reply


class EventRouter(Actor):
    """Runs the coordinator and starts the runs its answers schedule or wake."""

    def __init__(
        self, engine: Engine, supervisors: Mapping[str, pykka.ActorRef[Any]], activity: Activity,
        timer: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._supervisors = supervisors
        self._activity = activity
        self._timer = timer
        self._flow_due: datetime | None = None
        self._pending: list[Coordinate] = []

    def on_start(self) -> None:
        if self._timer is not None:
            ref = self.actor_ref
            self._timer.tell(SetFlowTarget(lambda: ref.tell(Coordinate(FireDue(), Reply()))))
            self._arm_flow()

    def _arm_flow(self) -> None:
        """Keep the timer armed for the flow gate's next debounce or batch."""
        due = self._engine.coordinator.next_due()
        if self._timer is None or due == self._flow_due:
            return
        self._flow_due = due
        self._timer.tell(Arm(due, FLOW_TIMER, FLOW_TIMER) if due is not None else Disarm(FLOW_TIMER))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Coordinate):
            self._pending.append(message)
            if self.actor_inbox.empty():  # requests that queued meanwhile share one commit
                self._flush()
        return None

    def on_stop(self) -> None:
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            answers = self._engine.coordinator.handle(
                [message.request for message in pending], self._engine.clock.now()
            )
        except Exception as error:  # noqa: BLE001 - every caller gets the error; the router lives on
            answers = [error] * len(pending)
        fired = [message for message in pending if isinstance(message.request, FireDue)]
        if fired:
            self._flow_due = None  # the timer forgot it when it fired
        self._arm_flow()  # before answering: a caller's next Tick must find the timer armed
        for accepted in self._engine.coordinator.take_fired():
            self._start(accepted)
        for message, answer in zip(pending, answers):
            self._answer(message, answer)
        self._activity.end(len(fired))

    def _answer(self, message: Coordinate, answer: Answer) -> None:
        accepted = accepted_of(answer)
        if accepted is not None:
            self._start(accepted)
        message.reply.set(answer)  # an Exception too: the asker decides whether to raise it

    def _start(self, accepted: Accepted) -> None:
        self._activity.begin(len(accepted.runs) + len(accepted.wakes))
        for run in accepted.runs:
            self._supervisor(run.function_id).tell(StartRun(run.run_id, run.fresh_state()))
        for run_id, function_id in accepted.wakes:
            self._supervisor(function_id).tell(StartRun(run_id))

    def _supervisor(self, function_id: str) -> Any:
        supervisor = self._supervisors.get(function_id)
        return supervisor if supervisor is not None else _Unsupervised(self._activity)


class _Unsupervised:
    """A run of a function this process does not define: it waits in the log for one that does."""

    def __init__(self, activity: Activity) -> None:
        self._activity = activity

    def tell(self, _message: Any) -> None:
        self._activity.end()

