"""``[server] api_port`` / ``websocket_port``: the HTTP API and the WebSocket endpoint on
listeners of their own (Slanger's ``-a`` and ``-w``), in process.

Each address answers the health checks; the API listener serves the HTTP API, /metrics and
the console and refuses upgrades with 404; the WebSocket listener serves upgrades and
answers API paths with 404. A ``kanal serve`` process with the official Python SDK on its
API port, and with ``--workers``: tests/test_operator_process.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kanal.config import Config, ServerSettings
from kanal.server import StartupError, build, serve
from kanal.settings import ConfigError, load_config
from kanal.transport.listener import Bind, binds
from tests.asgi_server import AsgiNode
from tests.cluster_nodes import free_port
from tests.conftest import APP_ID, APP_KEY, RunningServer, StartServer, make_app
from tests.test_tls import self_signed
from tests.wsclient import Clients, api_request, data_of, trigger

CHANNEL = "orders"


def at(server: RunningServer, port: int) -> RunningServer:
    """The same node, addressed at another of its ports."""
    return RunningServer(server.server, port)


async def status(url: str, method: str = "GET") -> int:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return response.status


async def upgrade_status(server: RunningServer) -> int | None:
    """The HTTP status a WebSocket upgrade to ``/app/{key}`` is answered with (101: accepted)."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(server.ws_url()) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status


async def api_answers(server: RunningServer) -> int:
    response = await api_request(server, "GET", f"/apps/{APP_ID}/channels")
    return response.status


def test_binds_follow_the_settings() -> None:
    assert binds(ServerSettings(host="10.0.0.1", port=6001)) == [Bind("10.0.0.1", 6001)]
    slanger = ServerSettings(host="0.0.0.0", port=8080, api_host="127.0.0.1", api_port=4567)
    assert binds(slanger) == [
        Bind("0.0.0.0", 8080, websocket=True, api=False),
        Bind("127.0.0.1", 4567, websocket=False, api=True),
    ]
    both = ServerSettings(port=6001, api_port=4567, websocket_port=8080)
    assert [(b.port, b.websocket, b.api, b.label) for b in binds(both)] == [
        (6001, False, False, " (health checks only)"),
        (4567, False, True, " (HTTP API)"),
        (8080, True, False, " (WebSocket connections)"),
    ]


async def test_api_port_moves_the_http_api_off_the_main_port(
    start_server: StartServer,
) -> None:
    api_port = free_port()
    main = await start_server(api_port=api_port)
    api = at(main, api_port)
    async with Clients() as clients:
        client = await clients.connect(main)
        await client.subscribe(CHANNEL)
        await trigger(api, CHANNEL, "shipped", '{"id": 1}')
        assert data_of(await client.expect("shipped", CHANNEL)) == {"id": 1}

    assert await api_answers(main) == 404
    assert await upgrade_status(api) == 404
    assert await status(f"{api.base_url}/app/{APP_KEY}") == 404  # a plain GET, too
    assert await status(f"{main.base_url}/metrics") == 404
    assert await status(f"{api.base_url}/metrics") == 200
    for port in (main.port, api_port):
        assert await status(f"http://127.0.0.1:{port}/ready") == 200
        assert await status(f"http://127.0.0.1:{port}/") == 200


async def test_websocket_port_moves_connections_off_the_main_port(
    start_server: StartServer,
) -> None:
    ws_port = free_port()
    main = await start_server(websocket_port=ws_port)
    ws = at(main, ws_port)
    async with Clients() as clients:
        client = await clients.connect(ws)
        await client.subscribe(CHANNEL)
        await trigger(main, CHANNEL, "shipped", '{"id": 2}')
        assert data_of(await client.expect("shipped", CHANNEL)) == {"id": 2}

    assert await upgrade_status(main) == 404
    assert await api_answers(ws) == 404
    assert await status(f"{ws.base_url}/app/{APP_KEY}") == 426  # as on a shared port
    assert await status(f"{ws.base_url}/metrics") == 404
    assert await status(f"{ws.base_url}/ready") == 200


async def test_both_moved_leaves_the_main_port_its_health_checks(
    start_server: StartServer,
) -> None:
    api_port, ws_port = free_port(), free_port()
    main = await start_server(api_port=api_port, websocket_port=ws_port)
    assert await status(f"{main.base_url}/ready") == 200
    assert await api_answers(main) == 404
    assert await upgrade_status(main) == 404
    assert await api_answers(at(main, api_port)) == 200
    assert await upgrade_status(at(main, ws_port)) == 101


async def test_the_console_goes_with_the_api(start_server: StartServer) -> None:
    api_port = free_port()
    main = await start_server(api_port=api_port, admin_token="t" * 16)
    assert await status(f"{main.base_url}/console/") == 404
    assert await status(f"http://127.0.0.1:{api_port}/console/") == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_tls_on_every_listener(start_server: StartServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    api_port = free_port()
    main = await start_server(api_port=api_port, tls_cert_file=cert, tls_key_file=key)
    tls = ssl.create_default_context(cafile=cert)
    tls.check_hostname = False
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{main.port}/app/{APP_KEY}?protocol=7"
        async with session.ws_connect(url, ssl=tls) as ws:
            established = orjson.loads(await ws.receive_str())
            assert established["event"] == "pusher:connection_established"
        async with session.get(f"https://127.0.0.1:{api_port}/ready", ssl=tls) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS API port
            async with session.get(f"http://127.0.0.1:{api_port}/ready") as response:
                await response.read()


def port_is_free(port: int) -> bool:
    """``port`` can be bound at once (without SO_REUSEPORT: nobody listens on it)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def config_with(**server: Any) -> Config:
    settings = dataclasses.replace(ServerSettings(shutdown_timeout=2.0), **server)
    return Config(server=settings, apps=(make_app(),))


async def test_stopping_releases_every_port_and_closes_clients_with_4200() -> None:
    main_port, api_port = free_port(), free_port()
    server = build(config_with(port=main_port, api_port=api_port))
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(server, stop, started.set_result))
    assert await asyncio.wait_for(started, 10) == main_port
    async with Clients() as clients:
        client = await clients.connect(RunningServer(server, main_port))
        stop.set()
        assert await client.expect_closed() == 4200
    await asyncio.wait_for(task, 10)
    assert port_is_free(main_port) and port_is_free(api_port)


async def test_a_listener_that_cannot_bind_fails_the_start_and_releases_the_others() -> None:
    main_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = build(config_with(port=main_port, websocket_port=taken))
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{taken}: Address"):
            await asyncio.wait_for(serve(server, asyncio.Event()), 10)
    assert port_is_free(main_port)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KANAL_API_HOST": "0.0.0.0"}, r"^KANAL_API_HOST: server\.api_host: needs .*api_port"),
        (
            {"KANAL_PORT": "7000", "KANAL_WEBSOCKET_PORT": "7000"},
            r"server\.websocket_port: same address as server\.port \(127\.0\.0\.1:7000\)",
        ),
        (
            {"KANAL_API_PORT": "7001", "KANAL_WEBSOCKET_PORT": "7001"},
            r"server\.websocket_port: same address as server\.api_port",
        ),
    ],
)
def test_listener_settings_are_checked(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, environ, {})


def test_the_same_port_on_another_interface_is_allowed() -> None:
    environ = {"KANAL_PORT": "7000", "KANAL_API_HOST": "127.0.0.2", "KANAL_API_PORT": "7000"}
    settings = load_config(None, environ, {}).server
    assert [(b.host, b.port) for b in binds(settings)] == [
        ("127.0.0.1", 7000),
        ("127.0.0.2", 7000),
    ]


async def test_an_embedded_nodes_own_port_splits_the_same_way() -> None:
    api_port = free_port()
    config = config_with(port=0, api_port=api_port)
    embedded = AsgiNode(config, own_port=True)
    await embedded.start()
    try:
        own_port = embedded.app.port
        assert own_port is not None
        main = RunningServer(embedded.app.server, own_port)
        async with Clients() as clients:
            client = await clients.connect(main)
            await client.subscribe(CHANNEL)
            await trigger(at(main, api_port), CHANNEL, "shipped", '{"id": 3}')
            assert data_of(await client.expect("shipped", CHANNEL)) == {"id": 3}
        assert await api_answers(main) == 404
    finally:
        await embedded.stop()
    assert port_is_free(api_port)
