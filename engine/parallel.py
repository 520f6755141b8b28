"""Parallel steps: ``ctx.group.parallel`` for ``def`` and ``async def`` functions.

The one place the engine starts threads: a ``def`` function's parallel branches are user code
that must run concurrently, so ``Group.parallel`` runs each on a thread it starts and joins
within the call (nothing outlives it). Branches start in order, each after the previous one has
taken its first step key, which keeps step keys the same on every replay.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

from steplog.engine.invocation import BRANCH, Branch, Invocation, _Suspend, is_process_exit


class Group:
    """``ctx.group`` for ``def`` functions: ``parallel`` runs branches on threads."""

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation

    def parallel(self, callables: Sequence[Callable[[], Any]]) -> tuple[Any, ...]:
        """Run each callable as a branch, concurrently; return their results in order."""
        keyed = [threading.Event() for _ in callables]
        branches = [Branch(on_keyed=event.set) for event in keyed]
        results: list[Any] = [None] * len(branches)
        errors: list[BaseException | None] = [None] * len(branches)
        threads = []
        for index, (call, branch) in enumerate(zip(callables, branches)):
            def body(index: int = index, call: Callable[[], Any] = call, branch: Branch = branch) -> None:
                BRANCH.set(branch)
                try:
                    results[index] = call()
                except BaseException as error:  # noqa: BLE001 - decided below, in branch order
                    errors[index] = error
                finally:
                    keyed[index].set()

            thread = threading.Thread(target=contextvars.copy_context().run, args=(body,), name="steplog-branch")
            thread.start()
            keyed[index].wait()  # its first step key is taken: the next branch may start
            threads.append(thread)
        for thread in threads:
            thread.join()
        return _gathered(self._invocation, branches, results, errors)


class AsyncGroup:
    """``ctx.group`` for ``async def`` functions: ``parallel`` runs branches as tasks."""

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation

    async def parallel(self, callables: Sequence[Callable[[], Any]]) -> tuple[Any, ...]:
        """Run each callable as a branch, concurrently; return their results in order."""
        branches = [Branch() for _ in callables]
        results: list[Any] = [None] * len(branches)
        errors: list[BaseException | None] = [None] * len(branches)

        async def body(index: int, call: Callable[[], Any], branch: Branch) -> None:
            BRANCH.set(branch)
            task = asyncio.current_task()
            if task is not None:
                self._invocation.step_tasks[task] = branch
            try:
                value = call()
                results[index] = await value if inspect.isawaitable(value) else value
            except BaseException as error:  # noqa: BLE001 - decided below, in branch order
                errors[index] = error

        await asyncio.gather(*(body(i, call, branch) for i, (call, branch) in enumerate(zip(callables, branches))))
        return _gathered(self._invocation, branches, results, errors)


def _gathered(
    invocation: Invocation, branches: list[Branch], results: list[Any], errors: list[BaseException | None]
) -> tuple[Any, ...]:
    """The branches' results; or the run's interrupt, the branches' suspension, or the first branch's error."""
    for error in errors:
        if is_process_exit(error):
            raise error  # type: ignore[misc]
    invocation.check_interrupt()
    wakes = [branch.suspended.wake_at for branch in branches if branch.suspended is not None]
    if wakes:
        raise invocation._interrupted(_Suspend(min(wakes)))
    for error in errors:
        if error is not None:
            raise error
    return tuple(results)
