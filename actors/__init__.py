"""actors: the imperative shell on pykka; the only package that starts threads.

``Steplog`` is the embedded engine a user creates; ``RunHandle`` waits for a run's result.
"""

from actors.errors import DatabaseInUseError, EngineStoppedError
from actors.handle import RunHandle
from actors.runtime import Steplog

__all__ = ["DatabaseInUseError", "EngineStoppedError", "RunHandle", "Steplog"]
