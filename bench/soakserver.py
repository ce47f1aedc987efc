"""The soak's server side: its own redis-server, ``kanal serve --workers N``, the HTTP API.

Every process started here is a child of the orchestrator in a session of its own (so a
Ctrl-C in the terminal reaches only the orchestrator, which then stops them in order) with
``PR_SET_PDEATHSIG`` = SIGTERM (so they stop even if the orchestrator is killed outright). They
are stopped by pid only: SIGTERM, a bounded wait, then SIGKILL. kanal's worker pids are the
children of its master process, read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from bench.servers import free_port
from kanal.protocol.signatures import sign_request

__all__ = ["HOST", "Api", "Kanal", "Redis", "children", "stop_pid"]

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the orchestrator dies, and a session of its own
    (a Ctrl-C in the terminal reaches only the orchestrator, which stops it in order)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (kanal's workers are forked by its main thread)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def stop_pid(proc: subprocess.Popen[bytes], grace: float, extra: Sequence[int] = ()) -> None:
    """SIGTERM ``proc``; after ``grace`` seconds SIGKILL it and any of ``extra`` still alive."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for pid in extra:  # workers of a killed master are not reaped by it: end them by pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.05)  # polling a condition, bounded by the deadline above


@dataclass
class Redis:
    """A private redis-server: no persistence, loopback only."""

    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", HOST]
        cmd += ["--save", "", "--appendonly", "no", "--maxclients", "1000"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        proc = self.proc
        _wait_for(lambda: b"Ready to accept" in self.log.read_bytes(), 20, "redis-server", proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, 10)


@dataclass
class Kanal:
    """``kanal serve`` with one app and ``workers`` processes sharing a port."""

    workers: int
    adapter: str
    redis_url: str
    activity_timeout: int
    log: Path
    app: tuple[str, str, str] = ("1", "soak-key", "soak-secret")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    worker_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/app/{self.app[1]}?protocol=7&client=soak&version=8.4.0"

    def command(self) -> list[str]:
        app_id, key, secret = self.app
        cmd = [sys.executable, "-m", "kanal", "serve", "--host", HOST, "--port", str(self.port)]
        cmd += ["--workers", str(self.workers), "--log-level", "info", "--adapter", self.adapter]
        cmd += ["--app-id", app_id, "--app-key", key, "--app-secret", secret]
        cmd += ["--app-activity-timeout", str(self.activity_timeout)]
        if self.adapter == "redis":  # a prefix of its own, in case the Redis is shared
            cmd += ["--redis-url", self.redis_url, "--redis-prefix", f"soak{self.port}:"]
        return cmd

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        # Every worker logs "kanal listening" once its socket is bound (log level info).
        _wait_for(lambda: self.listening() >= self.workers, 60, "kanal serve", self.proc)
        self.worker_pids = children(self.proc.pid) if self.workers > 1 else []

    def listening(self) -> int:
        return self.log.read_bytes().count(b"kanal listening on")

    @property
    def pids(self) -> list[int]:
        """The processes whose RSS and CPU are the server's: master and workers."""
        assert self.proc is not None
        return [self.proc.pid, *self.worker_pids]

    def log_lines(self, needle: str) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if needle in line]

    def stop(self) -> None:
        if self.proc is not None:
            # With every client gone, draining is quick; 60 s covers a busy machine.
            stop_pid(self.proc, 60, self.worker_pids)


class Api:
    """Signed calls to kanal's HTTP API (docs/reference/http-api.md §2, §5.2)."""

    def __init__(self, port: int, app: tuple[str, str, str]) -> None:
        self.port = port
        self.app_id, self.key, self.secret = app

    def _call(self, method: str, path: str, params: dict[str, str], body: bytes) -> Any:
        query = sign_request(
            method=method,
            path=path,
            params=params,
            body=body,
            app_key=self.key,
            app_secret=self.secret,
            timestamp=int(time.time()),
        )
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if body else {}
            conn.request(method, f"{path}?{urlencode(query)}", body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return orjson.loads(data)

    def subscription_count(self, channel: str) -> int:
        """The cluster-wide number of connections subscribed to ``channel``."""
        path = f"/apps/{self.app_id}/channels/{channel}"
        answer = self._call("GET", path, {"info": "subscription_count"}, b"")
        return int(answer.get("subscription_count", 0))

    def trigger(self, channel: str, name: str, data: str) -> None:
        body = orjson.dumps({"name": name, "channels": [channel], "data": data})
        self._call("POST", f"/apps/{self.app_id}/events", {}, body)
