"""The benchmark's two C programs (bench/native/): built on first use, and httpgen's runner.

``floor.c`` is the reference server (the least any Pusher server must do; docs/performance.md,
"Method") and ``httpgen.c`` the HTTP load generator of the ``http`` scenario. Each is compiled
with ``cc -O2`` into the git-ignored ``.build`` folder of ``bench`` under a name that
carries the hash of its source, so an edited source is rebuilt on its next use and a stale
binary is never run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BUILD", "NoCompiler", "build", "compiler", "run_httpgen"]

SOURCES = Path(__file__).resolve().parent / "native"
BUILD = Path(__file__).resolve().parent / ".build"


class NoCompiler(RuntimeError):
    """No C compiler on this machine: the floor server and httpgen cannot be built."""


def compiler() -> str | None:
    """``$CC``, else the first of cc, gcc, clang on ``PATH``."""
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def build(name: str) -> Path:
    """The executable of ``bench/native/<name>.c``, compiled now if its source changed."""
    source = SOURCES / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    exe = BUILD / f"{name}-{digest}"
    if exe.is_file():
        return exe
    cc = compiler()
    if cc is None:
        raise NoCompiler(f"no C compiler (cc, gcc, clang or $CC) to build {source}")
    BUILD.mkdir(parents=True, exist_ok=True)
    # Compiled beside its final name and renamed: a concurrent run never sees half a binary.
    tmp = BUILD / f".{name}-{digest}-{os.getpid()}"
    done = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(tmp), str(source)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"building {source} failed:\n{done.stderr[-3000:]}")
    os.replace(tmp, exe)
    return exe


@dataclass(frozen=True)
class HttpLoad:
    """One httpgen run: ``connections`` clients sending ``request`` for ``duration`` s."""

    host: str
    port: int
    request: bytes
    connections: int
    duration: float
    reconnect: bool = False  # a new TCP connection per request instead of keep-alive


def run_httpgen(load: HttpLoad, cpu: int | None) -> dict[str, Any]:
    """Run httpgen (pinned to ``cpu``) to completion; its JSON summary (see httpgen.c)."""
    exe = build("httpgen")
    with tempfile.NamedTemporaryFile(prefix="httpgen-", suffix=".http") as request:
        request.write(load.request)
        request.flush()
        command = [
            str(exe),
            load.host,
            str(load.port),
            str(load.connections),
            str(load.duration),
            "close" if load.reconnect else "keepalive",
            request.name,
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=load.duration + 30,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )
    if done.returncode != 0:
        raise RuntimeError(f"httpgen failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
