"""The event router: checks and records each send, then hands the runs it scheduled to the
supervisors of their functions. A send is answered only after its events are committed."""

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

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Send):
            self._send(message)
        return None

    def _send(self, message: Send) -> None:
        try:
            accepted = self._engine.accept(message.events)
        except Exception as error:  # noqa: BLE001 - the caller gets the error; the router lives on
            message.reply.set_exception((type(error), error, error.__traceback__))
            return
        self._activity.begin(len(accepted.runs))
        for run in accepted.runs:
            self._supervisors[run.function_id].tell(StartRun(run.run_id, _fresh_state(run)))
        message.reply.set(accepted)


def _fresh_state(run: ScheduledRun) -> RunState:
    state = RunState(run.run_id)
    state.apply(run.entry.type, run.entry.data)
    return state
