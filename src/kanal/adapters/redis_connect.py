"""Redis clients for every kanal process: one ``redis_url``, three kinds of deployment.

Ownership rule: every Redis client kanal makes (membership, fan-out, webhook queue) is built
here from the ``redis_url`` setting, and this module alone knows how the deployment is
shaped; the adapters see one asyncio client interface. It also owns the one choice that
differs by shape on the wire: plain pub/sub (``PUBLISH``/``SUBSCRIBE``) on one Redis or a
Sentinel-managed master, sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7) on a Redis
Cluster, so that fan-out traffic is spread over the masters by channel slot instead of being
broadcast to every node of the cluster.

URL forms (docs/scaling.md has a tested example of each):

==============================================================  ============================
``redis://[user:password@]host:port/db``, ``rediss://…``,       one Redis, or a managed one
``unix:///path/redis.sock``                                     (TLS with ``rediss``)
``redis+sentinel://[user:password@]h1:26379,h2:26379/name/db``  the master Sentinel names
                                                                ``name`` (``rediss+…``: TLS)
``redis+cluster://[user:password@]h1:7000,h2:7001``             a Redis Cluster; any nodes
                                                                of it (``rediss+…``: TLS)
==============================================================  ============================

The query string takes redis-py's connection options (``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``, …) for every form. User and
password authenticate to Redis (``AUTH``, ACL users on Redis 6+); Sentinels themselves are
asked without credentials (``sentinel_password=`` in the query sets theirs).

No client retries a command (``Retry(NoBackoff(), 0)``): a retried script whose first run
had executed would give a wrong first/last answer. Failover is followed all the same: a
Sentinel-managed connection asks the Sentinels for the current master whenever it
(re)connects, and a cluster client follows ``MOVED`` redirections (the command had not run)
and refreshes its slot map after a connection error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast
from urllib.parse import SplitResult, urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

__all__ = [
    "SOCKET_TIMEOUT",
    "RedisTarget",
    "Subscriber",
    "client",
    "parse_redis_url",
    "prepare",
    "publish",
    "redis_url_problem",
    "subscriber",
]

# Every Redis client kanal makes gets this connect and read timeout explicitly: redis-py
# before 8.0 defaults to none, so a Redis that stops answering (packets dropped, no reset)
# would block every caller for good instead of failing over to local service.
SOCKET_TIMEOUT = 5.0

Kind = Literal["single", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True)
class RedisTarget:
    """What a ``redis_url`` names: the deployment's shape, its seed addresses, and the
    options of every connection to Redis (redis-py keyword arguments, no host or port)."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse any form of the module docstring; raises ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL"
        )
    kind, tls = _SCHEMES[parts.scheme]
    if kind == "single":
        parse_url(url)  # redis-py's own check, for a clear error at startup
        return RedisTarget("single", url, tls=tls)
    return _seeded(parts, kind, tls)


def _seeded(parts: SplitResult, kind: Kind, tls: bool) -> RedisTarget:
    """A Sentinel or cluster URL: several seed addresses, then what one host's URL holds."""
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = tuple(_node(host, kind) for host in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    if kind == "sentinel" and not 1 <= len(path) <= 2:
        raise ValueError("a Sentinel URL names the master: redis+sentinel://host:port/name/db")
    if kind == "cluster" and path not in ([], ["0"]):
        raise ValueError("a Redis Cluster has database 0 only")
    if kind == "cluster" and not hasattr(RedisCluster, "pubsub"):
        # Older redis-py (the lowest pyproject.toml admits is 5.0.2) has no asyncio
        # cluster pub/sub nor MULTI on a cluster: refuse at start-up, not at first use.
        raise ValueError("redis+cluster:// needs a redis-py with asyncio cluster pub/sub (8.x)")
    db = path[1] if kind == "sentinel" and len(path) == 2 else "0"
    # redis-py parses user, password, database and query options of a one-host URL.
    scheme = "rediss" if tls else "redis"
    netloc = f"{userinfo}@{hosts.split(',')[0]}" if userinfo else hosts.split(",")[0]
    options: dict[str, Any] = dict(parse_url(urlunsplit((scheme, netloc, db, parts.query, ""))))
    for key in ("host", "port", "connection_class"):
        options.pop(key, None)
    service = path[0] if kind == "sentinel" else ""
    return RedisTarget(kind, parts.geturl(), nodes, service, tls, options)


def _node(host: str, kind: Kind) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
        raise ValueError(f"{kind} node {host!r} must be host:port")
    return name.strip("[]"), int(port)


def redis_url_problem(url: str) -> str | None:
    """The settings check of ``redis_url``: ``None`` when :func:`parse_redis_url` accepts it."""
    try:
        parse_redis_url(url)
    except ValueError as exc:
        return str(exc)
    return None


_NO_RETRY: dict[str, Any] = {
    "retry": Retry(NoBackoff(), 0),
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": SOCKET_TIMEOUT,
}


def client(url: str, *, pool_size: int | None = None) -> aredis.Redis:
    """A client of the deployment ``url`` names, with no command retries.

    ``pool_size`` bounds the commands in flight: when all are busy a command waits (on one
    Redis up to 5 s, for the blocking pool) rather than fails, so a reconnect storm queues
    instead of degrading the node; without it the pool grows as needed (a cluster's to
    100 commands in flight).
    """
    target = parse_redis_url(url)
    if target.kind == "cluster":
        return _cluster(target, pool_size)
    if target.kind == "sentinel":
        return _sentinel_master(target, pool_size)
    if pool_size is None:
        return aredis.Redis.from_url(url, **_NO_RETRY)
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=5, **_NO_RETRY
    )
    return aredis.Redis.from_pool(pool)


def _sentinel_master(target: RedisTarget, pool_size: int | None) -> aredis.Redis:
    options = dict(target.options)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
    }
    if "sentinel_password" in options:
        sentinel_kwargs["password"] = options.pop("sentinel_password")
    if target.tls:
        sentinel_kwargs.update(_tls_options(options))
        options["ssl"] = True
    if pool_size is not None:
        options["max_connections"] = pool_size
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)
    # check_connection: a new connection PINGs first, so one to a stale master address
    # fails at connect time instead of on the caller's command.
    master = sentinel.master_for(
        target.service,
        redis_class=_SentinelMaster,
        check_connection=True,
        **options,
        **_NO_RETRY,
    )
    master.sentinel_manager = sentinel
    return cast(aredis.Redis, master)


class _SentinelMaster(aredis.Redis):
    """The master's client also closes the clients of the Sentinels it asks (redis-py
    leaves them open)."""

    sentinel_manager: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinel_manager.sentinels:
            await client.aclose()


def _cluster(target: RedisTarget, pool_size: int | None) -> aredis.Redis:
    options = dict(target.options)
    options.pop("db", None)
    if target.tls:
        options["ssl"] = True
    size = pool_size or 100
    cluster = _QueueingCluster(
        size,
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        # Headroom over the commands let through at once: pipelines (not queued) also
        # take one connection per node.
        max_connections=2 * size,
        **options,
        **_NO_RETRY,
    )
    # RedisCluster offers the command methods of redis.asyncio.Redis (same mixins) and
    # routes each by its key's slot; kanal's keys put every multi-key command and script
    # in one slot ({app}, {nodes}, {wh} hash tags), so the adapters need no other type.
    return cast(aredis.Redis, cluster)


class _QueueingCluster(RedisCluster):
    """A cluster client whose commands wait for a free connection, as one Redis's
    ``BlockingConnectionPool`` makes them: redis-py's cluster pools raise
    ``MaxConnectionsError`` at once, so a burst of joins (thousands of clients moving from a
    draining node) would degrade the node to local service instead of queueing."""

    def __init__(self, in_flight: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight = asyncio.Semaphore(in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._in_flight:
            return await super().execute_command(*args, **kwargs)


def _tls_options(options: dict[str, Any]) -> dict[str, Any]:
    tls = {key: value for key, value in options.items() if key.startswith("ssl_")}
    return {"ssl": True, **tls}


def publish(pipe: aredis.client.Pipeline, channel: str, message: bytes) -> None:
    """Queue one fan-out message on ``pipe``: ``SPUBLISH`` on a cluster, where a shard
    channel's messages stay within the master and replicas of its slot, ``PUBLISH``
    elsewhere (on a cluster it would be broadcast over the whole cluster bus)."""
    if isinstance(pipe, ClusterPipeline):
        pipe.spublish(channel, message)
    else:
        pipe.publish(channel, message)


async def publish_one(redis_client: aredis.Redis, channel: str, message: bytes) -> None:
    """One fan-out message on its own (:func:`publish`'s choice of command)."""
    if isinstance(redis_client, RedisCluster):
        await redis_client.spublish(channel, message)
    else:
        await redis_client.publish(channel, message)


class Subscriber(Protocol):
    """The reading side of fan-out, the same for plain and sharded pub/sub: messages come
    as redis-py dicts whose ``type`` is ``subscribe`` or ``message`` in both cases."""

    async def subscribe(self, *channels: str) -> None: ...

    async def unsubscribe(self, *channels: str) -> None: ...

    async def get_message(self, *, wait: float) -> dict[str, Any] | None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


async def prepare(redis_client: aredis.Redis) -> None:
    """Fetch a cluster's slot map now instead of on the first command, so that a node's
    first publish is not held up behind it (events published meanwhile through other nodes
    would overtake it). Nothing to do on one Redis or a Sentinel-managed master."""
    if isinstance(redis_client, RedisCluster):
        await redis_client.initialize()


def subscriber(redis_client: aredis.Redis) -> Subscriber:
    """A new subscription connection on ``redis_client``."""
    if isinstance(redis_client, RedisCluster):
        return _ShardedSubscriber(redis_client)
    return _PlainSubscriber(redis_client.pubsub())


class _PlainSubscriber:
    def __init__(self, pubsub: aredis.client.PubSub) -> None:
        self._pubsub = pubsub

    async def subscribe(self, *channels: str) -> None:
        await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self._pubsub.unsubscribe(*channels)

    async def get_message(self, *, wait: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await self._pubsub.get_message(timeout=wait)
        return message

    async def ping(self) -> None:
        await self._pubsub.ping()

    async def aclose(self) -> None:
        # redis-py < 8 leaves PubSub.aclose unannotated and 8.x types it: a typed alias
        # is accepted by mypy --strict against both, where a call would not be.
        close: Callable[[], Awaitable[None]] = self._pubsub.aclose
        await close()


_SHARDED_TYPES = {"ssubscribe": "subscribe", "smessage": "message"}


class _ShardedSubscriber:
    """``SSUBSCRIBE`` on the master that owns each channel's slot (redis-py keeps one
    connection per such master and moves a channel when its slot moves)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._pubsub = cluster.pubsub()

    async def subscribe(self, *channels: str) -> None:
        await self._pubsub.ssubscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        # Only node fan-out runs on a cluster (settings refuse redis_fanout = "channel"
        # with a cluster URL), and it never unsubscribes.
        raise NotImplementedError("interest-based fan-out does not run on Redis Cluster")

    async def get_message(self, *, wait: float) -> dict[str, Any] | None:
        # Reading the one node's connection directly (rather than get_sharded_message,
        # which hides a failed node behind its healthy siblings) lets a connection error
        # reach the broker, which reports the outage and subscribes afresh.
        nodes = list(self._pubsub.node_pubsub_mapping.values())
        if len(nodes) == 1:
            message = await nodes[0].get_message(timeout=wait)
        else:
            message = await self._pubsub.get_sharded_message(timeout=wait)
        if message is None:
            return None
        kind = _text_type(message["type"])
        if kind == "sunsubscribe":  # the slot moved (failover, resharding): kanal never
            raise ConnectionError("Redis moved a fan-out channel's slot")  # unsubscribes
        return dict(message, type=kind)

    async def ping(self) -> None:
        for pubsub in list(self._pubsub.node_pubsub_mapping.values()):
            await pubsub.ping()

    async def aclose(self) -> None:
        await self._pubsub.aclose()


def _text_type(kind: bytes | str) -> str:
    text = kind.decode() if isinstance(kind, bytes) else kind
    return _SHARDED_TYPES.get(text, text)
