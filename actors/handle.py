"""A handle on one run: its status, and a blocking wait for its result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steplog.engine import RunFailedError, queries

if TYPE_CHECKING:
    from steplog.actors.runtime import Steplog

FINISHED = ("completed", "failed", "cancelled", "skipped")


class RunHandle:
    """Refers to a run by id; reads its state from the log."""

    def __init__(self, client: Steplog, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def info(self) -> dict[str, Any]:
        """The run's summary row."""
        return queries.get_run(self.client.store, self.run_id)

    @property
    def status(self) -> str:
        return str(self.info()["status"])

    def cancel(self, reason: str = "cancelled by request") -> bool:
        """Cancel the run (see ``Steplog.cancel``); False if it had already ended."""
        return self.client.cancel(self.run_id, reason=reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run has ended; False if ``timeout`` seconds passed first."""
        return self.client._wait_until(self._ended, timeout)

    def _ended(self) -> bool:
        return self.client._outcome(self.run_id) is not None or self.status in FINISHED

    def result(self, timeout: float | None = None) -> Any:
        """The run's output once it completes; RunFailedError if it failed or was cancelled (see its
        ``status``), CorruptEntryError if the engine refused it (its log is damaged), TimeoutError if
        it is still going."""
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout} s (status {self.status})")
        outcome = self.client._outcome(self.run_id)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            if outcome.status != "completed":
                raise RunFailedError(self.run_id, outcome.error or {}, outcome.status)
            return outcome.output
        info = self.info()
        if info["status"] != "completed":
            raise RunFailedError(self.run_id, info.get("error") or {}, info["status"])
        return info["output"]
