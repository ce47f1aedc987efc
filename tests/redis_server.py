"""Redis for the tests: a reachable server, private servers to stop and restart, prefixes.

Ownership rule: every redis-server process a test uses is started and stopped here.

Which Redis: ``KANAL_TEST_REDIS_URL`` if set (it must answer), else a server already on
``redis://127.0.0.1:6379/0``, else a private ``redis-server`` on a free port for the session.
Without any of these the Redis parameters are skipped with the reason. Each test gets a
unique key prefix and its keys are deleted afterwards, so a shared Redis is left as found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

__all__ = [
    "RedisProcess",
    "delete_prefix",
    "prefix",
    "raw",
    "redis_process",
    "redis_url",
]

import pytest
import redis
import redis.asyncio as aredis

URL_ENV = "KANAL_TEST_REDIS_URL"
LOCAL_URL = "redis://127.0.0.1:6379/0"
_READY = b"Ready to accept connections"
_NO_REDIS = (
    f"no Redis to test against: set {URL_ENV}, run redis-server on 127.0.0.1:6379, "
    "or install the redis-server binary"
)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """A private redis-server that a test may stop and start again on the same port."""

    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(_NO_REDIS)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--logfile", ""]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        # A thread reads the log until the ready line, and keeps draining it afterwards so
        # the server never blocks on a full pipe.
        self.reader = threading.Thread(target=_drain, args=(self.process, ready), daemon=True)
        self.reader.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"redis-server on port {self.port} not ready in {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=10)  # the log pipe reached EOF with the process
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.process = self.reader = None


def _drain(process: subprocess.Popen[bytes], ready: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if _READY in line:
            ready.set()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis for the whole session (see the module docstring for the choice)."""
    configured = os.environ.get(URL_ENV)
    if configured:
        if not _answers(configured):
            pytest.fail(f"{URL_ENV}={configured} does not answer PING")
        yield configured
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    if shutil.which("redis-server") is None:
        pytest.skip(_NO_REDIS)
    server = RedisProcess()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A private redis-server, for tests that take Redis away (never the shared one)."""
    if shutil.which("redis-server") is None:
        pytest.skip(_NO_REDIS)
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["node", "channel"])
def redis_fanout(request: pytest.FixtureRequest) -> str:
    """``[scaling] redis_fanout``: every cluster test runs with both fan-out modes."""
    mode: str = request.param
    return mode


@pytest.fixture
def prefix() -> str:
    return f"kt:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def raw(redis_url: str, prefix: str) -> AsyncIterator[aredis.Redis]:
    """A plain client on the test Redis, for inspecting keys; deletes the test's keys."""
    client = aredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
        await delete_prefix(redis_url, prefix)


async def delete_prefix(url: str, prefix: str) -> None:
    client = aredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
