"""The event router: checks and records each send, then hands the runs it scheduled to the
supervisors of their functions. A send is answered only after its events are committed.

Sends that arrive while the router is busy are accepted together, in one commit (each still all
or nothing): many threads sending at once share fsyncs as step commits do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import pykka
from steplog.actors.activity import Activity
from steplog.actors.base import Actor
from steplog.actors.messages import StartRun
from steplog.engine import Engine
from steplog.engine.routing import ScheduledRun
from steplog.engine.state import RunState


@attrs.frozen
class Send:
    """Router: accept these events and answer with the engine's Accepted on ``reply``."""

    events: Any
    reply: pykka.Future[Any]


class EventRouter(Actor):
    """Accepts events and starts the runs they trigger."""

    def __init__(self, engine: Engine, supervisors: Mapping[str, pykka.ActorRef[Any]], activity: Activity) -> None:
        super().__init__()
        self._engine = engine
        self._supervisors = supervisors
        self._activity = activity
        self._pending: list[Send] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Send):
            self._pending.append(message)
            if self.actor_inbox.empty():  # sends that queued meanwhile share one commit
                self._flush()
        return None

    def on_stop(self) -> None:
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            outcomes = self._engine.accept_many([message.events for message in pending])
        except Exception as error:  # noqa: BLE001 - every caller gets the error; the router lives on
            outcomes = [error] * len(pending)
        for message, outcome in zip(pending, outcomes):
            self._answer(message, outcome)

    def _answer(self, message: Send, outcome: Any) -> None:
        if isinstance(outcome, Exception):
            message.reply.set_exception((type(outcome), outcome, outcome.__traceback__))
            return
        self._activity.begin(len(outcome.runs))
        for run in outcome.runs:
            self._supervisors[run.function_id].tell(StartRun(run.run_id, _fresh_state(run)))
        message.reply.set(outcome)


def _fresh_state(run: ScheduledRun) -> RunState:
    state = RunState(run.run_id)
    state.apply(run.entry.type, run.entry.data)
    return state
