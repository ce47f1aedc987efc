"""Redis adapters: cluster-wide membership and fan-out for several kanal nodes.

Ownership rule: this package's Redis keys are written only by
:class:`~kanal.adapters.redis_membership.RedisMembership` (through the Lua scripts of
:mod:`kanal.adapters.redis_scripts`) and the fan-out channel only by
:class:`~kanal.adapters.redis_broker.RedisBroker` (and its publish-only sibling); nothing else
in kanal touches Redis. This module is the entry point: :func:`connect` builds both for one
node, :func:`connect_publisher` the publish-only pair for a process without connections.

Key layout (``P`` is the prefix, ``kanal:`` by default; ``{app}`` is the app id as a Redis
Cluster hash tag, so every script touches one slot). None of the membership keys has a TTL:
they are removed when they empty, and a dead node's entries are removed by reaping.

=============================  ======  =========================================================
key                            type    content
=============================  ======  =========================================================
``P{app}:s:<channel>``         hash    socket_id -> ``""`` or ``user_info_json NUL user_id``;
                                       the member JSON is stored once per subscribed socket.
                                       HLEN = subscription_count.
``P{app}:u:<channel>``         hash    presence only: user_id -> that user's socket ids,
                                       space-separated, join order (the first one's
                                       user_info is shown). HLEN = user_count.
``P{app}:chans``               zset    occupied channel names (score 0, prefix listing by lex)
``P{app}:online``              hash    user_id -> signed-in socket ids, space-separated
``P{app}:conns``               set     counted connections (cluster-wide ``max_connections``)
``P{app}:cache:<channel>``     hash    ``e`` event, ``d`` data, ``x`` logical expiry (Unix
                                       time); PEXPIRE = the cache TTL
``P{app}:own:<lease_id>``      set     what one node incarnation added, for reaping:
                                       ``c<sid>NUL<channel>``, ``u<sid>NUL<user_id>``,
                                       ``x<sid>``
``P{nodes}:leases``            zset    lease_id -> lease expiry (Unix time)
``P{nodes}:reaping``           zset    lease_id -> deadline of the reaper that claimed it
``P{nodes}:apps:<lease_id>``   set     app ids a lease has entries in
``Pfanout``                    pubsub  one message per envelope, received by every node
                                       (``redis_fanout = "node"``; see ``redis_wire``)
``P{app}:e:<channel>``         pubsub  ``redis_fanout = "channel"``: one channel's envelopes,
                                       received by the nodes with a local subscriber
``P{app}:user:<user_id>``      pubsub  ``redis_fanout = "channel"``: one user's envelopes
=============================  ======  =========================================================

Memory, measured on Redis 7.0 (``INFO memory`` over 10 000 connections of one node, socket
ids of 19 bytes, channel names of 20, after ``MEMORY PURGE``); the node's ``own`` set holds
one entry per row, so every row includes it:

=========================================  ============================
what                                       bytes per connection
=========================================  ============================
counted connection (``conns`` + ``own``)   ~250
signed in (``online`` + ``own``)           ~200
subscribed, 100 per channel                ~100
subscribed, 1 000 per channel              ~210
subscribed, alone in its channel           ~330 (mostly key overhead)
presence, 50 per channel, 60-byte info     ~290
=========================================  ============================

So a connection that is counted, signed in and in two busy channels costs 0.65-0.9 KB:
roughly 65-90 MB of Redis per 100 000 connections. Small hashes and sets (up to 128 entries)
use the compact listpack encoding, which is why a channel of 100 costs less per socket than
one of 1 000.

Lifecycle of a node. ``connect()``, ``await broker.start()``, ``await
membership.heartbeat(time.time())``; then every ``lease / 3`` seconds: ``heartbeat`` (false:
``rebuild`` from local state and announce its arrivals and departures) and
``reap_dead_nodes`` (announce the departures). A node killed with ``kill -9`` is thus
reaped within ``lease`` plus one reap interval. On shutdown: ``forget_node()`` (announce),
``broker.close()``, ``membership.close()``. A publisher (:func:`connect_publisher`) has no
lifecycle: it starts nothing, holds no lease and is never reaped; it only closes its clients.

Time. ``heartbeat`` / ``reap_dead_nodes`` take the caller's Unix time, so node clocks must
agree to well under the lease (NTP). ``cache_get`` honours both the caller's ``now`` and the
key's real PTTL, whichever ends first.

Atomicity. Every first/last answer is one Lua script run (EVALSHA through redis-py's
``register_script``). The clients built here do not retry commands: a retried script whose
first run had executed would give a wrong first/last answer, so a Redis error reaches the
caller instead, who decides.
"""

from __future__ import annotations

import os
import platform

import redis.asyncio as aredis

from kanal.adapters import redis_connect
from kanal.adapters.publish_only import PublishOnlyMembership
from kanal.adapters.redis_broker import (
    PublishOnlyBroker,
    RedisBroker,
    decode_envelope,
    encode_envelope,
)
from kanal.adapters.redis_membership import (
    Arrival,
    Departure,
    NodeState,
    RebuildResult,
    RedisMembership,
)

__all__ = [
    "Arrival",
    "Departure",
    "NodeState",
    "RebuildResult",
    "RedisBroker",
    "RedisMembership",
    "connect",
    "connect_publisher",
    "decode_envelope",
    "default_node_id",
    "encode_envelope",
    "webhook_queue_client",
]


def default_node_id() -> str:
    """``host:pid``: readable in ``leases``; uniqueness comes from the lease id's suffix."""
    return f"{platform.node()}:{os.getpid()}"


def webhook_queue_client(url: str) -> aredis.Redis:
    """The client of the shared webhook queue (kanal.webhooks.cluster_queue): its own pool, no
    command retries (a retried script could apply twice)."""
    return redis_connect.client(url)


def _pooled_client(url: str, pool_size: int) -> aredis.Redis:
    """A client of at most ``pool_size`` connections (per master on a cluster). Every
    command fails after ``SOCKET_TIMEOUT`` without an answer, so an unresponsive Redis
    degrades the node to local service instead of blocking it."""
    return redis_connect.client(url, pool_size=pool_size)


def connect(
    url: str,
    *,
    prefix: str = "kanal:",
    node_id: str | None = None,
    lease: float = 30.0,
    pool_size: int = 32,
    fanout: str = "node",
) -> tuple[RedisMembership, RedisBroker]:
    """Build one node's membership and broker (``fanout``: ``redis_fanout``); call
    ``await broker.start()`` next."""
    membership = RedisMembership(
        _pooled_client(url, pool_size),
        prefix=prefix,
        node_id=node_id or default_node_id(),
        lease=lease,
    )
    return membership, RedisBroker(url, prefix=prefix, mode=fanout)


def connect_publisher(
    url: str, *, prefix: str = "kanal:", pool_size: int = 8, fanout: str = "node"
) -> tuple[PublishOnlyMembership, PublishOnlyBroker]:
    """Build the membership and broker of a process that only publishes and reads.

    Nothing to start: the broker never subscribes, and the membership refuses every call
    that would register a lease (:mod:`kanal.adapters.publish_only`). Close both when done.
    """
    store = RedisMembership(
        _pooled_client(url, pool_size), prefix=prefix, node_id=f"publisher:{default_node_id()}"
    )
    return PublishOnlyMembership(store), PublishOnlyBroker(url, prefix=prefix, mode=fanout)
