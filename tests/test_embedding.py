"""kanal inside a Python web app, under uvicorn (docs/embedding.md).

FastAPI: kanal mounted at ``/realtime`` and started by the host app's lifespan; real pusher-js
connects with ``wsPath``, is authorized for private and presence channels and signed in by the
app's own endpoints (``Realtime.authorize_channel`` / ``authenticate_user``), and receives
what a view triggers in-process. The HTTP API answers under the mount, signed over the path
without the prefix.

Django: an ``asgi.py``-style router sends the WebSocket and ``/realtime/`` to kanal and the
rest to Django's ASGI handler; a sync Django view publishes with ``Realtime.sync``.
"""

from __future__ import annotations

import ast
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import path
from fastapi import FastAPI, HTTPException, Request
from starlette.applications import Starlette
from starlette.routing import Mount

from kanal.asgi import KanalApp, create_app
from kanal.config import Config, ServerSettings
from kanal.protocol.signatures import sign_request
from tests.asgi_server import Served
from tests.conftest import APP_KEY, APP_SECRET, RunningServer, make_app
from tests.e2e.jsclient import JsDriver
from tests.wsclient import Clients, data_of

CONFIG = Config(server=ServerSettings(port=0), apps=(make_app(),))
STAFF = {"alice"}  # who may subscribe to private-orders

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@pytest.fixture
async def js() -> AsyncIterator[JsDriver]:
    async with JsDriver.start() as driver:
        yield driver


async def post(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as response:
        body = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, orjson.loads(body) if is_json else body.decode()


# --- FastAPI ----------------------------------------------------------------------------------


def fastapi_app(kanal_app: KanalApp) -> FastAPI:
    """The host app: kanal mounted, two auth endpoints and a view that publishes in-process.
    The ``user`` cookie stands in for the app's session (examples/fastapi has a login)."""
    realtime = kanal_app.realtime
    app = FastAPI(lifespan=kanal_app.lifespan)
    app.mount("/realtime", kanal_app)

    async def form(request: Request) -> dict[str, str]:
        """pusher-js posts a urlencoded form (FastAPI's ``Form`` needs python-multipart)."""
        fields = parse_qs((await request.body()).decode())
        return {name: values[0] for name, values in fields.items()}

    def user_of(request: Request) -> str:
        user = request.cookies.get("user")
        if not user:
            raise HTTPException(401, "log in first")
        return user

    @app.post("/pusher/auth")
    async def authorize(request: Request) -> dict[str, Any]:
        user, fields = user_of(request), await form(request)
        channel, socket_id = fields["channel_name"], fields["socket_id"]
        if channel.startswith("presence-"):
            info = {"name": user.title()}
            return realtime.authorize_channel(socket_id, channel, user_id=user, user_info=info)
        if channel == "private-orders" and user not in STAFF:
            raise HTTPException(403, "staff only")
        return realtime.authorize_channel(socket_id, channel)

    @app.post("/pusher/user-auth")
    async def authenticate(request: Request) -> dict[str, Any]:
        user, fields = user_of(request), await form(request)
        return realtime.authenticate_user(fields["socket_id"], {"id": user})

    @app.post("/orders/{order_id}/ship")
    async def ship(order_id: int) -> dict[str, Any]:
        data, count = {"id": order_id}, "subscription_count"
        return await realtime.trigger("private-orders", "order-shipped", data, info=count)

    return app


def pusher_options(base: str, user: str) -> dict[str, Any]:
    """What the page's ``new Pusher(key, {...})`` says; the cookie is the one a browser sends."""
    auth = {"transport": "ajax", "headers": {"Cookie": f"user={user}"}}
    return {
        "wsPath": "/realtime",
        "channelAuthorization": {**auth, "endpoint": f"{base}/pusher/auth"},
        "userAuthentication": {**auth, "endpoint": f"{base}/pusher/user-auth"},
    }


async def signed(base: str, method: str, path: str, body: Any, *, signed_path: str) -> int:
    """An HTTP API request to ``base + path`` whose signature covers ``signed_path``."""
    raw = orjson.dumps(body)
    query = sign_request(
        method=method, path=signed_path, params={}, body=raw, app_key=APP_KEY,
        app_secret=APP_SECRET, timestamp=int(time.time()),
    )  # fmt: skip
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, params=query, data=raw, headers=headers) as resp,
    ):
        return resp.status


@pytest.mark.e2e
async def test_fastapi_mount_auth_endpoints_and_in_process_trigger(js: JsDriver) -> None:
    kanal_app = create_app(CONFIG)
    served = Served(fastapi_app(kanal_app))
    port = await served.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await js.connect("alice", key=APP_KEY, port=port, options=pusher_options(base, "alice"))
        await js.subscribe("alice", "private-orders")
        joined = await js.subscribe("alice", "presence-lobby")
        assert joined["members"]["members"] == {"alice": {"name": "Alice"}}
        signin = await js.signin("alice")
        assert signin["user_data"]["id"] == "alice"

        await js.connect("bob", key=APP_KEY, port=port, options=pusher_options(base, "bob"))
        refused = await js.subscribe("bob", "private-orders", expect_error=True)
        assert refused["status"] == 403  # the app's endpoint decided
        bob_joined = await js.subscribe("bob", "presence-lobby")
        assert bob_joined["members"]["count"] == 2
        added = await js.wait_for(client="alice", type="member_added")
        assert added["member"] == {"id": "bob", "info": {"name": "Bob"}}
        users = await kanal_app.realtime.users("presence-lobby")
        assert sorted(user["id"] for user in users["users"]) == ["alice", "bob"]

        status, answer = await post(f"{base}/orders/42/ship")
        assert status == 200, answer
        assert answer == {"channels": {"private-orders": {"subscription_count": 1}}}
        shipped = await js.wait_for(client="alice", type="event", event="order-shipped")
        assert shipped["data"] == {"id": 42} and shipped["channel"] == "private-orders"

        # The HTTP API under the mount: signed over the path without the prefix (root_path).
        body = {"name": "hello", "channels": ["presence-lobby"], "data": '{"n":1}'}
        events = "/apps/1/events"
        assert await signed(base, "POST", f"/realtime{events}", body, signed_path=events) == 200
        for client in ("alice", "bob"):
            hello = await js.wait_for(client=client, type="event", event="hello")
            assert hello["data"] == {"n": 1}
        with_prefix = f"/realtime{events}"
        assert await signed(base, "POST", with_prefix, body, signed_path=with_prefix) == 401

        await js.disconnect("bob")
        removed = await js.wait_for(client="alice", type="member_removed")
        assert removed["member"]["id"] == "bob"
    finally:
        await served.stop()


async def test_starlette_mount_with_a_lifespan_of_its_own() -> None:
    """Plain Starlette, kanal started inside the host app's own lifespan."""
    kanal_app = create_app(CONFIG)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with kanal_app.lifespan():
            yield

    served = Served(Starlette(routes=[Mount("/realtime", app=kanal_app)], lifespan=lifespan))
    port = await served.start()
    try:
        async with Clients() as clients:
            ws_path = f"/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
            ws = await clients.connect(RunningServer(kanal_app.server, port), path=ws_path)
            await ws.subscribe("news")
            await kanal_app.realtime.trigger("news", "flash", [1, 2])
            assert data_of(await ws.expect("flash", "news")) == [1, 2]
    finally:
        await served.stop()
    assert kanal_app.realtime.loop is None  # the lifespan stopped it


# --- Django -----------------------------------------------------------------------------------

# The Django side needs the node its router serves; each test sets it (a real project imports
# its one KanalApp from a module of its own).
DJANGO_KANAL: dict[str, KanalApp] = {}


def ship_view(request: HttpRequest, order_id: int) -> HttpResponse:
    """A plain sync Django view: Django runs it in a worker thread, so it uses ``.sync``."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    realtime = DJANGO_KANAL["app"].realtime
    answer = realtime.sync.trigger("orders", "order-shipped", {"id": order_id})
    return JsonResponse({"shipped": order_id, "kanal": answer})


urlpatterns = [path("orders/<int:order_id>/ship", ship_view)]  # ROOT_URLCONF is this module


def django_router(kanal_app: KanalApp) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """What a project's ``asgi.py`` holds (docs/embedding.md, Django)."""
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup()
    django_app = get_asgi_application()

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # Django's handler has none: start and stop kanal
            await kanal_app(scope, receive, send)
        elif scope["type"] == "websocket" or scope["path"].startswith("/realtime/"):
            root = scope.get("root_path", "") + "/realtime"
            await kanal_app({**scope, "root_path": root}, receive, send)
        else:
            await django_app(scope, receive, send)

    return application


async def test_django_router_and_a_sync_view() -> None:
    kanal_app = DJANGO_KANAL["app"] = create_app(CONFIG)
    served = Served(django_router(kanal_app))
    port = await served.start()
    try:
        # kanal runs from the server's start (the router gives it the lifespan), so the view
        # can publish before anything reached kanal.
        status, answer = await post(f"http://127.0.0.1:{port}/orders/6/ship")
        assert (status, answer) == (200, {"shipped": 6, "kanal": {}})
        async with Clients() as clients:
            ws_path = f"/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
            ws = await clients.connect(RunningServer(kanal_app.server, port), path=ws_path)
            await ws.subscribe("orders")
            status, answer = await post(f"http://127.0.0.1:{port}/orders/7/ship")
            assert (status, answer) == (200, {"shipped": 7, "kanal": {}})
            assert data_of(await ws.expect("order-shipped", "orders")) == {"id": 7}
            status, _ = await post(f"http://127.0.0.1:{port}/realtime/apps/1/events")
            assert status == 401  # the HTTP API, routed to kanal (unsigned)
    finally:
        await served.stop()
        DJANGO_KANAL.clear()


async def test_django_without_lifespan_kanal_starts_on_its_first_request() -> None:
    """A server that sends no lifespan events: ``Realtime.sync`` refuses until kanal's first
    request has started it (docs/embedding.md says to route the lifespan to kanal)."""
    kanal_app = DJANGO_KANAL["app"] = create_app(CONFIG)
    served = Served(django_router(kanal_app), lifespan="off")
    port = await served.start()
    try:
        status, _ = await post(f"http://127.0.0.1:{port}/orders/1/ship")
        assert status == 500  # RuntimeError: kanal is not running
        async with Clients() as clients:
            ws_path = f"/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
            ws = await clients.connect(RunningServer(kanal_app.server, port), path=ws_path)
            await ws.subscribe("orders")
            status, _ = await post(f"http://127.0.0.1:{port}/orders/2/ship")
            assert status == 200
            assert data_of(await ws.expect("order-shipped", "orders")) == {"id": 2}
    finally:
        await served.stop()
        await kanal_app.shutdown()  # nobody else stops it without lifespan
        DJANGO_KANAL.clear()


def test_the_python_blocks_of_docs_embedding_md_parse() -> None:
    """Syntax only: the page's excerpts use names its prose defines; the code they show is
    what the tests above run."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "embedding.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) >= 5
    for block in blocks:
        ast.parse(block)
