"""Reload without restart (docs/apps.md, "Reload"): a real ``kanal serve --config FILE
--pid-file FILE`` with live WebSocket clients; the test rewrites the file, sends SIGHUP (or runs
``kanal reload``) and waits for the log line that says what the reload did.

The process's log is read from its stdout pipe as it is written, so every wait is on a line
arriving (bounded), never on time passing. Every process is stopped by pid in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from kanal.config import App, Config, ServerSettings, WebhookSettings, WebhookTarget
from kanal.reload import AppChanges, app_changes, fixed_changes
from kanal.server import Server
from tests.cluster_nodes import (
    REPO_ROOT,
    START_TIMEOUT,
    Cluster,
    HookReceiver,
    NodeProcess,
    child_env,
    cluster,
    free_port,
    hook_receiver,
    node_toml,
    poll,
    wait_ready_http,
)
from tests.conftest import APP_KEY, APP_SECRET, NO_DRAIN
from tests.test_cluster_workers import (
    children_of,
    current_workers,
    needs_proc,
    sockets_by_worker,
    worker_of,
    worker_pool,
)
from tests.wsclient import Clients, WsClient, api_request, end_process, trigger

__all__ = ["cluster"]

WAIT = 10.0  # seconds for a log line or a close to arrive
HOOKS = WebhookSettings(grace_period=0.2, batch_window=0.02, retry_window=2.0)


def app(app_id: str, **overrides: Any) -> App:
    """App ``app_id`` with key ``k<id>`` and secret ``s<id>-secret``."""
    fields: dict[str, Any] = {"key": f"k{app_id}", "secret": f"s{app_id}-secret", **overrides}
    return App(id=app_id, **fields)


# --- the pure part -------------------------------------------------------------------------


def test_app_changes_groups_apps_by_what_a_reload_does_to_them() -> None:
    running = [app("1"), app("2"), app("3"), app("4", enabled=False), app("5")]
    loaded = [
        app("1"),
        app("3", enabled=False),
        app("4", max_connections=5, enabled=False),
        app("5", secret="rotated"),
        app("6"),
    ]
    assert app_changes(running, loaded) == AppChanges(
        added=("6",), changed=("4", "5"), removed=("2",), disabled=("3",)
    )
    assert app_changes(running, loaded).closed == ("2", "3")
    assert app_changes(running, running) == AppChanges()


def test_fixed_changes_name_every_setting_that_needs_a_restart() -> None:
    running = Config(apps=(app("1"),))
    loaded = Config(
        server=ServerSettings(port=7001, workers=2),
        apps=(app("1", secret="other"), app("2")),
        webhooks=WebhookSettings(grace_period=1.0),
    )
    assert fixed_changes(running, loaded) == [
        "server.port",
        "server.workers",
        "webhooks.grace_period",
    ]
    assert fixed_changes(running, Config(apps=(app("9"),))) == []


# --- a real kanal serve --------------------------------------------------------------------


class Kanal(NodeProcess):
    """``kanal serve`` whose log lines arrive through a pipe, each waking :meth:`line`."""

    lines: list[str]
    arrived: asyncio.Condition
    reader: asyncio.Task[None]

    def start_reading(self) -> None:
        self.lines, self.arrived = [], asyncio.Condition()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self.arrived:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.arrived.notify_all()

    def mark(self) -> int:
        return len(self.lines)

    async def line(self, text: str, since: int, count: int = 1) -> list[str]:
        """Wait (bounded) until ``count`` lines from ``since`` on contain ``text``."""

        def found() -> list[str]:
            return [line for line in self.lines[since:] if text in line]

        try:
            async with asyncio.timeout(WAIT), self.arrived:
                await self.arrived.wait_for(lambda: len(found()) >= count)
        except TimeoutError:
            tail = "\n".join(self.lines[-30:])
            raise AssertionError(f"no {count} x {text!r} logged within {WAIT}s:\n{tail}") from None
        return found()

    def log(self, tail: int = 60) -> str:
        return "\n".join(self.lines[-tail:])


def write_config(path: Path, port: int, apps: Sequence[App], **server: Any) -> None:
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": port, **NO_DRAIN, **server}
    settings = ServerSettings(**fields)
    path.write_text(node_toml(Config(settings, tuple(apps), HOOKS)), encoding="utf-8")


@contextlib.asynccontextmanager
async def kanal(tmp_path: Path, apps: Sequence[App]) -> AsyncIterator[tuple[Kanal, Path]]:
    """``kanal serve --config FILE --pid-file FILE`` until ready; yields it and its config."""
    port, config = free_port(), tmp_path / "kanal.toml"
    write_config(config, port, apps)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kanal", "serve", "--config", str(config),
        "--pid-file", str(tmp_path / "kanal.pid"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=child_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    node = Kanal(cast(Server, None), port, process)
    node.start_reading()
    try:
        await wait_ready_http(node, START_TIMEOUT)
        yield node, config
    finally:
        await end_process(process)
        node.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.reader


async def kanal_reload(pid_file: Path) -> str:
    """``kanal reload --pid-file FILE``; returns what it printed, asserting success."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kanal", "reload", "--pid-file", str(pid_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    assert process.returncode == 0, out
    return out.decode()


async def test_reload_applies_apps_and_closes_removed_and_disabled_ones(tmp_path: Path) -> None:
    """A changed limit holds for new connections, a new app works fully (connect, trigger,
    webhook), a removed and a disabled app's connections are closed with 4003."""
    async with (
        hook_receiver() as receiver,
        kanal(tmp_path, [app("1"), app("2"), app("3")]) as (
            node,
            config,
        ),
        Clients() as clients,
    ):
        ones = [await clients.connect(node, key="k1") for _ in range(2)]
        two, three = await clients.connect(node, key="k2"), await clients.connect(node, key="k3")
        new_app = App(id="9", key=APP_KEY, secret=APP_SECRET, webhooks=(hook(receiver),))
        apps = [app("1", max_connections=2), app("3", enabled=False), new_app]
        write_config(config, node.port, apps)
        since = node.mark()
        os.kill(node.pid, signal.SIGHUP)
        [done] = await node.line("reload: configuration reloaded", since)
        expected = "added 9, changed 1, removed 2, disabled 3; 2 connections updated, 2 closed"
        assert expected in done, done

        assert await two.expect_closed() == 4003
        assert await three.expect_closed() == 4003
        for one in ones:
            await one.ping()  # admitted before: the new limit does not close them
        third = await clients.open(node, key="k1")
        assert await third.expect_closed() == 4004
        refused = {key: await clients.open(node, key=key) for key in ("k2", "k3")}
        assert await refused["k2"].expect_closed() == 4001
        assert await refused["k3"].expect_closed() == 4003
        await check_new_app_works(node, clients, receiver)


def hook(receiver: HookReceiver) -> WebhookTarget:
    return WebhookTarget(url=receiver.url("reloaded"), event_types=("channel_occupied",))


async def check_new_app_works(node: Kanal, clients: Clients, receiver: HookReceiver) -> None:
    client = await clients.connect(node)
    await client.subscribe("private-news")
    await trigger(node, "private-news", "headline", "hello", app_id="9")
    assert (await client.expect("headline", "private-news"))["data"] == "hello"
    await receiver.wait_for("channel_occupied", "private-news")
    assert receiver.invalid == 0  # signed with the new app's secret


async def test_a_rotation_by_reload_reaches_open_connections(tmp_path: Path) -> None:
    """A connection opened before the reload: its app's new secret and its previous one both
    sign its subscriptions, and its webhooks go to the endpoint added, with the new secret."""
    old = App(id="9", key=APP_KEY, secret="s9-old-secret")
    async with hook_receiver() as receiver, kanal(tmp_path, [old]) as (node, config):
        async with Clients() as clients:
            signs_new = await clients.connect(node, secret=APP_SECRET)
            signs_old = await clients.connect(node, secret=old.secret)
            rotated = App(
                id="9",
                key=APP_KEY,
                secret=APP_SECRET,
                previous_secret=old.secret,
                previous_secret_expires_at=4102444800.0,  # 2100: the test never reaches it
                webhooks=(hook(receiver),),
            )
            write_config(config, node.port, [rotated])
            since = node.mark()
            os.kill(node.pid, signal.SIGHUP)
            [done] = await node.line("reload: configuration reloaded", since)
            assert "changed 9, removed -, disabled -; 2 connections updated" in done, done
            for client in (signs_new, signs_old):
                await client.subscribe(f"private-{client.socket_id}")
                await receiver.wait_for("channel_occupied", f"private-{client.socket_id}")
        assert receiver.invalid == 0  # signed with the new secret, as the receiver checks


async def test_an_invalid_file_leaves_the_running_config_and_names_the_key(
    tmp_path: Path,
) -> None:
    """``kanal reload`` with a broken file: an ERROR naming the key, nothing changes; then a
    good file that also changes a listener setting: a WARNING names it, the apps apply."""
    async with kanal(tmp_path, [app("1")]) as (node, config), Clients() as clients:
        client = await clients.connect(node, key="k1")
        text = config.read_text(encoding="utf-8")
        config.write_text(text + "max_connections = -1\n", encoding="utf-8")
        since = node.mark()
        assert "sent SIGHUP" in await kanal_reload(tmp_path / "kanal.pid")
        [error] = await node.line("reload refused", since)
        assert "ERROR" in error and "apps[0].max_connections" in error, error
        await client.ping()
        await trigger(node, "news", "still", "1", app_id="1", key="k1", secret="s1-secret")
        assert (await clients.connect(node, key="k1")).socket_id

        write_config(config, node.port, [app("1"), app("2")], drain_seconds=5.0)
        since = node.mark()
        os.kill(node.pid, signal.SIGHUP)
        [warning] = await node.line("server.drain_seconds", since)
        assert "WARNING" in warning and "needs a restart" in warning, warning
        await node.line("reload: configuration reloaded: 2 apps (added 2", since)
        assert (await clients.connect(node, key="k2")).socket_id
        await client.ping()


async def test_kanal_reload_says_what_is_wrong_with_the_pid_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.pid"
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n", encoding="ascii")
    for pid_file, expected in (
        (missing, f"kanal: error: no pid file at {missing}: is kanal serve running with"),
        (stale, f"kanal: error: the pid file {stale} names pid 999999999, which is not a running"),
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kanal", "reload", "--pid-file", str(pid_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
        assert process.returncode == 1
        assert err.decode().startswith(expected), err


async def test_api_requests_see_the_reloaded_app_at_once(tmp_path: Path) -> None:
    """The HTTP API authenticates with the app as reloaded: a rotated secret works at once
    (and the old one with it, as the previous secret), a removed app is unknown (404)."""
    async with kanal(tmp_path, [app("1"), app("2")]) as (node, config):
        rotated = app("1", secret="s1-new-secret", previous_secret="s1-secret",
                      previous_secret_expires_at=4102444800.0)  # fmt: skip
        write_config(config, node.port, [rotated])
        since = node.mark()
        os.kill(node.pid, signal.SIGHUP)
        await node.line("reload: configuration reloaded", since)
        for secret in ("s1-new-secret", "s1-secret"):
            await trigger(node, "news", "e", "x", app_id="1", key="k1", secret=secret)
        gone = await api_request(node, "POST", "/apps/2/events", body={}, key="k2")
        assert gone.status == 404, gone.body


@pytest.mark.redis
@needs_proc
async def test_every_worker_reloads(cluster: Cluster) -> None:
    """``--workers 2`` with Redis: SIGHUP to the parent reloads both workers; a removed app's
    connections on each worker are closed with 4003 and the new app is served by both."""
    async with worker_pool(cluster, "reloading", apps=[app("1"), app("2")]) as (parent, port):
        workers = await current_workers(parent)
        async with Clients() as clients:
            removed = await connections_on_every_worker(clients, parent, "k2", workers, port)
            config = cluster.config([app("1"), app("3")], port=port)
            (cluster.workdir / "reloading.toml").write_text(node_toml(config), encoding="utf-8")
            os.kill(parent.pid, signal.SIGHUP)
            await poll(
                lambda: asyncio.to_thread(parent.log, 400),
                lambda log: log.count("added 3, changed -, removed 2") == len(workers),
                within=WAIT,
                what="both workers' reload lines",
            )
            closes = await asyncio.gather(*(client.expect_closed() for client in removed))
            assert set(closes) == {4003}
            await connections_on_every_worker(clients, parent, "k3", workers, port)
            await check_a_restarted_worker_serves_the_reloaded_apps(cluster, parent, port)


async def check_a_restarted_worker_serves_the_reloaded_apps(
    cluster: Cluster, parent: NodeProcess, port: int
) -> None:
    """The parent read the apps at the SIGHUP too: a worker it starts after a crash serves
    them, not a file changed since without a reload."""
    unsignalled = cluster.config([app("1")], port=port)
    (cluster.workdir / "reloading.toml").write_text(node_toml(unsignalled), encoding="utf-8")
    dead = (await current_workers(parent))[0]
    os.kill(dead, signal.SIGKILL)
    workers = await poll(
        lambda: asyncio.to_thread(children_of, parent.pid),
        lambda found: len(found) == 2 and dead not in found,
        within=20,
        what="the replacement worker",
    )
    await poll(
        lambda: asyncio.to_thread(sockets_by_worker, workers, port, "0A"),
        lambda held: all(held.values()),
        within=20,
        what="the replacement listening",
    )
    async with Clients() as clients:
        await connections_on_every_worker(clients, parent, "k3", workers, port)


async def connections_on_every_worker(
    clients: Clients, parent: NodeProcess, key: str, workers: list[int], port: int
) -> list[WsClient]:
    """Connections with ``key`` until each worker holds one (SO_REUSEPORT spreads them: 20
    all on one of two workers is ~2e-6 likely)."""
    opened: list[WsClient] = []
    while {worker_of(client, workers, port) for client in opened} != set(workers):
        assert len(opened) < 20, sockets_by_worker(workers, port, "01")
        opened.append(await clients.connect(parent, key=key))
    return opened
