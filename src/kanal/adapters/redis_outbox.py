"""``Outbox``: the one writer of a process's fan-out messages to Redis.

Ownership rule: the order in which this process's envelopes reach Redis is decided here and
nowhere else: one task sends queued messages in the order they were queued, pipelined on one
connection. Everything queued while the previous round trip was under way goes out in the
next one, and the envelopes of one round that share a pub/sub channel go out as **one**
message (:func:`~kanal.adapters.redis_wire.encode_batch`): a burst of triggers costs one
PUBLISH, one Redis delivery and one read on every receiving node, not one each.

Callers wait for their round's answer: a publish returns once Redis has accepted it, so an
event published after that, through any node, reaches Redis after it (docs/scaling.md,
"What a 200 guarantees").
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError

from kanal.adapters.redis_wire import COMMANDS, PubSubCommands, encode_batch

__all__ = ["Outbox"]

_ROUND = 4096  # envelopes per round trip at most
_MESSAGE_BYTES = 256 * 1024  # a batch message is cut after this many bytes
#: Seconds ``close`` keeps sending what was queued before it gives up on the rest.
FLUSH_TIMEOUT = 5.0


@dataclass(slots=True)
class _Item:
    channel: str
    message: bytes  # one encoded envelope
    done: asyncio.Future[None]


def _messages(items: list[_Item]) -> list[tuple[str, bytes]]:
    """One pub/sub message per channel (cut at ``_MESSAGE_BYTES``), in first-queued order;
    each channel's envelopes keep their order inside it."""
    by_channel: dict[str, list[list[bytes]]] = {}
    sizes: dict[str, int] = {}
    for item in items:
        parts = by_channel.setdefault(item.channel, [[]])
        if sizes.get(item.channel, 0) > _MESSAGE_BYTES:
            parts.append([])
            sizes[item.channel] = 0
        parts[-1].append(item.message)
        sizes[item.channel] = sizes.get(item.channel, 0) + len(item.message)
    return [(ch, encode_batch(part)) for ch, parts in by_channel.items() for part in parts]


class Outbox:
    """One writer task; callers await their own message's outcome.

    Args:
        client: the connection to publish on (closed by :meth:`close`).
        flush_timeout: how long :meth:`close` keeps sending what is queued.
    """

    def __init__(
        self,
        client: aredis.Redis,
        *,
        flush_timeout: float = FLUSH_TIMEOUT,
        commands: PubSubCommands = COMMANDS,
    ) -> None:
        self._client = client
        self._commands = commands
        self._flush_timeout = flush_timeout
        self._queue: list[_Item] = []
        self._sending: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # no new messages
        self._stopped = False  # not even the queued ones

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` (an encoded envelope) on ``channel``; raises the Redis error if
        it could not be sent (it may still have gone out when the connection dropped after
        sending)."""
        if self._closed:  # no writer task will take it
            raise RedisConnectionError("broker closed")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="kanal-redis-publish")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(channel, message, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        # The flags, not only the cancellation, end the loop: redis-py can swallow a
        # cancellation that lands inside a command, and close() must not wait forever.
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stopped:
                self._sending = self._queue[:_ROUND]
                del self._queue[:_ROUND]
                await self._send(self._sending)
                self._sending = []
            if self._closed:  # closing, and everything queued has been sent
                return

    async def _send(self, batch: list[_Item]) -> None:
        error: BaseException | None = None
        messages = _messages(batch)
        try:
            if len(messages) == 1:  # the common case in node mode: no pipeline to build
                await self._commands.publish_one(self._client, *messages[0])
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, message in messages:
                        self._commands.publish(pipe, channel, message)
                    await pipe.execute()
        except Exception as exc:  # every waiting caller must hear about any failure
            error = exc
        self._settle(batch, error)

    @staticmethod
    def _settle(batch: list[_Item], error: BaseException | None) -> None:
        for item in batch:
            if item.done.done():  # the publisher was cancelled
                continue
            if error is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(error)

    async def close(self) -> None:
        """Send what is queued (for up to ``flush_timeout`` s), then close the client."""
        self._closed = True
        self._wake.set()
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), self._flush_timeout)
            self._stopped = True
            self._wake.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self._sending + self._queue  # a batch cut short, and the rest
        self._sending, self._queue = [], []
        self._settle(left, ConnectionError("broker closed"))
        await self._client.aclose()
