"""The console's recorder on its own: rings, cursors, leases and rates, on a fake clock."""

from __future__ import annotations

import asyncio

from kanal.console import Recorder
from tests.wsclient import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(**options: int) -> tuple[Recorder, Clock]:
    clock = Clock()
    return Recorder(monotonic=clock, wall=clock, lease=10.0, **options), clock


async def test_only_watched_apps_are_recorded() -> None:
    made, _ = recorder()
    made.event("1", "connected", socket_id="1.1")
    assert not made.watching and made.page("1", 0, 0).events == []
    made.watch("1")
    assert made.watching
    made.event("1", "connected", socket_id="1.2")
    made.event("2", "connected", socket_id="2.1")  # another app, not watched
    assert [r["socket_id"] for r in made.page("1", 0, 0).events] == ["1.2"]
    assert made.page("2", 0, 0).events == []
    await made.close()


async def test_webhooks_are_recorded_unwatched() -> None:
    made, _ = recorder()
    made.webhook("1", "delivered", status=200)
    page = made.page("1", 0, 0)
    assert [r["status"] for r in page.webhooks] == [200] and page.next_webhook == 1


async def test_cursors_and_a_wrapped_ring() -> None:
    made, _ = recorder(event_ring=3)
    made.watch("1")
    for n in range(5):
        made.event("1", "api_message", n=n)
    page = made.page("1", 0, 0)
    assert [r["n"] for r in page.events] == [2, 3, 4] and page.lost == 2
    assert page.next_event == 5
    later = made.page("1", 4, 0)
    assert [r["n"] for r in later.events] == [4] and later.lost == 0
    assert made.page("1", 5, 0).events == []
    restarted = made.page("1", 99, 0)  # a cursor from before a restart starts over
    assert [r["n"] for r in restarted.events] == [2, 3, 4]
    await made.close()


async def test_the_lease_ends_and_rates_are_sampled() -> None:
    made, clock = recorder()
    made.watch("1")
    assert made.rates("1") is None
    made.received("1")
    made.delivered("1", 10)
    clock.now += 1
    made.tick()
    made.delivered("1", 10)
    clock.now += 1
    made.tick()
    assert made.rates("1") == (0.5, 10.0)
    clock.now += 9  # past the lease (10 s from the watch at t=100)
    made.tick()
    assert not made.watching and made.rates("1") is None
    made.event("1", "connected")
    assert made.page("1", 0, 0).events == []
    await made.close()


async def test_a_waiting_poll_wakes_on_news_and_on_close() -> None:
    made, _ = recorder()
    made.watch("1")
    waiting = asyncio.ensure_future(made.wait("1", 0, 0, 30))
    await wait_until(lambda: made.polling("1"))
    made.event("1", "connected", socket_id="1.1")
    page = await asyncio.wait_for(waiting, 1)
    assert [r["kind"] for r in page.events] == ["connected"]
    quiet = asyncio.ensure_future(made.wait("1", 1, 0, 30))
    await wait_until(lambda: made.polling("1"))
    await made.close()
    assert (await asyncio.wait_for(quiet, 1)).events == []
    made.watch("1")  # a console polls again while the node stops: answered at once
    assert not made.watching and not made.polling("1")
    assert (await asyncio.wait_for(made.wait("1", 1, 0, 30), 1)).events == []
