"""The composition root: every object is built and connected here, and only here.

``run(config)`` builds the app store, the cluster adapters, the webhook dispatcher, the hub
and the transports, serves until SIGINT/SIGTERM, then drains (:mod:`kanal.drain`: /ready
503, upgrades refused, clients closed with 4200 in batches spread over ``drain_seconds``),
stops listening and gives queued webhooks a bounded time to go out. Given a way to read the
configuration again, it reloads the apps on SIGHUP (:mod:`kanal.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kanal import logs
from kanal.adapters.base import Broker, Membership
from kanal.adapters.memory import MemoryBroker, MemoryMembership
from kanal.adapters.redis import RedisMembership, default_node_id, webhook_queue_client
from kanal.adapters.redis import connect as redis_connect
from kanal.adapters.resilient import ResilientBroker, ResilientMembership
from kanal.app_stores.cache import GONE, CachedAppStore
from kanal.app_stores.database import DriverMissing
from kanal.app_stores.sql import SqlAppStore
from kanal.apps import AppStore, StaticAppStore
from kanal.cluster import ClusterMaintainer
from kanal.config import App, Config, ServerSettings
from kanal.console import Recorder
from kanal.drain import close_in_batches, drain, ready_when_flushed, stop_on_signals
from kanal.hub import Hub, NullWebhooks, WebhookSink
from kanal.metrics import Metrics
from kanal.metrics.sources import register_hooks, register_node, register_queue, register_webhooks
from kanal.process import PidFile, PidFileError, raise_open_files_limit
from kanal.protocol.errors import CloseCode
from kanal.reload import Reloader, reload_on_sighup
from kanal.service import ChannelsApi
from kanal.settings import DEV_APP, ConfigError, is_default_credentials
from kanal.settings.render import startup_summary
from kanal.transport.admission import Admission
from kanal.transport.console import Console
from kanal.transport.frames import text_frame, text_payload
from kanal.transport.http import HttpApi, Scrape
from kanal.transport.listener import (
    Listener,
    ListenError,
    MetricsListener,
    binds,
    probe_bind,
    tls_context,
)
from kanal.transport.websocket import WebSocketEndpoint, new_socket_id
from kanal.transport.worker_metrics import WorkerGroup, WorkerMetrics
from kanal.transport.xhr import XhrEndpoint
from kanal.webhooks import Hooks, RedisWebhookQueue, WebhookDispatcher
from kanal.workers import supervise

__all__ = ["Server", "StartupError", "build", "run", "serve"]

log = logging.getLogger("kanal")

TICK_SECONDS = 1.0


class Readiness:
    """What ``GET /ready`` reports: not ready while draining or while a dependency is down."""

    def __init__(self) -> None:
        self.draining = False
        self.checks: list[Callable[[], tuple[bool, str]]] = []

    def check(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        for probe in self.checks:
            ok, detail = probe()
            if not ok:
                return False, detail
        return True, "ok"


@dataclass
class Server:
    """A built, not yet started, kanal node."""

    config: Config
    hub: Hub
    service: ChannelsApi
    apps: AppStore
    http: HttpApi
    websocket: WebSocketEndpoint
    listener: Listener
    readiness: Readiness
    starters: list[Callable[[], Awaitable[None]]]
    closers: list[Callable[[], Awaitable[None]]]
    ticker: asyncio.Future[None] | None = None
    hooks: Hooks | None = None  # an embedded node's in-process hooks (kanal.asgi)
    webhooks: WebhookSink | None = None  # the hub's sink: dispatcher, cluster queue, or null
    metrics_listener: MetricsListener | None = None  # with [server] metrics_port
    xhr: XhrEndpoint | None = None  # pusher-js's HTTP transports ([server] http_transports)

    async def start(self) -> None:
        """Start what runs beside the transports: cluster upkeep, webhooks, the heartbeat
        tick. ``serve`` calls it before listening; an embedding app from its lifespan."""
        for start in self.starters:
            await start()
        self.ticker = asyncio.ensure_future(_tick(self.hub))

    async def stop(self, *, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """Close every connection left with 4200 (clients reconnect), let ``drain`` wait for
        the transport, then stop upkeep and flush webhooks. Safe to call if ``start`` failed.
        ``serve`` drains first (:func:`kanal.drain.drain`); an embedded node stops here. Each
        phase is logged (docs/deployment.md, "Logs")."""
        began = time.monotonic()
        self.readiness.draining = True
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        log.info(
            "shutdown: /ready answers 503; closing %d connections with 4200 (reconnect)",
            self.hub.connection_count,
        )
        # kanal's own connections are handed over (released, then closed), all at once; an
        # ASGI server's are closed by the hub.
        await close_in_batches(self.listener, 0.0, ready_when_flushed(self.webhooks))
        self.hub.close_all(CloseCode.RECONNECT, "Generic reconnect immediately")
        await self.hub.console.close()  # answers the consoles' long polls: nothing to drain
        if drain is not None:
            log.info(
                "shutdown: waiting up to %g s for connections and requests to end",
                self.config.server.shutdown_timeout,
            )
            await drain()
            log.info("shutdown: %d connections left after draining", self.hub.connection_count)
        for closer in self.closers:
            await closer()
        logs.flush_suppressed()
        log.info("shutdown: done in %.1f s", time.monotonic() - began)


Lifecycle = list[Callable[[], Awaitable[None]]]


def _webhook_sink(
    config: Config,
    metrics: Metrics,
    apps: AppStore,
    hooks: Hooks | None,
    recorder: Recorder,
    reloadable: bool,
) -> tuple[WebhookSink, Lifecycle, Lifecycle]:
    """Local delivery, or (cluster mode) the shared Redis queue in front of it.

    In-process hooks are one more target of the same pipeline: on one node, of the dispatcher,
    which an embedded node therefore gets even without endpoints; in a cluster, of the queue's
    hooks stream, which every node writes for the hooks of the embedded processes (a node
    without endpoints or hooks, ``kanal serve``'s, included; docs/scaling.md). A node whose
    apps may be reloaded is built as if it had endpoints: a reload may add some.
    """
    if hooks is not None:
        register_hooks(metrics, hooks)
    scaling = config.scaling
    cluster = scaling.adapter == "redis"
    # A SQL store's apps can gain endpoints at any time (docs/apps.md), and so can reloaded
    # ones: then always a dispatcher.
    has_webhooks = (
        reloadable or bool(config.apps_store.url) or any(app.webhooks for app in config.apps)
    )
    if not has_webhooks and hooks is None and not cluster:
        return NullWebhooks(), [], []
    dispatcher = WebhookDispatcher(
        config.webhooks, hooks=None if cluster else hooks, console=recorder
    )
    if not cluster:
        if has_webhooks:
            register_webhooks(metrics, dispatcher, None)
        return dispatcher, [dispatcher.start], [dispatcher.close]
    # webhooks.md in a cluster: one shared stream, one sender (docs/scaling.md). The queue
    # starts and closes the dispatcher and the hooks itself.
    client = webhook_queue_client(scaling.redis_url)
    queue = RedisWebhookQueue(
        client,
        prefix=scaling.redis_prefix,
        consumer=default_node_id(),
        settings=config.webhooks,
        dispatcher=dispatcher,
        apps=apps.by_id,
        hooks=hooks,
        lead_webhooks=has_webhooks,
    )
    if has_webhooks:
        register_webhooks(metrics, dispatcher, queue)
        register_queue(metrics, queue)
    return queue, [queue.start], [queue.close, client.aclose]


@dataclass
class _Cluster:
    """The Redis side of a cluster member, wired once the hub exists."""

    config: Config
    membership: ResilientMembership
    redis: RedisMembership
    broker: ResilientBroker
    starters: Lifecycle
    closers: Lifecycle

    def attach(self, hub: Hub, apps: AppStore, readiness: Readiness) -> ClusterMaintainer:
        readiness.checks += [self.membership.status, self.broker.status]
        return ClusterMaintainer(
            hub,
            self.membership,
            self.redis,
            apps.by_id,
            lease=self.config.scaling.node_lease,
            wall=time.time,
            broker=self.broker,
        )


def _adapters(config: Config) -> tuple[Membership, Broker, _Cluster | None]:
    """``[scaling] adapter``: memory (default, one process) or redis (a cluster member)."""
    scaling = config.scaling
    if scaling.adapter != "redis":
        return MemoryMembership(), MemoryBroker(), None
    redis, pubsub = redis_connect(
        scaling.redis_url,
        prefix=scaling.redis_prefix,
        lease=scaling.node_lease,
        fanout=scaling.redis_fanout,
    )
    membership, broker = ResilientMembership(redis), ResilientBroker(pubsub)
    cluster = _Cluster(config, membership, redis, broker, [pubsub.start], [pubsub.close])
    return membership, broker, cluster


def build(
    config: Config,
    *,
    frame: Callable[[bytes], bytes] = text_frame,
    hooks: bool = False,
    group: WorkerGroup | None = None,
    reloadable: bool = False,
) -> Server:
    """Wire a node from ``config``; nothing is started.

    ``frame`` turns each broadcast's JSON into what a connection is handed, once per event:
    a complete RFC 6455 frame for kanal's own transport, the JSON itself for an ASGI server
    (which frames messages itself). ``hooks``: give the node a registry of in-process hooks
    (``Server.hooks``, for an embedding app; docs/embedding.md). ``group``: this node is a
    worker of ``kanal serve --workers N``, whose scrapes report the whole group.
    ``reloadable``: the apps may change while the node runs (:mod:`kanal.reload`).
    """
    apps, store = _app_store(config)
    metrics = Metrics()
    registry = Hooks(config.webhooks) if hooks else None
    recorder = Recorder()
    webhooks, webhook_start, webhook_close = _webhook_sink(
        config, metrics, apps, registry, recorder, reloadable
    )
    readiness = Readiness()
    membership, broker, cluster = _adapters(config)
    hub = Hub(
        membership=membership,
        broker=broker,
        webhooks=webhooks,
        frame=frame,
        monotonic=time.monotonic,
        wall=time.time,
        max_connections=config.server.max_connections,
        metrics=metrics,
        console=recorder,
    )
    settings = config.server
    register_node(metrics, hub, [app.id for app in apps.all()])
    starters: Lifecycle = list(webhook_start)
    closers: Lifecycle = []
    if store is not None:
        _attach_store(store, hub, readiness)
        starters.insert(0, store.start)  # the apps are loaded before the node listens
        closers.append(store.close)
    if cluster is not None:
        maintainer = cluster.attach(hub, apps, readiness)
        starters = [*cluster.starters, maintainer.start, *starters]
        leave = _phase("leaving the cluster: this node's entries leave Redis", maintainer.close)
        closers = [leave, *cluster.closers]
    if webhook_close:
        wait = config.webhooks.shutdown_timeout
        flush = _phase(f"webhooks: delivering what is queued (up to {wait:g} s)", webhook_close[0])
        closers += [flush, *webhook_close[1:]]
    admission = Admission(
        apps,
        path_prefix=settings.path_prefix,
        strict_protocol=settings.strict_protocol_version,
        trust_proxy_headers=settings.trust_proxy_headers,
        max_connections_per_ip_per_second=settings.max_connections_per_ip_per_second,
    )
    websocket = WebSocketEndpoint(
        hub,
        admission,
        max_frame_bytes=settings.max_frame_bytes,
        max_output_buffer_bytes=settings.max_output_buffer_bytes,
        coalesce_writes=settings.coalesce_writes,
        trace=settings.verbose,
    )
    xhr = _xhr_endpoint(hub, admission, settings, frame)
    if xhr is not None:
        sessions = xhr  # narrowed for the closure
        metrics.gauge(
            "kanal_http_sessions",
            "Open HTTP sessions (pusher-js xhr_streaming / xhr_polling), in kanal_connections too",
            lambda: len(sessions.open_sessions()),
        )
    service = ChannelsApi(hub)
    console = None
    if settings.admin_token:
        console = Console(
            settings.admin_token,
            recorder,
            service,
            apps,
            cluster=cluster is not None,
            node_connections=lambda: hub.connection_count,
        )
    scrape: Scrape = metrics.scrape
    if group is not None:  # one scrape reports every worker (docs/metrics.md)
        workers = WorkerMetrics(group, metrics.render)
        starters.append(workers.start)
        closers.append(workers.close)
        scrape = workers.scrape
    metrics_listener = None
    if settings.metrics_port:  # then the HTTP API's port does not serve it (docs/metrics.md)
        metrics_listener = MetricsListener(scrape, max_request_bytes=settings.max_request_bytes)
        starters.append(_metrics_port_starter(metrics_listener, settings))
        closers.insert(0, metrics_listener.stop)
    http = HttpApi(
        service,
        apps,
        hub.metrics,
        path_prefix=settings.path_prefix,
        max_request_bytes=settings.max_request_bytes,
        expose_signature_hint=settings.expose_signature_hint,
        ready=readiness.check,
        console=console,
        scrape=None if metrics_listener is not None else scrape,
    )
    listener = Listener(
        websocket,
        http,
        xhr=xhr,
        max_request_bytes=settings.max_request_bytes,
        shutdown_timeout=settings.shutdown_timeout,
        eager=True,  # cluster mode too: Redis calls step into a task first (resilient.py)
    )
    return Server(
        config,
        hub,
        service,
        apps,
        http,
        websocket,
        listener,
        readiness,
        starters,
        closers,
        hooks=registry,
        webhooks=webhooks,
        metrics_listener=metrics_listener,
        xhr=xhr,
    )


def _as_is(frame: bytes) -> bytes:
    return frame


def _xhr_endpoint(
    hub: Hub,
    admission: Admission,
    settings: ServerSettings,
    frame: Callable[[bytes], bytes],
) -> XhrEndpoint | None:
    """pusher-js's HTTP transports beside the WebSocket endpoint (docs/http-fallback.md)."""
    if not settings.http_transports:
        return None
    return XhrEndpoint(
        hub,
        admission,
        frame=frame,
        # the hub's frames for kanal's own transport are RFC 6455 frames; an ASGI-only node's
        # are the JSON itself (build's ``frame``)
        text_of=text_payload if frame is text_frame else _as_is,
        socket_id=new_socket_id,
        path_prefix=settings.path_prefix,
        max_message_bytes=settings.max_frame_bytes,
        max_output_buffer_bytes=settings.max_output_buffer_bytes,
        timeout=settings.http_session_timeout,
        heartbeat=settings.http_heartbeat,
        trace=settings.verbose,
    )


def _app_store(config: Config) -> tuple[AppStore, CachedAppStore | None]:
    """``[apps_store] url``: the file's ``[[apps]]`` (empty), else a SQL store, cached.

    Raises:
        StartupError: the URL's driver is not installed (``kanal[postgresql]``, ...).
    """
    url = config.apps_store.url
    if not url:
        return StaticAppStore(config.apps), None
    try:
        store = CachedAppStore(SqlAppStore.from_url(url), ttl=config.apps_store.ttl)
    except DriverMissing as exc:
        raise StartupError(f"[apps_store] url: {exc}") from None
    return store, store


def _attach_store(store: CachedAppStore, hub: Hub, readiness: Readiness) -> None:
    """A refresh that finds an app disabled or deleted closes its connections (4003, as a
    new connection to it is refused); /ready reports a store that is down."""

    def gone(app: App, why: str) -> None:
        closed = hub.close_app(app.id, CloseCode.APP_DISABLED, GONE[why])
        log.info("apps store: app %s %s; %d connections closed (4003)", app.id, why, closed)

    def changed(app: App) -> None:
        hub.reconfigure_app(app)  # a rotated secret works on open connections too

    store.on_gone = gone
    store.on_changed = changed
    readiness.checks.append(store.status)


def _metrics_port_starter(
    listener: MetricsListener, settings: ServerSettings
) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        try:
            port = await listener.start(
                settings.host,
                settings.metrics_port,
                reuse_port=settings.workers > 1,
                tls_cert_file=settings.tls_cert_file,
                tls_key_file=settings.tls_key_file,
            )
        except ListenError as exc:
            raise StartupError(str(exc)) from None
        log.info("kanal metrics on %s:%s/metrics", settings.host, port)

    return start


def _phase(what: str, close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``close``, saying first which shutdown phase it is."""

    async def closer() -> None:
        log.info("shutdown: %s", what)
        await close()

    return closer


def _freeze_startup_heap() -> None:
    """Keep the ~50,000 objects that exist once the node is up (modules, config, the loop)
    out of every later garbage collection: a full collection walks them all, and on a busy
    node that pause lands in the middle of a fan-out (docs/performance.md, latency)."""
    gc.collect()
    gc.freeze()


async def _tick(hub: Hub) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        hub.tick()
        logs.flush_suppressed()  # counts of refusal lines left out, once their window ends


class StartupError(Exception):
    """The node cannot start (address in use, unusable TLS files): one line for the operator,
    printed by the CLI without a traceback."""


async def serve(
    server: Server, stop: asyncio.Event, started: Callable[[int], None] | None = None
) -> None:
    """Serve until ``stop`` is set, then drain (:func:`kanal.drain.drain`) and stop.

    Raises:
        StartupError: the TLS files cannot be loaded or the address cannot be bound; whatever
            had started is closed again first.
    """
    settings = server.config.server
    try:
        await server.start()
        addresses = binds(settings)
        try:
            ports = await server.listener.start(
                addresses,
                reuse_port=settings.workers > 1,
                tls_cert_file=settings.tls_cert_file,
                tls_key_file=settings.tls_key_file,
            )
        except ListenError as exc:
            raise StartupError(str(exc)) from None
        listening = [
            (b.host, port, b.websocket, b.api) for b, port in zip(addresses, ports, strict=True)
        ]
        for line in startup_summary(server.config, default_node_id(), listening):
            log.info("%s", line)
        for bind, port in zip(addresses, ports, strict=True):
            log.info("kanal listening on %s:%s%s", bind.host, port, bind.label)
        _freeze_startup_heap()
        if started is not None:
            started(ports[0])
        await stop.wait()
        await drain(server)
    finally:
        await server.stop(drain=server.listener.stop)


def check_listen(settings: ServerSettings) -> None:
    """Before forking workers: fail once, in the parent, when no worker could start.

    Raises:
        StartupError: as :func:`serve` would in every worker.
    """
    try:
        tls_context(settings.tls_cert_file, settings.tls_key_file)
        for bind in binds(settings):
            probe_bind(bind.host, bind.port)
        if settings.metrics_port:
            probe_bind(settings.host, settings.metrics_port)
    except ListenError as exc:
        raise StartupError(str(exc)) from None


Load = Callable[[], Config]


def run(config: Config, load: Load | None = None) -> None:
    """Run a node (or ``workers`` nodes) in the foreground until SIGINT or SIGTERM.

    ``load`` reads the configuration again, as ``config`` was read: given it, SIGHUP reloads
    the apps (:mod:`kanal.reload`).
    """
    settings = config.server
    logs.configure(settings.log_level, settings.log_format, settings.verbose, sys.stderr)
    _warn_default_credentials(config)
    raise_open_files_limit()
    try:
        with PidFile(config.server.pid_file) as pid_file:
            if config.server.workers > 1:
                check_listen(config.server)
                pid_file.write()  # the parent's pid: it is the one that stops the workers
                raise SystemExit(_supervise(config, load))
            _run_node(config, load, pid_file.write)
    except PidFileError as exc:
        raise StartupError(str(exc)) from None


def _supervise(config: Config, load: Load | None) -> int:
    workers = config.server.workers
    # The workers answer each other's scrapes on Unix sockets in here (mode 0700).
    directory = tempfile.mkdtemp(prefix="kanal-workers-")
    current = [config]

    def reread() -> None:
        """On SIGHUP the parent reads the apps too, for a worker it restarts later; the
        workers log what they make of the file, so the parent stays quiet."""
        if load is not None:
            with contextlib.suppress(ConfigError):
                current[0] = dataclasses.replace(current[0], apps=load().apps)

    def worker(index: int) -> None:
        _run_node(current[0], load, group=WorkerGroup(directory, index, workers))

    try:
        return supervise(workers, worker, on_hangup=reread)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run_node(
    config: Config,
    load: Load | None,
    listening: Callable[[], None] = lambda: None,
    group: WorkerGroup | None = None,
) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_main(config, load, listening, group))


def _warn_default_credentials(config: Config) -> None:
    for app in () if config.apps_store.url else config.apps:
        if is_default_credentials(app):
            # The secret is shown only when it is the published development one: an app that
            # kept the development key but set its own secret must not see it in the logs.
            secret = app.secret if app.secret == DEV_APP["secret"] else "(your own, not shown)"
            log.warning(
                "serving the DEFAULT app: id=%s key=%s secret=%s -- for development only, "
                "set your own credentials before exposing kanal",
                app.id,
                app.key,
                secret,
            )


async def _main(
    config: Config, load: Load | None, listening: Callable[[], None], group: WorkerGroup | None
) -> None:
    server = build(config, group=group, reloadable=load is not None)
    stop = asyncio.Event()
    stop_on_signals(stop, worker=config.server.workers > 1)
    if load is not None:
        reload_on_sighup(Reloader(server, load))
    await serve(server, stop, lambda _port: listening())
