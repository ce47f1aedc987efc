"""The presence chat's web app, shared by its two variants (README.md beside this file).

``create_chat(channels)`` builds the Starlette app: the page, pusher-js from the repository's
node_modules, a login by name kept in a signed cookie, the channel auth endpoint pusher-js
calls, and ``POST /messages``, which publishes to the room with the sender's socket id so that
kanal leaves the sender out (the page shows its own message from the answer, once).

What differs between the variants is a :class:`Channels`: how the page connects, how a member
is signed and how a message is published. ``standalone.py`` uses the official pusher SDK
against a ``kanal serve``; ``embedded.py`` mounts kanal in this app and uses
``kanal_app.realtime``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Lifespan

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PUSHER_JS = HERE.parents[1] / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
NO_PUSHER_JS = (
    f"pusher-js is not installed ({PUSHER_JS} is missing): run `npm ci` in the repository "
    "root, or start the chat with examples/chat/run, which does."
)

ROOM = "presence-chat"  # presence: pusher-js keeps the list of who is online for the page
MESSAGE = "message"  # the event POST /messages publishes; typing is the page's client-typing
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
SOCKET_ID = re.compile(r"\d+\.\d+")  # what Pusher socket ids look like (checked before signing)
MAX_TEXT = 500
# A stand-in for your app's moderation: these names may log in, but the auth endpoint refuses
# them the room (403), which pusher-js reports as pusher:subscription_error.
BANNED = frozenset({"mallory"})

log = logging.getLogger("chat")


class Unavailable(Exception):
    """Pusher Channels did not take a message (kanal is down or answered with an error)."""


class Channels(Protocol):
    """What the chat needs from Pusher Channels; one implementation per variant."""

    @property
    def key(self) -> str:
        """The app key pusher-js connects with."""

    def client_options(self) -> dict[str, Any]:
        """``new Pusher(key, options)`` options that say where the page connects."""

    def authorize(self, socket_id: str, channel: str, name: str) -> dict[str, Any]:
        """The auth endpoint's answer admitting ``name`` to the presence ``channel``."""

    async def publish(self, channel: str, event: str, data: dict[str, Any], socket_id: str) -> None:
        """Trigger ``event`` on ``channel`` for everyone but ``socket_id`` (if not empty);
        raises :class:`Unavailable` when Pusher Channels does not take it."""


class Sessions:
    """Who is logged in: the name in a cookie with an HMAC, under a key made at start-up, so a
    restart logs everyone out. It stands in for your app's real sessions."""

    COOKIE = "chat_session"

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _mac(self, name: str) -> str:
        return hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()

    def log_in(self, response: Response, name: str) -> None:
        value = f"{name}.{self._mac(name)}"
        response.set_cookie(self.COOKIE, value, httponly=True, samesite="strict")

    def log_out(self, response: Response) -> None:
        response.delete_cookie(self.COOKIE, httponly=True, samesite="strict")

    def name(self, request: Request) -> str | None:
        name, _, mac = request.cookies.get(self.COOKIE, "").rpartition(".")
        return name if name and hmac.compare_digest(mac, self._mac(name)) else None


def may_join(name: str, channel: str) -> bool:
    """Your access rule, checked before signing: the one room, and nobody banned."""
    return channel == ROOM and name.lower() not in BANNED


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body, or ``{}`` (then every field is missing)."""
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def form_fields(request: Request) -> dict[str, str]:
    """pusher-js posts a urlencoded form (Starlette's ``request.form()`` would need
    python-multipart)."""
    fields = parse_qs((await request.body()).decode(errors="replace"))
    return {name: values[0] for name, values in fields.items()}


class ChatRoutes:
    """The app's endpoints, around one :class:`Channels` and one :class:`Sessions`."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.sessions = Sessions()

    async def config(self, request: Request) -> JSONResponse:
        """Everything the page needs to connect, so that both variants serve the same page."""
        options = {
            "enabledTransports": ["ws", "wss"],
            "cluster": "mt1",  # required by pusher-js, ignored by kanal
            # Same origin: the browser sends the session cookie with the auth request.
            "channelAuthorization": {"endpoint": "/pusher/auth", "transport": "ajax"},
            **self.channels.client_options(),
        }
        page = {"key": self.channels.key, "room": ROOM, "message_event": MESSAGE}
        return JSONResponse({**page, "options": options})

    async def login(self, request: Request) -> Response:
        name = (await json_object(request)).get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return error(422, "a name is 1 to 32 letters, digits, _ or -")
        response = JSONResponse({"name": name})
        self.sessions.log_in(response, name)
        return response

    async def me(self, request: Request) -> Response:
        """Who is logged in, or ``null``: not an error, as every visit starts by asking."""
        return JSONResponse({"name": self.sessions.name(request)})

    async def logout(self, request: Request) -> Response:
        response = JSONResponse({})
        self.sessions.log_out(response)
        return response

    async def pusher_auth(self, request: Request) -> Response:
        """pusher-js asks here before it subscribes: decide, then sign (or refuse: 403)."""
        name, form = self.sessions.name(request), await form_fields(request)
        channel, socket_id = form.get("channel_name", ""), form.get("socket_id", "")
        if name is None:
            return error(401, "log in first")
        if not SOCKET_ID.fullmatch(socket_id):
            return error(400, "socket_id is not a socket id")
        if not may_join(name, channel):
            return error(403, f"{name} may not join {channel}")
        return JSONResponse(self.channels.authorize(socket_id, channel, name))

    async def post_message(self, request: Request) -> Response:
        """Publish to the room for everyone but the sender's own socket; the answer is the
        message as published, which the sender's page shows instead of an echo."""
        name, body = self.sessions.name(request), await json_object(request)
        text, socket_id = body.get("text"), body.get("socket_id", "")
        if name is None:
            return error(401, "log in first")
        if not may_join(name, ROOM):
            return error(403, f"{name} may not post in {ROOM}")
        if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TEXT:
            return error(422, f"text is 1 to {MAX_TEXT} characters")
        if not isinstance(socket_id, str) or (socket_id and not SOCKET_ID.fullmatch(socket_id)):
            return error(422, "socket_id is not a socket id")
        message = {"from": name, "text": text.strip(), "at": int(time.time() * 1000)}
        try:
            await self.channels.publish(ROOM, MESSAGE, message, socket_id)
        except Unavailable as exc:
            return error(503, f"not sent: {exc}")
        return JSONResponse(message)

    async def page(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def pusher_js(self, request: Request) -> Response:
        """pusher-js from the npm package, never a CDN: without it, say how to install it."""
        if PUSHER_JS.is_file():
            return FileResponse(PUSHER_JS, media_type="text/javascript")
        return PlainTextResponse(NO_PUSHER_JS, 503)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/pusher.min.js", self.pusher_js),
            Route("/config", self.config),
            Route("/login", self.login, methods=["POST"]),
            Route("/me", self.me),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/pusher/auth", self.pusher_auth, methods=["POST"]),
            Route("/messages", self.post_message, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]


def create_chat(
    channels: Channels,
    *,
    mounts: Sequence[BaseRoute] = (),
    lifespan: Lifespan[Starlette] | None = None,
) -> Starlette:
    """The chat app; ``mounts`` and ``lifespan`` let a variant add kanal itself."""
    if not PUSHER_JS.is_file():
        log.error("%s", NO_PUSHER_JS)
    return Starlette(routes=[*ChatRoutes(channels).routes(), *mounts], lifespan=lifespan)
