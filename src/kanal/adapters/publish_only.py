"""``PublishOnlyMembership``: the cluster's membership store, seen by a process that holds no
connections (a worker's :class:`kanal.publisher.Publisher`).

Ownership rule: this class owns nothing. It lets through what publishing and reading need
(counts, channel lists, presence users and rosters, who is online, cache channels' last
events) to the cluster's store, whose answers are as atomic as on any node, and refuses every
call that would record a connection there (join, leave, sign-in, sign-out, connection quota,
``cache_miss`` claims). Those are what make a node a cluster member: the Redis store files
them under a node lease that then has to be renewed and reaped. With them refused, a publisher
never registers a lease, so no node ever has to reap it, and a publisher that dies leaves
nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

from kanal.adapters.base import CachedEvent, ChannelCounts, JoinResult, LeaveResult, Membership
from kanal.protocol.presence import Member

__all__ = ["ClosableMembership", "PublishOnlyMembership"]


class ClosableMembership(Membership, Protocol):
    """A membership store that owns a client to close (``RedisMembership``)."""

    async def close(self) -> None: ...


def _refuse(call: str) -> NoReturn:
    raise RuntimeError(f"a publisher holds no connections: {call} belongs to a kanal node")


class PublishOnlyMembership:
    """:class:`~kanal.adapters.base.Membership` for publishing and reading only.

    Args:
        store: the cluster's store; closed by :meth:`close`.
    """

    def __init__(self, store: ClosableMembership) -> None:
        self._store = store

    async def close(self) -> None:
        await self._store.close()

    # --- what publishing and reading need -------------------------------------------------

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        return await self._store.counts(app_id, channel)

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        return await self._store.channels(app_id, prefix)

    async def users(self, app_id: str, channel: str) -> list[str]:
        return await self._store.users(app_id, channel)

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        return await self._store.roster(app_id, channel)

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        return await self._store.online(app_id, user_ids)

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        await self._store.cache_put(app_id, channel, event, data, ttl, now)

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        return await self._store.cache_get(app_id, channel, now)

    # --- what only a node with connections does -------------------------------------------

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        _refuse("join")

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        _refuse("leave")

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        _refuse("sign_in")

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        _refuse("sign_out")

    async def claim_cache_miss(self, app_id: str, channel: str, window: float, now: float) -> bool:
        _refuse("claim_cache_miss")

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        _refuse("add_connection")

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        _refuse("remove_connection")

    async def connection_count(self, app_id: str) -> int:
        return await self._store.connection_count(app_id)
