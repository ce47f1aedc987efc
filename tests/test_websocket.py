"""WebSocket transport against a real server: handshake, refusals, heartbeats, bad input
(protocol.md §1-7, limits.md §2-3). Channel behaviour is in test_websocket_channels.py, users
in test_websocket_users.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

import kanal.server
from tests.conftest import RunningServer, StartServer, make_app
from tests.wsclient import (
    Clients,
    RawWebSocket,
    WsClient,
    data_of,
    trigger,
    wait_until,
)


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


@pytest.fixture
def fast_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's heartbeat tick (1 s) made fast so timeouts of 1 s are observed promptly."""
    monkeypatch.setattr(kanal.server, "TICK_SECONDS", 0.05)


async def assert_refused(client: WsClient, code: int, message: str) -> None:
    """protocol.md §1.2 "How to refuse": pusher:error first, then close with the same code."""
    first = await client.next_frame()
    assert first == {"event": "pusher:error", "data": {"code": code, "message": message}}
    assert await client.expect_closed() == code
    assert client.close_reason == message


# --- §1.2 / §4.1 connection establishment ---------------------------------------------------


async def test_connection_established_is_the_first_frame_with_string_data(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.open(kanal_server)
    first = await client.next_frame()
    assert first["event"] == "pusher:connection_established"
    assert set(first) == {"event", "data"}
    assert isinstance(first["data"], str)  # double encoded (§2.1)
    data = data_of(first)
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert data["activity_timeout"] == 120


async def test_socket_ids_are_unique(kanal_server: RunningServer, clients: Clients) -> None:
    ids = {(await clients.connect(kanal_server)).socket_id for _ in range(5)}
    assert len(ids) == 5


async def test_activity_timeout_is_the_apps(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(activity_timeout=30)])
    assert (await clients.connect(server)).activity_timeout == 30


@pytest.mark.parametrize(
    "query",
    [
        "protocol=7&client=js&version=8.4.0&flash=false",
        "protocol=6",
        "client=java-client&protocol=5&version=2.4.0",
        "protocol=4",
        "client=js&version=8.4.0",  # missing protocol: treated as 7
    ],
)
async def test_supported_protocol_versions_are_accepted(
    kanal_server: RunningServer, clients: Clients, query: str
) -> None:
    client = await clients.open(kanal_server, query=query)
    assert (await client.next_frame())["event"] == "pusher:connection_established"


@pytest.mark.parametrize(
    ("protocol", "code", "message"),
    [
        ("abc", 4006, "Invalid version string format"),
        ("7.0", 4006, "Invalid version string format"),
        ("3", 4007, "Unsupported protocol version"),
        ("8", 4007, "Unsupported protocol version"),
    ],
)
async def test_bad_protocol_versions_are_refused(
    kanal_server: RunningServer, clients: Clients, protocol: str, code: int, message: str
) -> None:
    client = await clients.open(kanal_server, query=f"protocol={protocol}&client=js")
    await assert_refused(client, code, message)


async def test_strict_mode_refuses_a_missing_protocol(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(strict_protocol_version=True)
    client = await clients.open(server, query="client=js&version=8.4.0")
    await assert_refused(client, 4008, "No protocol version supplied")
    accepted = await clients.open(server)
    assert (await accepted.next_frame())["event"] == "pusher:connection_established"


async def test_unknown_app_key_is_refused_with_4001(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.open(kanal_server, key="no-such-key")
    await assert_refused(client, 4001, "Application does not exist")


async def test_disabled_app_is_refused_with_4003(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(enabled=False)])
    await assert_refused(await clients.open(server), 4003, "Application disabled")


async def test_tls_only_app_refuses_plain_connections_with_4000(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(require_tls=True)])
    client = await clients.open(server)
    await assert_refused(
        client, 4000, "Application only accepts SSL connections, reconnect using wss://"
    )


async def test_origin_allow_list(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(allowed_origins=("https://good.example",))])
    bad = await clients.open(server, headers={"Origin": "https://evil.example"})
    first = await bad.next_frame()
    assert first["event"] == "pusher:error" and first["data"]["code"] == 4009
    assert await bad.expect_closed() == 4009
    good = await clients.open(server, headers={"Origin": "https://good.example"})
    assert (await good.next_frame())["event"] == "pusher:connection_established"


async def test_unknown_path_upgrade_is_closed_with_4005(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.open(kanal_server, path="/foo?protocol=7")
    await assert_refused(client, 4005, "Path not found")


async def test_per_app_connection_quota(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(max_connections=2)])
    first = await clients.connect(server)
    await clients.connect(server)
    over = await clients.open(server)
    await assert_refused(over, 4004, "Application is over connection quota")
    await first.close()
    await wait_until(lambda: server.hub.connection_count == 1, what="quota slot freed")
    await clients.connect(server)  # a freed slot is reusable


async def test_server_connection_cap_closes_with_4100(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(max_connections=2)
    await clients.connect(server)
    await clients.connect(server)
    await assert_refused(await clients.open(server), 4100, "Over capacity")


# --- §4.2 / §5 / §7.1 heartbeats ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"event":"pusher:ping","data":{}}',
        '{"event":"pusher:ping","data":"{}"}',
        '{"event":"pusher:ping"}',
    ],
)
async def test_client_ping_in_every_data_form_gets_pong(
    kanal_server: RunningServer, clients: Clients, raw: str
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_raw(raw)
    assert await client.next_frame() == {"event": "pusher:pong", "data": "{}"}


async def test_client_pong_gets_no_reply(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:pong", {})
    await client.send("pusher:ping", {})
    assert (await client.next_frame())["event"] == "pusher:pong"  # the reply to the ping only
    await client.assert_silent()


async def test_silent_client_is_probed_then_closed_with_4201(
    fast_tick: None, start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(activity_timeout=1, pong_timeout=1)])
    client = await clients.connect(server, autoping=False)
    seen: list[str] = []
    while True:  # never answer anything; record what arrives until the close
        msg = await client.next_message(within=5)
        if msg.type is aiohttp.WSMsgType.PING:
            seen.append("PING")
        elif msg.type is aiohttp.WSMsgType.TEXT:
            frame = client.frames[-1]
            seen.append(frame["event"])
            if frame["event"] == "pusher:ping":
                assert frame["data"] == "{}"
            if frame["event"] == "pusher:error":
                assert frame["data"] == {"code": 4201, "message": "Pong reply not received"}
        else:
            break
    assert client.close_code == 4201
    assert seen[:2] == ["PING", "pusher:ping"], seen  # §5.2: control Ping, then pusher:ping
    assert seen[-1] == "pusher:error"
    await wait_until(lambda: server.hub.connection_count == 0, what="cleanup")


async def test_client_answering_control_pings_stays_connected(
    fast_tick: None, start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(activity_timeout=1, pong_timeout=1)])
    client = await clients.connect(server, autoping=True)  # aiohttp answers Ping with Pong
    for _ in range(4):  # four probe cycles: each would have closed the connection after 1 s
        await client.expect("pusher:ping", within=5)
    assert client.close_code is None
    await client.ping()


async def test_client_answering_pusher_ping_stays_connected(
    fast_tick: None, start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(activity_timeout=1, pong_timeout=1)])
    client = await clients.connect(server, autoping=False)
    for _ in range(3):
        await client.expect("pusher:ping", within=5)
        await client.send("pusher:pong", {})
    assert client.close_code is None
    await client.ping()


# --- §2.2 invalid input ---------------------------------------------------------------------


INVALID_JSON = {"event": "pusher:error", "data": {"code": None, "message": "Invalid JSON"}}


@pytest.mark.parametrize(
    "raw", ["{not json", "", "[1,2]", "42", '"pusher:ping"', "null", '{"data":{}}', '{"event":7}']
)
async def test_invalid_frames_get_invalid_json_and_the_connection_stays_usable(
    kanal_server: RunningServer, clients: Clients, raw: str
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_raw(raw)
    assert await client.next_frame() == INVALID_JSON
    await client.subscribe("still-works")
    await client.ping()
    assert client.close_code is None


async def test_binary_frames_are_ignored(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.ws.send_bytes(b'{"event":"pusher:subscribe","data":{"channel":"x"}}')
    await client.ws.send_bytes(b"\x00\xff garbage")
    await client.send("pusher:ping", {})
    assert (await client.next_frame())["event"] == "pusher:pong"  # nothing before the pong
    assert not kanal_server.hub.is_subscribed(client.socket_id, "x")


@pytest.mark.parametrize("event", ["pusher:unknown", "pusher_internal:subscription_count", "hello"])
async def test_unknown_events_are_ignored(
    kanal_server: RunningServer, clients: Clients, event: str
) -> None:
    client = await clients.connect(kanal_server)
    await client.send(event, {"channel": "x"}, channel="x")
    await client.send("pusher:ping")
    assert (await client.next_frame())["event"] == "pusher:pong"


async def test_subscribe_without_channel_is_an_error(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:subscribe", {"auth": ""})
    assert await client.next_frame() == {
        "event": "pusher:error",
        "data": {"code": None, "message": "Missing parameter: data.channel"},
    }
    await client.subscribe("fine")


async def test_oversized_frame_closes_only_that_connection_with_1009(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(max_frame_bytes=4096)
    bystander = await clients.connect(server)
    await bystander.subscribe("news")
    big = await clients.connect(server)
    await big.subscribe("news")
    await big.send("client-x", {"pad": "x" * 5000}, channel="news")
    assert await big.expect_closed() == 1009
    await wait_until(lambda: server.hub.connection_count == 1, what="cleanup of the big sender")
    await trigger(server, "news", "after", '{"ok":true}')
    frame = await bystander.expect("after", "news")
    assert frame["data"] == '{"ok":true}'
    await bystander.ping()


async def test_frame_at_the_size_limit_is_accepted(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(max_frame_bytes=4096)
    client = await clients.connect(server)
    frame = '{"event":"pusher:ping","data":{"pad":"' + "x" * 4000 + '"}}'
    await client.send_raw(frame + " " * (4096 - len(frame)))
    assert (await client.next_frame())["event"] == "pusher:pong"


# --- slow consumers -------------------------------------------------------------------------


async def test_slow_consumer_is_closed_with_4100_and_others_get_everything(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(max_output_buffer_bytes=65536)
    reader = await clients.connect(server)
    await reader.subscribe("firehose")
    stalled = await RawWebSocket.connect(server.port, "/app/app-key?protocol=7")
    try:
        established = await stalled.read_json()
        stalled_id = data_of(established)["socket_id"]
        await stalled.send_text('{"event":"pusher:subscribe","data":{"channel":"firehose"}}')
        assert (await stalled.read_json())["event"] == "pusher_internal:subscription_succeeded"

        received: list[int] = []
        progress = asyncio.Event()

        async def consume() -> None:
            while True:
                frame = await reader.expect("tick", "firehose", within=10)
                received.append(int(data_of(frame)["n"]))
                progress.set()

        consumer = asyncio.ensure_future(consume())
        app = make_app()
        payload = "x" * 8000
        sent = 0
        try:
            # The stalled client never reads: publish until the server gives up on it. The
            # healthy reader is kept at most two events behind (it shares our event loop).
            while server.hub.is_subscribed(stalled_id, "firehose"):
                assert sent < 5000, "the stalled consumer was never closed"
                data = f'{{"n":{sent},"pad":"{payload}"}}'
                await server.hub.publish_event(app, "firehose", "tick", data, None)
                sent += 1
                while len(received) < sent - 2:
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), 10)
            await wait_until(lambda: len(received) == sent, within=10, what="all events")
        finally:
            consumer.cancel()
        assert received == list(range(sent))
        assert reader.close_code is None

        # Drain what the kernel buffered: the stream ends with a 4100 close frame.
        while True:
            opcode, body = await stalled.read_frame(within=10)
            if opcode == 0x8:
                assert int.from_bytes(body[:2], "big") == 4100
                break
    finally:
        stalled.close()
