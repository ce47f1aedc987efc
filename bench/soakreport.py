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


def _window(first: Sample, last: Sample) -> dict[str, float]:
    """kanal's CPU (cores) and the pings answered per second between two samples."""
    seconds = last.t - first.t
    return {
        "from_s": first.t,
        "seconds": seconds,
        "server_cpu_cores": (last.server_cpu - first.server_cpu) / seconds,
        "pings_per_s": (last.pings - first.pings) / seconds,
    }


def windows(samples: list[Sample], activity_timeout: float) -> dict[str, dict[str, float]]:
    """Two parts of the hold, to price the pings: ``quiet``, before kanal's first ping (it
    only checks its timers then), and ``steady``, from ``activity_timeout`` s on, when every
    connection is pinged once per ``activity_timeout`` (kanal's timers are checked every
    second, so the first round has started by then for every connection opened before)."""
    out = {}
    quiet = [s for s in samples if s.pings == samples[0].pings]
    if len(quiet) >= 2:
        out["quiet"] = _window(quiet[0], quiet[-1])
    steady = [s for s in samples if s.t >= activity_timeout + 2]
    if len(steady) >= 2:
        out["steady"] = _window(steady[0], steady[-1])
    if len(out) == 2 and out["steady"]["pings_per_s"]:
        extra = out["steady"]["server_cpu_cores"] - out["quiet"]["server_cpu_cores"]
        out["steady"]["cpu_us_per_ping_over_quiet"] = 1e6 * extra / out["steady"]["pings_per_s"]
    return out


def summarise(
    idle_rss: list[int],
    samples: list[Sample],
    connections: int,
    flat: float,
    activity_timeout: float,
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    seconds = max(last.t - first.t, 1e-9)
    base, start, end = sum(idle_rss), sum(first.server_rss), sum(last.server_rss)
    cores = (last.server_cpu - first.server_cpu) / seconds
    ours = sum(
        getattr(last, key) - getattr(first, key) for key in ("server_cpu", "redis_cpu", "gen_cpu")
    )
    pings = last.pings - first.pings
    slope = _slope([(s.t / 60, sum(s.server_rss)) for s in samples])  # bytes per minute
    failures = []
    if last.lost or last.live != connections:
        failures.append(f"held {last.live:,} of {connections:,} ({last.lost} lost)")
    growth = (end - start) / start
    if growth >= flat:
        failures.append(f"server RSS grew by {growth:.1%} during the hold")
    return {
        "seconds": seconds,
        "connections": connections,
        "rss_idle_server": base,
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
        "redis_cpu_cores": (last.redis_cpu - first.redis_cpu) / seconds,
        "redis_rss_end": last.redis_rss,
        "generator_cpu_cores": (last.gen_cpu - first.gen_cpu) / seconds,
        "generator_rss_end": last.gen_rss,
        "other_cores": max(0.0, (last.machine_busy - first.machine_busy - ours) / seconds),
        "pings_per_s": pings / seconds,
        "ws_pings_per_s": (last.ws_pings - first.ws_pings) / seconds,
        "pings_answered": pings,
        "windows": windows(samples, activity_timeout),
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
            f"hold: {hold['seconds'] / 60:.1f} min, {hold['connections']:,} connections, "
            f"{hold['lost']} lost"
        )
        lines.append(
            f"  kanal RSS start {_mib(hold['rss_start'])} "
            f"({hold['bytes_per_connection_start']:,.0f} B/connection above idle "
            f"{_mib(hold['rss_idle_server'])}), end {_mib(hold['rss_end'])} "
            f"({hold['bytes_per_connection_end']:,.0f} B/connection); growth "
            f"{hold['rss_growth']:+.2%}, slope {hold['rss_slope_bytes_per_min'] / 1024:+,.1f} "
            f"KiB/min: {'flat' if hold['flat'] else 'NOT flat'}"
        )
        per_ping = hold["server_cpu_us_per_ping"]
        lines.append(
            f"  kanal CPU {100 * hold['server_cpu_cores']:.2f} % of a core "
            f"({hold['server_cpu_percent_per_1k']:.3f} % per 1k connections"
            + (f", {per_ping:,.0f} µs per ping" if per_ping else "")
            + f"); redis {100 * hold['redis_cpu_cores']:.2f} %; generators "
            f"{100 * hold['generator_cpu_cores']:.2f} %; other processes "
            f"{100 * hold['other_cores']:.0f} %"
        )
        lines.append(
            f"  pings answered: {hold['pings_per_s']:,.1f}/s pusher:ping, "
            f"{hold['ws_pings_per_s']:,.1f}/s WebSocket Ping ({hold['pings_answered']:,} in all)"
        )
        for name, window in hold["windows"].items():
            extra = window.get("cpu_us_per_ping_over_quiet")
            lines.append(
                f"  {name} part ({window['from_s']:.0f} s on, {window['seconds']:.0f} s): kanal "
                f"CPU {100 * window['server_cpu_cores']:.2f} % of a core, "
                f"{window['pings_per_s']:,.1f} pings/s"
                + (f", {extra:,.1f} µs of kanal CPU per ping above quiet" if extra else "")
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
