"""Who may connect, over real connections (issue 17 item 4): wildcard ``allowed_origins`` and
``[server] max_connections_per_ip_per_second`` (4100 beyond it, X-Forwarded-For only when
``trust_proxy_headers`` is on), on kanal's own transport and under an ASGI server.

The per-IP buckets refill with time; every test here stops the admission's clock, so a slow
machine cannot hand out tokens in the middle of a test, and moves it on by hand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

import aiohttp
import pytest

from kanal.transport.admission import TOO_MANY_CONNECTIONS
from tests.conftest import RunningServer, StartServer, make_app
from tests.wsclient import Clients, WsClient


@pytest.fixture(params=["serve", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


class StoppedClock:
    """The admission's monotonic clock, moved on only by the test."""

    def __init__(self, server: RunningServer) -> None:
        self.now = 1000.0
        server.server.websocket.admission.clock = self.read

    def read(self) -> float:
        return self.now


async def assert_refused(client: WsClient, code: int, message: str) -> None:
    first = await client.next_frame()
    assert first == {"event": "pusher:error", "data": {"code": code, "message": message}}
    assert await client.expect_closed() == code


async def established(client: WsClient) -> None:
    assert (await client.next_frame())["event"] == "pusher:connection_established"


async def test_wildcard_origins(start_server: StartServer, clients: Clients) -> None:
    allowed = ("https://*.example.com", "https://example.com")
    server = await start_server(apps=[make_app(allowed_origins=allowed)])
    for origin in ("https://app.example.com", "https://a.b.example.com", "https://example.com"):
        await established(await clients.open(server, headers={"Origin": origin}))
    for origin in ("https://example.com.evil.net", "http://app.example.com", "null"):
        client = await clients.open(server, headers={"Origin": origin})
        await assert_refused(client, 4009, "Origin not allowed")


async def test_over_the_per_ip_rate_is_4100(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(max_connections_per_ip_per_second=3)
    clock = StoppedClock(server)
    for _ in range(3):
        await clients.connect(server)
    await assert_refused(await clients.open(server), 4100, TOO_MANY_CONNECTIONS)
    # Attempts with a wrong key count as well: the limit comes before the handshake checks.
    clock.now += 1.0  # three tokens again
    for _ in range(3):
        await assert_refused(
            await clients.open(server, key="no-such-key"), 4001, "Application does not exist"
        )
    await assert_refused(await clients.open(server), 4100, TOO_MANY_CONNECTIONS)
    clock.now += 0.34  # one token
    await clients.connect(server)
    await assert_refused(await clients.open(server), 4100, TOO_MANY_CONNECTIONS)
    # The connections let in are unaffected by the refusals.
    for client in clients.all[:3]:
        await client.ping()


async def test_each_address_has_its_own_bucket(start_server: StartServer) -> None:
    server = await start_server(max_connections_per_ip_per_second=1)
    StoppedClock(server)

    async def first_frame(source: str) -> dict[str, object]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect(server.ws_url()) as ws,
        ):
            frame: dict[str, object] = json.loads(await ws.receive_str())
            return frame

    assert (await first_frame("127.0.0.1"))["event"] == "pusher:connection_established"
    assert (await first_frame("127.0.0.1"))["event"] == "pusher:error"
    assert (await first_frame("127.0.0.2"))["event"] == "pusher:connection_established"


@pytest.mark.parametrize("transport", ["serve"])  # an ASGI server applies its own proxy rules
@pytest.mark.parametrize("trusted", [False, True])
async def test_x_forwarded_for_counts_only_when_trusted(
    start_server: StartServer, clients: Clients, trusted: bool
) -> None:
    server = await start_server(max_connections_per_ip_per_second=1, trust_proxy_headers=trusted)
    StoppedClock(server)

    def behind_proxy(address: str) -> Mapping[str, str]:
        return {"X-Forwarded-For": f"{address}, 10.0.0.1"}

    await clients.connect(server, headers=behind_proxy("203.0.113.1"))
    other = await clients.open(server, headers=behind_proxy("203.0.113.2"))
    if trusted:  # another client behind the same proxy: its own bucket
        await established(other)
        again = await clients.open(server, headers=behind_proxy("203.0.113.1"))
        await assert_refused(again, 4100, TOO_MANY_CONNECTIONS)
    else:  # the header is anyone's to send: every connection counts as the proxy's
        await assert_refused(other, 4100, TOO_MANY_CONNECTIONS)


async def test_no_limit_by_default(kanal_server: RunningServer, clients: Clients) -> None:
    StoppedClock(kanal_server)
    for _ in range(20):
        await clients.connect(kanal_server)
