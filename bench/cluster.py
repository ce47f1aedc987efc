"""The cluster scenario (issue 19 item 4): ``python -m bench.cluster [--tiny] [--out FILE]``.

Four ``kanal serve`` nodes and one private redis-server on this machine, once per fan-out
mode (``[scaling] redis_fanout``: ``node``, then ``channel``). ``channels`` public channels
are spread over the nodes: all subscribers of channel *i* are on node *i* mod 4, as a
balancer that keeps a channel's audience together would have it, the case interest-based
fan-out is for. Publishers send triggers to every channel through every node's HTTP API for
``duration`` seconds (closed loop, one event per trigger).

What it reports per mode, over the publishing window: events delivered to subscribers,
Redis bytes out (``INFO stats`` ``total_net_output_bytes``: what Redis wrote to the nodes,
pub/sub deliveries and command replies alike), and CPU seconds of each node and of Redis
(``/proc``, :mod:`bench.procstat`); then per delivered event: Redis bytes out and node CPU
microseconds (all nodes together). The generator (subscribers and publishers) runs in this
process, so its own CPU is not a node's; nothing is pinned, so on a shared machine compare
the two modes of one invocation, not figures of different invocations.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from bench.httpclient import closed_loop, open_pool
from bench.procstat import cpu_seconds, machine, versions
from bench.protocol import event_data, trigger_request
from bench.servers import REPO, ServerProc, start_kanal, start_redis
from bench.wsclient import BACKEND, Stats, Subscriber, connect

__all__ = ["Sizes", "main", "measure"]

MODES = ("node", "channel")


@dataclass(frozen=True)
class Sizes:
    nodes: int = 4
    channels: int = 32
    subscribers: int = 20  # per channel, all on its node
    publishers: int = 2  # HTTP connections per node
    duration: float = 5.0
    event_bytes: int = 200

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(channels=8, subscribers=2, publishers=1, duration=0.5)


def _redis_out(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_net_output_bytes"])
    finally:
        client.close()


async def _subscribe(nodes: list[ServerProc], sizes: Sizes, stats: Stats) -> list[Any]:
    closers = []
    for index in range(sizes.channels):
        target = nodes[index % len(nodes)].target
        for _ in range(sizes.subscribers):
            sub = Subscriber(stats, [(f"bench-{index}", "")], (target.key, target.secret))
            closers.append(await connect(target.ws_url, sub, 30.0))
    return closers


async def _drain(stats: Stats, quiet: float = 1.0, limit: float = 30.0) -> None:
    """Until no event arrived for ``quiet`` seconds (the nodes' queues are empty)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        seen = stats.frames
        await asyncio.sleep(quiet)
        if stats.frames == seen:
            return


async def _publish(nodes: list[ServerProc], sizes: Sizes, stats: Stats) -> dict[str, Any]:
    channels = [f"bench-{index}" for index in range(sizes.channels)]
    loops = []
    for node in nodes:
        pool = await open_pool(node.target.host, node.target.port, sizes.publishers)
        order = random.sample(channels, len(channels))
        data = event_data(sizes.event_bytes)
        requests = [trigger_request(node.target, [channel], data) for channel in order]
        loops.append(closed_loop(pool, requests, sizes.duration))
    stats.reset(latency=False)
    results = await asyncio.gather(*loops)
    await _drain(stats)
    return {
        "triggers": sum(r.ok for r in results),
        "errors": sum(r.errors for r in results),
        "delivered": stats.frames,
    }


def measure(mode: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """One mode: start Redis and the nodes, subscribe, publish, measure, stop."""
    redis_proc, url = start_redis(workdir, None)
    nodes: list[ServerProc] = []
    try:
        for index in range(sizes.nodes):
            name = f"kanal-{mode}-{index}"
            nodes.append(start_kanal(workdir, None, redis_url=url, name=name, fanout=mode))
        return asyncio.run(_measure(mode, nodes, redis_proc.pid, url, sizes))
    finally:
        for node in nodes:
            node.stop()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


async def _measure(
    mode: str, nodes: list[ServerProc], redis_pid: int, url: str, sizes: Sizes
) -> dict[str, Any]:
    stats = Stats()
    closers = await _subscribe(nodes, sizes, stats)
    try:
        await asyncio.sleep(1.0)  # let the subscription storm's work finish before measuring
        nodes_before, redis_before = [n.cpu_seconds() for n in nodes], cpu_seconds(redis_pid)
        out_before = _redis_out(url)
        counts = await _publish(nodes, sizes, stats)
        out = _redis_out(url) - out_before
        cpu = [n.cpu_seconds() - b for n, b in zip(nodes, nodes_before, strict=True)]
        redis_cpu = cpu_seconds(redis_pid) - redis_before
    finally:
        for close in closers:
            close()
    delivered = max(1, counts["delivered"])
    return {
        "mode": mode,
        **counts,
        "expected": counts["triggers"] * sizes.subscribers,
        "redis_bytes_out": out,
        "node_cpu_seconds": cpu,
        "redis_cpu_seconds": redis_cpu,
        "redis_bytes_out_per_delivery": out / delivered,
        "node_cpu_us_per_delivery": sum(cpu) / delivered * 1e6,
        "redis_cpu_us_per_delivery": redis_cpu / delivered * 1e6,
    }


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | triggers | delivered | Redis bytes out / delivery "
        "| node CPU µs / delivery (all nodes) | Redis CPU µs / delivery | node CPU s each |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        each = " / ".join(f"{s:.2f}" for s in r["node_cpu_seconds"])
        lines.append(
            f"| {r['mode']} | {r['triggers']:,} | {r['delivered']:,} "
            f"| {r['redis_bytes_out_per_delivery']:.1f} | {r['node_cpu_us_per_delivery']:.1f} "
            f"| {r['redis_cpu_us_per_delivery']:.1f} | {each} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--modes", default=",".join(MODES), help="redis_fanout values to run")
    parser.add_argument("--nodes", type=int, default=Sizes.nodes, help="kanal nodes to start")
    parser.add_argument("--duration", type=float, default=Sizes.duration, help="seconds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.json")
    args = parser.parse_args(argv)
    sizes = Sizes.tiny() if args.tiny else Sizes(duration=args.duration)
    sizes = dataclasses.replace(sizes, nodes=args.nodes)
    workdir = args.out.parent / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    results = [measure(mode, sizes, workdir) for mode in args.modes.split(",")]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "versions": versions(REPO, None),
        "generator": BACKEND,
        "sizes": asdict(sizes),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
