"""``RedisMembership``: cluster-wide membership held in Redis, with per-node leases.

Ownership rule: Redis holds the cluster's truth; this class only turns method calls into
atomic script runs (:mod:`kanal.adapters.redis_scripts`) and decodes the replies. It keeps no
membership state of its own besides which apps its current *incarnation* has written to.

Crash safety. Every entry a node adds (channel subscription, signed-in user, counted
connection) is also recorded in that node's ownership set, in the same script run. A node's
records are filed under its *lease id*, ``<node_id>.<random>``, new for every process and
every :meth:`RedisMembership.rebuild`, so a restarted node never takes over (resurrects) what
an earlier incarnation left behind: those entries are reaped once that lease expires.
:meth:`RedisMembership.reap_dead_nodes` claims expired leases atomically (one reaper per
lease) and undoes their entries with the same Lua logic as ``leave`` / ``sign_out`` /
``remove_connection``, returning :class:`Departure` values for the hub to announce.

Key layout and sizes: see :mod:`kanal.adapters.redis`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aredis

from kanal.adapters import redis_scripts as lua
from kanal.adapters.base import CachedEvent, ChannelCounts, JoinResult, LeaveResult
from kanal.protocol.presence import Member

__all__ = [
    "Arrival",
    "Departure",
    "NodeState",
    "RebuildResult",
    "RedisMembership",
    "normalise_prefix",
]

log = logging.getLogger("kanal.cluster")

_REAP_BATCH = 256  # entries undone per script run: bounds how long one run blocks Redis
_REBUILD_BATCH = 256  # entries re-registered per script run, for the same reason

EntryKind = Literal["channel", "user"]


@dataclass(frozen=True, slots=True)
class Departure:
    """A membership entry removed on behalf of a node that is gone (or of stale state).

    ``kind`` ``channel``: ``socket_id`` left channel ``target``; ``leave`` says whether to
    emit member_removed / channel_vacated, exactly as a live ``leave`` would.
    ``kind`` ``user``: ``socket_id`` signed out as user ``target``; ``user_offline`` is true
    iff that was the user's last connection (watchlist ``offline``).
    """

    app_id: str
    kind: EntryKind
    target: str
    socket_id: str
    leave: LeaveResult | None
    user_offline: bool


@dataclass(frozen=True, slots=True)
class Arrival:
    """An entry :meth:`RedisMembership.rebuild` had to add again (it was not in Redis).

    ``join`` (for ``channel``) carries ``occupied`` / ``user_added`` as a fresh join would
    (``presence`` is always ``None``); ``user_online`` (for ``user``) is true iff the user
    was offline cluster-wide before.
    """

    app_id: str
    kind: EntryKind
    target: str
    socket_id: str
    join: JoinResult | None
    user_online: bool


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a rebuild changed: entries added back, and stale entries removed."""

    arrivals: list[Arrival]
    departures: list[Departure]


@dataclass(frozen=True, slots=True)
class NodeState:
    """Everything one node holds locally, the input of :meth:`RedisMembership.rebuild`.

    ``subscriptions``: (app_id, channel, socket_id, member or None);
    ``signed_in``: (app_id, user_id, socket_id); ``connections``: (app_id, socket_id).
    """

    subscriptions: Sequence[tuple[str, str, str, Member | None]] = ()
    signed_in: Sequence[tuple[str, str, str]] = ()
    connections: Sequence[tuple[str, str]] = ()


def normalise_prefix(prefix: str) -> str:
    """``kanal`` and ``kanal:`` both mean keys ``kanal:…`` (config gives the bare word)."""
    return prefix if not prefix or prefix.endswith(":") else prefix + ":"


def _text(value: bytes | str) -> str:
    # The client may or may not have been built with decode_responses.
    return value.decode() if isinstance(value, bytes) else value


def _check_socket_id(socket_id: str) -> str:
    # Socket ids are stored space-separated and NUL-terminated inside Lua values.
    if not socket_id or " " in socket_id or "\0" in socket_id:
        raise ValueError(f"socket id {socket_id!r} must be non-empty without space or NUL")
    return socket_id


def _member_value(member: Member | None) -> bytes:
    if member is None:
        return b""
    return orjson.dumps(member.user_info) + b"\0" + member.user_id.encode()


def _leave_result(record: Sequence[Any]) -> LeaveResult:
    vacated, removed, user_id, count, presence = record
    return LeaveResult(
        bool(vacated), _text(user_id) if removed else None, int(count), bool(presence)
    )


def _departures(app_id: str, flat: Sequence[Any]) -> list[Departure]:
    """Decode the 8-field records of the REAP script."""
    out: list[Departure] = []
    for i in range(0, len(flat) - 7, 8):
        kind, sid, target = _text(flat[i]), _text(flat[i + 1]), _text(flat[i + 2])
        if kind == "c":
            leave = _leave_result(flat[i + 3 : i + 8])
            out.append(Departure(app_id, "channel", target, sid, leave, False))
        else:
            out.append(Departure(app_id, "user", target, sid, None, bool(flat[i + 3])))
    return out


def _arrivals(app_id: str, flat: Sequence[Any]) -> list[Arrival]:
    """Decode the 6-field records of the REBUILD script."""
    out: list[Arrival] = []
    for i in range(0, len(flat) - 5, 6):
        kind, sid, target = _text(flat[i]), _text(flat[i + 1]), _text(flat[i + 2])
        if kind == "c":
            joined = JoinResult(False, bool(flat[i + 3]), bool(flat[i + 4]), int(flat[i + 5]), None)
            out.append(Arrival(app_id, "channel", target, sid, joined, False))
        else:
            out.append(Arrival(app_id, "user", target, sid, None, bool(flat[i + 3])))
    return out


class _WriteGate:
    """Writes run concurrently; a rebuild (or goodbye) runs alone.

    A rebuild must see a quiet store: a write in flight while it compares local state with
    Redis could otherwise be filed under a retired lease and leak, or be judged stale.
    """

    def __init__(self) -> None:
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


class RedisMembership:
    """:class:`~kanal.adapters.base.Membership` over one Redis, shared by every node.

    Args:
        client: an asyncio Redis client (bytes or decoded responses both work).
        prefix: key prefix (``kanal`` or ``kanal:``); lets deployments share a Redis.
        node_id: names this node in lease ids (``<node_id>.<random>``); for operators.
        lease: seconds a node's entries survive without a heartbeat.
        clock: Unix time, used only to register the lease on a write before the first
            :meth:`heartbeat`. Every node's clock must agree to well under ``lease``.
    """

    def __init__(
        self,
        client: aredis.Redis,
        *,
        prefix: str,
        node_id: str,
        lease: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = normalise_prefix(prefix)
        self.node_id = node_id
        self.lease = lease
        self._clock = clock
        self._gate = _WriteGate()
        self._lease_id = ""
        self._leased = False
        self._apps: set[str] = set()
        # Leases being replaced by a rebuild, with the apps they are known to hold. Kept
        # until a rebuild finishes, so a rebuild cut short by a Redis error is completed by
        # the next one instead of leaving entries behind under a forgotten lease.
        self._retiring: dict[str, set[str]] = {}
        self._new_incarnation()
        reg = client.register_script
        self._join, self._leave = reg(lua.JOIN), reg(lua.LEAVE)
        self._sign_in, self._sign_out = reg(lua.SIGN_IN), reg(lua.SIGN_OUT)
        self._add_conn, self._remove_conn = reg(lua.ADD_CONNECTION), reg(lua.REMOVE_CONNECTION)
        self._channels, self._reap = reg(lua.CHANNELS), reg(lua.REAP)
        self._roster = reg(lua.ROSTER)
        self._rebuild = reg(lua.REBUILD)
        self._heartbeat, self._claim = reg(lua.HEARTBEAT), reg(lua.CLAIM)

    # --- keys ---------------------------------------------------------------------------

    @property
    def lease_id(self) -> str:
        """The current incarnation's id: what the ``leases`` sorted set holds."""
        return self._lease_id

    def _base(self, app_id: str) -> str:
        return f"{self._prefix}{{{app_id}}}:"

    def _own(self, app_id: str, lease_id: str | None = None) -> str:
        return f"{self._base(app_id)}own:{lease_id or self._lease_id}"

    @property
    def _leases(self) -> str:
        return f"{self._prefix}{{nodes}}:leases"

    @property
    def _reaping(self) -> str:
        return f"{self._prefix}{{nodes}}:reaping"

    def _apps_key(self, lease_id: str) -> str:
        return f"{self._prefix}{{nodes}}:apps:{lease_id}"

    def _new_incarnation(self) -> None:
        self._lease_id = f"{self.node_id}.{secrets.token_hex(4)}"
        self._leased = False
        self._apps = set()

    async def _prepare(self, app_id: str) -> str:
        """Make sure a reaper could find what the next write records; returns own key.

        The lease and the app are registered *before* the entry is written, so a crash
        right after the write still leaves a reapable trail.
        """
        if not self._leased:
            await self.heartbeat(self._clock())
        if app_id not in self._apps:
            await self._client.sadd(self._apps_key(self._lease_id), app_id)
            self._apps.add(app_id)
        return self._own(app_id)

    # --- channels -----------------------------------------------------------------------

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        _check_socket_id(socket_id)
        async with self._gate.write():
            own, value = await self._prepare(app_id), _member_value(member)
            args: list[str | bytes | int] = [self._base(app_id), channel, socket_id, value]
            args += [max_users, 1]  # 1: return the roster
            reply = await self._join(keys=[own], args=args)
        refused, occupied, added, count = (int(v) for v in reply[:4])
        roster: dict[str, Any] | None = None
        if len(reply) > 4:
            roster = {
                _text(reply[i]): orjson.loads(reply[i + 1]) for i in range(5, len(reply) - 1, 2)
            }
        return JoinResult(bool(refused), bool(occupied), bool(added), count, roster)

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        async with self._gate.write():
            args = [self._base(app_id), channel, socket_id]
            reply = await self._leave(keys=[self._own(app_id)], args=args)
        return None if reply is None else _leave_result(reply)

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        base = self._base(app_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hlen(f"{base}s:{channel}")
            pipe.hlen(f"{base}u:{channel}")
            subs, users = await pipe.execute()
        return ChannelCounts(int(subs), int(users))

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        base = self._base(app_id)
        flat = await self._channels(keys=[f"{base}chans"], args=[base, prefix])
        return {
            _text(flat[i]): ChannelCounts(int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat) - 2, 3)
        }

    async def users(self, app_id: str, channel: str) -> list[str]:
        names = await self._client.hkeys(f"{self._base(app_id)}u:{channel}")
        return [_text(name) for name in names]

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        base = self._base(app_id)
        flat = await self._roster(keys=[f"{base}u:{channel}"], args=[base, channel])
        return {_text(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}

    # --- signed-in users (users.md) -----------------------------------------------------

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        _check_socket_id(socket_id)
        async with self._gate.write():
            own = await self._prepare(app_id)
            first = await self._sign_in(keys=[own], args=[self._base(app_id), user_id, socket_id])
        return bool(first)

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        async with self._gate.write():
            args = [self._base(app_id), user_id, socket_id]
            last = await self._sign_out(keys=[self._own(app_id)], args=args)
        return int(last) == 1

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(user_ids))
        if not wanted:
            return set()
        found = await self._client.hmget(f"{self._base(app_id)}online", wanted)
        return {user_id for user_id, list_ in zip(wanted, found, strict=True) if list_}

    # --- cache channels (channels.md §5) ------------------------------------------------

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        """Store with both a logical expiry (``now + ttl``) and a real PEXPIRE of ``ttl``.

        :meth:`cache_get` honours whichever ends first: the caller's clock keeps the
        contract testable and equal to the memory adapter, the Redis clock bounds any node
        whose clock runs behind and frees the memory.
        """
        key = f"{self._base(app_id)}cache:{channel}"
        if ttl <= 0:
            await self._client.delete(key)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"e": event, "d": data, "x": repr(now + ttl)})
            pipe.pexpire(key, ttl * 1000)
            await pipe.execute()

    async def claim_cache_miss(self, app_id: str, channel: str, window: float, now: float) -> bool:
        """``SET NX PX``: one claim per channel per window for the whole cluster."""
        key = f"{self._base(app_id)}miss:{channel}"
        claimed = await self._client.set(key, b"1", nx=True, px=max(1, int(window * 1000)))
        return bool(claimed)

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        key = f"{self._base(app_id)}cache:{channel}"
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(key, ["e", "d", "x"])
            pipe.pttl(key)
            (event, data, expires), pttl = await pipe.execute()
        if event is None or data is None or expires is None:
            return None
        remaining = float(expires) - now
        if int(pttl) >= 0:  # -1: no expiry (cannot happen), -2: gone since HMGET (cannot)
            remaining = min(remaining, int(pttl) / 1000)
        if remaining <= 0:
            return None
        return CachedEvent(_text(event), _text(data), max(1, int(remaining)))

    # --- connection quota ---------------------------------------------------------------

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        _check_socket_id(socket_id)
        async with self._gate.write():
            own = await self._prepare(app_id)
            ok = await self._add_conn(keys=[own], args=[self._base(app_id), socket_id, limit])
        return bool(ok)

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        async with self._gate.write():
            await self._remove_conn(keys=[self._own(app_id)], args=[self._base(app_id), socket_id])

    async def connection_count(self, app_id: str) -> int:
        return int(await self._client.scard(f"{self._base(app_id)}conns"))

    # --- leases and crash safety --------------------------------------------------------

    async def heartbeat(self, now: float) -> bool:
        """Renew this node's lease until ``now + lease``; call every ``lease / 3`` or so.

        Returns false iff the lease was lost (this node was declared dead and reaped, or
        Redis lost its data) or a rebuild did not finish: the hub must then call
        :meth:`rebuild` with its local state. The first call (or the first write) registers
        the lease and returns true.
        """
        first = "0" if self._leased else "1"
        keys = [self._leases, self._reaping]
        held = await self._heartbeat(keys=keys, args=[self._lease_id, now + self.lease, first])
        if held:
            self._leased = True
        return bool(held) and not self._retiring

    async def reap_dead_nodes(self, now: float) -> list[Departure]:
        """Remove every entry of every node whose lease expired before ``now``.

        Safe to call from every node at once: each expired lease is claimed by exactly one
        caller (a claim lapses after ``lease`` seconds, so a reaper that dies mid-way is
        replaced), and each entry is undone by exactly one script run.
        """
        keys = [self._leases, self._reaping]
        claimed = await self._claim(keys=keys, args=[now, now + self.lease, self._lease_id])
        departures: list[Departure] = []
        for lease_id in (_text(c) for c in claimed):
            gone = await self._empty_lease(lease_id, ())
            departures += gone
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._reaping, lease_id)
                pipe.delete(self._apps_key(lease_id))
                await pipe.execute()
            # Once per dead node in the whole cluster: only the claimer gets here.
            log.info(
                "reaped node %s (lease %s expired): %d channel and user departures to announce",
                lease_id.rpartition(".")[0],
                lease_id,
                len(gone),
                extra={"node": lease_id.rpartition(".")[0], "lease": lease_id},
            )
        return departures

    async def forget_node(self) -> list[Departure]:
        """Graceful goodbye: remove everything this node holds; reusable afterwards."""
        async with self._gate.exclusive():
            departures = await self._empty_lease(self._lease_id, self._apps)
            await self._retire(self._lease_id)
            self._new_incarnation()
        return departures

    async def _empty_lease(self, lease_id: str, known_apps: Iterable[str]) -> list[Departure]:
        apps = {_text(a) for a in await self._client.smembers(self._apps_key(lease_id))}
        departures: list[Departure] = []
        for app_id in sorted(apps.union(known_apps)):
            departures += await self._empty_own(app_id, lease_id)
        return departures

    async def _empty_own(self, app_id: str, lease_id: str) -> list[Departure]:
        """Undo every entry of one lease in one app, a bounded batch per script run."""
        own, base = self._own(app_id, lease_id), self._base(app_id)
        departures: list[Departure] = []
        while True:
            flat = await self._reap(keys=[own], args=[base, _REAP_BATCH])
            departures += _departures(app_id, flat[:-1])
            if int(flat[-1]) == 0:
                return departures

    async def _retire(self, lease_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._leases, lease_id)
            pipe.zrem(self._reaping, lease_id)
            pipe.delete(self._apps_key(lease_id))
            await pipe.execute()

    # --- rebuild after a Redis outage or a lost lease -----------------------------------

    async def rebuild(
        self, state: NodeState | Callable[[], NodeState], now: float
    ) -> RebuildResult:
        """Make Redis hold exactly this node's local state, under a fresh lease.

        Pass a callable to have the state read *after* in-flight writes have finished and
        while new ones wait (the consistent choice for a running hub). Entries Redis still
        holds are moved to the new lease untouched; missing ones are added back
        (``arrivals``); entries Redis holds for this node that the state lacks are removed
        (``departures``). Idempotent; safe while other nodes reap the old lease. If it
        raises (Redis failed again), call it again: :meth:`heartbeat` answers false until a
        rebuild has finished, and the next one completes the unfinished one.
        """
        async with self._gate.exclusive():
            snapshot = state() if callable(state) else state
            self._retiring[self._lease_id] = set(self._apps)
            self._new_incarnation()
            await self.heartbeat(now)
            retired = sorted(self._retiring)
            for old_id in retired:
                apps = await self._client.smembers(self._apps_key(old_id))
                self._retiring[old_id] |= {_text(a) for a in apps}
            arrivals: list[Arrival] = []
            for app_id, entries in sorted(_group_entries(snapshot).items()):
                arrivals += await self._readd(app_id, retired, entries)
            departures: list[Departure] = []
            for old_id in retired:  # what is left under an old lease is stale
                for app_id in sorted(self._retiring[old_id]):
                    departures += await self._empty_own(app_id, old_id)
                await self._retire(old_id)
                del self._retiring[old_id]
        return RebuildResult(arrivals, departures)

    async def _readd(
        self, app_id: str, retired: list[str], entries: list[tuple[str, str, str, bytes]]
    ) -> list[Arrival]:
        keys = [await self._prepare(app_id)] + [self._own(app_id, old) for old in retired]
        base = self._base(app_id)
        arrivals: list[Arrival] = []
        for start in range(0, len(entries), _REBUILD_BATCH):
            args: list[str | bytes] = [base]
            for entry in entries[start : start + _REBUILD_BATCH]:
                args.extend(entry)
            arrivals += _arrivals(app_id, await self._rebuild(keys=keys, args=args))
        return arrivals

    async def close(self) -> None:
        """Close the client given to the constructor."""
        await self._client.aclose()


def _group_entries(state: NodeState) -> dict[str, list[tuple[str, str, str, bytes]]]:
    """(kind, socket_id, target, member value) per app, in the REBUILD script's format."""
    grouped: dict[str, list[tuple[str, str, str, bytes]]] = {}
    for app_id, socket_id in state.connections:
        grouped.setdefault(app_id, []).append(("x", _check_socket_id(socket_id), "", b""))
    for app_id, channel, socket_id, member in state.subscriptions:
        entry = ("c", _check_socket_id(socket_id), channel, _member_value(member))
        grouped.setdefault(app_id, []).append(entry)
    for app_id, user_id, socket_id in state.signed_in:
        grouped.setdefault(app_id, []).append(("u", _check_socket_id(socket_id), user_id, b""))
    return grouped
