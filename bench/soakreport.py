"""The soak's numbers: samples taken during the hold, what they add up to, the summary text.

RSS per connection is the server's RSS (master and workers) above what the same processes
held before the first connection, divided by the connections. The slope is a least-squares
fit of the total over the hold; "flat" means it grew by less than ``--flat`` (a fraction of
its size at the start of the hold). CPU figures are ``utime + stime`` deltas from ``/proc``
per process, so other work on the machine does not count in them; the machine's total busy
time is recorded beside them (``other_cores``) to show how busy it was.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sample", "limits", "summarise", "summary_text"]


@dataclass
class Sample:
    t: float  # seconds since the hold started
    server_rss: list[int]  # per kanal process: master first, then workers
    server_cpu: float  # CPU seconds so far, all kanal processes
    redis_rss: int
    redis_cpu: float
    gen_rss: int
    gen_cpu: float
    machine_busy: float  # CPU seconds the whole machine has been busy
    live: int  # subscribed connections the generators hold
    lost: int  # connections closed after they were subscribed
    pings: int  # pusher:ping answered
    ws_pings: int  # WebSocket Ping frames answered


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def limits() -> dict[str, Any]:
    """What the machine allows: descriptors per process, accept queue, ephemeral ports."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low, high = (int(x) for x in _read("/proc/sys/net/ipv4/ip_local_port_range").split())
    meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines())
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": _read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        "ip_local_port_range": f"{low}-{high}",
        "ports_per_source_address": high - low + 1,
        "fs_file_max": _read("/proc/sys/fs/file-max"),
        "nf_conntrack_max": _read("/proc/sys/net/netfilter/nf_conntrack_max"),
        "mem_available_gib": round(int(meminfo["MemAvailable"].split()[0]) / 2**20, 1),
    }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def summarise(
    idle_rss: list[int], samples: list[Sample], connections: int, flat: float, warmup: float
) -> dict[str, Any]:
    """The hold's figures: from the sample at the end of the warm-up to the last one."""
    connected = samples[0]
    held = [s for s in samples if s.t >= warmup]
    first, last = held[0], held[-1]
    seconds = max(last.t - first.t, 1e-9)
    base, start, end = sum(idle_rss), sum(first.server_rss), sum(last.server_rss)
    cores = (last.server_cpu - first.server_cpu) / seconds
    ours = sum(
        getattr(last, key) - getattr(first, key) for key in ("server_cpu", "redis_cpu", "gen_cpu")
    )
    pings = last.pings - first.pings
    slope = _slope([(s.t / 60, sum(s.server_rss)) for s in held])  # bytes per minute
    failures = []
    if last.lost or last.live != connections:
        failures.append(f"held {last.live:,} of {connections:,} ({last.lost} lost)")
    growth = (end - start) / start
    if growth >= flat:
        failures.append(f"server RSS grew by {growth:.1%} during the hold")
    # Before kanal's first ping (pings only start activity_timeout s after a connection
    # opened) its CPU is the cost of checking timers alone; the difference prices a ping.
    quiet = [s for s in samples if s.pings == connected.pings]
    quiet_cores = None
    if len(quiet) >= 2 and quiet[-1].t > quiet[0].t:
        quiet_cores = (quiet[-1].server_cpu - quiet[0].server_cpu) / (quiet[-1].t - quiet[0].t)
    per_ping = None
    if pings and quiet_cores is not None:
        per_ping = 1e6 * (cores - quiet_cores) * seconds / pings
    return {
        "warmup_seconds": warmup,
        "seconds": seconds,
        "connections": connections,
        "rss_idle_server": base,
        "rss_connected": sum(connected.server_rss),
        "bytes_per_connection_connected": (sum(connected.server_rss) - base) / connections,
        "rss_start": start,
        "rss_end": end,
        "rss_start_per_process": first.server_rss,
        "rss_end_per_process": last.server_rss,
        "bytes_per_connection_start": (start - base) / connections,
        "bytes_per_connection_end": (end - base) / connections,
        "rss_growth": growth,
        "rss_slope_bytes_per_min": slope,
        "flat": growth < flat,
        "server_cpu_cores": cores,
        "server_cpu_percent_per_1k": 100 * cores / (connections / 1000),
        "server_cpu_us_per_ping": 1e6 * cores * seconds / pings if pings else None,
        "quiet_server_cpu_cores": quiet_cores,
        "quiet_seconds": quiet[-1].t - quiet[0].t,
        "server_cpu_us_per_ping_over_quiet": per_ping,
        "redis_cpu_cores": (last.redis_cpu - first.redis_cpu) / seconds,
        "redis_rss_end": last.redis_rss,
        "generator_cpu_cores": (last.gen_cpu - first.gen_cpu) / seconds,
        "generator_rss_end": last.gen_rss,
        "other_cores": max(0.0, (last.machine_busy - first.machine_busy - ours) / seconds),
        "pings_per_s": pings / seconds,
        "ws_pings_per_s": (last.ws_pings - first.ws_pings) / seconds,
        "pings_answered": pings,
        "lost": last.lost,
        "samples": [asdict(s) for s in samples],
        "failures": failures,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def summary_text(result: dict[str, Any]) -> str:
    meta, lines = result["meta"], []
    args, lim, machine = meta["args"], meta["limits"], meta["machine"]
    lines.append(f"kanal soak, {meta['date']}: {meta['command']}")
    lines.append(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}; kanal {meta['versions']['kanal']}"
    )
    lines.append(
        f"limits: open files {lim['nofile_soft']}/{lim['nofile_hard']} (soft/hard), somaxconn "
        f"{lim['somaxconn']}, ports {lim['ip_local_port_range']} per source address"
    )
    lines.append(
        f"setup: {args['workers']} kanal worker(s), {args['adapter']} adapter, "
        f"{args['generators']} generators, activity_timeout {args['activity_timeout']} s"
    )
    if connect := result.get("connect"):
        lines.append(
            f"connect: {connect['ok']:,}/{args['connections']:,} subscribed in "
            f"{connect['seconds']:.1f} s ({connect['retried']} retried, {connect['failed']} "
            f"failed); API subscription_count {connect['subscription_count']:,}; descriptors "
            f"per kanal process {sorted(connect['fds_per_process'].values())}; cores used "
            f"while connecting {connect['cores']}"
        )
    if hold := result.get("hold"):
        lines.append(
            f"hold: {hold['seconds'] / 60:.1f} min after a {hold['warmup_seconds']:.0f} s "
            f"warm-up, {hold['connections']:,} connections, {hold['lost']} lost"
        )
        lines.append(
            f"  kanal RSS {_mib(hold['rss_idle_server'])} idle; connected "
            f"{_mib(hold['rss_connected'])} ({hold['bytes_per_connection_connected']:,.0f} "
            f"B/connection above idle); hold start {_mib(hold['rss_start'])} "
            f"({hold['bytes_per_connection_start']:,.0f} B/connection), end "
            f"{_mib(hold['rss_end'])} ({hold['bytes_per_connection_end']:,.0f} B/connection)"
        )
        lines.append(
            f"  RSS growth over the hold {hold['rss_growth']:+.2%}, slope "
            f"{hold['rss_slope_bytes_per_min'] / 1024:+,.1f} KiB/min: "
            + ("flat" if hold["flat"] else "NOT flat")
        )
        per_ping, quiet = hold["server_cpu_us_per_ping"], hold["quiet_server_cpu_cores"]
        extra = hold["server_cpu_us_per_ping_over_quiet"]
        lines.append(
            f"  kanal CPU {100 * hold['server_cpu_cores']:.2f} % of a core "
            f"({hold['server_cpu_percent_per_1k']:.3f} % per 1k connections"
            + (f", {per_ping:,.0f} µs per ping answered" if per_ping else "")
            + f"); redis {100 * hold['redis_cpu_cores']:.2f} %; generators "
            f"{100 * hold['generator_cpu_cores']:.2f} %; other processes "
            f"{100 * hold['other_cores']:.0f} %"
        )
        if quiet is not None:
            lines.append(
                f"  before the first ping ({hold['quiet_seconds']:.0f} s): kanal CPU "
                f"{100 * quiet:.2f} % of a core"
                + (f"; each ping costs {extra:,.1f} µs above that" if extra is not None else "")
            )
        lines.append(
            f"  pings answered: {hold['pings_per_s']:,.1f}/s pusher:ping, "
            f"{hold['ws_pings_per_s']:,.1f}/s WebSocket Ping ({hold['pings_answered']:,} in all)"
        )
    if broadcast := result.get("broadcast"):
        reach = broadcast["seconds_to_all"]
        lines.append(
            f"broadcast: {broadcast['delivered']:,}/{broadcast['expected']:,} delivered"
            + (f", all within {reach * 1000:,.0f} ms" if reach is not None else "")
        )
    for line in result.get("kanal_log", []):
        lines.append(f"kanal log: {line}")
    lines.append("RESULT: OK" if result["ok"] else f"RESULT: FAILED {result['failures']}")
    return "\n".join(lines)
