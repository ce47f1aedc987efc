"""Accepting or refusing a WebSocket connection (protocol.md §1.2).

The checks run after the upgrade so the client can receive a close code, in the spec's
order: protocol version, app key, app disabled, TLS-only, origin allow-list. The per-app
connection quota (4004) and server capacity (4100) need cluster state and are the hub's; the
per-IP rate of new connections is :mod:`kanal.protocol.flood`'s.

``allowed_origins`` entries (docs/configuration.md, "Origins"): ``"*"`` allows every origin;
an entry without ``*`` is compared with the ``Origin`` header as a string; a wildcard entry
``scheme://*.host[:port]`` allows every origin with that scheme and port whose host is
``host`` preceded by one or more DNS labels: ``https://*.example.com`` allows
``https://a.example.com`` and ``https://a.b.example.com``, and neither ``https://example.com``
(list it as well), ``http://a.example.com``, ``https://a.example.com:8443`` nor
``https://a-example.com``.
"""

from __future__ import annotations

import re

from kanal.config import App
from kanal.protocol.errors import CloseCode, ConnectionRefused

__all__ = [
    "MAX_PROTOCOL",
    "MIN_PROTOCOL",
    "check_handshake",
    "origin_allowed",
    "origin_pattern_error",
]

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
    if app.allowed_origins and not origin_allowed(origin, app.allowed_origins):
        return ConnectionRefused(CloseCode.UNAUTHORIZED, "Origin not allowed")
    return None


# What the ``*`` of a wildcard entry stands for: one or more DNS labels (letters, digits,
# hyphens; underscores too, which some internal names use). Nothing that could end a host
# (``:``, ``/``, ``@``) can be part of it, so a match cannot reach past the host.
_LABELS = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_BASE_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*(?::[0-9]{1,5})?")
_WILDCARD = "://*."


def origin_pattern_error(pattern: str) -> str | None:
    """Why an ``allowed_origins`` entry can never work as meant, or ``None``.

    Only wildcard entries are checked: an exact entry is compared as a string, as before
    wildcards existed, so every entry that worked then still does.
    """
    if pattern == "*" or "*" not in pattern:
        return None
    scheme, found, base = pattern.partition(_WILDCARD)
    ok = (
        bool(found)
        and scheme.isascii()
        and scheme.isalpha()
        and _BASE_HOST.fullmatch(base.lower()) is not None
    )
    if not ok:
        return "a '*' may only stand for the first labels of the host: https://*.example.com"
    return None


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Does ``allowed`` (a non-empty ``allowed_origins``) let ``origin`` connect? A missing
    ``Origin`` header (not a browser) matches only ``"*"``."""
    for pattern in allowed:
        if pattern == "*" or pattern == origin:
            return True
        if origin is not None and _WILDCARD in pattern and _wildcard_match(origin, pattern):
            return True
    return False


def _wildcard_match(origin: str, pattern: str) -> bool:
    """``scheme://*.base`` against an origin, case-insensitively (schemes and host names are
    case-insensitive, RFC 3986 §3.1 and §3.2.2)."""
    origin, pattern = origin.lower(), pattern.lower()
    scheme, _, base = pattern.partition(_WILDCARD)
    head, tail = scheme + "://", "." + base
    if len(origin) <= len(head) + len(tail):
        return False
    if not (origin.startswith(head) and origin.endswith(tail)):
        return False
    return _LABELS.fullmatch(origin[len(head) : -len(tail)]) is not None
