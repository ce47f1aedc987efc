"""Secret rotation end to end (docs/apps.md, "Secret rotation"): while an app holds a previous
secret, pusher-js clients whose auth endpoint signs with the old secret or with the new one
subscribe (private, presence, private-encrypted) and sign in, and the Python and Node SDKs
publish with either; webhooks carry the new secret's signature. Once the previous secret has
expired, everything signed with it is refused.

The rotating app's expiry lies an hour ahead and the expired app's an hour behind: no test
waits for the clock."""

from __future__ import annotations

import json
import time
from typing import Any

import pusher
import pytest
from aiohttp import web
from pusher.errors import PusherBadAuth

from kanal.config import WebhookTarget
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer, StartServer, make_app
from tests.test_webhooks_server import Receiver, receiver  # noqa: F401 (fixture)
from tests.webapp import served

from .helpers import MASTER_KEY, call, connect, roundtrip, sdk
from .jsclient import JsDriver
from .test_node_sdk import node_sdk

OLD_SECRET = "old-app-secret"  # the secret being rotated out; APP_SECRET is the new one
CHANNELS = ("private-orders", "presence-room", "private-encrypted-vault")
MEMBER = {"user_id": "ada", "user_info": {"name": "Ada"}}


def rotating(expires_in: float) -> dict[str, Any]:
    """The test app's settings mid-rotation, the previous secret expiring ``expires_in``
    seconds from now (negative: already expired)."""
    return {"previous_secret": OLD_SECRET, "previous_secret_expires_at": time.time() + expires_in}


async def test_old_and_new_secret_both_work_until_the_expiry(
    start_server: StartServer,
    js: JsDriver,
    receiver: Receiver,  # noqa: F811
) -> None:
    """auth.md §3.1-3.2 and http-api.md §2 with either secret; webhooks.md §2 with the new."""
    hook = WebhookTarget(url=receiver.url, event_types=("channel_occupied",))
    app = make_app(**rotating(3600), webhooks=(hook,))
    server: RunningServer = await start_server(apps=[app])
    for client, secret in (("old", OLD_SECRET), ("new", APP_SECRET)):
        await connect(js, server, client, secret=secret, master_key=MASTER_KEY)
        for channel in CHANNELS:
            await js.subscribe(client, channel, presence=MEMBER)
        await js.signin(client, {"id": f"user-{client}"})

    since = js.mark()
    await call(sdk(server, secret=OLD_SECRET).trigger, "private-orders", "from-python-old", "1")
    await call(sdk(server).trigger, "private-orders", "from-python-new", "2")
    results = [
        *await node_sdk(
            server, ["trigger", "private-orders", "from-node-old", "3"], secret=OLD_SECRET
        ),
        *await node_sdk(server, ["trigger", "private-orders", "from-node-new", "4"]),
    ]
    assert [r["status"] for r in results] == [200, 200], results
    for client in ("old", "new"):
        for event in ("from-python-old", "from-python-new", "from-node-old", "from-node-new"):
            await js.wait_for(client=client, type="event", event=event, since=since)

    [occupied] = await receiver.wait_for("channel_occupied", "private-orders")
    assert occupied["channel"] == "private-orders"
    assert receiver.invalid == 0  # the receiver validates with the new secret only


async def test_after_the_expiry_the_old_secret_is_refused(
    start_server: StartServer, js: JsDriver
) -> None:
    """The previous secret expired an hour ago: subscriptions, sign-in and HTTP API calls
    signed with it fail as with a wrong secret; the new secret still works."""
    server: RunningServer = await start_server(apps=[make_app(**rotating(-3600))])
    await connect(js, server, "old", secret=OLD_SECRET, master_key=MASTER_KEY)
    for channel in CHANNELS:
        since = js.mark()
        await js.subscribe("old", channel, presence=MEMBER, expect_error=True)
        err = await js.wait_for(
            client="old", type="subscription_error", channel=channel, since=since
        )
        assert err["status"] == 401, err
    err = await js.signin("old", {"id": "user-old"}, expect_error=True)
    assert "Invalid signature" in json.dumps(err), err
    await roundtrip(js, "old")

    with pytest.raises(PusherBadAuth, match="Invalid signature"):
        await call(sdk(server, secret=OLD_SECRET).trigger, "private-orders", "e", "x")
    [refused] = await node_sdk(server, ["trigger", "private-orders", "e", "x"], secret=OLD_SECRET)
    assert refused["status"] == 401 and "Invalid signature" in refused["body"], refused

    await connect(js, server, "new", master_key=MASTER_KEY)
    for channel in CHANNELS:
        await js.subscribe("new", channel, presence=MEMBER)
    await js.signin("new", {"id": "user-new"})
    since = js.mark()
    await call(sdk(server).trigger, "private-orders", "still-works", "y")
    [accepted] = await node_sdk(server, ["trigger", "private-orders", "node-works", "z"])
    assert accepted["status"] == 200, accepted
    for event in ("still-works", "node-works"):
        await js.wait_for(client="new", type="event", event=event, since=since)


def auth_backend(secret: str) -> web.Application:
    """A backend's ``/pusher/auth`` and ``/pusher/user-auth``, signing with ``secret`` through
    the official Python SDK, as an app server does before and after the rotation."""
    signer = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=secret)

    async def channel(request: web.Request) -> web.Response:
        form = await request.post()
        socket_id, name = str(form["socket_id"]), str(form["channel_name"])
        member = MEMBER if name.startswith("presence-") else None
        return web.json_response(signer.authenticate(name, socket_id, member))

    async def user(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response(signer.authenticate_user(str(form["socket_id"]), {"id": "ada"}))

    app = web.Application()
    app.router.add_post("/pusher/auth", channel)
    app.router.add_post("/pusher/user-auth", user)
    return app


@pytest.mark.parametrize("expires_in", [3600, -3600], ids=["rotating", "expired"])
async def test_auth_endpoints_on_the_old_and_the_new_secret(
    start_server: StartServer, js: JsDriver, expires_in: float
) -> None:
    """pusher-js with real auth endpoints (``transport: "ajax"``): the backend still on the
    old secret works until the expiry and not after; the one on the new secret always does."""
    server: RunningServer = await start_server(apps=[make_app(**rotating(expires_in))])
    async with served(auth_backend(OLD_SECRET)) as old, served(auth_backend(APP_SECRET)) as new:
        for client, base in (("old", old), ("new", new)):
            options = {
                "channelAuthorization": {"endpoint": f"{base}/pusher/auth", "transport": "ajax"},
                "userAuthentication": {"endpoint": f"{base}/pusher/user-auth", "transport": "ajax"},
            }
            await connect(js, server, client, options=options)
        for channel in ("private-orders", "presence-room"):
            await js.subscribe("new", channel)
            since = js.mark()
            await js.subscribe("old", channel, expect_error=expires_in < 0)
            if expires_in < 0:
                err = await js.wait_for(client="old", type="subscription_error", since=since)
                assert err["status"] == 401, err
        await js.signin("new")
        await js.signin("old", expect_error=expires_in < 0)
        await roundtrip(js, "old")
