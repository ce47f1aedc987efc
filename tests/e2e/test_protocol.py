"""WebSocket protocol with the real pusher-js client: handshake, refusals, heartbeats, bad input
(issue item 3)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

import pytest
from pusher.errors import PusherForbidden

from kanal.transport.admission import TOO_MANY_CONNECTIONS
from tests.conftest import RunningServer, StartServer, make_app

from .helpers import (
    assert_gave_up,
    call,
    closes,
    connect,
    frames_in,
    roundtrip,
    sdk,
    subscription_count,
    wait_until,
)
from .jsclient import JsDriver, Record

SOCKET_ID = re.compile(r"^\d+\.\d+$")


async def test_connection_established(kanal_server: RunningServer, js: JsDriver) -> None:
    """protocol.md §1.3, §4.1: the first frame is ``pusher:connection_established`` with a
    JSON-string ``data`` carrying a ``<digits>.<digits>`` socket id and activity_timeout 120;
    pusher-js reports the same socket id."""
    socket_id = await connect(js, kanal_server, "a", frames=True)
    assert SOCKET_ID.match(socket_id), socket_id
    first = js.records(client="a", type="frame", dir="in")[0]
    frame = json.loads(first["data"])
    assert frame["event"] == "pusher:connection_established"
    assert isinstance(frame["data"], str), "data must be a JSON-encoded string (§2.1)"
    data = json.loads(frame["data"])
    assert data == {"socket_id": socket_id, "activity_timeout": 120}

    # A second connection gets a different socket id.
    other = await connect(js, kanal_server, "b")
    assert SOCKET_ID.match(other) and other != socket_id


async def _refused(js: JsDriver, client: str, code: int, message: str, since: int) -> Record:
    """The refusal as pusher-js sees it: the ``pusher:error`` frame (pusher-js reports it as a
    connection ``error``), then close ``code``, never ``connected``."""
    close = await js.wait_for(client=client, type="socket", event="close", since=since)
    assert close["code"] == code
    errors = frames_in(js, client, "pusher:error", since=since)
    assert [f["data"] for f in errors] == [{"code": code, "message": message}]
    err = await js.wait_for(client=client, type="error", since=since)
    assert err["error"]["error"]["data"]["code"] == code
    assert not js.records(client=client, type="connected")
    return close


async def test_unknown_key_refused(kanal_server: RunningServer, js: JsDriver) -> None:
    """protocol.md §1.2 step 3, §6: an unknown key gets ``pusher:error`` 4001 and close 4001;
    pusher-js goes to ``disconnected`` and never reconnects."""
    since = js.mark()
    await connect(js, kanal_server, "a", key="no-such-key", wait=False, frames=True)
    await _refused(js, "a", 4001, "Application does not exist", since)
    await assert_gave_up(js, "a", since=since)


async def test_disabled_app_refused(start_server: StartServer, js: JsDriver) -> None:
    """protocol.md §1.2 step 4, §6.2, http-api.md §7: a disabled app refuses connections with
    4003 (pusher-js gives up) and HTTP API calls with 403."""
    server = await start_server(apps=[make_app(enabled=False)])
    since = js.mark()
    await connect(js, server, "a", wait=False, frames=True)
    await _refused(js, "a", 4003, "Application disabled", since)
    await assert_gave_up(js, "a", since=since)
    with pytest.raises(PusherForbidden):  # http-api.md §7: app disabled → 403
        await call(sdk(server).trigger, "news", "ev", {})


async def test_over_connection_quota(start_server: StartServer, js: JsDriver) -> None:
    """protocol.md §1.2 step 7, §6.2, limits.md §2: with ``max_connections=1`` the second
    pusher-js client is refused with 4004 and stays disconnected; the first is unaffected,
    and its slot is free again once it has gone."""
    server = await start_server(apps=[make_app(max_connections=1)])
    await connect(js, server, "first")
    since = js.mark()
    await connect(js, server, "second", wait=False, frames=True)
    await _refused(js, "second", 4004, "Application is over connection quota", since)
    await assert_gave_up(js, "second", since=since)
    await roundtrip(js, "first")
    assert not closes(js, "first")

    # The refused attempt took no slot: once the first client is gone (the server has
    # cleaned up its subscription), a new client fits again.
    api = sdk(server)
    await js.subscribe("first", "marker")
    await js.forget("first")
    await wait_until(lambda: subscription_count(api, "marker"), lambda n: n == 0)
    await connect(js, server, "third")


async def test_over_the_per_ip_connection_rate(start_server: StartServer, js: JsDriver) -> None:
    """``[server] max_connections_per_ip_per_second`` (issue 17 item 4): beyond it pusher-js is
    refused with 4100 and backs off, reconnecting about a second later rather than at once,
    and gets in once its address has tokens again. The admission's clock is stopped so the
    refill happens when the test says."""
    server = await start_server(max_connections_per_ip_per_second=1)
    admission = server.server.websocket.admission
    now = [1000.0]
    admission.clock = lambda: now[0]
    await connect(js, server, "first")
    since = js.mark()
    await connect(js, server, "second", wait=False, frames=True)
    await _refused(js, "second", 4100, TOO_MANY_CONNECTIONS, since)
    # pusher-js's "backoff" close action waits 1 s before the next socket; a 4200 ("retry")
    # would open one at once.
    await js.expect_none(
        lambda r: r.get("client") == "second",
        type="socket",
        event="created",
        since=js.mark(),
        within=0.5,
    )
    now[0] += 10.0
    await js.wait_for(client="second", type="connected", since=since, timeout=10)
    await roundtrip(js, "first")
    assert not closes(js, "first")


async def test_ping_pong(kanal_server: RunningServer, js: JsDriver) -> None:
    """protocol.md §4.2, §7.1: ``pusher:ping`` → ``pusher:pong`` whatever form ``data`` takes
    (object as pusher-js sends it, absent as pusher-websocket-java sends it, or a string)."""
    await connect(js, kanal_server, "a", frames=True)
    pong = await roundtrip(js, "a")
    assert pong["data"] == {}
    for text in ('{"event":"pusher:ping"}', '{"event":"pusher:ping","data":"{}"}'):
        since = js.mark()
        await js.send_text("a", text)
        await js.wait_for(client="a", type="message", event="pusher:pong", since=since)
    # pong data is a JSON string on the wire (§2.1)
    assert all(f["data"] == "{}" for f in frames_in(js, "a", "pusher:pong"))


def _ping_frame(direction: str) -> Callable[[Record], bool]:
    def check(rec: Record) -> bool:
        return (
            rec.get("type") == "frame"
            and rec.get("dir") == direction
            and '"pusher:ping"' in str(rec.get("data"))
        )

    return check


async def _count(js: JsDriver, predicate: Callable[[Record], bool], client: str, n: int) -> None:
    """Wait for the ``n``-th record matching ``predicate`` (one heartbeat period apart)."""
    since = 0
    for _ in range(n):
        rec = await js.wait_for(predicate, client=client, since=since, timeout=4.0)
        since = rec["seq"] + 1


def _assert_never_dropped(js: JsDriver, client: str, socket_id: str) -> None:
    assert not closes(js, client), closes(js, client)
    states = [r["current"] for r in js.records(client=client, type="state")]
    assert states == ["connecting", "connected"], states
    assert [r["socket_id"] for r in js.records(client=client, type="connected")] == [socket_id]


async def test_heartbeat_keeps_responsive_client(start_server: StartServer, js: JsDriver) -> None:
    """protocol.md §4.1-§4.2, §5: with activity_timeout=1 and pong_timeout=1 the handshake
    says 1 s. (1) Stock pusher-js then pings after each second of silence and gets its pong.
    (2) A pusher-js whose own timer is longer (as clients that ignore the server's value)
    gets the server's ``pusher:ping`` probe each idle second and answers ``pusher:pong``.
    Neither is ever disconnected over several heartbeat periods."""
    server = await start_server(apps=[make_app(activity_timeout=1, pong_timeout=1)])
    stock = await connect(js, server, "stock", frames=True)
    quiet = await connect(js, server, "quiet", frames=True, client_activity_timeout=60_000)
    handshake = frames_in(js, "stock", "pusher:connection_established")[0]
    assert json.loads(handshake["data"])["activity_timeout"] == 1

    # Three heartbeat periods each (concurrently): client pings / server probes.
    await asyncio.gather(
        _count(js, _ping_frame("out"), "stock", 3), _count(js, _ping_frame("in"), "quiet", 3)
    )
    for client, socket_id in (("stock", stock), ("quiet", quiet)):
        await roundtrip(js, client)
        _assert_never_dropped(js, client, socket_id)
    # Every client ping got a pong; every server probe got pusher-js's pong.
    assert len(frames_in(js, "stock", "pusher:pong")) >= 3
    server_pings = frames_in(js, "quiet", "pusher:ping")
    assert server_pings and all(f["data"] == "{}" for f in server_pings)
    outbound = [json.loads(r["data"]) for r in js.records(client="quiet", type="frame", dir="out")]
    assert sum(1 for f in outbound if f["event"] == "pusher:pong") >= len(server_pings)


async def test_malformed_input_is_not_fatal(kanal_server: RunningServer, js: JsDriver) -> None:
    """protocol.md §2.2, §4.3: invalid JSON or a frame without a string ``event`` gets
    ``pusher:error`` (code null, data an object), as does a subscribe without a channel, and
    the connection stays open; unknown
    ``pusher:`` events and events that are neither ``pusher:`` nor ``client-`` are ignored."""
    await connect(js, kanal_server, "a", frames=True)
    await js.subscribe("a", "news")
    for text in ("this is not json", "[1,2,3]", '{"data":{}}', '{"event":42}', "{"):
        since = js.mark()
        await js.send_text("a", text)
        err = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
        assert err["data"]["code"] is None, (text, err)
        assert isinstance(err["data"]["message"], str) and err["data"]["message"]
    # pusher:error data is an object on the wire (§2.1 rule 1)
    assert all(isinstance(f["data"], dict) for f in frames_in(js, "a", "pusher:error"))

    # channels.md §3.1 step 1: a subscribe without data.channel.
    since = js.mark()
    await js.send_raw("a", "pusher:subscribe", {"auth": ""})
    err = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
    assert err["data"] == {"code": None, "message": "Missing parameter: data.channel"}

    since = js.mark()
    await js.send_raw("a", "pusher:no_such_event", {"x": 1})
    await js.send_raw("a", "something-else", {"x": 1}, channel="news")
    await roundtrip(js, "a")  # answered in order: nothing came back for the two above
    assert not js.records(client="a", type="message", event="pusher:error", since=since)
    assert not closes(js, "a")
    assert js.records(client="a", type="state")[-1]["current"] == "connected"

    # ... and the connection still does real work.
    await js.subscribe("a", "after-errors")


async def test_path_prefix(start_server: StartServer, js: JsDriver) -> None:
    """protocol.md §1.1-§1.2 step 1, client-config.md §1 (``wsPath``): under a configured
    mount prefix pusher-js connects with ``wsPath``; without it the upgrade is on an unknown
    path and is refused with close 4005 (not an HTTP 404, which pusher-js would retry
    forever), so pusher-js gives up."""
    server = await start_server(path_prefix="/realtime")
    await connect(js, server, "ok", options={"wsPath": "/realtime"})
    await js.subscribe("ok", "news")
    since = js.mark()
    await connect(js, server, "lost", wait=False, frames=True)
    close = await js.wait_for(client="lost", type="socket", event="close", since=since)
    assert close["code"] == 4005, close
    assert [f["data"]["code"] for f in frames_in(js, "lost", "pusher:error")] == [4005]
    await assert_gave_up(js, "lost", since=since)


async def test_reconnect_after_network_drop(kanal_server: RunningServer, js: JsDriver) -> None:
    """protocol.md §3 (cleanup on close), §6.1 (abnormal close → pusher-js reconnects after
    ~1 s), users.md §2 (sign-in re-run after reconnect), channels.md §4.3-§4.4: after its
    socket drops, pusher-js reconnects with a new socket id, re-subscribes and signs in again;
    the server cleaned up the old connection (member_removed, then member_added) and
    delivers channel and server-to-user events to the new one."""
    api = sdk(kanal_server)
    old_id = await connect(js, kanal_server, "a")
    await connect(js, kanal_server, "b")
    await js.signin("a", {"id": "alice"})
    await js.subscribe("a", "presence-room", presence={"user_id": "alice", "user_info": 1})
    await js.subscribe("a", "private-feed")
    await js.subscribe("b", "presence-room", presence={"user_id": "bob", "user_info": 2})

    since = js.mark()
    await js.drop("a")
    new = await js.wait_for(client="a", type="connected", since=since, timeout=5.0)
    assert new["socket_id"] != old_id
    await js.wait_for(client="a", type="subscribed", channel="presence-room", since=since)
    await js.wait_for(client="a", type="subscribed", channel="private-feed", since=since)
    await js.wait_for(client="a", type="signin_success", since=since)
    removed = await js.wait_for(client="b", type="member_removed", since=since)
    added = await js.wait_for(client="b", type="member_added", since=since)
    assert removed["member"]["id"] == added["member"]["id"] == "alice"
    assert added["seq"] > removed["seq"]
    assert (await js.members("b", "presence-room"))["count"] == 2

    await js.wait_for(
        client="a", type="message", event="pusher_internal:subscription_succeeded",
        channel="#server-to-user-alice", since=since,
    )  # fmt: skip
    await call(api.trigger, "private-feed", "after-drop", {"ok": True})
    await call(api.send_to_user, "alice", "dm-after-drop", {"ok": True})
    await js.wait_for(client="a", type="event", event="after-drop", since=since)
    await js.wait_for(client="a", type="user_event", event="dm-after-drop", since=since)
    users = await call(api.users_info, "presence-room")
    assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]
    assert await subscription_count(api, "private-feed") == 1
