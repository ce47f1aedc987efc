"""Webhook dispatch: grace period, routing and the lifecycle of every endpoint's sender.

Ownership rule: :class:`WebhookDispatcher` is the hub's :class:`~kanal.hub.WebhookSink` and the
only owner of webhook timing and routing. It decides *which* endpoints get an event
(:func:`wants`, webhooks.md §1) and *when* (the grace period, §4, whose rules are the pure
:mod:`kanal.protocol.webhook_grace`); each endpoint's queue, batches, HTTP and retries belong to
its :class:`~kanal.webhooks.delivery.TargetSender` (§2, §5).

Flow: ``emit`` (synchronous, never blocks, never raises) -> grace period (removals held, undone
pairs cancelled) -> routing -> the per-endpoint queue -> that endpoint's worker task. In a
cluster, :mod:`kanal.webhooks.cluster_queue` applies the grace period in Redis and feeds the
leader's dispatcher through ``submit``, which skips the grace period and reports completion.

An embedded node's in-process hooks (:class:`~kanal.webhooks.hooks.Hooks`) are one more target
of every app here, routed to next to its endpoints, so they see the same events after the same
grace period; an app with hooks but no endpoint still passes its events through the grace
period. (In a cluster the hooks are fed by the queue's hooks stream instead, not by ``submit``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from kanal.config import App, WebhookSettings, WebhookTarget
from kanal.console import Recorder
from kanal.protocol.webhook_grace import CLOSING, GracePeriod
from kanal.protocol.webhooks import WebhookEvent
from kanal.webhooks.delivery import (
    Backoff,
    Countdown,
    Entry,
    TargetSender,
    WebhookClient,
    WebhookStats,
)
from kanal.webhooks.hooks import Hooks

__all__ = [
    "State",
    "Submitter",
    "WebhookClient",
    "WebhookDispatcher",
    "WebhookStats",
    "default_client",
    "wants",
]

log = logging.getLogger("kanal.webhooks")  # the pre-package name, kept for operators

_Item = tuple[App, WebhookEvent]


class State(enum.Enum):
    """The dispatcher's lifecycle; it only moves forward."""

    NEW = "new"  #: events are accepted and kept; nothing is sent before start()
    RUNNING = "running"  #: workers and the grace timer run
    CLOSED = "closed"  #: close() began: new events are counted as dropped_shutdown


class Submitter(Protocol):
    """Takes events that passed a grace period elsewhere (:meth:`WebhookDispatcher.submit`
    states the contract): a dispatcher, or an embedded node's
    :class:`~kanal.webhooks.hooks.Hooks`. What the cluster queue's leaders hand entries to."""

    def submit(
        self,
        app: App,
        event: WebhookEvent,
        *,
        created: float,
        on_done: Callable[[], None] | None = None,
    ) -> bool: ...


def wants(target: WebhookTarget, event: WebhookEvent) -> bool:
    """webhooks.md §1: the endpoint lists the event's name and its channel filters match."""
    return (
        event.name in target.event_types
        and event.channel.startswith(target.filter_channel_prefix)
        and event.channel.endswith(target.filter_channel_suffix)
    )


def default_client() -> WebhookClient:
    """The aiohttp client shared by all endpoints (made on the running loop, by ``start``)."""
    from kanal.transport.webhook_client import AiohttpWebhookClient

    return AiohttpWebhookClient()


class WebhookDispatcher:
    """Delivers the hub's webhook events (webhooks.md).

    Args:
        settings: the ``[webhooks]`` section.
        wall: Unix time in seconds, for ``time_ms``.
        monotonic: the clock of every delay and deadline.
        client_factory: makes the HTTP client, called once by :meth:`start` on the loop.
        backoff_base, backoff_cap: first and largest retry delay in seconds (§5: 1 s, 60 s).
        rng: source of retry jitter (seed it for reproducible tests).
        hooks: an embedded node's in-process hooks, a target of every app; this dispatcher
            starts and closes them.
        console: the live console's recorder: events the grace period holds or cancels, and
            (through each endpoint's sender) every delivery attempt.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client_factory: Callable[[], WebhookClient] = default_client,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        rng: random.Random | None = None,
        hooks: Hooks | None = None,
        console: Recorder | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = hooks
        self.console = console
        self.stats = WebhookStats()
        self._wall = wall
        self._now = monotonic
        self._client_factory = client_factory
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._grace: GracePeriod[_Item] = GracePeriod(settings.grace_period)
        self._senders: dict[tuple[str, WebhookTarget], TargetSender] = {}
        self._client: WebhookClient | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._state = State.NEW

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, state: State) -> None:
        log.debug("webhook dispatcher: %s -> %s", self._state.value, state.value)
        self._state = state

    @property
    def pending(self) -> int:
        """Events held by the grace period, queued or in flight."""
        hooks = 0 if self.hooks is None else self.hooks.pending
        return len(self._grace) + sum(s.pending for s in self._senders.values()) + hooks

    # --- the hub's side ----------------------------------------------------------------------

    def emit(self, app: App, event: WebhookEvent) -> None:
        """Take one event at the moment of its transition. Never blocks, never raises."""
        try:
            self._emit(app, event)
        except Exception:
            log.exception("webhook event %s on %s lost", event.name, event.channel)

    def _emit(self, app: App, event: WebhookEvent) -> None:
        hooks = self.hooks
        if not app.webhooks and (hooks is None or not hooks.serves(app.id)):
            return
        if self._state is State.CLOSED:
            self.stats.dropped_shutdown += sum(wants(t, event) for t in app.webhooks)
            if hooks is not None:
                hooks.dropped_late(app.id, event.name)
            log.warning("webhook event %s emitted after shutdown: dropped", event.name)
            return
        passed = self._grace.offer(app.id, event, (app, event), self._now())
        for item in passed:
            self._route(item)
        if self.console is not None and not any(item[1] is event for item in passed):
            self._report_grace(app, event)
        self._arm_timer()

    def _report_grace(self, app: App, event: WebhookEvent) -> None:
        """The grace period kept ``event``: a removal is held, or an opening cancelled a held
        removal and is itself dropped (webhooks.md §4); the inspector shows both."""
        assert self.console is not None
        hooks = self.hooks
        wanted = any(wants(target, event) for target in app.webhooks)
        if not wanted and not (hooks is not None and hooks.wants(app.id, event.name)):
            return  # held or cancelled, but no endpoint or hook would have been sent it
        fields = {"events": [event.name], "channel": event.channel, "user_id": event.user_id}
        if event.name in CLOSING:
            release = self._wall() + self.settings.grace_period
            self.console.webhook(app.id, "held", release_at=round(release * 1000), **fields)
        else:
            self.console.webhook(app.id, "cancelled", **fields)

    def _route(self, item: _Item) -> None:
        """An event leaves the grace period (at once for those it does not hold): stamped now,
        the time its requests carry as ``time_ms`` however long it then waits behind a failing
        delivery (webhooks.md §2). As in the cluster queue: the emit time, or for a held
        removal the end of its grace period."""
        app, event = item
        released = self._wall()
        entry = Entry(app, event, self._now(), round(released * 1000))
        for target in app.webhooks:
            if wants(target, event):
                self._sender(app, target).push(entry)
        if self.hooks is not None:
            self.hooks.submit(app, event, created=released)

    # --- events that already passed a grace period elsewhere (the cluster queue) ---------------

    def submit(
        self,
        app: App,
        event: WebhookEvent,
        *,
        created: float,
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Queue an event past this dispatcher's grace period, for
        :mod:`kanal.webhooks.cluster_queue`, which applies the grace period in Redis.

        ``created`` is the Unix time the event was created: its requests carry it as
        ``time_ms`` and its retry window runs from it (webhooks.md §2, §5). ``on_done`` is
        called once every matching endpoint has delivered or dropped the event (at once when
        none matches), never when ``close`` abandons it. Returns false, without calling
        ``on_done``, when the dispatcher is closed. Never blocks.
        """
        if self._state is State.CLOSED:
            return False
        targets = [t for t in app.webhooks if wants(t, event)]
        hooks = self.hooks if self.hooks and self.hooks.wants(app.id, event.name) else None
        if not targets and hooks is None:
            if on_done is not None:
                on_done()
            return True
        count = len(targets) + (hooks is not None)
        done = None if on_done is None else Countdown(count, on_done).tick
        if hooks is not None:
            hooks.submit(app, event, created=created, on_done=done)
        age = max(0.0, self._wall() - created)
        entry = Entry(app, event, self._now() - age, round(created * 1000), done)
        for target in targets:
            self._sender(app, target).push(entry)
        return True

    def _sender(self, app: App, target: WebhookTarget) -> TargetSender:
        sender = self._senders.get((app.id, target))
        if sender is None:
            sender = TargetSender(
                target,
                self.settings,
                self.stats,
                backoff=self._backoff,
                wall=self._wall,
                monotonic=self._now,
                rng=self._rng,
                console=self.console,
            )
            self._senders[(app.id, target)] = sender
            if self._client is not None:
                sender.start(self._client)
        return sender

    # --- the grace period's timer (§4) -------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self._grace.next_deadline()
        if deadline is None or self._client is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # fires first; _on_timer re-arms
            self._timer.cancel()
        delay = max(0.0, deadline - self._now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        try:
            for item in self._grace.release_due(self._now()):
                self._route(item)
            self._arm_timer()
        except Exception:
            log.exception("webhook grace-period timer failed")

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and start the workers of events emitted so far (idempotent)."""
        if self._state is not State.NEW:
            return
        self._set_state(State.RUNNING)
        self._client = self._client_factory()
        for sender in self._senders.values():
            sender.start(self._client)
        if self.hooks is not None:
            await self.hooks.start()
        self._arm_timer()

    async def wait_idle(self) -> None:
        """Return once every queued webhook was delivered or dropped, and every hook ran or
        dropped its events. Events still inside the grace period are not waited for."""
        hooks = self.hooks
        while not all(s.pending == 0 for s in self._senders.values()) or (hooks and hooks.pending):
            await asyncio.gather(*(s.wait_idle() for s in self._senders.values()))
            if hooks is not None:
                await hooks.wait_idle()

    async def close(self) -> None:
        """Release held removals now, keep delivering for up to ``shutdown_timeout`` seconds,
        then give up on the rest, counted in ``stats.dropped_shutdown`` and logged."""
        if self._state is State.CLOSED:
            return
        await self.start()  # a dispatcher that never started still delivers what it holds
        self._set_state(State.CLOSED)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for item in self._grace.release_all():
            self._route(item)
        for sender in self._senders.values():
            sender.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_idle(), self.settings.shutdown_timeout)
        await self._stop_senders()
        if self.hooks is not None:
            await self.hooks.close(drain_for=0)  # the wait above was theirs too

    async def _stop_senders(self) -> None:
        dropped = 0
        for sender in self._senders.values():
            dropped += await sender.stop()
        if dropped:
            self.stats.dropped_shutdown += dropped
            log.error(
                "webhooks: gave up on %d undelivered events after %.1fs shutdown timeout",
                dropped,
                self.settings.shutdown_timeout,
            )
        if self._client is not None:
            await self._client.close()
