"""Two apps on one kanal: same channel names, complete isolation (issue item 8)."""

from __future__ import annotations

from tests.conftest import StartServer, make_app

from .helpers import call, closes, connect, events, roundtrip, sdk
from .jsclient import JsDriver

APP2 = {"id": "2", "key": "second-key", "secret": "second-secret"}


async def test_apps_are_isolated(start_server: StartServer, js: JsDriver) -> None:
    """http-api.md §1 (app resolution by id, auth_key must match), protocol.md §1.2 (app by
    key), channels.md §7 ("every subscribed connection of that app"): HTTP triggers, client
    events, presence member lists and channel listings of one app never show up in the
    other, even with identical channel names and user ids."""
    server = await start_server(apps=[make_app(), make_app(**APP2)])
    api1 = sdk(server)
    api2 = sdk(server, app_id=APP2["id"], key=APP2["key"], secret=APP2["secret"])
    creds2 = {"key": APP2["key"], "secret": APP2["secret"], "app_id": APP2["id"]}

    await connect(js, server, "one")
    await connect(js, server, "one-b")
    await connect(js, server, "two", **creds2)
    for client in ("one", "one-b", "two"):
        await js.subscribe(client, "shared")
        await js.subscribe(client, "private-shared")
    await js.subscribe("one", "only-in-one")
    await js.subscribe("one", "presence-room", presence={"user_id": "u1", "user_info": 1})
    ok = await js.subscribe("two", "presence-room", presence={"user_id": "u2", "user_info": 2})
    assert ok["members"]["members"] == {"u2": 2}, "app 1's member leaked into app 2"

    # App 1's trigger reaches app 1's subscribers only; app 2's likewise.
    since = js.mark()
    await call(api1.trigger, ["shared", "private-shared"], "from-app-1", {})
    await call(api2.trigger, "shared", "from-app-2", {})
    await js.wait_for(client="two", type="event", event="from-app-2", since=since)
    await js.wait_for(client="one", type="event", event="from-app-1", channel="private-shared")
    await call(api1.trigger, "shared", "sentinel", {})
    await js.wait_for(client="one", type="event", event="sentinel", since=since)
    assert len(events(js, "one", "from-app-1")) == 2
    assert not events(js, "two", "from-app-1")
    assert not events(js, "one", "from-app-2")

    # Client events stay inside the app.
    since = js.mark()
    assert await js.trigger("one", "private-shared", "client-hello", {})
    await js.wait_for(client="one-b", type="event", event="client-hello", since=since)
    await call(api2.trigger, "private-shared", "sentinel-2", {})
    await js.wait_for(client="two", type="event", event="sentinel-2", since=since)
    assert not events(js, "two", "client-hello")

    # Listings and presence users are per app.
    listing1 = await call(api1.channels_info)
    listing2 = await call(api2.channels_info)
    assert set(listing1["channels"]) == {"shared", "private-shared", "only-in-one", "presence-room"}
    assert set(listing2["channels"]) == {"shared", "private-shared", "presence-room"}
    assert (await call(api1.users_info, "presence-room"))["users"] == [{"id": "u1"}]
    assert (await call(api2.users_info, "presence-room"))["users"] == [{"id": "u2"}]
    assert (await call(api2.channel_info, "shared", ["subscription_count"]))[
        "subscription_count"
    ] == 1
    assert await call(api2.channel_info, "only-in-one") == {"occupied": False}

    # App 1's credentials do not open app 2's private channels.
    since = js.mark()
    await js.subscribe("two", "private-other", auth_key="app-key", auth_secret="app-secret",
                       expect_error=True)  # fmt: skip
    await js.wait_for(client="two", type="subscription_error", channel="private-other")
    await roundtrip(js, "two")


async def test_users_are_isolated(start_server: StartServer, js: JsDriver) -> None:
    """users.md §1, §3-§5 with two apps: the same user id signed in on both apps is two
    different users: send_to_user, watchlist online status, terminate_user_connections and
    per-app connection quotas never cross apps."""
    server = await start_server(
        apps=[
            make_app(enable_watchlist_events=True, max_connections=2),
            make_app(**APP2, enable_watchlist_events=True),
        ]
    )
    api1 = sdk(server)
    api2 = sdk(server, app_id=APP2["id"], key=APP2["key"], secret=APP2["secret"])
    creds2 = {"key": APP2["key"], "secret": APP2["secret"], "app_id": APP2["id"]}

    await connect(js, server, "alice1")
    await connect(js, server, "alice2", **creds2)
    await connect(js, server, "bob2", **creds2)
    await js.signin("alice1", {"id": "alice"})
    await js.signin("alice2", {"id": "alice"})
    # bob on app 2 watches alice and carol: alice is online on app 2.
    since = js.mark()
    await js.signin("bob2", {"id": "bob", "watchlist": ["alice", "carol"]})
    online = await js.wait_for(client="bob2", type="watchlist", name="online", since=since)
    assert online["user_ids"] == ["alice"]

    # carol signs in on app 1 only: bob (app 2) hears nothing. (carol1 is the 4th
    # connection on the server but only the 2nd of app 1, whose quota is 2.)
    await connect(js, server, "carol1")
    since = js.mark()
    await connect(js, server, "over-quota", wait=False)
    close = await js.wait_for(client="over-quota", type="socket", event="close", since=since)
    assert close["code"] == 4004
    since = js.mark()
    await js.signin("carol1", {"id": "carol"})
    await roundtrip(js, "bob2")
    assert not js.records(client="bob2", type="watchlist", since=since)

    since = js.mark()
    await call(api1.send_to_user, "alice", "for-app-1-alice", {})
    await js.wait_for(client="alice1", type="user_event", event="for-app-1-alice", since=since)
    await call(api2.send_to_user, "alice", "for-app-2-alice", {})
    await js.wait_for(client="alice2", type="user_event", event="for-app-2-alice", since=since)
    assert not js.records(client="alice2", type="user_event", event="for-app-1-alice")
    assert not js.records(client="alice1", type="user_event", event="for-app-2-alice")

    # Terminating app 1's alice leaves app 2's alice alone.
    since = js.mark()
    await call(api1.terminate_user_connections, "alice")
    close = await js.wait_for(client="alice1", type="socket", event="close", since=since)
    assert close["code"] == 4009
    await roundtrip(js, "alice2")
    assert not closes(js, "alice2")
