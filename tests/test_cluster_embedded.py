"""One cluster of every kind of process (issue 13, items 4 and 7): ``kanal serve`` nodes, the
embedded app (in the test's process, and as two ``uvicorn --workers 2`` worker processes)
and a worker process publishing with ``kanal.publisher``, on one real Redis.

Every process but the in-process embedded app is a real subprocess. Which uvicorn worker
holds which connection is read from ``/proc`` (Linux), so that the tests can make sure each
worker serves some of their clients.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from kanal.config import Config, ServerSettings
from tests.asgi_server import AsgiNode
from tests.cluster_nodes import Cluster, channel_info, cluster, poll
from tests.conftest import RunningServer, make_app
from tests.embedded_processes import (
    UvicornProcess,
    fanout_subscribers,
    publisher_process,
    publisher_traces,
    uvicorn_app,
    wait_for_nodes,
)
from tests.test_cluster_workers import needs_proc, worker_of
from tests.wsclient import Clients, Frame, WsClient, data_of, trigger

__all__ = ["cluster"]

ROOM = "presence-room"
ADDED, REMOVED = "pusher_internal:member_added", "pusher_internal:member_removed"
MAX_CONNECTS = 60  # to land on every worker; all on one of two would be ~1e-18 likely


async def one_client_per_worker(clients: Clients, node: UvicornProcess) -> list[WsClient]:
    """A connected client on each uvicorn worker. The workers share one listening socket and
    whichever accepts first gets the connection, so connect until each has one (closing the
    extra ones)."""
    workers = await asyncio.to_thread(node.workers)
    placed: dict[int, WsClient] = {}
    for _ in range(MAX_CONNECTS):
        client = await clients.connect(node)
        pid = await asyncio.to_thread(worker_of, client, workers, node.port)
        if pid in placed:
            await client.close()
            continue
        placed[pid] = client
        if len(placed) == len(workers):
            return list(placed.values())
    raise AssertionError(f"{MAX_CONNECTS} connections never reached every worker of {workers}")


async def frames_until(client: WsClient, sentinel: str) -> list[Frame]:
    """Every frame up to and including the ``sentinel`` event."""
    seen: list[Frame] = []
    while True:
        frame = await client.next_frame()
        seen.append(frame)
        if frame.get("event") == sentinel:
            return seen


def counted(subscriptions: int, info: dict[str, Any]) -> bool:
    return bool(info["subscription_count"] == subscriptions)


def about(frames: list[Frame], event: str, user_id: str) -> int:
    return sum(1 for f in frames if f.get("event") == event and data_of(f)["user_id"] == user_id)


# --- (a) a worker process publishes to every kind of node ---------------------------------------


@pytest.mark.redis
@needs_proc
async def test_a_worker_process_publishes_to_serve_nodes_and_uvicorn_workers(
    cluster: Cluster, raw: aredis.Redis
) -> None:
    serve = await cluster.spawn("serve")
    config = cluster.config([await cluster.app()])
    async with (
        uvicorn_app(cluster.workdir, "web", config, workers=2) as web,
        publisher_process(cluster.workdir, "worker", config) as worker,
        Clients() as clients,
    ):
        await wait_for_nodes(raw, cluster.prefix, 3)  # serve + 2 uvicorn workers
        listeners = [await clients.connect(serve), *await one_client_per_worker(clients, web)]
        for client in listeners:
            await client.subscribe("orders")
        alice = listeners[-1]
        await alice.signin({"id": "alice"})

        answer = await worker.call(
            "trigger", "orders", "shipped", {"id": 1}, info="subscription_count"
        )
        assert answer == {"ok": {"channels": {"orders": {"subscription_count": 3}}}}
        for client in listeners:
            assert data_of(await client.expect("shipped", "orders")) == {"id": 1}

        # From a forked child of the worker (a Celery prefork pool), then the parent again.
        assert await worker.call("fork") == {"ok": None}
        assert await worker.call("trigger", "orders", "from-child", {"n": 2}) == {"ok": {}}
        assert await worker.call("trigger", "orders", "from-parent", {"n": 3}) == {"ok": {}}
        for client in listeners:
            assert data_of(await client.expect("from-child", "orders")) == {"n": 2}
            assert data_of(await client.expect("from-parent", "orders")) == {"n": 3}

        assert await worker.call("send_to_user", "alice", "note", {"to": "alice"}) == {"ok": None}
        assert data_of(await alice.expect("note")) == {"to": "alice"}

        # A cache channel's event is remembered in the cluster for every node to replay.
        await worker.call("trigger", "cache-prices", "tick", {"p": 9})
        late = await clients.connect(serve)
        await late.subscribe("cache-prices")
        assert data_of(await late.expect_next("tick", "cache-prices")) == {"p": 9}

        # Reads are the cluster's answers: the same as either kind of node gives over HTTP.
        read = await worker.call("channel_info", "orders", "subscription_count")
        for node in (serve, web):
            assert read == {"ok": await channel_info(node, "orders", "subscription_count")}
        refused = await worker.call("trigger", "orders", "pusher:x", "")
        assert refused["error"] == 400 and "reserved" in refused["message"]

        assert await worker.call("terminate_user_connections", "alice") == {"ok": None}
        assert await alice.expect_closed() == 4009

        # The worker never became a member: no subscription, no lease, nothing to reap.
        assert await fanout_subscribers(raw, cluster.prefix) == 3
        assert await publisher_traces(raw, cluster.prefix) == []


# --- (b) the embedded app's Realtime and a standalone node -------------------------------------


@pytest.mark.redis
async def test_realtime_in_an_embedded_app_and_a_serve_node_reach_each_other(
    cluster: Cluster, raw: aredis.Redis
) -> None:
    serve = await cluster.spawn("serve")
    embedded = AsgiNode(cluster.config([await cluster.app()]))
    app = RunningServer(embedded.app.server, await embedded.start())
    realtime = embedded.app.realtime
    try:
        await wait_for_nodes(raw, cluster.prefix, 2)
        async with Clients() as clients:
            on_serve, on_app = await clients.connect(serve), await clients.connect(app)
            for client in (on_serve, on_app):
                await client.subscribe("news")

            answer = await realtime.trigger("news", "from-app", {"x": 1}, info="subscription_count")
            assert answer == {"channels": {"news": {"subscription_count": 2}}}
            await trigger(serve, "news", "from-serve", json.dumps({"y": 2}))
            for client in (on_serve, on_app):
                assert data_of(await client.expect("from-app", "news")) == {"x": 1}
                assert data_of(await client.expect("from-serve", "news")) == {"y": 2}

            # Users and presence cross too: a user signed in on the standalone node.
            await on_serve.signin({"id": "bob"})
            await on_serve.join_presence(ROOM, "bob")
            await realtime.send_to_user("bob", "note", "hi")
            assert (await on_serve.expect("note"))["data"] == "hi"
            assert await realtime.users(ROOM) == {"users": [{"id": "bob"}]}
    finally:
        await embedded.stop()


# --- (c) two uvicorn workers and a serve node: presence, counts, webhooks exactly once ----------


@pytest.mark.redis
@needs_proc
async def test_uvicorn_workers_and_a_serve_node_count_and_announce_once(
    cluster: Cluster, raw: aredis.Redis
) -> None:
    serve = await cluster.spawn("serve", hook="serve")
    hooks = await cluster.hooks()
    config = cluster.config([await cluster.app(hook="web")])
    async with uvicorn_app(cluster.workdir, "web", config, workers=2) as web, Clients() as clients:
        await wait_for_nodes(raw, cluster.prefix, 3)
        observer = await clients.connect(serve)
        await observer.join_presence(ROOM, "observer")

        # One user, connected to both uvicorn workers and to the serve node.
        alice = [*await one_client_per_worker(clients, web), await clients.connect(serve)]
        roster = await alice[0].join_presence(ROOM, "alice")
        assert sorted(roster["ids"]) == ["alice", "observer"]
        assert data_of(await observer.expect(ADDED, ROOM))["user_id"] == "alice"
        for client in alice[1:]:
            await client.join_presence(ROOM, "alice")
        await trigger(serve, ROOM, "sentinel", "{}")
        frames = await frames_until(observer, "sentinel")
        assert about(frames, ADDED, "alice") == about(frames, REMOVED, "alice") == 0

        expected = {"occupied": True, "user_count": 2, "subscription_count": 4}
        for node in (serve, web, web, web, web):  # each request may land on either worker
            assert await channel_info(node, ROOM, "user_count,subscription_count") == expected
        await hooks.exactly_once(
            ("channel_occupied", ROOM),
            ("member_added", ROOM, "observer"),
            ("member_added", ROOM, "alice"),
        )

        # Her connections leave one by one: she is removed once, when the last one goes.
        for remaining, client in zip((3, 2), alice[:-1], strict=True):
            await client.close()
            await poll(
                lambda: channel_info(serve, ROOM, "subscription_count"),
                partial(counted, remaining),
                what=f"{remaining} subscriptions left",
            )
        await trigger(serve, ROOM, "sentinel-2", "{}")
        assert about(await frames_until(observer, "sentinel-2"), REMOVED, "alice") == 0
        await alice[-1].close()
        assert data_of(await observer.expect(REMOVED, ROOM))["user_id"] == "alice"
        await hooks.exactly_once(("member_removed", ROOM, "alice"))
        assert await channel_info(web, ROOM, "user_count") == {"occupied": True, "user_count": 1}

        await observer.close()
        await hooks.exactly_once(("member_removed", ROOM, "observer"), ("channel_vacated", ROOM))
        assert await channel_info(web, ROOM) == {"occupied": False}
        assert hooks.invalid == 0
    assert "memory adapter" not in web.log()


# --- (e) the memory adapter in several workers is announced loudly -------------------------------

WARNING = b"kanal uses the memory adapter in one of several worker processes (uvicorn --workers 2)"


@needs_proc
async def test_the_memory_adapter_under_uvicorn_workers_warns_in_each(tmp_path: Path) -> None:
    config = Config(ServerSettings(), (make_app(),))
    async with uvicorn_app(tmp_path, "memory", config, workers=2) as web:
        log = web.log_path
        await poll(
            lambda: asyncio.to_thread(log.read_bytes),
            lambda text: text.count(WARNING) == 2,
            within=20,
            what="the warning from both workers",
        )
