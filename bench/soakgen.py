"""One load-generator process of the soak (``python -m bench.soak``): idle pusher-js-like clients.

Each process holds its share of the connections from its own loopback source address
(127.0.0.2, 127.0.0.3, ...): the kernel picks ephemeral ports per source address, so K
generators have K times ``ip_local_port_range`` to draw from. Every client does what an idle
pusher-js client does: it waits for ``pusher:connection_established``, subscribes to one
public channel, answers ``pusher:ping`` with ``pusher:pong`` and WebSocket Ping frames with
Pong (a browser's WebSocket answers those itself), and otherwise only counts what it
receives. The clients are picows (compiled): one Python process holds ~15,000 of them.

The orchestrator drives the process over a pipe; each command answers one dict:
``connect`` (open ``count`` connections at ``rate`` per second, at most ``concurrency``
handshakes in flight, retrying refused ones), ``stats``, ``await_event`` (wait until every
live connection has received the broadcast, or the timeout), ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import picows

__all__ = ["EVENT", "GeneratorProc"]

EVENT = "soak-broadcast"  # the name of the one event triggered at the end of the hold
_EVENT = b'"' + EVENT.encode() + b'"'
_PONG = b'{"event":"pusher:pong","data":{}}'
_PING = b'"pusher:ping"'
_ESTABLISHED = b'"pusher:connection_established"'
_SUCCEEDED = b'"pusher_internal:subscription_succeeded"'
_ERROR = b'"pusher:error"'
# Linux: pick the ephemeral port at connect() from the whole 4-tuple, not at bind() (which
# would make every bound source port unique machine-wide for that address).
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TEXT = picows.WSMsgType.TEXT


class Counters:
    """What every client of this process adds to."""

    __slots__ = ("events", "first_event_ns", "last_event_ns", "live", "lost", "pings", "ws_pings")

    def __init__(self) -> None:
        self.live = 0  # subscribed and still open
        self.lost = 0  # closed after being subscribed
        self.pings = 0  # pusher:ping answered with pusher:pong
        self.ws_pings = 0  # WebSocket Ping frames answered with Pong
        self.events = 0  # broadcast events received (EVENT)
        self.first_event_ns = 0
        self.last_event_ns = 0


class Client(picows.WSListener):
    """One connection's protocol state: subscribing until ``ready`` resolves, then idle."""

    __slots__ = ("_subscribe", "counters", "ready", "transport", "waiter")

    def __init__(self, counters: Counters, subscribe: bytes, waiter: asyncio.Event) -> None:
        super().__init__()
        self.counters = counters
        self._subscribe = subscribe
        self.waiter = waiter  # set when the process has seen the broadcast on every client
        self.transport: picows.WSTransport | None = None
        self.ready: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == TEXT:
            payload = frame.get_payload_as_bytes()
            if self.ready is None:  # live: the only frames an idle client sees
                self._live_frame(transport, payload)
            else:
                self._handshake(transport, payload)
        elif kind == picows.WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            self.counters.ws_pings += 1
        elif kind == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _live_frame(self, transport: picows.WSTransport, payload: bytes) -> None:
        counters = self.counters
        if _PING in payload:
            transport.send(TEXT, _PONG)
            counters.pings += 1
        elif _EVENT in payload:
            counters.last_event_ns = time.monotonic_ns()
            counters.first_event_ns = counters.first_event_ns or counters.last_event_ns
            counters.events += 1
            if counters.events >= counters.live:
                self.waiter.set()

    def _handshake(self, transport: picows.WSTransport, payload: bytes) -> None:
        ready = self.ready
        assert ready is not None
        if _SUCCEEDED in payload:
            self.ready = None  # from now on the client is live (and holds no future)
            self.counters.live += 1
            if not ready.done():
                ready.set_result(None)
        elif _ESTABLISHED in payload:
            transport.send(TEXT, self._subscribe)
        elif _ERROR in payload and not ready.done():
            ready.set_exception(RuntimeError(payload[:200].decode(errors="replace")))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.transport = None
        if self.ready is None:
            self.counters.live -= 1
            self.counters.lost += 1
        elif not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribed"))


class _Process:
    def __init__(self, source: str) -> None:
        self.source = source
        self.counters = Counters()
        self.clients: list[Client] = []
        self.waiter = asyncio.Event()

    async def _socket(self, url: Any) -> socket.socket:
        """picows' socket factory: bound to this process's source address, then connected."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
            sock.bind((self.source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
        except BaseException:
            sock.close()  # a refused attempt must not keep its descriptor until GC
            raise
        return sock

    async def _open(self, url: str, subscribe: bytes, wait_s: float) -> None:
        client = Client(self.counters, subscribe, self.waiter)
        transport, _ = await picows.ws_connect(
            lambda: client,
            url,
            socket_factory=self._socket,
            websocket_handshake_timeout=wait_s,
            enable_auto_pong=False,  # answered (and counted) in Client.on_ws_frame
            read_buffer_init_size=1024,  # picows grows it on demand; 16 KiB x 15k is waste
            max_frame_size=1 << 20,
        )
        try:
            if client.ready is not None:
                await asyncio.wait_for(asyncio.shield(client.ready), wait_s)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        self.clients.append(client)

    async def connect(
        self,
        url: str,
        channel: str,
        count: int,
        rate: float,
        concurrency: int,
        wait_s: float,
        retries: int,
    ) -> dict[str, Any]:
        subscribe = b'{"event":"pusher:subscribe","data":{"channel":"%s"}}' % channel.encode()
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []
        attempts = 0

        async def one() -> None:
            nonlocal attempts
            error = ""
            for attempt in range(retries + 1):
                if attempt:  # back off before retrying a refused or failed attempt
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                    await gate.acquire()
                attempts += 1
                try:
                    await self._open(url, subscribe, wait_s)
                    return
                except (OSError, TimeoutError, RuntimeError, picows.WSError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                finally:
                    gate.release()
            errors.append(error)

        started = time.monotonic()
        tasks = []
        for index in range(count):
            # Pacing, not synchronisation: the i-th connection starts no sooner than i/rate s.
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        return {
            "ok": count - len(errors),
            "failed": len(errors),
            "retried": attempts - count,
            "errors": errors[:3],
            "seconds": time.monotonic() - started,
        }

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {name: getattr(c, name) for name in Counters.__slots__}

    async def await_event(self, wait_s: float) -> dict[str, Any]:
        """Wait (bounded) until every live client has received the broadcast."""
        if self.counters.events < self.counters.live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.waiter.wait(), wait_s)
        return self.stats()

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.disconnect(graceful=False)
        self.clients.clear()


def _main(pipe: Connection, source: str) -> None:
    # Ctrl-C goes to the orchestrator only: it ends the generators itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_serve(pipe, source))


async def _serve(pipe: Connection, source: str) -> None:
    proc = _Process(source)
    loop = asyncio.get_running_loop()
    while True:
        try:
            command, args = await loop.run_in_executor(None, pipe.recv)
        except (EOFError, OSError):  # the orchestrator is gone: drop everything and exit
            proc.close()
            return
        try:
            if command == "connect":
                reply = await proc.connect(**args)
            elif command == "stats":
                reply = proc.stats()
            elif command == "await_event":
                reply = await proc.await_event(**args)
            elif command == "quit":
                proc.close()
                pipe.send({})
                return
            else:
                reply = {"error": f"unknown command {command!r}"}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(reply)


class GeneratorProc:
    """The orchestrator's handle on one generator process (``multiprocessing``, spawned)."""

    def __init__(self, source: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.source = source
        self.pipe, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(theirs, source), daemon=True)
        self.proc.start()
        theirs.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, command: str, **args: Any) -> None:
        self.pipe.send((command, args))

    def reply(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The answer to the last command, or ``None`` if none came within ``timeout``."""
        if timeout is not None and not self.pipe.poll(timeout):
            return None
        answer: dict[str, Any] = self.pipe.recv()
        if "error" in answer:
            raise RuntimeError(f"generator {self.source}: {answer['error']}")
        return answer

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        self.send(command, **args)
        answer = self.reply()
        assert answer is not None
        return answer

    def stop(self) -> None:
        """Quit (the process drops its connections), then kill it if it does not exit."""
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                self.send("quit")
                self.pipe.poll(10)
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
