"""``GET /metrics``: Prometheus text with connection, delivery and HTTP counters."""

from __future__ import annotations

import aiohttp

from kanal.metrics import Metrics
from tests.conftest import RunningServer
from tests.wsclient import Clients, trigger


async def scrape(server: RunningServer) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.base_url + "/metrics") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_count_connections_deliveries_and_requests(
    kanal_server: RunningServer,
) -> None:
    async with Clients() as clients:
        subscribers = [await clients.connect(kanal_server) for _ in range(3)]
        for client in subscribers:
            await client.subscribe("news")
        await trigger(kanal_server, "news", "headline", "{}")
        for client in subscribers:
            await client.expect_next("headline", channel="news")
        # an excluded socket_id (http-api.md §3) is not a delivery
        await trigger(kanal_server, "news", "second", "{}", socket_id=subscribers[0].socket_id)
        for client in subscribers[1:]:
            await client.expect_next("second", channel="news")
        values = await scrape(kanal_server)
    assert values["kanal_connections"] == 3
    assert values["kanal_channels"] == 1
    assert values["kanal_deliveries_total"] == 3 + 2
    assert values["kanal_connections_opened_total"] == 3
    assert values['kanal_http_requests_total{endpoint="events",status="200"}'] == 2


def test_render_format() -> None:
    metrics = Metrics()
    metrics.describe("a_total", "things")
    metrics.inc("a_total", 2)
    metrics.inc_labelled("b_total", {"x": "1"})
    metrics.sampled_counter("c_total", lambda: 5, "sampled", 'reason="r"')
    metrics.gauge("g", lambda: 1.5, "a gauge")
    assert metrics.render().splitlines() == [
        "# HELP a_total things",
        "# TYPE a_total counter",
        "a_total 2",
        "# TYPE b_total counter",
        'b_total{x="1"} 1',
        "# HELP c_total sampled",
        "# TYPE c_total counter",
        'c_total{reason="r"} 5',
        "# HELP g a gauge",
        "# TYPE g gauge",
        "g 1.5",
    ]
