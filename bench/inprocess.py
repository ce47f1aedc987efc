"""In-process publishing rate: ``Realtime.trigger`` calls per second with no HTTP.

``python -m bench inprocess [--seconds 5] [--runs 3]`` builds an embedded node
(:func:`kanal.asgi.create_app`, memory adapter), starts it as an ASGI lifespan would, and
calls ``await realtime.trigger(...)`` on a channel without subscribers in a loop on the node's
own event loop, then the same through ``realtime.sync.trigger`` from a second thread (a sync
Django view or a thread pool). The process is pinned to CPU 0 like the servers in
``python -m bench run``, so the figure compares with its "HTTP triggers/s, no subscribers".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Sequence

import uvloop

from kanal.asgi import create_app
from kanal.realtime import Realtime

__all__ = ["main"]

DATA = {"bench": "x" * 180}  # about the 200-byte events of the other scenarios


async def _async_rate(realtime: Realtime, seconds: float) -> float:
    calls, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            await realtime.trigger("bench-nobody", "bench", DATA)
        calls += 100
    return calls / (time.perf_counter() - start)


def _sync_rate(realtime: Realtime, seconds: float, out: list[float]) -> None:
    sync = realtime.sync
    calls, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        sync.trigger("bench-nobody", "bench", DATA)
        calls += 1
    out.append(calls / (time.perf_counter() - start))


async def _measure(seconds: float, runs: int) -> dict[str, list[float]]:
    app = create_app(id="1", key="app-key", secret="app-secret")
    await app.startup()
    try:
        results: dict[str, list[float]] = {"await trigger/s": [], "sync trigger/s (thread)": []}
        for _ in range(runs):
            results["await trigger/s"].append(await _async_rate(app.realtime, seconds))
            out: list[float] = []
            thread = threading.Thread(target=_sync_rate, args=(app.realtime, seconds, out))
            thread.start()
            await asyncio.to_thread(thread.join)
            results["sync trigger/s (thread)"].extend(out)
        return results
    finally:
        await app.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench inprocess", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPU 0")
    args = parser.parse_args(argv)
    if not args.no_pin and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})
    results = uvloop.run(_measure(args.seconds, args.runs))
    for name, values in results.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name}: median {statistics.median(values):,.0f} ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
