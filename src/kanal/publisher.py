"""Publisher: trigger events and read channel state from a process that holds no connections.

A Celery or RQ worker, a cron job, a management command: with the Redis adapter, a
:class:`Publisher` puts events straight into the cluster, as socket.io's Redis emitter does.
Every call goes through the same :class:`~kanal.service.ChannelsApi` and
:class:`~kanal.hub.Hub` code as a node's, so it validates and answers exactly as the HTTP API
and :class:`~kanal.realtime.Realtime` do (its errors are
:class:`~kanal.protocol.errors.ApiError` with the HTTP status), and its envelope is the one
every node publishes: no HTTP, no signature. Reads (``channels``, ``channel_info``,
``users``, ``info`` on a trigger) are the cluster store's atomic answers; a cache channel's
event is remembered in the store as a node remembers it.

Ownership rule: this module is the composition root of such a process. It wires the settings
(the same as ``kanal serve``'s) into a ChannelsApi over a Hub whose broker only publishes and
whose membership only reads (:func:`kanal.adapters.redis.connect_publisher`), and owns those
Redis clients and, for blocking calls, one background thread with its event loop. It never
subscribes to the fan-out channel, registers a node lease, rebuilds, reaps, sends webhooks
(publishing causes none) or holds a connection: the nodes do not see it.

Loops and processes: Redis connections belong to the event loop that opened them, and a
forked child (a Celery prefork worker) must not use its parent's. So the clients are opened
per process, on the first loop that uses them; after ``asyncio.run`` closed that loop, the
next loop gets new ones. Two live loops at once need two publishers, or :attr:`sync`.

Without Redis there is no cluster to publish into: use the official ``pusher`` SDK over the
HTTP API. How-to: docs/embedding.md.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from kanal.adapters.publish_only import PublishOnlyMembership
from kanal.adapters.redis import connect_publisher
from kanal.adapters.redis_broker import PublishOnlyBroker
from kanal.apps import StaticAppStore
from kanal.config import Config
from kanal.hub import Hub, NullWebhooks
from kanal.realtime import Realtime, SyncRealtime
from kanal.service import ChannelsApi
from kanal.settings import ConfigError, resolve_config

__all__ = ["Publisher", "SyncPublisher"]

T = TypeVar("T")

_NEEDS_REDIS = (
    "a Publisher needs the Redis adapter ([scaling] adapter = 'redis' with redis_url, or "
    "redis_url=...): it publishes into the cluster through Redis. Without Redis, publish "
    "over the HTTP API with the official pusher SDK (docs/embedding.md)"
)


def _unframed(payload: bytes) -> bytes:
    """The hub frames only for local connections, and a publisher has none."""
    return payload


@dataclass
class _Clients:
    """What one process and one event loop of a publisher use: its Redis clients, and the
    service over them (whose request-rate buckets are per process, as on a node)."""

    membership: PublishOnlyMembership
    broker: PublishOnlyBroker
    service: ChannelsApi
    pid: int = field(default_factory=os.getpid)
    loop: asyncio.AbstractEventLoop | None = None  # bound by the first call

    @classmethod
    def open(cls, config: Config) -> _Clients:
        """Nothing connects yet: the clients connect on the first call, on its loop."""
        scaling = config.scaling
        membership, broker = connect_publisher(
            scaling.redis_url, prefix=scaling.redis_prefix, fanout=scaling.redis_fanout
        )
        hub = Hub(
            membership=membership,
            broker=broker,
            webhooks=NullWebhooks(),  # webhooks follow membership changes, never a publish
            frame=_unframed,
            monotonic=time.monotonic,
            wall=time.time,
        )
        return cls(membership, broker, ChannelsApi(hub))

    async def close(self) -> None:
        await self.broker.close()
        await self.membership.close()


class Publisher(Realtime):
    """Realtime's calls (``trigger``, ``trigger_batch``, ``send_to_user``,
    ``terminate_user_connections``, ``channels``, ``channel_info``, ``users``, and the signing
    helpers) for a process that is not a kanal node; :attr:`sync` for plain code.

    Args:
        config: a :class:`Config`, or the path of the TOML file the nodes read (``KANAL_*``
            environment variables apply on top); without it and without keyword arguments,
            ``$KANAL_CONFIG`` or the environment alone, as ``kanal serve``.
        settings: instead of ``config``, one app's settings (``id``, ``key``, ``secret``, ...)
            plus ``redis_url`` (and ``redis_prefix``, ``redis_fanout`` if the nodes use others
            than the defaults).

    Raises:
        ConfigError: the settings are invalid, or do not use the Redis adapter.
    """

    def __init__(self, config: Config | str | Path | None = None, **settings: Any) -> None:
        resolved = resolve_config(config, settings, os.environ)
        if resolved.scaling.adapter != "redis" or not resolved.scaling.redis_url:
            raise ConfigError(_NEEDS_REDIS)
        if not resolved.apps:
            raise ConfigError("a Publisher needs at least one app")
        self.config = resolved
        self._clients = _Clients.open(resolved)
        self._sync: SyncPublisher | None = None
        self._sync_lock = threading.Lock()  # worker threads may ask for it at once
        super().__init__(self._clients.service, StaticAppStore(resolved.apps), resolved.apps[0])

    def _api(self) -> ChannelsApi:
        return self._current().service

    def _current(self) -> _Clients:
        """This process's clients, bound to the running loop (see the module docstring)."""
        loop = asyncio.get_running_loop()
        clients = self._clients
        bound = clients.loop
        if clients.pid != os.getpid() or (bound is not None and bound.is_closed()):
            # A forked child's inherited connections are its parent's, and those of a closed
            # loop are dead: neither can even be closed from here. Open new ones.
            clients = self._clients = _Clients.open(self.config)
            bound = None
        if bound is None:
            clients.loop = loop
        elif bound is not loop:
            raise RuntimeError(
                "this Publisher is in use on another event loop: make one per loop, "
                "or use publisher.sync (from any thread)"
            )
        return clients

    async def aclose(self) -> None:
        """Close the Redis clients; a later call opens new ones."""
        clients = self._current()
        self._clients = _Clients.open(self.config)
        await clients.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def sync(self) -> SyncPublisher:
        """The same calls, blocking, for synchronous code (a Celery task): they run on this
        publisher's own event loop in a background thread."""
        with self._sync_lock:
            if self._sync is None:
                self._sync = SyncPublisher(self)
            return self._sync


class _LoopThread:
    """An event loop running in a daemon thread of one process: a blocked or exiting worker
    is never held up by it, and every call it runs is awaited by its caller."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kanal-publisher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncPublisher(SyncRealtime):
    """:class:`Publisher`'s calls for synchronous code, from any thread: each runs on the
    publisher's background loop (started by the first call, and again in a forked child) and
    blocks until it is answered or ``timeout`` seconds pass. :meth:`close` (or leaving a
    ``with`` block) closes the Redis clients and stops the thread."""

    def __init__(self, publisher: Publisher, timeout: float = 10.0) -> None:
        super().__init__(publisher, timeout)
        self._publisher = publisher
        self._thread: _LoopThread | None = None
        self._lock = threading.Lock()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._thread is None or self._thread.pid != os.getpid():
                # A forked child has the parent's loop object but not its thread.
                self._thread = _LoopThread()
            self._publisher.loop = self._thread.loop
        return super()._run(call)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or thread.pid != os.getpid():
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._publisher.aclose(), thread.loop)
            future.result(self._timeout)
        finally:
            thread.stop()
            self._publisher.loop = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
