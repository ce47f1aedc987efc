"""The Node server SDK (npm ``pusher`` 5.3.4) against kanal, observed by pusher-js.

A small ``node -e`` script runs the SDK calls and prints each response; the Node SDK signs
differently from the Python one (compact JSON bodies, no ``body_md5`` on GET, the
``/apps/{id}/users/{id}/terminate_connections`` path), so this checks kanal accepts both."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer

from .helpers import assert_gave_up, closes, connect, events, roundtrip
from .jsclient import REPO_ROOT, JsDriver

# argv[1]: {"port", "calls": [[method, ...args]]}; prints [{status, body}] (one per call).
NODE_SCRIPT = r"""
const Pusher = require('pusher');
const cfg = JSON.parse(process.argv[1]);
const pusher = new Pusher({ appId: cfg.appId, key: cfg.key, secret: cfg.secret,
  host: '127.0.0.1', port: cfg.port, useTLS: false });
(async () => {
  const out = [];
  for (const [method, ...args] of cfg.calls) {
    try {
      const res = await pusher[method](...args);
      out.push({ status: res.status, body: await res.text() });
    } catch (err) {
      out.push({ status: err.status || null, body: String(err.body || err.message) });
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


async def node_sdk(
    server: RunningServer, *calls: list[Any], secret: str = APP_SECRET
) -> list[dict[str, Any]]:
    """Run ``calls`` ([method, *args]) in order with the Node SDK signing with ``secret``;
    returns their responses."""
    cfg = {"appId": APP_ID, "key": APP_KEY, "secret": secret, "port": server.port}
    cfg["calls"] = list(calls)
    proc = await asyncio.create_subprocess_exec(
        "node", "-e", NODE_SCRIPT, json.dumps(cfg), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 0, err.decode()
    result: list[dict[str, Any]] = json.loads(out)
    assert len(result) == len(calls), result
    return result


async def test_node_sdk_trigger(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §2.5 (Node column), §3, §5.1, §8, users.md §3, §5: the Node SDK's
    trigger (with ``info`` and ``socket_id``), a GET without body_md5, sendToUser and
    terminateUserConnections all work; pusher-js receives the compact-JSON data."""
    a_id = await connect(js, kanal_server, "a")
    await connect(js, kanal_server, "b")
    for client, user in (("a", "alice"), ("b", "bob")):
        await js.signin(client, {"id": user})
        await js.subscribe(client, "presence-room", presence={"user_id": user, "user_info": 0})
        await js.subscribe(client, "news")

    since = js.mark()
    trig, excl, listing, to_user = await node_sdk(
        kanal_server,
        ["trigger", ["news", "presence-room"], "from-node", {"hello": "node"},
         {"info": "user_count,subscription_count"}],
        ["trigger", "news", "not-for-a", "x", {"socket_id": a_id}],
        ["get", {"path": "/channels", "params": {"filter_by_prefix": "presence-",
                                                 "info": "user_count"}}],
        ["sendToUser", "bob", "dm", {"from": "node"}],
    )  # fmt: skip
    assert trig["status"] == 200, trig
    assert json.loads(trig["body"]) == {
        "channels": {
            "news": {"subscription_count": 2},
            "presence-room": {"user_count": 2, "subscription_count": 2},
        }
    }
    assert excl["status"] == 200, excl
    assert listing["status"] == 200, listing
    assert json.loads(listing["body"]) == {"channels": {"presence-room": {"user_count": 2}}}
    assert to_user["status"] == 200, to_user

    for client in ("a", "b"):
        for channel in ("news", "presence-room"):
            got = await js.wait_for(
                client=client, type="event", event="from-node", channel=channel, since=since
            )
            assert got["data"] == {"hello": "node"}
    dm = await js.wait_for(client="b", type="user_event", event="dm", since=since)
    assert dm["data"] == {"from": "node"}
    await js.wait_for(client="b", type="event", event="not-for-a", since=since)
    await roundtrip(js, "a")
    assert not events(js, "a", "not-for-a")

    since = js.mark()
    [term] = await node_sdk(kanal_server, ["terminateUserConnections", "bob"])
    assert term["status"] == 200 and json.loads(term["body"]) == {}, term
    close = await js.wait_for(client="b", type="socket", event="close", since=since)
    assert close["code"] == 4009
    await assert_gave_up(js, "b", since=since)
    await roundtrip(js, "a")
    assert not closes(js, "a")
