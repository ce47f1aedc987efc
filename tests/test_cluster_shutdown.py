"""A cluster node always shuts down: its background loops end even when redis-py swallows
the cancellation that close() sends (it can, when the cancel lands inside a command), and a
publish that can no longer be sent fails instead of waiting forever.

The first two tests use stand-ins for Redis so that the cancellation lands exactly where it
hurts; the last one repeats real start/stop cycles with a very short lease, which used to hang
a shutdown now and then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from redis.exceptions import RedisError

from kanal.adapters.redis_outbox import Outbox
from kanal.cluster import ClusterMaintainer
from tests.cluster_nodes import Cluster, cluster
from tests.wsclient import Clients

__all__ = ["cluster"]

BOUND = 2.0


class Swallower:
    """An awaitable 'Redis command' that never answers and eats the first cancellation it
    gets (what redis-py sometimes does); later ones go through, so nothing outlives a test."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.swallowed = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        return []


class FakeRedisMembership:
    def __init__(self) -> None:
        self.forgotten = False
        self.closed = False

    async def forget_node(self) -> list[Any]:
        self.forgotten = True
        return []

    async def close(self) -> None:
        self.closed = True


async def test_maintainer_stops_even_if_a_step_swallows_the_cancellation() -> None:
    redis = FakeRedisMembership()
    maintainer = ClusterMaintainer(
        cast(Any, None), cast(Any, None), cast(Any, redis), lambda _id: None, lease=0.15,
        wall=lambda: 0.0,
    )  # fmt: skip
    step = Swallower()
    maintainer.step = step  # type: ignore[method-assign]
    loop = maintainer._task = asyncio.create_task(maintainer._run())
    await asyncio.wait_for(step.entered.wait(), BOUND)
    closing = asyncio.create_task(maintainer.close())
    done, _ = await asyncio.wait({closing}, timeout=BOUND)
    try:
        assert done, "close() is still waiting for the maintenance loop"
    finally:  # (on failure: a second cancellation goes through and ends the loop)
        loop.cancel()
        await asyncio.wait({closing}, timeout=BOUND)
    closing.result()
    assert step.swallowed == 1
    assert redis.forgotten and redis.closed  # the goodbye still happened


class SwallowingPipeline:
    def __init__(self, execute: Swallower) -> None:
        self.execute = execute

    def publish(self, channel: str, message: bytes) -> None:
        return None


class SwallowingClient:
    def __init__(self) -> None:
        self.execute = Swallower()
        self.closed = False

    @asynccontextmanager
    async def pipeline(self, transaction: bool = True) -> AsyncIterator[SwallowingPipeline]:
        yield SwallowingPipeline(self.execute)

    async def publish(self, channel: str, message: bytes) -> Any:  # one message: no pipeline
        return await self.execute()

    async def aclose(self) -> None:
        self.closed = True


async def test_publisher_stops_even_if_a_send_swallows_the_cancellation() -> None:
    client = SwallowingClient()
    outbox = Outbox(cast(Any, client), flush_timeout=BOUND / 4)
    first = asyncio.create_task(outbox.publish("fanout", b"first"))
    await asyncio.wait_for(client.execute.entered.wait(), BOUND)
    second = asyncio.create_task(outbox.publish("fanout", b"second"))  # queued behind it
    await asyncio.sleep(0)
    await asyncio.wait_for(outbox.close(), BOUND)
    assert client.execute.swallowed == 1 and client.closed
    await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), BOUND)
    with pytest.raises(ConnectionError):
        second.result()  # never sent: told so instead of waiting forever
    with pytest.raises(RedisError):  # and nothing can be published after close
        await asyncio.wait_for(outbox.publish("fanout", b"late"), BOUND)


@pytest.mark.redis
async def test_busy_nodes_stop_promptly(cluster: Cluster) -> None:
    for _ in range(6):
        # A 0.15 s lease: a maintenance step (Redis commands) every 0.05 s, so shutdown
        # often lands inside one.
        a, b = await cluster.node(lease=0.15), await cluster.node(lease=0.15)
        async with Clients() as clients:
            client = await clients.connect(a)
            await client.join_presence("presence-room", "u")
        for node in (a, b):
            await cluster.stop(node)  # fails if a node takes longer than STOP_TIMEOUT
