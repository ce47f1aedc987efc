"""Single-process ``Broker`` and ``Membership``: the default, and a real implementation.

Ownership rule: in a one-node deployment these objects are the cluster's truth. Every method
runs without awaiting anything, so each one is atomic on the event loop, which is exactly the
contract in :mod:`kanal.adapters.base`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kanal.adapters.base import (
    READY,
    CachedEvent,
    ChannelCounts,
    Envelope,
    JoinResult,
    LeaveResult,
)
from kanal.protocol.presence import Member

__all__ = ["MemoryBroker", "MemoryMembership"]


class MemoryBroker:
    """Hands every envelope straight to this node's hub, in publish order."""

    def __init__(self) -> None:
        self._deliver: Callable[[Envelope], None] | None = None

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        self._deliver = deliver

    def listen(self, app_id: str, scope: str, target: str) -> Awaitable[None]:
        """One node: every envelope is delivered here anyway."""
        return READY

    def unlisten(self, app_id: str, scope: str, target: str) -> None:
        """One node: nothing to stop."""

    async def publish(self, envelope: Envelope) -> None:
        if self._deliver is not None:
            self._deliver(envelope)


@dataclass(slots=True)
class _Channel:
    # socket_id -> member (None on non-presence channels); insertion order = join order
    sockets: dict[str, Member | None] = field(default_factory=dict)
    # user_id -> socket_ids in join order; the first one's user_info is shown (channels.md §4.1)
    users: dict[str, list[str]] = field(default_factory=dict)
    presence: bool = False

    def roster(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for user_id, sockets in self.users.items():
            member = self.sockets[sockets[0]]
            out[user_id] = member.user_info if member is not None else None
        return out

    def counts(self) -> ChannelCounts:
        return ChannelCounts(len(self.sockets), len(self.users))


class MemoryMembership:
    """All cluster facts held in dictionaries of this process."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._users: dict[tuple[str, str], set[str]] = {}
        self._cache: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._connections: dict[str, set[str]] = {}
        self._cache_misses: dict[tuple[str, str], float] = {}

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        key = (app_id, channel)
        state = self._channels.get(key) or _Channel(presence=member is not None)
        new_user = member is not None and member.user_id not in state.users
        already = socket_id in state.sockets
        if not already and new_user and 0 < max_users <= len(state.users):
            return JoinResult(True, False, False, len(state.sockets), None)
        occupied = not state.sockets
        if not already:
            state.sockets[socket_id] = member
            if member is not None:
                state.users.setdefault(member.user_id, []).append(socket_id)
        self._channels[key] = state
        roster = state.roster() if state.presence else None
        return JoinResult(
            False, occupied and not already, new_user and not already, len(state.sockets), roster
        )

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        key = (app_id, channel)
        state = self._channels.get(key)
        if state is None or socket_id not in state.sockets:
            return None
        member = state.sockets.pop(socket_id)
        removed: str | None = None
        if member is not None:
            sockets = state.users[member.user_id]
            sockets.remove(socket_id)
            if not sockets:
                del state.users[member.user_id]
                removed = member.user_id
        if not state.sockets:
            del self._channels[key]
        return LeaveResult(not state.sockets, removed, len(state.sockets), state.presence)

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        state = self._channels.get((app_id, channel))
        return state.counts() if state else ChannelCounts(0, 0)

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        return {
            name: state.counts()
            for (app, name), state in self._channels.items()
            if app == app_id and name.startswith(prefix)
        }

    async def users(self, app_id: str, channel: str) -> list[str]:
        state = self._channels.get((app_id, channel))
        return list(state.users) if state else []

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        state = self._channels.get((app_id, channel))
        return state.roster() if state else {}

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        sockets = self._users.setdefault((app_id, user_id), set())
        first = not sockets
        sockets.add(socket_id)
        return first

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        sockets = self._users.get((app_id, user_id))
        if not sockets or socket_id not in sockets:
            return False
        sockets.discard(socket_id)
        if sockets:
            return False
        del self._users[(app_id, user_id)]
        return True

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        return {user_id for user_id in user_ids if (app_id, user_id) in self._users}

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        self._cache[(app_id, channel)] = (event, data, now + ttl)

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        entry = self._cache.get((app_id, channel))
        if entry is None:
            return None
        event, data, expires = entry
        if expires <= now:
            del self._cache[(app_id, channel)]
            return None
        return CachedEvent(event, data, max(1, int(expires - now)))

    async def claim_cache_miss(self, app_id: str, channel: str, window: float, now: float) -> bool:
        key = (app_id, channel)
        if now < self._cache_misses.get(key, float("-inf")):
            return False
        self._cache_misses[key] = now + window
        return True

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        sockets = self._connections.setdefault(app_id, set())
        if 0 < limit <= len(sockets) and socket_id not in sockets:
            return False
        sockets.add(socket_id)
        return True

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        self._connections.get(app_id, set()).discard(socket_id)

    async def connection_count(self, app_id: str) -> int:
        return len(self._connections.get(app_id, ()))
