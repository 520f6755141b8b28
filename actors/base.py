"""The actor type every steplog actor uses: pykka's threading actor with a faster inbox.

pykka's default inbox is a ``queue.Queue``, whose put and get go through Python-level condition
variables. ``queue.SimpleQueue`` is implemented in C and does the same job (unbounded FIFO, a
blocking ``get``, ``empty``) at a fraction of the cost. Every step commit passes through two
inboxes (the writer's, then a reply), so this is on the hot path. ``_create_actor_inbox`` is the
hook pykka provides for new actor types.
"""

from __future__ import annotations

import queue
from typing import Any

import pykka


class Actor(pykka.ThreadingActor):
    """A pykka threading actor with a ``queue.SimpleQueue`` inbox, on a daemon thread.

    Daemon threads: a step body that never returns must not keep the process alive after the
    engine stopped; whatever it was doing resumes from the log at the next start.
    """

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()
