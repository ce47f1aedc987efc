"""Python side of the pusher-js driver (tests/e2e/driver.js).

The driver runs the official pusher-js client in Node and speaks newline-delimited JSON: commands
in on stdin, records out on stdout. This module starts it, collects every record it writes and
lets tests send commands and wait for records::

    async with JsDriver.start() as js:
        await js.connect("c1", key="app-key", port=port, secret="app-secret")
        await js.subscribe("c1", "my-channel")
        ...  # trigger over the HTTP API
        rec = await js.wait_for(client="c1", type="event", event="my-event")

Records are plain dicts (driver.js lists every "type"); each also gets ``seq``, its index in the
stream, and ``since=js.mark()`` restricts a wait or a query to records after the mark.
"""

# ruff: noqa: ASYNC109  -- `timeout=` per call is this API's point; no caller wraps in asyncio.timeout
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

Record = dict[str, Any]
Predicate = Callable[[Record], bool]

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("driver.js")
DEFAULT_TIMEOUT = 5.0

# Connection states after which pusher-js will not reach "connected" on its own.
_GIVE_UP_STATES = frozenset({"failed", "unavailable", "disconnected"})


class DriverError(RuntimeError):
    """The driver refused a command, wrote something unreadable, or exited."""


class WaitTimeout(AssertionError):
    """No record matched within the timeout."""


class UnexpectedOutcome(AssertionError):
    """connect, subscribe or signin ended otherwise than the test said it would (e.g. pusher-js
    gave up connecting: refused, failed or unavailable)."""


def _matcher(predicate: Predicate | None, match: Mapping[str, Any]) -> Predicate:
    def ok(want: Any, got: Any) -> bool:
        return bool(want(got)) if callable(want) and not isinstance(want, type) else want == got

    def check(rec: Record) -> bool:
        fields_ok = all(ok(want, rec.get(key)) for key, want in match.items())
        return fields_ok and (predicate is None or predicate(rec))

    return check


def _camel(fields: Mapping[str, Any]) -> dict[str, Any]:
    """snake_case keyword arguments to the driver's camelCase fields; None means 'not given'."""

    def camel(key: str) -> str:
        head, *rest = key.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(key): value for key, value in fields.items() if value is not None}


class JsDriver:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._ids = itertools.count(1)
        self._records: list[Record] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._cond = asyncio.Condition()
        self._closed = False
        #: pusher-js's transport for every client connected from now on: "ws", or one of the
        #: HTTP transports (conftest.py's ``client_transport`` sets it)
        self.transport = "ws"
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, *, node: str = "node", env: Mapping[str, str] | None = None
    ) -> AsyncIterator[JsDriver]:
        """Spawn the driver; on exit stop it and fail if it reported internal errors.
        ``env={"KANAL_E2E_PUSHER_LOG": "1"}`` copies pusher-js's own log to the driver's stderr,
        which failure messages include."""
        child_env = {**os.environ, **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            cwd=REPO_ROOT,
            env=child_env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        driver = cls(proc)
        driver._tasks = [
            asyncio.create_task(driver._read_stdout()),
            asyncio.create_task(driver._read_stderr()),
        ]
        try:
            await driver.wait_for(type="ready", timeout=15.0)
            yield driver
            errors = driver.records(type="driver_error")
            if errors:
                raise DriverError(f"driver reported internal errors: {errors}\n{driver._tail()}")
        finally:
            await driver.close()

    async def close(self) -> None:
        """Ask the driver to exit (it disconnects every client), then make sure it has."""
        proc = self._proc
        if proc.returncode is None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(b'{"cmd":"exit"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=3.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            async for raw in self._proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    assert isinstance(rec, dict)
                except (ValueError, AssertionError):
                    rec = {"type": "driver_error", "error": f"bad output: {line[:500]}"}
                async with self._cond:
                    rec["seq"] = len(self._records)
                    self._records.append(rec)
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._closed = True
                self._cond.notify_all()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def _tail(self, count: int = 40) -> str:
        recent = "\n".join(json.dumps(r, default=str)[:400] for r in self._records[-count:])
        stderr = "\n".join(list(self._stderr)[-count:])
        return f"--- last records ---\n{recent}\n--- driver stderr ---\n{stderr}"

    def mark(self) -> int:
        """A position in the record stream; pass it as ``since=`` to ignore older records."""
        return len(self._records)

    def records(
        self, predicate: Predicate | None = None, /, *, since: int = 0, **match: Any
    ) -> list[Record]:
        """Records received so far that match ``predicate`` and every ``field=value``
        (a callable value is applied to the field instead of compared)."""
        check = _matcher(predicate, match)
        return [r for r in self._records[since:] if check(r)]

    async def wait_for(
        self,
        predicate: Predicate | None = None,
        /,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        since: int = 0,
        **match: Any,
    ) -> Record:
        """The first record at or after ``since`` that matches; waits up to ``timeout``."""
        check = _matcher(predicate, match)
        index = since
        try:
            async with asyncio.timeout(timeout), self._cond:
                while True:
                    while index < len(self._records):
                        rec = self._records[index]
                        index += 1
                        if check(rec):
                            return rec
                    if self._closed:
                        raise DriverError(
                            f"driver exited while waiting for {match}\n{self._tail()}"
                        )
                    await self._cond.wait()
        except TimeoutError:
            raise WaitTimeout(
                f"no record matching {match or ''}{' + predicate' if predicate else ''} "
                f"within {timeout}s\n{self._tail()}"
            ) from None

    async def expect_none(
        self,
        predicate: Predicate | None = None,
        /,
        *,
        within: float = 0.5,
        since: int | None = None,
        **match: Any,
    ) -> None:
        """Assert that no matching record arrives within ``within`` seconds (counting records
        from ``since``, by default from now)."""
        start = self.mark() if since is None else since
        try:
            rec = await self.wait_for(predicate, timeout=within, since=start, **match)
        except WaitTimeout:
            return
        raise AssertionError(f"unexpected record {rec}\n{self._tail()}")

    async def command(self, cmd: str, /, *, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Any:
        """Send one command and return its ack's ``result``; raise DriverError if refused."""
        stdin = self._proc.stdin
        if self._closed or stdin is None or stdin.is_closing():
            raise DriverError(f"driver is not running\n{self._tail()}")
        cmd_id, since = next(self._ids), self.mark()
        stdin.write(json.dumps({"cmd": cmd, "id": cmd_id, **fields}).encode() + b"\n")
        await stdin.drain()
        ack = await self.wait_for(type="ack", id=cmd_id, since=since, timeout=timeout)
        if not ack.get("ok"):
            raise DriverError(f"{cmd} failed: {ack.get('error')}")
        return ack.get("result")

    async def connect(
        self,
        client: str,
        *,
        key: str,
        port: int,
        host: str = "127.0.0.1",
        secret: str | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        options: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> str:
        """Create pusher-js client ``client`` and (unless ``wait=False``) return its socket_id.

        ``options`` go verbatim into ``new Pusher(key, options)``. Further keyword arguments
        (snake_case): app_id, presence={user_id, user_info}, user_auth={id, user_info,
        watchlist}, master_key (base64, for private-encrypted-), auth_error (HTTP status the
        auth endpoint refuses with), auth_secret / auth_key (sign with these instead),
        auth_response (returned verbatim by the auth handler), user_auth_error,
        user_auth_response, frames=True (record raw frames), auto_connect=False,
        client_activity_timeout (ms: pusher-js pings only after that much silence, ignoring
        the server's shorter activity_timeout).
        """
        since = self.mark()
        fields = {"key": key, "port": port, "host": host, "secret": secret, **opts}
        fields.setdefault("transport", self.transport)
        fields["options"] = dict(options) if options else None
        await self.command("connect", client=client, **_camel(fields))
        if not wait:
            return ""
        return await self._await_connected(client, since, timeout)

    async def _await_connected(self, client: str, since: int, timeout: float) -> str:
        def done(rec: Record) -> bool:
            return rec.get("type") == "connected" or (
                rec.get("type") == "state" and rec.get("current") in _GIVE_UP_STATES
            )

        rec = await self.wait_for(done, client=client, since=since, timeout=timeout)
        if rec["type"] != "connected":
            raise UnexpectedOutcome(f"{client} did not connect: {rec}\n{self._tail()}")
        return str(rec["socket_id"])

    async def _outcome(
        self,
        cmd: str,
        client: str,
        done: Predicate,
        fields: dict[str, Any],
        *,
        wait: bool,
        expect_error: bool,
        timeout: float,
        ok_type: str,
    ) -> Record:
        since = self.mark()
        ack: Record = await self.command(cmd, client=client, **fields)
        if not wait:
            return ack
        rec = await self.wait_for(done, client=client, since=since, timeout=timeout)
        if (rec["type"] != ok_type) != expect_error:
            want = "an error" if expect_error else ok_type
            raise UnexpectedOutcome(f"{client} {cmd} {fields}: wanted {want}, got {rec}")
        return rec

    async def subscribe(
        self,
        client: str,
        channel: str,
        *,
        wait: bool = True,
        expect_error: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        **opts: Any,
    ) -> Record:
        """Subscribe; return the ``subscribed`` record, or with ``expect_error=True`` the
        ``subscription_error`` record or ``pusher:error`` message that came instead. Per-channel
        overrides: presence, auth_error, auth_secret, auth_key, auth_response."""

        def done(rec: Record) -> bool:
            if rec.get("type") in ("subscribed", "subscription_error"):
                return bool(rec.get("channel") == channel)
            return rec.get("type") == "message" and rec.get("event") == "pusher:error"

        fields = {"channel": channel, **_camel(opts)}
        return await self._outcome(
            "subscribe", client, done, fields, wait=wait, expect_error=expect_error,
            timeout=timeout, ok_type="subscribed",
        )  # fmt: skip

    async def signin(
        self,
        client: str,
        user_auth: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        expect_error: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        **opts: Any,
    ) -> Record:
        """``pusher.signin()``; return ``signin_success`` (or with ``expect_error`` the
        ``signin_error`` record or ``pusher:error`` message). Options: user_auth_error,
        user_auth_response. pusher-js signs in once per client; later calls do nothing."""

        def done(rec: Record) -> bool:
            return rec.get("type") in ("signin_success", "signin_error") or (
                rec.get("type") == "message" and rec.get("event") == "pusher:error"
            )

        fields = _camel({"user_auth": dict(user_auth) if user_auth else None, **opts})
        return await self._outcome(
            "signin", client, done, fields, wait=wait, expect_error=expect_error,
            timeout=timeout, ok_type="signin_success",
        )  # fmt: skip

    async def unsubscribe(self, client: str, channel: str) -> None:
        await self.command("unsubscribe", client=client, channel=channel)

    async def trigger(self, client: str, channel: str, event: str, data: Any = None) -> bool:
        """A client event via ``channel.trigger``: what it returned (False when pusher-js
        refused, e.g. on encrypted channels; the trigger_result record has the error)."""
        fields = {"channel": channel, "event": event, "data": data}
        return bool((await self.command("trigger", client=client, **fields))["ok"])

    async def send_raw(
        self, client: str, event: str, data: Any = None, channel: str | None = None
    ) -> bool:
        """``pusher.connection.send_event(event, data, channel)``: any protocol message."""
        fields = _camel({"event": event, "data": data, "channel": channel})
        return bool((await self.command("send_raw", client=client, **fields))["ok"])

    async def send_text(self, client: str, text: str) -> bool:
        """Send ``text`` as one WebSocket text frame, unencoded (for malformed input)."""
        return bool((await self.command("send_text", client=client, text=text))["ok"])

    async def members(self, client: str, channel: str) -> Record:
        """pusher-js's view of a presence channel: {count, me, myID, members: {id: info}}."""
        return dict(await self.command("members", client=client, channel=channel))

    async def disconnect(self, client: str) -> None:
        """``pusher.disconnect()``; the "disconnected" state record precedes the ack."""
        await self.command("disconnect", client=client)

    async def reconnect(self, client: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """``pusher.connect()`` after a disconnect; returns the new socket_id."""
        since = self.mark()
        await self.command("reconnect", client=client)
        return await self._await_connected(client, since, timeout)

    async def drop(self, client: str) -> None:
        """Close the socket under pusher-js, which then reconnects by itself (~1 s later)."""
        await self.command("drop", client=client)

    async def forget(self, client: str) -> None:
        """Disconnect ``client`` and free its name for a new ``connect``."""
        await self.command("forget", client=client)
