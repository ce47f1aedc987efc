"""Run a coroutine at once, in the caller's callback; make a task only if it has to wait.

Why: an HTTP API request whose answer needs no I/O (a trigger in memory mode, a health check)
would otherwise cost a task, a trip through the event loop's ready queue and one more loop
iteration before its response is written. Python 3.12's ``asyncio.eager_task_factory`` does
the same for every task; kanal supports 3.11, and wants it only on this path.

The coroutine runs exactly as in a task: when it first suspends on a future, :func:`start`
hands it to a task (:func:`_finish`) that waits for that future and resumes it, so every
``await`` after that behaves as usual, cancellation included.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any

__all__ = ["start"]


def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it finishes (None) or suspends (the task that finishes it).

    An exception it raises before suspending propagates to the caller, as it would from
    the first step of a task only later; callers pass coroutines that handle their own.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.get_running_loop().create_task(_finish(coro, waiting))

    def cancelled_early(_: asyncio.Task[None]) -> None:
        # Cancelled before its first step, _finish never ran: end ``coro`` here (its
        # finally blocks run) and cancel what it waited on, as a cancelled task would.
        if inspect.getcoroutinestate(coro) != inspect.CORO_CLOSED:
            if waiting is not None:
                waiting.cancel()
            coro.close()

    task.add_done_callback(cancelled_early)
    return task


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Resume ``coro`` each time what it waits on is done, as ``asyncio.Task`` does."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if waiting is None:  # a bare ``yield`` (asyncio.sleep(0)): one loop iteration
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # the flag a task clears, too
                await _done(loop, waiting)
        except asyncio.CancelledError as cancelled:
            if waiting is not None:
                waiting.cancel()  # what Task.cancel() does to the future it waits on
            try:
                waiting = coro.throw(cancelled)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)  # it reads the future's result (or exception) itself
        except StopIteration:
            return


async def _done(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done without taking its result or exception."""
    if future.done():
        return
    waiter = loop.create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    try:
        await waiter
    finally:
        future.remove_done_callback(wake)
