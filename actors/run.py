"""The run actor: one per run while it executes; it rebuilds the run from the log, runs one
invocation, reports the outcome to its supervisor and stops. A suspended run holds no actor."""

from __future__ import annotations

from typing import Any

import pykka

from engine import Engine
from engine.state import RunState
from actors.messages import Execute, RunCrashed, RunEnded


class RunActor(pykka.ThreadingActor):
    """Executes one invocation of one run."""

    use_daemon_thread = True

    def __init__(self, engine: Engine, run_id: str, state: RunState | None, supervisor: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self._engine = engine
        self._run_id = run_id
        self._state = state
        self._supervisor = supervisor

    def on_start(self) -> None:
        self.actor_ref.tell(Execute())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Execute):
            outcome = self._engine.invoke(self._run_id, self._state)
            self._supervisor.tell(RunEnded(self._run_id, outcome))
            self.stop()
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._supervisor.tell(RunCrashed(self._run_id, exception_value))
