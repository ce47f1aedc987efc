"""The answer to a WebSocket upgrade request (RFC 6455 §4.2): the ``Sec-WebSocket-Accept``
value of a 101, or the HTTP response that refuses it.

Ownership rule: pure functions of a parsed request; :class:`~kanal.transport.websocket.
WebSocketEndpoint` writes what they return.
"""

from __future__ import annotations

import binascii

from kanal.transport import frames
from kanal.transport.http11 import Request, Response

__all__ = ["DRAINING", "websocket_accept"]

#: A draining node (kanal.drain) refuses before the upgrade: an HTTP status is what a load
#: balancer acts on (a 101 followed by a close would count as a working node), and the client
#: retries, through the load balancer, elsewhere.
DRAINING = Response(
    503, b"Draining: this node is shutting down, connect again", headers=(("Retry-After", "1"),)
)


def websocket_accept(request: Request) -> str | Response:
    """The ``Sec-WebSocket-Accept`` value, or the response refusing a bad upgrade."""
    headers = request.headers
    if (
        request.method != "GET"
        or "upgrade" not in headers.get("connection", "").lower()
        or headers.get("upgrade", "").strip().lower() != "websocket"
    ):
        return Response(400, b"Not a WebSocket upgrade request")
    if headers.get("sec-websocket-version", "").strip() != "13":
        # RFC 6455 §4.2.2 item 4, §4.4: say which version is supported.
        return Response(
            426,
            b"Unsupported WebSocket version (13 is supported)",
            headers=(("Sec-WebSocket-Version", "13"),),
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(binascii.a2b_base64(key.encode(), strict_mode=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return Response(400, b"Invalid Sec-WebSocket-Key")
    return frames.accept_key(key)
