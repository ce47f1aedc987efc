"""Real processes of one mixed cluster, beside the ``kanal serve`` nodes of
tests/cluster_nodes.py: the embedded app (tests/embedded_app.py) under ``uvicorn --workers
N``, and a worker process publishing with ``kanal.publisher`` (tests/publisher_process.py).

Ownership rule: every uvicorn and publisher process these tests use is started and stopped
here, by pid. uvicorn's workers are children of its main process, started with
:mod:`multiprocessing` (spawn); at the end the main process gets SIGTERM (it stops its
workers, which drain as an embedded kanal does), and any worker it was seen to have that is
still alive afterwards is killed by pid. Nothing here sleeps to wait for a state: it polls a
condition under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster

from kanal.config import Config
from kanal.server import Server
from tests.cluster_nodes import (
    REPO_ROOT,
    NodeProcess,
    child_env,
    free_port,
    node_toml,
    poll,
    wait_ready_http,
)
from tests.test_cluster_workers import PROC, children_of

__all__ = [
    "PublisherProcess",
    "UvicornProcess",
    "fanout_subscribers",
    "publisher_process",
    "publisher_traces",
    "uvicorn_app",
    "wait_for_nodes",
]

APP_MODULE = "tests.embedded_app:app"
STOP_TIMEOUT = 15.0
ANSWER_TIMEOUT = 15.0


# --- what Redis shows of the cluster's members ---------------------------------------------------


async def fanout_subscribers(raw: aredis.Redis, prefix: str) -> int:
    """How many connections listen on the cluster's fan-out channel: one per node (on a
    Redis Cluster a shard channel, counted by the master that owns its slot)."""
    channel = f"{prefix}fanout"
    if isinstance(raw, RedisCluster):
        await raw.initialize()  # the slot map, without which no node owns the channel
        owner = raw.get_node_from_key(channel)  # redis-py would ask a random node
        [(_, count)] = await raw.pubsub_shardnumsub(channel, target_nodes=owner)
    else:
        [(_, count)] = await raw.pubsub_numsub(channel)
    return int(count)


async def wait_for_nodes(raw: aredis.Redis, prefix: str, count: int) -> None:
    """Until exactly ``count`` nodes listen on the fan-out channel (each uvicorn worker is
    one; ``GET /ready`` answers as soon as the first worker is up)."""
    await poll(
        lambda: fanout_subscribers(raw, prefix),
        lambda subscribers: subscribers == count,
        within=20,
        what=f"{count} nodes subscribed to the fan-out channel",
    )


async def publisher_traces(raw: aredis.Redis, prefix: str) -> list[bytes]:
    """Whatever a publisher would have left had it registered as a node: a lease, or keys
    filed under its lease id (its lease ids start with ``publisher:``)."""
    leases = cast(list[bytes], await raw.zrange(f"{prefix}{{nodes}}:leases", 0, -1))
    owned: list[bytes] = [key async for key in raw.scan_iter(match=f"{prefix}*publisher:*")]
    return [lease for lease in leases if lease.startswith(b"publisher:")] + owned


# --- the embedded app under uvicorn -------------------------------------------------------------


def _spawned_by_multiprocessing(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"spawn_main" in (PROC / str(pid) / "cmdline").read_bytes()
    return False


@dataclass(eq=False)
class UvicornProcess(NodeProcess):
    """``uvicorn tests.embedded_app:app --workers N`` on 127.0.0.1; usable wherever the test
    helpers take a RunningServer (``ws_url``, ``base_url``, the HTTP API helpers)."""

    workers_expected: int = 1

    def workers(self) -> list[int]:
        """The worker processes' pids (not uvicorn's multiprocessing resource tracker); with
        one worker uvicorn serves in its main process."""
        if self.workers_expected == 1:
            return [self.pid]
        return [pid for pid in children_of(self.pid) if _spawned_by_multiprocessing(pid)]


@contextlib.asynccontextmanager
async def uvicorn_app(
    workdir: Path, name: str, config: Config, *, workers: int = 2
) -> AsyncIterator[UvicornProcess]:
    """The embedded app built from ``config`` (written as TOML, read through
    ``$KANAL_CONFIG``) in ``workers`` uvicorn worker processes; yields once every worker
    runs."""
    path = workdir / f"{name}.toml"
    path.write_text(node_toml(config), encoding="utf-8")
    port = free_port()
    log_path = workdir / f"{name}.log"
    args = ["-m", "uvicorn", APP_MODULE, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", str(workers), "--log-level", "warning"]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env() | {"KANAL_CONFIG": str(path)},
            cwd=REPO_ROOT,
        )
    node = UvicornProcess(cast(Server, None), port, process, log_path, workers)
    seen: set[int] = set()
    try:
        await wait_ready_http(node)
        running = await poll(
            lambda: asyncio.to_thread(node.workers),
            lambda pids: len(pids) == workers,
            within=20,
            what=f"{workers} uvicorn workers",
        )
        seen.update(running)
        yield node
    finally:
        if node.running:
            seen.update(node.workers())
        await _stop(node, seen)


async def _stop(node: UvicornProcess, workers: set[int]) -> None:
    """SIGTERM to uvicorn, which stops its workers; SIGKILL whatever outlives the deadline."""
    if node.running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
        try:
            await node.wait(STOP_TIMEOUT)
        except AssertionError:
            await node.kill()
    for pid in workers:
        if pid != node.pid and _spawned_by_multiprocessing(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- a worker process with a Publisher --------------------------------------------------------


class PublisherProcess:
    """tests/publisher_process.py: :meth:`call` sends one command and returns its answer,
    ``{"ok": ...}`` or ``{"error": status, "message": ...}``."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps([method, args, kwargs]).encode() + b"\n")
        await self.process.stdin.drain()
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), ANSWER_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no answer to {method}\n{self.log()}") from None
        assert line, f"the publisher process exited\n{self.log()}"
        answer: dict[str, Any] = json.loads(line)
        return answer


@contextlib.asynccontextmanager
async def publisher_process(
    workdir: Path, name: str, config: Config
) -> AsyncIterator[PublisherProcess]:
    """``python -m tests.publisher_process <config.toml>``; at the end its input is closed
    (it closes the publisher and must exit 0), or it is killed after the deadline."""
    path = workdir / f"{name}.toml"
    path.write_text(node_toml(config), encoding="utf-8")
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.publisher_process",
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=child_env(),
            cwd=REPO_ROOT,
        )
    worker = PublisherProcess(process, log_path)
    try:
        yield worker
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert process.stdin is not None
    process.stdin.close()
    try:
        code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the publisher process did not exit\n{worker.log()}") from None
    assert code == 0, worker.log()
