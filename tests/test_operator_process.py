"""The operator's surface of a real ``kanal serve`` process (issue 17, item 5): the webhook
endpoint that ``--webhook-url`` adds, the pid file, and separate API and WebSocket ports used
by the official Python SDK.

Every process started here is stopped by pid (``NodeProcess.kill`` / ``terminate``) in a
``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tests.cluster_nodes import NodeProcess, free_port, hook_receiver, spawn_kanal
from tests.wsclient import Clients

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
