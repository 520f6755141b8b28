"""The store writer: the one actor that writes, committing many appends per transaction.

Group commit without waiting: the first ``Commit`` to arrive sends the writer a ``Flush``;
every ``Commit`` that lands in the inbox before that ``Flush`` is processed joins the same
transaction. Under load a batch holds whatever queued during the previous fsync, so the cost of
one fsync is shared; alone, a commit waits for nothing.

A failed commit is not retried: the writer answers every waiting caller with the error and
calls ``on_storage_failure`` so that the runtime stops (after a failed fsync the file's state is
unknown, and retrying in place can lose or duplicate writes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pykka

from eventstore import EventStore, StorageError
from engine.clock import Clock
from actors.messages import Commit, Flush


class StoreWriter(pykka.ThreadingActor):
    """Owns all writes to the event store."""

    use_daemon_thread = True

    def __init__(self, store: EventStore, clock: Clock, on_storage_failure: Callable[[StorageError], None]) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._on_storage_failure = on_storage_failure
        self._pending: list[Commit] = []
        self._flush_sent = False
        self.batches = 0
        self.appends = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Commit):
            self._pending.append(message)
            if not self._flush_sent:
                self._flush_sent = True
                self.actor_ref.tell(Flush())
        elif isinstance(message, Flush):
            self._flush()
        return None

    def _flush(self) -> None:
        pending, self._pending, self._flush_sent = self._pending, [], False
        appends = [append for request in pending for append in request.appends]
        try:
            results = self._store.commit(appends, now=self._clock.now())
        except StorageError as error:
            self._fail(pending, error)
            return
        except Exception as error:  # noqa: BLE001 - a bug in a projector must not leave callers hanging
            self._fail(pending, error)
            return
        self.batches += 1
        self.appends += len(appends)
        offset = 0
        for request in pending:
            request.reply.set(results[offset : offset + len(request.appends)])
            offset += len(request.appends)

    def _fail(self, pending: list[Commit], error: Exception) -> None:
        for request in pending:
            try:
                raise error
            except Exception:
                request.reply.set_exception(sys.exc_info())
        if isinstance(error, StorageError):
            self._on_storage_failure(error)


def commit_through(writer: pykka.ActorRef[StoreWriter], timeout: float | None = None) -> Callable[..., Any]:
    """A committer for the engine that sends appends to the writer and waits for the commit."""

    def commit(appends: Any) -> Any:
        reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        writer.tell(Commit(list(appends), reply))
        return reply.get(timeout=timeout)

    return commit
