"""kanal's live console (docs/console.md) beside the chat example, for browser tests and the
documentation's screenshots.

:func:`scene` starts a real ``kanal serve`` with an admin token, the development app's
credentials and a webhook endpoint (a receiver in this process), and the chat example
publishing to it (``examples/chat/run``, tests/browser/servers.py); :func:`open_console`
signs in on the console page as a person does.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.browser import servers
from tests.browser.browser import Browser, Page
from tests.webapp import served

TOKEN = "console-token-for-the-browser-tests"
#: The chat's member_added / member_removed webhooks, and a short grace period so that a
#: removal held by it shows up, then goes out, within a test.
CONFIG = """
[server]
host = "127.0.0.1"
admin_token = "{token}"

[webhooks]
grace_period = 2.0

[[apps]]
id = "1"
key = "app-key"
secret = "app-secret"
enable_client_messages = true

[[apps.webhooks]]
url = "{url}"
event_types = ["member_added", "member_removed"]
"""


@dataclass
class Scene:
    kanal_port: int
    chat_url: str
    webhooks: list[Any] = field(default_factory=list)  # the bodies the receiver got

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.kanal_port}/console/"


@contextlib.asynccontextmanager
async def receiver(bodies: list[Any]) -> AsyncIterator[str]:
    """An HTTP endpoint that answers 200 to every webhook; its URL."""

    async def take(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks", take)
    async with served(app) as base:
        yield f"{base}/webhooks"


@contextlib.asynccontextmanager
async def scene() -> AsyncIterator[Scene]:
    bodies: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="kanal-console-") as tmp:
        async with receiver(bodies) as url:
            config = Path(tmp) / "kanal.toml"
            config.write_text(CONFIG.format(token=TOKEN, url=url))
            line = f"{sys.executable} -m kanal serve --config {config} --port 0"
            async with servers.started(line) as kanal:
                found = await kanal.wait_for(r"kanal listening on 127\.0\.0\.1:(\d+)")
                port = int(found[1])
                async with servers.chat(port) as chat_url:
                    yield Scene(port, chat_url, bodies)


async def open_console(browser: Browser, made: Scene, **size: Any) -> Page:
    """The console page, signed in with the token, live."""
    page = await browser.new_page(made.console_url, **size)
    await page.fill("#token", TOKEN)
    await page.click("#token-form button")
    await page.wait_for_text("#status", "live")
    return page
