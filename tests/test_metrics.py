"""``GET /metrics``: prometheus-client's exposition of kanal's counters, gauges and histograms
(docs/metrics.md); the metrics port; summing the expositions of a worker group."""

from __future__ import annotations

import asyncio
import math

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kanal.hub.hub import FANOUT_SAMPLE
from kanal.metrics import Histogram, Metrics, merge_expositions
from kanal.settings import ConfigError, load_config
from tests.cluster_nodes import free_port
from tests.conftest import APP_ID, RunningServer, StartServer
from tests.wsclient import Clients, trigger

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels, read with prometheus-client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def scrape(server: RunningServer) -> Samples:
    return parse(await scrape_text(server.base_url))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


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
    assert value(values, "kanal_connections", app=APP_ID) == 3
    assert value(values, "kanal_channels") == 1
    assert value(values, "kanal_deliveries_total", app=APP_ID) == 3 + 2
    assert value(values, "kanal_connections_opened_total", app=APP_ID) == 3
    assert value(values, "kanal_messages_received_total", app=APP_ID) == 3  # the subscribes
    requests = {"app": APP_ID, "endpoint": "events"}
    assert value(values, "kanal_http_requests_total", status="200", **requests) == 2
    assert value(values, "kanal_http_request_duration_seconds_count", endpoint="events") == 2
    # sampled: the first broadcast, then one in FANOUT_SAMPLE
    assert value(values, "kanal_broadcast_fanout_seconds_count") == 1
    assert value(values, "kanal_scrape_workers", state="answered") == 1


async def test_one_broadcast_in_fanout_sample_is_timed(kanal_server: RunningServer) -> None:
    """Every broadcast is counted; its fan-out time is sampled (docs/metrics.md)."""
    async with Clients() as clients:
        client = await clients.connect(kanal_server)
        await client.subscribe("news")
        for n in range(FANOUT_SAMPLE + 1):
            await trigger(kanal_server, "news", f"e{n}", "{}")
            await client.expect_next(f"e{n}", channel="news")
        values = await scrape(kanal_server)
    assert value(values, "kanal_deliveries_total", app=APP_ID) == FANOUT_SAMPLE + 1
    assert value(values, "kanal_broadcast_fanout_seconds_count") == 2
    assert value(values, "kanal_broadcast_fanout_seconds_sum") > 0


async def test_api_calls_without_a_known_app_have_an_empty_app_label(
    kanal_server: RunningServer,
) -> None:
    """Label values come from the configured apps only: an unknown id in the path is not one
    (else any client could create series at will)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(kanal_server.base_url + "/apps/999/channels") as response,
    ):
        assert response.status == 404
    values = await scrape(kanal_server)
    labels = {"app": "", "endpoint": "channels", "status": "404"}
    assert value(values, "kanal_http_requests_total", **labels) == 1
    assert not [key for key in values if ("app", "999") in key[1]]


@pytest.mark.parametrize("transport", ["serve", "asgi"])
async def test_metrics_port_serves_metrics_and_the_main_port_no_longer_does(
    start_server: StartServer, transport: str
) -> None:
    """``kanal serve`` and an embedded app alike: the main port (or the ASGI app) answers
    404 for /metrics, the metrics port serves it and nothing else."""
    server = await start_server(metrics_port=free_port())
    listener = server.server.metrics_listener
    assert listener is not None
    metrics_url = f"http://127.0.0.1:{listener.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(server.base_url + "/metrics") as response:
            assert response.status == 404
        async with session.get(metrics_url + "/") as response:
            assert response.status == 404  # /metrics only: no API, no health, no WebSocket
        async with session.post(metrics_url + "/metrics") as response:
            assert response.status == 405
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(metrics_url + "/app/app-key")
    assert ("kanal_channels", frozenset()) in parse(await scrape_text(metrics_url))


@pytest.mark.parametrize(
    ("environ", "other"),
    [
        ({"KANAL_PORT": "7000", "KANAL_METRICS_PORT": "7000"}, "port"),
        ({"KANAL_API_PORT": "7001", "KANAL_METRICS_PORT": "7001"}, "api_port"),
    ],
)
def test_the_metrics_port_shares_no_address(environ: dict[str, str], other: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^KANAL_METRICS_PORT: .*same address as server\.{other}"
    ):
        load_config(None, environ, {})


def test_histogram_buckets_are_less_or_equal_and_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(observed)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert math.isclose(histogram.total, 8.65)


def test_a_family_is_registered_with_one_kind_and_one_set_of_labels() -> None:
    metrics = Metrics()
    metrics.counter("kanal_x_total", "x", lambda: 1, reason="a")
    metrics.counter("kanal_x_total", "x", lambda: 2, reason="b")
    with pytest.raises(ValueError, match="registered as counter"):
        metrics.gauge("kanal_x_total", "x", lambda: 1, reason="c")
    with pytest.raises(ValueError, match="registered as counter"):
        metrics.counter("kanal_x_total", "x", lambda: 1, other="c")
    values = parse(metrics.render().decode())
    assert value(values, "kanal_x_total", reason="a") == 1
    assert value(values, "kanal_x_total", reason="b") == 2


def test_merging_sums_every_sample_of_every_worker() -> None:
    workers = []
    for index in range(3):
        metrics = Metrics()
        metrics.apps["1"].opened += index + 1
        metrics.apps[str(index)].deliveries += 10  # an app only one worker has seen
        metrics.fanout.observe(1e-4 * (index + 1))
        metrics.request("1", "events", 200, 0.001)
        metrics.gauge("kanal_channels", "channels", lambda: 2)
        workers.append(metrics.render().decode())
    merged = parse(merge_expositions(workers, missing=1).decode())
    assert value(merged, "kanal_connections_opened_total", app="1") == 1 + 2 + 3
    assert value(merged, "kanal_connections", app="1") == 6
    assert value(merged, "kanal_deliveries_total", app="2") == 10
    assert value(merged, "kanal_channels") == 6
    assert value(merged, "kanal_broadcast_fanout_seconds_bucket", le="0.0001") == 1
    assert value(merged, "kanal_broadcast_fanout_seconds_bucket", le="0.00025") == 2
    assert value(merged, "kanal_broadcast_fanout_seconds_bucket", le="+Inf") == 3
    assert math.isclose(value(merged, "kanal_broadcast_fanout_seconds_sum"), 6e-4)
    labels = {"app": "1", "endpoint": "events", "status": "200"}
    assert value(merged, "kanal_http_requests_total", **labels) == 3
    assert value(merged, "kanal_scrape_workers", state="answered") == 3
    assert value(merged, "kanal_scrape_workers", state="missing") == 1
    # the merged text is a valid exposition with the same families and types
    families = {f.name: f.type for f in text_string_to_metric_families(workers[0])}
    merged_families = {f.name: f.type for f in text_string_to_metric_families(
        merge_expositions(workers).decode())}  # fmt: skip
    assert merged_families == families


async def test_a_scrape_during_a_fan_out_is_consistent(kanal_server: RunningServer) -> None:
    """The counters are read between two event-loop steps: a scrape never sees half of a
    broadcast (the hub adds once, after handing the frame to everyone)."""
    async with Clients() as clients:
        subscribers = [await clients.connect(kanal_server) for _ in range(5)]
        for client in subscribers:
            await client.subscribe("news")
        triggers = [trigger(kanal_server, "news", f"e{n}", "{}") for n in range(10)]
        results = await asyncio.gather(*triggers, *(scrape(kanal_server) for _ in range(5)))
        for samples in results[10:]:
            assert isinstance(samples, dict)
            deliveries = value(samples, "kanal_deliveries_total", app=APP_ID)
            assert deliveries % 5 == 0
