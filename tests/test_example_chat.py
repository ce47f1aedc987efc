"""examples/chat over plain HTTP: what its endpoints accept and refuse, without a browser.

The page's behaviour in Chromium is tests/browser/test_chat.py; here the app runs with its
README's command (tests/browser/servers.py) and is asked what pusher-js and the page ask,
plus what no page sends (bad names, bad socket ids, other channels). Modules of the example
that need no server are imported from examples/chat directly.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from starlette.requests import Request

from tests.browser import servers

sys.path.insert(0, str(servers.ROOT / "examples" / "chat"))
import chat  # the example's modules are not a package: imported from its directory
import standalone

pytestmark = pytest.mark.e2e


class Client:
    """One user's cookie jar against the chat."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else text


def session() -> aiohttp.ClientSession:
    """With a cookie jar that keeps cookies from IP addresses (aiohttp's default does not)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def embedded() -> AsyncIterator[str]:
    async with servers.chat(None) as url:
        yield url


@pytest.fixture
async def client(embedded: str) -> AsyncIterator[Client]:
    async with session() as http:
        yield Client(embedded, http)


async def test_login_me_and_logout(client: Client) -> None:
    assert await client.call("GET", "/me") == (200, {"name": None})
    bad_bodies: list[Any] = [{"name": ""}, {"name": "a b"}, {"name": "x" * 33}, {"name": 7}, []]
    for bad in [*bad_bodies, "alice"]:
        status, _ = await client.call("POST", "/login", json=bad)
        assert status == 422, bad
    assert await client.call("POST", "/login", json={"name": "alice"}) == (200, {"name": "alice"})
    assert await client.call("GET", "/me") == (200, {"name": "alice"})
    assert await client.call("POST", "/logout") == (200, {})
    assert await client.call("GET", "/me") == (200, {"name": None})


async def test_channel_auth_decides_then_signs(client: Client) -> None:
    form = {"socket_id": "123.456", "channel_name": chat.ROOM}
    assert (await client.call("POST", "/pusher/auth", data=form))[0] == 401
    await client.call("POST", "/login", json={"name": "alice"})
    status, signed = await client.call("POST", "/pusher/auth", data=form)
    assert status == 200
    member = {"user_id": "alice", "user_info": {"name": "alice"}}
    assert json.loads(signed["channel_data"]) == member
    assert signed["auth"].startswith("app-key:")
    for channel in ("presence-other", "private-chat"):
        refused = await client.call("POST", "/pusher/auth", data={**form, "channel_name": channel})
        assert refused == (403, {"error": f"alice may not join {channel}"})
    bad_socket = await client.call("POST", "/pusher/auth", data={**form, "socket_id": "1"})
    assert bad_socket[0] == 400


async def test_a_banned_name_logs_in_but_is_refused_the_room(client: Client) -> None:
    assert (await client.call("POST", "/login", json={"name": "Mallory"}))[0] == 200
    form = {"socket_id": "123.456", "channel_name": chat.ROOM}
    assert (await client.call("POST", "/pusher/auth", data=form))[0] == 403
    assert (await client.call("POST", "/messages", json={"text": "hi"}))[0] == 403


async def test_messages_are_checked_and_answered_as_published(client: Client) -> None:
    assert (await client.call("POST", "/messages", json={"text": "hi"}))[0] == 401
    await client.call("POST", "/login", json={"name": "alice"})
    for bad in ({"text": "  "}, {"text": "x" * 501}, {"text": 1}, {"text": "hi", "socket_id": "x"}):
        assert (await client.call("POST", "/messages", json=bad))[0] == 422, bad
    status, message = await client.call("POST", "/messages", json={"text": " hi ", "socket_id": ""})
    assert status == 200
    assert (message["from"], message["text"], type(message["at"])) == ("alice", "hi", int)


async def test_the_page_pusher_js_and_config_come_from_the_app(client: Client) -> None:
    status, page = await client.call("GET", "/")
    assert status == 200 and '<script src="/pusher.min.js"></script>' in page
    status, script = await client.call("GET", "/pusher.min.js")
    assert (status, script) == (200, chat.PUSHER_JS.read_text())
    assert "cdn" not in page.lower() and "cdn" not in (chat.STATIC / "chat.js").read_text().lower()
    status, config = await client.call("GET", "/config")
    assert (status, config["key"], config["room"]) == (200, "app-key", chat.ROOM)
    assert config["options"]["wsPath"] == "/realtime"  # embedded: the app's own port


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_standalone_says_when_kanal_does_not_take_a_message() -> None:
    kanal_port = free_port()
    async with servers.chat(kanal_port) as url, session() as http:
        client = Client(url, http)
        status, config = await client.call("GET", "/config")
        where = {"wsHost": "127.0.0.1", "wsPort": kanal_port, "forceTLS": False}
        assert where.items() <= config["options"].items()
        await client.call("POST", "/login", json={"name": "alice"})
        status, answer = await client.call("POST", "/messages", json={"text": "hi"})
        assert status == 503 and answer["error"].startswith("not sent: kanal at 127.0.0.1:")


async def test_without_node_modules_the_app_says_how_to_get_pusher_js(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(chat, "PUSHER_JS", tmp_path / "pusher.min.js")
    routes = chat.ChatRoutes(standalone.SdkChannels(standalone.DEV_APP))
    response = await routes.pusher_js(Request({"type": "http", "headers": []}))
    assert response.status_code == 503
    assert b"run `npm ci` in the repository root" in bytes(response.body)


def test_pusher_url_is_parsed_with_its_port() -> None:
    parts, app_id = standalone.parse_pusher_url("https://k:s@example.com:7000/apps/42")
    assert (parts.hostname, parts.port, parts.username, app_id) == ("example.com", 7000, "k", "42")
    for bad in ("http://example.com/apps/1", "http://k:s@example.com/apps/x", "ws://k:s@h/apps/1"):
        with pytest.raises(ValueError, match="PUSHER_URL"):
            standalone.parse_pusher_url(bad)
