"""How long pusher-js itself waits before reconnecting, by the close code the server sends:
the measurement behind the drain's choice of 4200 (docs/deployment.md, "Stopping a node").

pusher-js (``getCloseAction`` in its core/connection/protocol/protocol.ts) maps 4000-4099 to
"refused" (it gives up), 4100-4199 to "backoff" (``retryIn(1000)``), 4200-4299 to "retry"
(``retryIn(0)``) and every code under 4000 but 1002-1004 to nothing, after which the generic
"closed while connected" path retries in 1 s. The test closes a real pusher-js client with
each candidate code, reads the driver's clock at the close and at the next socket, and checks
that pusher-js does what its source says. Run with ``-s`` to see the table of delays.
"""

from __future__ import annotations

import statistics

import pytest

from tests.conftest import RunningServer

from .helpers import assert_gave_up, connect
from .jsclient import JsDriver

# The drain is a feature of kanal's own transport (an ASGI server closes its sockets itself).
TRANSPORT = "serve"

IMMEDIATE = (4200, 4201, 4299)  # "retry"
ONE_SECOND = (4100, 4199, 1000, 1001, 1012, 1006)  # "backoff", or the generic closed path
REFUSED = (4001, 4009)  # "refused": pusher-js gives up


@pytest.fixture
def transport() -> str:
    return TRANSPORT


async def nothing() -> None:
    return None


def close_with(js: JsDriver, server: RunningServer, code: int) -> None:
    """Close client c's connection (a WebSocket or an HTTP session) as kanal would with
    ``code``: a 4xxx close is a ``pusher:error`` then a Close, as the drain sends it; 1006 is
    no Close at all (the socket dropped, or the HTTP stream or poll ended without c[...])."""
    socket_id = js.records(client="c", type="connected")[-1]["socket_id"]
    [conn] = [c for c in server.server.listener.open_connections() if c.socket_id == socket_id]
    if code == 1006:
        conn.abort()
    elif code >= 4000:
        conn.hand_over(code, "measuring pusher-js", nothing)
    else:
        conn.close(code, "measuring pusher-js")


async def reconnect_delay(js: JsDriver, server: RunningServer, code: int) -> tuple[float, float]:
    """Seconds from the close (as pusher-js saw it) to its next socket, and to ``connected``."""
    since = js.mark()
    close_with(js, server, code)
    closed = await js.wait_for(client="c", type="socket", event="close", since=since)
    # pusher-js's WebSocket in Node (faye-websocket) knows no 1012 and fails the connection
    # with 1002 instead ("backoff"); a browser reports 1012 (the generic path): 1 s either way.
    # Over HTTP the code is c[...]'s, as sent.
    assert closed["code"] == (1002 if code == 1012 and js.transport == "ws" else code)
    created = await js.wait_for(client="c", type="socket", event="created", since=since, timeout=5)
    connected = await js.wait_for(
        client="c", type="state", current="connected", since=created["seq"], timeout=5
    )
    await js.wait_for(client="c", type="connected", since=created["seq"])  # its socket_id
    return (created["at"] - closed["at"]) / 1000, (connected["at"] - closed["at"]) / 1000


async def test_pusher_js_reconnect_delay_by_close_code(
    js: JsDriver, kanal_server: RunningServer, client_transport: str
) -> None:
    await connect(js, kanal_server, "c")
    table: dict[int, list[float]] = {}
    # pusher-js gives xhr_streaming two "lives" (default_strategy.ts): a second unclean close
    # soon after opening marks it dead, and with no other transport enabled it fails.
    drops = 1 if client_transport == "xhr_streaming" else 2
    one_second = ((c, drops if c == 1006 else 2) for c in ONE_SECOND)
    for code, trials in [*((c, 5) for c in IMMEDIATE), *one_second]:
        for _ in range(trials):
            to_socket, to_connected = await reconnect_delay(js, kanal_server, code)
            table.setdefault(code, []).append(to_socket)
            assert to_connected >= to_socket
    print("\npusher-js reconnect delay (close -> next socket), ms:")
    for code, delays in table.items():
        each = " ".join(f"{d * 1000:.1f}" for d in delays)
        print(f"  {code}: median {statistics.median(delays) * 1000:.1f} ({each})")
    for code in IMMEDIATE:
        assert max(table[code]) < 0.25, (code, table[code])  # retryIn(0), plus a loaded host
    for code in ONE_SECOND:
        assert all(0.95 <= d < 1.6 for d in table[code]), (code, table[code])  # retryIn(1000)

    for code in REFUSED:
        since = js.mark()
        close_with(js, kanal_server, code)
        await assert_gave_up(js, "c", since=since)
        print(f"  {code}: no reconnect (pusher-js disconnected)")
        await js.command("reconnect", client="c")
        await js.wait_for(client="c", type="connected", since=since)
