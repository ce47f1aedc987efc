"""A fixed, in-process workload whose CPU instructions callgrind counts: a before/after
comparison of two kanal checkouts that machine noise cannot blur.

``python -m bench.instructions WORKLOAD`` builds a node (:func:`kanal.server.build`, memory
adapters), opens 1,000 in-memory connections subscribed to one channel, then runs WORKLOAD:
``none`` (set-up only), ``fanout`` (200 signed HTTP triggers to the channel, each delivered to
the 1,000 connections), ``http`` (2,000 signed HTTP triggers to a channel nobody is in) or
``wire`` (the same 2,000 as raw bytes on one keep-alive connection: kanal's HTTP/1.1 parser,
its request task or eager answer, the response's encoding). Requests go through the HTTP
API's ``dispatch`` and events through the hub and its broker, exactly as a served node runs
them, minus the sockets. Run each under
``valgrind --tool=callgrind``; the workload's cost is its total minus ``none``'s. Set
``PYTHONPATH`` to another checkout's ``src`` to measure that one (``bench/instructions.sh``),
and ``KANAL_BENCH_APPS=sqlite`` to serve the app from a SQLite app store instead of the file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import orjson

from kanal.config import App, Config, ServerSettings
from kanal.protocol.signatures import sign_request
from kanal.server import build
from kanal.transport.http11 import Request

__all__ = ["main"]

SUBSCRIBERS = 1000
FANOUT_TRIGGERS = 200
HTTP_TRIGGERS = 2000
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


class Sink:
    """An in-memory connection: counts what the hub hands it."""

    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id
        self.received = 0

    def send(self, frame: bytes) -> None:
        self.received += len(frame)

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


def _config(directory: str) -> Config:
    """The node's config: the app in the file, or (``KANAL_BENCH_APPS=sqlite``) in a SQLite
    app store in ``directory``, read through the node's cache (docs/apps.md)."""
    settings = ServerSettings(port=0)
    if os.environ.get("KANAL_BENCH_APPS", "toml") != "sqlite":
        return Config(server=settings, apps=(APP,))
    from kanal.app_stores.sql import SqlAppStore
    from kanal.config import AppsStoreSettings

    url = f"sqlite://{directory}/apps.db"
    store = SqlAppStore.from_url(url)
    store.create(APP)
    store.close()
    return Config(server=settings, apps_store=AppsStoreSettings(url=url))


async def _run(workload: str) -> int:
    with tempfile.TemporaryDirectory() as directory:
        server = build(_config(directory))
        started = getattr(server.apps, "start", None)
        if started is not None:  # a SQL store: load its apps, refresh every ttl as served
            await started()
        try:
            return await _workload(server, workload)
        finally:
            if started is not None:
                await server.apps.close()  # type: ignore[attr-defined]


async def _workload(server: Any, workload: str) -> int:
    hub, http = server.hub, server.listener._http  # the same attribute in every version
    sinks = [Sink(f"1.{index}") for index in range(SUBSCRIBERS)]
    subscribe = orjson.dumps({"event": "pusher:subscribe", "data": {"channel": "bench"}})
    for sink in sinks:
        assert await hub.open(sink, APP)
        await hub.receive(sink.socket_id, subscribe.decode())
    statuses: list[Any] = []
    if workload == "fanout":
        request = _request("bench")
        for _ in range(FANOUT_TRIGGERS):
            statuses.append((await http.dispatch(request)).status)
    elif workload == "http":
        request = _request("bench-nobody")
        for _ in range(HTTP_TRIGGERS):
            statuses.append((await http.dispatch(request)).status)
    elif workload == "wire":
        await _wire(server, _request("bench-nobody"), HTTP_TRIGGERS)
    elif workload != "none":
        raise SystemExit(f"unknown workload {workload!r}: none, fanout, http or wire")
    assert all(status == 200 for status in statuses), set(statuses)
    return sum(sink.received for sink in sinks)


def main() -> int:
    workload = sys.argv[1] if len(sys.argv) > 1 else "none"
    received = asyncio.run(_run(workload))
    print(f"{workload}: {received} bytes delivered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
