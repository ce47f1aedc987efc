"""RFC 6455 framing, sans-I/O: bytes in, frames out; frames built once as bytes.

Ownership rule: every WebSocket frame kanal writes is built here, and every frame a client
sends is parsed here. Nothing in this module touches a socket, so it is tested by feeding it
bytes (tests/test_frames.py). Pusher rules are not here: a text frame is handed on as it is.

Server-to-client frames are never masked and never fragmented (RFC 6455 §5.1, §5.4): a
broadcast is one complete frame, built once and written to every subscriber as the same bytes.
Client-to-server frames must be masked (§5.3) and may be fragmented (§5.4); control frames
may arrive between the fragments of a message.
"""

from __future__ import annotations

import base64
import hashlib
import struct

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "FrameError",
    "FrameReader",
    "accept_key",
    "close_frame",
    "control_frame",
    "describe",
    "parse_close",
    "text_frame",
    "text_payload",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPCODES = (TEXT, BINARY)
_CONTROL_OPCODES = (CLOSE, PING, PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class FrameError(Exception):
    """A frame that ends the connection with ``code`` (RFC 6455 §7.4.1).

    ``messages``: the messages that the same :meth:`FrameReader.feed` completed before the
    offending frame, in order (a client's Close among them comes before the failure).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.messages: list[tuple[int, bytes]] = []


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.encode() + _GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + struct.pack("!H", length) + payload
    return b"\x81\x7f" + struct.pack("!Q", length) + payload


def text_payload(frame: bytes) -> bytes:
    """The payload of a frame built by :func:`text_frame` (its 2, 4 or 10 header bytes off)."""
    marker = frame[1]
    return frame[2:] if marker < 126 else frame[4:] if marker == 126 else frame[10:]


def describe(frame: bytes) -> str:
    """What a frame built here says, for a trace line (``[server] verbose``): a text frame's
    payload, or ``[ping]`` / ``[pong]`` for a control frame."""
    opcode = frame[0] & 0x0F
    if opcode == TEXT:
        return text_payload(frame).decode(errors="replace")
    return {PING: "[ping]", PONG: "[pong]"}.get(opcode, f"[opcode {opcode}]")


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A Ping, Pong or Close frame; control payloads are at most 125 bytes (§5.5)."""
    payload = payload[:125]
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str) -> bytes:
    """A Close frame with a status code and a UTF-8 reason cut to fit 125 bytes (§5.5.1)."""
    encoded = reason.encode()[:123]
    while encoded:  # never cut a multi-byte character in half
        try:
            encoded.decode()
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return control_frame(CLOSE, struct.pack("!H", code) + encoded)


def parse_close(payload: bytes) -> int:
    """The status code of a client's Close frame; 1005 when it carries none (§7.1.5).

    Raises:
        FrameError: 1002 for a 1-byte payload or a code no endpoint may send (§7.4.1-§7.4.2:
            below 1000, 1004-1006, 1015, and the unassigned 1016-2999), 1007 for a reason that
            is not UTF-8 (§5.5.1, §8.1).
    """
    if not payload:
        return 1005
    if len(payload) == 1:
        raise FrameError(1002, "Close frame with a 1-byte payload")
    code = int(struct.unpack("!H", payload[:2])[0])
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise FrameError(1002, f"Invalid close code {code}")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(1007, "Close reason is not valid UTF-8") from None
    return code


def _unmask(payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


class FrameReader:
    """Turns a client's byte stream into complete ``(opcode, payload)`` messages.

    Fragmented messages are joined; control frames are returned as they come. ``max_message``
    (0 = no limit) caps a message's payload: one byte more raises ``FrameError(1009)`` as soon
    as the header announces it, before the payload is buffered (limits.md §2). Every other
    error is found in the header too, so a frame known to be bad is never waited for.

    What it holds is bounded by one frame: the unread part of the current frame (never a
    whole one) and the fragments of the message in progress (at most ``max_message`` bytes,
    in one ``bytearray``: many small fragments cost neither one object each nor a pass over
    all of them per frame).
    """

    __slots__ = ("_buffer", "_fragments", "_max_message", "_opcode", "_skip")

    def __init__(self, max_message: int = 0) -> None:
        self._buffer = b""
        self._fragments: bytearray | None = None  # the message in progress, if fragmented
        self._opcode = 0
        self._max_message = max_message
        self._skip = 0  # after a failure: payload bytes of a frame still to pass over

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every message completed by ``data``; raises :class:`FrameError` on a bad frame
        (with the messages completed before it in ``FrameError.messages``).

        After a :class:`FrameError` the stream is only skimmed for the client's Close: call
        :meth:`after_failure` from then on.
        """
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, bytes]] = []
        position, end = 0, len(buffer)
        try:
            while end - position >= 2:
                first, second = buffer[position], buffer[position + 1]
                length, header = self._header(buffer, position, first, second)
                if header == 0 or end - position < header + 4 + length:
                    break
                start = position + header + 4
                payload = _unmask(buffer[start : start + length], buffer[start - 4 : start])
                position = start + length
                message = self._message(first & 0x80, first & 0x0F, payload)
                if message is not None:
                    messages.append(message)
        except FrameError as error:
            self._buffer = buffer[position:]  # from the offending frame on, for after_failure
            error.messages = messages
            raise
        self._buffer = buffer[position:] if position < end else b""
        return messages

    def after_failure(self, data: bytes) -> bytes | None:
        """Once the connection is failed (RFC 6455 §7.1.7), read on only to find the client's
        Close (§7.1.1: then the TCP connection can be closed cleanly). Other frames, the
        offending one included, are passed over unchecked and unbuffered: at most a partial
        header or a partial Close frame is kept. Returns the Close payload once it arrived."""
        buffer = self._buffer + data if self._buffer else data
        position, end = min(self._skip, len(buffer)), len(buffer)
        self._skip -= position
        while not self._skip and end - position >= 2:
            second = buffer[position + 1]
            length, header = second & 0x7F, 2
            if length >= 126:
                header = 4 if length == 126 else 10
                if end - position < header:
                    break
                fmt = "!H" if length == 126 else "!Q"
                length = struct.unpack_from(fmt, buffer, position + 2)[0]
            start = position + header + (4 if second & 0x80 else 0)
            if buffer[position] & 0x0F == CLOSE and length <= 125:
                if end < start + length:
                    break
                self._buffer = b""
                payload = buffer[start : start + length]
                return _unmask(payload, buffer[start - 4 : start]) if second & 0x80 else payload
            if end < start:
                break
            position = min(start + length, end)
            self._skip = start + length - position
        self._buffer = buffer[position:] if not self._skip else b""
        return None

    def _header(self, buffer: bytes, position: int, first: int, second: int) -> tuple[int, int]:
        """(payload length, header length before the mask); header 0 means "need more".

        Raises:
            FrameError: 1002 for what the first two bytes already show, or a bad length;
                1009 for a message over ``max_message``.
        """
        if first & 0x70:
            raise FrameError(1002, "Reserved bits are set")  # no extension was negotiated
        if not second & 0x80:
            raise FrameError(1002, "Client frames must be masked")  # §5.1
        opcode = first & 0x0F
        if opcode in _CONTROL_OPCODES:
            if not first & 0x80:
                raise FrameError(1002, "Control frames must not be fragmented")  # §5.5
        elif opcode == CONTINUATION:
            if self._fragments is None:
                raise FrameError(1002, "Continuation frame without a message to continue")
        elif opcode not in _DATA_OPCODES:
            raise FrameError(1002, f"Unknown opcode {opcode}")  # §5.2
        elif self._fragments is not None:
            raise FrameError(1002, "New message before the previous one was finished")  # §5.4
        length, header = second & 0x7F, 2
        if length == 126:
            if len(buffer) - position < 4:
                return 0, 0
            length, header = struct.unpack_from("!H", buffer, position + 2)[0], 4
        elif length == 127:
            if len(buffer) - position < 10:
                return 0, 0
            length, header = struct.unpack_from("!Q", buffer, position + 2)[0], 10
            if length >> 63:
                raise FrameError(1002, "Frame length with the most significant bit set")  # §5.2
        if opcode in _CONTROL_OPCODES:
            if length > 125:
                raise FrameError(1002, "Control frames must be at most 125 bytes")  # §5.5
        elif self._max_message and length + self._pending_size() > self._max_message:
            raise FrameError(1009, "Message too big")
        return length, header

    def _pending_size(self) -> int:
        """Bytes of the fragmented message in progress."""
        return len(self._fragments) if self._fragments is not None else 0

    def _message(self, fin: int, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        """The message a frame completes, if any (its header has passed :meth:`_header`)."""
        if opcode in _CONTROL_OPCODES:
            return opcode, payload
        if opcode == CONTINUATION:
            assert self._fragments is not None
            self._fragments += payload
            if not fin:
                return None
            joined, self._fragments = bytes(self._fragments), None
            return self._opcode, joined
        if fin:
            return opcode, payload
        self._fragments, self._opcode = bytearray(payload), opcode
        return None
