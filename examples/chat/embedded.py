"""The same presence chat with kanal inside it: one process, one port, no ``kanal serve``.

kanal's ASGI app (``kanal.asgi.create_app``) is mounted at /realtime and started by the chat's
lifespan; members are signed and messages published in-process with ``kanal_app.realtime``,
without HTTP. The page, its JavaScript and every route are those of ``chat.py``; only where
pusher-js connects (``wsPath: "/realtime"`` on the page's own host and port) differs. Run it
with ``examples/chat/run --embedded`` (README.md beside this file).
"""

from __future__ import annotations

from typing import Any

from chat import create_chat
from starlette.routing import Mount

from kanal.asgi import create_app
from kanal.realtime import Realtime

# kanal's development credentials, as `kanal serve` uses them without configuration; client
# events (the page's "is typing") are off by default for an app given like this, so say so.
kanal_app = create_app(
    id="1",
    key="app-key",
    secret="app-secret",  # noqa: S106 -- public development secret
    enable_client_messages=True,
)


class EmbeddedChannels:
    """Signs and publishes with the node this process runs; the page connects under /realtime."""

    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime
        self.key = realtime.app().key

    def client_options(self) -> dict[str, Any]:
        return {"wsPath": "/realtime"}  # host, port and TLS: the page's own (chat.js)

    def authorize(self, socket_id: str, channel: str, name: str) -> dict[str, Any]:
        return self.realtime.authorize_channel(socket_id, channel, name, {"name": name})

    async def publish(self, channel: str, event: str, data: dict[str, Any], socket_id: str) -> None:
        await self.realtime.trigger(channel, event, data, socket_id=socket_id or None)


app = create_chat(
    EmbeddedChannels(kanal_app.realtime),
    mounts=[Mount("/realtime", app=kanal_app)],
    lifespan=kanal_app.lifespan,  # Starlette does not start mounted apps: kanal starts here
)
