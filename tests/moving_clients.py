"""Many light Pusher clients that move to another node when closed, as pusher-js behind a load
balancer does: for the drain test's thousands of real connections (tests/test_drain_cluster.py).

Ownership rule: every socket a :class:`Fleet` opens is closed by :meth:`Fleet.close`.

One :class:`MovingClient` per client: an :class:`asyncio.Protocol` speaking just enough RFC 6455
(masked text frames out; text, ping and close frames in) and Pusher (subscribe, presence auth,
``pusher:pong``), so that a test process holds 2,000 of them without aiohttp's cost per
connection. When the server closes it, it waits what pusher-js waits for that code
(:func:`pusher_js_delay`, measured in tests/e2e/test_reconnect_delays.py) and connects to the
next node in its list, which stands for the load balancer sending it elsewhere. Each
arrival is stamped with the loop's clock when ``pusher:connection_established`` comes in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from kanal.protocol.signatures import sign_channel
from tests.conftest import APP_KEY, APP_SECRET
from tests.wsclient import client_frame

__all__ = ["Arrival", "Fleet", "MovingClient", "Tally", "pusher_js_delay"]

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
QUERY = "protocol=7&client=js&version=8.4.0"


def pusher_js_delay(code: int) -> float | None:
    """Seconds pusher-js waits before reconnecting after ``code`` (None: it gives up):
    protocol.ts ``getCloseAction`` and connection_manager.ts ``retryIn``."""
    if 4000 <= code < 4100:
        return None
    if 4200 <= code < 4300:
        return 0.0
    return 1.0


@dataclass(eq=False)
class Arrival:
    """One connection of a client: where, when established and subscribed, how it ended."""

    port: int
    connecting: float = 0.0  # when the client started connecting (its reconnect's arrival)
    connected: float = 0.0  # TCP handshake done (the node's kernel accepted it)
    established: float = 0.0
    subscribed: float = 0.0
    closed: float = 0.0
    code: int | None = None


class MovingClient:
    """One client: its channel (a presence member when ``user_id`` is set), the nodes the
    "load balancer" sends it to in turn, and each connection it had (:attr:`arrivals`)."""

    def __init__(
        self, tally: Tally, ports: list[int], channel: str, user_id: str | None = None
    ) -> None:
        self.tally = tally
        self.ports = ports
        self.channel = channel
        self.user_id = user_id
        self.arrivals: list[Arrival] = []
        self.link: _Link | None = None
        self.closing = False  # the test is over: no more reconnects
        self._tasks: set[asyncio.Future[None]] = set()

    async def connect(self) -> None:
        port = self.ports[min(len(self.arrivals), len(self.ports) - 1)]
        loop = asyncio.get_running_loop()
        arrival = Arrival(port, connecting=loop.time())
        self.arrivals.append(arrival)
        try:
            await loop.create_connection(lambda: _Link(self, arrival), "127.0.0.1", port)
        except OSError:
            self.ended(arrival, None)

    def subscribe_message(self, socket_id: str) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": self.channel}
        channel_data = None
        if self.user_id is not None:
            channel_data = orjson.dumps({"user_id": self.user_id}).decode()
            data["channel_data"] = channel_data
        if self.user_id is not None or self.channel.startswith("private-"):
            data["auth"] = sign_channel(
                app_key=APP_KEY,
                app_secret=APP_SECRET,
                socket_id=socket_id,
                channel=self.channel,
                channel_data=channel_data,
            )
        return {"event": "pusher:subscribe", "data": data}

    def ended(self, arrival: Arrival, code: int | None) -> None:
        """A connection ended (``None``: refused before the upgrade): reconnect as pusher-js."""
        if arrival.code is not None:
            return
        loop = asyncio.get_running_loop()
        arrival.code, arrival.closed = (1006 if code is None else code), loop.time()
        self.tally.count(self.tally.closed, arrival.code)
        delay = pusher_js_delay(arrival.code)
        if delay is not None and not self.closing:
            loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        if not self.closing:
            task = asyncio.ensure_future(self.connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self.closing = True
        if self.link is not None:
            self.link.abort()


class _Link(asyncio.Protocol):
    """One TCP connection of a :class:`MovingClient`: the upgrade, then frames."""

    def __init__(self, client: MovingClient, arrival: Arrival) -> None:
        self.client = client
        self.arrival = arrival
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.arrival.connected = asyncio.get_running_loop().time()
        if self.client.closing:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.client.link = self
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /app/{APP_KEY}?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1:{self.arrival.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            del self.buffer[: end + 4]
            if not status.startswith(b"HTTP/1.1 101 "):
                self._end(None)  # e.g. 503 from a draining node
                return
            self.upgraded = True
        while (frame := self._next_frame()) is not None:
            opcode, payload = frame
            if opcode == TEXT:
                self._message(orjson.loads(payload))
            elif opcode == PING:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._send(CLOSE, payload[:2])
                self._end(code)
                return

    def _next_frame(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        length, start = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < start + length:
            return None
        opcode, payload = buf[0] & 0x0F, bytes(buf[start : start + length])
        del buf[: start + length]
        return opcode, payload

    def _message(self, message: dict[str, Any]) -> None:
        event, now = message.get("event"), asyncio.get_running_loop().time()
        if event == "pusher:connection_established":
            self.arrival.established = now
            socket_id = orjson.loads(message["data"])["socket_id"]
            self._send(TEXT, orjson.dumps(self.client.subscribe_message(socket_id)))
        elif event == "pusher_internal:subscription_succeeded":
            self.arrival.subscribed = now
            self.client.tally.count(self.client.tally.subscribed, self.arrival.port)
        elif event == "pusher:ping":
            self._send(TEXT, b'{"event":"pusher:pong","data":{}}')

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def _end(self, code: int | None) -> None:
        if self.transport is not None:
            self.transport.close()
        self.client.ended(self.arrival, code)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.ended(self.arrival, 1006)  # no-op after a Close frame

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Tally:
    """What the clients of a fleet did, counted as it happens: a test waits for a count
    instead of looking at every client each time one of them changes."""

    def __init__(self) -> None:
        self.subscribed: Counter[int] = Counter()  # port -> subscriptions there
        self.closed: Counter[int] = Counter()  # close code -> connections closed with it
        self._changed = asyncio.Event()

    def count(self, counter: Counter[int], key: int) -> None:
        counter[key] += 1
        self._changed.set()

    async def until(self, condition: Callable[[], bool], within: float) -> None:
        """Wait until ``condition()`` holds (checked after every change), at most ``within``."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class Fleet:
    """Clients opened together (at most ``parallel`` handshakes at a time), closed together."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.clients: list[MovingClient] = []

    def client(self, ports: list[int], channel: str, user_id: str | None = None) -> MovingClient:
        made = MovingClient(self.tally, ports, channel, user_id)
        self.clients.append(made)
        return made

    async def open(self, clients: list[MovingClient], *, parallel: int = 100) -> None:
        """Connect ``clients`` (made by :meth:`client`) and wait until each has subscribed
        once more than before (on its first node)."""
        tally = self.tally
        goal = sum(tally.subscribed.values()) + len(clients)
        gate = asyncio.Semaphore(parallel)  # handshakes in flight

        async def one(client: MovingClient) -> None:
            async with gate:
                before = client.arrivals[-1].subscribed if client.arrivals else 0.0
                await client.connect()
                await tally.until(lambda: client.arrivals[-1].subscribed != before, 30)

        await asyncio.gather(*(one(c) for c in clients))
        await tally.until(lambda: sum(tally.subscribed.values()) >= goal, 30)

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
