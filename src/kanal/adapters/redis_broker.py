"""``RedisBroker``: fan-out of :class:`~kanal.adapters.base.Envelope` values over Redis pub/sub.

Ownership rule: this class owns the node's two Redis connections for fan-out, one that
publishes and one that is subscribed, and nothing else. Every node, the publishing one
included, receives every envelope through Redis, so all nodes see one order per channel.
:class:`PublishOnlyBroker` owns only the first kind: it is the broker of a process that holds
no connections (:mod:`kanal.publisher`), which sends envelopes to the nodes and never
receives any.

Wire format (one pub/sub message per envelope, on channel ``<prefix>fanout``; a sharded
channel on Redis Cluster, see :mod:`kanal.adapters.redis_connect`)::

    0x01 | len(kind) kind | len(app_id) app_id | len(target) target | len(exclude) exclude
         | payload bytes (verbatim, never re-encoded)

Lengths are 2-byte big-endian UTF-8 byte counts; ``0xFFFF`` as the exclude length means no
exclude. The payload is the publisher's JSON, copied as raw bytes.

Ordering: :meth:`RedisBroker.publish` queues the message for one writer task that sends
queued messages in order, pipelined on one connection, so envelopes leave this node in the
order ``publish`` was called. Redis delivers one channel's messages to each subscriber in
the order it received them.

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
import struct
from collections.abc import Callable

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kanal.adapters import redis_connect
from kanal.adapters.base import Envelope
from kanal.adapters.redis_connect import SOCKET_TIMEOUT
from kanal.adapters.redis_membership import normalise_prefix

__all__ = [
    "SOCKET_TIMEOUT",
    "PublishOnlyBroker",
    "RedisBroker",
    "decode_envelope",
    "encode_envelope",
    "fanout_channel",
]

log = logging.getLogger("kanal.redis")

_VERSION = 1
_NONE = 0xFFFF
_LEN = struct.Struct(">H")
_PUBLISH_BATCH = 512  # messages per pipeline round trip


def _field(value: str | None) -> bytes:
    if value is None:
        return _LEN.pack(_NONE)
    raw = value.encode()
    if len(raw) >= _NONE:
        raise ValueError(f"envelope field of {len(raw)} bytes is too long")
    return _LEN.pack(len(raw)) + raw


def encode_envelope(envelope: Envelope) -> bytes:
    """The wire message: a small header, then the payload bytes unchanged."""
    header = (
        bytes((_VERSION,))
        + _field(envelope.kind)
        + _field(envelope.app_id)
        + _field(envelope.target)
        + _field(envelope.exclude)
    )
    return header + envelope.payload


def decode_envelope(message: bytes) -> Envelope:
    """Inverse of :func:`encode_envelope`; raises ``ValueError`` on anything else."""
    if not message or message[0] != _VERSION:
        raise ValueError("not a kanal envelope")
    fields: list[str | None] = []
    at = 1
    for _ in range(4):
        if at + 2 > len(message):
            raise ValueError("truncated envelope header")
        (size,) = _LEN.unpack_from(message, at)
        at += 2
        if size == _NONE:
            fields.append(None)
            continue
        if at + size > len(message):
            raise ValueError("truncated envelope header")
        fields.append(message[at : at + size].decode())
        at += size
    kind, app_id, target, exclude = fields
    if kind is None or app_id is None or target is None:
        raise ValueError("envelope without kind, app_id or target")
    return Envelope(app_id, kind, target, message[at:], exclude)


def fanout_channel(prefix: str) -> str:
    """The one pub/sub channel every node of a cluster (``redis_prefix``) listens on."""
    return f"{normalise_prefix(prefix)}fanout"


class _Publisher:
    """One writer task; callers await their own message's outcome."""

    def __init__(self, client: aredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._closed = False

    async def publish(self, message: bytes) -> None:
        if self._closed:  # no writer task will run again
            raise RedisConnectionError("broker closed")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="kanal-redis-publish")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((message, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        # The flag, not only the cancellation, ends the loop: redis-py can swallow a
        # cancellation that lands inside a command, and close() must not wait forever.
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._closed:
                self._sending = self._queue[:_PUBLISH_BATCH]
                del self._queue[:_PUBLISH_BATCH]
                await self._send(self._sending)
                self._sending = []

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for message, _ in batch:
                    redis_connect.publish(pipe, self._channel, message)
                await pipe.execute()
        except Exception as exc:  # every waiting caller must hear about any failure
            error = exc
        for _, done in batch:
            if done.done():  # the publisher was cancelled
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, done in self._sending + self._queue:  # a batch cut short, and the rest
            if not done.done():
                done.set_exception(ConnectionError("broker closed"))
        self._sending = []
        self._queue.clear()
        await self._client.aclose()


class PublishOnlyBroker:
    """:class:`~kanal.adapters.base.Broker` of a process without connections: it publishes on
    the fan-out channel exactly as :class:`RedisBroker` does (same wire format, same ordering,
    same errors) and never subscribes, so it is invisible to the nodes (``PUBSUB NUMSUB``
    does not count it) and receives nothing back: it has no subscriber to deliver to.

    Args:
        url: any ``redis_url`` form (:mod:`kanal.adapters.redis_connect`).
        prefix: the cluster's key prefix (``redis_prefix``).
    """

    def __init__(self, url: str, *, prefix: str) -> None:
        self.channel = fanout_channel(prefix)
        self._publisher = _Publisher(redis_connect.client(url), self.channel)

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        """Nothing to attach: no envelope ever arrives here."""

    async def publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to every node; raises the Redis error if it could not be sent
        (it may still have gone out when the connection dropped after sending)."""
        await self._publisher.publish(encode_envelope(envelope))

    async def close(self) -> None:
        await self._publisher.close()


class RedisBroker:
    """:class:`~kanal.adapters.base.Broker` over Redis pub/sub.

    Args:
        url: any ``redis_url`` form (:mod:`kanal.adapters.redis_connect`).
        prefix: key prefix, as for :class:`~kanal.adapters.redis_membership.RedisMembership`.
        backoff: first and longest wait between reconnection attempts, in seconds.
        probe_interval: after this long without traffic the subscription is pinged; after
            twice this long without any reply it is declared broken (half-open TCP).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        backoff: tuple[float, float] = (1.0, 30.0),
        probe_interval: float = 5.0,
    ) -> None:
        self.channel = fanout_channel(prefix)
        # No client-level retries on either connection: a retried pipeline could publish a
        # message twice, and the reader loop owns reconnection so that outages are seen.
        self._pub_client = redis_connect.client(url)
        self._publisher = _Publisher(self._pub_client, self.channel)
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

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        self._deliver = deliver

    async def publish(self, envelope: Envelope) -> None:
        await self._publisher.publish(encode_envelope(envelope))

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
        await self._publisher.close()
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
            await pubsub.subscribe(self.channel)
            await self._read(pubsub)
        finally:
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
            if kind == "message":
                self._dispatch(message["data"])
            elif kind == "subscribe":
                self._set_up()

    def _dispatch(self, data: bytes) -> None:
        try:
            envelope = decode_envelope(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignored a malformed message on %s", self.channel)
            return
        if self._deliver is None:
            return
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
