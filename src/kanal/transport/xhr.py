"""pusher-js's HTTP transports on kanal's port: ``{prefix}/pusher/app/{key}/{server}/{session}``.

Ownership rule: this module owns the registry of HTTP sessions (:class:`XhrSession`, the hub's
``Connection`` for each), their routes, their CORS answers and their timers. The framing rules
are :mod:`kanal.protocol.xhr`'s; who may connect is :class:`Admission`'s, as for a WebSocket;
everything a session does after that is the hub's (``Hub.open`` / ``receive`` / ``activity``
/ ``closed``), so a session has a socket_id, channels, presence, client events, the activity
timeout, limits, metrics and webhooks exactly as a WebSocket connection has.

A session lives in the process that created it: in a cluster, the load balancer must send every
request of one session path to the same node (docs/scaling.md, "HTTP transports").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kanal import logs
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol import xhr
from kanal.protocol.errors import CloseCode, ConnectionRefused
from kanal.transport.admission import Admission
from kanal.transport.http_messages import BodyWriter, Request, Response
from kanal.transport.xhr_session import Receiver, XhrSession

__all__ = ["XhrEndpoint", "XhrSession"]

log = logging.getLogger("kanal.xhr")

_NOT_FOUND = Response(404, b"Not found")
# No cache may keep an answer, no browser may guess its type, and nginx must pass each piece
# on as it comes instead of buffering the response (its X-Accel-Buffering header).
_STREAM_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Accel-Buffering", "no"),
)
After = Callable[[], Awaitable[None]]


class XhrEndpoint:
    """Answers the three kinds of request (and their CORS preflights) of every session.

    Args:
        hub, admission: the node's hub, and the handshake checks every WebSocket gets.
        frame: the hub's ``frame`` (one broadcast's JSON to what a connection is handed);
            ``text_of`` takes it back (the payload of an RFC 6455 frame, or the JSON itself).
        path_prefix: ``[server] path_prefix``; sessions live under ``{prefix}/pusher/app/``.
        max_message_bytes: ``max_frame_bytes``, per message of an ``xhr_send``.
        max_output_buffer_bytes: what a session may hold unread (then close 4100).
        timeout: seconds a session waits for its receiver to come back before it is gone.
        heartbeat: seconds of silence after which a stream gets ``h`` and a poll is answered.
    """

    def __init__(
        self,
        hub: Hub,
        admission: Admission,
        *,
        frame: Callable[[bytes], bytes],
        text_of: Callable[[bytes], bytes],
        socket_id: Callable[[], str],
        path_prefix: str,
        max_message_bytes: int,
        max_output_buffer_bytes: int,
        timeout: float,
        heartbeat: float,
        trace: bool = False,
    ) -> None:
        self.hub = hub
        self.admission = admission
        self.frame = frame
        self.text_of = text_of
        self._socket_id = socket_id
        self._root = path_prefix.rstrip("/") + "/pusher/app/"
        self.max_message = max_message_bytes
        self.output_limit = max_output_buffer_bytes
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.trace = trace
        self.sessions: dict[str, XhrSession] = {}
        self.accepting = True  # false while draining: new sessions are refused (4200)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: tuple[bytes, bytes] = (b"", b"")  # one broadcast's frame, quoted once

    def route(self, request: Request) -> xhr.SessionPath | None:
        """The session path of a request under ``{prefix}/pusher/app/``, or None."""
        if not request.path.startswith(self._root):
            return None
        return xhr.parse_session_path(request.path[len(self._root) :].split("/"))

    async def dispatch(self, request: Request, where: xhr.SessionPath) -> Response:
        app = self.admission.app_by_key(where.key)
        cors = xhr.cors_headers(request.headers.get("origin"), app)
        if request.method == "OPTIONS":  # a browser's preflight (Fetch standard, CORS)
            return Response(204, headers=cors) if cors else Response(403, b"Origin not allowed")
        if request.method != "POST":
            return Response(405, b"Method not allowed", headers=(("Allow", "POST, OPTIONS"),))
        name = f"{where.key}/{where.session}"
        if where.kind == "xhr_send":
            return await self._send(request, name, cors)
        return self._receive(request, name, where.kind == "xhr", cors)

    def quoted(self, frame: bytes) -> bytes:
        """``frame``'s message as an ``a[...]`` entry; a broadcast hands every session the same
        ``frame``, so it is quoted once per broadcast, not once per session."""
        last = self._last
        if last[0] is not frame:
            last = self._last = (frame, xhr.quote(self.text_of(frame)))
        return last[1]

    # --- receiving ----------------------------------------------------------------------------

    def _receive(
        self, request: Request, name: str, polling: bool, cors: tuple[tuple[str, str], ...]
    ) -> Response:
        client = self.admission.client(request)
        session = self.sessions.get(name)
        if session is None:  # created here, at once: a second request finds it bound
            session = self._create(request, name, client)
        elif session.client != client:
            return _NOT_FOUND  # another client's session (kanal.protocol.xhr says why)
        else:
            self.hub.activity(session.socket_id)  # a poll or a new stream: proof of life
        current = session

        async def stream(writer: BodyWriter) -> None:
            receiver = Receiver(writer, polling)
            current.attach(receiver)
            try:
                while not receiver.done.done():
                    await asyncio.wait((receiver.done,), timeout=self.heartbeat)
                    current.heartbeat(receiver)
            finally:
                current.detach(receiver)

        headers = cors + _STREAM_HEADERS
        return Response(
            200, content_type="text/plain; charset=utf-8", headers=headers, stream=stream
        )

    def _create(self, request: Request, name: str, client: str) -> XhrSession:
        """A new session: admitted as a WebSocket is, then handed to the hub."""
        session = XhrSession(self, name, self._socket_id(), client)
        app: App | ConnectionRefused = ConnectionRefused(
            CloseCode.RECONNECT, "Server shutting down"
        )
        if self.accepting:
            app = self.admission.check(request, client, key=name.split("/", 1)[0])
        if isinstance(app, ConnectionRefused):
            self.hub.refuse(session, app.close_code, app.message)
            return session
        self.sessions[name] = session
        self.spawn(self._open(session, app, request.headers.get("origin"), client))
        return session

    async def _open(self, session: XhrSession, app: App, origin: str | None, client: str) -> None:
        try:
            admitted = await self.hub.open(session, app, origin, client)
        except Exception:  # e.g. the cluster store failed: this client reconnects
            log.exception("could not admit %s", session.socket_id)
            session.close(CloseCode.RECONNECT, "Internal server error, reconnect")
            return
        if admitted:
            session.admitted = True
            if session.closed:  # closed (expired, drained) while the hub was admitting it
                self.spawn(self.hub.closed(session.socket_id, 1006))

    # --- sending ------------------------------------------------------------------------------

    async def _send(
        self, request: Request, name: str, cors: tuple[tuple[str, str], ...]
    ) -> Response:
        session = self.sessions.get(name)
        if session is None or session.closed or session.client != self.admission.client(request):
            return Response(404, b"Session not found", headers=cors)
        self.hub.activity(session.socket_id)  # [] is pusher-js's ping (protocol.md §5.2)
        try:
            messages = xhr.parse_send(request.body, self.max_message)
        except xhr.SendRefused as refused:
            if refused.close_code is not None:
                session.close(refused.close_code, refused.message)
                return Response(204, headers=cors)
            return Response(refused.status, refused.message.encode(), headers=cors)
        async with session.lock:  # sends are handled in the order they arrived
            for text in messages:
                if session.closed:
                    break
                if self.trace:
                    logs.trace("in", session.socket_id, text)
                await self._handle(session, text)
        return Response(204, headers=cors)

    async def _handle(self, session: XhrSession, text: str) -> None:
        try:
            await self.hub.receive(session.socket_id, text)
        except Exception:  # a bug must cost this session only, never the server
            log.exception("closing %s after an internal error", session.socket_id)
            session.close(1011, "Internal server error")

    # --- the end of a session -----------------------------------------------------------------

    def release(self, session: XhrSession, code: int, after: After | None = None) -> None:
        """The session is closed: the hub lets it go now, then ``after`` runs."""
        self.spawn(self._release(session, code, after))

    async def _release(self, session: XhrSession, code: int, after: After | None) -> None:
        if session.admitted:
            await self.hub.closed(session.socket_id, code)
        if after is not None:
            await after()

    def forget(self, session: XhrSession) -> None:
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]

    def open_sessions(self) -> list[XhrSession]:
        """The sessions not closing yet, for the drain to hand over."""
        return [session for session in self.sessions.values() if not session.closed]

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Shutdown: close what is open (4200), end every receiver, let clean-ups end."""
        for session in list(self.sessions.values()):
            session.close(CloseCode.RECONNECT, "Server shutting down")  # c[4200,...] first
            session.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
