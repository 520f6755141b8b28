"""The store writer: the one actor that writes, committing many appends per transaction.

Group commit without waiting: a ``Commit`` is gathered, and the batch is written as soon as the
inbox is empty. Under load a batch holds whatever queued during the previous fsync, so the cost
of one fsync is shared; alone, a commit waits for nothing.

A commit that could not begin because another connection held the lock is tried again (nothing
was written). A group that fails for a reason of its own (an append the store cannot encode, a
projector's bug) rolls back whole and is committed again request by request, so that only the
request at fault fails, not the others that happened to share its transaction. A failed commit is not retried: the writer calls ``on_storage_failure`` so that the
runtime stops, then answers every waiting caller with the error, and refuses every later commit
with it (after a failed fsync the file's state is unknown, and retrying in place can lose or
duplicate writes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka
from steplog.actors.base import Actor
from steplog.actors.messages import Commit, Reply
from steplog.engine.clock import Clock
from steplog.eventstore import EventStore, StorageError, StoreBusyError

log = logging.getLogger("steplog.writer")
BUSY_ATTEMPTS = 12
"""Each attempt waits out SQLite's busy timeout (5 s): about a minute in all before the engine stops."""


class StoreWriter(Actor):
    """Owns all writes to the event store."""

    def __init__(self, store: EventStore, clock: Clock, on_storage_failure: Callable[[StorageError], None]) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._on_storage_failure = on_storage_failure
        self._pending: list[Commit] = []
        self._failure: StorageError | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Commit):
            self._pending.append(message)
            if self.actor_inbox.empty():
                self._flush()
        return None

    def on_stop(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._failure is not None:  # fail-stop: nothing is written after a failed commit
            self._fail(pending, self._failure)
            return
        appends = [append for request in pending for append in request.appends]
        try:
            results = self._commit_waiting_out_locks(appends)
        except StorageError as error:
            self._fail(pending, error)
            return
        except Exception as error:  # noqa: BLE001 - a bug in a projector must not leave callers hanging
            if len(pending) == 1:
                self._fail(pending, error)
            else:
                self._commit_each(pending)
            return
        offset = 0
        for request in pending:
            request.reply.set(results[offset : offset + len(request.appends)])
            offset += len(request.appends)

    def _commit_each(self, pending: list[Commit]) -> None:
        """One request of the group could not be written (nothing was: the transaction rolled back).
        Commit the requests one by one, so that only the one at fault hears of it."""
        for request in pending:
            self._pending = [request]
            self._flush()

    def _commit_waiting_out_locks(self, appends: list[Any]) -> list[Any]:
        # Another process (a backup, a sqlite3 shell, a rebuild) may hold the write lock for a
        # while. Nothing is written when BEGIN fails, so waiting and trying again is safe.
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            try:
                return self._store.commit(appends, now=self._clock.now())
            except StoreBusyError as error:
                if attempt == BUSY_ATTEMPTS:
                    raise StorageError(f"gave up after {attempt} attempts: {error}") from error
                log.warning("store busy (attempt %d of %d): %s", attempt, BUSY_ATTEMPTS, error)
        raise AssertionError("unreachable")

    def _fail(self, pending: list[Commit], error: Exception) -> None:
        if isinstance(error, StorageError) and self._failure is None:
            # The engine stops before anyone hears of the failure: a caller that sees the error
            # and tries again must find the engine stopped, not a store that may still write.
            self._failure = error
            self._on_storage_failure(error)
        for request in pending:
            request.reply.fail(error)


def commit_through(writer: pykka.ActorRef[StoreWriter], timeout: float | None = None) -> Callable[..., Any]:
    """A committer for the engine that sends appends to the writer and waits for the commit."""

    def commit(appends: Any) -> Any:
        reply = Reply()
        writer.tell(Commit(list(appends), reply))
        return reply.get(timeout=timeout)

    return commit
