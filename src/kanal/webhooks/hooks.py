"""In-process hooks: an embedded app's Python callables for the webhook events.

Ownership rule: :class:`Hooks` is the one registry of an embedded node's hooks
(``kanal_app.hooks``, docs/embedding.md) and the owner of their workers
(:class:`~kanal.webhooks.hook_worker.HookWorker`, one per registration). It decides *which*
hooks run an event; it never decides *whether* or *when* an event happens. That stays with the
webhook pipeline, which treats the hooks as one more target of an app next to its HTTP
endpoints: on one node :class:`~kanal.webhooks.dispatch.WebhookDispatcher` hands every event
past its grace period to :meth:`Hooks.submit` as it hands it to the endpoints; in a cluster
:class:`~kanal.webhooks.cluster_queue.RedisWebhookQueue` does the same through a hooks stream
read by one process that has hooks. So an event reaches the hooks exactly when, and as often
as, it would reach a webhook endpoint subscribed to its name (webhooks.md §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar, overload

from kanal.config import App, WebhookSettings
from kanal.protocol.webhooks import EVENT_TYPES, HookEvent, WebhookEvent
from kanal.webhooks.delivery import Countdown
from kanal.webhooks.hook_worker import Hook, HookFunction, HookStats, HookWorker, Job

__all__ = ["HookEvent", "HookFunction", "HookStats", "Hooks"]

log = logging.getLogger("kanal.hooks")

F = TypeVar("F", bound=HookFunction)

#: An event name, or several: one registration for several names keeps their relative order.
Names = str | Iterable[str]


class _State(enum.Enum):
    NEW = "new"  #: hooks are registered and events queued; nothing runs before start()
    RUNNING = "running"
    CLOSED = "closed"


def _label(func: object) -> str:
    name = getattr(func, "__qualname__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


def _is_async(func: object) -> bool:
    call = getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


def _names(names: Names) -> frozenset[str]:
    listed = (names,) if isinstance(names, str) else tuple(names)
    unknown = [name for name in listed if name not in EVENT_TYPES]
    if unknown or not listed:
        raise ValueError(
            f"unknown hook event {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"expected one or more of {', '.join(EVENT_TYPES)}"
        )
    return frozenset(listed)


class Hooks:
    """The hooks of one embedded node: register them with :meth:`on`.

    Each hook runs for the events of its names, one event at a time in the order they
    occurred, on its own: a sync function in a thread of its own, an async one as a task on the
    node's loop, each call limited to ``hook_timeout`` seconds. A call that raises or times out
    is logged with the hook's name and counted; neither delays message delivery or other hooks.
    Events wait in a queue per hook of at most ``hook_max_queue``; beyond, the oldest is dropped,
    counted in ``stats.dropped_overflow`` and logged.

    Args:
        settings: the ``[webhooks]`` section: ``hook_timeout``, ``hook_max_queue``,
            ``shutdown_timeout``.
    """

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.stats = HookStats()
        self._workers: list[HookWorker] = []
        self._by_name: dict[str, list[HookWorker]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._state = _State.NEW

    # --- the app's side ----------------------------------------------------------------------

    @overload
    def on(self, names: Names, func: F, *, app_id: str | None = None) -> F: ...

    @overload
    def on(
        self, names: Names, func: None = None, *, app_id: str | None = None
    ) -> Callable[[F], F]: ...

    def on(
        self, names: Names, func: F | None = None, *, app_id: str | None = None
    ) -> F | Callable[[F], F]:
        """Run ``func`` for every event named ``names`` (one name or several) of the app
        ``app_id`` (any app when ``None``); as a decorator without ``func``.

        ``func`` takes a :class:`~kanal.protocol.webhooks.HookEvent`; it may be ``async``.
        Register before the app starts, or from its event loop.

        Raises:
            ValueError: a name is not a webhook event name (webhooks.md §3).
            TypeError: ``func`` is not callable.
            RuntimeError: the node has already stopped, or it runs and this is not its loop.
        """
        wanted = _names(names)
        app = None if app_id is None else str(app_id)

        def register(function: F) -> F:
            if not callable(function):
                raise TypeError(f"a hook must be callable, not {function!r}")
            if self._state is _State.CLOSED:
                raise RuntimeError("the node has stopped: hooks can no longer be registered")
            if self._state is _State.RUNNING:
                try:  # a running node's worker starts on its loop, now
                    asyncio.get_running_loop()
                except RuntimeError:
                    raise RuntimeError(
                        "register hooks before the app starts, or from its event loop"
                    ) from None
            hook = Hook(function, wanted, app, _label(function), _is_async(function))
            self._add(hook)
            return function

        return register if func is None else register(func)

    def _add(self, hook: Hook) -> None:
        worker = HookWorker(
            hook,
            self.stats,
            timeout=self.settings.hook_timeout,
            max_queue=self.settings.hook_max_queue,
        )
        self._workers.append(worker)
        for name in hook.names:
            self._by_name.setdefault(name, []).append(worker)
        if self._state is _State.RUNNING:
            worker.start()
        for listener in self._listeners:
            listener()

    def when_registered(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each registration (the cluster queue starts competing to
        run the cluster's hooks once this process has one)."""
        self._listeners.append(listener)

    # --- which hooks want an event -----------------------------------------------------------

    @property
    def registered(self) -> bool:
        """Whether any hook is registered."""
        return bool(self._workers)

    def wants(self, app_id: str, name: str) -> bool:
        """Whether some hook runs for events named ``name`` of app ``app_id``."""
        return any(w.hook.wants(app_id, name) for w in self._by_name.get(name, ()))

    def serves(self, app_id: str) -> bool:
        """Whether some hook runs for some event of app ``app_id`` (so the app's openings and
        closings must pass a grace period even without webhook endpoints)."""
        return any(w.hook.app_id in (None, app_id) for w in self._workers)

    def demand(self) -> frozenset[tuple[str, str]]:
        """``(app_id, name)`` of every registration; ``""`` as the app id means any app."""
        return frozenset((w.hook.app_id or "", n) for w in self._workers for n in w.hook.names)

    @property
    def pending(self) -> int:
        """Events queued or being run, per hook."""
        return sum(w.pending for w in self._workers)

    # --- events past the grace period --------------------------------------------------------

    def submit(
        self,
        app: App,
        event: WebhookEvent,
        *,
        created: float,
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Queue one event for every hook that wants it. Never blocks, never raises.

        ``created`` is the Unix time the event was released, the hooks' ``time_ms``.
        ``on_done`` (the cluster queue's acknowledgement) is called once every such hook is
        done with it (at once when none wants it), never when ``close`` abandons it. Returns
        false when the hooks are closed; the event is then counted as dropped unless the
        caller keeps it (``on_done`` given).
        """
        if self._state is _State.CLOSED:
            if on_done is None:
                self.dropped_late(app.id, event.name)
            return False
        workers = [w for w in self._by_name.get(event.name, ()) if w.hook.wants(app.id, event.name)]
        if not workers:
            if on_done is not None:
                on_done()
            return True
        hook_event = HookEvent.of(app.id, event, round(created * 1000))
        done = None if on_done is None else Countdown(len(workers), on_done).tick
        for worker in workers:
            worker.push(Job(hook_event, done))
        return True

    def dropped_late(self, app_id: str, name: str) -> None:
        """Count an event that arrived after shutdown began as dropped by every hook for it."""
        wanting = sum(w.hook.wants(app_id, name) for w in self._by_name.get(name, ()))
        self.stats.dropped_shutdown += wanting

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every hook's worker (idempotent); hooks registered later start at once."""
        if self._state is not _State.NEW:
            return
        self._state = _State.RUNNING
        for worker in self._workers:
            worker.start()

    async def wait_idle(self) -> None:
        """Return once no hook has an event queued or running."""
        while any(w.pending for w in self._workers):
            await asyncio.gather(*(w.wait_idle() for w in self._workers))

    async def close(self, drain_for: float | None = None) -> None:
        """Keep running queued events for up to ``drain_for`` seconds (``shutdown_timeout`` by
        default), then give up on the rest, counted in ``stats.dropped_shutdown`` and logged."""
        if self._state is _State.CLOSED:
            return
        await self.start()  # hooks that never started still run what they were given
        self._state = _State.CLOSED
        wait = self.settings.shutdown_timeout if drain_for is None else drain_for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_idle(), wait)
        dropped = 0
        for worker in self._workers:
            dropped += await worker.stop()
        if dropped:
            self.stats.dropped_shutdown += dropped
            log.error("hooks: gave up on %d events not run after %gs at shutdown", dropped, wait)
