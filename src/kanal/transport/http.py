"""HTTP API routes (http-api.md) and health checks.

Ownership rule: this module owns HTTP requests and responses, and nothing of the API's meaning.
Each handler is verify (:mod:`kanal.protocol.signatures`) -> parse (:mod:`kanal.protocol.api`)
-> :class:`kanal.service.ChannelsApi` -> JSON; :class:`~kanal.protocol.errors.ApiError` is
mapped to a ``text/plain`` response here and only here (http-api.md §7).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from kanal import logs
from kanal.apps import AppStore
from kanal.config import App
from kanal.metrics import CONTENT_TYPE, Metrics
from kanal.protocol import api
from kanal.protocol.errors import ApiError
from kanal.protocol.signatures import accepted_secrets, verify_request
from kanal.service import ChannelsApi
from kanal.transport.console import Console
from kanal.transport.http11 import Request, Response

__all__ = ["HttpApi"]

log = logging.getLogger("kanal.http")

Handler = Callable[[Request, App, bytes], Awaitable[Any]]
Endpoint = Callable[[Request], Awaitable[Response]]
#: The exposition ``GET /metrics`` answers: this process's, or its worker group's.
Scrape = Callable[[], Awaitable[bytes]]


class _Route:
    """``/apps/{app_id}/channels/{channel}``: literal segments and one-segment parameters."""

    __slots__ = ("endpoint", "method", "segments")

    def __init__(self, method: str, pattern: str, endpoint: Endpoint) -> None:
        self.method = method
        self.segments = pattern.split("/")
        self.endpoint = endpoint

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for part, segment in zip(parts, self.segments, strict=True):
            if segment.startswith("{"):
                if not part:
                    return None
                found[segment[1:-1]] = unquote(part) if "%" in part else part
            elif part != segment:
                return None
        return found


def _by_length(routes: list[_Route]) -> dict[int, list[_Route]]:
    """Routes by segment count: a request is matched against only those of its length."""
    index: dict[int, list[_Route]] = {}
    for route in routes:
        index.setdefault(len(route.segments), []).append(route)
    return index


_NOT_FOUND = Response(404, b"Not found")
_NOT_ALLOWED = Response(405, b"Method not allowed")
_EMPTY = Response(200, b"{}", "application/json")  # most answers: a trigger's


def _json(body: Any, status: int = 200) -> Response:
    if not body and status == 200 and type(body) is dict:
        return _EMPTY
    return Response(status, orjson.dumps(body), "application/json")


class HttpApi:
    """The six endpoints, the Python SDK's terminate path, ``GET /``, ``GET /ready`` and
    ``GET /metrics`` (unless ``scrape`` is None: ``metrics_port`` serves it instead)."""

    def __init__(
        self,
        service: ChannelsApi,
        apps: AppStore,
        metrics: Metrics,
        *,
        path_prefix: str,
        max_request_bytes: int,
        expose_signature_hint: bool,
        ready: Callable[[], tuple[bool, str]],
        wall: Callable[[], float] = time.time,
        console: Console | None = None,
        scrape: Scrape | None = None,
    ) -> None:
        self._service = service
        self._apps = apps
        self._metrics = metrics
        self._prefix = path_prefix.rstrip("/")
        self._max_body = max_request_bytes
        self._hint = expose_signature_hint
        self._ready = ready
        self._wall = wall
        self._scrape = scrape
        # The health checks alone are what an address without the HTTP API answers (a
        # WebSocket-only listener: [server] api_port set).
        self._probes = [_Route("GET", "", self.health), _Route("GET", "ready", self.readiness)]
        self._table = self._probes + self._routes()
        if console is not None:  # off unless [server] admin_token is set (docs/console.md)
            self._table += [_Route(*route) for route in console.routes()]
        self._by_length = _by_length(self._table)
        self._probes_by_length = _by_length(self._probes)

    def _routes(self) -> list[_Route]:
        wrap = self._wrap
        metrics = [_Route("GET", "metrics", self.metrics)] if self._scrape is not None else []
        return [
            *metrics,
            _Route("POST", "apps/{app_id}/events", wrap(self.events)),
            _Route("POST", "apps/{app_id}/batch_events", wrap(self.batch)),
            _Route("GET", "apps/{app_id}/channels", wrap(self.channels)),
            _Route("GET", "apps/{app_id}/channels/{channel}", wrap(self.channel)),
            _Route("GET", "apps/{app_id}/channels/{channel}/users", wrap(self.users)),
            _Route(
                "POST",
                "apps/{app_id}/users/{user_id}/terminate_connections",
                wrap(self.terminate),
            ),
            # pusher-http-python signs and sends this path without /apps/{id} (http-api.md §8).
            _Route("POST", "users/{user_id}/terminate_connections", wrap(self.terminate)),
        ]

    async def dispatch(self, request: Request) -> Response:
        """Route a request: 404 for an unknown path, 405 for a known path's wrong method."""
        endpoint = self._route(request, self._by_length)
        return endpoint if isinstance(endpoint, Response) else await endpoint(request)

    async def dispatch_probes(self, request: Request) -> Response:
        """Only ``GET /`` and ``GET /ready``; every other path is 404."""
        endpoint = self._route(request, self._probes_by_length)
        return endpoint if isinstance(endpoint, Response) else await endpoint(request)

    def _route(self, request: Request, table: dict[int, list[_Route]]) -> Endpoint | Response:
        """The endpoint for ``request`` (its path parameters set), or the 404/405 answer."""
        path = request.path
        if self._prefix:
            if not path.startswith(self._prefix):
                return _NOT_FOUND
            path = path[len(self._prefix) :]
        parts = path.strip("/").split("/")
        known = False
        for route in table.get(len(parts), ()):
            found = route.match(parts)
            if found is None:
                continue
            if request.method in (route.method, "HEAD" if route.method == "GET" else ""):
                request.match = found
                return route.endpoint
            known = True
        return _NOT_ALLOWED if known else _NOT_FOUND

    async def health(self, request: Request) -> Response:
        return _json({"ok": True})

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format (docs/metrics.md)."""
        assert self._scrape is not None  # the route exists only with a scrape
        return Response(200, await self._scrape(), CONTENT_TYPE)

    async def readiness(self, request: Request) -> Response:
        ok, detail = self._ready()
        return _json({"ready": ok, "detail": detail}, 200 if ok else 503)

    def _wrap(self, handler: Handler) -> Endpoint:
        name = handler.__name__

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            app_id = ""  # until authenticated: an unknown id in the path is no label value
            try:
                app, body = self._authenticate(request)
                app_id = app.id
                response = _json(await handler(request, app, body))
            except ApiError as error:
                response = Response(error.status, error.message.encode())
                if error.status == 401:
                    _refused(request, error)
            self._metrics.request(app_id, name, response.status, time.perf_counter() - started)
            if log.isEnabledFor(logging.DEBUG):
                _called(request, response)
            return response

        return endpoint

    def _authenticate(self, request: Request) -> tuple[App, bytes]:
        """http-api.md §1-2: find the app, check the body size, verify the signature."""
        body = request.body
        if len(body) > self._max_body:
            raise ApiError(413, f"Request body over {self._max_body} bytes")
        app_id = request.match.get("app_id")
        if app_id is not None:
            app = self._apps.by_id(app_id)
            if app is None:
                raise ApiError(404, f"Unknown app id: {app_id}")
        else:
            app = self._apps.by_key(request.query.get("auth_key", ""))
            if app is None:
                raise ApiError(401, "Unknown auth_key")
        path = request.path
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :]  # the signed path has no mount prefix (§1)
        now = self._wall()
        verify_request(
            method=request.method,
            path=path,
            query=request.query_items,
            body=body,
            app_key=app.key,
            app_secrets=accepted_secrets(app, now),
            now=now,
            expose_hint=self._hint,
            max_skew=app.max_timestamp_skew,
        )
        return app, body

    # The two writes return the service's coroutine rather than awaiting it in one of their
    # own: a frame less on the path every trigger takes (docs/performance.md).
    def events(self, request: Request, app: App, body: bytes) -> Awaitable[Any]:
        return self._service.trigger(app, api.parse_trigger(body, app))

    def batch(self, request: Request, app: App, body: bytes) -> Awaitable[Any]:
        return self._service.trigger_batch(app, api.parse_batch(body, app))

    async def channels(self, request: Request, app: App, body: bytes) -> Any:
        return await self._service.channels(app, api.parse_channels_query(request.query))

    async def channel(self, request: Request, app: App, body: bytes) -> Any:
        query = api.parse_channel_query(request.match["channel"], request.query, app)
        return await self._service.channel(app, query)

    async def users(self, request: Request, app: App, body: bytes) -> Any:
        channel = api.parse_users_channel(request.match["channel"], app)
        return await self._service.users(app, channel)

    async def terminate(self, request: Request, app: App, body: bytes) -> Any:
        return await self._service.terminate_user_connections(app, request.match["user_id"])


def _refused(request: Request, error: ApiError) -> None:
    """An HTTP API call whose signature (or key, timestamp, body_md5) did not check out."""
    why = logs.reason(error.message)
    logs.refused(
        log,
        "api refused 401",
        "refused API call %s %s from %s: %s (401)",
        request.method,
        logs.reason(request.path),
        request.client or "?",
        why,
        method=request.method,
        path=request.path,
        client=request.client,
        status=401,
        reason=why,
    )


def _called(request: Request, response: Response) -> None:
    """One API call at DEBUG: method, path and status; never the query (its auth_signature)."""
    log.debug(
        "API %s %s from %s: %d (%d bytes)",
        request.method,
        request.path,
        request.client or "?",
        response.status,
        len(response.body),
        extra={
            "method": request.method,
            "path": request.path,
            "app_id": request.match.get("app_id"),
            "client": request.client,
            "status": response.status,
        },
    )
