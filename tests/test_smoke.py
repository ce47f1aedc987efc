from __future__ import annotations

import aiohttp
import orjson

from tests.conftest import RunningServer


async def test_connect_subscribe_and_trigger(kanal_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(kanal_server.ws_url()) as ws:
        hello = orjson.loads(await ws.receive_str())
        assert hello["event"] == "pusher:connection_established"
        await ws.send_str('{"event":"pusher:subscribe","data":{"channel":"news"}}')
        ok = orjson.loads(await ws.receive_str())
        assert ok["event"] == "pusher_internal:subscription_succeeded"
