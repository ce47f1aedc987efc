"""kanal.publisher: a process without connections publishes into the cluster through Redis
(issue 13, item 4), with the HTTP API's validation and answers, and without ever becoming a
node (no subscription to the fan-out channel, no lease).

These tests run the publisher in the test's process beside an in-process node; the
separate-process ones (a worker process, uvicorn workers, ``kanal serve`` nodes) are in
tests/test_cluster_embedded.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis

from kanal.adapters.publish_only import PublishOnlyMembership
from kanal.adapters.redis import connect_publisher
from kanal.config import Config, ScalingSettings, ServerSettings
from kanal.protocol.errors import ApiError
from kanal.publisher import Publisher
from kanal.settings import ConfigError, resolve_config
from tests.cluster_nodes import Cluster, cluster
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer, make_app
from tests.embedded_processes import fanout_subscribers, publisher_traces
from tests.wsclient import Clients, api_request, data_of

__all__ = ["cluster"]

pytestmark = pytest.mark.redis


@pytest.fixture
async def node(cluster: Cluster) -> RunningServer:
    return await cluster.node()


@pytest.fixture
async def publisher(cluster: Cluster) -> AsyncIterator[Publisher]:
    async with Publisher(cluster.config([make_app()])) as made:
        yield made


async def test_publishes_and_reads_without_becoming_a_node(
    cluster: Cluster, node: RunningServer, publisher: Publisher, raw: aredis.Redis
) -> None:
    async with Clients() as clients:
        listener = await clients.connect(node)
        await listener.subscribe("orders")
        await listener.signin({"id": "alice"})
        member = await clients.connect(node)
        await member.join_presence("presence-room", "bob")

        answer = await publisher.trigger("orders", "shipped", {"id": 7}, info="subscription_count")
        assert answer == {"channels": {"orders": {"subscription_count": 1}}}
        assert data_of(await listener.expect("shipped", "orders")) == {"id": 7}
        await publisher.send_to_user("alice", "note", {"to": "alice"})
        assert data_of(await listener.expect("note")) == {"to": "alice"}

        # Reads are the cluster's answers, the same as the node's HTTP API gives.
        for path, call in (
            ("channels", publisher.channels(info="subscription_count")),
            ("channels/presence-room", publisher.channel_info("presence-room", "user_count")),
            ("channels/presence-room/users", publisher.users("presence-room")),
        ):
            params = {"info": "subscription_count"} if path == "channels" else {}
            if path == "channels/presence-room":
                params = {"info": "user_count"}
            over_http = await api_request(node, "GET", f"/apps/{APP_ID}/{path}", params=params)
            assert await call == over_http.json(), path

        # A cache channel's event is remembered in the cluster, for the node to replay.
        await publisher.trigger("cache-prices", "tick", {"p": 1})
        late = await clients.connect(node)
        await late.subscribe("cache-prices")
        assert data_of(await late.expect_next("tick", "cache-prices")) == {"p": 1}

        await publisher.terminate_user_connections("alice")
        assert await listener.expect_closed() == 4009

        assert await fanout_subscribers(raw, cluster.prefix) == 1  # the node's only
        assert await publisher_traces(raw, cluster.prefix) == []


async def test_sync_calls_from_plain_threads(
    cluster: Cluster, node: RunningServer, raw: aredis.Redis
) -> None:
    sync = Publisher(cluster.config([make_app()])).sync
    async with Clients() as clients:
        listener = await clients.connect(node)
        await listener.subscribe("jobs")

        def worker_task(n: int) -> dict[str, Any]:
            return sync.trigger("jobs", "done", {"n": n}, info=["subscription_count"])

        answers = await asyncio.gather(*(asyncio.to_thread(worker_task, n) for n in range(3)))
        assert answers == [{"channels": {"jobs": {"subscription_count": 1}}}] * 3
        received = {data_of(await listener.expect("done", "jobs"))["n"] for _ in range(3)}
        assert received == {0, 1, 2}
        assert await asyncio.to_thread(sync.channel_info, "jobs") == {"occupied": True}
        await asyncio.to_thread(sync.close)
        # Closed, it opens new clients (and a new thread) on the next call.
        await asyncio.to_thread(sync.trigger, "jobs", "again", "{}")
        await listener.expect("again", "jobs")
        await asyncio.to_thread(sync.close)
        assert await publisher_traces(raw, cluster.prefix) == []


async def test_keyword_settings_for_one_app(cluster: Cluster, node: RunningServer) -> None:
    async with (
        Publisher(
            id=APP_ID,
            key=APP_KEY,
            secret=APP_SECRET,
            redis_url=cluster.redis_url,
            redis_prefix=cluster.prefix,
            redis_fanout=cluster.fanout,
        ) as publisher,
        Clients() as clients,
    ):
        listener = await clients.connect(node)
        await listener.subscribe("kw")
        await publisher.trigger(["kw"], "hello", "plain text")
        assert (await listener.expect("hello", "kw"))["data"] == "plain text"


def test_without_redis_it_points_to_the_sdk() -> None:
    with pytest.raises(ConfigError, match="pusher SDK"):
        Publisher(Config(ServerSettings(), (make_app(),)))
    with pytest.raises(ConfigError, match="pusher SDK"):
        Publisher(id="1", key="k", secret="s")
    with pytest.raises(TypeError):
        Publisher(Config(apps=(make_app(),)), id="1")


async def test_its_membership_refuses_what_only_a_node_does(redis_url: str, prefix: str) -> None:
    membership, broker = connect_publisher(redis_url, prefix=prefix)
    try:
        assert isinstance(membership, PublishOnlyMembership)
        with pytest.raises(RuntimeError, match="holds no connections"):
            await membership.join("1", "c", "1.1", None, 0)
        with pytest.raises(RuntimeError, match="holds no connections"):
            await membership.add_connection("1", "1.1", 0)
        with pytest.raises(RuntimeError, match="holds no connections"):
            await membership.sign_in("1", "u", "1.1")
        assert (await membership.counts("1", "c")).subscription_count == 0
    finally:
        await broker.close()
        await membership.close()


# --- (d) the same errors as the HTTP API --------------------------------------------------------

DISABLED = make_app(id="2", key="key-2", secret="secret-2", enabled=False)
THROTTLED = make_app(id="3", key="key-3", secret="secret-3", max_backend_requests_per_second=1)
Call = Callable[[Publisher], Awaitable[Any]]


def _events(body: dict[str, Any], app_id: str = APP_ID) -> tuple[str, str, Any, dict[str, str]]:
    return "POST", f"/apps/{app_id}/events", body, {}


def _batch(batch: list[dict[str, Any]]) -> tuple[str, str, Any, dict[str, str]]:
    return "POST", f"/apps/{APP_ID}/batch_events", {"batch": batch}, {}


def _get(path: str, **params: str) -> tuple[str, str, Any, dict[str, str]]:
    return "GET", f"/apps/{APP_ID}/{path}", b"", params


ERROR_CASES: list[tuple[str, int, Call, tuple[str, str, Any, dict[str, str]]]] = [
    (
        "reserved event name",
        400,
        lambda p: p.trigger("c", "pusher:x", ""),
        _events({"name": "pusher:x", "channels": ["c"], "data": ""}),
    ),
    (
        "event name too long",
        400,
        lambda p: p.trigger("c", "e" * 201, ""),
        _events({"name": "e" * 201, "channels": ["c"], "data": ""}),
    ),
    (
        "invalid channel name",
        400,
        lambda p: p.trigger("bad channel", "e", ""),
        _events({"name": "e", "channels": ["bad channel"], "data": ""}),
    ),
    (
        "too many channels",
        400,
        lambda p: p.trigger([f"c{i}" for i in range(101)], "e", ""),
        _events({"name": "e", "channels": [f"c{i}" for i in range(101)], "data": ""}),
    ),
    (
        "data too large",
        413,
        lambda p: p.trigger("c", "e", "x" * 10241),
        _events({"name": "e", "channels": ["c"], "data": "x" * 10241}),
    ),
    (
        "invalid socket_id",
        400,
        lambda p: p.trigger("c", "e", "", socket_id="abc"),
        _events({"name": "e", "channels": ["c"], "data": "", "socket_id": "abc"}),
    ),
    (
        "encrypted channel among several",
        400,
        lambda p: p.trigger(["private-encrypted-a", "b"], "e", ""),
        _events({"name": "e", "channels": ["private-encrypted-a", "b"], "data": ""}),
    ),
    (
        "batch too large",
        400,
        lambda p: p.trigger_batch([{"channel": "c", "name": "e", "data": ""}] * 11),
        _batch([{"channel": "c", "name": "e", "data": ""}] * 11),
    ),
    (
        "batch event with channels",
        400,
        lambda p: p.trigger_batch([{"channels": ["c"], "name": "e", "data": ""}]),
        _batch([{"channels": ["c"], "name": "e", "data": ""}]),
    ),
    (
        "unknown app",
        404,
        lambda p: p.trigger("c", "e", "", app_id="404"),
        _events({"name": "e", "channels": ["c"], "data": ""}, app_id="404"),
    ),
    (
        "user_count of a public channel",
        400,
        lambda p: p.channel_info("c", "user_count"),
        _get("channels/c", info="user_count"),
    ),
    (
        "user_count without a presence prefix",
        400,
        lambda p: p.channels(info="user_count"),
        _get("channels", info="user_count"),
    ),
    ("users of a public channel", 400, lambda p: p.users("c"), _get("channels/c/users")),
]  # fmt: skip


async def http_status(node: RunningServer, request: tuple[str, str, Any, dict[str, str]]) -> int:
    method, path, body, params = request
    response = await api_request(node, method, path, body=body, params=params)
    return response.status


async def publisher_status(publisher: Publisher, call: Call) -> int:
    with pytest.raises(ApiError) as raised:
        await call(publisher)
    return raised.value.status


async def test_validation_errors_are_the_http_apis(cluster: Cluster) -> None:
    apps = [make_app(), DISABLED, THROTTLED]
    node = await cluster.node(apps=apps)
    async with Publisher(cluster.config(apps)) as publisher:
        for name, status, call, request in ERROR_CASES:
            seen = (await publisher_status(publisher, call), await http_status(node, request))
            assert seen == (status, status), name

        # A disabled app, and the request-rate limit (per process, as per node: one call a
        # second, then 429), signed with those apps' own credentials over HTTP.
        for app, statuses in ((DISABLED, [403]), (THROTTLED, [200, 429])):
            path = f"/apps/{app.id}/events"
            body = {"name": "e", "channels": ["c"], "data": ""}
            over_http = [
                (
                    await api_request(node, "POST", path, body=body, key=app.key, secret=app.secret)
                ).status
                for _ in statuses
            ]
            in_process = []
            for _ in statuses:
                try:
                    await publisher.trigger("c", "e", "", app_id=app.id)
                    in_process.append(200)
                except ApiError as error:
                    in_process.append(error.status)
            assert over_http == in_process == statuses, app.id


async def test_it_is_bound_to_one_live_event_loop(cluster: Cluster) -> None:
    publisher = Publisher(cluster.config([make_app()]))
    await publisher.channels()

    def other_loop() -> None:
        asyncio.run(publisher.channels())

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(other_loop)
    await publisher.aclose()


def test_an_embedded_scaling_keyword_joins_the_cluster() -> None:
    config = resolve_config(
        None, {"id": "1", "key": "k", "secret": "s", "redis_url": "redis://x"}, {}
    )
    assert config.scaling == ScalingSettings(adapter="redis", redis_url="redis://x")
    assert config.apps[0].id == "1"
