"""Two kanal nodes sharing Redis: the smallest check that the cluster wiring works."""

from __future__ import annotations

from kanal.config import ScalingSettings
from tests.conftest import StartServer
from tests.wsclient import Clients, trigger


async def test_trigger_on_one_node_reaches_a_subscriber_on_the_other(
    start_server: StartServer, redis_url: str, prefix: str, redis_fanout: str
) -> None:
    scaling = ScalingSettings(
        adapter="redis", redis_url=redis_url, redis_prefix=prefix, redis_fanout=redis_fanout
    )
    a = await start_server(scaling=scaling)
    b = await start_server(scaling=scaling)
    async with Clients() as clients:
        alice = await clients.connect(a)
        await alice.join_presence("presence-room", "alice")
        bob = await clients.connect(b)
        joined = await bob.join_presence("presence-room", "bob")
        assert set(joined["ids"]) == {"alice", "bob"}
        await alice.expect("pusher_internal:member_added", channel="presence-room")
        await trigger(b, "presence-room", "hello", '{"n":1}')
        await alice.expect("hello", channel="presence-room")
        await bob.expect("hello", channel="presence-room")
