"""A page reload that lands on another node sends no webhooks (webhooks.md §4, cluster).

Node A sees the user's last connection leave (member_removed, channel_vacated are held in
Redis); node B sees the new connection join within the grace period, which cancels both.
"""

from __future__ import annotations

import asyncio

import pytest

from kanal.config import ScalingSettings, WebhookSettings, WebhookTarget
from kanal.protocol.webhooks import EVENT_TYPES
from tests.conftest import StartServer, make_app
from tests.test_webhooks_server import Receiver, receiver  # noqa: F401 (fixture)
from tests.wsclient import Clients

GRACE = WebhookSettings(grace_period=0.5, batch_window=0.02, retry_window=2.0)


@pytest.mark.redis
async def test_reload_across_nodes_within_grace_sends_nothing_then_leaving_sends_once(
    receiver: Receiver,  # noqa: F811
    start_server: StartServer,
    redis_url: str,
    prefix: str,
    redis_fanout: str,
) -> None:
    scaling = ScalingSettings(
        adapter="redis", redis_url=redis_url, redis_prefix=prefix, redis_fanout=redis_fanout
    )
    app = make_app(webhooks=(WebhookTarget(url=receiver.url, event_types=EVENT_TYPES),))
    a = await start_server(apps=[app], scaling=scaling, webhooks=GRACE)
    b = await start_server(apps=[app], scaling=scaling, webhooks=GRACE)
    async with Clients() as clients:
        first = await clients.connect(a)
        await first.join_presence("presence-page", "u1")
        await receiver.wait_for("member_added", "presence-page")
        await first.close()
        second = await clients.connect(b)  # the reload lands on the other node
        await second.join_presence("presence-page", "u1")
        await asyncio.sleep(GRACE.grace_period * 3)  # negative assertion: nothing falls due
        names = [e["name"] for e in receiver.events if e["channel"] == "presence-page"]
        assert names == ["channel_occupied", "member_added"]
        await second.close()
        await receiver.wait_for("channel_vacated", "presence-page")
        names = [e["name"] for e in receiver.events if e["channel"] == "presence-page"]
        assert names == ["channel_occupied", "member_added", "member_removed", "channel_vacated"]
    assert receiver.invalid == 0
