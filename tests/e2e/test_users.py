"""Users with pusher-js: sign-in, #server-to-user events, terminate_user_connections,
watchlist events and the authorized-connections gate (issue item 6)."""

from __future__ import annotations

import hashlib
import hmac
import json

from tests.conftest import APP_KEY, APP_SECRET, RunningServer, StartServer, make_app

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


async def test_signin_success(kanal_server: RunningServer, js: JsDriver) -> None:
    """users.md §2, protocol.md §4.4, auth.md §3.2: pusher.signin() → ``pusher:signin_success``
    echoing the exact user_data string; pusher-js then subscribes to
    ``#server-to-user-<id>`` (auth "") and the server accepts it."""
    await connect(js, kanal_server, "a", frames=True)
    ok = await js.signin("a", {"id": "alice", "user_info": {"name": "Alice"}})
    assert ok["user_data"] == {"id": "alice", "user_info": {"name": "Alice"}}
    sent = [json.loads(r["data"]) for r in js.records(client="a", type="frame", dir="out")]
    [signin] = [f for f in sent if f["event"] == "pusher:signin"]
    [frame] = frames_in(js, "a", "pusher:signin_success")
    assert frame["data"] == {"user_data": signin["data"]["user_data"]}

    await js.wait_for(
        client="a", type="message", event="pusher_internal:subscription_succeeded",
        channel="#server-to-user-alice",
    )  # fmt: skip
    sent = [json.loads(r["data"]) for r in js.records(client="a", type="frame", dir="out")]
    [subscribe] = [f for f in sent if f["event"] == "pusher:subscribe"]
    assert subscribe["data"] == {"auth": "", "channel": "#server-to-user-alice"}


async def test_signin_failures(kanal_server: RunningServer, js: JsDriver) -> None:
    """users.md §2 steps 2-3, auth.md §4.2, limits.md §3: a sign-in signed with the wrong
    secret gets ``pusher:error`` (code null, "Invalid signature…") and the connection stays
    open and unauthenticated; a refusing user-auth endpoint (403) yields pusher-js's
    ``signin_error`` and nothing is sent."""
    await connect(js, kanal_server, "a", auth_secret="wrong-secret")
    err = await js.signin("a", {"id": "alice"}, expect_error=True)
    assert err["event"] == "pusher:error"
    assert err["data"]["code"] is None
    assert err["data"]["message"].startswith("Invalid signature"), err
    await roundtrip(js, "a")
    assert not closes(js, "a")
    assert not js.records(client="a", type="signin_success")

    await connect(js, kanal_server, "b", frames=True)
    err = await js.signin("b", {"id": "bob"}, user_auth_error=403, expect_error=True)
    assert err["type"] == "signin_error" and err["status"] == 403
    out = [r["data"] for r in js.records(client="b", type="frame", dir="out")]
    assert not [d for d in out if "pusher:signin" in d]


async def test_send_to_user(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """users.md §3, channels.md §7: Python SDK ``send_to_user`` reaches every connection
    signed in as that user, and nobody else (not even a presence member with that id)."""
    api = sdk(kanal_server)
    for client in ("a1", "a2", "b", "p"):
        await connect(js, kanal_server, client)
    await js.signin("a1", {"id": "alice"})
    await js.signin("a2", {"id": "alice"})
    await js.signin("b", {"id": "bob"})
    await js.subscribe("p", "presence-room", presence={"user_id": "alice", "user_info": None})

    since = js.mark()
    await call(api.send_to_user, "alice", "notice", {"text": "hi alice"})
    for client in ("a1", "a2"):
        got = await js.wait_for(client=client, type="user_event", event="notice", since=since)
        assert got["data"] == {"text": "hi alice"}
    await call(api.send_to_user, "bob", "notice", {"text": "hi bob"})
    got = await js.wait_for(client="b", type="user_event", event="notice", since=since)
    assert got["data"] == {"text": "hi bob"}
    await roundtrip(js, "p")
    assert not js.records(client="p", type="message", event="notice")
    for client in ("a1", "a2", "b"):
        assert len(js.records(client=client, type="user_event", since=since)) == 1


async def _terminated(js: JsDriver, client: str, since: int) -> Record:
    close = await js.wait_for(client=client, type="socket", event="close", since=since)
    assert close["code"] == 4009, close
    err = frames_in(js, client, "pusher:error", since=since)
    assert [f["data"]["code"] for f in err] == [4009], err
    return close


async def test_terminate_user_connections(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """users.md §5, http-api.md §8, protocol.md §6: Python SDK
    ``terminate_user_connections`` closes every connection signed in as the user with
    ``pusher:error`` 4009 + close 4009 (pusher-js stays disconnected), while a presence-only
    member with the same user_id stays connected and keeps the user in the channel."""
    api = sdk(kanal_server)
    room = "presence-room"
    for client in ("a1", "a2", "p", "w"):
        await connect(js, kanal_server, client, frames=True)
    await js.signin("a1", {"id": "alice"})
    await js.signin("a2", {"id": "alice"})
    await js.subscribe("a1", room)  # member "alice" through the sign-in
    await js.subscribe("p", room, presence={"user_id": "alice", "user_info": None})
    await js.subscribe("w", room, presence={"user_id": "watcher", "user_info": None})

    since = js.mark()
    result = await call(api.terminate_user_connections, "alice")
    assert result == {}
    for client in ("a1", "a2"):
        await _terminated(js, client, since)
    await assert_gave_up(js, "a1", "a2", since=since)

    await wait_until(lambda: subscription_count(api, room), lambda n: n == 2)
    await call(api.trigger, room, "sentinel", {})
    for client in ("p", "w"):
        await js.wait_for(client=client, type="event", event="sentinel", since=since)
        assert not closes(js, client)
    assert not js.records(type="member_removed", since=since)
    assert set((await js.members("w", room))["members"]) == {"alice", "watcher"}

    # Unknown / already-gone users: still {}.
    assert await call(api.terminate_user_connections, "nobody") == {}


async def test_watchlist(start_server: StartServer, js: JsDriver) -> None:
    """users.md §4, protocol.md §4.10: with enable_watchlist_events, signing in with a
    watchlist yields the initial online/offline status; watched users coming online (first
    signed-in connection) and going offline (last one closed) are reported once."""
    server = await start_server(apps=[make_app(enable_watchlist_events=True)])
    for client in ("u1", "u2", "u2b", "w"):
        await connect(js, server, client)
    await js.signin("u1", {"id": "u1"})

    since = js.mark()
    await js.signin("w", {"id": "w", "watchlist": ["u1", "u2", "u3"]})
    online = await js.wait_for(client="w", type="watchlist", name="online", since=since)
    offline = await js.wait_for(client="w", type="watchlist", name="offline", since=since)
    assert online["user_ids"] == ["u1"]
    assert sorted(offline["user_ids"]) == ["u2", "u3"]
    signed = js.records(client="w", type="signin_success")[0]
    assert signed["seq"] < online["seq"], "signin_success first (protocol.md §8)"

    since = js.mark()
    await js.signin("u2", {"id": "u2"})
    online = await js.wait_for(client="w", type="watchlist", name="online", since=since)
    assert online["user_ids"] == ["u2"]
    await js.signin("u2b", {"id": "u2"})  # already online: no new event
    await roundtrip(js, "w")
    assert len(js.records(client="w", type="watchlist", since=since)) == 1

    # u2 closes one of two connections, then u1 its only one: only u1 goes offline.
    since = js.mark()
    await js.disconnect("u2")
    await js.disconnect("u1")
    offline = await js.wait_for(client="w", type="watchlist", name="offline", since=since)
    assert offline["user_ids"] == ["u1"]
    assert not js.records(client="w", type="watchlist", name="offline", user_ids=["u2"])

    since = js.mark()
    await js.disconnect("u2b")
    offline = await js.wait_for(client="w", type="watchlist", name="offline", since=since)
    assert offline["user_ids"] == ["u2"]

    # Nobody watched is online: the initial status has no (empty) "online" element.
    await connect(js, server, "w2")
    since = js.mark()
    await js.signin("w2", {"id": "w2", "watchlist": ["u1", "u2"]})
    offline = await js.wait_for(client="w2", type="watchlist", name="offline", since=since)
    assert sorted(offline["user_ids"]) == ["u1", "u2"]
    await roundtrip(js, "w2")
    assert not js.records(client="w2", type="watchlist", name="online")


async def test_authorized_connections(start_server: StartServer, js: JsDriver) -> None:
    """users.md §6, protocol.md §6.2: with enable_user_authentication and a 1 s timeout, a
    connection that neither signs in nor successfully subscribes to a private/presence channel gets
    ``pusher:error`` 4009 + close 4009 and pusher-js stays disconnected; a signed-in one and
    one with a private subscription stay connected."""
    app = make_app(enable_user_authentication=True, user_authentication_timeout=1)
    server = await start_server(apps=[app])
    since = js.mark()
    for client in ("signed", "private", "public", "refused", "idle"):
        await connect(js, server, client, frames=True)
    await js.signin("signed", {"id": "alice"})
    await js.subscribe("private", "private-x")
    await js.subscribe("public", "news")  # a public channel does not authorize
    # ... nor does a private subscription the server refused
    await js.subscribe("refused", "private-x", auth_secret="wrong", expect_error=True)

    gated = ("idle", "public", "refused")
    for client in gated:
        close = await js.wait_for(client=client, type="socket", event="close", timeout=4.0)
        assert close["code"] == 4009
        codes = [f["data"]["code"] for f in frames_in(js, client, "pusher:error")]
        assert codes[-1] == 4009, codes
    await assert_gave_up(js, *gated, since=since)
    for client in ("signed", "private"):
        await roundtrip(js, client)
        assert not closes(js, client)


async def test_watchlist_limit(start_server: StartServer, js: JsDriver) -> None:
    """users.md §4, protocol.md §6.2, limits.md §3: a watchlist over 100 ids is truncated to
    the first 100; ``signin_success`` comes first, then ``pusher:error`` 4302 (no close)."""
    server = await start_server(apps=[make_app(enable_watchlist_events=True)])
    await connect(js, server, "w", frames=True)
    await connect(js, server, "late")
    watchlist = [f"user{i:03d}" for i in range(101)]
    ok = await js.signin("w", {"id": "w", "watchlist": watchlist})
    err = await js.wait_for(client="w", type="message", event="pusher:error")
    assert err["data"]["code"] == 4302 and err["seq"] > ok["seq"]
    offline = await js.wait_for(client="w", type="watchlist", name="offline")
    assert sorted(offline["user_ids"]) == watchlist[:100]

    since = js.mark()
    await js.signin("late", {"id": "user100"})  # dropped from the watchlist: no event
    await roundtrip(js, "w")
    assert not js.records(client="w", type="watchlist", since=since)
    assert not closes(js, "w")


async def test_server_to_user_channel_is_private(kanal_server: RunningServer, js: JsDriver) -> None:
    """users.md §3, channels.md §1-§3.2, §8.1: only a connection signed in as X may subscribe
    to ``#server-to-user-X`` (pusher-js only ever sends its own; others are sent raw and get
    ``pusher:subscription_error`` + ``pusher:error``), such connections receive nothing sent
    to X, and client events on these channels are rejected."""
    api = sdk(kanal_server)
    for client in ("alice", "bob", "anon"):
        await connect(js, kanal_server, client)
    await js.signin("alice", {"id": "alice"})
    await js.signin("bob", {"id": "bob"})

    for client in ("alice", "anon"):
        since = js.mark()
        await js.send_raw(
            client, "pusher:subscribe", {"auth": "", "channel": "#server-to-user-bob"}
        )
        err = await js.wait_for(
            client=client, type="message", event="pusher:subscription_error", since=since
        )
        assert err["channel"] == "#server-to-user-bob"
        await js.wait_for(client=client, type="message", event="pusher:error", since=since)

    since = js.mark()
    await js.send_raw("bob", "client-spoof", {"x": 1}, channel="#server-to-user-bob")
    await js.wait_for(client="bob", type="message", event="pusher:error", since=since)
    await call(api.send_to_user, "bob", "for-bob", {})
    await js.wait_for(client="bob", type="user_event", event="for-bob", since=since)
    for client in ("alice", "anon"):
        await roundtrip(js, client)
        assert not js.records(client=client, type="message", event="for-bob")
    assert not js.records(type="message", event="client-spoof")


def _signin_frame(socket_id: str, user_data: str) -> dict[str, str]:
    """A ``pusher:signin`` ``data`` signed per auth.md §2 (stdlib HMAC, independent of kanal)."""
    message = f"{socket_id}::user::{user_data}".encode()
    sig = hmac.new(APP_SECRET.encode(), message, hashlib.sha256).hexdigest()
    return {"auth": f"{APP_KEY}:{sig}", "user_data": user_data}


async def test_signin_validation(kanal_server: RunningServer, js: JsDriver) -> None:
    """users.md §2 steps 1-5, limits.md §3 (frames pusher-js would not send, sent raw): a
    missing field, an ``auth`` without a colon, correctly signed user_data without a string
    ``id``, and a second sign-in as a different user all get ``pusher:error`` code null and
    leave the connection open; signing in again as the same user succeeds."""
    sid = await connect(js, kanal_server, "a")
    cases: list[tuple[dict[str, str], str]] = [
        ({"auth": f"{APP_KEY}:00"}, ""),
        ({"auth": "no-colon", "user_data": '{"id":"x"}'}, "Invalid format"),
        (_signin_frame(sid, '{"name":"no id"}'), ""),
        (_signin_frame(sid, '{"id":42}'), ""),
        (_signin_frame(sid, '{"id":""}'), ""),
    ]
    for data, prefix in cases:
        since = js.mark()
        await js.send_raw("a", "pusher:signin", data)
        err = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
        assert err["data"]["code"] is None, (data, err)
        assert err["data"]["message"].startswith(prefix), (data, err)
    assert not js.records(client="a", type="message", event="pusher:signin_success")

    # (A signin_success pusher-js did not ask for would crash it: sign in through it first.)
    await js.signin("a", {"id": "alice"})
    since = js.mark()
    await js.send_raw("a", "pusher:signin", _signin_frame(sid, '{"id":"mallory"}'))
    err = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
    assert err["data"]["code"] is None
    since = js.mark()
    await js.send_raw("a", "pusher:signin", _signin_frame(sid, '{"id":"alice","user_info":1}'))
    await js.wait_for(client="a", type="message", event="pusher:signin_success", since=since)
    await roundtrip(js, "a")
    assert not closes(js, "a")
