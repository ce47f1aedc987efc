"""The eight scenarios (``http`` is in :mod:`bench.httpcases`). Each runs against one server
and yields ``(case, Run)`` per run.

Sizes come from :class:`Sizes`: :meth:`Sizes.full` is the benchmark as documented in
docs/performance.md, :meth:`Sizes.tiny` is the smoke test's (a few subscribers, short windows).
Connections are opened once per case and reused by its runs, except where the connecting itself
or a fresh process is what is measured (idle memory, connect storm), which start a new server
for every run.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from bench.httpcases import http
from bench.measure import (
    Ctx,
    Run,
    Window,
    broadcast_runs,
    connect,
    drain,
    failures,
    publish_and_count,
    settle,
)
from bench.servers import ServerProc

__all__ = ["SCENARIOS", "UNSUPPORTED", "Sizes"]

GIB = 1024**3
Results = Iterator[tuple[str, Run]]


@dataclass(frozen=True)
class Sizes:
    fanout: tuple[int, ...] = (1000, 5000)
    fanout_publishers: int = 16
    #: (subscribers, events/s) per latency case
    latency_cases: tuple[tuple[int, float], ...] = ((1000, 20.0), (1000, 100.0), (5000, 20.0))
    latency_duration: float = 10.0
    many_channels: int = 5000
    many_channels_publishers: int = 8
    idle: tuple[int, ...] = (5000, 18000)
    http_subscribers: int = 1000
    http_publishers: int = 16
    storm: int = 5000
    storm_in_flight: int = 1000  # handshakes in flight over all generator processes
    coalesce_subscribers: int = 1000
    coalesce_publishers: tuple[int, ...] = (1, 4, 32)
    xhr_subscribers: int = 1000
    xhr_publishers: int = 16
    event_bytes: int = 200

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            fanout=(5,),
            latency_cases=((5, 20.0), (10, 20.0)),
            latency_duration=0.5,
            many_channels=5,
            idle=(5,),
            http_subscribers=5,
            storm=5,
            coalesce_subscribers=5,
            coalesce_publishers=(1, 4),
            xhr_subscribers=5,
        )


def _fanout(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    for subs in sizes.fanout:
        case = f"{subs} subscribers"
        setup = connect(ctx, server, subs, "public:bench")
        for run in broadcast_runs(
            ctx, server, setup, subs, sizes.fanout_publishers, sizes.event_bytes
        ):
            yield case, run
        ctx.gen.broadcast("close")


def _latency_run(ctx: Ctx, server: ServerProc, sizes: Sizes, subs: int, rate: float) -> Run:
    ctx.gen.broadcast("reset", latency=True)
    window = Window(ctx, server)
    [pub] = ctx.gen.call(
        [ctx.gen.publisher],
        "publish",
        [
            {
                "target": asdict(server.target),
                "mode": "paced",
                "channels": [["bench"]],
                "size": sizes.event_bytes,
                "concurrency": 8,
                "duration": sizes.latency_duration,
                "rate": rate,
            }
        ],
    )
    expected = pub["ok"] * subs
    _, last_rx, closed = drain(ctx, expected, quiet=2.0)
    kernel, user = array("q"), array("q")  # ns, one per (event, subscriber)
    unstamped = merged = clock_step = 0
    for stats in ctx.gen.broadcast("stats", latencies=True):
        kernel.frombytes(stats.get("latencies", b""))
        user.frombytes(stats.get("user_latencies", b""))
        unstamped += stats.get("unstamped", 0)
        merged += stats.get("merged", 0)
        clock_step = max(clock_step, abs(stats.get("clock_step_ns", 0)))
    ordered, user_ordered = sorted(kernel), sorted(user)
    active = (max(last_rx, pub["finished"]) - pub["started"]) / 1e9

    def pct(values: list[int], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] / 1e6 if values else 0.0

    run = Run(
        {
            # by the kernel's arrival stamp (SO_TIMESTAMPNS): the primary figures
            "p50_ms": pct(ordered, 0.50),
            "p99_ms": pct(ordered, 0.99),
            "max_ms": ordered[-1] / 1e6 if ordered else 0.0,
            # by the time the generator handled the frame: includes its own queueing
            "p50_user_ms": pct(user_ordered, 0.50),
            "p99_user_ms": pct(user_ordered, 0.99),
            "max_user_ms": user_ordered[-1] / 1e6 if user_ordered else 0.0,
            "delivered_ratio": len(ordered) / expected if expected else 0.0,
            "achieved_rate": pub["ok"] / sizes.latency_duration,
            "merged_ratio": merged / len(ordered) if ordered else 0.0,
            "unstamped_reads": unstamped,
            "clock_step_us": clock_step / 1e3,
        }
    )
    window.close(run, active)
    if len(ordered) != expected:
        run.notes.append(f"delivered {len(ordered)} of {expected} expected events")
    if pub["errors"]:
        run.notes.append(f"{pub['errors']} triggers failed: {pub['statuses']}")
    if closed:
        run.notes.append(f"{closed} subscribers were disconnected")
    if clock_step > 1_000_000:
        run.notes.append(f"CLOCK_REALTIME stepped by {clock_step / 1e6:.1f} ms during the run")
    return run


def _latency(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    for subs in dict.fromkeys(subs for subs, _ in sizes.latency_cases):
        # Kernel-stamped subscribers: receipt = arrival on the socket, not the generator's turn.
        setup = connect(ctx, server, subs, "public:bench", kstamp=True)
        for rate in (rate for n, rate in sizes.latency_cases if n == subs):
            for _ in range(ctx.runs):
                settle(ctx, server)
                run = _latency_run(ctx, server, sizes, subs, rate)
                run.notes[:0] = failures(setup)
                yield f"{subs} subs x {rate:g} ev/s", run
        ctx.gen.broadcast("close")


def _many_channels(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    count = sizes.many_channels
    setup = connect(ctx, server, count, "private+presence")
    setup.metrics["settle_seconds"] = settle(ctx, server)  # member_added storm: n^2/2 frames
    case = f"{count} private + 1 presence"
    channels = [[f"private-bench-{i}"] for i in range(count)]
    yield (
        case,
        Run(
            {k: setup.metrics[k] for k in ("connect_seconds", "settle_seconds")}, list(setup.notes)
        ),
    )
    for _ in range(ctx.runs):
        settle(ctx, server)
        run = publish_and_count(
            ctx,
            server,
            channels,
            subscribers_per_trigger=1,
            concurrency=sizes.many_channels_publishers,
            size=sizes.event_bytes,
        )
        run.notes[:0] = failures(setup)
        yield case, run
    ctx.gen.broadcast("close")


def _idle(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    first = True
    for count in sizes.idle:
        for _ in range(ctx.runs):
            if not first:  # a fresh process for every run: RSS never shrinks back
                server.stop()
                server = ctx.start(server.name)
            first = False
            settle(ctx, server)
            before = server.rss_bytes()
            setup = connect(ctx, server, count, "public:bench")
            settle(ctx, server)
            time.sleep(1.0)
            after = server.rss_bytes()
            per_conn = (after - before) / count
            run = Run(
                {
                    "rss_before_mib": before / 2**20,
                    "rss_after_mib": after / 2**20,
                    "bytes_per_connection": per_conn,
                    "connections_in_2gib": (2 * GIB - before) / per_conn if per_conn > 0 else 0.0,
                },
                failures(setup),  # RSS does not depend on CPU contention
            )
            yield f"{count} connections", run
            ctx.gen.broadcast("close")
    server.stop()


def _storm(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    for index in range(ctx.runs):
        if index:
            server.stop()
            server = ctx.start(server.name)
        settle(ctx, server)
        yield (
            f"{sizes.storm} clients",
            connect(
                ctx,
                server,
                sizes.storm,
                "public:bench",
                concurrency=max(1, sizes.storm_in_flight // len(ctx.gen.subscribers)),
            ),
        )
        ctx.gen.broadcast("close")
    server.stop()


def _coalescing(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    subs = sizes.coalesce_subscribers
    setup = connect(ctx, server, subs, "public:bench")
    for publishers in sizes.coalesce_publishers:
        for run in broadcast_runs(ctx, server, setup, subs, publishers, sizes.event_bytes):
            yield f"{subs} subs, {publishers} publishers", run
    ctx.gen.broadcast("close")


def _xhr_streaming(ctx: Ctx, sizes: Sizes, server: ServerProc) -> Results:
    """The same fan-out to subscribers over WebSocket, then over HTTP streaming sessions
    (pusher-js's xhr_streaming fallback, docs/http-fallback.md): connections held, events
    delivered per second. Servers without the HTTP transports run the WebSocket case only."""
    subs = sizes.xhr_subscribers
    transports = ("ws", "xhr_streaming") if server.name.startswith("kanal") else ("ws",)
    for transport in transports:
        setup = connect(ctx, server, subs, "public:bench", transport=transport)
        for run in broadcast_runs(
            ctx, server, setup, subs, sizes.xhr_publishers, sizes.event_bytes
        ):
            run.metrics["connections_held"] = sum(
                stats["open"] for stats in ctx.gen.broadcast("stats", latencies=False)
            )
            run.metrics["connect_seconds"] = setup.metrics["connect_seconds"]
            yield f"{subs} subscribers over {transport}", run
        ctx.gen.broadcast("close")


Scenario = Callable[[Ctx, Sizes, ServerProc], Results]
#: name -> (function, one-line description); the order is the run order.
SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "fanout": (_fanout, "one channel, 200-byte events triggered back to back"),
    "latency": (_latency, "POST /events to receipt at every subscriber, paced triggers"),
    "many-channels": (_many_channels, "each connection on its own private channel + 1 presence"),
    "idle-memory": (_idle, "server RSS delta per subscribed idle connection"),
    "http": (http, "trigger requests/s: httpgen without subscribers; 1,000 subscribers"),
    "connect-storm": (_storm, "time for N clients to connect and subscribe, fresh server"),
    "coalescing": (_coalescing, "fan-out to 1,000 with 1 / 4 / 32 concurrent publishers"),
    "xhr-streaming": (_xhr_streaming, "fan-out to 1,000 over WebSocket vs HTTP streaming"),
}

#: (scenario, server) -> why that server does not run it; reported as skipped, not failed.
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("many-channels", "floor"): "the floor server checks no channel auth and keeps no presence "
    "members, which is what this scenario measures",
    ("xhr-streaming", "floor"): "the floor server speaks WebSocket only",
}
