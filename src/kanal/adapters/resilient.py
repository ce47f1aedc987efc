"""Keep serving local connections while Redis is away.

Ownership rule: :class:`ResilientMembership` owns the *degraded* flag of this node's cluster
membership. It mirrors every write of this node into a :class:`MemoryMembership` (which
therefore holds exactly this node's entries) and sends it to Redis as well. When Redis fails,
it logs once, switches to answering from the mirror, and leaves recovery to
:class:`kanal.cluster.maintainer.ClusterMaintainer`, which rebuilds this node's entries in Redis
and then calls :meth:`ResilientMembership.recovered`.

While degraded, first/last answers are local to this node, so occupancy and presence events
(and webhooks) may be repeated or missed across the cluster until Redis returns; the rebuild
announces what changed, and each node then reconciles its presence subscribers' member lists
with Redis (docs/scaling.md, "Redis outages").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from kanal.adapters.base import (
    CachedEvent,
    ChannelCounts,
    Envelope,
    JoinResult,
    LeaveResult,
    Membership,
)
from kanal.adapters.memory import MemoryMembership
from kanal.adapters.redis_broker import RedisBroker
from kanal.protocol.presence import Member

__all__ = ["ResilientBroker", "ResilientMembership"]

log = logging.getLogger("kanal.cluster")

T = TypeVar("T")


class ResilientMembership:
    """The Membership the hub uses in cluster mode: Redis, with a local mirror as fallback."""

    def __init__(self, primary: Membership, local: MemoryMembership | None = None) -> None:
        self.primary = primary
        self.local = local if local is not None else MemoryMembership()
        self.degraded = False
        self.last_error = ""
        self._failed_at = 0.0  # time.monotonic() when the outage began

    def fail(self, error: BaseException) -> None:
        if not self.degraded:
            self._failed_at = time.monotonic()
            log.error("redis unavailable, serving local connections only: %s", error)
        self.degraded = True
        self.last_error = f"{type(error).__name__}: {error}"

    def recovered(self) -> None:
        if self.degraded:
            log.info(
                "redis is back after %.1f s; rebuilding this node's entries",
                time.monotonic() - self._failed_at,
            )
        self.degraded = False
        self.last_error = ""

    def status(self) -> tuple[bool, str]:
        """For ``GET /ready``."""
        return (False, f"redis: {self.last_error}") if self.degraded else (True, "ok")

    async def _primary(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        if self.degraded:
            return False, None
        if asyncio.current_task() is None:
            # An HTTP request answered eagerly (kanal.transport.eager) runs its first step
            # outside any task, and redis-py's asyncio.timeout needs one: one bare yield
            # moves the request into the task eager.start then makes.
            await asyncio.sleep(0)
        try:
            return True, await call()
        except RedisError as error:
            self.fail(error)
            return False, None

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        ok, result = await self._primary(
            lambda: self.primary.join(app_id, channel, socket_id, member, max_users)
        )
        if ok and result is not None:
            if not result.refused:
                await self.local.join(app_id, channel, socket_id, member, 0)
            return result
        return await self.local.join(app_id, channel, socket_id, member, max_users)

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        ok, result = await self._primary(lambda: self.primary.leave(app_id, channel, socket_id))
        local = await self.local.leave(app_id, channel, socket_id)
        return result if ok else local

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        ok, result = await self._primary(lambda: self.primary.counts(app_id, channel))
        return result if ok and result is not None else await self.local.counts(app_id, channel)

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        ok, result = await self._primary(lambda: self.primary.channels(app_id, prefix))
        return result if ok and result is not None else await self.local.channels(app_id, prefix)

    async def users(self, app_id: str, channel: str) -> list[str]:
        ok, result = await self._primary(lambda: self.primary.users(app_id, channel))
        return result if ok and result is not None else await self.local.users(app_id, channel)

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        ok, result = await self._primary(lambda: self.primary.roster(app_id, channel))
        return result if ok and result is not None else await self.local.roster(app_id, channel)

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        ok, first = await self._primary(lambda: self.primary.sign_in(app_id, user_id, socket_id))
        local = await self.local.sign_in(app_id, user_id, socket_id)
        return bool(first) if ok else local

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        ok, last = await self._primary(lambda: self.primary.sign_out(app_id, user_id, socket_id))
        local = await self.local.sign_out(app_id, user_id, socket_id)
        return bool(last) if ok else local

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        ids = list(user_ids)
        ok, result = await self._primary(lambda: self.primary.online(app_id, ids))
        return result if ok and result is not None else await self.local.online(app_id, ids)

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        await self._primary(lambda: self.primary.cache_put(app_id, channel, event, data, ttl, now))
        await self.local.cache_put(app_id, channel, event, data, ttl, now)

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        ok, result = await self._primary(lambda: self.primary.cache_get(app_id, channel, now))
        return result if ok else await self.local.cache_get(app_id, channel, now)

    async def claim_cache_miss(self, app_id: str, channel: str, window: float, now: float) -> bool:
        ok, claimed = await self._primary(
            lambda: self.primary.claim_cache_miss(app_id, channel, window, now)
        )
        if ok:
            return bool(claimed)
        return await self.local.claim_cache_miss(app_id, channel, window, now)

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        ok, admitted = await self._primary(
            lambda: self.primary.add_connection(app_id, socket_id, limit)
        )
        if ok:
            if admitted:
                await self.local.add_connection(app_id, socket_id, 0)
            return bool(admitted)
        return await self.local.add_connection(app_id, socket_id, limit)

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        await self._primary(lambda: self.primary.remove_connection(app_id, socket_id))
        await self.local.remove_connection(app_id, socket_id)

    async def connection_count(self, app_id: str) -> int:
        ok, result = await self._primary(lambda: self.primary.connection_count(app_id))
        return result if ok and result is not None else await self.local.connection_count(app_id)


class ResilientBroker:
    """Redis pub/sub fan-out; when Redis cannot deliver to this node, deliver locally."""

    def __init__(self, primary: RedisBroker) -> None:
        self.primary = primary
        self._deliver: Callable[[Envelope], None] | None = None

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        self._deliver = deliver
        self.primary.attach(deliver)

    @property
    def healthy(self) -> bool:
        """True while this node's subscription is up (it receives the other nodes' events)."""
        return self.primary.healthy

    @property
    def subscriptions(self) -> int:
        """How many times the subscription was established (see RedisBroker)."""
        return self.primary.subscriptions

    def status(self) -> tuple[bool, str]:
        if self.primary.healthy:
            return True, "ok"
        return False, f"redis pub/sub: {self.primary.last_error}"

    def listen(self, app_id: str, scope: str, target: str) -> Awaitable[None]:
        return self.primary.listen(app_id, scope, target)

    def unlisten(self, app_id: str, scope: str, target: str) -> None:
        self.primary.unlisten(app_id, scope, target)

    async def publish(self, envelope: Envelope) -> None:
        # While our own subscription is down, Redis cannot hand the envelope back to us:
        # deliver it here, and still try to reach the other nodes.
        subscribed = self.primary.healthy
        try:
            await self.primary.publish(envelope)
        except RedisError:
            subscribed = False
        if not subscribed and self._deliver is not None:
            self._deliver(envelope)
