"""The staggered drain of ``kanal serve`` on SIGTERM / SIGINT (kanal.drain; issue 17, item 1),
on real subprocesses and real signals: /ready says 503 at once while the listener still
answers; upgrades are accepted during ``drain_grace`` and refused with 503 after it; the
connections are closed with 4200 spread over ``drain_seconds`` while the HTTP API is still
served; the process exits 0. A second signal ends it at once. The cluster-wide measurement
(2,000 connections, two nodes) is tests/test_drain_cluster.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from functools import partial
from pathlib import Path

import aiohttp

from kanal.drain import batch_ends
from tests.cluster_nodes import NodeProcess, free_port, poll, spawn_kanal
from tests.conftest import APP_KEY, RunningServer
from tests.wsclient import Clients, WsClient, data_of, trigger

GRACE = 1.5  # drain_grace of the node under test
DRAIN = 2.0  # drain_seconds
CLIENTS = 20  # one per batch: 2.0 s / 0.1 s
POLL = 0.01  # seconds between two probes of a state the node reaches by itself


def test_batches_are_even() -> None:
    assert batch_ends(10, 4) == [3, 5, 8, 10]
    assert batch_ends(3, 10) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]  # spread, from the first on
    assert batch_ends(1, 100)[0] == 1  # a lone connection goes first: the node stops sooner
    assert batch_ends(0, 5) == [0] * 5
    for total, batches in ((2000, 50), (7, 3), (1, 1)):
        ends = batch_ends(total, batches)
        sizes = [b - a for a, b in zip([0, *ends], ends, strict=False)]
        assert ends[-1] == total and max(sizes) - min(sizes) <= 1


async def test_a_hand_over_releases_the_connection_before_it_closes(
    kanal_server: RunningServer,
) -> None:
    """The drain's close: the hub lets go (member_removed to the others) while the Close
    still waits for ``ready``; then the client gets pusher:error 4200 and Close 4200."""
    room = "presence-room"
    async with Clients() as clients:
        alice, bob = await clients.connect(kanal_server), await clients.connect(kanal_server)
        await alice.join_presence(room, "alice")
        await bob.join_presence(room, "bob")
        await alice.expect("pusher_internal:member_added", room)
        [conn] = [
            c for c in kanal_server.server.websocket.connections if c.socket_id == alice.socket_id
        ]
        go = asyncio.Event()

        async def ready() -> None:
            await go.wait()

        conn.hand_over(4200, "bye", ready)
        removed = await bob.expect("pusher_internal:member_removed", room)
        assert data_of(removed)["user_id"] == "alice"
        assert not kanal_server.hub.is_subscribed(alice.socket_id, room)
        await alice.assert_silent()  # no Close while ``ready`` has not returned
        go.set()
        error = await alice.expect_error(4200)
        assert error["data"]["message"] == "bye"
        assert await alice.expect_closed() == 4200


async def node(tmp_path: Path, *args: str) -> NodeProcess:
    """``kanal serve`` (memory adapter, development app) on a free port, ready."""
    port = free_port()
    log = tmp_path / f"kanal-{port}.log"
    return await spawn_kanal(["serve", "--port", str(port), *args], log, port)


async def get_status(session: aiohttp.ClientSession, node: NodeProcess, path: str) -> int:
    async with session.get(f"{node.base_url}{path}") as response:
        return response.status


async def upgrade_status(node: NodeProcess) -> int:
    """The status line's code of a WebSocket upgrade (101, or 503 while draining)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_sigterm_drains_then_exits_0(tmp_path: Path) -> None:
    kanal = await node(tmp_path, "--drain-grace", str(GRACE), "--drain-seconds", str(DRAIN))
    loop = asyncio.get_running_loop()
    async with Clients() as clients, aiohttp.ClientSession() as session:
        members = [await clients.connect(kanal) for _ in range(CLIENTS)]
        for client in members:
            await client.subscribe("news")
        signalled = loop.time()
        os.kill(kanal.pid, signal.SIGTERM)

        # 1. /ready says 503 (the process handles the signal within milliseconds); the
        # listener still answers, and upgrades are still accepted.
        while await get_status(session, kanal, "/ready") != 503:
            assert loop.time() - signalled < GRACE, "no 503 from /ready within drain_grace"
            await asyncio.sleep(POLL)
        assert loop.time() - signalled < GRACE
        assert await get_status(session, kanal, "/") == 200
        late = await clients.connect(kanal)  # through the load balancer before it noticed
        assert loop.time() - signalled < GRACE, "too slow to see the upgrade accepted"

        # 2. After drain_grace, upgrades are refused with 503.
        while (status := await upgrade_status(kanal)) == 101:
            assert loop.time() - signalled < GRACE + 1, "upgrades still accepted"
            await asyncio.sleep(POLL)
        assert status == 503
        assert loop.time() - signalled >= GRACE

        # 3. The connections close with 4200 over drain_seconds, while the API is served.
        closing = [asyncio.ensure_future(timed_close(c)) for c in [*members, late]]
        await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
        response = await trigger(kanal, "news", "still-served", json.dumps({}))
        assert response.status == 200
        assert not all(task.done() for task in closing), "the API answered after the drain"
        closes = await asyncio.gather(*closing)
        assert {code for code, _ in closes} == {4200}
        times = sorted(at - signalled for _, at in closes)
        assert times[0] >= GRACE
        # One connection per 0.1 s batch: the closes span the window rather than one moment.
        assert times[-1] - times[0] >= 0.75 * DRAIN, times
        assert await kanal.wait(10) == 0, kanal.log()
    assert "shutdown: 21 connections closed with 4200 in" in kanal.log()


async def timed_close(client: WsClient) -> tuple[int | None, float]:
    code = await client.expect_closed(within=GRACE + DRAIN + 10)
    return code, asyncio.get_running_loop().time()


async def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    kanal = await node(tmp_path, "--drain-grace", "30", "--drain-seconds", "30")
    async with aiohttp.ClientSession() as session:
        os.kill(kanal.pid, signal.SIGINT)
        ready = partial(get_status, session, kanal, "/ready")  # 503: the first was handled
        await poll(ready, lambda status: status == 503, what="the drain to begin")
    loop = asyncio.get_running_loop()
    second = loop.time()
    os.kill(kanal.pid, signal.SIGTERM)
    assert await kanal.wait(5) == -signal.SIGTERM
    elapsed = loop.time() - second
    print(f"\nexited {elapsed * 1000:.0f} ms after the second signal")
    assert elapsed < 1.0
