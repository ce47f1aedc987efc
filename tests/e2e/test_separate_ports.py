"""pusher-js on a separate WebSocket port of a ``kanal serve`` process, events triggered by the
official Python SDK on the HTTP API's port (``--websocket-port``; docs/deployment.md,
"Separate listeners"). The Slanger layout (``--api-port``) with the SDK is in
tests/test_operator_process.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pusher

from tests.cluster_nodes import free_port, spawn_kanal
from tests.conftest import APP_ID, APP_KEY, APP_SECRET

from .jsclient import JsDriver


async def test_pusher_js_on_the_websocket_port_gets_sdk_triggers(
    js: JsDriver, tmp_path: Path
) -> None:
    api_port, ws_port = free_port(), free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(api_port)]
    node = await spawn_kanal([*args, "--websocket-port", str(ws_port)], tmp_path / "log", api_port)
    try:
        await js.connect("c1", key=APP_KEY, port=ws_port, secret=APP_SECRET)
        await js.subscribe("c1", "private-orders")
        sdk = pusher.Pusher(
            app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=api_port,
            ssl=False,
        )  # fmt: skip
        await asyncio.to_thread(sdk.trigger, "private-orders", "shipped", {"id": 42})
        event = await js.wait_for(client="c1", type="event", event="shipped")
        assert (event["channel"], event["data"]) == ("private-orders", {"id": 42})
        info = await asyncio.to_thread(sdk.channels_info, "private-")
        assert info == {"channels": {"private-orders": {}}}
    finally:
        await node.kill()
