"""The shortest path through a real server, with and without per-iteration write coalescing."""

from __future__ import annotations

import pytest

from tests.conftest import StartServer
from tests.wsclient import Clients, data_of, trigger


@pytest.mark.parametrize("coalesce_writes", [True, False])
async def test_subscribers_receive_events_in_order(
    start_server: StartServer, coalesce_writes: bool
) -> None:
    server = await start_server(coalesce_writes=coalesce_writes)
    async with Clients() as clients:
        subscribers = [await clients.connect(server) for _ in range(3)]
        for client in subscribers:
            await client.subscribe("news")
        for n in range(5):
            await trigger(server, "news", "headline", f'{{"n":{n}}}')
        for client in subscribers:
            for n in range(5):
                frame = await client.expect_next("headline", channel="news")
                assert data_of(frame) == {"n": n}
