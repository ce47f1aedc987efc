"""One session of pusher-js's HTTP transports: the hub's ``Connection`` without a socket.

Ownership rule: a :class:`XhrSession` owns what the client has not read yet and which request
(the receiver: the open stream or the waiting poll) reads it. The hub sees it as one
connection from :meth:`Hub.open` to :meth:`Hub.closed`, like a WebSocket's; the registry of
sessions, the routes and the timeouts are :mod:`kanal.transport.xhr`'s.

Bounds: messages wait here while no receiver is there (between two polls, or while a stream
reconnects); their bytes, and a stream's unsent bytes, are held to ``max_output_buffer_bytes``
as a WebSocket's output buffer is (over it: close 4100, a slow consumer). A session without a
receiver for ``timeout`` seconds is gone and is closed as a dropped socket is (1006).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kanal import logs
from kanal.protocol import events, xhr
from kanal.protocol.errors import CloseCode
from kanal.transport.http_messages import BodyWriter

if TYPE_CHECKING:
    from kanal.transport.xhr import XhrEndpoint

__all__ = ["Receiver", "XhrSession"]

log = logging.getLogger("kanal.xhr")

Ready = Callable[[], Awaitable[None]]


class Receiver:
    """One request that reads a session: a stream (kept open) or a poll (ends after one
    write)."""

    __slots__ = ("done", "polling", "writer", "wrote")

    def __init__(self, writer: BodyWriter, polling: bool) -> None:
        self.writer = writer
        self.polling = polling
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wrote = False  # since the last heartbeat check

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.wrote = True
        if self.polling:
            self.end()

    def end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class XhrSession:
    """The hub's ``Connection`` for one ``{server}/{session}`` of one client."""

    __slots__ = (
        "_batch",
        "_endpoint",
        "_expiry",
        "_final",
        "_held",
        "_held_bytes",
        "_receiver",
        "admitted",
        "client",
        "closed",
        "lock",
        "name",
        "socket_id",
    )

    def __init__(self, endpoint: XhrEndpoint, name: str, socket_id: str, client: str) -> None:
        self.socket_id = socket_id
        self.name = name  # the registry's key: app key and session path
        self.client = client  # the address it is bound to (kanal.protocol.xhr says why)
        self._endpoint = endpoint
        self._batch: list[bytes] = []  # quoted messages for the next a[...] frame
        self._held: list[bytes] = [xhr.OPEN]  # frames no receiver has taken yet
        self._held_bytes = 0
        self._receiver: Receiver | None = None
        # Until its first receiver attaches, as between two: a request that never got to
        # read (its client went first) must not keep the session for ever.
        self._expiry: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            endpoint.timeout, self._expired
        )
        self.closed = False  # closing: nothing more from the hub is sent
        self._final = False  # c[...] is written or held: nothing at all comes after it
        self.admitted = False  # the hub has it (Hub.open said yes): Hub.closed is due
        self.lock = asyncio.Lock()  # one xhr_send at a time, in the order they came

    # --- the hub's Connection ----------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        endpoint = self._endpoint
        if endpoint.trace:
            logs.trace("out", self.socket_id, endpoint.text_of(frame).decode())
        if not self._batch:  # one a[...] per session per event-loop iteration
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(endpoint.quoted(frame))

    def probe(self) -> None:
        """The session's heartbeat is due (protocol.md §5.2): ``h``, which a streaming client
        answers with an ``[]`` send and a polling client with its next poll."""
        self._deliver(xhr.HEARTBEAT)

    def close(self, code: int, reason: str) -> None:
        """``c[code,"reason"]`` after what is queued; the hub is told the session is gone."""
        if self.closed:
            return
        self._flush()  # a pusher:error sent just before the close goes first
        if self._endpoint.trace:
            logs.trace("out", self.socket_id, f"[close {code} {reason}]")
        self.closed = True
        self._last(xhr.close_frame(code, reason))
        self._endpoint.release(self, code)

    def hand_over(self, code: int, reason: str, ready: Ready) -> None:
        """The drain's close (:mod:`kanal.drain`, as ``WebSocketConnection.hand_over``): the
        hub lets the session go and ``ready()`` returns before the client is told."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        self._endpoint.release(self, code, lambda: self._handed_over(code, reason, ready))

    async def _handed_over(self, code: int, reason: str, ready: Ready) -> None:
        await ready()
        error = self._endpoint.quoted(self._endpoint.frame(events.error_frame(code, reason)))
        self._last(xhr.message_frame([error]) + xhr.close_frame(code, reason))

    # --- receivers ----------------------------------------------------------------------------

    def attach(self, receiver: Receiver) -> None:
        """A stream or poll arrived: it takes what is held, and replaces an earlier receiver
        (pusher-js opens a new stream after 256 KiB and may not have closed the old one)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._receiver is not None:
            self._receiver.end()
        self._receiver = receiver
        if self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            receiver.write(b"".join(held))
        if self._final:  # else a drained session's poll waits for its c[...] (hand_over)
            receiver.end()

    def detach(self, receiver: Receiver) -> None:
        """The request ended (answered, replaced, or the client went away): without a
        receiver for ``timeout`` seconds the session is gone."""
        receiver.end()
        if self._receiver is not receiver:
            return
        self._receiver = None
        if self._final and not self._held:  # c[...] is delivered: nothing more to read
            self._endpoint.forget(self)
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self._endpoint.timeout, self._expired)

    def heartbeat(self, receiver: Receiver) -> None:
        """A stream idle since the last check gets ``h``; a poll held that long is answered
        with it (proxies end requests that show nothing for ~30 s)."""
        if self._receiver is receiver and not receiver.wrote:
            receiver.write(xhr.HEARTBEAT)
        receiver.wrote = False

    def _expired(self) -> None:
        self._expiry = None
        if not self.closed:
            log.debug("session %s lost its receiver", self.socket_id)
            self.closed = True
            self._endpoint.release(self, 1006)  # as a dropped socket (RFC 6455 §7.1.5)
        self._endpoint.forget(self)

    def abort(self) -> None:
        """End the receiver without a close frame, as a dropped socket (1006): the client
        sees its stream or poll end; the session is forgotten at once."""
        if not self.closed:
            self.closed = True
            self._endpoint.release(self, 1006)
        self._final, self._held = True, []
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._receiver is not None:
            self._receiver.end()
        self._endpoint.forget(self)

    # --- outbound ------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._deliver(xhr.message_frame(batch))

    def _last(self, data: bytes) -> None:
        """The closing frames: past every bound (they end the session), and the receiver's
        last write."""
        self._final = True
        receiver = self._receiver
        if receiver is None:
            self._held.append(data)
            return
        receiver.write(data)
        receiver.end()

    def _deliver(self, data: bytes) -> None:
        if self.closed:
            return
        receiver = self._receiver
        limit = self._endpoint.output_limit
        if receiver is not None:
            receiver.write(data)
            if receiver.writer.buffered() > limit:
                self._slow()
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > limit:
            self._slow()

    def _slow(self) -> None:
        log.warning("closing slow consumer %s", self.socket_id)
        self.close(CloseCode.OVER_CAPACITY, "Slow consumer: output buffer limit exceeded")
