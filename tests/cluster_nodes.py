"""Cluster test helpers: kanal nodes sharing one Redis, in this process or as subprocesses.

Ownership rule: every node, subprocess and webhook receiver a cluster test uses is started
and stopped here. :class:`Cluster` (fixtures ``cluster`` and ``faulty_cluster``) starts

* in-process nodes (:meth:`Cluster.node`), built exactly as ``kanal serve`` builds them
  (:func:`kanal.server.build` / :func:`kanal.server.serve`) inside the test's event loop, so
  tests can look at their hub and any exception they raise fails the test;
* real ``python -m kanal serve --config <toml>`` subprocesses (:meth:`Cluster.spawn`), the
  only kind that can be killed with SIGKILL; ready once ``GET /ready`` answers 200.

At teardown it stops the in-process nodes (waiting for their shutdown), kills the
subprocesses by pid, and deletes every Redis key under the test's prefix. Nothing here
sleeps to wait for a state: it polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import pusher
import pytest
from aiohttp import web
from redis.exceptions import RedisError

import kanal
from kanal.config import (
    App,
    Config,
    ScalingSettings,
    ServerSettings,
    WebhookSettings,
    WebhookTarget,
)
from kanal.protocol.webhooks import EVENT_TYPES
from kanal.server import Server, build, serve
from tests.conftest import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    NO_DRAIN,
    QUICK_HTTP_SESSIONS,
    RunningServer,
    make_app,
)
from tests.redis_server import RedisProcess, delete_prefix
from tests.webapp import served
from tests.wsclient import WsClient, api_request, data_of

__all__ = [
    "FAST_HOOKS",
    "LEASE",
    "Cluster",
    "HookReceiver",
    "NodeProcess",
    "TcpProxy",
    "channel_info",
    "channel_names",
    "child_env",
    "cluster",
    "faulty_cluster",
    "free_port",
    "member_events",
    "node_toml",
    "poll",
    "ready",
    "roster_seen_by",
    "user_ids",
]

T = TypeVar("T")
Spec = tuple[str, str] | tuple[str, str, str]  # webhook (name, channel[, user_id])

LEASE = 1.5  # node_lease of every test node: a dead node is reaped within ~2 s
FAST_HOOKS = WebhookSettings(grace_period=0.2, batch_window=0.02, retry_window=2.0)
START_TIMEOUT = 20.0  # a subprocess imports aiohttp, redis, ... before it listens
STOP_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port that was free a moment ago (for nodes that cannot listen on port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 5.0,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``done(result)``; returns that result, fails after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.05)


# --- reading cluster state over the HTTP API ---------------------------------------------------


async def ready(node: RunningServer) -> tuple[int, dict[str, Any]]:
    """``GET /ready``: (status, body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{node.base_url}/ready") as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def channel_names(node: RunningServer, prefix: str = "") -> dict[str, Any]:
    """``GET /apps/1/channels`` (with subscription counts): name -> attributes."""
    params = {"info": "subscription_count"}
    if prefix:
        params["filter_by_prefix"] = prefix
    response = await api_request(node, "GET", f"/apps/{APP_ID}/channels", params=params)
    assert response.status == 200, (response.status, response.body)
    channels: dict[str, Any] = response.json()["channels"]
    return channels


async def channel_info(node: RunningServer, channel: str, info: str = "") -> dict[str, Any]:
    """``GET /apps/1/channels/{channel}?info=...``."""
    params = {"info": info} if info else {}
    response = await api_request(node, "GET", f"/apps/{APP_ID}/channels/{channel}", params=params)
    assert response.status == 200, (response.status, response.body)
    body: dict[str, Any] = response.json()
    return body


async def user_ids(node: RunningServer, channel: str) -> set[str]:
    """``GET /apps/1/channels/{channel}/users`` as a set of ids."""
    response = await api_request(node, "GET", f"/apps/{APP_ID}/channels/{channel}/users")
    assert response.status == 200, (response.status, response.body)
    return {user["id"] for user in response.json()["users"]}


# --- what a client was told ------------------------------------------------------------------


def roster_seen_by(client: WsClient, channel: str) -> set[str]:
    """The member list a client keeps (as pusher-js does): the subscription roster, then
    every member_added / member_removed in arrival order."""
    members: set[str] = set()
    for frame in client.frames:
        if frame.get("channel") != channel:
            continue
        if frame["event"] == "pusher_internal:subscription_succeeded":
            members = set(data_of(frame)["presence"]["ids"])
        elif frame["event"] == "pusher_internal:member_added":
            members.add(data_of(frame)["user_id"])
        elif frame["event"] == "pusher_internal:member_removed":
            members.discard(data_of(frame)["user_id"])
    return members


def member_events(client: WsClient, channel: str) -> list[tuple[str, str]]:
    """Every member_added / member_removed a client received: (added|removed, user_id)."""
    return [
        (frame["event"].rsplit("_", 1)[1], data_of(frame)["user_id"])
        for frame in client.frames
        if frame.get("channel") == channel
        and frame["event"] in ("pusher_internal:member_added", "pusher_internal:member_removed")
    ]


# --- webhooks ----------------------------------------------------------------------------------


@dataclass
class HookReceiver:
    """One HTTP server receiving every node's webhooks, at ``/hook/<node name>``.

    Every request is validated with the official Python SDK (webhooks.md §6); ``events``
    holds (node name, event) in arrival order.
    """

    base_url: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    invalid: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, node: str) -> str:
        return f"{self.base_url}/hook/{node}"

    def matching(
        self, name: str, channel: str, user_id: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        return [
            (node, event)
            for node, event in self.events
            if event["name"] == name
            and event["channel"] == channel
            and (user_id is None or event.get("user_id") == user_id)
        ]

    def count(self, name: str, channel: str, user_id: str | None = None) -> int:
        return len(self.matching(name, channel, user_id))

    async def wait_for(
        self,
        name: str,
        channel: str,
        user_id: str | None = None,
        *,
        count: int = 1,
        within: float = 5.0,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Wait until at least ``count`` matching events arrived; returns them all."""
        try:
            async with asyncio.timeout(within), self.changed:
                await self.changed.wait_for(lambda: self.count(name, channel, user_id) >= count)
        except TimeoutError:
            seen = [(node, e["name"], e["channel"]) for node, e in self.events]
            raise AssertionError(
                f"no {count} x {name} {channel} {user_id or ''} within {within}s; got {seen}"
            ) from None
        return self.matching(name, channel, user_id)

    async def exactly_once(self, *expected: Spec, within: float = 5.0) -> list[str]:
        """Each (name, channel[, user_id]) arrives, and none a second time within a bounded
        window (two grace periods plus a reap interval); returns the nodes that sent them."""
        for spec in expected:
            await self.wait_for(*spec, within=within)
        window = 2 * FAST_HOOKS.grace_period + LEASE / 3 + 0.3
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window), self.changed:
                await self.changed.wait_for(lambda: any(self.count(*s) > 1 for s in expected))
        senders = []
        for spec in expected:
            matching = self.matching(*spec)
            assert len(matching) == 1, f"{spec}: sent {len(matching)} times: {matching}"
            senders.append(matching[0][0])
        return senders

    def _more_than(self, seen: int) -> bool:
        return len(self.events) > seen

    async def settle(self, within: float = 10.0) -> None:
        """Wait until no event has arrived for the exactly-once window (bounded)."""
        quiet = 2 * FAST_HOOKS.grace_period + LEASE / 3 + 0.3
        async with asyncio.timeout(within):
            while True:
                seen = len(self.events)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(quiet), self.changed:
                        await self.changed.wait_for(partial(self._more_than, seen))
                if len(self.events) == seen:
                    return


@contextlib.asynccontextmanager
async def hook_receiver() -> AsyncIterator[HookReceiver]:
    sdk = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET)
    state = HookReceiver()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        payload = sdk.validate_webhook(
            key=request.headers["X-Pusher-Key"],
            signature=request.headers["X-Pusher-Signature"],
            body=body.decode(),
        )
        async with state.changed:
            if payload is None:
                state.invalid += 1
            else:
                node = request.match_info["node"]
                state.events.extend((node, event) for event in payload["events"])
            state.changed.notify_all()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{node}", handle)
    async with served(app) as base:
        state.base_url = base
        yield state


# --- a TCP proxy to partition one node from Redis ---------------------------------------------


class TcpProxy:
    """A Redis URL whose connections go through this process, so that a test can cut or
    freeze one node's link to Redis while the others keep theirs.

    Listens on 127.0.0.1:``port`` and forwards to the host and port of ``redis_url``.
    :meth:`cut` closes every connection and stops listening (connection refused, as when a
    node loses its route to Redis); :meth:`freeze` keeps connections open but forwards
    nothing (packets silently dropped); :meth:`restore` undoes either.
    """

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        if parts.scheme != "redis":
            pytest.skip(f"cannot proxy {parts.scheme}:// Redis URLs")
        self._parts = parts
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        """``redis_url`` (credentials, database) with the proxy's address."""
        userinfo = self._parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return self._parts._replace(netloc=netloc).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._drop_connections()

    def freeze(self) -> None:
        self._flowing.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def _drop_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self._flowing.set()
        await self.cut()


# --- subprocess nodes --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _changed_fields(obj: Any, default: Any, skip: Sequence[str] = ()) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value == getattr(default, f.name):
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


def node_toml(config: Config) -> str:
    """``config`` as the TOML file ``kanal serve --config`` reads (non-default values only)."""
    out = ["[server]", *_changed_fields(config.server, ServerSettings())]
    out += ["", "[webhooks]", *_changed_fields(config.webhooks, WebhookSettings())]
    out += ["", "[scaling]", *_changed_fields(config.scaling, ScalingSettings())]
    for app in config.apps:
        out += ["", "[[apps]]", f"id = {_toml_value(app.id)}"]
        out += _changed_fields(app, App(id="", key="", secret=""), skip=("id", "webhooks"))
        for target in app.webhooks:
            out += ["", "[[apps.webhooks]]", f"url = {_toml_value(target.url)}"]
            out.append(f"event_types = {_toml_value(target.event_types)}")
    return "\n".join(out) + "\n"


@dataclass(eq=False)
class NodeProcess(RunningServer):
    """A ``kanal serve`` subprocess; usable wherever the test helpers take a RunningServer
    (``ws_url``, ``base_url``); it has no in-process ``server`` or ``hub``."""

    process: asyncio.subprocess.Process | None = None
    log_path: Path = Path()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    async def kill(self) -> None:
        """``kill -9``: no goodbye, no cleanup; the cluster must reap this node."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        await self.wait(STOP_TIMEOUT)

    async def terminate(self, within: float = STOP_TIMEOUT) -> int:
        """SIGTERM; returns the exit status (fails if the process outlives ``within``)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        return await self.wait(within)

    async def wait(self, within: float) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"kanal (pid {self.pid}) still running after {within}s\n{self.log()}"
            ) from None


def child_env() -> dict[str, str]:
    """The test's environment without KANAL_* settings that would override the file; the
    child imports the same kanal package as this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANAL_")}
    source = str(Path(kanal.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    return env


async def spawn_kanal(
    args: Sequence[str], log_path: Path, port: int, *, wait_ready: bool = True
) -> NodeProcess:
    """Start ``python -m kanal <args>``; with ``wait_ready`` poll ``GET /ready`` until 200."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kanal",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(),
            cwd=REPO_ROOT,
        )
    node = NodeProcess(cast(Server, None), port, process, log_path)
    if wait_ready:
        await wait_ready_http(node)
    return node


async def wait_ready_http(node: NodeProcess, within: float = START_TIMEOUT) -> None:
    """Poll ``GET /ready`` until it answers 200 (bounded); fail early if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = "no answer"
    while loop.time() < deadline:
        if not node.running:
            raise AssertionError(f"kanal exited with {node.process and node.process.returncode}\n"
                                 f"{node.log()}")  # fmt: skip
        try:
            status, body = await ready(node)
        except (aiohttp.ClientError, OSError) as error:
            last = repr(error)
        else:
            if status == 200:
                return
            last = f"{status} {body}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"kanal not ready within {within}s ({last})\n{node.log()}")


# --- the cluster -------------------------------------------------------------------------------


class Cluster:
    """Nodes of one test cluster: one Redis URL, one key prefix, one webhook receiver."""

    def __init__(self, redis_url: str, prefix: str, workdir: Path, fanout: str = "node") -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.fanout = fanout
        self.workdir = workdir
        self._inprocess: list[tuple[asyncio.Event, asyncio.Task[None], RunningServer]] = []
        self._processes: list[NodeProcess] = []
        self._receiver: HookReceiver | None = None
        self._receiver_cm: contextlib.AbstractAsyncContextManager[HookReceiver] | None = None
        self._proxies: list[TcpProxy] = []

    async def proxy(self) -> TcpProxy:
        """A :class:`TcpProxy` to this cluster's Redis (closed at teardown, after the nodes)."""
        made = TcpProxy(self.redis_url)
        await made.start()
        self._proxies.append(made)
        return made

    def scaling(self, lease: float = LEASE, redis_url: str | None = None) -> ScalingSettings:
        url = redis_url or self.redis_url
        return ScalingSettings(
            adapter="redis",
            redis_url=url,
            redis_prefix=self.prefix,
            node_lease=lease,
            redis_fanout=self.fanout,
        )

    async def hooks(self) -> HookReceiver:
        """The webhook receiver (started on first use)."""
        if self._receiver is None:
            self._receiver_cm = hook_receiver()
            self._receiver = await self._receiver_cm.__aenter__()
        return self._receiver

    async def app(self, hook: str | None = None, **overrides: Any) -> App:
        """The test app; with ``hook`` it sends every webhook event to ``/hook/<hook>``."""
        if hook is not None:
            receiver = await self.hooks()
            target = WebhookTarget(url=receiver.url(hook), event_types=EVENT_TYPES)
            overrides["webhooks"] = (target,)
        return make_app(**overrides)

    def config(
        self,
        apps: Sequence[App],
        *,
        lease: float = LEASE,
        webhooks: WebhookSettings = FAST_HOOKS,
        redis_url: str | None = None,
        **server: Any,
    ) -> Config:
        settings = dataclasses.replace(
            ServerSettings(port=0, shutdown_timeout=2.0, **NO_DRAIN, **QUICK_HTTP_SESSIONS),
            **server,
        )
        return Config(settings, tuple(apps), webhooks, self.scaling(lease, redis_url))

    async def node(
        self,
        *,
        apps: Sequence[App] | None = None,
        hook: str | None = None,
        lease: float = LEASE,
        webhooks: WebhookSettings = FAST_HOOKS,
        redis_url: str | None = None,
        **server: Any,
    ) -> RunningServer:
        """An in-process node (as ``kanal serve`` builds it) on a free port; ``redis_url``
        overrides the cluster's (e.g. to go through a :class:`TcpProxy`)."""
        if apps is None:
            apps = [await self.app(hook)]
        config = self.config(apps, lease=lease, webhooks=webhooks, redis_url=redis_url, **server)
        built = build(config)
        stop = asyncio.Event()
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(built, stop, port.set_result))
        waiters: set[asyncio.Future[Any]] = {port, task}
        done, _ = await asyncio.wait(waiters, timeout=10, return_when="FIRST_COMPLETED")
        if port not in done:
            stop.set()
            if task.done():
                task.result()  # re-raise why serve() failed
            raise RuntimeError("kanal did not start within 10 s")
        running = RunningServer(built, port.result())
        self._inprocess.append((stop, task, running))
        return running

    async def nodes(self, count: int, **options: Any) -> list[RunningServer]:
        return [await self.node(**options) for _ in range(count)]

    async def stop(self, node: RunningServer) -> None:
        """Stop one in-process node gracefully (it says goodbye to the cluster)."""
        for stop, task, running in self._inprocess:
            if running is node:
                stop.set()
                await _stopped(task)
                return
        raise ValueError("not a node of this cluster")

    async def spawn(
        self,
        name: str,
        *,
        apps: Sequence[App] | None = None,
        hook: str | None = None,
        lease: float = LEASE,
        webhooks: WebhookSettings = FAST_HOOKS,
        port: int | None = None,
        args: Sequence[str] = (),
        wait_ready: bool = True,
        **server: Any,
    ) -> NodeProcess:
        """A ``python -m kanal serve --config <toml>`` subprocess on a free port."""
        if apps is None:
            apps = [await self.app(hook)]
        port = free_port() if port is None else port
        config = self.config(apps, lease=lease, webhooks=webhooks, port=port, **server)
        path = self.workdir / f"{name}.toml"
        path.write_text(node_toml(config), encoding="utf-8")
        log_path = self.workdir / f"{name}.{len(self._processes)}.log"
        node = await spawn_kanal(
            ["serve", "--config", str(path), *args], log_path, port, wait_ready=False
        )
        self._processes.append(node)
        if wait_ready:
            await wait_ready_http(node)
        return node

    async def close(self) -> None:
        errors: list[BaseException] = []
        for stop, _task, _running in self._inprocess:
            stop.set()
        for _stop, task, _running in self._inprocess:
            try:
                await _stopped(task)
            except Exception as error:  # report every node's failure, clean up the rest
                errors.append(error)
        for process in self._processes:
            await process.kill()
        for proxy in self._proxies:
            await proxy.close()
        if self._receiver_cm is not None:
            await self._receiver_cm.__aexit__(None, None, None)
        # A private Redis a test left stopped is discarded anyway.
        with contextlib.suppress(RedisError, OSError):
            await delete_prefix(self.redis_url, self.prefix)
        if errors:
            raise errors[0]


async def _stopped(task: asyncio.Task[None]) -> None:
    """Wait for a node's ``serve`` task to end by itself; a node that does not stop within
    STOP_TIMEOUT fails the test (``wait_for`` would cancel it, and a task that swallows the
    cancellation would then look as if it had stopped)."""
    done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        raise AssertionError(f"a kanal node did not stop within {STOP_TIMEOUT}s")
    task.result()  # re-raise why serve() failed


@pytest.fixture
async def cluster(
    redis_url: str, prefix: str, tmp_path: Path, redis_fanout: str
) -> AsyncIterator[Cluster]:
    """Nodes on the session's Redis, under a key prefix of their own, in each fan-out mode."""
    made = Cluster(redis_url, prefix, tmp_path, redis_fanout)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def faulty_cluster(
    redis_process: RedisProcess, prefix: str, tmp_path: Path, redis_fanout: str
) -> AsyncIterator[tuple[Cluster, RedisProcess]]:
    """Nodes on a private redis-server that the test may stop and start again."""
    made = Cluster(redis_process.url, prefix, tmp_path, redis_fanout)
    try:
        yield made, redis_process
    finally:
        await made.close()
