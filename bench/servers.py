"""Start and stop the servers under test: kanal (this repo), soketi (an external install) and
the floor (bench/native/floor.c, the least any server must do; built on first use).

Each server runs as a child process, optionally pinned to one CPU (``sched_setaffinity`` in
the child before exec, so every thread the server creates inherits it). Its pid is the
server's own: kanal is ``python -m kanal serve`` and soketi's ``start.sh`` execs node.

soketi is never copied into this repository: the benchmark calls ``start.sh`` of the
installation the user points it at (``--soketi-dir``), which must already have run its
``install.sh``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench import native
from bench.procstat import cpu_seconds, rss_bytes
from bench.protocol import Target
from kanal.app_stores.sql import SqlAppStore
from kanal.settings.loaders import app_from_table

__all__ = [
    "ServerProc",
    "free_port",
    "soketi_available",
    "start_floor",
    "start_kanal",
    "start_kanal_asgi",
    "start_kanal_redis",
    "start_redis",
    "start_soketi",
]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
#: Lifted protocol limits so the scenarios fit (presence channel with 5,000+ members).
MAX_PRESENCE_MEMBERS = 20000


@dataclass
class ServerProc:
    name: str
    target: Target
    proc: subprocess.Popen[bytes]
    log: Path
    #: processes that are part of the server under test (kanal-redis: its redis-server);
    #: their CPU and memory count as the server's
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *(helper.pid for helper in self.helpers)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self._stop_main()
        for helper in self.helpers:
            if helper.poll() is None:
                helper.terminate()
                helper.wait(timeout=10)

    def _stop_main(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _port_free(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(extra_offsets: tuple[int, ...] = ()) -> int:
    """A free TCP port whose ``port + offset`` ports (soketi's metrics/UDP) are free too."""
    for _ in range(200):
        port = random.randint(20000, 28000)  # below soketi's +5001, inside 65535
        if _port_free(port) and all(
            _port_free(port + off) and _port_free(port + off, socket.SOCK_DGRAM)
            for off in extra_offsets
        ):
            return port
    raise RuntimeError("no free port found")


def _pinned(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _wait_ready(server: ServerProc, timeout: float = 30.0) -> ServerProc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        try:
            with socket.create_connection((HOST, server.target.port), timeout=1):
                time.sleep(0.3)  # let it finish its start-up work before it is measured
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.name} did not listen on port {server.target.port} in {timeout} s")


def _spawn(
    name: str,
    cmd: list[str],
    target: Target,
    log: Path,
    cpu: int | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProc:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = log.open("wb")
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        preexec_fn=_pinned(cpu),
    )
    out.close()
    return _wait_ready(ServerProc(name, target, proc, log))


def start_redis(workdir: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on the server's CPU (it is part of the system under test)."""
    port = free_port()
    log = (workdir / f"redis-{port}.log").open("wb")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_pinned(cpu),
    )
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return proc, f"redis://{HOST}:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def start_kanal_redis(workdir: Path, cpu: int | None) -> ServerProc:
    """kanal as one cluster member: every event crosses Redis pub/sub (docs/scaling.md)."""
    workdir.mkdir(parents=True, exist_ok=True)
    redis, url = start_redis(workdir, cpu)
    try:
        server = start_kanal(workdir, cpu, redis_url=url, name="kanal-redis")
    except BaseException:
        redis.kill()
        raise
    server.helpers.append(redis)
    return server


def _kanal_config(
    workdir: Path, port: int, redis_url: str = "", sqlite: bool = False, fanout: str = ""
) -> tuple[Target, Path]:
    """The benchmark app on ``port``, as a TOML file for ``kanal serve`` or the embedded app;
    ``sqlite``: the app in a SQLite app store beside it instead (docs/apps.md); ``fanout``:
    ``[scaling] redis_fanout`` (the default if empty)."""
    target = Target("kanal", HOST, port, "1", "app-key", "app-secret")
    config = workdir / f"kanal-{port}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    app = (
        f'id = "{target.app_id}"\nkey = "{target.key}"\nsecret = "{target.secret}"\n'
        "enable_client_messages = true\n"
        f"max_presence_members = {MAX_PRESENCE_MEMBERS}\n"
    )
    apps = "[[apps]]\n" + app
    if sqlite:
        url = f"sqlite://{workdir / f'apps-{port}.db'}"
        store = SqlAppStore.from_url(url)
        store.create(app_from_table(tomllib.loads(app), "bench"))
        store.close()
        apps = f'[apps_store]\nurl = "{url}"\n'
    config.write_text(
        "[server]\n"
        f'host = "{HOST}"\nport = {port}\nlog_level = "warning"\n\n'
        + apps
        + (f'\n[scaling]\nadapter = "redis"\nredis_url = "{redis_url}"\n' if redis_url else "")
        + (f'redis_fanout = "{fanout}"\n' if redis_url and fanout else "")
    )
    return target, config


def start_kanal(
    workdir: Path,
    cpu: int | None,
    redis_url: str = "",
    name: str = "kanal",
    src: Path | None = None,
    sqlite: bool = False,
    fanout: str = "",
) -> ServerProc:
    """``python -m kanal serve --config <toml>`` with the benchmark app on a free port.

    ``src``: run the kanal package found in that ``src`` folder (e.g. a git worktree of an
    earlier commit) instead of this checkout's, to compare two versions in one run.
    ``sqlite``: the app comes from a SQLite app store (``kanal-sqlite``) instead of the file.
    """
    target, config = _kanal_config(workdir, free_port(), redis_url, sqlite, fanout)
    cmd = [sys.executable, "-m", "kanal", "serve", "--config", str(config)]
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    return _spawn(name, cmd, target, workdir / f"kanal-{target.port}.log", cpu, env=env)


def start_kanal_asgi(workdir: Path, cpu: int | None, *, own_port: bool = False) -> ServerProc:
    """kanal embedded in an ASGI app under uvicorn (uvloop, httptools, websockets): the
    clients use uvicorn's port, or with ``own_port`` kanal's own transport beside it."""
    port = free_port()
    target, config = _kanal_config(workdir, port)
    asgi_port = free_port() if own_port else port
    cmd = [
        *(sys.executable, "-m", "uvicorn", "--factory"),
        "bench.asgi_app:own_port" if own_port else "bench.asgi_app:plain",
        *("--host", HOST, "--port", str(asgi_port), "--log-level", "warning"),
        *("--no-access-log", "--loop", "uvloop", "--http", "httptools", "--ws", "websockets"),
    ]
    env = {**os.environ, "KANAL_CONFIG": str(config)}
    name = "kanal-own-port" if own_port else "kanal-asgi"
    return _spawn(name, cmd, target, workdir / f"{name}-{port}.log", cpu, env=env, cwd=REPO)


def soketi_available(soketi_dir: Path | None) -> bool:
    return (
        soketi_dir is not None
        and (soketi_dir / "node_modules" / "@soketi" / "soketi" / "bin" / "server.js").is_file()
    )


def start_soketi(soketi_dir: Path, workdir: Path, cpu: int | None) -> ServerProc:
    """``<soketi-dir>/start.sh PORT`` with user authentication off and presence limits lifted."""
    port = free_port(extra_offsets=(3600, 5001))
    target = Target("soketi", HOST, port, "app-id", "app-key", "app-secret")
    env = dict(os.environ)
    env.update(
        SOKETI_DEFAULT_APP_USER_AUTHENTICATION="false",
        SOKETI_PRESENCE_MAX_MEMBERS=str(MAX_PRESENCE_MEMBERS),
        SOKETI_DEBUG="0",
    )
    cmd = [str(soketi_dir / "start.sh"), str(port)]
    return _spawn("soketi", cmd, target, workdir / f"soketi-{port}.log", cpu, env=env)


def start_floor(workdir: Path, cpu: int | None) -> ServerProc:
    """The floor server on a free port: it checks no key, secret or signature, so the
    target's credentials only make the generator's requests look like the others'."""
    target = Target("floor", HOST, free_port(), "1", "app-key", "app-secret")
    cmd = [str(native.build("floor")), str(target.port)]
    return _spawn("floor", cmd, target, workdir / f"floor-{target.port}.log", cpu)
