"""The operator's surface of a real ``kanal serve`` process (issue 17, item 5): the webhook
endpoint that ``--webhook-url`` adds, the pid file, and separate API and WebSocket ports used
by the official Python SDK.

Every process started here is stopped by pid (``NodeProcess.kill`` / ``terminate``) in a
``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

import aiohttp
import pusher
import pusher.errors
import pytest

from tests.cluster_nodes import (
    START_TIMEOUT,
    Cluster,
    NodeProcess,
    child_env,
    cluster,
    free_port,
    hook_receiver,
    poll,
    spawn_kanal,
)
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer
from tests.test_cluster_workers import children_of, kill_leftovers, needs_proc, sockets_by_worker
from tests.wsclient import Clients, data_of, end_process

__all__ = ["cluster"]

GRACE = "0.2"  # webhooks grace period: channel_vacated follows the last leave this soon


@contextlib.asynccontextmanager
async def kanal(tmp_path: Path, *args: str, port: int | None = None) -> AsyncIterator[NodeProcess]:
    """``python -m kanal serve --port PORT ARGS`` until ``GET /ready`` answers 200; killed at
    the end if it still runs."""
    port = free_port() if port is None else port
    argv: Sequence[str] = ["serve", "--host", "127.0.0.1", "--port", str(port), *args]
    node = await spawn_kanal(argv, tmp_path / f"kanal-{port}.log", port)
    try:
        yield node
    finally:
        await node.kill()


async def test_webhook_url_delivers_every_event_type_to_a_real_receiver(tmp_path: Path) -> None:
    async with hook_receiver() as receiver:
        args = ("--webhook-url", receiver.url("dev"), "--webhooks-grace-period", GRACE)
        async with kanal(tmp_path, *args) as node, Clients() as clients:
            first, second = await clients.connect(node), await clients.connect(node)
            await first.subscribe("private-chat")
            await second.subscribe("private-chat")
            await receiver.wait_for("channel_occupied", "private-chat")
            await first.send("client-typing", {"who": "first"}, channel="private-chat")
            [(_, event)] = await receiver.wait_for("client_event", "private-chat")
            assert (event["event"], event["socket_id"]) == ("client-typing", first.socket_id)
            await first.close()
            await second.close()
            await receiver.wait_for("channel_vacated", "private-chat")
    # Each event once, from one endpoint; hook_receiver validated every signature with the SDK.
    assert [event["name"] for _, event in receiver.events] == [
        "channel_occupied",
        "client_event",
        "channel_vacated",
    ]
    assert receiver.invalid == 0


# --- the pid file ---------------------------------------------------------------------------


async def refused_start(tmp_path: Path, *args: str) -> str:
    """``kanal serve ARGS`` that must exit 1 at once; returns its one error line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kanal", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=tmp_path,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    finally:
        await end_process(process)
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.decode().splitlines() if line.startswith("kanal: error:")]
    assert len(errors) == 1 and b"Traceback" not in stderr, stderr
    return errors[0]


async def test_pid_file_is_written_once_listening_and_removed_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "kanal.pid"
    pid_file.parent.mkdir()
    async with kanal(tmp_path, "--pid-file", str(pid_file)) as node:
        # serve() writes the file before its event loop can answer a request: once /ready
        # answered (spawn_kanal waited for that), the file is there.
        assert pid_file.read_text() == f"{node.pid}\n"
        assert await node.terminate() == 0, node.log()
        assert not pid_file.exists()
        assert list(pid_file.parent.iterdir()) == []  # no temporary file left behind either


async def test_a_second_kanal_with_the_same_pid_file_is_refused(tmp_path: Path) -> None:
    pid_file = tmp_path / "kanal.pid"
    async with kanal(tmp_path, "--pid-file", str(pid_file)) as first:
        line = await refused_start(tmp_path, "--pid-file", str(pid_file))
        assert line == (
            f"kanal: error: the pid file {pid_file} names a running kanal (pid {first.pid}); "
            "stop it first, or delete the file if that process is not kanal"
        )
        assert first.running
        assert pid_file.read_text() == f"{first.pid}\n"  # the refused one left it alone


async def test_a_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    """Stale: a pid no process has, a pid reused by a process that is not kanal, text."""
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    cat = shutil.which("cat")
    assert cat is not None
    other = await asyncio.create_subprocess_exec(cat, stdin=asyncio.subprocess.PIPE)
    pid_file = tmp_path / "kanal.pid"
    try:
        for stale in (str(gone.pid), str(other.pid), "not a pid"):
            pid_file.write_text(f"{stale}\n")
            async with kanal(tmp_path, "--pid-file", str(pid_file)) as node:
                assert pid_file.read_text() == f"{node.pid}\n"
                assert await node.terminate() == 0, node.log()
                assert "replacing the stale pid file" in node.log()
            assert not pid_file.exists()
    finally:
        await end_process(other)


async def test_an_unwritable_pid_file_fails_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "kanal.pid"
    line = await refused_start(tmp_path, "--pid-file", str(missing))
    assert line == f"kanal: error: cannot write the pid file {missing}: No such file or directory"


# --- separate API and WebSocket ports ------------------------------------------------------


def sdk(port: int) -> pusher.Pusher:
    """The official Python SDK, pointed at ``port`` (plain HTTP)."""
    return pusher.Pusher(
        app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=port, ssl=False
    )


async def test_sdk_on_the_api_port_reaches_clients_on_the_websocket_port(tmp_path: Path) -> None:
    """Slanger's layout: WebSocket connections on the main port, the HTTP API on its own."""
    api_port = free_port()
    async with kanal(tmp_path, "--api-port", str(api_port)) as node, Clients() as clients:
        assert f"kanal listening on 127.0.0.1:{api_port} (HTTP API)" in node.log()
        client = await clients.connect(node)
        await client.subscribe("orders")
        await asyncio.to_thread(sdk(api_port).trigger, "orders", "shipped", {"id": 7})
        assert data_of(await client.expect("shipped", "orders")) == {"id": 7}
        info = await asyncio.to_thread(sdk(api_port).channel_info, "orders", ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 1}

        # Cross-use is refused: the SDK on the WebSocket port, a WebSocket on the API port.
        with pytest.raises(pusher.errors.PusherBadStatus, match=r"^404: "):
            await asyncio.to_thread(sdk(node.port).trigger, "orders", "shipped", {"id": 8})
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await clients.open(RunningServer(node.server, api_port))
        assert refused.value.status == 404
        await client.assert_silent("shipped")  # the refused trigger sent nothing


@pytest.mark.redis
@needs_proc
async def test_every_worker_listens_on_every_port(cluster: Cluster, tmp_path: Path) -> None:
    """``--workers 2``: each worker holds the main and the API listener (SO_REUSEPORT); the
    supervising parent writes the pid file, and removes it once SIGTERM stopped them all."""
    main_port, api_port = free_port(), free_port()
    pid_file = tmp_path / "kanal.pid"
    args = ["--workers", "2", "--api-port", str(api_port), "--pid-file", str(pid_file)]
    parent = await cluster.spawn("workers", port=main_port, args=args)
    seen: list[int] = []
    try:
        workers = seen = await poll(
            lambda: asyncio.to_thread(children_of, parent.pid),
            lambda found: len(found) == 2,
            within=20,
            what="2 workers",
        )
        for port in (main_port, api_port):
            await poll(
                partial(asyncio.to_thread, sockets_by_worker, workers, port, "0A"),
                lambda held: all(held.values()),
                within=20,
                what=f"both workers listening on {port}",
            )
        assert pid_file.read_text() == f"{parent.pid}\n"
        async with Clients() as clients:
            client = await clients.connect(parent)
            await client.subscribe("orders")
            for n in range(4):  # each request may land on either worker
                await asyncio.to_thread(sdk(api_port).trigger, "orders", "n", {"n": n})
                assert data_of(await client.expect("n", "orders")) == {"n": n}
            assert await parent.terminate(15) == 0, parent.log()
        assert not pid_file.exists()
    finally:
        await parent.kill()
        kill_leftovers(seen)
