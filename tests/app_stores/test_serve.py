"""A node serving a SQL store: apps changed with ``kanal apps`` take effect within the TTL,
and a database that goes away leaves the cached apps working and /ready saying so.

The node runs in the test's loop (``start_server``); ``kanal apps`` runs as its own process,
as an operator would run it, against the same database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kanal.app_stores.sql import SqlAppStore
from kanal.config import App, AppsStoreSettings
from tests.conftest import RunningServer, StartServer
from tests.wsclient import Clients, api_request, eventually, trigger

TTL = 0.5
#: How late a change may take effect: the TTL, plus a refresh on a busy machine.
WITHIN = TTL + 2.0


async def kanal_apps(url: str, *args: str) -> Any:
    """``python -m kanal apps <args> --json`` against the store at ``url``; its JSON output."""
    env = {**os.environ, "KANAL_APPS_STORE_URL": url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kanal", "apps", *args, "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def ready(server: RunningServer) -> tuple[int, str]:
    """``GET /ready``: the status and its ``detail``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.base_url}/ready") as response,
    ):
        return response.status, (await response.json())["detail"]


async def closed_with(clients: Clients, server: RunningServer, key: str) -> int | None:
    """A new connection with ``key``: the code it is closed with."""
    client = await clients.open(server, key=key)
    return await client.expect_closed()


async def test_an_app_disabled_with_the_cli_is_closed_and_refused_within_the_ttl(
    store_url: str, start_server: StartServer
) -> None:
    url = store_url  # on each SQL backend
    created = await kanal_apps(url, "create", "--id", "123")
    key, secret = created["key"], created["secret"]
    server = await start_server(apps_store=AppsStoreSettings(url=url, ttl=TTL))
    async with Clients() as clients:
        client = await clients.connect(server, key=key, secret=secret)
        await client.subscribe("chat")
        await trigger(server, "chat", "hello", "{}", app_id="123", key=key, secret=secret)
        await client.expect("hello", "chat")

        await kanal_apps(url, "disable", "123")
        changed = time.monotonic()
        assert await client.expect_closed(within=WITHIN) == 4003
        assert time.monotonic() - changed < WITHIN
        assert client.close_reason == "Application disabled"
        assert await closed_with(clients, server, key) == 4003
        body = {"name": "hello", "channels": ["chat"], "data": "{}"}
        response = await api_request(
            server, "POST", "/apps/123/events", body=body, key=key, secret=secret
        )
        assert response.status == 403

        await kanal_apps(url, "enable", "123")
        again = await _connected_within(clients, server, key, secret)
        await kanal_apps(url, "delete", "123")
        assert await again.expect_closed(within=WITHIN) == 4003
        assert again.close_reason == "Application deleted"
        assert await closed_with(clients, server, key) == 4001
        response = await api_request(
            server, "POST", "/apps/123/events", body=body, key=key, secret=secret
        )
        assert response.status == 404


async def _connected_within(clients: Clients, server: RunningServer, key: str, secret: str) -> Any:
    """Connect once the node's snapshot has the app enabled again (within the TTL)."""
    deadline = time.monotonic() + WITHIN
    while True:
        app = server.server.apps.by_key(key)
        if app is not None and app.enabled:
            return await clients.connect(server, key=key, secret=secret)
        assert time.monotonic() < deadline, "the app was not enabled within the TTL"
        await asyncio.sleep(0.05)


async def test_a_database_that_goes_away_keeps_cached_apps_and_reports_it(
    tmp_path: Path, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "apps.db"
    url = f"sqlite://{path}"
    store = SqlAppStore.from_url(url)
    store.create(App(id="1", key="app-key", secret="app-secret"))
    server = await start_server(apps_store=AppsStoreSettings(url=url, ttl=TTL))
    assert await ready(server) == (200, "ok")
    path.rename(tmp_path / "away.db")

    async def not_ready() -> bool:
        return (await ready(server))[0] == 503

    with caplog.at_level(logging.INFO, logger="kanal.apps"):
        await eventually(not_ready, within=WITHIN, what="/ready to report the store")
        assert "apps store unavailable" in (await ready(server))[1]
        async with Clients() as clients:
            client = await clients.connect(server)  # the cached app keeps working
            await client.subscribe("chat")
            await trigger(server, "chat", "still-here", "{}")
            await client.expect("still-here", "chat")
            assert await closed_with(clients, server, "unknown-key") == 4001
        assert "unknown app key unknown-key refused while the apps store" in caplog.text

        (tmp_path / "away.db").rename(path)

        async def recovered() -> bool:
            return await ready(server) == (200, "ok")

        await eventually(recovered, within=WITHIN, what="/ready to recover")
    assert "apps store: 1 apps loaded" in caplog.text
    store.close()


async def test_a_node_starts_while_its_database_is_down(start_server: StartServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/kanal"
    server = await start_server(apps_store=AppsStoreSettings(url=url, ttl=TTL))
    status, text = await ready(server)
    assert status == 503 and "apps store unavailable" in text, text
    async with Clients() as clients:
        assert await closed_with(clients, server, "app-key") == 4001
