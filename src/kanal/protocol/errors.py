"""Errors that know their Pusher wire form, and the close codes.

The tree::

    PusherError(code, message)          -> a non-fatal ``pusher:error`` frame (protocol.md §4.3)
     ├── SubscriptionError(kind, status) -> ``pusher:subscription_error`` + ``pusher:error``
     │                                      (channels.md §3.4)
     └── ConnectionRefused(code)         -> ``pusher:error`` then close with ``code`` (§1.2)
    ApiError(status, message)            -> an HTTP error response (http-api.md §7)

Errors are raised in the pure core and mapped to the wire in exactly one place each:
:mod:`kanal.protocol.session` for WebSocket errors, :mod:`kanal.transport.http` for ApiError.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ApiError",
    "CloseCode",
    "ConnectionRefused",
    "PusherError",
    "SubscriptionError",
]


class CloseCode(IntEnum):
    """WebSocket close codes kanal uses (protocol.md §6, limits.md §2).

    4000-4099: refused, the client must not reconnect unchanged.
    4100-4199: the client reconnects after backing off.
    4200-4299: the client reconnects immediately.
    """

    SSL_ONLY = 4000  #: app accepts only TLS connections
    APP_NOT_FOUND = 4001  #: unknown app key
    APP_DISABLED = 4003  #: app switched off
    OVER_QUOTA = 4004  #: per-app max_connections reached
    PATH_NOT_FOUND = 4005  #: upgrade on an unknown path
    INVALID_VERSION = 4006  #: ``protocol`` is not an integer
    UNSUPPORTED_VERSION = 4007  #: ``protocol`` outside 4..7
    NO_VERSION = 4008  #: ``protocol`` missing (strict mode only)
    UNAUTHORIZED = 4009  #: origin refused, auth timeout, terminate_connections
    OVER_CAPACITY = 4100  #: server-wide cap, or a slow consumer (back off, then retry)
    RECONNECT = 4200  #: graceful shutdown / draining
    PONG_TIMEOUT = 4201  #: heartbeat failure (protocol.md §5.2)


class PusherError(Exception):
    """A request-level failure reported with ``pusher:error``; never closes the connection.

    Args:
        code: the Pusher error code, or ``None`` for request-level failures (protocol.md §4.3).
        message: human-readable text sent as ``data.message``.
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SubscriptionError(PusherError):
    """A failed ``pusher:subscribe`` (channels.md §3.4).

    Args:
        channel: the channel that could not be joined.
        kind: ``AuthError``, ``LimitReached``, ``InvalidChannel`` or ``ServerError``.
        status: 401, 403, 400 or 500, echoing HTTP semantics for the client.
        message: the error text.
    """

    def __init__(self, channel: str, kind: str, status: int, message: str) -> None:
        super().__init__(None, message)
        self.channel = channel
        self.kind = kind
        self.status = status


class ConnectionRefused(PusherError):
    """The connection must be refused or closed with ``code`` after a ``pusher:error``."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(int(code), message)
        self.close_code = code


class ApiError(Exception):
    """An HTTP API failure: status code and a one-line ``text/plain`` body (http-api.md §7)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
