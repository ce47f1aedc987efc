"""Fan-out to many pusher-js clients (issue item 9)."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningServer

from .helpers import call, connect, events, sdk
from .jsclient import JsDriver

CLIENTS = 50
EVENTS = 20


async def test_fanout_in_order_exactly_once(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §7, protocol.md §8 item 4: 50 pusher-js clients on one channel each receive
    a burst of 20 Python SDK events exactly once and in publish order."""
    api = sdk(kanal_server)
    names = [f"c{i:02d}" for i in range(CLIENTS)]
    await asyncio.gather(*(connect(js, kanal_server, name) for name in names))
    await asyncio.gather(*(js.subscribe(name, "fanout") for name in names))
    info = await call(api.channel_info, "fanout", ["subscription_count"])
    assert info["subscription_count"] == CLIENTS

    since = js.mark()
    for i in range(EVENTS):
        await call(api.trigger, "fanout", "tick", {"i": i})
    await call(api.trigger, "fanout", "done", {})  # published last: arrives last
    await asyncio.gather(
        *(
            js.wait_for(client=name, type="event", event="done", since=since, timeout=15.0)
            for name in names
        )
    )
    expected = list(range(EVENTS))
    for name in names:
        got = [r["data"]["i"] for r in events(js, name, "tick", since=since)]
        assert got == expected, (name, got)
