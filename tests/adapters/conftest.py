"""Fixtures for the adapter contract suite: adapters per test over memory and Redis.

Ownership rule: every adapter connection a test uses is made and torn down here; the Redis
servers themselves come from :mod:`tests.redis_server`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from kanal.adapters.base import Broker, Membership
from kanal.adapters.memory import MemoryBroker, MemoryMembership
from kanal.adapters.redis import RedisBroker, RedisMembership
from tests.redis_server import client as redis_client
from tests.redis_server import delete_prefix, topologies, topology_url


class Cluster:
    """Nodes that share one membership store: several Redis nodes, or the one memory store."""

    def __init__(self, kind: str, url: str = "", prefix: str = "", fanout: str = "node") -> None:
        self.kind = kind
        self.fanout = fanout  # the Redis brokers' redis_fanout
        self.url = url
        self.prefix = prefix
        self._memory = MemoryMembership()
        self._clients: list[aredis.Redis] = []
        self._brokers: list[RedisBroker] = []

    @property
    def is_redis(self) -> bool:
        return self.kind == "redis"

    def node(self, node_id: str = "node", lease: float = 30.0) -> Membership:
        """A membership as one node sees it (its own connection, for Redis)."""
        return self.redis_node(node_id, lease) if self.is_redis else self._memory

    def redis_node(self, node_id: str = "node", lease: float = 30.0) -> RedisMembership:
        client = redis_client(self.url)
        self._clients.append(client)
        return RedisMembership(client, prefix=self.prefix, node_id=node_id, lease=lease)

    async def brokers(self, count: int) -> list[Broker]:
        """``count`` started brokers (memory: one node only, it has no peers)."""
        if not self.is_redis:
            return [MemoryBroker()]
        started: list[Broker] = []
        for _ in range(count):
            broker = RedisBroker(self.url, prefix=self.prefix, mode=self.fanout)
            self._brokers.append(broker)
            await broker.start()
            assert broker.healthy, broker.last_error
            started.append(broker)
        return started

    async def close(self) -> None:
        """Stop brokers, delete every key under the prefix, close the connections."""
        for broker in self._brokers:
            await broker.close()
        if self.is_redis:
            await delete_prefix(self.url, self.prefix)
        for client in self._clients:
            await client.aclose()


@pytest.fixture(
    params=[
        "memory",
        *topologies(pytest.mark.redis),
        pytest.param("single-channel", marks=pytest.mark.redis, id="redis-channel"),
    ]
)
async def cluster(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Cluster]:
    """The contract suite's parameter: every test runs on each implementation (Redis: on
    each deployment of :func:`tests.redis_server.topologies` with node fan-out, and on one
    Redis with interest-based fan-out, which a Redis Cluster URL does not allow)."""
    if request.param == "memory":
        made = Cluster("memory")
    elif request.param == "single-channel":
        made = Cluster("redis", topology_url(request, "single"), prefix, "channel")
    else:
        made = Cluster("redis", topology_url(request, request.param), prefix, "node")
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def redis_cluster(redis_url: str, prefix: str) -> AsyncIterator[Cluster]:
    """For the Redis-only tests (leases, reaping, rebuild)."""
    made = Cluster("redis", redis_url, prefix)
    try:
        yield made
    finally:
        await made.close()
