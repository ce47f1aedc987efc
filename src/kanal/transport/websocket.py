"""WebSocket endpoint ``{prefix}/app/{key}`` (protocol.md §1) on asyncio protocols.

Ownership rule: this module owns the socket after the upgrade. It turns frames into ``Hub``
calls and hub output into bytes on the wire; it holds no Pusher rules (those are in
``kanal.protocol``) and no framing rules (``frames``).

One small object per connection: :class:`WebSocketConnection` is both the asyncio protocol
of the socket and the hub's ``Connection``. It holds no task while idle; a task runs only
while inbound messages are being handled, so an idle connection costs its slots, its frame
reader and the transport (docs/performance.md, idle memory).

Outbound path: the hub hands us complete frames (built once per broadcast by
:func:`~kanal.transport.frames.text_frame`). They are queued per connection and written in
one ``writelines`` per connection per event-loop iteration (:mod:`~kanal.transport.coalescer`). A
connection whose unsent output passes ``max_output_buffer_bytes`` is a slow consumer and is
closed with 4100 instead of being buffered without limit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kanal import logs
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol import events
from kanal.protocol.errors import CloseCode, ConnectionRefused
from kanal.transport import frames
from kanal.transport.admission import Admission
from kanal.transport.coalescer import Coalescer
from kanal.transport.http11 import Request, Response
from kanal.transport.upgrade import DRAINING, websocket_accept

__all__ = ["Coalescer", "Ready", "WebSocketConnection", "WebSocketEndpoint", "new_socket_id"]

log = logging.getLogger("kanal.websocket")

_PING = frames.control_frame(frames.PING)
_PONG = frames.control_frame(frames.PONG)
_MAX_INBOX = 64  # messages waiting for the hub before the socket stops being read
CLOSE_TIMEOUT = 5.0  # seconds to wait for the client's Close reply before dropping the socket
#: what a hand-over's close waits for after the hub's cleanup (WebSocketConnection.hand_over)
Ready = Callable[[], Awaitable[None]]


def new_socket_id() -> str:
    """protocol.md §1.3 [choice]: two random integers in [1, 10^10), ``^\\d+\\.\\d+$``."""
    return f"{secrets.randbelow(10**10 - 1) + 1}.{secrets.randbelow(10**10 - 1) + 1}"


class WebSocketConnection(asyncio.Protocol):
    """One upgraded socket: the asyncio protocol and the hub's ``Connection`` at once."""

    __slots__ = (
        "_closer",
        "_closing",
        "_done",
        "_endpoint",
        "_failed",
        "_handover",
        "_inbox",
        "_reader",
        "_transport",
        "close_code",
        "socket_id",
    )

    def __init__(
        self, endpoint: WebSocketEndpoint, transport: asyncio.Transport, socket_id: str
    ) -> None:
        self.socket_id = socket_id
        self._endpoint = endpoint
        self._transport = transport
        self._reader = frames.FrameReader(endpoint.max_message)
        self._inbox: deque[str] | None = None  # not None while a task is handling messages
        self._closing = False  # a Close frame has been sent or received
        self._closer: asyncio.TimerHandle | None = None  # drops the socket if no Close reply
        self._done = False  # the hub has been (or is about to be) told the socket is gone
        self._failed = False  # a bad frame failed the connection (RFC 6455 §7.1.7)
        self.close_code = 1006  # the code sent or received; 1006 if none (RFC 6455 §7.1.5)
        self._handover: tuple[str, Ready] | None = None  # a close waiting for the hub's cleanup

    # --- the hub's Connection --------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self._closing:
            return
        endpoint = self._endpoint
        if endpoint.trace:
            logs.trace("out", self.socket_id, frames.describe(frame))
        coalescer = endpoint.coalescer
        if coalescer is None:
            self.write([frame])
        else:
            coalescer.queue(self, frame)

    def write(self, queued: list[bytes]) -> None:
        transport = self._transport
        if self._closing or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self._endpoint.output_limit:
            log.warning("closing slow consumer %s", self.socket_id)
            self.close(CloseCode.OVER_CAPACITY, "Slow consumer: output buffer limit exceeded")
            return
        if len(queued) == 1:
            transport.write(queued[0])
        else:
            transport.writelines(queued)

    def probe(self) -> None:
        self.send(_PING)

    def close(self, code: int, reason: str) -> None:
        """Send our Close, then wait (bounded) for the client's reply before closing TCP: closing
        at once could reset the connection and lose the Close frame (RFC 6455 §7.1.1)."""
        if self._closing:
            return
        coalescer = self._endpoint.coalescer
        if coalescer is not None:  # a pusher:error frame queued before the close goes first
            coalescer.flush_one(self)
        transport = self._transport
        self._closing = True
        self.close_code = code
        self._closer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
        if self._endpoint.trace:
            logs.trace("out", self.socket_id, f"[close {code} {reason}]")
        if not transport.is_closing():
            transport.write(frames.close_frame(code, reason))
        self._finish()

    @property
    def closing(self) -> bool:
        """A Close has been sent, received or (:meth:`hand_over`) decided."""
        return self._closing

    def hand_over(self, code: int, reason: str, ready: Ready) -> None:
        """Close with ``code`` only once the hub has let the connection go and ``ready()``
        has returned: the drain's close (:mod:`kanal.drain`). A client that reconnects at
        once, to another node, must find its memberships already released there, and their
        held webhooks (``ready``: written to Redis) ready to be cancelled by its return;
        closed first, it can rejoin before this node's cleanup, and a presence member that
        never left gets a ``member_removed`` webhook after the grace period."""
        if self._closing:
            return
        coalescer = self._endpoint.coalescer
        if coalescer is not None:  # what was queued before the decision still goes out
            coalescer.flush_one(self)
        self._closing = True  # nothing more is acted on or sent (RFC 6455 §5.5.1)
        self.close_code = code
        self._handover = (reason, ready)
        self._finish()

    async def _handed_over(self, reason: str, ready: Ready) -> None:
        await ready()
        transport = self._transport
        if not transport.is_closing():  # the client may have gone meanwhile
            self._closer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
            error = events.error_frame(self.close_code, reason)
            if self._endpoint.trace:
                logs.trace("out", self.socket_id, error.decode())
                logs.trace("out", self.socket_id, f"[close {self.close_code} {reason}]")
            close = frames.close_frame(self.close_code, reason)
            transport.writelines([frames.text_frame(error), close])

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failed:
            self._await_close_reply(data)
            return
        error: frames.FrameError | None = None
        try:
            messages = self._reader.feed(data)
        except frames.FrameError as failure:
            error, messages = failure, failure.messages  # what came before the bad frame
        for opcode, payload in messages:
            if opcode == frames.TEXT:
                self._text(payload)
            elif opcode == frames.CLOSE:
                self._client_closed(payload)  # what follows a Close is not read (§5.5.1)
                return
            elif not self._closing:
                self._endpoint.hub.activity(self.socket_id)
                if opcode == frames.PING:  # Binary frames are ignored (protocol.md §2)
                    self.send(frames.control_frame(frames.PONG, payload) if payload else _PONG)
        if error is not None:
            self._failed = True
            self.close(error.code, error.reason)
            self._await_close_reply(b"")  # this read may already hold the client's Close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._closer is not None:
            self._closer.cancel()
        self._finish()
        self._endpoint.gone(self)

    def abort(self) -> None:
        self._transport.abort()

    def pause_writing(self) -> None:
        """The write buffer's high-water mark is passed; ``write`` enforces the 4100 bound."""

    def resume_writing(self) -> None:
        """Nothing waits on the write buffer (see :meth:`pause_writing`)."""

    # --- inbound ---------------------------------------------------------------------------

    def _text(self, payload: bytes) -> None:
        if self._closing:
            return  # closing: nothing more from this client is acted on (RFC 6455 §5.5.1)
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self.close(1007, "Text frame is not valid UTF-8")  # RFC 6455 §8.1
            return
        if self._endpoint.trace:
            logs.trace("in", self.socket_id, text)
        inbox = self._inbox
        if inbox is None:
            self._inbox = deque((text,))
            self._endpoint.spawn(self._handle())
        else:
            inbox.append(text)
            if len(inbox) >= _MAX_INBOX:
                self._transport.pause_reading()

    def _await_close_reply(self, data: bytes) -> None:
        """After failing the connection: close TCP once the client's Close arrives (§7.1.1),
        instead of resetting it when the close timer runs out."""
        if self._reader.after_failure(data) is not None:
            self._transport.close()

    def _client_closed(self, payload: bytes) -> None:
        """The client's Close: echo a valid code (1000 for none), answer an invalid one with
        1002 or 1007 (§7.4.1, §8.1), unless it answers ours; then close TCP (§5.5.1)."""
        transport = self._transport
        if not self._closing:
            try:
                code, reason = frames.parse_close(payload), ""
            except frames.FrameError as error:
                code, reason = error.code, error.reason
            if self._endpoint.trace:
                logs.trace("in", self.socket_id, f"[close {code}]")
            self._closing = True
            self.close_code = code
            if not transport.is_closing():
                transport.write(frames.close_frame(1000 if code == 1005 else code, reason))
            self._finish()
        transport.close()

    def admit(self, app: App, origin: str | None, client: str) -> None:
        """Let the hub admit the connection; messages that arrive meanwhile wait their turn."""
        self._inbox = deque()
        self._endpoint.spawn(self._open(app, origin, client))

    async def _open(self, app: App, origin: str | None, client: str) -> None:
        try:
            try:
                admitted = await self._endpoint.hub.open(self, app, origin, client)
            except Exception:
                log.exception("could not admit %s", self.socket_id)
                self.close(CloseCode.RECONNECT, "Internal server error, reconnect")
                admitted = False
            if not admitted:
                self._finish()
            await self._handle()
        finally:
            self._inbox = None

    async def _handle(self) -> None:
        """Hand queued messages to the hub in order; tell the hub when the socket is gone."""
        hub, inbox = self._endpoint.hub, self._inbox
        try:
            while inbox and not self._done:
                await hub.receive(self.socket_id, inbox.popleft())
                if len(inbox) < _MAX_INBOX // 2 and not self._transport.is_closing():
                    self._transport.resume_reading()
        except Exception:  # a bug must cost this connection only, never the server
            log.exception("closing %s after an internal error", self.socket_id)
            self.close(1011, "Internal server error")  # RFC 6455 §7.4.1
        finally:
            self._inbox = None
            if self._done:
                await self._release()

    def _finish(self) -> None:
        """Memberships are released as soon as the socket is closing, not when TCP ends."""
        if self._done:
            return
        self._done = True
        if self._inbox is None:  # else the running _handle task tells the hub
            self._endpoint.spawn(self._release())

    async def _release(self) -> None:
        """Tell the hub the connection is gone, then send a close that waited for it."""
        await self._endpoint.hub.closed(self.socket_id, self.close_code)
        if self._handover is not None:
            reason, ready = self._handover
            self._handover = None
            await self._handed_over(reason, ready)


class WebSocketEndpoint:
    """Accepts upgrades: ``{prefix}/app/{key}``, and unknown paths (closed with 4005)."""

    def __init__(
        self,
        hub: Hub,
        admission: Admission,
        *,
        max_frame_bytes: int,
        max_output_buffer_bytes: int,
        coalesce_writes: bool = True,
        trace: bool = False,
        socket_id: Callable[[], str] = new_socket_id,
    ) -> None:
        self.hub = hub
        self.admission = admission
        self.max_message = max_frame_bytes  # limits.md §2: close 1009 only *above* the cap
        self.output_limit = max_output_buffer_bytes
        # [server] verbose: every frame in and out is logged (kanal.logs.trace); read once
        # per frame, so tracing costs one attribute test while off.
        self.trace = trace
        self._socket_id = socket_id
        # coalesce_writes = false writes every frame at once (for comparison, docs/performance.md)
        self.coalescer: Coalescer | None = Coalescer() if coalesce_writes else None
        self.connections: set[WebSocketConnection] = set()
        self.accepting = True  # false while draining: upgrades are answered 503
        self._tasks: set[asyncio.Task[None]] = set()
        self.quiet = asyncio.Event()  # set while no socket is open and no clean-up runs
        self.quiet.set()

    def app_key(self, path: str) -> str | None:
        """The key in ``{prefix}/app/{key}``, or None for any other path."""
        return self.admission.app_key(path)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        self.quiet.clear()
        task.add_done_callback(self._task_done)

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> None:
        """RFC 6455 §4.2: answer 101 (or 400/426; 503 while draining), then run the Pusher
        handshake checks."""
        accept = websocket_accept(request) if self.accepting else DRAINING
        if isinstance(accept, Response):
            transport.write(accept.encode(keep_alive=False))
            transport.close()
            return
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        conn = WebSocketConnection(self, transport, self._socket_id())
        transport.set_protocol(conn)
        self.connections.add(conn)
        self.quiet.clear()
        self._admit(conn, request)
        if rest:
            conn.data_received(rest)

    def _admit(self, conn: WebSocketConnection, request: Request) -> None:
        client = self.admission.client(request)
        app = self.admission.check(request, client)
        if isinstance(app, ConnectionRefused):
            self.hub.refuse(conn, app.close_code, app.message)
        else:
            conn.admit(app, request.headers.get("origin"), client)

    def gone(self, conn: WebSocketConnection) -> None:
        self.connections.discard(conn)
        self._check_quiet()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._check_quiet()

    def _check_quiet(self) -> None:
        if not self.connections and not self._tasks:
            self.quiet.set()

    async def abort_all(self) -> None:
        """Shutdown, after the grace period: drop the sockets left and let clean-ups end."""
        for conn in list(self.connections):
            conn.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
