"""HTTP/1.1 requests and responses as values, and the parsing of a request target.

Ownership rule: what a request and a response are, independent of the connection that
carried them: :mod:`kanal.transport.http11` makes them from bytes and writes them back;
the ASGI adapter makes them from ASGI scopes; the HTTP API and the console read and return
them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote_plus

import httptools

__all__ = ["BodyWriter", "Request", "Response", "Stream", "parse_query", "split_target"]

_REASONS = {status.value: status.phrase for status in HTTPStatus}
#: Encoded response heads by (status, content type, body length, keep-alive); bounded, as
#: body lengths vary (a channel list's, a user list's).
_HEADS: dict[tuple[int, str, int, bool], bytes] = {}
_MAX_HEADS = 512


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lower-case (repeated headers joined by ", ")."""

    method: str
    path: str  # raw (still percent-encoded), without the query
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    secure: bool = False
    match: dict[str, str] = field(default_factory=dict)
    client: str = ""  # the peer's address ("" when unknown), before any proxy header

    @property
    def query(self) -> dict[str, str]:
        """Decoded query parameters; the last of a repeated name wins."""
        return dict(self.query_items)

    @property
    def query_items(self) -> list[tuple[str, str]]:
        return parse_query(self.query_string)


def parse_query(query_string: str) -> list[tuple[str, str]]:
    """``urllib.parse.parse_qsl(query_string, keep_blank_values=True)``, faster: the SDKs'
    signed queries (auth_key=...&auth_signature=...) need no unescaping, so a pair without
    ``%`` or ``+`` is split as it is and only the others go through ``unquote_plus``.
    tests/test_http11.py checks the two agree on any input."""
    pairs = []
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        pairs.append((name, value))
    return pairs


class BodyWriter(Protocol):
    """Where a streamed response's body goes, piece by piece, as it is produced."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (not empty) as the next piece; never blocks, never raises."""

    def buffered(self) -> int:
        """Bytes written but not sent yet: a receiver that does not read makes it grow."""


#: Writes a streamed response's body, then returns; cancelled when the client goes away.
Stream = Callable[[BodyWriter], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class Response:
    """One answer. With ``stream``, ``body`` is unused: ``stream`` writes the body as it is
    produced (chunked, RFC 9112 §7.1), for pusher-js's HTTP transports (transport/xhr.py)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    stream: Stream | None = None

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        """The status line and headers, then the body (none for HEAD or a streamed body)."""
        if not self.headers and self.stream is None:  # most answers: kept once made
            key = (self.status, self.content_type, len(self.body), keep_alive)
            start = _HEADS.get(key)
            if start is None:
                start = self._head(keep_alive)
                if len(_HEADS) < _MAX_HEADS:
                    _HEADS[key] = start
            return start if head else start + self.body
        start = self._head(keep_alive)
        return start if head or self.stream else start + self.body

    def _head(self, keep_alive: bool) -> bytes:
        length = (
            "Transfer-Encoding: chunked" if self.stream else f"Content-Length: {len(self.body)}"
        )
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}",
            f"Content-Type: {self.content_type}",
            length,
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


#: Bytes that send a request target to httptools' parser: controls, space, DEL and "#".
_NOT_PLAIN = bytes(range(0x21)) + b"#\x7f"


def split_target(target: bytes) -> tuple[str, str]:
    """A request target's path and query. The origin form every client sends ("/path?query",
    printable ASCII) is split here; anything else goes through httptools' URL parser, which
    also refuses what is not a valid URL (tests/test_http11.py checks the two agree)."""
    if (
        target.startswith(b"/")
        and target.isascii()
        # printable, with no space and no fragment; else left to httptools
        and len(target.translate(None, _NOT_PLAIN)) == len(target)
    ):
        path, _, query = target.decode("latin-1").partition("?")
        return path, query
    url = httptools.parse_url(target)
    return (url.path or b"/").decode("latin-1"), (url.query or b"").decode("latin-1")
