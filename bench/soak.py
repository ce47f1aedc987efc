"""``python -m bench.soak``: hold many idle Pusher connections for a long time, then broadcast.

It starts its own redis-server (unless ``--redis-url`` or the memory adapter), ``kanal serve
--workers N`` on a free port with one app, and K generator processes (:mod:`bench.soakgen`),
each holding ``connections / K`` pusher-js-like clients from its own source address
127.0.0.(2+i). Phases:

1. connect at a bounded rate and concurrency (refused attempts are retried), then check
   with the HTTP API (``GET /apps/{id}/channels/soak?info=subscription_count``, cluster-wide)
   that every connection is subscribed;
2. hold for ``--minutes``, sampling every ``--sample-seconds`` each kanal process's RSS
   (``VmRSS``) and CPU time (``utime + stime``), Redis's and the generators', and the pings
   the clients answered (kanal pings a connection after ``activity_timeout`` s of silence);
3. trigger one event to the channel through the HTTP API and wait (bounded) until every
   generator has seen it on every connection.

Results: a human summary on stdout and ``--out`` JSON (:mod:`bench.soakreport`). The exit
status is 0 only if every connection was opened, subscribed, held and reached by the
broadcast. Everything started is stopped by pid on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench import procstat
from bench.soakgen import EVENT, GeneratorProc
from bench.soakreport import Sample, limits, summarise, summary_text
from bench.soakserver import Api, Kanal, Redis, children

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
CHANNEL = "soak"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=100_000, help="total (default 100000)")
    p.add_argument("--workers", type=int, default=7, help="kanal serve --workers (default 7)")
    p.add_argument("--generators", type=int, default=7, help="generator processes (default 7)")
    p.add_argument("--minutes", type=float, default=30.0, help="hold time (default 30)")
    p.add_argument(
        "--adapter",
        choices=("memory", "redis"),
        help="kanal's adapter (default: redis with several workers, else memory)",
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--activity-timeout", type=int, default=120, help="the app's (default 120)")
    p.add_argument(
        "--warmup",
        type=float,
        help="seconds between connecting and the hold (default activity_timeout + 5: every "
        "connection has been pinged once, so the hold sees the steady state)",
    )
    p.add_argument("--sample-seconds", type=float, default=30.0, help="sampling interval")
    p.add_argument("--connect-rate", type=float, default=2000.0, help="new connections/s, total")
    p.add_argument("--concurrency", type=int, default=100, help="handshakes in flight, per gen")
    p.add_argument("--retries", type=int, default=5, help="attempts after a failed connect")
    p.add_argument("--broadcast-timeout", type=float, default=60.0, help="seconds")
    p.add_argument("--flat", type=float, default=0.05, help="RSS growth still 'flat' (0.05)")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/soak-*.json)")
    p.add_argument("--logs", type=Path, default=REPO / "bench" / "results" / "logs")
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # same clean-up as Ctrl-C


class Soak:
    """The processes of one soak and its phases; ``failures`` collects what went wrong."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis: Redis | None = None
        self.kanal: Kanal | None = None
        self.gens: list[GeneratorProc] = []
        self.failures: list[str] = []

    def log(self, message: str) -> None:
        print(f"soak {time.strftime('%H:%M:%S')}: {message}", file=sys.stderr, flush=True)

    # --- set-up --------------------------------------------------------------------------

    def start(self) -> tuple[Kanal, Api]:
        args, stamp = self.args, time.strftime("%Y%m%dT%H%M%S")
        args.logs.mkdir(parents=True, exist_ok=True)
        redis_url = args.redis_url or ""
        if args.adapter == "redis" and not redis_url:
            self.redis = Redis(args.logs / f"soak-{stamp}-redis.log")
            self.redis.start()
            redis_url = self.redis.url
            self.log(f"redis-server pid {self.redis.proc and self.redis.proc.pid} at {redis_url}")
        log = args.logs / f"soak-{stamp}-kanal.log"
        kanal = Kanal(args.workers, args.adapter, redis_url, args.activity_timeout, log)
        self.kanal = kanal
        kanal.start()
        self.log(f"kanal serve pids {kanal.pids} on port {kanal.port} ({args.adapter} adapter)")
        for i in range(args.generators):
            self.gens.append(GeneratorProc(f"127.0.0.{2 + i}"))
        return kanal, Api(kanal.port, kanal.app)

    def stop(self) -> None:
        """Generators first (they drop their connections), then kanal, then Redis; by pid."""
        for gen in self.gens:
            gen.stop()
        if self.kanal is not None:
            self.kanal.stop()
        if self.redis is not None:
            self.redis.stop()

    # --- phases --------------------------------------------------------------------------

    def connect(self, api: Api) -> dict[str, Any]:
        args, kanal = self.args, self.kanal
        assert kanal is not None
        shares = [args.connections // len(self.gens)] * len(self.gens)
        for i in range(args.connections % len(self.gens)):
            shares[i] += 1
        started = time.monotonic()
        for gen, share in zip(self.gens, shares, strict=True):
            gen.send(
                "connect",
                url=kanal.url,
                channel=CHANNEL,
                count=share,
                rate=args.connect_rate / len(self.gens),
                concurrency=args.concurrency,
                wait_s=30.0,
                retries=args.retries,
            )
        replies: list[dict[str, Any]] = []
        cpu_start = cpu = self.cpu()
        for gen in self.gens:
            while (reply := gen.reply(timeout=10.0)) is None:  # progress while waiting
                count, before, cpu = api.subscription_count(CHANNEL), cpu, self.cpu()
                self.log(
                    f"connecting: {count:,} subscribed, {time.monotonic() - started:.0f} s; "
                    f"cores {_cores(before, cpu)}"
                )
            replies.append(reply)
        seconds = time.monotonic() - started
        result = {
            "seconds": seconds,
            "ok": sum(r["ok"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "retried": sum(r["retried"] for r in replies),
            "errors": [e for r in replies for e in r["errors"]][:5],
            "per_generator": shares,
            "cores": _cores(cpu_start, self.cpu()),
        }
        result["subscription_count"] = self._await_count(api, result["ok"])
        result["fds_per_process"] = {pid: _fds(pid) for pid in kanal.pids}
        self.log(
            f"connected {result['ok']:,} in {seconds:.1f} s ({result['failed']} failed, "
            f"{result['retried']} retried); API subscription_count "
            f"{result['subscription_count']:,}; descriptors {result['fds_per_process']}"
        )
        if result["failed"]:
            self.failures.append(f"{result['failed']} connections failed: {result['errors']}")
        if result["subscription_count"] != args.connections:
            self.failures.append(f"subscription_count {result['subscription_count']}")
        return result

    def _await_count(self, api: Api, expected: int, timeout: float = 30.0) -> int:
        """The API's count; waits (bounded) in case a cluster member lags behind Redis."""
        deadline = time.monotonic() + timeout
        while (count := api.subscription_count(CHANNEL)) != expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polling the API for a condition, bounded by the deadline
        return count

    def _redis_pids(self) -> list[int]:
        return [self.redis.proc.pid] if self.redis and self.redis.proc else []

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of kanal (master and workers), Redis, the generators, and the
        whole machine, with the time they were read."""
        assert self.kanal is not None
        return {
            "t": time.monotonic(),
            "kanal": procstat.total_cpu_seconds(self.kanal.pids),
            "redis": procstat.total_cpu_seconds(self._redis_pids()),
            "generators": procstat.total_cpu_seconds([gen.pid for gen in self.gens]),
            "machine": _machine_busy(),
        }

    def sample(self, t0: float) -> Sample:
        kanal = self.kanal
        assert kanal is not None and kanal.proc is not None
        if kanal.workers > 1:
            pids = children(kanal.proc.pid)
            if sorted(pids) != sorted(kanal.worker_pids):
                self.failures.append(f"kanal workers changed: {kanal.worker_pids} -> {pids}")
                kanal.worker_pids = pids
        for gen in self.gens:
            gen.send("stats")
        stats = [gen.reply() or {} for gen in self.gens]
        cpu = self.cpu()
        return Sample(
            t=cpu["t"] - t0,
            server_rss=[procstat.rss_bytes(pid) for pid in kanal.pids],
            server_cpu=cpu["kanal"],
            redis_rss=sum(procstat.rss_bytes(pid) for pid in self._redis_pids()),
            redis_cpu=cpu["redis"],
            gen_rss=sum(procstat.rss_bytes(gen.pid) for gen in self.gens),
            gen_cpu=cpu["generators"],
            machine_busy=cpu["machine"],
            **{key: sum(s.get(key, 0) for s in stats) for key in ("live", "lost", "pings")},
            ws_pings=sum(s.get("ws_pings", 0) for s in stats),
        )

    def hold(self, warmup: float) -> list[Sample]:
        """Sample from the end of connecting through ``warmup`` and the hold itself; one
        sample falls exactly at the end of the warm-up, where the hold's figures start."""
        args = self.args
        end = warmup + args.minutes * 60
        step = args.sample_seconds
        due = sorted({*_steps(0, warmup, step), *_steps(warmup, end, step), warmup, end})
        t0 = time.monotonic()
        samples = [self.sample(t0)]
        for at in due[1:]:
            # Pacing the samples, not synchronisation: each one is due at a fixed time.
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            samples.append(last := self.sample(t0))
            phase = f"warm-up {at:.0f} s" if at <= warmup else f"hold {(at - warmup) / 60:.1f} min"
            self.log(
                f"{phase}: kanal RSS "
                f"{sum(last.server_rss) / 2**20:,.1f} MiB, {last.live:,} live, "
                f"{last.lost} lost, {last.pings:,} pings answered"
            )
            assert self.kanal is not None and self.kanal.proc is not None
            if self.kanal.proc.poll() is not None:
                raise RuntimeError(f"kanal exited with {self.kanal.proc.returncode}")
        return samples

    def broadcast(self, api: Api, expected: int) -> dict[str, Any]:
        sent = time.monotonic_ns()
        api.trigger(CHANNEL, EVENT, '{"soak":"end"}')
        for gen in self.gens:
            gen.send("await_event", wait_s=self.args.broadcast_timeout)
        replies = [gen.reply() or {} for gen in self.gens]
        delivered = sum(r["events"] for r in replies)
        firsts = [r["first_event_ns"] for r in replies if r["first_event_ns"]]
        last = max((r["last_event_ns"] for r in replies), default=0)
        result = {
            "expected": expected,
            "delivered": delivered,
            "per_generator": [r["events"] for r in replies],
            "seconds_to_first": (min(firsts) - sent) / 1e9 if firsts else None,
            "seconds_to_all": (last - sent) / 1e9 if delivered == expected else None,
        }
        if delivered != expected:
            self.failures.append(f"broadcast reached {delivered:,} of {expected:,}")
        return result


def _steps(start: float, stop: float, step: float) -> list[float]:
    """``start, start + step, ...`` below ``stop``."""
    times = (start + i * step for i in range(int((stop - start) / step) + 1))
    return [t for t in times if t < stop]


def _cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores used between two :meth:`Soak.cpu` readings; ``other``: the rest of the machine."""
    seconds = max(after["t"] - before["t"], 1e-9)
    used = {k: (after[k] - before[k]) / seconds for k in ("kanal", "redis", "generators")}
    used["other"] = max(0.0, (after["machine"] - before["machine"]) / seconds - sum(used.values()))
    return {k: round(v, 2) for k, v in used.items()}


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(value) for value in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _preflight(args: argparse.Namespace, machine: dict[str, Any]) -> None:
    """Refuse sizes this machine cannot hold, before starting anything."""
    per_gen = -(-args.connections // args.generators)
    per_worker = -(-args.connections // args.workers)
    files = machine["nofile_hard"]
    if per_gen > machine["ports_per_source_address"]:
        raise SystemExit(
            f"{per_gen:,} connections per generator, but one source address has only "
            f"{machine['ports_per_source_address']:,} ephemeral ports: use more --generators"
        )
    if per_gen + 100 > files:
        raise SystemExit(f"{per_gen:,} connections per generator, open-file limit {files:,}")
    # SO_REUSEPORT spreads connections by hash, a few per cent unevenly (measured: ±2 %).
    if per_worker * (1.03 if args.workers > 1 else 1.0) + 100 > files:
        print(
            f"soak: warning: {per_worker:,} connections per kanal process against an "
            f"open-file limit of {files:,}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    if args.adapter is None:
        args.adapter = "redis" if args.workers > 1 else "memory"
    if args.adapter == "memory" and args.workers > 1:
        raise SystemExit("several workers share state only through Redis: --adapter redis")
    if not 1 <= args.generators <= 250:
        raise SystemExit("--generators: 1 to 250 (source addresses 127.0.0.2-127.0.0.251)")
    if args.connect_rate <= 0 or args.connections < 1:
        raise SystemExit("--connections and --connect-rate must be positive")
    machine = limits()
    _preflight(args, machine)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.soak " + shlex.join(argv),
        "machine": procstat.machine(),
        "versions": procstat.versions(REPO, None),
        "limits": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    soak = Soak(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    result: dict[str, Any] = {"meta": meta}
    try:
        kanal, api = soak.start()
        idle = [procstat.rss_bytes(pid) for pid in kanal.pids]  # before any connection
        result["connect"] = connect = soak.connect(api)
        if not connect["failed"]:
            warmup = args.activity_timeout + 5 if args.warmup is None else args.warmup
            samples = soak.hold(warmup)
            result["hold"] = summarise(idle, samples, connect["ok"], args.flat, warmup)
            soak.failures += result["hold"].pop("failures")
            result["broadcast"] = soak.broadcast(api, connect["ok"])
        result["kanal_log"] = kanal.log_lines("open files") + kanal.log_lines("ERROR")
    finally:
        soak.log("stopping generators, kanal and redis ...")
        soak.stop()
        signal.signal(signal.SIGTERM, previous)
    result["failures"] = soak.failures
    result["ok"] = not soak.failures and "broadcast" in result
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        result = run(args, argv)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: run() has already stopped everything
        print("soak: interrupted", file=sys.stderr)
        return 130
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or REPO / "bench" / "results" / f"soak-{now}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_json(result))
    print(summary_text(result))
    print(f"results: {out}")
    return 0 if result["ok"] else 1


def _json(result: dict[str, Any]) -> bytes:
    return orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
