"""The benchmark's C programs (bench/native/): the floor server and the HTTP generator httpgen.

The floor server is checked with clients written independently of it: the official Pusher
Python SDK for triggers and batches (it raises on any answer but 2xx), the websockets library
for the WebSocket side (it verifies ``Sec-WebSocket-Accept``), and a raw socket that reads
nothing while megabytes of events are sent to it (the floor's output kept and sent on
EPOLLOUT). httpgen is checked against the floor: what it counts in each mode. Both programs
are compiled as the benchmark compiles them; without a C compiler the module is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pusher
import pytest
import websockets
from bench.native import SOURCES, HttpLoad, build, compiler, run_httpgen
from bench.protocol import Target, event_data, signed_post, trigger_request
from bench.servers import ServerProc, start_floor
from bench.stampclient import FrameParser, client_frame

pytestmark = pytest.mark.skipif(
    compiler() is None, reason="no C compiler (cc, gcc, clang or $CC) to build bench/native/"
)
WAIT = 10.0


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[ServerProc]:
    server = start_floor(tmp_path, None)
    try:
        yield server
    finally:
        server.stop()


def sdk(target: Target) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=target.app_id,
        key=target.key,
        secret=target.secret,
        ssl=False,
        host=target.host,
        port=target.port,
    )


@asynccontextmanager
async def subscribed(target: Target, channel: str) -> AsyncIterator[websockets.ClientConnection]:
    async with websockets.connect(target.ws_url, open_timeout=WAIT) as ws:
        established = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert established["event"] == "pusher:connection_established"
        data = json.loads(established["data"])
        assert data["activity_timeout"] == 120 and data["socket_id"].count(".") == 1
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT)) == {
            "event": "pusher_internal:subscription_succeeded",
            "channel": channel,
            "data": "{}",
        }
        yield ws


async def received(ws: websockets.ClientConnection) -> dict[str, str]:
    message: dict[str, str] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return message


def test_a_source_is_built_once_under_its_hash() -> None:
    digest = hashlib.sha256((SOURCES / "floor.c").read_bytes()).hexdigest()[:16]
    exe = build("floor")
    assert exe.name == f"floor-{digest}" and os.access(exe, os.X_OK)
    assert build("floor") == exe


async def test_sdk_triggers_and_batches_reach_each_channels_subscribers(
    floor: ServerProc,
) -> None:
    client = sdk(floor.target)
    async with (
        subscribed(floor.target, "bench") as bench,
        subscribed(floor.target, "other") as other,
    ):
        text = {"text": 'say "hi" \\ \u00e9'}  # escapes are forwarded as they came
        await asyncio.to_thread(client.trigger, ["bench", "other", "nobody"], "greet", text)
        for ws, channel in ((bench, "bench"), (other, "other")):
            message = await received(ws)
            assert (message["event"], message["channel"]) == ("greet", channel)
            assert json.loads(message["data"]) == text
        batch = [
            {"channel": "other", "name": "first", "data": "1"},
            {"channel": "bench", "name": "second", "data": "2"},
        ]
        await asyncio.to_thread(client.trigger_batch, batch)
        assert await received(bench) == {"event": "second", "channel": "bench", "data": "2"}
        assert await received(other) == {"event": "first", "channel": "other", "data": "1"}
        await bench.send(json.dumps({"event": "pusher:ping", "data": {}}))
        assert await received(bench) == {"event": "pusher:pong", "data": "{}"}
        await asyncio.wait_for(bench.ping(), WAIT)  # a Ping frame is answered with a Pong


def test_a_subscriber_that_does_not_read_gets_every_event_later(floor: ServerProc) -> None:
    """40 MB, far more than the socket buffers hold: the rest waits in the floor (its RSS
    shows it) until EPOLLOUT says the subscriber's socket takes more."""
    target, events, size = floor.target, 400, 100_000
    with socket.create_connection((target.host, target.port), timeout=WAIT) as sub:
        key = base64.b64encode(os.urandom(16)).decode()
        sub.sendall(
            f"GET /app/{target.key}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        parser, buffered = FrameParser(), b""
        while b"\r\n\r\n" not in buffered:
            buffered += sub.recv(65536)
        head, _, rest = buffered.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        messages = parser.feed(rest)
        subscribe = json.dumps({"event": "pusher:subscribe", "data": {"channel": "slow"}})
        sub.sendall(client_frame(1, subscribe.encode()))
        while len(messages) < 2:
            messages += parser.feed(sub.recv(65536))
        assert b"subscription_succeeded" in messages[1][1]
        with socket.create_connection((target.host, target.port), timeout=WAIT) as api:
            for seq in range(events):
                api.sendall(trigger_request(target, ["slow"], event_data(size, seq)))
                answer = b""
                while not answer.endswith(b"{}"):
                    answer += api.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200")
        assert floor.rss_bytes() > 16 * 2**20
        delivered: list[tuple[int, bytes]] = []
        while len(delivered) < events:
            delivered += parser.feed(sub.recv(1 << 20))
    assert [json.loads(p)["data"].split("~")[2] for _, p in delivered] == [
        str(seq) for seq in range(events)
    ]


def load(target: Target, request: bytes, reconnect: bool = False) -> dict[str, Any]:
    out = run_httpgen(HttpLoad(target.host, target.port, request, 4, 0.3, reconnect), None)
    assert out["finished_ns"] > out["started_ns"]
    return out


def test_httpgen_counts_answers_and_connections(floor: ServerProc) -> None:
    target = floor.target
    request = trigger_request(target, ["nobody"], event_data(200))
    kept = load(target, request)
    assert kept["ok"] == kept["sent"] > 0
    assert kept["non2xx"] == kept["errors"] == kept["reconnects"] == 0

    fresh = load(target, request, reconnect=True)
    assert fresh["ok"] == fresh["sent"] > 0 and fresh["errors"] == 0
    assert fresh["reconnects"] >= fresh["ok"] - 4  # every answer but each connection's last

    # The server closes after each answer: a kept-alive client opens a new connection.
    closing = load(target, trigger_request(target, ["nobody"], "d", close=True))
    assert closing["ok"] == closing["sent"] > 0 and closing["errors"] == 0
    assert closing["reconnects"] >= closing["ok"] - 4

    missing = load(target, signed_post(replace(target, app_id="1"), "nowhere", b"{}"))
    assert missing["non2xx"] == missing["sent"] > 0 and missing["ok"] == 0
    assert missing["statuses"] == {"404": missing["sent"]}
