"""What /proc says about a process and the machine: CPU time, RSS, versions.

CPU time is ``utime + stime`` from ``/proc/<pid>/stat`` (all threads of the process, in clock
ticks); RSS is ``VmRSS`` from ``/proc/<pid>/status``. Both are sampled by the orchestrator
around each measured window.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "all_processes_cpu",
    "cpu_seconds",
    "foreign_cpu",
    "listen_overflows",
    "machine",
    "rss_bytes",
    "total_cpu_seconds",
    "versions",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (0.0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_rev(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions(repo: Path, soketi_dir: Path | None) -> dict[str, str]:
    out = {
        "python": sys.version.split()[0],
        "kanal": f"{_dist('kanal')} ({_git_rev(repo)})",
        "aiohttp": _dist("aiohttp"),
        "uvloop": _dist("uvloop"),
        "picows": _dist("picows"),
    }
    if soketi_dir is not None:
        import json

        pkg = soketi_dir / "node_modules" / "@soketi" / "soketi" / "package.json"
        try:
            out["soketi"] = json.loads(pkg.read_text())["version"]
        except (OSError, ValueError, KeyError):
            out["soketi"] = "not installed"
        node = shutil.which("node")
        if node:
            res = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
            out["node"] = res.stdout.strip()
    return out


def all_processes_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine (pid -> seconds), to detect contention."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            seconds = cpu_seconds(int(entry.name))
            if seconds:
                out[int(entry.name)] = seconds
    return out


def foreign_cpu(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds used between two snapshots by processes that are not ``ours``."""
    return sum(
        after[pid] - before.get(pid, 0.0) for pid in after if pid not in ours and pid in before
    )


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen (accept) queue was full."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("TcpExt:"):
                table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
                return int(table.get("ListenOverflows", 0))
    return 0
