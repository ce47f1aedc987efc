"""One in-process hook: its bounded queue, and the worker that calls it, times it and logs it.

Ownership rule: a :class:`HookWorker` owns one registered hook's queue and the single task that
calls the hook for each queued event; nothing else calls a hook. Which hooks get an event, the
registration API and the lifecycle of all workers belong to :mod:`kanal.webhooks.hooks`.

Why one worker per hook (as :class:`~kanal.webhooks.delivery.TargetSender` has one per
endpoint): a hook that raises, is slow or never returns only ever delays its own later events,
never another hook, the delivery of messages or the event loop; and each hook sees its events
one at a time in the order they occurred (``channel_occupied`` before the ``channel_vacated``
that follows it, as a webhook endpoint does, webhooks.md §5).

Why a thread of its own for a sync hook rather than :func:`asyncio.to_thread`: ``to_thread``
runs on the loop's default executor, shared with everything else in the process (the webhook
client's DNS lookups among them) and only ``min(32, cpus + 4)`` threads large. A worker that
gave up waiting for a stuck sync hook would take another of those threads for every event and
starve the rest. Here a worker waits for its hook's call to end before the next one, so a stuck
sync hook holds exactly one thread, and its events queue up (and overflow, counted) behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kanal.protocol.webhooks import HookEvent

__all__ = ["Hook", "HookFunction", "HookStats", "HookWorker", "Job"]

log = logging.getLogger("kanal.hooks")

#: A hook: a function or coroutine function taking the event; what it returns is ignored.
HookFunction = Callable[[HookEvent], Awaitable[object] | object]


@dataclass(frozen=True, slots=True)
class Hook:
    """One registration: ``func`` for the events in ``names`` of ``app_id`` (``None``: any)."""

    func: HookFunction
    names: frozenset[str]
    app_id: str | None
    label: str  #: ``module.qualname``, the name log lines give
    is_async: bool

    def wants(self, app_id: str, name: str) -> bool:
        return name in self.names and (self.app_id is None or self.app_id == app_id)


@dataclass(slots=True)
class HookStats:
    """Counters for metrics and tests, in calls (one event run by two hooks counts twice)."""

    ran: int = 0  #: calls that returned
    failed: int = 0  #: calls that raised (logged at ERROR with the traceback)
    timed_out: int = 0  #: calls still running after ``hook_timeout`` (logged at ERROR)
    dropped_overflow: int = 0  #: oldest events pushed out of a full hook queue (WARNING)
    dropped_shutdown: int = 0  #: events still queued when shutdown gave up, or arriving after


@dataclass(frozen=True, slots=True)
class Job:
    """One event for one hook; ``done`` is called once its fate is final: the call returned,
    raised or timed out, or the event was pushed out of a full queue. Never when
    :meth:`HookWorker.stop` abandons it (in a cluster the event then stays for the next
    process that runs the hooks)."""

    event: HookEvent
    done: Callable[[], None] | None = None


async def _call_async(func: HookFunction, event: HookEvent) -> object:
    result = func(event)
    return await result if inspect.isawaitable(result) else result


def _late(label: str, call: asyncio.Future[object]) -> None:
    """The outcome of a call that had already timed out: retrieved, so asyncio does not report
    it as never retrieved, and logged."""
    if call.cancelled():
        return
    exc = call.exception()
    if exc is not None:
        log.warning("hook %s raised after its timeout: %r", label, exc)


class HookWorker:
    """The queue and worker of one hook.

    Args:
        hook: the registration.
        stats: shared counters, updated in place.
        timeout: seconds a call may run (``[webhooks] hook_timeout``).
        max_queue: events waiting at most (``[webhooks] hook_max_queue``); beyond, the oldest
            is dropped, counted and logged, as a webhook endpoint's queue does.
    """

    def __init__(self, hook: Hook, stats: HookStats, *, timeout: float, max_queue: int) -> None:
        self.hook = hook
        self._stats = stats
        self._timeout = timeout
        self._max_queue = max_queue
        self._queue: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = False
        self._call: asyncio.Future[object] | None = None  # the call in progress
        self._lingering: asyncio.Future[object] | None = None  # a timed-out call still running
        self._executor: ThreadPoolExecutor | None = None
        self._overflowed = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Events queued or being run."""
        return len(self._queue) + self._busy

    # --- producer side (synchronous, never blocks) -------------------------------------------

    def push(self, job: Job) -> None:
        """Queue one event; a full queue drops its *oldest* event, counted and logged."""
        if len(self._queue) >= self._max_queue:
            _finish(self._queue.popleft())
            self._stats.dropped_overflow += 1
            self._overflowed += 1
            if self._overflowed == 1:
                log.warning(
                    "hook %s is behind (%d events queued): dropping the oldest events",
                    self.hook.label,
                    self._max_queue,
                )
        else:
            self._report_overflow()
        self._queue.append(job)
        self._idle.clear()
        self._wakeup.set()

    def _report_overflow(self) -> None:
        if self._overflowed:
            log.warning("hook %s dropped %d events while behind", self.hook.label, self._overflowed)
            self._overflowed = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (idempotent); must be called on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kanal-hook {self.hook.label}"
            )

    async def wait_idle(self) -> None:
        """Return once nothing is queued or being run."""
        await self._idle.wait()

    async def stop(self) -> int:
        """Cancel the worker (and an async call in progress; a thread cannot be stopped and
        runs on by itself); return how many events it leaves unrun."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for call in (self._call, self._lingering):
            if call is not None and self.hook.is_async:
                call.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._report_overflow()
        left = self.pending
        self._queue.clear()
        self._busy = False
        return left

    # --- the worker --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._lingering is not None:
                # One call at a time, in order: the next starts once the late one has ended.
                await asyncio.wait({self._lingering})
                self._lingering = None
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job = self._queue.popleft()
            self._busy = True
            try:
                await self._run_one(job.event)
            except Exception:  # the worker must outlive any bug around one call
                log.exception("hook worker for %s failed", self.hook.label)
            # Not in a ``finally``: when cancelled, stop() counts the event as unrun.
            self._busy = False
            _finish(job)

    def _start_call(self, event: HookEvent) -> asyncio.Future[object]:
        hook = self.hook
        if hook.is_async:
            return asyncio.get_running_loop().create_task(
                _call_async(hook.func, event), name=f"kanal-hook {hook.label}"
            )
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kanal-hook")
        # As asyncio.to_thread does: the hook sees the worker's context variables.
        context = contextvars.copy_context()
        return asyncio.wrap_future(self._executor.submit(context.run, hook.func, event))

    async def _run_one(self, event: HookEvent) -> None:
        label = self.hook.label
        call = self._call = self._start_call(event)
        done, _ = await asyncio.wait({call}, timeout=self._timeout)
        self._call = None
        if not done:
            self._stats.timed_out += 1
            log.error(
                "hook %s did not return within %gs on %s %s; its next event waits for it",
                label,
                self._timeout,
                event.name,
                event.channel,
            )
            if self.hook.is_async:
                call.cancel()  # a coroutine stops at its next await; a thread runs on
            call.add_done_callback(lambda late: _late(label, late))
            self._lingering = call
            return
        exc = None if call.cancelled() else call.exception()
        if call.cancelled() or exc is not None:
            self._stats.failed += 1
            log.error("hook %s failed on %s %s", label, event.name, event.channel, exc_info=exc)
            return
        result = call.result()
        if inspect.iscoroutine(result):  # a sync function that made a coroutine
            result.close()
            self._stats.failed += 1
            log.error("hook %s returned a coroutine: register the async function itself", label)
            return
        self._stats.ran += 1


def _finish(job: Job) -> None:
    """Run the ``done`` callback of a job whose fate is final; a failing one is logged."""
    if job.done is not None:
        try:
            job.done()
        except Exception:
            log.exception("hook completion callback failed")
