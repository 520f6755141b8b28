"""actors: the imperative shell on pykka; the only package that starts threads.

``Steplog`` is the embedded engine a user creates; ``RunHandle`` waits for a run's result.
"""

from steplog.actors.errors import DatabaseInUseError, EngineStoppedError
from steplog.actors.handle import RunHandle
from steplog.actors.runtime import Steplog

__all__ = ["DatabaseInUseError", "EngineStoppedError", "RunHandle", "Steplog"]
