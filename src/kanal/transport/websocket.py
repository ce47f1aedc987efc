"""WebSocket endpoint ``{prefix}/app/{key}`` on aiohttp (PROTOCOL.md §1).

Ownership rule: this module owns the socket. It turns frames into ``Hub`` calls and hub
output into bytes on the wire; it holds no Pusher rules.

Outbound path: the hub hands us complete WebSocket frames (built once per broadcast by
:func:`text_frame`). They are queued per connection and written in one ``writelines`` per
connection per event-loop iteration (:class:`Coalescer`), straight to the asyncio transport.
A connection whose unsent output passes ``max_output_buffer_bytes`` is a slow consumer and
is closed with 4100 instead of being buffered without limit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Callable

from aiohttp import WSMsgType, web

from kanal.apps import AppStore
from kanal.hub import Hub
from kanal.protocol.errors import CloseCode
from kanal.protocol.handshake import check_handshake

__all__ = ["Coalescer", "WebSocketConnection", "WebSocketEndpoint", "new_socket_id", "text_frame"]

log = logging.getLogger("kanal.websocket")

_PONG_EMPTY = b"\x8a\x00"
_PING_EMPTY = b"\x89\x00"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final RFC 6455 text frame (server-to-client frames are never masked)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + struct.pack("!H", length) + payload
    return b"\x81\x7f" + struct.pack("!Q", length) + payload


def _control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload[:125]


def new_socket_id() -> str:
    """PROTOCOL.md §1.3 [choice]: two random integers in [1, 10^10), ``^\\d+\\.\\d+$``."""
    return f"{secrets.randbelow(10**10 - 1) + 1}.{secrets.randbelow(10**10 - 1) + 1}"


class Coalescer:
    """Collects frames per connection and flushes them once per event-loop iteration."""

    def __init__(self) -> None:
        self._pending: dict[WebSocketConnection, list[bytes]] = {}
        self._scheduled = False

    def queue(self, conn: WebSocketConnection, frame: bytes) -> None:
        frames = self._pending.get(conn)
        if frames is None:
            self._pending[conn] = [frame]
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            frames.append(frame)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for conn, frames in pending.items():
            conn.write(frames)

    def flush_one(self, conn: WebSocketConnection) -> None:
        frames = self._pending.pop(conn, None)
        if frames:
            conn.write(frames)


class WebSocketConnection:
    """The hub's :class:`~kanal.hub.Connection` for one aiohttp WebSocket."""

    __slots__ = ("_closing", "_coalescer", "_limit", "_transport", "_ws", "socket_id")

    def __init__(
        self,
        socket_id: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        coalescer: Coalescer | None,
        limit: int,
    ) -> None:
        self.socket_id = socket_id
        self._ws = ws
        self._transport = transport
        self._coalescer = coalescer
        self._limit = limit
        self._closing = False

    def send(self, frame: bytes) -> None:
        if self._closing:
            return
        if self._coalescer is None:
            self.write([frame])
        else:
            self._coalescer.queue(self, frame)

    def write(self, frames: list[bytes]) -> None:
        transport = self._transport
        if self._closing or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self._limit:
            log.warning("closing slow consumer %s", self.socket_id)
            self.close(CloseCode.OVER_CAPACITY, "Slow consumer: output buffer limit exceeded")
            return
        if len(frames) == 1:
            transport.write(frames[0])
        else:
            transport.writelines(frames)

    def probe(self) -> None:
        self.send(_PING_EMPTY)

    def pong(self, payload: bytes) -> None:
        self.send(_control_frame(0xA, payload) if payload else _PONG_EMPTY)

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        if self._coalescer is not None:  # the pusher:error frame goes out before the close
            self._coalescer.flush_one(self)
        self._closing = True
        # drain=False: a slow consumer never reads, and waiting for its close frame would keep
        # the connection (and its memberships) alive for ever.
        closing = self._ws.close(code=code, message=reason.encode()[:123], drain=False)
        task = asyncio.ensure_future(closing)
        task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()


class WebSocketEndpoint:
    """aiohttp handler for ``/app/{key}`` and for upgrades on unknown paths (4005)."""

    def __init__(
        self,
        hub: Hub,
        apps: AppStore,
        *,
        max_frame_bytes: int,
        max_output_buffer_bytes: int,
        strict_protocol: bool,
        trust_proxy_headers: bool = False,
        coalesce_writes: bool = True,
        socket_id: Callable[[], str] = new_socket_id,
    ) -> None:
        self._trust_proxy = trust_proxy_headers
        self._hub = hub
        self._apps = apps
        self._max_frame = max_frame_bytes
        self._limit = max_output_buffer_bytes
        self._strict = strict_protocol
        self._socket_id = socket_id
        # coalesce_writes = false writes every frame at once (for comparison, docs/performance.md)
        self.coalescer: Coalescer | None = Coalescer() if coalesce_writes else None

    async def _accept(
        self, request: web.Request
    ) -> tuple[web.WebSocketResponse, WebSocketConnection]:
        ws = web.WebSocketResponse(
            autoping=False,
            compress=False,
            heartbeat=None,
            # aiohttp refuses sizes >= max_msg_size; LIMITS.md closes only *above* the cap.
            max_msg_size=self._max_frame + 1 if self._max_frame else 0,
        )
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        conn = WebSocketConnection(self._socket_id(), ws, transport, self.coalescer, self._limit)
        return ws, conn

    def _is_secure(self, request: web.Request) -> bool:
        """TLS here, or (when trusted) at the proxy in front of us (docs/deployment.md)."""
        if request.secure:
            return True
        forwarded = request.headers.get("X-Forwarded-Proto", "")
        return self._trust_proxy and forwarded.split(",")[0].strip().lower() == "https"

    async def handle_unknown_path(self, request: web.Request) -> web.StreamResponse:
        """PROTOCOL.md §1.2 step 1: refuse with 4005 after the upgrade, not an HTTP 404."""
        ws, conn = await self._accept(request)
        self._hub.refuse(conn, CloseCode.PATH_NOT_FOUND, "Path not found")
        await self._drain(ws)
        return ws

    async def handle(self, request: web.Request) -> web.StreamResponse:
        app = self._apps.by_key(request.match_info["key"])
        ws, conn = await self._accept(request)
        refused = check_handshake(
            app,
            protocol=request.query.get("protocol"),
            secure=self._is_secure(request),
            origin=request.headers.get("Origin"),
            strict_protocol=self._strict,
        )
        if refused is not None:
            self._hub.refuse(conn, refused.close_code, refused.message)
            await self._drain(ws)
            return ws
        assert app is not None
        if not await self._hub.open(conn, app):
            await self._drain(ws)
            return ws
        try:
            await self._pump(ws, conn)
        finally:
            await self._hub.closed(conn.socket_id)
        return ws

    async def _pump(self, ws: web.WebSocketResponse, conn: WebSocketConnection) -> None:
        hub, socket_id = self._hub, conn.socket_id
        async for message in ws:
            kind = message.type
            if kind is WSMsgType.TEXT:
                await hub.receive(socket_id, message.data)
            elif kind is WSMsgType.PING:
                hub.activity(socket_id)
                conn.pong(message.data)
            elif kind in (WSMsgType.PONG, WSMsgType.BINARY):
                # Binary frames are not part of the protocol: ignored (PROTOCOL.md §2).
                hub.activity(socket_id)
            elif kind is WSMsgType.ERROR:
                log.debug("websocket %s error: %s", socket_id, ws.exception())

    async def _drain(self, ws: web.WebSocketResponse) -> None:
        """Wait for the client's close handshake after a refusal."""
        async for _ in ws:
            pass
