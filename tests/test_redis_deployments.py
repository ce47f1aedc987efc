"""docs/scaling.md's examples for Redis Sentinel, Redis Cluster and a managed Redis (TLS,
password, ACL user) load and run (issue 19 item 5).

Each test takes the example's TOML from the doc, replaces host names, ports, password and
CA path by those of servers it starts (:mod:`tests.redis_topologies`), loads it with
:func:`kanal.settings.load_config` and runs two nodes on the resulting ``redis_url``:
presence and events cross between them, and webhooks are sent. The managed example runs
under the doc's ``ACL SETUSER`` line, and Redis must have denied nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from kanal.adapters import redis_connect
from kanal.settings import load_config
from tests.cluster_nodes import Cluster
from tests.redis_topologies import SentinelGroup, TlsRedis
from tests.wsclient import Clients, trigger

pytestmark = pytest.mark.redis

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
ROOM = "presence-room"
PASSWORD = "kanal-test-secret"


def section(heading: str) -> str:
    """The text of the doc's ``### heading`` section."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n### {heading}")
    end = min(text.find(mark, start + 1) % len(text) for mark in ("\n## ", "\n### "))
    return text[start:end]


def example_url(heading: str, replacements: dict[str, str], tmp_path: Path) -> str:
    """Load the section's TOML example with ``replacements`` applied; its ``redis_url``."""
    [toml] = re.findall(r"```toml\n(.*?)```", section(heading), re.DOTALL)
    for old, new in replacements.items():
        assert old in toml, f"{old!r} is no longer in the {heading} example"
        toml = toml.replace(old, new)
    path = tmp_path / "example.toml"
    path.write_text(toml, encoding="utf-8")
    scaling = load_config(str(path)).scaling
    assert scaling.adapter == "redis"
    return scaling.redis_url


async def two_nodes_work(url: str, prefix: str, tmp_path: Path) -> None:
    """Two nodes on ``url``: presence and events cross between them, webhooks arrive."""
    cluster = Cluster(url, prefix, tmp_path)
    try:
        a = await cluster.node(hook="a")
        b = await cluster.node(hook="b")
        hooks = await cluster.hooks()
        async with Clients() as clients:
            on_a, on_b = await clients.connect(a), await clients.connect(b)
            await on_a.join_presence(ROOM, "ua")
            roster = await on_b.join_presence(ROOM, "ub")
            assert set(roster["ids"]) == {"ua", "ub"}
            await on_a.expect("pusher_internal:member_added", ROOM)
            await trigger(a, ROOM, "hello", "{}")
            await on_b.expect("hello", ROOM)
            await on_b.close()
            await on_a.expect("pusher_internal:member_removed", ROOM)
            await hooks.exactly_once(
                ("member_added", ROOM, "ua"),
                ("member_added", ROOM, "ub"),
                ("member_removed", ROOM, "ub"),
            )
    finally:
        await cluster.close()


async def test_the_sentinel_example_runs(tmp_path: Path, prefix: str) -> None:
    group = SentinelGroup(tmp_path)
    try:
        await asyncio.to_thread(group.start)
        names = [f"sentinel-{n}:26379" for n in (1, 2, 3)]
        ports = [f"127.0.0.1:{sentinel.port}" for sentinel in group.sentinels]
        url = example_url("Redis Sentinel", dict(zip(names, ports, strict=True)), tmp_path)
        await two_nodes_work(url, prefix, tmp_path)
    finally:
        group.stop()


@pytest.mark.redis_cluster
async def test_the_cluster_example_runs(
    redis_cluster_url: str, tmp_path: Path, prefix: str
) -> None:
    seeds = urlsplit(redis_cluster_url).netloc.split(",")
    names = [f"redis-{n}:7000" for n in (1, 2, 3)]
    url = example_url("Redis Cluster", dict(zip(names, seeds, strict=True)), tmp_path)
    await two_nodes_work(url, prefix, tmp_path)


def documented_acl() -> list[str]:
    """The doc's ``ACL SETUSER kanal`` rules, with the test's password."""
    found = re.findall(r"^ACL SETUSER kanal (.*)$", section("Managed Redis"), re.MULTILINE)
    assert len(found) == 1, found
    line: str = found[0]
    return line.replace("CHANGE-ME", PASSWORD).split()


@pytest.fixture
async def managed(tmp_path: Path) -> AsyncIterator[TlsRedis]:
    server = TlsRedis(tmp_path)
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        server.stop()


def admin(server: TlsRedis) -> redis.Redis:
    """The ``default`` user (password only) over TLS."""
    return redis.Redis(
        host="127.0.0.1",
        port=server.server.port,
        password=server.password,
        ssl=True,
        ssl_ca_certs=str(server.ca_file),
    )


async def test_the_managed_example_runs_under_the_documented_acl(
    managed: TlsRedis, tmp_path: Path
) -> None:
    client = admin(managed)
    try:
        client.acl_setuser("kanal", reset=True)  # then the doc's rules, verbatim
        rules = documented_acl()
        client.execute_command("ACL", "SETUSER", "kanal", *rules)  # type: ignore[no-untyped-call]
        client.acl_log_reset()
        replacements = {
            "CHANGE-ME": PASSWORD,
            "redis.example.com:6380": f"127.0.0.1:{managed.server.port}",
            "/etc/kanal/redis-ca.pem": str(managed.ca_file),
        }
        url = example_url("Managed Redis", replacements, tmp_path)
        await two_nodes_work(url, "kanal:", tmp_path)  # nodes stopped: goodbyes included
        # The test's clean-up (tests.redis_server.delete_prefix) lists keys with SCAN, which
        # the kanal user may not; kanal itself never scans.
        denied = [entry for entry in client.acl_log() if entry["object"] != "scan"]
        assert denied == []
    finally:
        client.close()


async def test_a_password_only_url_over_tls(managed: TlsRedis) -> None:
    url = managed.url(f":{managed.password}")
    client = redis_connect.client(url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    wrong = redis_connect.client(managed.url(":wrong"))
    try:
        with pytest.raises(redis.AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()
