"""Measurement primitives shared by the scenarios: windows, connect, settle, publish-and-count.

Every measured :class:`Window` samples, at both ends, the server's CPU time, the generator's
own CPU time (all its processes, including this orchestrator) and the CPU time of every other
process on the machine. A run is *invalid* when

* the generator used more than ``saturation`` of the cores it may use (it may then be the
  bottleneck, not the server),
* other processes used more than ``max_foreign`` cores meanwhile (a shared machine: the
  numbers would measure the neighbours),
* a subscriber was disconnected, a trigger failed or fewer events arrived than expected.

The reasons are kept as notes next to the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.procstat import all_processes_cpu, foreign_cpu, listen_overflows, total_cpu_seconds
from bench.servers import ServerProc
from bench.worker import Generator

__all__ = [
    "Ctx",
    "Run",
    "Window",
    "broadcast_runs",
    "connect",
    "drain",
    "failures",
    "publish_and_count",
    "settle",
    "split",
]

#: CPU times tick at 10 ms: shorter windows are too coarse to judge saturation or contention.
MIN_JUDGED_WINDOW = 0.5


@dataclass
class Ctx:
    """Everything a scenario needs: the generator, a way to start servers, sizes, policy."""

    gen: Generator
    start: Callable[[str], ServerProc]
    runs: int
    duration: float
    gen_cores: int
    gen_cpu: int | None = None  # the generator's CPU when pinned (httpgen runs there too)
    saturation: float = 0.9
    max_foreign: float = 0.1
    connect_concurrency: int = 25  # handshakes in flight per generator process (set-up)
    connect_timeout: float = 60.0
    wait_quiet: float = 0.0  # seconds to wait for other processes to go idle before a run
    log: Callable[[str], None] = print


@dataclass
class Run:
    """One run's metrics (name -> value) and why it does not count (empty: valid)."""

    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.notes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"valid": self.valid}


class Window:
    """CPU accounting of server, generator and everybody else over one measured interval."""

    def __init__(self, ctx: Ctx, server: ServerProc) -> None:
        self.ctx, self.server = ctx, server
        self.ours = {*server.pids, *ctx.gen.pids}
        self.others = all_processes_cpu()
        self.server0 = server.cpu_seconds()
        self.gen0 = total_cpu_seconds(ctx.gen.pids)
        self.wall0 = time.monotonic()

    def close(self, run: Run, seconds: float, generator_extra_s: float = 0.0) -> None:
        """Add server/generator/foreign CPU (in cores) over ``seconds`` and judge the run.

        ``generator_extra_s``: CPU seconds of a generator process started inside the window
        (httpgen, which reports its own); it is part of the generator, not foreign.
        """
        ctx, server = self.ctx, self.server
        server_s = server.cpu_seconds() - self.server0
        gen_s = total_cpu_seconds(ctx.gen.pids) - self.gen0 + generator_extra_s
        foreign_s = foreign_cpu(self.others, all_processes_cpu(), self.ours)
        seconds = max(seconds, 1e-9)
        run.metrics["server_cpu"] = server_s / seconds
        run.metrics["generator_cpu"] = gen = gen_s / seconds
        wall = max(time.monotonic() - self.wall0, 1e-9)  # others are busy in the idle tail too
        run.metrics["foreign_cpu"] = foreign = foreign_s / wall
        if seconds < MIN_JUDGED_WINDOW:
            return
        if gen > ctx.saturation * ctx.gen_cores:
            run.notes.append(
                f"generator saturated: {gen:.0%} of {ctx.gen_cores} core(s) > {ctx.saturation:.0%}"
            )
        if foreign > ctx.max_foreign:
            run.notes.append(f"machine busy: other processes used {foreign:.2f} cores")


def failures(setup: Run) -> list[str]:
    """A set-up's notes that also void the runs measured on its connections."""
    return [n for n in setup.notes if not n.startswith(("generator saturated", "machine busy"))]


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def connect(
    ctx: Ctx,
    server: ServerProc,
    count: int,
    plan: str,
    concurrency: int | None = None,
    *,
    kstamp: bool = False,
    transport: str = "ws",
) -> Run:
    """Open ``count`` subscribed connections spread over the generator; times the whole storm.

    ``kstamp``: kernel-stamped raw-socket subscribers (:mod:`bench.stampclient`) instead of
    picows, for latency measurements. ``transport="xhr_streaming"``: HTTP streaming sessions
    (:mod:`bench.xhrclient`) instead of WebSocket connections.
    """
    shares = split(count, len(ctx.gen.subscribers))
    args = [
        {
            "target": asdict(server.target),
            "plan": plan,
            "first": sum(shares[:i]),
            "count": share,
            "concurrency": concurrency or ctx.connect_concurrency,
            "wait_s": ctx.connect_timeout,
            "kstamp": kstamp,
            "transport": transport,
        }
        for i, share in enumerate(shares)
    ]
    window = Window(ctx, server)
    overflows = listen_overflows()
    replies = ctx.gen.call(ctx.gen.subscribers, "connect", args)
    seconds = (max(r["finished"] for r in replies) - min(r["started"] for r in replies)) / 1e9
    run = Run(
        {
            "connect_seconds": seconds,
            "connects_per_s": count / max(seconds, 1e-9),
            # SYNs dropped for a full accept queue (machine-wide): each costs a 1 s+ retry.
            "listen_overflows": listen_overflows() - overflows,
        }
    )
    window.close(run, seconds)
    failed = sum(r["failed"] for r in replies)
    if failed:
        errors = [e for r in replies for e in r["errors"]][:3]
        run.notes.append(f"{failed} of {count} connections failed: {errors}")
    return run


def wait_quiet(ctx: Ctx, server: ServerProc) -> None:
    """Up to ``ctx.wait_quiet`` s: wait for other processes to use under ``max_foreign`` cores."""
    deadline = time.monotonic() + ctx.wait_quiet
    ours = {*server.pids, *ctx.gen.pids}
    while time.monotonic() < deadline:
        before = all_processes_cpu()
        time.sleep(1.0)
        busy = foreign_cpu(before, all_processes_cpu(), ours)
        if busy <= ctx.max_foreign / 2:
            return
        ctx.log(f"  waiting for a quiet machine: other processes use {busy:.2f} cores")


def settle(ctx: Ctx, server: ServerProc, idle: float = 0.05, timeout: float = 120.0) -> float:
    """Wait until the server is (nearly) idle, e.g. after a presence join storm; returns seconds.

    Then, if ``--wait-quiet`` was given, until the rest of the machine is idle as well.
    """
    start = time.monotonic()
    before = server.cpu_seconds()
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = server.cpu_seconds()
        if now - before <= idle * 0.5:
            break
        before = now
    settled = time.monotonic() - start
    wait_quiet(ctx, server)
    return settled


def drain(ctx: Ctx, expected: int, quiet: float = 1.0, limit: float = 30.0) -> tuple[int, int, int]:
    """Poll until ``expected`` events arrived or none arrived for ``quiet`` seconds.

    Returns (delivered benchmark events, newest receipt in monotonic ns, disconnections).
    """
    last, since = -1, time.monotonic()
    deadline = since + limit
    while True:
        stats = ctx.gen.broadcast("stats", latencies=False)
        frames = sum(s["frames"] for s in stats)
        result = (frames, max(s["last_rx"] for s in stats), sum(s["closed"] for s in stats))
        now = time.monotonic()
        if frames >= expected or now > deadline:
            return result
        if frames != last:
            last, since = frames, now
        elif now - since > quiet:
            return result
        time.sleep(0.05)


def broadcast_runs(
    ctx: Ctx, server: ServerProc, setup: Run, subscribers: int, publishers: int, size: int
) -> Iterator[Run]:
    """``ctx.runs`` fan-out windows to the ``subscribers`` that ``setup`` connected to
    ``bench``, each once the server has settled, with ``setup``'s failures in its notes."""
    for _ in range(ctx.runs):
        settle(ctx, server)
        run = publish_and_count(
            ctx,
            server,
            [["bench"]],
            subscribers_per_trigger=subscribers,
            concurrency=publishers,
            size=size,
        )
        run.notes[:0] = failures(setup)
        yield run


def publish_and_count(
    ctx: Ctx,
    server: ServerProc,
    channels: list[list[str]],
    *,
    subscribers_per_trigger: int,
    concurrency: int,
    size: int = 200,
) -> Run:
    """Trigger back to back with ``concurrency`` publishers; count what every subscriber got."""
    ctx.gen.broadcast("reset", latency=False)
    window = Window(ctx, server)
    request = {
        "target": asdict(server.target),
        "mode": "closed",
        "channels": channels,
        "size": size,
        "concurrency": concurrency,
        "duration": ctx.duration,
    }
    [pub] = ctx.gen.call([ctx.gen.publisher], "publish", [request])
    expected = pub["ok"] * subscribers_per_trigger
    frames, last_rx, closed = drain(ctx, expected)
    publish_s = (pub["finished"] - pub["started"]) / 1e9
    active = (max(last_rx, pub["finished"]) - pub["started"]) / 1e9
    run = Run(
        {
            "triggers_per_s": pub["ok"] / publish_s,
            "deliveries_per_s": frames / active,
            "delivered_ratio": frames / expected if expected else 1.0,
            "http_reconnects": pub["reconnects"],
        }
    )
    window.close(run, active)
    run.metrics["deliveries_per_cpu_s"] = frames / max(run.metrics["server_cpu"] * active, 1e-9)
    if pub["errors"]:
        run.notes.append(f"{pub['errors']} of {pub['sent']} triggers failed: {pub['statuses']}")
    if frames < expected:
        run.notes.append(f"delivered {frames} of {expected} expected events")
    if closed:
        run.notes.append(f"{closed} subscribers were disconnected")
    return run
