"""``kanal serve --workers N``: N processes share one port (SO_REUSEPORT) and one Redis, so
they behave as one server; SIGTERM stops them all (issue item 7).

Which worker holds which connection is read from ``/proc`` (Linux), so the test can make
sure both workers really serve some of its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_nodes import (
    LEASE,
    Cluster,
    NodeProcess,
    channel_info,
    cluster,
    free_port,
    poll,
)
from tests.wsclient import Clients, WsClient, data_of, trigger

__all__ = ["cluster"]

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not (PROC / "net" / "tcp").exists(), reason="needs Linux /proc")
ROOM = "presence-room"
WORKERS = 2


def children_of(parent: int) -> list[int]:
    """Live child processes of ``parent`` (from /proc/<pid>/stat: ppid is field 4)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == parent and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _tcp_sockets(port: int, state: str) -> list[tuple[str, int]]:
    """(inode, remote port) of every TCP socket on local ``port`` in ``state`` (01
    established, 0A listening)."""
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == state:
                    found.append((fields[9], int(fields[2].rsplit(":", 1)[1], 16)))
    return found


def sockets_by_worker(workers: list[int], port: int, state: str) -> dict[int, int]:
    """How many TCP sockets on local ``port`` in ``state`` each worker holds."""
    owner = {inode: pid for pid in workers for inode in _socket_inodes(pid)}
    held = dict.fromkeys(workers, 0)
    for inode, _ in _tcp_sockets(port, state):
        if inode in owner:
            held[owner[inode]] += 1
    return held


def worker_of(client: WsClient, workers: list[int], port: int) -> int:
    """The worker serving ``client``'s connection."""
    client_port = client.ws.get_extra_info("sockname")[1]
    owner = {inode: pid for pid in workers for inode in _socket_inodes(pid)}
    [pid] = [
        owner[inode]
        for inode, remote in _tcp_sockets(port, "01")
        if remote == client_port and inode in owner
    ]
    return pid


def kill_leftovers(pids: list[int]) -> None:
    """SIGKILL workers a failed test left behind (only if still a kanal process)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"kanal" in (PROC / str(pid) / "cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


async def stop_pool(parent: NodeProcess) -> None:
    """SIGTERM first, so that the parent removes its directory of metrics sockets (a killed
    parent cannot); then SIGKILL the parent and every worker it had, if still running."""
    seen = children_of(parent.pid)
    with contextlib.suppress(AssertionError):  # did not stop in time: killed below
        await parent.terminate()
    await parent.kill()
    kill_leftovers(seen)


@contextlib.asynccontextmanager
async def worker_pool(
    cluster: Cluster, name: str, **server: Any
) -> AsyncIterator[tuple[NodeProcess, int]]:
    """``kanal serve --workers 2`` on a free port, every worker listening; afterwards the
    parent and every worker it had are stopped (by pid) if they are still running."""
    port = free_port()
    args = ["--workers", str(WORKERS)]
    parent = await cluster.spawn(name, port=port, args=args, **server)
    try:
        workers = await current_workers(parent)
        await poll(
            lambda: asyncio.to_thread(sockets_by_worker, workers, port, "0A"),
            lambda held: all(held.values()),
            within=20,
            what="every worker listening",
        )
        yield parent, port
    finally:
        await stop_pool(parent)


async def current_workers(parent: NodeProcess) -> list[int]:
    workers: list[int] = await poll(
        lambda: asyncio.to_thread(children_of, parent.pid),
        lambda found: len(found) == WORKERS,
        within=20,
        what=f"{WORKERS} workers",
    )
    return workers


@pytest.mark.redis
@needs_proc
async def test_workers_share_one_port_and_stop_on_sigterm(cluster: Cluster) -> None:
    async with worker_pool(cluster, "workers") as (parent, port):
        await check_workers_act_as_one_server(parent, await current_workers(parent), port)


async def join_on_every_worker(
    clients: Clients, parent: NodeProcess, workers: list[int], port: int
) -> list[WsClient]:
    """Presence members u0, u1, ... until every worker serves some of them (SO_REUSEPORT
    hashes connections over the workers: 20 all on one of two is ~2e-6 likely); checks
    rosters and member_added across the workers on the way."""
    members: list[WsClient] = []
    while len(members) < 4 or not all(sockets_by_worker(workers, port, "01").values()):
        assert len(members) < 20, sockets_by_worker(workers, port, "01")
        client = await clients.connect(parent)
        roster = await client.join_presence(ROOM, f"u{len(members)}")
        assert sorted(roster["ids"]) == sorted(f"u{i}" for i in range(len(members) + 1))
        for earlier in members:
            frame = await earlier.expect("pusher_internal:member_added", ROOM)
            assert data_of(frame)["user_id"] == f"u{len(members)}"
        members.append(client)
    return members


async def check_workers_act_as_one_server(
    parent: NodeProcess, workers: list[int], port: int
) -> None:
    async with Clients() as clients:
        members = await join_on_every_worker(clients, parent, workers, port)
        total = len(members)
        assert sum(sockets_by_worker(workers, port, "01").values()) >= total

        for _ in range(6):  # each HTTP request may land on either worker: all agree
            info = await channel_info(parent, ROOM, "user_count,subscription_count")
            assert info == {"occupied": True, "user_count": total, "subscription_count": total}
        await trigger(parent, ROOM, "hello", json.dumps({"to": "all"}))
        for client in members:
            frame = await client.expect("hello", ROOM)
            assert data_of(frame) == {"to": "all"}

        # SIGTERM to the parent: every worker drains (4200) and the parent exits 0.
        os.kill(parent.pid, signal.SIGTERM)
        closes = await asyncio.gather(*(client.expect_closed(within=10) for client in members))
        assert set(closes) == {4200}
        assert await parent.wait(15) == 0, parent.log()
    assert await asyncio.to_thread(children_of, parent.pid) == []
    for pid in workers:
        assert (
            not (PROC / str(pid)).exists()
            or b"kanal" not in (PROC / str(pid) / "cmdline").read_bytes()
        )


async def test_workers_without_redis_exit_2_naming_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANAL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kanal",
        "serve",
        "--workers",
        "2",
        "--port",
        str(free_port()),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, (stdout, stderr)
    assert b"redis" in stderr.lower(), stderr
    assert stdout == b""


@pytest.mark.redis
@needs_proc
async def test_a_killed_worker_is_replaced_and_its_members_reaped(cluster: Cluster) -> None:
    async with worker_pool(cluster, "workers") as (parent, port), Clients() as clients:
        workers = await current_workers(parent)
        members = await join_on_every_worker(clients, parent, workers, port)
        placed = {client: worker_of(client, workers, port) for client in members}
        dead = workers[0]
        gone = {f"u{i}" for i, client in enumerate(members) if placed[client] == dead}
        stay = [client for client in members if placed[client] != dead]

        os.kill(dead, signal.SIGKILL)
        for client in members:
            if placed[client] == dead:
                await client.expect_closed()
        for client in stay:  # the other worker reaps the dead one's members, once each
            removed: set[str] = set()
            while removed != gone:
                frame = await client.expect(
                    "pusher_internal:member_removed", ROOM, within=LEASE * 2 + 3
                )
                user = data_of(frame)["user_id"]
                assert user in gone - removed, (user, removed)
                removed.add(user)
        replaced = await current_workers(parent)  # the supervisor started a new worker
        assert dead not in replaced
        await poll(
            lambda: asyncio.to_thread(sockets_by_worker, replaced, port, "0A"),
            lambda held: all(held.values()),
            within=20,
            what="the new worker listening",
        )
        info = await channel_info(parent, ROOM, "user_count")
        assert info["user_count"] == len(stay)
        newcomer = await clients.connect(parent)
        roster = await newcomer.join_presence(ROOM, "newcomer")
        assert set(roster["ids"]) == {f"u{i}" for i in range(len(members))} - gone | {"newcomer"}


@pytest.mark.redis
@needs_proc
async def test_workers_drain_once_however_often_they_are_signalled(cluster: Cluster) -> None:
    """systemd's default KillMode (and a terminal's Ctrl-C) signals every process, and the
    parent forwards its own signal too: each worker gets two and must still drain (4200 to
    every client, not an abrupt end), then the parent exits 0."""
    async with worker_pool(cluster, "workers", drain_grace=0.3, drain_seconds=1.0) as (
        parent,
        port,
    ):
        workers = await current_workers(parent)
        async with Clients() as clients:
            members = await join_on_every_worker(clients, parent, workers, port)
            for pid in [parent.pid, *workers]:
                os.kill(pid, signal.SIGTERM)
            closes = await asyncio.gather(*(client.expect_closed(within=10) for client in members))
            assert set(closes) == {4200}
            assert await parent.wait(15) == 0, parent.log()
        assert parent.log().count("connections closed with 4200 in") == WORKERS, parent.log()


@pytest.mark.redis
@needs_proc
async def test_a_second_signal_to_the_parent_ends_every_worker_at_once(cluster: Cluster) -> None:
    async with worker_pool(cluster, "workers", drain_grace=30.0) as (parent, _port):
        workers = await current_workers(parent)
        os.kill(parent.pid, signal.SIGTERM)
        await poll(
            lambda: asyncio.to_thread(parent.log),
            lambda log: log.count("WebSocket upgrades refused in") == WORKERS,
            what="every worker draining",
        )
        loop = asyncio.get_running_loop()
        second = loop.time()
        os.kill(parent.pid, signal.SIGTERM)
        assert await parent.wait(5) == 128 + signal.SIGTERM
        elapsed = loop.time() - second
        print(f"\nparent and workers gone {elapsed * 1000:.0f} ms after the second signal")
        assert elapsed < 1.0
    for pid in workers:  # SIGKILLed and reaped by the parent before it ended
        assert not (PROC / str(pid)).exists()
