"""``kanal serve --workers 3``: whichever worker a scrape reaches (SO_REUSEPORT picks one),
it reports the whole group (docs/metrics.md, "Several workers")."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.cluster_nodes import Cluster, NodeProcess, cluster, free_port, poll
from tests.conftest import APP_ID
from tests.test_cluster_workers import children_of, needs_proc, sockets_by_worker, stop_pool
from tests.test_metrics import Samples, parse, scrape_text, value
from tests.wsclient import Clients, WsClient

__all__ = ["cluster"]

WORKERS = 3
SCRAPES = 12  # each on a new TCP connection, so the kernel spreads them over the workers


async def start_group(
    cluster: Cluster, port: int, metrics_port: int = 0
) -> tuple[NodeProcess, list[int]]:
    args = ["--workers", str(WORKERS)]
    parent = await cluster.spawn("workers", port=port, args=args, metrics_port=metrics_port)
    workers: list[int] = await poll(
        lambda: asyncio.to_thread(children_of, parent.pid),
        lambda found: len(found) == WORKERS,
        within=20,
        what=f"{WORKERS} workers",
    )
    await poll(
        lambda: asyncio.to_thread(sockets_by_worker, workers, port, "0A"),
        lambda held: all(held.values()),
        within=20,
        what="every worker listening",
    )
    return parent, workers


async def connect_across(
    clients: Clients, parent: NodeProcess, workers: list[int], port: int
) -> list[WsClient]:
    """Clients until at least two workers serve some (SO_REUSEPORT hashes connections: 20 on
    one worker of three is ~3e-10 likely)."""
    connected: list[WsClient] = []
    while len(connected) < 6 or sum(1 for n in held(workers, port).values() if n) < 2:
        assert len(connected) < 20, held(workers, port)
        client = await clients.connect(parent)
        await client.subscribe("news")
        connected.append(client)
    return connected


def held(workers: list[int], port: int) -> dict[int, int]:
    return sockets_by_worker(workers, port, "01")


def check_total(samples: Samples, connections: int) -> None:
    assert value(samples, "kanal_connections", app=APP_ID) == connections
    assert value(samples, "kanal_connections_opened_total", app=APP_ID) == connections
    assert value(samples, "kanal_messages_received_total", app=APP_ID) == connections
    assert value(samples, "kanal_scrape_workers", state="answered") == WORKERS
    assert value(samples, "kanal_scrape_workers", state="missing") == 0


@pytest.mark.redis
@needs_proc
async def test_every_scrape_reports_the_whole_group(cluster: Cluster) -> None:
    port = free_port()
    parent, workers = await start_group(cluster, port)
    try:
        async with Clients() as clients:
            connected = await connect_across(clients, parent, workers, port)
            assert sum(held(workers, port).values()) >= len(connected)  # + HTTP keep-alives
            for _ in range(SCRAPES):
                check_total(parse(await scrape_text(parent.base_url)), len(connected))

            # A worker killed: its clients go, the others' scrapes leave it out (missing)
            # until the parent has restarted it and it answers again.
            dead = workers[0]
            lost = held(workers, port)[dead]
            os.kill(dead, signal.SIGKILL)
            await poll(
                lambda: asyncio.to_thread(children_of, parent.pid),
                lambda found: dead not in found and len(found) == WORKERS,
                within=20,
                what="a new worker in place of the killed one",
            )
            samples = await poll(
                lambda: scrape_text(parent.base_url),
                lambda text: value(parse(text), "kanal_scrape_workers", state="answered") == 3,
                within=20,
                what="the restarted worker answering",
            )
            assert value(parse(samples), "kanal_connections", app=APP_ID) == len(connected) - lost
    finally:
        await stop_pool(parent)


@pytest.mark.redis
@needs_proc
async def test_the_metrics_port_of_a_group_reports_the_whole_group(cluster: Cluster) -> None:
    port, metrics_port = free_port(), free_port()
    parent, workers = await start_group(cluster, port, metrics_port=metrics_port)
    try:
        async with Clients() as clients:
            connected = await connect_across(clients, parent, workers, port)
            for _ in range(SCRAPES):
                text = await scrape_text(f"http://127.0.0.1:{metrics_port}")
                check_total(parse(text), len(connected))
    finally:
        await stop_pool(parent)
