"""Webhooks of a kanal cluster: one shared queue in Redis, one sender at a time.

Ownership rule: in cluster mode :class:`RedisWebhookQueue` is the hub's
:class:`~kanal.hub.WebhookSink` and, with the :class:`~kanal.webhooks.leader.WebhookLeader`
it owns, the only user of the ``P{wh}:*`` keys below. The cluster-wide grace period
(webhooks.md §4) is decided by the Lua scripts of :mod:`kanal.adapters.redis_webhook_scripts`;
the HTTP side (batches, signatures, retries, per-endpoint queues, webhooks.md §2, §5) stays
with the node-local :class:`~kanal.webhooks.dispatch.WebhookDispatcher`, fed through
:meth:`~kanal.webhooks.dispatch.WebhookDispatcher.submit`, which skips that dispatcher's own grace
period. The queue owns the dispatcher's lifecycle (``start`` / ``close``).

Flow. ``emit`` (synchronous, never blocks, never raises) appends to a local buffer; a flusher
task hands the buffer, in order, to the ``EMIT`` script, which holds removals
(``channel_vacated``, ``member_removed``) for the grace period, cancels a held removal together
with the matching ``channel_occupied`` / ``member_added`` whichever node emits it, and appends
everything else to one Redis stream. One node at a time, the *leader* (a lease key), moves due
holds to the stream, reads the stream through a consumer group and submits the entries to its
dispatcher; an entry is acknowledged (``XACK`` + ``XDEL``) only once every endpoint delivered it
or definitively dropped it (retry window over, queue overflow).

In-process hooks (an embedded app's, :class:`~kanal.webhooks.hooks.Hooks`) are fed the same
way through a second set of the same keys under ``P{wh}:hooks:``: an event that some process's
hooks want (every node knows which, :mod:`kanal.webhooks.cluster_hooks`) is also written there
by the same ``EMIT`` script, so it passes the same cluster-wide grace period, and a second
:class:`~kanal.webhooks.leader.WebhookLeader` reads that stream and submits to its process's
hooks instead of the dispatcher. Only processes with a hook registered compete for that lease,
so each event runs the hooks of exactly one of them; a node without hooks (``kanal serve``)
only writes. Nodes without webhook endpoints do not compete for the webhook lease
(``lead_webhooks``): their dispatcher would have nowhere to send.

Why one leader rather than every node consuming: webhooks.md §5 asks for per-channel order,
and §4's strict alternation (occupied, vacated, occupied, …) must survive retries. With several
consumers, a ``channel_vacated`` read by node A and the next ``channel_occupied`` read by node
B race each other to the endpoint. One consumer with one FIFO worker per endpoint keeps the
stream's order; after a failover the old leader's unacknowledged entries go before any new one.

Key layout (``P`` is the prefix, ``kanal:`` by default; ``{wh}`` puts every key in one Redis
Cluster slot, so each script touches one slot):

=========================  ======  ============================================================
key                        type    content
=========================  ======  ============================================================
``P{wh}:q``                stream  ``a`` app id, ``e`` event JSON, ``t`` creation time (Unix
                                   ms, the request's ``time_ms``); consumer group
                                   ``webhooks``; entries are deleted once acknowledged, and
                                   ``MAXLEN ~`` caps a backlog nobody reads
``P{wh}:hold``             hash    grace key -> ``event_json NUL app_id`` (held removals)
``P{wh}:due``              zset    grace key -> when its hold is due (Redis ``TIME``, ms)
``P{wh}:leader``           string  the leader's consumer name; PX = the lease
``P{wh}:b:<id>``           string  marker of one flushed batch (PX 10 min): a retried write
                                   whose first run was applied is not applied twice
``P{wh}:hooks:q`` ...      same    the same five keys for in-process hooks (``hooks:q``,
                                   ``hooks:hold``, ``hooks:due``, ``hooks:leader``,
                                   ``hooks:b:<id>``)
``P{wh}:hooks:wanted``     zset    ``app_id NUL name`` -> when that advertisement of some
                                   process's hooks expires (:mod:`~kanal.webhooks.hook_demand`)
=========================  ======  ============================================================

A grace key is ``app NUL channel NUL`` for occupancy and ``app NUL channel NUL u<user_id>``
for membership (:func:`kanal.protocol.webhook_grace.grace_key`).

Guarantees and limits (user-facing text: ``docs/scaling.md``): at-least-once delivery;
a duplicate happens only when a leader dies (or loses its lease) while delivering. A node that
cannot reach Redis buffers up to ``max_queue`` events, then drops the oldest, counted in
``stats.dropped_overflow`` and logged at WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aredis

from kanal.adapters import redis_webhook_scripts as lua
from kanal.adapters.redis_membership import normalise_prefix
from kanal.config import App, WebhookSettings
from kanal.protocol.webhook_grace import CLOSING, OPENING, grace_key
from kanal.protocol.webhooks import WebhookEvent
from kanal.webhooks.cluster_hooks import ClusterHooks
from kanal.webhooks.dispatch import WebhookDispatcher, wants
from kanal.webhooks.hooks import Hooks
from kanal.webhooks.leader import (
    GROUP,
    ClusterWebhookStats,
    Retry,
    WebhookKeys,
    WebhookLeader,
    settle,
)

__all__ = ["GROUP", "ClusterWebhookStats", "RedisWebhookQueue"]

log = logging.getLogger("kanal.cluster_webhooks")  # the pre-package name, kept for operators

_MARKER_TTL_MS = 600_000  # how long a flushed batch stays recognisable as applied
_CLEANUP_TIMEOUT = 1.0  # Redis work after the dispatcher closed (acks, hand-over, resign)

_Event = tuple[str, str, str, str, str]  # kind, grace key, app id, event JSON, created ms


@dataclass(frozen=True, slots=True)
class _Stream:
    """One of the two sets of keys (webhooks, hooks) and the counters of what went there."""

    keys: WebhookKeys
    stats: ClusterWebhookStats


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def _hold_key(app_id: str, event: WebhookEvent) -> str:
    key = grace_key(app_id, event)
    if key is None:
        return ""
    app, channel, user = key
    return f"{app}\0{channel}\0" + ("" if user is None else "u" + user)


class RedisWebhookQueue:
    """The cluster's webhook sink: a Redis stream with a grace period, read by one leader.

    Args:
        client: the Redis client; the caller owns and closes it (after :meth:`close`). It
            should not retry commands itself (writes are made idempotent here instead), and
            its socket timeout, if any, must exceed ``block``.
        prefix: key prefix shared by the cluster (``kanal`` or ``kanal:``).
        consumer: this node's id; a random suffix makes the consumer name unique per instance.
        settings: ``[webhooks]``: ``grace_period``, ``max_queue`` (the local buffer's bound),
            ``shutdown_timeout``, ``request_timeout`` (for the default ``claim_idle``).
        dispatcher: the node-local sender; started and closed by this queue.
        apps: app by id as configured now (a reload may change it), for entries read from
            the stream: their endpoints and the secret that signs them.
        hooks: this process's in-process hooks (an embedded app), started and closed by this
            queue; it competes to run the cluster's hooks once one is registered.
        lead_webhooks: compete to send the cluster's webhooks (nodes with an endpoint).
        wall: Unix time in seconds, the ``time_ms`` of emitted events (webhooks.md §2).
        lease: the leader lease in seconds; a dead leader is replaced once it expired.
        claim_idle: seconds an entry must have been idle before the leader takes it from
            another consumer (default ``2 × request_timeout + 5``).
        poll: the longest pause of the promoter, so removals go out at most this late.
        block: how long one stream read blocks, in seconds.
        max_stream_length: approximate cap of the stream (``XADD MAXLEN ~``).
        batch: events per script run and entries per read.
        demand_every: seconds between two refreshes of the hooks' demand.
    """

    def __init__(
        self,
        client: aredis.Redis,
        *,
        prefix: str,
        consumer: str,
        settings: WebhookSettings,
        dispatcher: WebhookDispatcher,
        apps: Callable[[str], App | None],
        hooks: Hooks | None = None,
        lead_webhooks: bool = True,
        wall: Callable[[], float] = time.time,
        lease: float = 10.0,
        claim_idle: float | None = None,
        poll: float = 0.25,
        block: float = 1.0,
        max_stream_length: int = 100_000,
        batch: int = 256,
        demand_every: float = 1.0,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.lead_webhooks = lead_webhooks
        self.stats = ClusterWebhookStats()
        self._client = client
        self._wall = wall
        self._maxlen = max_stream_length
        self._batch = batch
        self._keys = WebhookKeys(f"{normalise_prefix(prefix)}{{wh}}:")
        name = f"{consumer}.{secrets.token_hex(4)}"
        self.leader = WebhookLeader(
            client,
            self._keys,
            consumer=name,
            dispatcher=dispatcher,
            apps=apps,
            stats=self.stats,
            lease=lease,
            claim_idle=2 * settings.request_timeout + 5 if claim_idle is None else claim_idle,
            poll=poll,
            block=block,
            max_stream_length=max_stream_length,
            batch=batch,
        )
        #: The hooks stream: what the cluster's hooks want, and (with ``hooks``) its leader.
        self.cluster_hooks = ClusterHooks(
            client,
            WebhookKeys(self._keys.base + "hooks:"),
            consumer=name,
            settings=settings,
            hooks=hooks,
            apps=apps,
            lease=lease,
            claim_idle=claim_idle,
            poll=poll,
            block=block,
            max_stream_length=max_stream_length,
            batch=batch,
            demand_every=demand_every,
        )
        self.hook_stats = self.cluster_hooks.stats  #: the same counters, of the hooks stream
        self._streams = (
            _Stream(self._keys, self.stats),
            _Stream(self.cluster_hooks.keys, self.hook_stats),
        )
        self._emit_lua = client.register_script(lua.EMIT)
        self._state = _State.NEW
        self._buffer: deque[tuple[_Stream, _Event]] = deque()
        self._flushing: list[tuple[_Stream, _Event]] = []  # the batch being written, retried as is
        self._flush_wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        # Sequence numbers of the events (per stream entry) in order of emission: the buffer
        # holds [_buffer_start, _appended), the batch being written [_flushing_start, ...);
        # everything before the oldest of those is written or dropped (:meth:`wait_written`).
        self._appended = 0
        self._buffer_start = 0
        self._flushing_start = 0
        self._progress = asyncio.Event()  # set (and replaced) whenever that may have grown
        self._overflowed = 0
        self._flusher: asyncio.Task[None] | None = None
        self._flusher_stop = False  # ends the flusher even if a cancellation got lost

    @property
    def consumer(self) -> str:
        """This instance's consumer name in the group (node id plus a random suffix)."""
        return self.leader.consumer

    @property
    def is_leader(self) -> bool:
        """Whether this node currently reads the stream and sends the cluster's webhooks."""
        return self.leader.leading

    @property
    def runs_hooks(self) -> bool:
        """Whether this process currently runs the cluster's in-process hooks."""
        return self.cluster_hooks.leading

    @property
    def buffered(self) -> int:
        """Events emitted on this node and not yet written to Redis."""
        return len(self._buffer) + len(self._flushing)

    @property
    def inflight(self) -> int:
        """Stream entries this node is delivering or has yet to acknowledge."""
        return self.leader.inflight + self.cluster_hooks.inflight

    # --- the hub's side ------------------------------------------------------------------------

    def emit(self, app: App, event: WebhookEvent) -> None:
        """Take one event at the moment of its transition. Never blocks, never raises."""
        try:
            self._emit(app, event)
        except Exception:
            log.exception("webhook event %s on %s lost", event.name, event.channel)

    def _emit(self, app: App, event: WebhookEvent) -> None:
        webhooks = self._webhook_kind(app, event)
        hooks = self.cluster_hooks.kind(app.id, event.name)
        if webhooks is None and hooks is None:
            return
        kinds = ((self._streams[0], webhooks), (self._streams[1], hooks))
        if self._state is _State.CLOSED:
            for stream, kind in kinds:
                stream.stats.dropped_shutdown += kind is not None
            log.warning("webhook event %s emitted after shutdown: dropped", event.name)
            return
        body = orjson.dumps(event.to_json()).decode()
        created = str(round(self._wall() * 1000))
        hold = _hold_key(app.id, event)
        for stream, kind in kinds:
            if kind is not None:
                self._append(stream, (kind, hold, app.id, body, created))
        self._flushed.clear()
        self._flush_wake.set()

    def _webhook_kind(self, app: App, event: WebhookEvent) -> str | None:
        if not app.webhooks:
            return None
        if event.name in OPENING:
            return "o"  # wanted or not, it may cancel a held removal (§4)
        if event.name in CLOSING:
            return "c"
        return "n" if any(wants(t, event) for t in app.webhooks) else None

    def _append(self, stream: _Stream, event: _Event) -> None:
        if self.buffered >= self.settings.max_queue and self._buffer:
            dropped, _ = self._buffer.popleft()
            self._buffer_start += 1
            self._progressed()
            dropped.stats.dropped_overflow += 1
            self._overflowed += 1
            if self._overflowed == 1:
                log.warning(
                    "webhook buffer is full (%d events; is Redis reachable?): "
                    "dropping the oldest events",
                    self.settings.max_queue,
                )
        self._buffer.append((stream, event))
        self._appended += 1

    async def wait_flushed(self) -> None:
        """Return once every event emitted so far was written to Redis (or dropped)."""
        await self._flushed.wait()

    @property
    def emitted(self) -> int:
        """How many events (per stream) this node has emitted so far: a mark for
        :meth:`wait_written`."""
        return self._appended

    async def wait_written(self, mark: int) -> None:
        """Return once the first ``mark`` events emitted on this node were written to Redis
        (or dropped); unlike :meth:`wait_flushed`, later events do not hold it up. The drain
        waits so for a connection's events before closing it (kanal.drain)."""
        while (self._flushing_start if self._flushing else self._buffer_start) < mark:
            await self._progress.wait()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # --- writing to Redis ----------------------------------------------------------------------

    async def _flush(self) -> None:
        retry = Retry("writing webhook events to Redis", self.stats)
        markers: tuple[str, str] = ("", "")
        while not self._flusher_stop:
            if not self._flushing:
                if not self._buffer:
                    self._flushed.set()
                    self._flush_wake.clear()
                    await self._flush_wake.wait()
                    continue
                count = min(self._batch, len(self._buffer))
                self._flushing = [self._buffer.popleft() for _ in range(count)]
                self._flushing_start = self._buffer_start
                self._buffer_start += count
                batch_id = secrets.token_hex(8)
                markers = (self._keys.marker(batch_id), self._streams[1].keys.marker(batch_id))
            try:
                for stream, marker in zip(self._streams, markers, strict=True):
                    events = [event for to, event in self._flushing if to is stream]
                    if events:
                        await self._write(events, marker, stream)
            except Exception as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            self._flushing = []
            self._progressed()
            if self._overflowed:
                log.warning("webhook buffer dropped %d events while full", self._overflowed)
                self._overflowed = 0

    async def _write(
        self, events: Sequence[_Event], marker: str, stream: _Stream | None = None
    ) -> None:
        """One run of the ``EMIT`` script for one stream (the webhooks' by default); retried
        with the same ``marker`` after a failure, it is applied once."""
        to = stream or self._streams[0]
        grace_ms = round(self.settings.grace_period * 1000)
        args: list[str | int] = [grace_ms, self._maxlen, _MARKER_TTL_MS]
        for event in events:
            args.extend(event)
        keys = [to.keys.stream, to.keys.hold, to.keys.due, marker]
        queued, held, cancelled = await self._emit_lua(keys=keys, args=args)
        if queued >= 0:  # -1: a retry of a batch whose first run had been applied
            to.stats.queued += queued
            to.stats.held += held
            to.stats.cancelled += cancelled

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatcher and hooks, the flusher, the demand's refresh and the leader
        elections (idempotent)."""
        if self._state is not _State.NEW:
            return
        self._state = _State.RUNNING
        if self.lead_webhooks:
            await self.dispatcher.start()
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush(), name="kanal-webhooks flush"
        )
        if self.lead_webhooks:
            self.leader.start()
        await self.cluster_hooks.start()

    async def close(self) -> None:
        """Stop reading; keep flushing, delivering and running hooks for up to
        ``shutdown_timeout``; then acknowledge what finished, hand what did not over to the
        next leader, resign.

        Takes at most ``shutdown_timeout`` plus about one second of Redis work. The lease is
        kept until the end, so the next leader starts after this node's last delivery.
        """
        if self._state is _State.CLOSED:
            return
        was_new = self._state is _State.NEW
        self._state = _State.CLOSED
        targets = [self.cluster_hooks.close_hooks()]
        if self.lead_webhooks:
            targets.append(self.dispatcher.close())
        if was_new:
            await asyncio.gather(*targets)
            self._drop_unflushed()
            return
        leaders = [self.leader] if self.lead_webhooks else []
        hooks_leader = self.cluster_hooks.started_leader()
        leaders += [hooks_leader] if hooks_leader is not None else []
        for leader in leaders:
            await leader.stop_reading()
        await asyncio.gather(self._final_flush(), *targets)
        self._flusher_stop = True
        if self._flusher is not None:
            await settle([self._flusher])
        await self.cluster_hooks.close_demand()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLEANUP_TIMEOUT):
                await asyncio.gather(*(leader.close() for leader in leaders))
        self._drop_unflushed()

    async def _final_flush(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed.wait(), self.settings.shutdown_timeout)

    def _drop_unflushed(self) -> None:
        if self.buffered:
            for stream, _ in [*self._buffer, *self._flushing]:
                stream.stats.dropped_shutdown += 1
            log.error("webhooks: %d events never reached Redis before shutdown", self.buffered)
            self._buffer.clear()
            self._flushing = []
            self._buffer_start = self._appended
            self._progressed()
