"""What fan-out puts on Redis: the envelope's bytes, the pub/sub channel it goes to, and the
commands that send and receive it.

Ownership rule: every pub/sub channel name and every pub/sub command of kanal is written here
and nowhere else, so that another transport of the same calls (sharded pub/sub: SPUBLISH,
SSUBSCRIBE) is one change of :class:`PubSubCommands`.

Wire format. One envelope::

    0x01 | len(kind) kind | len(app_id) app_id | len(target) target | len(exclude) exclude
         | payload bytes (verbatim, never re-encoded)

Lengths are 2-byte big-endian UTF-8 byte counts; ``0xFFFF`` as the exclude length means no
exclude. The payload is the publisher's JSON, copied as raw bytes. A pub/sub message is one
envelope, or a batch of several published in one round trip, in order::

    0x02 | (4-byte big-endian length | envelope)...

Routes (``redis_fanout``, docs/scaling.md "Interest-based fan-out"): in ``node`` mode every
envelope goes to ``<prefix>fanout`` and every node receives all of them. In ``channel`` mode a
channel's envelopes go to ``<prefix>{app}:e:<channel>`` and a user's (server-to-user events,
terminate, watchlist online/offline) to ``<prefix>{app}:user:<user_id>``; a node subscribes to
those it has local interest in. ``{app}`` is the app id as a Redis Cluster hash tag, as in
the membership keys. Every node subscribes to ``<prefix>fanout`` in both modes: it is the
subscription that proves the connection is up, whatever else the node listens to.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import redis.asyncio as aredis
from redis.asyncio.client import Pipeline

from kanal.adapters import redis_connect
from kanal.adapters.base import Envelope
from kanal.adapters.redis_membership import normalise_prefix

__all__ = [
    "COMMANDS",
    "FANOUT_MODES",
    "PubSubCommands",
    "Routes",
    "decode_envelope",
    "decode_message",
    "encode_batch",
    "encode_envelope",
    "fanout_channel",
]

#: ``redis_fanout`` values: one channel for the cluster, or one per Pusher channel and user.
FANOUT_MODES = ("node", "channel")

_VERSION = 1
_BATCH = 2
_NONE = 0xFFFF
_LEN = struct.Struct(">H")
_SIZE = struct.Struct(">I")


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


def encode_batch(envelopes: list[bytes]) -> bytes:
    """One pub/sub message for encoded envelopes, in order (a lone one is sent as is)."""
    if len(envelopes) == 1:
        return envelopes[0]
    return bytes((_BATCH,)) + b"".join(_SIZE.pack(len(e)) + e for e in envelopes)


def decode_message(message: bytes) -> list[Envelope]:
    """The envelopes of one pub/sub message; raises ``ValueError`` on anything else."""
    if not message or message[0] != _BATCH:
        return [decode_envelope(message)]
    out, at = [], 1
    while at < len(message):
        if at + 4 > len(message):
            raise ValueError("truncated batch")
        (size,) = _SIZE.unpack_from(message, at)
        at += 4
        if at + size > len(message):
            raise ValueError("truncated batch")
        out.append(decode_envelope(message[at : at + size]))
        at += size
    return out


def fanout_channel(prefix: str) -> str:
    """The pub/sub channel every node of a cluster (``redis_prefix``) listens on."""
    return f"{normalise_prefix(prefix)}fanout"


class Routes:
    """Which pub/sub channel an envelope is published on, and which one carries a node's
    interest in ``(app_id, scope, target)`` (scope ``channel`` or ``user``)."""

    def __init__(self, prefix: str, mode: str = "node") -> None:
        if mode not in FANOUT_MODES:
            raise ValueError(f"redis_fanout must be one of {FANOUT_MODES}, not {mode!r}")
        self.prefix = normalise_prefix(prefix)
        self.fanout = fanout_channel(prefix)
        self.per_channel = mode == "channel"

    def of(self, envelope: Envelope) -> str:
        if not self.per_channel:
            return self.fanout
        scope = "channel" if envelope.kind == "channel" else "user"
        return self.interest(envelope.app_id, scope, envelope.target)

    def interest(self, app_id: str, scope: str, target: str) -> str:
        middle = "e" if scope == "channel" else "user"
        return f"{self.prefix}{{{app_id}}}:{middle}:{target}"


class PubSubCommands:
    """The Redis calls of fan-out: classic pub/sub (``PUBLISH``, ``SUBSCRIBE``,
    ``UNSUBSCRIBE``, ``message`` / ``subscribe`` replies), or on Redis Cluster sharded pub/sub
    (``SPUBLISH``, ``SSUBSCRIBE``; :mod:`kanal.adapters.redis_connect` picks, and gives its
    replies the same types)."""

    message = "message"
    subscribed = "subscribe"

    def publish(self, pipe: Pipeline, channel: str, message: bytes) -> None:
        redis_connect.publish(pipe, channel, message)

    async def publish_one(self, client: aredis.Redis, channel: str, message: bytes) -> None:
        await redis_connect.publish_one(client, channel, message)

    async def subscribe(self, pubsub: redis_connect.Subscriber, channels: Iterable[str]) -> None:
        await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: redis_connect.Subscriber, channels: Iterable[str]) -> None:
        await pubsub.unsubscribe(*channels)


#: The commands every broker of this process uses.
COMMANDS = PubSubCommands()
