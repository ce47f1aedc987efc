"""The horizontal-scaling seam: ``Broker`` (fan-out between nodes) and ``Membership``
(cluster-wide facts).

Ownership rule: everything the *whole cluster* knows lives behind these two protocols and
nowhere else. :class:`kanal.hub.Hub` is their only caller. Each method's docstring is its
contract; :mod:`tests.adapters.test_contract` runs one suite over every implementation.

First/last answers ("did this join occupy the channel?", "is this the user's first
connection?") are computed atomically by the store, never by asking other nodes; that is what
makes channel_occupied / member_added fire exactly once for the whole cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kanal.protocol.presence import Member

__all__ = [
    "READY",
    "Broker",
    "CachedEvent",
    "ChannelCounts",
    "Envelope",
    "JoinResult",
    "LeaveResult",
    "Membership",
]


class _Ready:
    """An awaitable that is already done: awaiting it never suspends the caller."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once


#: What :meth:`Broker.listen` returns when there is nothing to wait for.
READY: Awaitable[None] = _Ready()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message fanned out to every node (the publishing node included).

    ``kind`` is ``channel`` (deliver ``payload`` to the channel's local subscribers),
    ``user`` (to connections signed in as ``target``), ``terminate`` (close connections signed
    in as ``target``), ``online`` / ``offline`` (watchlist change of user ``target``).
    ``exclude`` is a socket_id that must not receive the payload.
    """

    app_id: str
    kind: str
    target: str
    payload: bytes = b""
    exclude: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelCounts:
    subscription_count: int
    user_count: int


@dataclass(frozen=True, slots=True)
class JoinResult:
    """Outcome of :meth:`Membership.join`.

    ``refused`` is true when a presence channel is full and the user is new to it; nothing was
    recorded then. ``presence`` is the roster after the join (user_id -> user_info of that
    user's earliest connection), ``None`` for non-presence channels.
    """

    refused: bool
    occupied: bool
    user_added: bool
    subscription_count: int
    presence: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LeaveResult:
    """Outcome of :meth:`Membership.leave`; ``user_removed`` holds the user id that left."""

    vacated: bool
    user_removed: str | None
    subscription_count: int
    is_presence: bool


@dataclass(frozen=True, slots=True)
class CachedEvent:
    event: str
    data: str
    ttl: int


class Membership(Protocol):
    """Cluster-wide membership, users, cache channels and connection counts."""

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        """Add ``socket_id`` to ``channel`` atomically.

        ``occupied`` is true iff the channel had no connection before, cluster-wide.
        ``user_added`` is true iff ``member`` is given and its user had no connection in the
        channel before. With ``max_users > 0`` a new user beyond that many is refused.
        Joining twice with the same socket_id is a no-op returning the current state.
        """
        ...

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        """Remove ``socket_id`` from ``channel`` atomically; ``None`` if it was not there.

        ``vacated`` is true iff no connection is left; ``user_removed`` is the user id iff
        that was the user's last connection in this presence channel.
        """
        ...

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        """Connections and distinct presence users of ``channel`` (zeros if unoccupied)."""
        ...

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        """Every occupied channel whose name starts with ``prefix``."""
        ...

    async def users(self, app_id: str, channel: str) -> list[str]:
        """Distinct user ids present in a presence channel."""
        ...

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        """A presence channel's members as a joiner would get them: user_id -> user_info of
        that user's earliest connection (empty if nobody is there)."""
        ...

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        """Record a signed-in connection; true iff the user was offline before (users.md §4)."""
        ...

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        """Forget a signed-in connection; true iff it was the user's last one."""
        ...

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        """Which of ``user_ids`` have at least one signed-in connection."""
        ...

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        """Remember the last HTTP-published event of a cache channel for ``ttl`` seconds."""
        ...

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        """The cached event with its remaining whole seconds of life, or ``None``."""
        ...

    async def claim_cache_miss(self, app_id: str, channel: str, window: float, now: float) -> bool:
        """True for the first caller per channel per ``window`` seconds, cluster-wide: the
        ``cache_miss`` webhook is de-duplicated across nodes (webhooks.md §4)."""
        ...

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        """Count a connection unless ``limit > 0`` connections already exist; false if full."""
        ...

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        """Forget a counted connection (idempotent)."""
        ...

    async def connection_count(self, app_id: str) -> int:
        """How many connections are counted for the app, cluster-wide (the console's figure)."""
        ...


class Broker(Protocol):
    """Fan-out between nodes; per channel, envelopes arrive in publish order.

    A node receives an envelope if it listens to its route: ``("channel", channel)`` for
    ``channel`` envelopes, ``("user", user_id)`` for the others. A broker may deliver more
    (one that sends everything to every node), never less.
    """

    def attach(self, deliver: Callable[[Envelope], None]) -> None:
        """Set the node-local handler that every received envelope is given to."""
        ...

    def listen(self, app_id: str, scope: str, target: str) -> Awaitable[None]:
        """Count one local interest in ``target`` (``scope``: ``channel`` or ``user``) at
        once; envelopes published after the returned awaitable is done reach this node.
        Each call is undone by one :meth:`unlisten`."""
        ...

    def unlisten(self, app_id: str, scope: str, target: str) -> None:
        """Undo one :meth:`listen`; after the last one the node may stop receiving them."""
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to every node that listens to it, this one included, after
        every envelope this node published before it."""
        ...
