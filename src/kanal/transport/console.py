"""The live console's HTTP side: ``{prefix}/console/`` (docs/console.md).

Ownership rule: this module owns the console's requests and responses and its one credential
check; what it shows comes from :class:`kanal.console.Recorder` (this node's records) and
:meth:`kanal.service.ChannelsApi.overview` (the store's answers), and its trigger form goes
through :meth:`kanal.service.ChannelsApi.trigger`, the HTTP API's own call. Both transports
serve it, as they serve the HTTP API: :class:`kanal.transport.http.HttpApi` routes to it.

The page and its two assets are static files of the package and carry no data, so they load
without the token; every ``api/`` request needs ``Authorization: Bearer <admin_token>``,
compared in constant time. The live log is a long poll on the recorder's rings: the server
keeps nothing per console, so a console that stops reading costs nothing and cannot make the
server buffer (docs/console.md, "How it is fed").
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson

from kanal.apps import AppStore
from kanal.config import App
from kanal.console import Recorder
from kanal.protocol import api
from kanal.protocol.errors import ApiError
from kanal.service import ChannelsApi
from kanal.transport.http11 import Request, Response

__all__ = ["Console"]

log = logging.getLogger("kanal.console")

#: The longest a poll waits for news, under the recorder's 30 s lease and common proxy timeouts.
MAX_WAIT = 20.0
MAX_CHANNELS = 200
MAX_MEMBERS = 100
_ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
}
_PAGE_HEADERS = (
    # The page loads nothing from elsewhere and may not be framed (clickjacking the form).
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)
_API_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="kanal console"'), *_API_HEADERS)

Endpoint = Callable[[Request], Awaitable[Response]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(body), "application/json", _API_HEADERS)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class Console:
    """The console's endpoints; :class:`~kanal.transport.http.HttpApi` adds them to its table
    only when an admin token is set.

    Args:
        token: ``[server] admin_token``.
        cluster: whether counts come from a shared store (the page says so).
        node_connections: this node's connection count, all apps.
    """

    def __init__(
        self,
        token: str,
        recorder: Recorder,
        service: ChannelsApi,
        apps: AppStore,
        *,
        cluster: bool,
        node_connections: Callable[[], int],
    ) -> None:
        self._token = token.encode()
        self._recorder = recorder
        self._service = service
        self._apps = apps
        self._cluster = cluster
        self._node_connections = node_connections
        self._files: dict[str, bytes] = {}

    def routes(self) -> list[tuple[str, str, Endpoint]]:
        """(method, pattern, endpoint) in the HTTP API's route syntax."""
        return [
            ("GET", "console", self.asset),
            ("GET", "console/{asset}", self.asset),
            ("GET", "console/api/apps", self._guard(self.apps)),
            ("GET", "console/api/apps/{app_id}/overview", self._guard(self.overview)),
            ("GET", "console/api/apps/{app_id}/stream", self._guard(self.stream)),
            ("POST", "console/api/apps/{app_id}/events", self._guard(self.trigger)),
        ]

    # --- the page ---------------------------------------------------------------------------

    async def asset(self, request: Request) -> Response:
        name = request.match.get("asset", "")
        if name == "" and not request.path.endswith("/"):
            # Relative asset and API URLs resolve against ".../console/", wherever it is
            # mounted (a path prefix, an ASGI mount): a relative redirect keeps the mount.
            location = request.path.rsplit("/", 1)[-1] + "/"
            return Response(308, b"", headers=(("Location", location),))
        found = _ASSETS.get(name)
        if found is None:
            return Response(404, b"Not found")
        filename, content_type = found
        return Response(200, self._file(filename), content_type, _PAGE_HEADERS)

    def _file(self, filename: str) -> bytes:
        body = self._files.get(filename)
        if body is None:
            body = resources.files("kanal.console").joinpath("static", filename).read_bytes()
            self._files[filename] = body
        return body

    # --- the API ----------------------------------------------------------------------------

    def _guard(self, endpoint: Callable[[Request, App | None], Awaitable[Response]]) -> Endpoint:
        async def guarded(request: Request) -> Response:
            if not self._authorized(request):
                log.warning("console: request without a valid admin token refused")
                return Response(
                    401, b'{"error":"admin token required"}', "application/json", _CHALLENGE
                )
            app = None
            app_id = request.match.get("app_id")
            if app_id is not None:
                app = self._apps.by_id(app_id)
                if app is None:
                    return _error(404, f"Unknown app id: {app_id}")
            try:
                return await endpoint(request, app)
            except ApiError as error:
                return _error(error.status, error.message)

        return guarded

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    async def apps(self, request: Request, app: App | None) -> Response:
        """Every app's id, key and state: never its secret."""
        listed = [{"id": a.id, "key": a.key, "enabled": a.enabled} for a in self._apps.all()]
        return _json({"apps": listed, "cluster": self._cluster})

    async def overview(self, request: Request, app: App | None) -> Response:
        assert app is not None
        self._recorder.watch(app.id)  # rates are measured only while someone looks
        body = await self._service.overview(app, max_channels=MAX_CHANNELS, max_members=MAX_MEMBERS)
        rates = self._recorder.rates(app.id)
        body["messages_in_per_second"] = None if rates is None else round(rates[0], 1)
        body["messages_out_per_second"] = None if rates is None else round(rates[1], 1)
        body["cluster"] = self._cluster
        body["node_connections"] = self._node_connections()
        return _json(body)

    async def stream(self, request: Request, app: App | None) -> Response:
        """Long poll: records after the cursors ``events`` and ``webhooks``, waiting up to
        ``wait`` seconds for the first one."""
        assert app is not None
        query = request.query
        try:
            events, webhooks = int(query.get("events", "0")), int(query.get("webhooks", "0"))
            wait = min(MAX_WAIT, max(0.0, float(query.get("wait", "0"))))
        except ValueError:
            return _error(400, "events and webhooks must be integers, wait a number")
        self._recorder.watch(app.id)
        page = await self._recorder.wait(app.id, events, webhooks, wait)
        return _json(page.to_json())

    async def trigger(self, request: Request, app: App | None) -> Response:
        """The form's event, through the service call the HTTP API's trigger makes."""
        assert app is not None
        try:
            fields = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return _error(400, "The body must be a JSON object")
        if not isinstance(fields, dict):
            return _error(400, "The body must be a JSON object")
        data = fields.get("data", "")
        channels = fields.get("channels")
        event = api.trigger_event(
            app,
            name=fields.get("name", ""),  # type and value checks are trigger_event's
            channels=channels if isinstance(channels, list) else [],
            data=data if isinstance(data, str) else orjson.dumps(data).decode(),
            socket_id=fields.get("socket_id") or None,
        )
        return _json(await self._service.trigger(app, event))
