"""The staggered drain: how ``kanal serve`` stops without sending every client elsewhere at
once, and what SIGINT / SIGTERM do.

Ownership rule: the order and the timing of a graceful stop live here; the transport carries
out each step (:class:`~kanal.transport.listener.Listener`, and
:meth:`~kanal.transport.websocket.WebSocketConnection.hand_over` for each connection) and
:meth:`kanal.server.Server.stop` stops the rest. :func:`kanal.server.serve` runs :func:`drain`
once its stop event is set; :func:`stop_on_signals` sets it.

The sequence (docs/deployment.md, "Stopping a node"):

1. at once: ``GET /ready`` answers 503, so a load balancer takes the node out, and every HTTP
   answer carries ``Connection: close``, so keep-alive API clients reconnect through it;
2. after ``drain_grace`` seconds (the load balancer's turn to notice): new WebSocket upgrades
   are answered 503;
3. the connections are closed with 4200 in batches every :data:`BATCH_INTERVAL` seconds,
   spread evenly over ``drain_seconds``, each only once the hub has released it (and its
   webhooks are in Redis). pusher-js reconnects at once on a 42xx close (2-3 ms, measured:
   docs/deployment.md), so the other nodes take the reconnects at the pace of the batches:
   a node with 10,000 connections and the default 10 s hands over 100 every 0.1 s instead of
   10,000 in one moment. The HTTP API is served all along;
4. after the last batch :meth:`~kanal.server.Server.stop` stops listening, waits for what is
   in flight (``shutdown_timeout``), leaves the cluster and flushes queued webhooks.

A second signal ends the process at once (the kernel's default action: no cleanup at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING

from kanal.protocol.errors import CloseCode
from kanal.webhooks import RedisWebhookQueue

if TYPE_CHECKING:
    from kanal.hub import WebhookSink
    from kanal.server import Server
    from kanal.transport.listener import Listener
    from kanal.transport.websocket import Ready

__all__ = [
    "BATCH_INTERVAL",
    "batch_ends",
    "close_in_batches",
    "drain",
    "ready_when_flushed",
    "stop_on_signals",
]

log = logging.getLogger("kanal")

#: Seconds between two batches. Small enough that a one-second histogram of the reconnects is
#: flat (ten batches in every second), large enough that a batch is worth a wake-up.
BATCH_INTERVAL = 0.1
RECONNECT_REASON = "Server is shutting down, reconnect immediately"
FLUSH_WAIT = 2.0  # seconds a handed-over connection waits for its webhooks to reach Redis
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def batch_ends(total: int, batches: int) -> list[int]:
    """Where each of ``batches`` batches ends in a list of ``total`` connections: batch ``k``
    closes ``[ends[k - 1], ends[k])``, so connection ``i`` goes in batch ``i * batches //
    total``. Sizes differ by at most one; with fewer connections than batches they are closed
    one at a time, evenly spaced from the first batch on, and the node stops after the last
    instead of waiting out the window."""
    return [-(-total * (k + 1) // batches) for k in range(batches)]


async def close_in_batches(listener: Listener, seconds: float, ready: Ready) -> int:
    """Hand the listener's connections over (close 4200 once the hub has released them and
    ``ready()`` returned), in batches spread evenly over ``seconds``: the first now, the last
    ``BATCH_INTERVAL`` before the end. Returns how many were open at the start; stops early
    once none is left. Upgrades must already be refused: a connection that was still in its
    handshake is closed with the last batch."""
    loop = asyncio.get_running_loop()
    connections = listener.open_connections()
    batches = max(1, round(seconds / BATCH_INTERVAL))
    start, done = loop.time(), 0
    for k, end in enumerate(batch_ends(len(connections), batches)):
        if not listener.open_connections():
            break
        # Each batch at its own time from the start, so a slow batch delays no later one.
        delay = start + seconds * k / batches - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for conn in connections[done:end]:
            conn.hand_over(CloseCode.RECONNECT, RECONNECT_REASON, ready)
        done = end
    for conn in listener.open_connections():
        conn.hand_over(CloseCode.RECONNECT, RECONNECT_REASON, ready)
    return len(connections)


def ready_when_flushed(webhooks: WebhookSink | None) -> Ready:
    """What a handed-over connection waits for after the hub released it: in a cluster, its
    webhook events written to Redis, where the held ``member_removed`` / ``channel_vacated``
    can be cancelled by the client's return to another node (bounded: Redis may be down)."""
    queue = webhooks if isinstance(webhooks, RedisWebhookQueue) else None

    async def ready() -> None:
        # One node: its dispatcher holds and cancels in-process, nothing to wait for.
        if queue is not None:
            # The connection's events are emitted by now (ready runs after its clean-up);
            # the other connections' later events must not hold its close back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.wait_written(queue.emitted), FLUSH_WAIT)

    return ready


async def drain(server: Server) -> None:
    """Steps 1-3 of the sequence above; :meth:`Server.stop` does the rest."""
    settings = server.config.server
    server.readiness.draining = True
    server.listener.drain()
    log.info(
        "shutdown: /ready answers 503; WebSocket upgrades refused in %g s, then %d "
        "connections closed with 4200 over %g s (a second signal stops at once)",
        settings.drain_grace,
        len(server.listener.open_connections()),
        settings.drain_seconds,
    )
    if settings.drain_grace > 0:
        await asyncio.sleep(settings.drain_grace)
    server.listener.refuse_upgrades()
    log.info("shutdown: WebSocket upgrades refused (503); closing connections in batches")
    ready = ready_when_flushed(server.webhooks)
    began = asyncio.get_running_loop().time()
    closed = await close_in_batches(server.listener, settings.drain_seconds, ready)
    took = asyncio.get_running_loop().time() - began
    log.info("shutdown: %d connections closed with 4200 in %.1f s", closed, took)


def stop_on_signals(stop: asyncio.Event, *, worker: bool = False) -> None:
    """The first SIGINT or SIGTERM sets ``stop`` (the drain begins); a second one ends the
    process at once, by the signal's default action.

    A worker of ``kanal serve --workers N`` ignores every signal after the first: it may get
    each one twice (a terminal's Ctrl-C reaches the whole process group, systemd's default
    ``KillMode`` signals every process of the unit, and the parent forwards what it gets), so
    only the parent counts signals, and on its second one it kills the workers
    (:func:`kanal.workers.supervise`).
    """
    loop = asyncio.get_running_loop()

    def received(signum: int) -> None:
        if stop.is_set():  # two signals before the first was handled
            if not worker:
                _die(signum)
            return
        log.info("shutdown: %s received", signal.Signals(signum).name)
        stop.set()
        # From now on the kernel acts on these signals itself, so a second one works even
        # if the event loop is stuck.
        then = signal.SIG_IGN if worker else signal.SIG_DFL
        for other in STOP_SIGNALS:
            loop.remove_signal_handler(other)
            signal.signal(other, then)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, received, signum)


def _die(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
