"""Who may open a WebSocket connection: the Pusher handshake checks and the per-IP limit.

Ownership rule: every WebSocket transport (kanal's own, :mod:`kanal.transport.websocket`, and
the ASGI adapter) asks :class:`Admission` about each new connection and nothing else decides
it before the hub's quotas. It owns the per-IP token buckets
(``[server] max_connections_per_ip_per_second``, :mod:`kanal.protocol.flood`), which client
address a connection counts under (``trust_proxy_headers``), and the log line of every
refusal (rate-limited, :func:`kanal.logs.refused`). The rules themselves are pure code in
:mod:`kanal.protocol.handshake` and :mod:`kanal.protocol.flood`.

Order: the per-IP limit comes first, so a flood of connections with a wrong key or path is
limited as well, then protocol.md §1.2's steps (path, version, key, disabled, TLS, origin).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import unquote

from kanal import logs
from kanal.apps import AppStore
from kanal.config import App
from kanal.protocol.errors import CloseCode, ConnectionRefused
from kanal.protocol.flood import ConnectionRate, client_address
from kanal.protocol.handshake import check_handshake
from kanal.transport.http11 import Request

__all__ = ["TOO_MANY_CONNECTIONS", "Admission"]

log = logging.getLogger("kanal.websocket")

#: The ``pusher:error`` message of a connection over the per-IP rate (close 4100: back off).
TOO_MANY_CONNECTIONS = "Too many new connections from this address, back off"


class Admission:
    """Decides, for each new WebSocket connection, its app or why it is refused."""

    def __init__(
        self,
        apps: AppStore,
        *,
        path_prefix: str = "",
        strict_protocol: bool = False,
        trust_proxy_headers: bool = False,
        max_connections_per_ip_per_second: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._apps = apps
        self._app_path = path_prefix.rstrip("/") + "/app/"
        self._strict = strict_protocol
        self._trust_proxy = trust_proxy_headers
        per_second = max_connections_per_ip_per_second
        self._rate = ConnectionRate(per_second) if per_second > 0 else None
        self.clock = clock  # monotonic seconds; tests may stop it

    def app_key(self, path: str) -> str | None:
        """The key in ``{prefix}/app/{key}``, or None for any other path."""
        if not path.startswith(self._app_path):
            return None
        key = unquote(path[len(self._app_path) :])
        return key if key and "/" not in key else None

    def client(self, request: Request) -> str:
        """The client's address: the socket's peer, or (``trust_proxy_headers``) the first
        address of ``X-Forwarded-For`` (docs/deployment.md)."""
        return client_address(
            request.client, request.headers.get("x-forwarded-for"), self._trust_proxy
        )

    def app_by_key(self, key: str) -> App | None:
        """The app with this key, whatever its state (an HTTP session's CORS answer)."""
        return self._apps.by_key(key)

    def check(
        self, request: Request, client: str, key: str | None = None
    ) -> App | ConnectionRefused:
        """The app a new connection from ``client`` belongs to, or why it is refused (logged,
        rate-limited). ``key``: the app key when it is not the WebSocket path's (an HTTP
        session's, :mod:`kanal.transport.xhr`)."""
        if self._rate is not None and not self._rate.allow(client, self.clock()):
            refused = ConnectionRefused(CloseCode.OVER_CAPACITY, TOO_MANY_CONNECTIONS)
            self._log(refused, request, client, per_ip=True)
            return refused
        if key is None:
            key = self.app_key(request.path)
        if key is None:  # protocol.md §1.2 step 1: refused after the upgrade, not with a 404
            refused = ConnectionRefused(CloseCode.PATH_NOT_FOUND, "Path not found")
            self._log(refused, request, client)
            return refused
        app = self._apps.by_key(key)
        refused_or_none = check_handshake(
            app,
            protocol=request.query.get("protocol"),
            secure=self._is_secure(request),
            origin=request.headers.get("origin"),
            strict_protocol=self._strict,
        )
        if refused_or_none is not None:
            self._log(refused_or_none, request, client)
            return refused_or_none
        assert app is not None
        return app

    def _is_secure(self, request: Request) -> bool:
        """TLS here, or (when trusted) at the proxy in front of us (docs/deployment.md)."""
        if request.secure:
            return True
        forwarded = request.headers.get("x-forwarded-proto", "")
        return self._trust_proxy and forwarded.split(",")[0].strip().lower() == "https"

    def _log(
        self, refused: ConnectionRefused, request: Request, client: str, per_ip: bool = False
    ) -> None:
        # One kind of line per close code, the per-IP limit apart, so that a flood of one
        # kind cannot hide the others. The path and origin are the client's words: cut to a
        # bounded length (logs.reason).
        code = int(refused.close_code)
        origin = request.headers.get("origin")
        logs.refused(
            log,
            "connection refused per-IP" if per_ip else f"connection refused {code}",
            "refused connection from %s to %s (origin %s): %s (%d)",
            client or "?",
            logs.reason(request.path),
            logs.reason(origin) if origin is not None else "none",
            refused.message,
            code,
            client=client,
            code=code,
            reason=refused.message,
        )
