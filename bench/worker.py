"""Load-generator processes and the orchestrator's handle on them.

The generator is several OS processes (``multiprocessing`` spawn context), each running its
own uvloop event loop and holding a share of the WebSocket subscribers, plus one publisher
process that drives the HTTP API. The orchestrator talks to them over pipes with small
commands (:meth:`Generator.call`); every command runs to completion in the worker and answers
one dict. Each process has its own open-file limit, so 18,000 sockets spread over 4 workers
stay far below it.

Commands: ``connect`` (open and subscribe ``count`` connections; ``kstamp`` selects the
kernel-stamped transport of :mod:`bench.stampclient`), ``reset`` (zero the delivery counters,
optionally record latencies, resample the real-time/monotonic clock offset), ``stats``,
``close`` (drop all connections), ``publish`` (publisher only) and ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from bench import httpclient
from bench.protocol import Target, event_data, trigger_request
from bench.stampclient import realtime_offset
from bench.wsclient import Closer, Stats, Subscriber, connect
from bench.xhrclient import close_pool, connect_xhr

__all__ = ["Generator", "channels_for"]

PRESENCE_CHANNEL = "presence-bench"


def channels_for(plan: str, index: int) -> list[tuple[str, str]]:
    """The channels connection ``index`` subscribes to under ``plan``."""
    if plan == "private+presence":
        member = f'{{"user_id":"u{index}"}}'
        return [(f"private-bench-{index}", ""), (PRESENCE_CHANNEL, member)]
    if plan.startswith("public:"):
        return [(plan.removeprefix("public:"), "")]
    raise ValueError(f"unknown channel plan {plan!r}")


@contextlib.contextmanager
def _realtime() -> Iterator[None]:
    """SCHED_FIFO for this process while the block runs, when the OS allows it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class _Worker:
    def __init__(self) -> None:
        self.stats = Stats()
        self.closers: list[Closer] = []

    async def connect(
        self,
        target: dict[str, Any],
        plan: str,
        first: int,
        count: int,
        concurrency: int,
        wait_s: float,
        kstamp: bool = False,
        transport: str = "ws",
    ) -> dict[str, Any]:
        tgt = Target(**target)
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []
        started = time.monotonic_ns()

        async def one(index: int) -> None:
            async with gate:
                sub = Subscriber(self.stats, channels_for(plan, index), (tgt.key, tgt.secret))
                try:
                    if transport == "xhr_streaming":
                        self.closers.append(await connect_xhr(tgt, sub, wait_s))
                    else:
                        self.closers.append(await connect(tgt.ws_url, sub, wait_s, kstamp))
                except Exception as exc:  # OSError, TimeoutError, picows' WSError family
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

        await asyncio.gather(*(one(first + i) for i in range(count)))
        return {
            "ok": count - len(errors),
            "failed": len(errors),
            "errors": errors[:3],
            "started": started,
            "finished": time.monotonic_ns(),
        }

    def reset(self, latency: bool) -> dict[str, Any]:
        self.stats.reset(latency)
        self.stats.closed = 0
        return {}

    def report(self, latencies: bool) -> dict[str, Any]:
        stats = self.stats
        out: dict[str, Any] = {
            "frames": stats.frames,
            "last_rx": stats.last_rx,
            "closed": stats.closed,
            "open": len(self.closers) - stats.closed,
        }
        if latencies and stats.latencies is not None:
            out["latencies"] = stats.latencies.tobytes()
            out["user_latencies"] = stats.user_latencies.tobytes()
            out["unstamped"] = stats.unstamped
            out["merged"] = stats.merged
            # A step of CLOCK_REALTIME since reset would shift every kernel stamp by as much.
            out["clock_step_ns"] = realtime_offset() - stats.clock_offset
        return out

    async def close(self) -> dict[str, Any]:
        for closer in self.closers:
            with contextlib.suppress(Exception):
                closer()
        self.closers.clear()
        await close_pool()
        await asyncio.sleep(0.2)
        self.stats.closed = 0
        return {}

    async def publish(
        self,
        target: dict[str, Any],
        mode: str,
        channels: list[list[str]],
        size: int,
        concurrency: int,
        duration: float,
        rate: float = 0.0,
    ) -> dict[str, Any]:
        tgt = Target(**target)
        pool = await httpclient.open_pool(tgt.host, tgt.port, max(1, concurrency))
        try:
            if mode == "paced":

                def build(seq: int) -> bytes:
                    data = event_data(size, seq, time.monotonic_ns())
                    return trigger_request(tgt, channels[seq % len(channels)], data)

                # The stamp is taken before the request is written; on the generator's busy
                # core the publisher could wait for subscriber processes between the two and
                # the wait would count as server latency. Real-time priority (paced mode only:
                # it sleeps between requests) lets it write at once.
                with _realtime():
                    result = await httpclient.paced(pool, build, rate, duration)
            else:
                requests = [trigger_request(tgt, chans, event_data(size)) for chans in channels]
                result = await httpclient.closed_loop(pool, requests, duration)
        finally:
            for conn in pool:
                conn.close()
        result.reconnects = sum(conn.reconnects for conn in pool)
        return result.as_dict()


def _main(pipe: Connection, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_serve(pipe))


async def _serve(pipe: Connection) -> None:
    worker = _Worker()
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        if command == "quit":
            await worker.close()
            pipe.send({})
            return
        try:
            if command == "connect":
                reply = await worker.connect(**args)
            elif command == "reset":
                reply = worker.reset(**args)
            elif command == "stats":
                reply = worker.report(**args)
            elif command == "close":
                reply = await worker.close()
            elif command == "publish":
                reply = await worker.publish(**args)
            else:
                reply = {"error": f"unknown command {command!r}"}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(reply)


class Generator:
    """``subscribers`` subscriber processes plus one publisher process, optionally pinned."""

    def __init__(self, subscribers: int, cpu: int | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(subscribers + 1):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_main, args=(theirs, cpu), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None] + [os.getpid()]

    @property
    def subscribers(self) -> list[Connection]:
        return self.pipes[1:]

    @property
    def publisher(self) -> Connection:
        return self.pipes[0]

    def call(self, pipes: list[Connection], command: str, args: list[dict[str, Any]]) -> list[Any]:
        """Send one command to each pipe (in parallel) and collect the replies, in order."""
        for pipe, arg in zip(pipes, args, strict=True):
            pipe.send((command, arg))
        replies = [pipe.recv() for pipe in pipes]
        for reply in replies:
            if isinstance(reply, dict) and "error" in reply:
                raise RuntimeError(f"generator {command}: {reply['error']}")
        return replies

    def broadcast(self, command: str, **args: Any) -> list[Any]:
        return self.call(self.subscribers, command, [args] * len(self.subscribers))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.pipes, "quit", [{}] * len(self.pipes))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
