"""Accepting or refusing a WebSocket connection (protocol.md §1.2).

The checks run after the upgrade so the client can receive a close code, in the spec's
order: protocol version, app key, app disabled, TLS-only, origin allow-list. The per-app
connection quota (4004) and server capacity (4100) need cluster state and are the hub's.
"""

from __future__ import annotations

from kanal.config import App
from kanal.protocol.errors import CloseCode, ConnectionRefused

__all__ = ["MAX_PROTOCOL", "MIN_PROTOCOL", "check_handshake"]

MIN_PROTOCOL = 4  # 1-3 are unsupported per the docs
MAX_PROTOCOL = 7  # pusher-js and Swift send 7; the Java client sends 5


def _check_protocol(protocol: str | None, strict: bool) -> ConnectionRefused | None:
    if protocol is None:
        # [choice] absent -> treated as 7 unless strict (protocol.md §1.2 step 2).
        if strict:
            return ConnectionRefused(CloseCode.NO_VERSION, "No protocol version supplied")
        return None
    if not protocol.isdecimal() or not protocol.isascii():
        return ConnectionRefused(CloseCode.INVALID_VERSION, "Invalid version string format")
    if not MIN_PROTOCOL <= int(protocol) <= MAX_PROTOCOL:
        return ConnectionRefused(CloseCode.UNSUPPORTED_VERSION, "Unsupported protocol version")
    return None


def check_handshake(
    app: App | None,
    *,
    protocol: str | None,
    secure: bool,
    origin: str | None,
    strict_protocol: bool = False,
) -> ConnectionRefused | None:
    """Return why the connection must be refused, or ``None`` to accept it."""
    refused = _check_protocol(protocol, strict_protocol)
    if refused is not None:
        return refused
    if app is None:
        return ConnectionRefused(CloseCode.APP_NOT_FOUND, "Application does not exist")
    if not app.enabled:
        return ConnectionRefused(CloseCode.APP_DISABLED, "Application disabled")
    if app.require_tls and not secure:
        return ConnectionRefused(
            CloseCode.SSL_ONLY,
            "Application only accepts SSL connections, reconnect using wss://",
        )
    if app.allowed_origins and origin not in app.allowed_origins and "*" not in app.allowed_origins:
        return ConnectionRefused(CloseCode.UNAUTHORIZED, "Origin not allowed")
    return None
