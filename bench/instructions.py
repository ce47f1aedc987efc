"""A fixed, in-process workload whose CPU instructions callgrind counts: a before/after
comparison of two kanal checkouts that machine noise cannot blur.

``python -m bench.instructions WORKLOAD`` builds a node (:func:`kanal.server.build`, memory
adapters), opens 1,000 in-memory connections subscribed to one channel, then runs WORKLOAD:
``none`` (set-up only), ``fanout`` (200 signed HTTP triggers to the channel, each delivered to
the 1,000 connections), ``http`` (2,000 signed HTTP triggers to a channel nobody is in) or
``wire`` (the same 2,000 as raw bytes on one keep-alive connection: kanal's HTTP/1.1 parser,
its request task or eager answer, the response's encoding) or ``burst`` (the 2,000 of
``http`` dispatched 16 at a time, as the ``http`` scenario's 16 publishers send them: in
cluster mode the events of one burst share a round trip to Redis). Requests go through the HTTP
API's ``dispatch`` and events through the hub and its broker, exactly as a served node runs
them, minus the sockets. Run each under
``valgrind --tool=callgrind``; the workload's cost is its total minus ``none``'s. Set
``PYTHONPATH`` to another checkout's ``src`` to measure that one (``bench/instructions.sh``),
and ``KANAL_BENCH_APPS=sqlite`` to serve the app from a SQLite app store instead of the file.

Cluster mode: ``WORKLOAD-redis`` runs the same on a node with the Redis adapter
(``redis_fanout = "node"``), ``WORKLOAD-channel`` with ``redis_fanout = "channel"``, against
the Redis at ``$KANAL_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); subtract
``none-redis`` / ``none-channel`` from ``fanout-*`` and ``bare-redis`` / ``bare-channel``
(set-up without the 1,000 subscribers, which only ``fanout`` needs) from the others. Only
the broker's subscription runs, not the node's timed upkeep, whose instructions would depend
on how long the run takes. A fan-out ends once every subscriber has every event, which has
come back through Redis. Only kanal's instructions are counted, not Redis's nor the kernel's
(a round trip to Redis is a send and a receive system call on each side).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import orjson
import redis.asyncio as aredis

from kanal.config import App, Config, ScalingSettings, ServerSettings
from kanal.protocol.signatures import sign_request
from kanal.server import build
from kanal.transport.http11 import Request

__all__ = ["main"]

SUBSCRIBERS = 1000
FANOUT_TRIGGERS = 200
HTTP_TRIGGERS = 2000
BURST = 16
APP = App(id="1", key="app-key", secret="app-secret")


class Wire:
    """A keep-alive connection's transport: takes the answers, wakes the sender on each."""

    def __init__(self) -> None:
        self.answers = 0
        self.answered = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert data.startswith(b"HTTP/1.1 200 "), data[:40]
        self.answers += 1
        self.answered.set()

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def resume_reading(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None


def _raw(request: Request) -> bytes:
    head = (
        f"POST {request.path}?{request.query_string} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\n\r\n"
    )
    return head.encode() + request.body


async def _wire(server: Any, request: Request, count: int) -> None:
    connections = server.listener._connections
    if not hasattr(connections, "protocol"):  # since separate listeners: made per address
        from kanal.transport.listener import Bind

        connections = connections(Bind("127.0.0.1", 0))
    connection = connections.protocol()
    wire = Wire()
    connection.connection_made(wire)
    raw = _raw(request)
    for _ in range(count):
        wire.answered.clear()
        connection.data_received(raw)
        if not wire.answered.is_set():
            await wire.answered.wait()
    assert wire.answers == count
    connection.connection_lost(None)


class Tally:
    """Frames handed to all sinks; wakes a waiter once ``target`` have arrived."""

    def __init__(self) -> None:
        self.frames = 0
        self.target = 0
        self.reached = asyncio.Event()

    def add(self) -> None:
        self.frames += 1
        if self.frames == self.target:
            self.reached.set()

    async def reach(self, total: int) -> None:
        """Return once ``total`` frames have arrived (at once in memory mode)."""
        if self.frames < total:
            self.target = total
            await self.reached.wait()


class Sink:
    """An in-memory connection: counts what the hub hands it."""

    def __init__(self, socket_id: str, tally: Tally) -> None:
        self.socket_id = socket_id
        self.received = 0
        self._tally = tally

    def send(self, frame: bytes) -> None:
        self.received += len(frame)
        self._tally.add()

    def probe(self) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        return None


def _request(channel: str) -> Request:
    body = orjson.dumps({"name": "bench", "channels": [channel], "data": "x" * 180})
    path = "/apps/1/events"
    query = sign_request(
        method="POST",
        path=path,
        params={},
        body=body,
        app_key=APP.key,
        app_secret=APP.secret,
        timestamp=int(time.time()),
    )
    query_string = "&".join(f"{key}={value}" for key, value in query.items())
    return Request("POST", path, query_string, {"content-type": "application/json"}, body)


def _config(mode: str, directory: str) -> Config:
    """Memory (no suffix), or a cluster node in ``node`` / ``channel`` fan-out mode; the app
    in the file, or (``KANAL_BENCH_APPS=sqlite``) in a SQLite app store in ``directory``,
    read through the node's cache (docs/apps.md)."""
    scaling = ScalingSettings()
    if mode:
        fields: dict[str, Any] = {
            "adapter": "redis",
            "redis_url": os.environ.get("KANAL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "redis_prefix": f"kbench{os.getpid():08d}",
        }
        if mode == "channel":
            fields["redis_fanout"] = "channel"
        scaling = ScalingSettings(**fields)
    settings = ServerSettings(port=0)
    if os.environ.get("KANAL_BENCH_APPS", "toml") != "sqlite":
        return Config(server=settings, apps=(APP,), scaling=scaling)
    from kanal.app_stores.sql import SqlAppStore
    from kanal.config import AppsStoreSettings

    url = f"sqlite://{directory}/apps.db"
    store = SqlAppStore.from_url(url)
    store.create(APP)
    store.close()
    return Config(server=settings, apps_store=AppsStoreSettings(url=url), scaling=scaling)


async def _run(workload: str) -> int:
    workload, _, mode = workload.partition("-")
    with tempfile.TemporaryDirectory() as directory:
        config = _config(mode, directory)
        server = build(config)
        started = getattr(server.apps, "start", None)
        if started is not None:  # a SQL store: load its apps, refresh every ttl as served
            await started()
        try:
            if not mode:
                return await _workload(server, workload, SUBSCRIBERS)
            return await _cluster_workload(server, config, workload)
        finally:
            if started is not None:
                await server.apps.close()  # type: ignore[attr-defined]


async def _cluster_workload(server: Any, config: Config, workload: str) -> int:
    # Only the broker's subscription: the node's timed upkeep (heartbeat ticks, lease
    # renewals, the hooks' advertisements) would add instructions that depend on how long
    # the run takes under callgrind.
    broker, membership = server.hub._broker.primary, server.hub.membership.primary
    await broker.start()
    # Subscribers only where events go to them: 1,000 Redis joins are slow under callgrind.
    subscribers = SUBSCRIBERS if workload in ("none", "fanout") else 0
    try:
        return await _workload(server, workload, subscribers)
    finally:
        await broker.close()
        await membership.close()
        client = aredis.Redis.from_url(config.scaling.redis_url)
        async for key in client.scan_iter(match=f"{config.scaling.redis_prefix}*"):
            await client.delete(key)
        await client.aclose()


async def _workload(server: Any, workload: str, subscribers: int) -> int:
    hub, http = server.hub, server.listener._http  # the same attribute in every version
    tally = Tally()
    sinks = [Sink(f"1.{index}", tally) for index in range(subscribers)]
    subscribe = orjson.dumps({"event": "pusher:subscribe", "data": {"channel": "bench"}})
    for sink in sinks:
        assert await hub.open(sink, APP)
        await hub.receive(sink.socket_id, subscribe.decode())
    statuses: list[Any] = []
    if workload == "fanout":
        request, before = _request("bench"), tally.frames
        for _ in range(FANOUT_TRIGGERS):
            statuses.append((await http.dispatch(request)).status)
        await tally.reach(before + FANOUT_TRIGGERS * SUBSCRIBERS)
    elif workload == "http":
        request = _request("bench-nobody")
        for _ in range(HTTP_TRIGGERS):
            statuses.append((await http.dispatch(request)).status)
    elif workload == "burst":  # the http scenario's 16 publishers: requests in flight together
        request = _request("bench-nobody")
        for _ in range(HTTP_TRIGGERS // BURST):
            answers = await asyncio.gather(*(http.dispatch(request) for _ in range(BURST)))
            statuses.extend(answer.status for answer in answers)
    elif workload == "wire":
        await _wire(server, _request("bench-nobody"), HTTP_TRIGGERS)
    elif workload not in ("none", "bare"):
        raise SystemExit(f"unknown workload {workload!r}: none, fanout, http, burst or wire")
    assert all(status == 200 for status in statuses), set(statuses)
    return sum(sink.received for sink in sinks)


def main() -> int:
    workload = sys.argv[1] if len(sys.argv) > 1 else "none"
    received = asyncio.run(_run(workload))
    print(f"{workload}: {received} bytes delivered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
