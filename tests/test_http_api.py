"""The HTTP API (http-api.md) through the official ``pusher`` 3.3.4 Python SDK, plus raw signed
requests for the error statuses and a Hypothesis fuzz that must never produce a 5xx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nacl.secret
import pusher
import pusher.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanal.config import App, Config, ServerSettings
from kanal.protocol.signatures import sign_request
from kanal.server import build, serve
from tests.conftest import APP_KEY, APP_SECRET, NO_DRAIN, RunningServer, StartServer, make_app
from tests.wsclient import Clients, WsClient, api_request

MASTER_KEY_B64 = base64.b64encode(b"abcdefghijklmnopqrstuvwxyz012345").decode()


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


def sdk(server: RunningServer, **options: Any) -> Any:
    return pusher.Pusher(
        app_id="1",
        key=APP_KEY,
        secret=APP_SECRET,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        **options,
    )


async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The SDK blocks (requests): run it off the event loop."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def subscribed(server: RunningServer, clients: Clients, *channels: str) -> WsClient:
    client = await clients.connect(server)
    for channel in channels:
        await client.subscribe(channel)
    return client


# --- events (§3-4) ----------------------------------------------------------------------------


async def test_trigger_single_channel(kanal_server: RunningServer, clients: Clients) -> None:
    client = await subscribed(kanal_server, clients, "news")
    assert await call(sdk(kanal_server).trigger, "news", "headline", {"title": "hi"}) == {}
    frame = await client.expect("headline", "news")
    assert frame["data"] == '{"title": "hi"}'  # Python's json.dumps spacing, untouched


async def test_trigger_multiple_channels(kanal_server: RunningServer, clients: Clients) -> None:
    a = await subscribed(kanal_server, clients, "a")
    b = await subscribed(kanal_server, clients, "b", "a")
    await call(sdk(kanal_server).trigger, ["a", "b"], "multi", "text")
    assert (await a.expect("multi"))["channel"] == "a"
    got = {(await b.expect("multi"))["channel"], (await b.expect("multi"))["channel"]}
    assert got == {"a", "b"}


async def test_trigger_excludes_socket_id(kanal_server: RunningServer, clients: Clients) -> None:
    a = await subscribed(kanal_server, clients, "room")
    b = await subscribed(kanal_server, clients, "room")
    client = sdk(kanal_server)
    await call(client.trigger, "room", "not-for-a", {}, socket_id=a.socket_id)
    await call(client.trigger, "room", "for-all", {})
    assert await b.expect_next("not-for-a", "room")
    assert await a.expect_next("for-all", "room")  # the excluded event never came first


async def test_trigger_info_attributes(kanal_server: RunningServer, clients: Clients) -> None:
    first = await clients.connect(kanal_server)
    await first.join_presence("presence-room", "1")
    await first.subscribe("news")
    second = await clients.connect(kanal_server)
    await second.join_presence("presence-room", "1")
    body = {
        "name": "ev",
        "channels": ["presence-room", "news", "empty"],
        "data": "{}",
        "info": "subscription_count,user_count",
    }
    response = await api_request(kanal_server, "POST", "/apps/1/events", body=body)
    assert response.status == 200
    assert response.json() == {
        "channels": {
            "presence-room": {"user_count": 1, "subscription_count": 2},
            "news": {"subscription_count": 1},
            "empty": {"subscription_count": 0},
        }
    }


async def test_trigger_batch(kanal_server: RunningServer, clients: Clients) -> None:
    client = await subscribed(kanal_server, clients, "x", "y")
    batch = [
        {"channel": "x", "name": "first", "data": {"n": 1}},
        {"channel": "y", "name": "second", "data": "raw"},
        {"channel": "x", "name": "third", "data": {"n": 3}},
    ]
    assert await call(sdk(kanal_server).trigger_batch, batch) == {}
    frames = [await client.next_frame() for _ in range(3)]
    assert [(f["event"], f["channel"], f["data"]) for f in frames] == [
        ("first", "x", '{"n": 1}'),
        ("second", "y", "raw"),
        ("third", "x", '{"n": 3}'),
    ]  # published in array order


async def test_trigger_batch_info(kanal_server: RunningServer, clients: Clients) -> None:
    await subscribed(kanal_server, clients, "x")
    body = {
        "batch": [
            {"channel": "x", "name": "a", "data": "1", "info": "subscription_count"},
            {"channel": "y", "name": "b", "data": "2"},
        ]
    }
    response = await api_request(kanal_server, "POST", "/apps/1/batch_events", body=body)
    assert response.json() == {"batch": [{"subscription_count": 1}, {}]}


async def test_encrypted_trigger_is_forwarded_byte_for_byte(
    kanal_server: RunningServer, clients: Clients
) -> None:
    channel = "private-encrypted-vault"
    client = await subscribed(kanal_server, clients, channel)
    sdk_client = sdk(kanal_server, encryption_master_key_base64=MASTER_KEY_B64)._pusher_client
    request = sdk_client.trigger.make_request(channel, "secret", {"message": "hello world"})
    sent_data = json.loads(request.body)["data"]
    assert await call(sdk_client.http.send_request, request) == {}
    frame = await client.expect("secret", channel)
    assert frame["data"] == sent_data
    payload = json.loads(frame["data"])
    key = hashlib.sha256(channel.encode() + base64.b64decode(MASTER_KEY_B64)).digest()
    plain = nacl.secret.SecretBox(key).decrypt(
        base64.b64decode(payload["ciphertext"]), base64.b64decode(payload["nonce"])
    )
    assert json.loads(plain) == {"message": "hello world"}


async def test_duplicate_channels_are_delivered_once(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await subscribed(kanal_server, clients, "dup")
    await call(sdk(kanal_server).trigger, ["dup", "dup"], "once", {})
    await call(sdk(kanal_server).trigger, "dup", "sentinel", {})
    await client.expect_next("once", "dup")
    await client.expect_next("sentinel", "dup")


async def test_percent_encoded_query_values_are_signed_decoded(kanal_server: RunningServer) -> None:
    """http-api.md §2.3 / H5: PHP and Ruby send ``info=user_count%2Csubscription_count``."""
    path = "/apps/1/channels/presence-room"
    query = sign_request(
        method="GET",
        path=path,
        params={"info": "user_count,subscription_count"},
        body=b"",
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        timestamp=int(time.time()),
    )
    encoded = urllib.parse.urlencode(query)  # quotes the comma as %2C
    assert "%2C" in encoded
    status, body = await asyncio.to_thread(send, kanal_server.port, "GET", f"{path}?{encoded}")
    assert status == 200, body
    assert json.loads(body) == {"occupied": False, "user_count": 0, "subscription_count": 0}


# --- channels and users (§5-6) ------------------------------------------------------------------


async def test_channels_info(kanal_server: RunningServer, clients: Clients) -> None:
    client = sdk(kanal_server)
    assert await call(client.channels_info) == {"channels": {}}
    a = await subscribed(kanal_server, clients, "news", "private-orders")
    await a.join_presence("presence-room", "1")
    b = await clients.connect(kanal_server)
    await b.join_presence("presence-room", "2")
    await b.join_presence("presence-lobby", "2")
    await b.signin({"id": "2"})
    await b.subscribe("#server-to-user-2")  # never listed
    assert await call(client.channels_info) == {
        "channels": {
            "news": {},
            "private-orders": {},
            "presence-room": {},
            "presence-lobby": {},
        }
    }
    assert await call(client.channels_info, "presence-", ["user_count"]) == {
        "channels": {"presence-room": {"user_count": 2}, "presence-lobby": {"user_count": 1}}
    }
    assert await call(client.channels_info, "private-") == {"channels": {"private-orders": {}}}
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(client.channels_info, None, ["user_count"])
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(client.channels_info, "private-", ["user_count"])
    await b.close()
    await a.unsubscribe("news")
    await a.ping()
    assert await call(client.channels_info) == {
        "channels": {"private-orders": {}, "presence-room": {}}
    }


async def test_channel_info(kanal_server: RunningServer, clients: Clients) -> None:
    client = sdk(kanal_server)
    assert await call(client.channel_info, "news") == {"occupied": False}
    assert await call(client.channel_info, "news", ["subscription_count"]) == {
        "occupied": False,
        "subscription_count": 0,
    }
    await subscribed(kanal_server, clients, "news")
    await subscribed(kanal_server, clients, "news")
    assert await call(client.channel_info, "news", ["subscription_count"]) == {
        "occupied": True,
        "subscription_count": 2,
    }
    for user in ("1", "1", "2"):
        await (await clients.connect(kanal_server)).join_presence("presence-room", user)
    info = await call(client.channel_info, "presence-room", ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(client.channel_info, "news", ["user_count"])
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(client.channel_info, "news", ["cache"])


async def test_channel_info_cache(kanal_server: RunningServer) -> None:
    client = sdk(kanal_server)
    assert await call(client.channel_info, "cache-prices", ["cache"]) == {
        "occupied": False,
        "cache": None,
    }
    await call(client.trigger, "cache-prices", "price", {"v": 10})
    info = await call(client.channel_info, "cache-prices", ["cache"])
    assert info["occupied"] is False  # a cache outlives (or predates) its subscribers
    assert info["cache"]["data"] == '{"v": 10}'
    assert isinstance(info["cache"]["ttl"], int) and 1790 <= info["cache"]["ttl"] <= 1800


async def test_users_info(kanal_server: RunningServer, clients: Clients) -> None:
    client = sdk(kanal_server)
    assert await call(client.users_info, "presence-room") == {"users": []}
    for user in ("1", "2", "1"):
        await (await clients.connect(kanal_server)).join_presence("presence-room", user)
    users = await call(client.users_info, "presence-room")
    assert sorted(u["id"] for u in users["users"]) == ["1", "2"]
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(client.users_info, "news")


# --- users (§8, users.md §3, §5) --------------------------------------------------------------


async def test_terminate_user_connections(kanal_server: RunningServer, clients: Clients) -> None:
    victim = await clients.connect(kanal_server)
    await victim.signin({"id": "bad"})
    other = await clients.connect(kanal_server)
    await other.signin({"id": "good"})
    client = sdk(kanal_server)
    assert await call(client.terminate_user_connections, "bad") == {}
    assert await victim.expect_closed() == 4009
    assert await call(client.terminate_user_connections, "nobody") == {}
    await other.ping()


async def test_send_to_user(kanal_server: RunningServer, clients: Clients) -> None:
    user = await clients.connect(kanal_server)
    await user.signin({"id": "42"})
    assert await call(sdk(kanal_server).send_to_user, "42", "notice", {"n": 1}) == {}
    assert await user.next_frame() == {
        "event": "notice",
        "channel": "#server-to-user-42",
        "data": '{"n": 1}',
    }


# --- successes are exactly {} as JSON; health checks -------------------------------------------


async def test_success_bodies_are_empty_json_objects(kanal_server: RunningServer) -> None:
    requests = [
        ("/apps/1/events", {"name": "e", "channels": ["c"], "data": "{}"}),
        ("/apps/1/batch_events", {"batch": [{"name": "e", "channel": "c", "data": "{}"}]}),
        ("/apps/1/users/u/terminate_connections", {}),
    ]
    for path, body in requests:
        response = await api_request(kanal_server, "POST", path, body=body)
        assert (response.status, response.body) == (200, b"{}"), path
        assert response.content_type == "application/json"


async def test_health_and_readiness(kanal_server: RunningServer) -> None:
    health = await api_request(kanal_server, "GET", "/")
    assert health.status == 200 and health.content_type == "application/json"
    ready = await api_request(kanal_server, "GET", "/ready")
    assert ready.status == 200 and ready.json()["ready"] is True


# --- authentication failures (§2.3-2.4) -------------------------------------------------------

EVENT = {"name": "e", "channels": ["c"], "data": "{}"}


def drop(name: str) -> Callable[[dict[str, str]], None]:
    def tamper(query: dict[str, str]) -> None:
        del query[name]

    return tamper


def setter(name: str, value: str) -> Callable[[dict[str, str]], None]:
    def tamper(query: dict[str, str]) -> None:
        query[name] = value

    return tamper


@pytest.mark.parametrize(
    ("tamper", "text"),
    [
        (setter("auth_signature", "0" * 64), "Invalid signature"),
        (setter("body_md5", "0" * 32), "body_md5"),
        (drop("body_md5"), "body_md5"),
        (drop("auth_signature"), "auth_signature"),
        (drop("auth_key"), "auth_key"),
        (drop("auth_timestamp"), "auth_timestamp"),
        (drop("auth_version"), "auth_version"),
        (setter("auth_version", "2.0"), "Version"),
    ],
)
async def test_authentication_failures_are_401(
    kanal_server: RunningServer, tamper: Callable[[dict[str, str]], None], text: str
) -> None:
    response = await api_request(kanal_server, "POST", "/apps/1/events", body=EVENT, tamper=tamper)
    assert response.status == 401
    assert text in response.body.decode()


async def test_wrong_auth_key_is_401(kanal_server: RunningServer) -> None:
    response = await api_request(
        kanal_server, "POST", "/apps/1/events", body=EVENT, key="other", secret=APP_SECRET
    )
    assert response.status == 401


async def test_wrong_secret_is_401(kanal_server: RunningServer) -> None:
    response = await api_request(kanal_server, "POST", "/apps/1/events", body=EVENT, secret="nope")
    assert response.status == 401
    assert response.body.startswith(b"Invalid signature")


@pytest.mark.parametrize(("age", "status"), [(601, 401), (-601, 401), (590, 200), (-590, 200)])
async def test_timestamp_window(kanal_server: RunningServer, age: int, status: int) -> None:
    stamp = int(time.time()) - age
    response = await api_request(
        kanal_server, "POST", "/apps/1/events", body=EVENT, timestamp=stamp
    )
    assert response.status == status, response.body
    if status == 401:
        assert b"Timestamp expired" in response.body


# --- other error statuses ---------------------------------------------------------------------


async def test_unknown_app_and_path_are_404(kanal_server: RunningServer) -> None:
    assert (await api_request(kanal_server, "POST", "/apps/99/events", body=EVENT)).status == 404
    assert (await api_request(kanal_server, "GET", "/apps/1/nothing")).status == 404
    assert (await api_request(kanal_server, "GET", "/nothing/here")).status == 404


async def test_data_over_10kb_is_413(kanal_server: RunningServer) -> None:
    ok = {"name": "e", "channels": ["c"], "data": "x" * 10240}
    assert (await api_request(kanal_server, "POST", "/apps/1/events", body=ok)).status == 200
    big = {"name": "e", "channels": ["c"], "data": "\u00e9" * 5121}  # 10242 UTF-8 bytes
    assert (await api_request(kanal_server, "POST", "/apps/1/events", body=big)).status == 413
    batch = {"batch": [{"name": "e", "channel": "c", "data": "x" * 10241}]}
    assert (
        await api_request(kanal_server, "POST", "/apps/1/batch_events", body=batch)
    ).status == 413


async def test_body_over_max_request_bytes_is_413(start_server: StartServer) -> None:
    server = await start_server(max_request_bytes=2048)
    body = {"name": "e", "channels": ["c"], "data": "x" * 3000}
    assert (await api_request(server, "POST", "/apps/1/events", body=body)).status == 413


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "e", "channels": ["c"], "data": "{}", **overrides}
    return {k: v for k, v in body.items() if v is not None}


BAD_REQUESTS: list[tuple[str, str, bytes | dict[str, Any]]] = [
    ("bad json", "/apps/1/events", b"{not json"),
    ("array body", "/apps/1/events", b"[]"),
    ("101 channels", "/apps/1/events", event(channels=[f"c{i}" for i in range(101)])),
    ("no channels", "/apps/1/events", event(channels=[])),
    ("no name", "/apps/1/events", event(name=None)),
    ("no data", "/apps/1/events", event(data=None)),
    ("object data", "/apps/1/events", event(data={"a": 1})),
    ("long name", "/apps/1/events", event(name="e" * 201)),
    ("encrypted+other", "/apps/1/events", event(channels=["private-encrypted-x", "y"])),
    ("bad socket_id", "/apps/1/events", event(socket_id="abc")),
    ("socket_id no dot", "/apps/1/events", event(socket_id="123")),
    ("bad channel", "/apps/1/events", event(channels=["bad name"])),
    ("hash channel", "/apps/1/events", event(channels=["#secret"])),
    ("pusher: event", "/apps/1/events", event(name="pusher:subscribe")),
    ("pusher_internal: event", "/apps/1/events", event(name="pusher_internal:member_added")),
    ("11 batch", "/apps/1/batch_events", {"batch": [event(channel="c")] * 11}),
    ("empty batch", "/apps/1/batch_events", {"batch": []}),
    (
        "batch channels",
        "/apps/1/batch_events",
        {"batch": [{"name": "e", "channels": ["c"], "data": "{}"}]},
    ),
]


@pytest.mark.parametrize(
    ("path", "body"), [(p, b) for _, p, b in BAD_REQUESTS], ids=[i for i, _, _ in BAD_REQUESTS]
)
async def test_bad_requests_are_400(
    kanal_server: RunningServer, path: str, body: bytes | dict[str, Any]
) -> None:
    response = await api_request(kanal_server, "POST", path, body=body)
    assert response.status == 400, response.body
    assert response.body  # one human-readable line


async def test_invalid_batch_publishes_nothing(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await subscribed(kanal_server, clients, "c")
    body = {"batch": [event(channel="c", name="first"), event(channel="bad name")]}
    for item in body["batch"]:
        item.pop("channels", None)
    assert (
        await api_request(kanal_server, "POST", "/apps/1/batch_events", body=body)
    ).status == 400
    await api_request(kanal_server, "POST", "/apps/1/events", body=event(channels=["c"], name="ok"))
    assert (await client.next_frame())["event"] == "ok"


async def test_disabled_app_is_403(start_server: StartServer) -> None:
    server = await start_server(apps=[make_app(enabled=False)])
    assert (await api_request(server, "POST", "/apps/1/events", body=EVENT)).status == 403


async def test_backend_rate_limit_is_429(start_server: StartServer) -> None:
    server = await start_server(apps=[make_app(max_backend_requests_per_second=1)])
    first = await api_request(server, "POST", "/apps/1/events", body=EVENT)
    second = await api_request(server, "POST", "/apps/1/events", body=EVENT)
    assert (first.status, second.status) == (200, 429)
    read = await api_request(server, "GET", "/apps/1/channels")  # reads are limited separately
    assert read.status == 200


# --- fuzzing: junk never produces a 5xx --------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[int]:
    """A server on its own thread and loop, so synchronous Hypothesis tests can call it."""
    config = Config(
        server=ServerSettings(port=0, **NO_DRAIN), apps=(make_app(), App("2", "k2", "s2"))
    )
    ready = threading.Event()
    port: list[int] = []
    state: dict[str, Any] = {}

    def started(bound: int) -> None:
        port.append(bound)
        ready.set()

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            state["loop"], state["stop"] = asyncio.get_running_loop(), stop
            await serve(build(config), stop, started)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0]
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(15)


def send(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request with exactly this target: no client-side re-quoting of the query."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        connection.request(method, target, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["name", "data", "channels", "channel", "socket_id", "info", "batch"]
event_like = st.dictionaries(
    st.sampled_from(FIELDS), json_values | st.text(max_size=40), max_size=6
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=12).map(lambda b: json.dumps({"batch": b}).encode()),
)
segments = st.text(min_size=1, max_size=20).map(lambda s: urllib.parse.quote(s, safe=""))
paths = st.one_of(
    st.sampled_from(
        ["/apps/1/events", "/apps/1/batch_events", "/apps/1/channels", "/apps/2/events"]
    ),
    segments.map(lambda s: f"/apps/1/channels/{s}"),
    segments.map(lambda s: f"/apps/1/channels/{s}/users"),
    segments.map(lambda s: f"/apps/1/users/{s}/terminate_connections"),
    segments.map(lambda s: f"/users/{s}/terminate_connections"),
    segments.map(lambda s: f"/apps/{s}/events"),
)
queries = st.dictionaries(
    st.sampled_from(["info", "filter_by_prefix", "auth_key", "auth_timestamp", "body_md5", "x"]),
    st.text(max_size=20),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST"]),
    path=paths,
    body=bodies,
    query=queries,
    signed=st.booleans(),
)
def test_junk_requests_never_cause_a_5xx(
    threaded_server: int, method: str, path: str, body: bytes, query: dict[str, str], signed: bool
) -> None:
    if signed:  # get past authentication so the request parsers see the junk
        params = {k: v for k, v in query.items() if not k.startswith(("auth_", "body_"))}
        query = sign_request(
            method=method,
            path=path,
            params=params,
            body=body,
            app_key=APP_KEY,
            app_secret=APP_SECRET,
            timestamp=int(time.time()),
        )
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, _ = send(threaded_server, method, target, body)
    assert status < 500, (method, target, body)
