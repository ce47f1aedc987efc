"""The ``http`` scenario: how many trigger requests a server answers per second.

The requests without subscribers are sent by httpgen (bench/native/httpgen.c, one epoll thread
in C on the generator's core), which costs a few microseconds per request where a Python client
costs tens, so the generator stays far from saturation for every server. Its cases:

* ``no subscribers, keep-alive``: ``POST /events`` to a channel nobody is on, over connections
  that are kept alive, as the Pusher SDKs' sessions (Python's requests session, Node's agent)
  keep theirs;
* ``no subscribers, reconnect per request``: the same with a new TCP connection per request;
* ``batch_events of 10``: ``POST /batch_events`` with 10 events (Pusher's limit per batch);
* ``10 channels``: one ``POST /events`` to 10 channels.

Each request is signed once per run by the Python side (as the SDKs sign theirs; Pusher's
HTTP API accepts the same request again while its timestamp is within 600 s). Before each case
the same bytes are sent once from Python and the answer is checked: soketi answers some
rejections with status 200 and an error body, and a rejected request would measure nothing.

``N subscribers`` keeps the older form: the Python publisher (bench/httpclient.py) triggers to a
channel with N subscribers in the generator's processes, which count every delivery.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from bench.measure import Ctx, Run, Window, broadcast_runs, connect, settle
from bench.native import HttpLoad, run_httpgen
from bench.protocol import Target, batch_request, event_data, trigger_request
from bench.servers import ServerProc

if TYPE_CHECKING:
    from bench.scenarios import Sizes

__all__ = ["accepted", "http"]

NOBODY = "bench-nobody"
BATCH = 10  # events per batch_events request, the most Pusher's HTTP API allows
FAN = 10  # channels of one trigger


@dataclass(frozen=True)
class _Case:
    name: str
    request: bytes
    reconnect: bool = False


def _cases(target: Target, data: str) -> list[_Case]:
    channels = [f"{NOBODY}-{i}" for i in range(max(BATCH, FAN))]
    return [
        _Case("no subscribers, keep-alive", trigger_request(target, [NOBODY], data)),
        _Case(
            "no subscribers, reconnect per request",
            trigger_request(target, [NOBODY], data, close=True),
            reconnect=True,
        ),
        _Case(
            f"batch_events of {BATCH}, keep-alive",
            batch_request(target, [(channel, data) for channel in channels[:BATCH]]),
        ),
        _Case(f"{FAN} channels, keep-alive", trigger_request(target, channels[:FAN], data)),
    ]


def accepted(target: Target, request: bytes) -> str:
    """Send ``request`` once; "" when the answer is 2xx with a JSON body that is not an
    error, else the answer (what a run of this request would measure)."""
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while b"\r\n\r\n" not in raw and (chunk := sock.recv(65536)):
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next((int(h[15:]) for h in lines if h.startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    answer = f"{head[:12].decode(errors='replace')} {body[:200].decode(errors='replace')}"
    if not head.startswith(b"HTTP/1.1 2"):
        return answer
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return answer
    return answer if not isinstance(parsed, dict) or "error" in parsed else ""


def _httpgen_run(ctx: Ctx, server: ServerProc, case: _Case, connections: int) -> Run:
    target = server.target
    window = Window(ctx, server)
    load = HttpLoad(
        target.host, target.port, case.request, connections, ctx.duration, case.reconnect
    )
    out = run_httpgen(load, ctx.gen_cpu)
    seconds = max((out["finished_ns"] - out["started_ns"]) / 1e9, 1e-9)
    run = Run(
        {
            "triggers_per_s": out["ok"] / seconds,
            "http_reconnects": out["reconnects"],
            "http_errors": out["non2xx"] + out["errors"],
        }
    )
    window.close(run, seconds, generator_extra_s=out["cpu_seconds"])
    if out["non2xx"]:
        run.notes.append(f"{out['non2xx']} of {out['sent']} requests not 2xx: {out['statuses']}")
    if out["errors"]:
        run.notes.append(f"{out['errors']} requests failed (connection closed or refused)")
    if not out["ok"]:
        run.notes.append("no request was answered 2xx")
    return run


def http(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Iterator[tuple[str, Run]]:
    for case in _cases(server.target, event_data(sizes.event_bytes)):
        rejected = accepted(server.target, case.request)
        for _ in range(ctx.runs):
            settle(ctx, server)
            run = _httpgen_run(ctx, server, case, sizes.http_publishers)
            if rejected:
                run.notes.insert(0, f"the server does not accept the request: {rejected}")
            yield case.name, run
    subs = sizes.http_subscribers
    setup = connect(ctx, server, subs, "public:bench")
    for run in broadcast_runs(ctx, server, setup, subs, sizes.http_publishers, sizes.event_bytes):
        yield f"{subs} subscribers", run
    ctx.gen.broadcast("close")
