"""The logs of a whole ``kanal serve`` run (issue 17 item 3), read as an operator would.

A real ``python -m kanal serve`` subprocess at ``log_level = "debug"`` with ``--verbose`` is
driven through connections, private and presence subscriptions with valid and invalid
signatures, sign-ins, a client event, a refused key, signed API calls (one with a wrong
secret) and a signed webhook, then stopped with SIGINT. Its output must hold the lines an
operator needs (start-up summary, refusal reasons, connections opened and closed, API calls,
traced frames, shutdown phases) and never the app secret, the admin token or any signature
that crossed the wire, in full. A second run checks the JSON lines format.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pusher
import pytest
from aiohttp import web

import kanal
from kanal.config import App, Config, ServerSettings, WebhookSettings, WebhookTarget
from kanal.protocol.signatures import sign_channel, sign_signin
from tests.cluster_nodes import NodeProcess, free_port, node_toml, poll, spawn_kanal
from tests.webapp import served
from tests.wsclient import Clients, api_request

APP_ID = "7"
KEY = "logs-key"
SECRET = "log-secret-" + secrets.token_urlsafe(12)
ADMIN_TOKEN = "admin-token-" + secrets.token_urlsafe(12)
DIGEST = re.compile(r"[0-9a-fA-F]{64}")
STOP_WITHIN = 20.0


@dataclasses.dataclass
class Webhooks:
    url: str = ""
    signatures: list[str] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Webhooks]:
    received = Webhooks()

    async def handle(request: web.Request) -> web.Response:
        received.signatures.append(request.headers["X-Pusher-Signature"])
        body = json.loads(await request.read())
        received.events += [event["name"] for event in body["events"]]
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with served(app) as base:
        received.url = f"{base}/hook"
        yield received


async def start(tmp_path: Path, *args: str, hook_url: str = "", **server: Any) -> NodeProcess:
    port = free_port()
    webhooks = (WebhookTarget(url=hook_url, event_types=("channel_occupied",)),)
    app = App(
        id=APP_ID,
        key=KEY,
        secret=SECRET,
        enable_client_messages=True,
        webhooks=webhooks if hook_url else (),
    )
    settings = dataclasses.replace(ServerSettings(port=port, shutdown_timeout=3.0), **server)
    config = Config(settings, (app,), WebhookSettings(grace_period=0.1, batch_window=0.01))
    path = tmp_path / "kanal.toml"
    path.write_text(node_toml(config))
    return await spawn_kanal(["serve", "--config", str(path), *args], tmp_path / "out.log", port)


async def interrupt(node: NodeProcess) -> str:
    """SIGINT, as Ctrl-C would; the whole output once the process has exited."""
    os.kill(node.pid, signal.SIGINT)
    assert await node.wait(STOP_WITHIN) == 0, node.log()
    return node.log_path.read_text()


@pytest.fixture
async def node_cleanup() -> AsyncIterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        await node.kill()


async def test_a_debug_verbose_run_says_what_happened_and_never_a_secret(
    tmp_path: Path, node_cleanup: list[NodeProcess]
) -> None:
    sent: list[str] = []  # every signature that crossed the wire

    def record_query(query: dict[str, str]) -> None:
        sent.append(query["auth_signature"])

    async with webhook_receiver() as hooks, Clients() as clients:
        node = await start(
            tmp_path,
            "--verbose",
            "--log-level",
            "debug",
            hook_url=hooks.url,
            admin_token=ADMIN_TOKEN,
        )
        node_cleanup.append(node)
        client = await clients.connect(node, key=KEY, secret=SECRET)
        socket_id = client.socket_id
        auth = client.channel_auth("private-orders")
        sent.append(auth.split(":")[1])
        await client.subscribe("private-orders", auth=auth)
        channel_data = json.dumps({"user_id": "u1", "user_info": {"name": "Ann"}})
        auth = client.channel_auth("presence-room", channel_data)
        sent.append(auth.split(":")[1])
        await client.subscribe("presence-room", channel_data=channel_data, auth=auth)
        # Signed, but with another secret: a real signature, refused.
        forged = sign_channel(
            app_key=KEY, app_secret="not-the-secret", socket_id=socket_id, channel="private-x"
        )
        sent.append(forged.split(":")[1])
        await client.send_subscribe("private-x", auth=forged)
        await client.expect("pusher:subscription_error", "private-x")
        user = json.dumps({"id": "u1"})
        signin = sign_signin(app_key=KEY, app_secret=SECRET, socket_id=socket_id, user_data=user)
        bad_signin = sign_signin(
            app_key=KEY, app_secret="not-the-secret", socket_id=socket_id, user_data=user
        )
        sent += [signin.split(":")[1], bad_signin.split(":")[1]]
        await client.send("pusher:signin", {"auth": bad_signin, "user_data": user})
        await client.expect("pusher:error")
        await client.send("pusher:signin", {"auth": signin, "user_data": user})
        await client.expect("pusher:signin_success")
        await client.send("client-typing", {"on": True}, channel="private-orders")
        await client.ping()

        wrong_key = await clients.open(node, key="wrong-key")
        assert await wrong_key.expect_closed() == 4001

        body = {"name": "shipped", "channels": ["private-orders"], "data": "{}"}
        ok = await api_request(
            node, "POST", f"/apps/{APP_ID}/events", body=body, key=KEY, secret=SECRET,
            tamper=record_query,
        )  # fmt: skip
        assert ok.status == 200, ok.body
        await client.expect("shipped", "private-orders")
        bad = await api_request(
            node, "GET", f"/apps/{APP_ID}/channels", key=KEY, secret="not-the-secret",
            tamper=record_query,
        )  # fmt: skip
        assert bad.status == 401
        sdk = pusher.Pusher(
            app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=node.port, ssl=False
        )
        await asyncio.to_thread(sdk.trigger, "private-orders", "from-sdk", {"n": 1})
        await client.expect("from-sdk", "private-orders")
        await poll(lambda: asyncio.sleep(0, hooks.events), bool, what="a webhook")
        await client.close()
        output = await interrupt(node)

    # Never a secret, never a full signature: not the ones we know of, nor any other.
    assert SECRET not in output and ADMIN_TOKEN not in output
    assert sent and hooks.signatures
    for signature in (*sent, *hooks.signatures):
        assert signature not in output
    assert DIGEST.search(output) is None, DIGEST.search(output)

    port = node.port
    expected = [
        f"kanal {kanal.__version__}: node ",  # the start-up summary
        f"app {APP_ID}: key {KEY}, client events on, 1 webhook endpoint(s), origins any",
        f"WebSocket ws://127.0.0.1:{port}/app/<key>, HTTP API http://127.0.0.1:{port}/apps/<id>",
        f"console http://127.0.0.1:{port}/console/",
        f"kanal listening on 127.0.0.1:{port}",
        f"connection {socket_id} opened: app {APP_ID}, from 127.0.0.1",
        f"signature refused: connection {socket_id}, app {APP_ID}, channel private-x: "
        "Invalid signature (401)",
        f"signature refused: connection {socket_id}, app {APP_ID}: Invalid signature\n",
        "refused connection from 127.0.0.1 to /app/wrong-key (origin none): "
        "Application does not exist (4001)",
        f"API POST /apps/{APP_ID}/events from 127.0.0.1: 200",
        f"refused API call GET /apps/{APP_ID}/channels from 127.0.0.1: Invalid signature (401)",
        f"{socket_id} in    {{",  # a traced frame in
        f"{socket_id} out   {{",  # and out
        f"connection {socket_id} closed: app {APP_ID}, code 1000",
        "shutdown: SIGINT received",
        "shutdown: /ready answers 503; closing 0 connections with 4200 (reconnect)",
        "shutdown: waiting up to 3 s for connections and requests to end",
        "shutdown: webhooks: delivering what is queued (up to 5 s)",
        "shutdown: done in ",
    ]
    missing = [line for line in expected if line not in output]
    assert not missing, f"missing {missing} in:\n{output}"
    info = [line for line in output.splitlines() if " INFO " in line]
    assert any("signature refused" in line for line in info)  # refusals are INFO
    assert any("refused connection from" in line for line in info)


async def test_json_lines(tmp_path: Path, node_cleanup: list[NodeProcess]) -> None:
    node = await start(tmp_path, "--log-format", "json", "--log-level", "debug")
    node_cleanup.append(node)
    async with Clients() as clients:
        client = await clients.connect(node, key=KEY, secret=SECRET)
        await client.close()
    output = await interrupt(node)
    entries = [json.loads(line) for line in output.splitlines()]  # every line is one object
    assert all({"ts", "level", "logger", "message", "pid"} <= set(e) for e in entries)
    opened = [e for e in entries if e["message"].startswith(f"connection {client.socket_id} op")]
    assert opened and opened[0]["socket_id"] == client.socket_id
    assert opened[0]["app_id"] == APP_ID and opened[0]["level"] == "DEBUG"
    assert opened[0]["logger"] == "kanal.hub"
    assert any(e["message"].startswith("kanal listening on ") for e in entries)
    assert entries[-1]["message"].startswith("shutdown: done in ")
