"""``RedisBroker``: fan-out of :class:`~kanal.adapters.base.Envelope` values over Redis pub/sub.

Ownership rule: this class owns the node's two Redis connections for fan-out, one that
publishes (through :class:`~kanal.adapters.redis_outbox.Outbox`) and one that is subscribed
(to the channels :class:`~kanal.adapters.redis_interest.Interest` wants, in ``channel``
mode), and nothing else. Every node that listens to an envelope's route receives it through
Redis, the publishing one included, so all of them see one order per channel.
:class:`PublishOnlyBroker` owns only the first kind: it is the broker of a process that holds
no connections (:mod:`kanal.publisher`), which sends envelopes to the nodes and never
receives any. The wire format and the channel names are :mod:`kanal.adapters.redis_wire`'s;
the clients (one Redis, Sentinel, Redis Cluster with sharded pub/sub) are
:mod:`kanal.adapters.redis_connect`'s.

Routes (``mode``): ``node`` sends every envelope to every node on one channel; ``channel``
sends a channel's envelopes only to the nodes with a local subscriber of it, and a user's
only to the nodes where it is signed in or watched (docs/scaling.md, "Interest-based
fan-out").

Ordering: :meth:`RedisBroker.publish` queues the message for the outbox's one writer task,
so envelopes leave this node in the order ``publish`` was called (several to one channel in
one message), and returns once Redis has accepted it. Redis delivers one channel's messages
to each subscriber in the order it received them.

Faults: pub/sub is at-most-once. While the subscription is down, envelopes published by
anyone are lost for this node; :attr:`RedisBroker.healthy` and
:attr:`RedisBroker.last_error` report it (for ``/ready``) and the reader reconnects with
exponential backoff, logging once per outage. ``publish`` raises the Redis error; the
envelope may or may not have gone out then (the connection can drop after sending).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from kanal.adapters import redis_connect
from kanal.adapters.base import READY, Envelope
from kanal.adapters.redis_interest import Interest
from kanal.adapters.redis_outbox import Outbox
from kanal.adapters.redis_wire import (
    COMMANDS,
    Routes,
    decode_envelope,
    decode_message,
    encode_envelope,
    fanout_channel,
)

__all__ = [
    "SOCKET_TIMEOUT",
    "PublishOnlyBroker",
    "RedisBroker",
    "decode_envelope",
    "encode_envelope",
    "fanout_channel",
]

log = logging.getLogger("kanal.redis")

SOCKET_TIMEOUT = redis_connect.SOCKET_TIMEOUT
#: Longest wait for Redis to confirm a SUBSCRIBE (it takes well under a millisecond when
#: Redis answers): a Redis that stops answering must not hold a join up for long; the join
#: then goes on and the subscription completes when Redis answers.
CONFIRM_TIMEOUT = 1.0


class PublishOnlyBroker:
    """:class:`~kanal.adapters.base.Broker` of a process without connections: it publishes
    exactly as :class:`RedisBroker` does (same wire format, same routes, same ordering) and
    never subscribes, so it is invisible to the nodes (``PUBSUB NUMSUB`` does not count it)
    and receives nothing back: it has no subscriber to deliver to.

    Args:
        url: any ``redis_url`` form (:mod:`kanal.adapters.redis_connect`).
        prefix: the cluster's key prefix (``redis_prefix``).
        mode: the cluster's ``redis_fanout``.
    """

    def __init__(self, url: str, *, prefix: str, mode: str = "node") -> None:
        self.routes = Routes(prefix, mode)
        self.channel = self.routes.fanout
        self._outbox = Outbox(redis_connect.client(url))

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        """Nothing to attach: no envelope ever arrives here."""

    def listen(self, app_id: str, scope: str, target: str) -> Awaitable[None]:
        """Nothing to listen to: a publisher has no subscribers."""
        return READY

    def unlisten(self, app_id: str, scope: str, target: str) -> None:
        """Nothing was listened to."""

    async def publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to the nodes; raises the Redis error if it could not be sent
        (it may still have gone out when the connection dropped after sending): a
        publisher's caller has no local subscriber to fall back to, so it waits."""
        await self._outbox.publish(self.routes.of(envelope), encode_envelope(envelope))

    async def close(self) -> None:
        await self._outbox.close()


class RedisBroker:
    """:class:`~kanal.adapters.base.Broker` over Redis pub/sub.

    Args:
        url: any ``redis_url`` form (:mod:`kanal.adapters.redis_connect`).
        prefix: key prefix, as for :class:`~kanal.adapters.redis_membership.RedisMembership`.
        mode: ``redis_fanout``: ``node`` (one channel) or ``channel`` (interest-based).
        backoff: first and longest wait between reconnection attempts, in seconds.
        probe_interval: after this long without traffic the subscription is pinged; after
            twice this long without any reply it is declared broken (half-open TCP).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        mode: str = "node",
        backoff: tuple[float, float] = (1.0, 30.0),
        probe_interval: float = 5.0,
    ) -> None:
        self.routes = Routes(prefix, mode)
        self.channel = self.routes.fanout
        # No client-level retries on either connection: a retried pipeline could publish a
        # message twice, and the reader loop owns reconnection so that outages are seen.
        self._pub_client = redis_connect.client(url)
        self._outbox = Outbox(self._pub_client)
        self._interest = Interest(CONFIRM_TIMEOUT)
        self._sub_client = redis_connect.client(url)
        self._backoff = backoff
        self._probe = probe_interval
        self._deliver: Callable[[Envelope], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._attempted = asyncio.Event()
        self._outage_logged = False
        self.last_error = ""
        self.failures = 0  # failed attempts in the current outage
        # Subscriptions established so far: a change tells the cluster maintainer that
        # envelopes may have been lost meanwhile, even if the outage fell between two looks.
        self.subscriptions = 0

    @property
    def healthy(self) -> bool:
        """True while the subscription is established."""
        return self._up.is_set()

    @property
    def listening(self) -> int:
        """How many interest channels this node wants (``channel`` mode; 0 in ``node``)."""
        return len(self._interest)

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        self._deliver = deliver

    def listen(self, app_id: str, scope: str, target: str) -> Awaitable[None]:
        """One more local interest in a channel (``scope`` ``channel``) or a user
        (``user``); done once its envelopes reach this node (see Interest.add)."""
        if not self.routes.per_channel:
            return READY
        return self._interest.add(self.routes.interest(app_id, scope, target))

    def unlisten(self, app_id: str, scope: str, target: str) -> None:
        """One local interest less; the last one stops the envelopes."""
        if self.routes.per_channel:
            self._interest.remove(self.routes.interest(app_id, scope, target))

    async def publish(self, envelope: Envelope) -> None:
        await self._outbox.publish(self.routes.of(envelope), encode_envelope(envelope))

    async def start(self) -> None:
        """Start the reader; returns after the first subscription attempt, good or bad."""
        if self._reader is None:
            with contextlib.suppress(RedisError, OSError):  # Redis away: the reader says so
                await redis_connect.prepare(self._pub_client)
            self._reader = asyncio.create_task(self._run(), name="kanal-redis-subscribe")
        await self._attempted.wait()

    async def wait_healthy(self, healthy: bool = True) -> None:
        """Wait until :attr:`healthy` equals ``healthy`` (bound it with ``asyncio.timeout``)."""
        await (self._up if healthy else self._down).wait()

    async def close(self) -> None:
        self._closing.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._interest.close()
        await self._outbox.close()
        await self._sub_client.aclose()

    # --- the reader ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff[0]
        while not self._closing.is_set():
            try:
                await self._listen()
            except Exception as exc:  # whatever broke the subscription, make a new one
                if self.healthy:  # the subscription had worked: back off afresh
                    delay = self._backoff[0]
                self._set_down(exc)
            self._attempted.set()
            with contextlib.suppress(TimeoutError):
                # An event wait, not a sleep: close() ends the pause at once.
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, self._backoff[1])

    async def _listen(self) -> None:
        pubsub = redis_connect.subscriber(self._sub_client)
        try:
            await self._interest.attach(pubsub, self.channel)
            await self._read(pubsub)
        finally:
            self._interest.detach()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _read(self, pubsub: redis_connect.Subscriber) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        # Checked every round because redis-py can swallow a cancellation that coincides
        # with its read timeout; close() sets the flag before cancelling.
        while not self._closing.is_set():
            message = await pubsub.get_message(wait=self._probe)
            if message is None:
                if loop.time() - heard > 2 * self._probe:
                    raise ConnectionError("no reply from Redis to the subscription ping")
                await pubsub.ping()
                continue
            heard = loop.time()
            kind = message["type"]
            if kind == COMMANDS.message:
                self._dispatch(message["data"])
            elif kind == COMMANDS.subscribed:
                self._subscribed(message["channel"])

    def _subscribed(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        if name == self.channel:  # subscribed last: every interest before it is confirmed
            self._set_up()
        else:
            self._interest.confirmed(name)

    def _dispatch(self, data: bytes) -> None:
        try:
            envelopes = decode_message(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignored a malformed message on %s", self.channel)
            return
        if self._deliver is None:
            return
        for envelope in envelopes:
            try:
                self._deliver(envelope)
            except Exception:  # one bad delivery must not stop the node's fan-out
                log.exception("delivering a %s envelope failed", envelope.kind)

    def _set_up(self) -> None:
        if self._outage_logged:
            log.info("Redis pub/sub restored after %d failed attempts", self.failures)
        self._outage_logged = False
        self.failures = 0
        self.subscriptions += 1
        self._down.clear()
        self._up.set()
        self._attempted.set()

    def _set_down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self._up.clear()
        self._down.set()
        if not self._outage_logged:  # once per outage, not per retry
            self._outage_logged = True
            log.error("Redis pub/sub lost (%s); reconnecting with backoff", self.last_error)
