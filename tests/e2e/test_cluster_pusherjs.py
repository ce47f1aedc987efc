"""pusher-js against a cluster: clients spread over several kanal nodes sharing Redis see one
server (issue item 8). Presence members and ``me``, member_added / member_removed, client
events and Python SDK triggers all cross nodes, over WebSocket and over the HTTP transports
(a session lives on the node that created it; messages for it come from any node).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.cluster_nodes import Cluster, cluster
from tests.conftest import RunningServer

from .helpers import call, connect, events, roundtrip, sdk
from .jsclient import JsDriver

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

ROOM = "presence-room"


def member(user_id: str, info: Any = None) -> dict[str, Any]:
    return {"user_id": user_id, "user_info": info}


async def spread(
    js: JsDriver, nodes: list[RunningServer], names: list[str]
) -> dict[str, RunningServer]:
    """Connect ``names`` round-robin over ``nodes``; returns each client's node."""
    placed = {name: nodes[i % len(nodes)] for i, name in enumerate(names)}
    await asyncio.gather(*(connect(js, node, name) for name, node in placed.items()))
    return placed


async def test_presence_across_three_nodes(
    cluster: Cluster, js: JsDriver, client_transport: str
) -> None:
    nodes = await cluster.nodes(3)
    names = ["a", "b", "c"]
    await spread(js, nodes, names)
    for i, name in enumerate(names):
        since = js.mark()
        ok = await js.subscribe(name, ROOM, presence=member(f"user-{name}", {"n": i}))
        assert ok["members"]["me"] == {"id": f"user-{name}", "info": {"n": i}}
        assert ok["members"]["members"] == {
            f"user-{n}": {"n": j} for j, n in enumerate(names[: i + 1])
        }
        for earlier in names[:i]:
            added = await js.wait_for(client=earlier, type="member_added", since=since)
            assert added["member"] == {"id": f"user-{name}", "info": {"n": i}}
    for name in names:  # every client, on every node, has the same view
        view = await js.members(name, ROOM)
        assert view["count"] == 3 and view["myID"] == f"user-{name}"
        assert set(view["members"]) == {"user-a", "user-b", "user-c"}
    api = sdk(nodes[1])
    users = await call(api.users_info, ROOM)
    assert {u["id"] for u in users["users"]} == {"user-a", "user-b", "user-c"}

    since = js.mark()
    await js.disconnect("b")
    for name in ("a", "c"):
        removed = await js.wait_for(client=name, type="member_removed", since=since)
        assert removed["member"]["id"] == "user-b"
        assert removed["members"]["count"] == 2


async def test_client_events_and_sdk_triggers_cross_nodes(
    cluster: Cluster, js: JsDriver, client_transport: str
) -> None:
    nodes = await cluster.nodes(2)
    names = ["a", "b", "c", "d"]
    await spread(js, nodes, names)  # a, c on node 0; b, d on node 1
    for name in names:
        await js.subscribe(name, ROOM, presence=member(name))
        await js.subscribe(name, "private-chat")

    since = js.mark()
    assert await js.trigger("a", ROOM, "client-hi", {"from": "a"})
    assert await js.trigger("b", "private-chat", "client-note", "from b")
    for name in ("b", "c", "d"):
        got = await js.wait_for(client=name, type="event", event="client-hi", since=since)
        assert got["data"] == {"from": "a"} and got["user_id"] == "a"
    for name in ("a", "c", "d"):
        got = await js.wait_for(client=name, type="event", event="client-note", since=since)
        assert got["data"] == "from b" and got["user_id"] is None
    for name in ("a", "b"):  # never echoed to the sender
        await roundtrip(js, name)
    assert not events(js, "a", "client-hi") and not events(js, "b", "client-note")

    # The Python SDK triggers on one node; every client on every node gets each event once,
    # in order.
    since = js.mark()
    apis = [sdk(node) for node in nodes]
    for i in range(10):
        await call(apis[i % 2].trigger, "private-chat", "tick", {"i": i})
    await call(apis[1].trigger, [ROOM, "private-chat"], "done", {})
    for name in names:
        for channel in (ROOM, "private-chat"):
            await js.wait_for(client=name, type="event", event="done", channel=channel, since=since)
        ticks = [r["data"]["i"] for r in events(js, name, "tick", since=since)]
        assert ticks == list(range(10)), (name, ticks)


async def test_users_across_nodes(cluster: Cluster, js: JsDriver) -> None:
    nodes = await cluster.nodes(3)
    placed = await spread(js, nodes, ["a1", "a2", "b"])  # a1: node 0, a2: node 1, b: node 2
    await js.signin("a1", {"id": "alice"})
    await js.signin("a2", {"id": "alice"})
    await js.signin("b", {"id": "bob"})
    since = js.mark()
    await call(sdk(placed["b"]).send_to_user, "alice", "notice", {"text": "hi"})
    for client in ("a1", "a2"):
        got = await js.wait_for(client=client, type="user_event", event="notice", since=since)
        assert got["data"] == {"text": "hi"}
    await roundtrip(js, "b")
    assert not js.records(client="b", type="user_event", since=since)

    assert await call(sdk(placed["b"]).terminate_user_connections, "alice") == {}
    for client in ("a1", "a2"):
        close = await js.wait_for(client=client, type="socket", event="close", since=since)
        assert close["code"] == 4009
    await roundtrip(js, "b")
