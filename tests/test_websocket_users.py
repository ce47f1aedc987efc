"""Users over real WebSockets: sign-in, #server-to-user, terminate_connections, watchlists,
authorized connections (users.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

import kanal.server
from tests.conftest import RunningServer, StartServer, make_app
from tests.wsclient import Clients, WsClient, api_request, data_of, trigger


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


async def to_user(
    server: RunningServer, user_id: str, name: str, socket_id: str | None = None
) -> None:
    await trigger(
        server, f"#server-to-user-{user_id}", name, f'{{"for":"{user_id}"}}', socket_id=socket_id
    )


# --- sign-in (users.md §2) --------------------------------------------------------------------


async def test_signin_success_echoes_the_exact_user_data(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    user_data = '{"id": "12345", "user_info": {"name": "Alice"}, "extra": [1, 2]}'
    success = await client.signin(user_data)
    assert success == {"event": "pusher:signin_success", "data": {"user_data": user_data}}


async def test_signin_with_a_bad_signature(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:signin", {"auth": "app-key:" + "1" * 64, "user_data": '{"id":"1"}'})
    error = await client.expect_next("pusher:error")
    assert error["data"] == {
        "code": None,
        "message": f"Invalid signature: Expected HMAC SHA256 hex digest of "
        f'{client.socket_id}::user::{{"id":"1"}}, but got {"1" * 64}',
    }
    await client.send_subscribe("#server-to-user-1")  # not signed in
    await client.expect_next("pusher:subscription_error", "#server-to-user-1")
    await client.signin({"id": "1"})  # still usable


async def test_signin_auth_without_a_colon(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:signin", {"auth": "nocolon", "user_data": '{"id":"1"}'})
    error = await client.expect_next("pusher:error")
    assert error["data"]["message"] == "Invalid format: auth must have the format key:signature"


@pytest.mark.parametrize("user_data", ['{"name":"x"}', '{"id":""}', '{"id":7}', "[]", "nope"])
async def test_signin_needs_a_string_id(
    kanal_server: RunningServer, clients: Clients, user_data: str
) -> None:
    client = await clients.connect(kanal_server)
    from kanal.protocol.signatures import sign_signin

    auth = sign_signin(
        app_key="app-key", app_secret="app-secret", socket_id=client.socket_id, user_data=user_data
    )
    await client.send("pusher:signin", {"auth": auth, "user_data": user_data})
    error = await client.expect_next("pusher:error")
    assert error["data"]["code"] is None


async def test_signin_as_another_user_is_refused(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.signin({"id": "1"})
    await client.signin({"id": "1", "user_info": {"again": True}})  # same id: accepted
    user_data = json.dumps({"id": "2"})
    from kanal.protocol.signatures import sign_signin

    auth = sign_signin(
        app_key="app-key", app_secret="app-secret", socket_id=client.socket_id, user_data=user_data
    )
    await client.send("pusher:signin", {"auth": auth, "user_data": user_data})
    error = await client.expect_next("pusher:error")
    assert error["data"]["message"] == "Connection is already signed in as a different user"


# --- #server-to-user (users.md §3) ------------------------------------------------------------


async def test_server_to_user_subscription(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.signin({"id": "42"})
    frame = await client.subscribe("#server-to-user-42")
    assert frame == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "#server-to-user-42",
        "data": "{}",
    }
    await client.send_subscribe("#server-to-user-43")
    await client.expect_next("pusher:subscription_error", "#server-to-user-43")
    listing = await api_request(kanal_server, "GET", "/apps/1/channels")
    assert listing.json() == {"channels": {}}  # never listed


async def test_server_to_user_reaches_every_connection_of_the_user(
    kanal_server: RunningServer, clients: Clients
) -> None:
    subscribed = await clients.connect(kanal_server)
    await subscribed.signin({"id": "42"})
    await subscribed.subscribe("#server-to-user-42")
    unsubscribed = await clients.connect(kanal_server)
    await unsubscribed.signin({"id": "42"})
    stranger = await clients.connect(kanal_server)
    await stranger.signin({"id": "7"})
    presence_only = await clients.connect(kanal_server)  # same id, never signed in
    await presence_only.join_presence("presence-x", "42")

    await to_user(kanal_server, "42", "hello")
    expected = {"event": "hello", "channel": "#server-to-user-42", "data": '{"for":"42"}'}
    assert await subscribed.next_frame() == expected
    assert await unsubscribed.next_frame() == expected
    await to_user(kanal_server, "7", "for-seven")
    await stranger.expect_next("for-seven")  # "hello" never reached user 7
    for client in (presence_only,):
        await client.send("pusher:ping")
        await client.expect_next("pusher:pong")

    await to_user(kanal_server, "42", "excluded", socket_id=subscribed.socket_id)
    await unsubscribed.expect_next("excluded")
    await to_user(kanal_server, "42", "sentinel")
    await subscribed.expect_next("sentinel")  # the excluded event never arrived


# --- terminate_connections (users.md §5) ------------------------------------------------------


async def test_terminate_closes_signed_in_connections_only(
    kanal_server: RunningServer, clients: Clients
) -> None:
    tabs = [await clients.connect(kanal_server) for _ in range(2)]
    for tab in tabs:
        await tab.signin({"id": "bad"})
        await tab.join_presence("presence-x", "bad")
    presence_only = await clients.connect(kanal_server)
    await presence_only.join_presence("presence-x", "bad")
    bystander = await clients.connect(kanal_server)
    await bystander.signin({"id": "good"})

    response = await api_request(
        kanal_server, "POST", "/apps/1/users/bad/terminate_connections", body={}
    )
    assert (response.status, response.body) == (200, b"{}")
    for tab in tabs:
        error = await tab.expect_error()
        assert error["data"] == {
            "code": 4009,
            "message": "Connection terminated by the application",
        }
        assert await tab.expect_closed() == 4009
    for client in (presence_only, bystander):
        await client.send("pusher:ping")
        await client.expect("pusher:pong")
        assert client.close_code is None
    # The user stays a presence member through the presence-only connection.
    users = await api_request(kanal_server, "GET", "/apps/1/channels/presence-x/users")
    assert users.json() == {"users": [{"id": "bad"}]}


# --- watchlist (users.md §4) ------------------------------------------------------------------


def watchlist_events(frame: dict[str, object]) -> list[tuple[str, list[str]]]:
    assert frame["event"] == "pusher_internal:watchlist_events" and "channel" not in frame
    return [(e["name"], e["user_ids"]) for e in data_of(frame)["events"]]


async def test_watchlist_initial_status_and_changes(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(enable_watchlist_events=True)])
    two = await clients.connect(server)
    await two.signin({"id": "2"})
    watcher = await clients.connect(server)
    await watcher.signin({"id": "1", "watchlist": ["2", "3"]})
    initial = await watcher.expect_next("pusher_internal:watchlist_events")
    assert watchlist_events(initial) == [("online", ["2"]), ("offline", ["3"])]

    three_a = await clients.connect(server)
    await three_a.signin({"id": "3"})
    assert watchlist_events(await watcher.next_frame()) == [("online", ["3"])]
    three_b = await clients.connect(server)
    await three_b.signin({"id": "3"})  # already online: no event
    await three_a.close()  # still online through three_b: no event
    await three_b.close()
    assert watchlist_events(await watcher.next_frame()) == [("offline", ["3"])]
    await two.close()
    assert watchlist_events(await watcher.next_frame()) == [("offline", ["2"])]


async def test_no_watchlist_events_when_disabled(
    kanal_server: RunningServer, clients: Clients
) -> None:
    watcher = await clients.connect(kanal_server)
    await watcher.signin({"id": "1", "watchlist": ["2"]})
    other = await clients.connect(kanal_server)
    await other.signin({"id": "2"})
    await watcher.send("pusher:ping")
    await watcher.expect_next("pusher:pong")


async def test_watchlist_over_the_limit_is_truncated_with_4302(
    start_server: StartServer, clients: Clients
) -> None:
    app = make_app(enable_watchlist_events=True, max_watchlist_size=2)
    server = await start_server(apps=[app])
    watcher = await clients.connect(server)
    await watcher.signin({"id": "1", "watchlist": ["a", "b", "c"]})  # signin_success first
    frames = [await watcher.next_frame(), await watcher.next_frame()]
    status = next(f for f in frames if f["event"] == "pusher_internal:watchlist_events")
    assert watchlist_events(status) == [("offline", ["a", "b"])]
    warning = next(f for f in frames if f["event"] == "pusher:error")
    assert warning["data"]["code"] == 4302
    assert watcher.close_code is None
    c = await clients.connect(server)
    await c.signin({"id": "c"})  # dropped from the watchlist: no event
    a = await clients.connect(server)
    await a.signin({"id": "a"})
    assert watchlist_events(await watcher.next_frame()) == [("online", ["a"])]


# --- authorized connections (users.md §6) -----------------------------------------------------


async def test_unauthorized_connections_are_closed_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, start_server: StartServer, clients: Clients
) -> None:
    monkeypatch.setattr(kanal.server, "TICK_SECONDS", 0.05)
    app = make_app(enable_user_authentication=True, user_authentication_timeout=0.5)
    server = await start_server(apps=[app])
    # The authorized connections open first, so their deadlines pass before the idle ones'.
    signed: WsClient = await clients.connect(server)
    await signed.signin({"id": "1"})
    private = await clients.connect(server)
    await private.subscribe("private-x")
    idle = await clients.connect(server)
    public_only = await clients.connect(server)
    await public_only.subscribe("news")
    for client in (idle, public_only):
        error = await client.expect_error(within=5)
        assert error["data"] == {
            "code": 4009,
            "message": "Connection not authorized within timeout",
        }
        assert await client.expect_closed() == 4009
    # Their (earlier) deadlines have passed too: the authorized ones stay open.
    for client in (signed, private):
        await client.ping()
        assert client.close_code is None
