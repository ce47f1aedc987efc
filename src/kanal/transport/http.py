"""HTTP API routes (HTTP_API.md) and health checks.

Ownership rule: this module owns HTTP requests and responses. Each handler is
verify (:mod:`kanal.protocol.signatures`) -> parse (:mod:`kanal.protocol.api`) -> hub -> JSON;
:class:`~kanal.protocol.errors.ApiError` is mapped to a ``text/plain`` response here and only
here (HTTP_API.md §7).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson

from kanal.adapters.base import ChannelCounts
from kanal.apps import AppStore
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol import api
from kanal.protocol.channels import SERVER_TO_USER_PREFIX, channel_type
from kanal.protocol.errors import ApiError
from kanal.protocol.signatures import verify_request
from kanal.transport.http11 import Request, Response

__all__ = ["HttpApi"]

log = logging.getLogger("kanal.http")

Handler = Callable[[Request, App, bytes], Awaitable[Any]]
Endpoint = Callable[[Request], Awaitable[Response]]


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
                found[segment[1:-1]] = unquote(part)
            elif part != segment:
                return None
        return found


class _RateLimiter:
    """Per-app token bucket for the optional request-rate limits (LIMITS.md §4, 429)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, rate: int, now: float) -> bool:
        if rate <= 0:
            return True
        tokens, at = self._buckets.get(key, (float(rate), now))
        tokens = min(float(rate), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


def _count_attributes(channel: str, counts: ChannelCounts, info: frozenset[str]) -> dict[str, int]:
    """The requested counts that apply: user_count on presence channels only (HTTP_API.md §3,
    §5.1), subscription_count on any channel."""
    out: dict[str, int] = {}
    if "user_count" in info and channel_type(channel).is_presence:
        out["user_count"] = counts.user_count
    if "subscription_count" in info:
        out["subscription_count"] = counts.subscription_count
    return out


def _json(body: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(body), "application/json")


class HttpApi:
    """The six endpoints, the Python SDK's terminate path, ``GET /`` and ``GET /ready``."""

    def __init__(
        self,
        hub: Hub,
        apps: AppStore,
        *,
        path_prefix: str,
        max_request_bytes: int,
        expose_signature_hint: bool,
        ready: Callable[[], tuple[bool, str]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub
        self._apps = apps
        self._prefix = path_prefix.rstrip("/")
        self._max_body = max_request_bytes
        self._hint = expose_signature_hint
        self._ready = ready
        self._wall = wall
        self._limits = _RateLimiter()
        self._table = self._routes()

    def _routes(self) -> list[_Route]:
        def wrap(handler: Handler, write: bool = False) -> Endpoint:
            return self._wrap(handler, write=write)

        return [
            _Route("GET", "", self.health),
            _Route("GET", "ready", self.readiness),
            _Route("GET", "metrics", self.metrics),
            _Route("POST", "apps/{app_id}/events", wrap(self.events, write=True)),
            _Route("POST", "apps/{app_id}/batch_events", wrap(self.batch, write=True)),
            _Route("GET", "apps/{app_id}/channels", wrap(self.channels)),
            _Route("GET", "apps/{app_id}/channels/{channel}", wrap(self.channel)),
            _Route("GET", "apps/{app_id}/channels/{channel}/users", wrap(self.users)),
            _Route(
                "POST",
                "apps/{app_id}/users/{user_id}/terminate_connections",
                wrap(self.terminate, write=True),
            ),
            # pusher-http-python signs and sends this path without /apps/{id} (HTTP_API.md §8).
            _Route("POST", "users/{user_id}/terminate_connections", wrap(self.terminate, True)),
        ]

    async def dispatch(self, request: Request) -> Response:
        """Route a request: 404 for an unknown path, 405 for a known path's wrong method."""
        path = request.path
        if self._prefix:
            if not path.startswith(self._prefix):
                return Response(404, b"Not found")
            path = path[len(self._prefix) :]
        parts = path.strip("/").split("/")
        known = False
        for route in self._table:
            found = route.match(parts)
            if found is None:
                continue
            if request.method in (route.method, "HEAD" if route.method == "GET" else ""):
                request.match = found
                return await route.endpoint(request)
            known = True
        return Response(405, b"Method not allowed") if known else Response(404, b"Not found")

    async def health(self, request: Request) -> Response:
        return _json({"ok": True})

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format (docs/metrics.md)."""
        return Response(200, self._hub.metrics.render().encode())

    async def readiness(self, request: Request) -> Response:
        ok, detail = self._ready()
        return _json({"ready": ok, "detail": detail}, 200 if ok else 503)

    def _wrap(self, handler: Handler, *, write: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                app, body = self._authenticate(request, write)
                response = _json(await handler(request, app, body))
            except ApiError as error:
                response = Response(error.status, error.message.encode())
            labels = {"endpoint": handler.__name__, "status": str(response.status)}
            self._hub.metrics.inc_labelled("kanal_http_requests_total", labels)
            return response

        return endpoint

    def _authenticate(self, request: Request, write: bool) -> tuple[App, bytes]:
        """HTTP_API.md §1-2: find the app, check the body size, verify the signature."""
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
        verify_request(
            method=request.method,
            path=path,
            query=request.query_items,
            body=body,
            app_key=app.key,
            app_secret=app.secret,
            now=self._wall(),
            expose_hint=self._hint,
            max_skew=app.max_timestamp_skew,
        )
        if not app.enabled:
            raise ApiError(403, "Application disabled")
        rate = app.max_backend_requests_per_second if write else app.max_read_requests_per_second
        if not self._limits.allow(f"{app.id}:{write}", rate, time.monotonic()):
            raise ApiError(429, "Too many requests")
        return app, body

    async def events(self, request: Request, app: App, body: bytes) -> Any:
        event = api.parse_trigger(body, app)
        await self._publish(app, event)
        if not event.info:
            return {}
        return {"channels": {ch: await self._info(app, ch, event.info) for ch in event.channels}}

    async def batch(self, request: Request, app: App, body: bytes) -> Any:
        batch = api.parse_batch(body, app)
        for event in batch:  # HTTP_API.md §4: publish in array order
            await self._publish(app, event)
        if not any(event.info for event in batch):
            return {}
        return {"batch": [await self._info(app, e.channels[0], e.info) for e in batch]}

    async def _publish(self, app: App, event: api.TriggerEvent) -> None:
        for channel in event.channels:
            await self._hub.publish_event(app, channel, event.name, event.data, event.socket_id)

    async def _info(self, app: App, channel: str, info: frozenset[str]) -> dict[str, int]:
        """Trigger ``info`` (§3): user_count on presence only, subscription_count anywhere."""
        if not info or channel.startswith(SERVER_TO_USER_PREFIX):
            return {}
        counts = await self._hub.membership.counts(app.id, channel)
        return _count_attributes(channel, counts, info)

    async def channels(self, request: Request, app: App, body: bytes) -> Any:
        query = api.parse_channels_query(request.query)
        listed = await self._hub.membership.channels(app.id, query.prefix)
        result: dict[str, dict[str, int]] = {}
        for name, counts in sorted(listed.items()):
            if name.startswith("#") or counts.subscription_count <= 0:
                continue
            result[name] = _count_attributes(name, counts, query.info)
        return {"channels": result}

    async def channel(self, request: Request, app: App, body: bytes) -> Any:
        query = api.parse_channel_query(request.match["channel"], request.query, app)
        counts = await self._hub.membership.counts(app.id, query.channel)
        out: dict[str, Any] = {"occupied": counts.subscription_count > 0}
        if "user_count" in query.info:
            out["user_count"] = counts.user_count
        if "subscription_count" in query.info:
            out["subscription_count"] = counts.subscription_count
        if "cache" in query.info:
            cached = await self._hub.membership.cache_get(app.id, query.channel, self._wall())
            out["cache"] = None if cached is None else {"data": cached.data, "ttl": cached.ttl}
        return out

    async def users(self, request: Request, app: App, body: bytes) -> Any:
        channel = api.parse_users_channel(request.match["channel"], app)
        user_ids = await self._hub.membership.users(app.id, channel)
        return {"users": [{"id": user_id} for user_id in user_ids]}

    async def terminate(self, request: Request, app: App, body: bytes) -> Any:
        user_id = api.parse_user_id(request.match["user_id"])
        await self._hub.terminate_user(app, user_id)
        return {}
