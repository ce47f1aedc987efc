"""Kernel-stamped WebSocket subscribers: the transport of the latency scenario.

A minimal RFC 6455 client on a plain non-blocking socket, driven by ``loop.add_reader``. Every
read is a ``recvmsg`` with room for one control message, and the socket has ``SO_TIMESTAMPNS``
set, so the kernel returns with each read the time (``CLOCK_REALTIME``) the data arrived on the
socket. Every benchmark frame completed by a read gets that read's stamp, converted to
``CLOCK_MONOTONIC`` (the publisher's clock, see :func:`bench.protocol.event_data`) with an
offset sampled in this process (:func:`realtime_offset`, resampled at every ``reset``).

Why: 1,000 frames of one event reach the generator at once, and its processes (all on one core)
handle them one after the other; a receipt time taken in user space then measures the
generator's own queue as well as the server. The kernel stamp is taken when the segment enters
the receiving stack (on loopback: inside the server's ``send()``, when the segment is handed to
the loopback device), whatever the generator is doing. With TCP a read carries the stamp of the
latest segment it consumed (queued segments the kernel merged count as that latest one), so a
frame that shared its read with a later segment gets a stamp that can only be late, never early;
``Stats.merged`` counts those frames.

The Pusher protocol itself (handshake messages, subscribing, counting) stays in
:class:`bench.wsclient.Subscriber`; this module only replaces picows underneath it. Only what
the benchmark needs is implemented: ``ws://`` (no TLS), no extensions, no subprotocols. Server
frames may be fragmented and use 7, 16 or 64-bit lengths; pings are answered with pongs, a
close frame with a close frame. Frames this client sends are masked, as RFC 6455 requires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from bench.wsclient import Closer, Subscriber

__all__ = [
    "FrameParser",
    "HandshakeError",
    "ProtocolError",
    "accept_key",
    "client_frame",
    "connect_stamped",
    "mask",
    "realtime_offset",
]

#: ``SO_TIMESTAMPNS`` and its control message ``SCM_TIMESTAMPNS`` (the same number) on Linux;
#: Python's socket module does not export them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec (native longs)
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
READ_SIZE = 64 * 1024  # larger reads cost an mmap per call (glibc), for nothing here
MAX_FRAME = 64 * 1024 * 1024
MAX_HEAD = 16 * 1024
HANDSHAKE_TIMEOUT = 30.0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def realtime_offset(samples: int = 9) -> int:
    """``CLOCK_REALTIME - CLOCK_MONOTONIC`` in ns, as exact as this process can read it.

    Each sample reads the real-time clock between two monotonic reads, so its error is at most
    half the bracket; the sample with the narrowest bracket wins (a preemption between the
    reads only widens that sample's bracket). Both clocks are slewed alike by NTP, so the
    offset only changes when the real-time clock is stepped.
    """
    best_width = -1
    best = 0
    for _ in range(max(1, samples)):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        width = after - before
        if best_width < 0 or width < best_width:
            best_width = width
            best = real - (before + after) // 2
    return best


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # the RFC mandates SHA-1


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 section 5.3); its own inverse."""
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        size, "little"
    )


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final, masked client frame (a fresh random masking key unless ``key`` is given)."""
    key = os.urandom(4) if key is None else key
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + key + mask(payload, key)


class ProtocolError(Exception):
    """The server broke RFC 6455; ``code`` is the close code to fail the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class HandshakeError(ConnectionError):
    """The server did not complete the opening handshake."""


class FrameParser:
    """Server frames from a byte stream: :meth:`feed` returns the complete messages so far.

    Messages are ``(opcode, payload)``: fragmented data messages come out once, reassembled;
    control frames (close, ping, pong) as they arrive. Bytes of an incomplete frame are kept
    until the rest arrives (not re-parsed on every read while a large frame trickles in).
    """

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self._pending: list[bytes] = []  # bytes of an incomplete frame, in arrival order
        self._have = 0  # len(b"".join(self._pending))
        self._need = 0  # bytes needed before parsing can make progress
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._pending:
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._pending)
            self._pending.clear()
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set (no extension was negotiated)")
            if b1 & 0x80:
                raise ProtocolError(1002, "masked frame from the server")
            size = b1 & 0x7F
            start = pos + 2
            if size == 126:
                if end - start < 2:
                    break
                size = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif size == 127:
                if end - start < 8:
                    break
                size = int.from_bytes(data[start : start + 8], "big")
                start += 8
            if size > self.max_size:
                raise ProtocolError(1009, f"frame of {size} bytes")
            stop = start + size
            if stop > end:
                break
            self._frame(b0, data[start:stop], out)
            pos = stop
        if pos < end:
            rest = data[pos:]
            self._pending.append(rest)
            self._have = len(rest)
            self._need = self._bytes_needed(rest)
        return out

    @staticmethod
    def _bytes_needed(rest: bytes) -> int:
        """How many bytes the incomplete frame at the start of ``rest`` needs in total."""
        if len(rest) < 2:
            return 2
        size = rest[1] & 0x7F
        extra = {126: 2, 127: 8}.get(size, 0)
        if len(rest) < 2 + extra:
            return 2 + extra
        if extra:
            size = int.from_bytes(rest[2 : 2 + extra], "big")
        return 2 + extra + size

    def _frame(self, b0: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode >= CLOSE:
            if opcode not in (CLOSE, PING, PONG):
                raise ProtocolError(1002, f"unknown control opcode {opcode:#x}")
            if not fin or len(payload) > 125:
                raise ProtocolError(1002, "fragmented or oversized control frame")
            out.append((opcode, payload))
        elif opcode == CONT:
            if not self._fragment_opcode:
                raise ProtocolError(1002, "continuation frame without a message")
            self._fragments.append(payload)
            if sum(map(len, self._fragments)) > self.max_size:
                raise ProtocolError(1009, "message too large")
            if fin:
                out.append((self._fragment_opcode, b"".join(self._fragments)))
                self._fragments, self._fragment_opcode = [], 0
        elif opcode in (TEXT, BINARY):
            if self._fragment_opcode:
                raise ProtocolError(1002, "new message inside a fragmented one")
            if fin:
                out.append((opcode, payload))
            else:
                self._fragments, self._fragment_opcode = [payload], opcode
        else:
            raise ProtocolError(1002, f"unknown data opcode {opcode:#x}")


class _StampedConnection:
    """One subscriber's socket: the opening handshake, then frames into ``Subscriber.feed``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, sub: Subscriber
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.sub = sub
        self.stats = sub.stats
        self.key = base64.b64encode(os.urandom(16))
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.parser = FrameParser()
        self._head = bytearray()
        self._out = bytearray()
        self._writing = False
        self.closed = False

    def start(self, host: str, target: str) -> None:
        request = (
            f"GET {target} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.loop.add_reader(self.fd, self._readable)
        self._write(request.encode())

    # -- reading ---------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(READ_SIZE, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._shutdown(exc)
            return
        if not data:
            self._shutdown(ConnectionError("connection closed by the server"))
            return
        arrived = 0  # CLOCK_REALTIME ns of the (latest) segment in this read
        for level, kind, cdata in ancillary:
            if (
                level == socket.SOL_SOCKET
                and kind == SCM_TIMESTAMPNS
                and len(cdata) >= _TIMESPEC.size
            ):
                seconds, nanoseconds = _TIMESPEC.unpack_from(cdata)
                arrived = seconds * 1_000_000_000 + nanoseconds
        if not self.upgraded.done():
            try:
                data = self._handshake(data)
            except HandshakeError as exc:
                self._shutdown(exc)
                return
            if not data:
                return
        stats = self.stats
        if arrived:
            stamp = arrived - stats.clock_offset  # -> CLOCK_MONOTONIC
        else:
            stamp = 0  # Subscriber.feed falls back to its user-space clock
            if self.sub.live:
                stats.unstamped += 1
        try:
            messages = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc.code)
            return
        counted = stats.frames
        for opcode, payload in messages:
            if opcode == TEXT:
                self.sub.feed(payload, stamp)
            elif opcode == PING:
                self._write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self._fail(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000)
            if self.closed:
                break
        counted = stats.frames - counted
        if counted > 1:  # all but the last may carry a later segment's stamp (late, not early)
            stats.merged += counted - 1

    def _handshake(self, data: bytes) -> bytes:
        """Consume the 101 response; returns the bytes after it (the first frames)."""
        head = self._head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD:
                raise HandshakeError("no end of the upgrade response head")
            return b""
        lines = head[:end].decode("latin-1").split("\r\n")
        rest = bytes(head[end + 4 :])
        head.clear()
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
            raise HandshakeError(f"upgrade refused: {lines[0][:200]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("101 without Upgrade: websocket")
        if "upgrade" not in {t.strip() for t in headers.get("connection", "").lower().split(",")}:
            raise HandshakeError("101 without Connection: Upgrade")
        if headers.get("sec-websocket-accept", "").encode() != accept_key(self.key):
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions") or headers.get("sec-websocket-protocol"):
            raise HandshakeError("server chose an extension or subprotocol nobody offered")
        self.sub.send = self._send_text
        self.upgraded.set_result(None)
        return rest

    # -- writing ---------------------------------------------------------------------------

    def _send_text(self, data: bytes) -> None:
        self._write(client_frame(TEXT, data))

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._shutdown(exc)
            return
        if sent < len(data):
            self._out += data[sent:]
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._shutdown(exc)
            return
        del self._out[:sent]
        if not self._out:
            self._writing = False
            self.loop.remove_writer(self.fd)

    # -- closing ---------------------------------------------------------------------------

    def _fail(self, code: int) -> None:
        """Send a close frame with ``code`` (best effort) and drop the connection."""
        self._write(client_frame(CLOSE, code.to_bytes(2, "big")))
        self._shutdown(ConnectionError(f"WebSocket closed ({code})"))

    def close(self) -> None:
        self._shutdown(None)

    def _shutdown(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        self.sock.close()
        if not self.upgraded.done():
            if exc is None:
                self.upgraded.cancel()
            else:
                self.upgraded.set_exception(exc)
        elif not self.upgraded.cancelled():
            self.sub.lost()


async def connect_stamped(url: str, sub: Subscriber) -> Closer:
    """Open a kernel-stamped WebSocket to ``url`` (``ws://`` only) for ``sub``.

    Returns once the server answered the upgrade; the caller waits for ``sub.ready``.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"only ws://host[:port]/path URLs: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        parts.hostname, parts.port or 80, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    conn = _StampedConnection(loop, sock, sub)
    conn.start(parts.netloc, target)
    try:
        await asyncio.wait_for(conn.upgraded, HANDSHAKE_TIMEOUT)
    except BaseException:
        conn.close()
        raise
    return conn.close
