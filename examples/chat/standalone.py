"""The presence chat against a standalone kanal, through the official pusher SDK.

kanal runs on its own (``./scripts/serve``: the development app on 127.0.0.1:6001); this app
signs members and publishes messages with the ``pusher`` Python SDK over kanal's HTTP API, as
it would against the hosted Pusher service. ``$PUSHER_URL`` says where kanal is and with which
app, ``http://KEY:SECRET@HOST:PORT/apps/ID``; it defaults to ``./scripts/serve``'s. Run it with
``examples/chat/run`` (README.md beside this file).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import pusher
from chat import Unavailable, create_chat
from pusher.aiohttp import AsyncIOBackend
from pusher.errors import PusherError

DEV_APP = "http://app-key:app-secret@127.0.0.1:6001/apps/1"  # ./scripts/serve's, public


def parse_pusher_url(url: str) -> tuple[SplitResult, str]:
    """(the URL's parts, the app id); the SDK's own ``Pusher.from_url`` drops the port."""
    parts = urlsplit(url)
    app = re.fullmatch(r"/apps/(\d+)/?", parts.path)
    if parts.scheme not in ("http", "https") or not parts.username or not parts.password:
        raise ValueError(f"PUSHER_URL {url!r}: expected http(s)://KEY:SECRET@HOST:PORT/apps/ID")
    if app is None or not parts.hostname:
        raise ValueError(f"PUSHER_URL {url!r}: expected http(s)://KEY:SECRET@HOST:PORT/apps/ID")
    return parts, app[1]


class SdkChannels:
    """Signs and publishes with the pusher SDK; the page connects to kanal's own port."""

    def __init__(self, url: str) -> None:
        parts, app_id = parse_pusher_url(url)
        self.key = str(parts.username)
        self.tls = parts.scheme == "https"
        self.host = str(parts.hostname)
        self.port = parts.port or (443 if self.tls else 80)
        # The SDK's asyncio backend: trigger() is a coroutine, so no thread is blocked.
        self.client = pusher.Pusher(
            app_id=app_id,
            key=self.key,
            secret=parts.password,
            host=self.host,
            port=self.port,
            ssl=self.tls,
            backend=AsyncIOBackend,
        )

    def client_options(self) -> dict[str, Any]:
        return {
            "wsHost": self.host,
            "wsPort": self.port,
            "wssPort": self.port,
            "forceTLS": self.tls,
        }

    def authorize(self, socket_id: str, channel: str, name: str) -> dict[str, Any]:
        member = {"user_id": name, "user_info": {"name": name}}
        signed: dict[str, Any] = self.client.authenticate(channel, socket_id, member)
        return signed

    async def publish(self, channel: str, event: str, data: dict[str, Any], socket_id: str) -> None:
        try:
            await self.client.trigger(channel, event, data, socket_id or None)
        except (PusherError, aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"kanal at {self.host}:{self.port}: {exc!r}") from exc


app = create_chat(SdkChannels(os.environ.get("PUSHER_URL") or DEV_APP))
