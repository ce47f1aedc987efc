"""pusher-js's HTTP transports, ``xhr_streaming`` and ``xhr_polling``: their paths and frames.

Pure rules, read from pusher-js (``core/http/http_socket.ts``, ``http_streaming_socket.ts``,
``http_polling_socket.ts``, ``http_request.ts``; the same in 4.3, 7.x and 8.x). The client
picks a session path ``{server}/{session}`` (a number below 1000 and 8 random base-32
characters) under ``{httpPath}/app/{key}`` and sends three kinds of POST there:

* ``.../{server}/{session}/xhr_streaming?protocol=7&...``: the receive stream. Its 200 body is
  a sequence of frames, each one line ended by ``\\n``, read as they arrive; the stream stays
  open until the session closes (pusher-js opens a new one on the same session after
  256 KiB, and gives up on the session when one ends: "Connection interrupted").
* ``.../{server}/{session}/xhr?protocol=7&...``: one long poll. Its body holds one or more
  frames; pusher-js opens the next poll on the same session when it ends with 200.
* ``.../{server}/{session}/xhr_send``: the body is a JSON array of strings, each one Pusher
  message as a WebSocket would carry it; ``[]`` is a heartbeat (proof of life).

The frames (one letter, then JSON): ``o`` the session is open (sent once, first; a second
``o`` makes pusher-js drop the session as lost); ``a["msg", ...]`` messages; ``m"msg"`` one
message; ``h`` a heartbeat (the streaming client answers it with an ``[]`` send);
``c[code,"reason"]`` the session is closed with a Pusher close code (protocol.md §3).

Why a session is bound to its client's address (the transport's registry does it): pusher-js
chooses the session path itself and cannot carry a secret the server picks, so the path is
the only name of a session, visible to anything that sees the URL; binding the session to the
address that opened it (and to the app key, which is in the path) means a client elsewhere
that learns or guesses the path gets 404, not the session's messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from kanal.config import App
from kanal.protocol.handshake import origin_allowed

__all__ = [
    "HEARTBEAT",
    "KINDS",
    "OPEN",
    "Kind",
    "SendRefused",
    "SessionPath",
    "close_frame",
    "cors_headers",
    "message_frame",
    "parse_send",
    "parse_session_path",
    "quote",
]

Kind = Literal["xhr_streaming", "xhr", "xhr_send"]
KINDS: tuple[Kind, ...] = ("xhr_streaming", "xhr", "xhr_send")

OPEN = b"o\n"
HEARTBEAT = b"h\n"

# pusher-js: ``randomNumber(1000) + '/' + randomString(8)`` with base-32 digits (0-9a-v).
# Other characters a hand-written client might use are allowed, never ``/`` or a dot segment.
_SERVER = re.compile(r"[0-9]{1,3}")
_SESSION = re.compile(r"[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True, slots=True)
class SessionPath:
    """One request's place: the app key, the session (``{server}/{session}``) and its kind."""

    key: str
    session: str
    kind: Kind


def parse_session_path(segments: Sequence[str]) -> SessionPath | None:
    """``[key, server, session, kind]`` (the path after ``{prefix}/pusher/app/``, split on
    ``/``, still percent-encoded) as a :class:`SessionPath`, or None if it is not one."""
    if len(segments) != 4:
        return None
    key, server, session, kind = segments
    if not key or "%" in key or kind not in KINDS:
        return None
    if _SERVER.fullmatch(server) is None or _SESSION.fullmatch(session) is None:
        return None
    return SessionPath(key, f"{server}/{session}", kind)


def quote(message: bytes) -> bytes:
    """One Pusher message (its JSON text, as the hub hands it out) as the JSON string an
    ``a[...]`` frame lists: ``{"event":"x"}`` -> ``"{\\"event\\":\\"x\\"}"``."""
    return orjson.dumps(message.decode())


def message_frame(quoted: Sequence[bytes]) -> bytes:
    """``a["...","..."]\\n``: messages already passed through :func:`quote`, in order."""
    return b"a[" + b",".join(quoted) + b"]\n"


def close_frame(code: int, reason: str) -> bytes:
    """``c[4200,"Server shutting down"]\\n``: pusher-js closes with this code and reason."""
    return b"c" + orjson.dumps([code, reason]) + b"\n"


class SendRefused(Exception):
    """An ``xhr_send`` body that cannot be taken: ``status`` for a malformed body (400), or
    ``close_code`` for a message the session must be closed for (1009: too big)."""

    def __init__(self, message: str, *, status: int = 400, close_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.close_code = close_code


def parse_send(body: bytes, max_message_bytes: int) -> list[str]:
    """The messages of an ``xhr_send`` body (``[]``: none, a heartbeat).

    Raises:
        SendRefused: the body is not a JSON array of strings (400), or one message is over
            ``max_message_bytes`` (close 1009, as a WebSocket frame over ``max_frame_bytes``:
            limits.md §2, RFC 6455 §7.4.1).
    """
    try:
        messages = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SendRefused("Body is not JSON") from None
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise SendRefused("Body must be a JSON array of strings")
    for message in messages:
        # A str of n characters holds at most 4n bytes: only long ones are encoded to measure.
        if len(message) * 4 > max_message_bytes and len(message.encode()) > max_message_bytes:
            raise SendRefused("Message too big", close_code=1009)
    return messages


def cors_headers(origin: str | None, app: App | None) -> tuple[tuple[str, str], ...]:
    """What lets a page on ``origin`` read the answers (the Fetch standard's CORS protocol):
    every origin when the app lists no ``allowed_origins``, else only a listed one (the same
    rule as the WebSocket handshake's 4009, protocol.md §1.2). No ``Origin``: not a browser,
    nothing to allow. pusher-js sets ``Content-Type: application/json``, so browsers send a
    preflight that must allow that header and POST."""
    if origin is None or app is None:
        return ()
    if app.allowed_origins and not origin_allowed(origin, app.allowed_origins):
        return ()
    return (
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", "POST, OPTIONS"),
        ("Access-Control-Allow-Headers", "Content-Type"),
        ("Access-Control-Max-Age", "86400"),
        ("Vary", "Origin"),
    )
