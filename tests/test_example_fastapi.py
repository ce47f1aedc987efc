"""examples/fastapi: its README's commands, run as written, and the app driven by pusher-js.

The first command (``examples/fastapi/run``) is started from the repository root with
``--port 0`` appended; the second opens the page in a browser, which here is: fetch the page
and pusher-js from the app, then do what the page does with real pusher-js in Node (log in,
subscribe through the app's auth endpoints, ship an order through the view, log out). The
process is terminated by pid in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.jsclient import JsDriver
from tests.wsclient import end_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi"
PUSHER_JS = ROOT / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
START = 120.0  # the run script installs .venv from the lock first when it is stale
WAIT = 10.0

pytestmark = pytest.mark.e2e


def readme_commands() -> list[str]:
    """The lines of the README's bash block, comments removed."""
    block = re.search(r"^```bash\n(.*?)^```", (EXAMPLE / "README.md").read_text(), re.M | re.S)
    assert block is not None
    return [re.sub(r"\s+#\s.*$", "", line) for line in block[1].splitlines() if line.strip()]


def test_the_readme_runs_it_in_two_commands() -> None:
    """What ``test_example`` runs is what the README says; a changed line fails here."""
    assert readme_commands() == ["examples/fastapi/run", "xdg-open http://127.0.0.1:8000/"]


@contextlib.asynccontextmanager
async def example_app() -> AsyncIterator[tuple[str, list[str]]]:
    """The README's first command on a free port: (base URL, its output lines so far)."""
    command = readme_commands()[0] + " --port 0"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"exec {command}", cwd=ROOT, stdout=-1, stderr=-2, stdin=-3
    )
    assert proc.stdout is not None
    lines: list[str] = []
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read(stream: asyncio.StreamReader) -> None:
        """Every line, for failure messages; reading also keeps uvicorn's log from blocking."""
        async for raw in stream:
            lines.append(raw.decode().rstrip())
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", lines[-1])
            if found and not listening.done():
                listening.set_result(found[1])
        if not listening.done():
            listening.set_exception(AssertionError(f"exited before listening: {lines}"))

    reader = asyncio.ensure_future(read(proc.stdout))
    try:
        try:
            base = await asyncio.wait_for(listening, START)
        except TimeoutError:
            raise AssertionError(f"not listening within {START}s: {lines}") from None
        yield base, lines
    finally:
        await end_process(proc, WAIT)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def request(
    method: str, url: str, session: str | None = None, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """(status, JSON or text body, response); ``session`` is the login cookie's value."""
    headers = {"Cookie": f"session={session}"} if session else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, **kwargs) as response,
    ):
        is_json = response.content_type == "application/json"
        body = await (response.json() if is_json else response.text())
        return response.status, body, response


async def log_in(base: str, name: str) -> str:
    status, body, response = await request("POST", f"{base}/login", json={"name": name})
    assert (status, body) == (200, {"name": name})
    session = response.cookies["session"].value
    assert (await request("GET", f"{base}/me", session))[:2] == (200, {"name": name})
    return session


def page_options(base: str, session: str) -> dict[str, Any]:
    """index.html's ``new Pusher`` options (checked below) as pusher-js in Node needs them:
    absolute endpoints, and the cookie a browser would send with them."""
    auth = {"transport": "ajax", "headers": {"Cookie": f"session={session}"}}
    return {
        "wsPath": "/realtime",
        "enabledTransports": ["ws", "wss"],
        "channelAuthorization": {**auth, "endpoint": f"{base}/pusher/auth"},
        "userAuthentication": {**auth, "endpoint": f"{base}/pusher/user-auth"},
    }


async def test_example() -> None:
    async with example_app() as (base, _lines), JsDriver.start() as js:
        port = int(base.rsplit(":", 1)[1])
        # The second command: the page and its pusher-js, from the app.
        status, page, _ = await request("GET", f"{base}/")
        assert status == 200
        for option in (
            'new Pusher("app-key"',
            'wsPath: "/realtime"',
            'channelAuthorization: { endpoint: "/pusher/auth", transport: "ajax" }',
            'userAuthentication: { endpoint: "/pusher/user-auth", transport: "ajax" }',
            '<script src="/pusher.min.js"></script>',
        ):
            assert option in page, option
        status, script, _ = await request("GET", f"{base}/pusher.min.js")
        assert (status, script) == (200, PUSHER_JS.read_text())

        assert (await request("GET", f"{base}/me"))[0] == 401
        form = {"socket_id": "1.2", "channel_name": "private-orders"}
        assert (await request("POST", f"{base}/pusher/auth", data=form))[0] == 401

        alice = await log_in(base, "alice")
        await js.connect("alice", key="app-key", port=port, options=page_options(base, alice))
        await js.signin("alice")
        await js.subscribe("alice", "private-orders")
        lobby = await js.subscribe("alice", "presence-lobby")
        assert lobby["members"]["members"] == {"alice": {"name": "alice"}}

        bob = await log_in(base, "bob")
        await js.connect("bob", key="app-key", port=port, options=page_options(base, bob))
        await js.signin("bob")
        await js.subscribe("bob", "private-orders")
        await js.subscribe("bob", "presence-lobby")
        added = await js.wait_for(client="alice", type="member_added")
        assert added["member"] == {"id": "bob", "info": {"name": "bob"}}
        refused = await js.subscribe("bob", "private-secrets", expect_error=True)
        assert refused["status"] == 403

        status, body, _ = await request("POST", f"{base}/orders/5/ship", alice)
        assert (status, body) == (200, {"shipped": 5})
        for client in ("alice", "bob"):
            shipped = await js.wait_for(client=client, type="event", event="order-shipped")
            assert shipped["data"] == {"id": 5, "by": "alice"}
        assert (await request("POST", f"{base}/orders/6/ship"))[0] == 401

        since = js.mark()
        assert (await request("POST", f"{base}/logout", bob))[:2] == (200, {})
        closed = await js.wait_for(client="bob", type="socket", event="close", since=since)
        assert closed["code"] == 4009  # terminate_user_connections (users.md §5)
        removed = await js.wait_for(client="alice", type="member_removed", since=since)
        assert removed["member"]["id"] == "bob"
        # The app's member_removed hook, after the grace period, tells the lobby.
        left = await js.wait_for(
            client="alice", type="event", event="member-left", since=since, timeout=15
        )
        assert left["data"]["name"] == "bob"
