"""Redis for the tests: a reachable server, private servers to stop and restart, prefixes.

Ownership rule: every redis-server process a test uses is started and stopped here (or, for
deployments of several servers, in :mod:`tests.redis_topologies`, through
:class:`RedisProcess`).

Which Redis: ``redis_url`` is parametrised over the deployments kanal supports, so every
test that takes it (the adapter contract suite, the cluster and publisher tests) runs once
on each: ``single`` and ``cluster`` (marked ``redis_cluster``; deselect with
``-m "not redis_cluster"``). ``KANAL_TEST_REDIS_TOPOLOGIES`` (``single,cluster`` by default)
narrows the list.

- ``single``: ``KANAL_TEST_REDIS_URL`` if set (it must answer), else a server already on
  ``redis://127.0.0.1:6379/0``, else a private ``redis-server`` on a free port.
- ``cluster``: ``KANAL_TEST_REDIS_CLUSTER_URL`` if set (a ``redis+cluster://`` URL), else
  three private masters joined by ``redis-cli --cluster create`` for the session.

Without a server the Redis parameters are skipped with the reason. Each test gets a unique
key prefix and its keys are deleted afterwards, so a shared Redis is left as found.
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
from typing import Any

__all__ = [
    "RedisProcess",
    "client",
    "delete_prefix",
    "free_port",
    "prefix",
    "raw",
    "redis_process",
    "redis_url",
]

import pytest
import redis
import redis.asyncio as aredis

from kanal.adapters import redis_connect

URL_ENV = "KANAL_TEST_REDIS_URL"
CLUSTER_URL_ENV = "KANAL_TEST_REDIS_CLUSTER_URL"
TOPOLOGIES_ENV = "KANAL_TEST_REDIS_TOPOLOGIES"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """A private redis-server that a test may stop and start again on the same port.

    ``options`` are extra command-line options (replication, cluster mode, TLS, ...);
    ``config`` is a configuration file to start from (a Sentinel needs a writable one),
    and ``ready`` the log line that says the server is serving.
    """

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    options: tuple[str, ...] = ()
    config: str | None = None
    ready: bytes = _READY

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(_NO_REDIS)
        args = [binary] + ([self.config] if self.config else [])
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--logfile", "", *self.options]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        # A thread reads the log until the ready line, and keeps draining it afterwards so
        # the server never blocks on a full pipe.
        drain_args = (self.process, ready, self.ready)
        self.reader = threading.Thread(target=_drain, args=drain_args, daemon=True)
        self.reader.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"redis-server on port {self.port} not ready in {timeout} s")

    def kill(self) -> None:
        """SIGKILL, as a crashed host: no goodbye to replicas, clients or Sentinels."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.stop()

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


def _drain(process: subprocess.Popen[bytes], ready: threading.Event, marker: bytes) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line:
            ready.set()


_URL_FIXTURES = {"single": "single_redis_url", "cluster": "redis_cluster_url"}


def topologies(*marks: pytest.MarkDecorator) -> list[Any]:
    """One pytest parameter per Redis deployment under test (ids ``redis``, ``redis-cluster``)."""
    wanted = [name.strip() for name in os.environ.get(TOPOLOGIES_ENV, "single,cluster").split(",")]
    params = {
        "single": pytest.param("single", marks=marks, id="redis"),
        "cluster": pytest.param(
            "cluster", marks=(*marks, pytest.mark.redis_cluster), id="redis-cluster"
        ),
    }
    return [params[name] for name in wanted if name]


def topology_url(request: pytest.FixtureRequest, topology: str) -> str:
    """The session's URL of one deployment (``request.param`` of :func:`topologies`)."""
    url: str = request.getfixturevalue(_URL_FIXTURES[topology])
    return url


@pytest.fixture(scope="session", params=topologies())
def redis_url(request: pytest.FixtureRequest) -> str:
    """A reachable Redis deployment for the whole session (see the module docstring)."""
    return topology_url(request, request.param)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of three masters for the session, as a ``redis+cluster://`` URL."""
    configured = os.environ.get(CLUSTER_URL_ENV)
    if configured:
        yield configured
        return
    if shutil.which("redis-server") is None:
        pytest.skip(_NO_REDIS)
    unsupported = redis_connect.redis_url_problem("redis+cluster://127.0.0.1:7000")
    if unsupported:
        pytest.skip(unsupported)
    from tests.redis_topologies import RedisClusterGroup

    group = RedisClusterGroup(tmp_path_factory.mktemp("redis-cluster"))
    try:
        group.start()
        yield group.url
    finally:
        group.stop()


@pytest.fixture(scope="session")
def single_redis_url() -> Iterator[str]:
    """One Redis server for the session."""
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
    raw_client = client(redis_url)
    # A cluster client fetches the slot map now, not in the middle of the test's first look.
    await redis_connect.prepare(raw_client)
    try:
        yield raw_client
    finally:
        await raw_client.aclose()
        await delete_prefix(redis_url, prefix)


def client(url: str) -> aredis.Redis:
    """A client of any ``redis_url`` form, as kanal builds them (a Redis Cluster too)."""
    return redis_connect.client(url)


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete the test's keys (on every master of a cluster; one key per command, since a
    cluster refuses a DEL over several slots)."""
    raw_client = client(url)
    try:
        async for key in raw_client.scan_iter(match=f"{prefix}*", count=1000):
            await raw_client.delete(key)
    finally:
        await raw_client.aclose()
