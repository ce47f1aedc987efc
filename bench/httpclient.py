"""A minimal keep-alive HTTP/1.1 client for triggering events, and the publishing loops.

aiohttp's client costs tens of microseconds per request, which would make the generator the
bottleneck of the HTTP API scenario; this client writes pre-built request bytes on a raw
asyncio protocol and parses only the status line and ``Content-Length``. One request is in
flight per connection (no pipelining); concurrency is the number of connections.

* :func:`closed_loop` - ``concurrency`` publishers, each sending the next request as soon as
  the previous one is answered ("as fast as the server takes them").
* :func:`paced` - an open loop at a fixed rate whose requests are built (and timestamped)
  right before they are written, for the latency scenario.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["HttpConn", "PublishResult", "closed_loop", "open_pool", "paced"]


class _Link(asyncio.Protocol):
    """One TCP connection of an :class:`HttpConn` (a new one after ``Connection: close``)."""

    def __init__(self, owner: HttpConn) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.owner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.owner.link is self:
            self.owner.lost()


class HttpConn:
    """One keep-alive client connection; :meth:`request` returns the response status.

    A server that answers ``Connection: close`` (soketi closes after every HTTP API response)
    gets a new connection for the next request, as any client of it would.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.link: _Link | None = None
        self._close_after = False
        self.reconnects = 0

    def lost(self) -> None:
        self.link = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("HTTP connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            total = end + 4 + int(head[at + 15 : stop if stop >= 0 else len(head)])
        elif b"chunked" in head:
            last = buf.find(b"0\r\n\r\n", end + 4)
            if last < 0:
                return
            total = last + 5
        else:
            total = end + 4
        if len(buf) < total:
            return
        status = int(head[9:12])
        self._close_after = b"connection: close" in head
        del buf[:total]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    async def open(self) -> None:
        self.close()
        self._close_after = False
        self._buf.clear()
        link = _Link(self)
        self.link = link
        await asyncio.get_running_loop().create_connection(lambda: link, self._host, self._port)

    async def request(self, raw: bytes) -> int:
        if self._close_after:
            self.reconnects += 1
            await self.open()
        link = self.link
        if link is None or link.transport is None:
            raise ConnectionError("HTTP connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        link.transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        link, self.link = self.link, None
        if link is not None and link.transport is not None:
            link.transport.close()


async def open_pool(host: str, port: int, size: int) -> list[HttpConn]:
    pool = [HttpConn(host, port) for _ in range(size)]
    for conn in pool:
        await conn.open()
    return pool


@dataclass
class PublishResult:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    started: int = 0  # monotonic ns of the first request
    finished: int = 0  # monotonic ns of the last response
    statuses: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0  # connections the server closed after a response (Connection: close)

    def count(self, status: int | str) -> None:
        self.sent += 1
        if status == 200:
            self.ok += 1
        else:
            self.errors += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def closed_loop(
    pool: list[HttpConn], requests: list[bytes], duration: float
) -> PublishResult:
    """Each connection sends requests back to back (cycling ``requests``) for ``duration`` s."""
    result = PublishResult(started=time.monotonic_ns())
    deadline = time.monotonic() + duration
    source = itertools.cycle(requests)

    async def publisher(conn: HttpConn) -> None:
        while time.monotonic() < deadline:
            try:
                result.count(await conn.request(next(source)))
            except ConnectionError as exc:
                result.count(type(exc).__name__)
                return

    await asyncio.gather(*(publisher(conn) for conn in pool))
    result.finished = time.monotonic_ns()
    return result


async def paced(
    pool: list[HttpConn], build: Callable[[int], bytes], rate: float, duration: float
) -> PublishResult:
    """``rate`` requests per second for ``duration`` s; ``build(seq)`` stamps each one."""
    result = PublishResult(started=time.monotonic_ns())
    idle: asyncio.Queue[HttpConn] = asyncio.Queue()
    for conn in pool:
        idle.put_nowait(conn)
    tasks: set[asyncio.Task[None]] = set()

    async def send(conn: HttpConn, seq: int) -> None:
        try:
            result.count(await conn.request(build(seq)))
        except ConnectionError as exc:
            result.count(type(exc).__name__)
        idle.put_nowait(conn)

    start = time.monotonic()
    for seq in range(max(1, round(rate * duration))):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        task = asyncio.ensure_future(send(conn, seq))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.finished = time.monotonic_ns()
    return result
