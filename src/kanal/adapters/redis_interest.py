"""``Interest``: the pub/sub channels a node is subscribed to in ``channel`` fan-out mode.

Ownership rule: which interest channels (:class:`~kanal.adapters.redis_wire.Routes`) this
node's subscription connection listens to is decided here and nowhere else. The hub counts
in one local subscriber (or signed-in connection, or watcher) at a time; the node subscribes
to a channel on its first one and unsubscribes on its last.

No event is lost to a new subscriber: what :meth:`Interest.add` returns is done only once
Redis has confirmed the SUBSCRIBE (replies come in command order on the connection, so the reply to
the last SUBSCRIBE sent for a channel confirms it). The hub calls it before it joins the
channel in the store and before ``pusher_internal:subscription_succeeded`` (channels.md
§3.1 step 7), so every event published after the client could know it is subscribed, and
every member change after the roster was read, reaches this node.

Batching: commands are not sent by the callers but by one task, once per turn of the event
loop, one SUBSCRIBE (and one UNSUBSCRIBE) for everything that changed, up to ``_CHUNK``
channels each: a connect storm of thousands of subscriptions costs a few commands. A
channel left and joined again before the task ran costs none.

While the connection is down, :meth:`add` is done at once, and after ``timeout`` when Redis
does not answer (the resilient broker delivers this node's own events locally meanwhile);
the next connection subscribes to everything wanted, in one
go, before the node counts as subscribed again (:meth:`attach`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator

from redis.exceptions import RedisError

from kanal.adapters import redis_connect
from kanal.adapters.base import READY
from kanal.adapters.redis_wire import COMMANDS, PubSubCommands

__all__ = ["Interest"]

log = logging.getLogger("kanal.redis")

_CHUNK = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE command


def _chunks(channels: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(channels), _CHUNK):
        yield channels[start : start + _CHUNK]


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Interest:
    """Counted interest per pub/sub channel, and its subscription on the current connection.

    Args:
        timeout: longest wait for a SUBSCRIBE's confirmation, in seconds.
    """

    def __init__(self, timeout: float, commands: PubSubCommands = COMMANDS) -> None:
        self._timeout = timeout
        self._commands = commands
        self._counts: dict[str, int] = {}
        self._pubsub: redis_connect.Subscriber | None = None
        self._active: set[str] = set()  # the last command sent for it was SUBSCRIBE
        self._pending: dict[str, int] = {}  # SUBSCRIBEs sent and not yet confirmed
        self._confirmed: set[str] = set()
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._dirty: dict[str, None] = {}  # changed since the last flush, in order
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """How many channels this node wants to receive."""
        return len(self._counts)

    def add(self, channel: str) -> Awaitable[None]:
        """Count one more local interest in ``channel`` now; what it returns is done once the
        channel is subscribed (at once while the connection is down)."""
        count = self._counts.get(channel, 0)
        self._counts[channel] = count + 1
        if count == 0:
            self._mark(channel)
        if self._pubsub is None or channel in self._confirmed:
            return READY
        waiter = self._waiters.get(channel)
        if waiter is None:
            loop = asyncio.get_running_loop()
            waiter = self._waiters[channel] = loop.create_future()
            # A Redis that stops answering must not hold subscriptions up (the reader takes
            # up to two probe intervals to declare it gone): the node serves locally.
            loop.call_later(self._timeout, _settle, waiter)
        # Shielded: one caller giving up (its connection closed) must not fail the others.
        return asyncio.shield(waiter)

    def remove(self, channel: str) -> None:
        """Count one local interest less; the last one unsubscribes."""
        count = self._counts.get(channel, 0)
        if count <= 1:
            self._counts.pop(channel, None)
            self._mark(channel)
        else:
            self._counts[channel] = count - 1

    def _mark(self, channel: str) -> None:
        self._dirty[channel] = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="kanal-redis-interest")
        self._wake.set()

    # --- the subscription connection (called by the broker's reader) ----------------------

    async def attach(self, pubsub: redis_connect.Subscriber, anchor: str) -> None:
        """A new connection: subscribe to everything wanted, ``anchor`` last, so that the
        anchor's confirmation means every channel before it is confirmed too."""
        self._reset()
        self._pubsub = pubsub
        wanted = list(self._counts)
        self._active = set(wanted)
        self._pending = dict.fromkeys(wanted, 1)
        for chunk in _chunks(wanted):
            await self._commands.subscribe(pubsub, chunk)
        await self._commands.subscribe(pubsub, [anchor])

    def detach(self) -> None:
        """The connection is gone: waiting callers go on (nothing can confirm them now)."""
        self._reset()

    def confirmed(self, channel: str) -> None:
        """Redis answered one SUBSCRIBE for ``channel`` on the current connection."""
        left = self._pending.get(channel, 0) - 1
        if left > 0:
            self._pending[channel] = left
            return
        self._pending.pop(channel, None)
        if channel in self._active:
            self._confirmed.add(channel)
            waiter = self._waiters.pop(channel, None)
            if waiter is not None:
                _settle(waiter)

    def _reset(self) -> None:
        self._pubsub = None
        self._active.clear()
        self._pending.clear()
        self._confirmed.clear()
        self._dirty.clear()
        for waiter in self._waiters.values():
            _settle(waiter)
        self._waiters.clear()

    # --- the batching task ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pubsub = self._pubsub
            if pubsub is None:  # attach() will subscribe to what is wanted then
                self._dirty.clear()
                continue
            subscribe, unsubscribe = self._changes()
            try:
                for chunk in _chunks(unsubscribe):
                    await self._commands.unsubscribe(pubsub, chunk)
                for chunk in _chunks(subscribe):
                    await self._commands.subscribe(pubsub, chunk)
            except (RedisError, OSError) as exc:  # the reader sees the broken connection
                log.debug("pub/sub interest change failed: %s", exc)

    def _changes(self) -> tuple[list[str], list[str]]:
        subscribe, unsubscribe = [], []
        for channel in self._dirty:
            wanted = channel in self._counts
            if wanted and channel not in self._active:
                subscribe.append(channel)
                self._active.add(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 1
            elif not wanted and channel in self._active:
                unsubscribe.append(channel)
                self._active.discard(channel)
                self._confirmed.discard(channel)
        self._dirty.clear()
        return subscribe, unsubscribe

    async def close(self) -> None:
        self._reset()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
