"""Realtime: publish and query from Python code in the same process, without HTTP.

Ownership rule: this module only turns Python arguments into the values
:mod:`kanal.protocol.api` validates and hands them to :class:`kanal.service.ChannelsApi`: the
same limits, errors and answers as the HTTP API (http-api.md §3-§8), without a signature.
Errors are :class:`~kanal.protocol.errors.ApiError`, whose ``status`` is the HTTP status the
API would have answered.

``await realtime.trigger(...)`` from async code on the node's event loop; from another thread
of the same process (a Django sync view, a thread pool) ``realtime.sync.trigger(...)``, which
runs the call on that loop and waits for its answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from kanal.apps import AppStore
from kanal.config import App
from kanal.protocol import api, signatures
from kanal.protocol.channels import channel_type, is_valid_channel_name
from kanal.protocol.errors import ApiError
from kanal.service import ChannelsApi

__all__ = ["Realtime", "SyncRealtime"]

T = TypeVar("T")
_SOCKET_ID = re.compile(r"[0-9]+\.[0-9]+")
Json = dict[str, Any]


def encode_data(data: Any) -> str:
    """``data`` as the API carries it: a ``str`` as is, anything else JSON-encoded once."""
    if isinstance(data, str):
        return data
    try:
        return orjson.dumps(data).decode()
    except TypeError as exc:
        raise ApiError(400, f"data is not JSON-serialisable: {exc}") from None


def _info(info: str | Iterable[str] | None) -> str:
    if info is None:
        return ""
    return info if isinstance(info, str) else ",".join(info)


class Realtime:
    """The Channels API of one running node, for the code of the app it is embedded in.

    Args:
        service: the node's service.
        apps: the node's apps; ``app_id`` picks one per call, else the only (or first) app.
        default_app: that app; None when the apps are in a SQL store (docs/apps.md), where
            every call names its ``app_id``.
    """

    def __init__(self, service: ChannelsApi, apps: AppStore, default_app: App | None) -> None:
        self._service = service
        self._apps = apps
        self._default = default_app
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the node starts

    def _api(self) -> ChannelsApi:
        """The service every call goes to (a :class:`kanal.publisher.Publisher` has one per
        process and event loop)."""
        return self._service

    @property
    def sync(self) -> SyncRealtime:
        """The same calls for synchronous code running in another thread."""
        return SyncRealtime(self)

    def app(self, app_id: str | None = None) -> App:
        if app_id is None:
            if self._default is None:  # a SQL store's apps change: no app is "the" app
                raise ApiError(400, "the apps are in an apps store: pass app_id")
            return self._default
        app = self._apps.by_id(app_id)
        if app is None:
            raise ApiError(404, f"Unknown app id: {app_id}")
        return app

    async def trigger(
        self,
        channels: str | Sequence[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | Iterable[str] | None = None,
        *,
        app_id: str | None = None,
    ) -> Json:
        """Publish ``event`` to one channel or several (http-api.md §3); returns ``{}``, or
        ``{"channels": {...}}`` with the requested ``info`` attributes."""
        app = self.app(app_id)
        names = [channels] if isinstance(channels, str) else list(channels)
        value = api.trigger_event(
            app,
            name=event,
            channels=names,
            data=encode_data(data),
            socket_id=socket_id,
            info=_info(info).split(",") if info else (),
        )
        answer: Json = await self._api().trigger(app, value)
        return answer

    async def trigger_batch(
        self, events: Sequence[Mapping[str, Any]], *, app_id: str | None = None
    ) -> Json:
        """Publish a batch in order (http-api.md §4): each event a mapping with ``channel``,
        ``name``, ``data`` and optionally ``socket_id`` and ``info``."""
        app = self.app(app_id)
        batch = [_batch_event(event) for event in events]
        answer: Json = await self._api().trigger_batch(app, api.batch_events(batch, app))
        return answer

    async def send_to_user(
        self, user_id: str, event: str, data: Any, *, app_id: str | None = None
    ) -> None:
        """Deliver ``event`` to every connection signed in as ``user_id`` (users.md §3)."""
        await self._api().send_to_user(self.app(app_id), user_id, event, encode_data(data))

    async def terminate_user_connections(self, user_id: str, *, app_id: str | None = None) -> None:
        """Close every connection of ``user_id`` on every node (users.md §5)."""
        await self._api().terminate_user_connections(self.app(app_id), user_id)

    async def channels(
        self,
        prefix: str | None = None,
        info: str | Iterable[str] | None = None,
        *,
        app_id: str | None = None,
    ) -> Json:
        """Occupied channels, optionally by prefix (http-api.md §5.1)."""
        query = {"filter_by_prefix": prefix or "", "info": _info(info)}
        answer: Json = await self._api().channels(self.app(app_id), api.parse_channels_query(query))
        return answer

    async def channel_info(
        self, channel: str, info: str | Iterable[str] | None = None, *, app_id: str | None = None
    ) -> Json:
        """One channel's ``occupied`` and requested attributes (http-api.md §5.2)."""
        app = self.app(app_id)
        query = api.parse_channel_query(channel, {"info": _info(info)}, app)
        answer: Json = await self._api().channel(app, query)
        return answer

    async def users(self, channel: str, *, app_id: str | None = None) -> Json:
        """The users subscribed to a presence channel (http-api.md §6)."""
        app = self.app(app_id)
        answer: Json = await self._api().users(app, api.parse_users_channel(channel, app))
        return answer

    # --- signing for the app's own auth endpoints (auth.md §4) -------------------------------

    def authorize_channel(
        self,
        socket_id: str,
        channel_name: str,
        user_id: str | None = None,
        user_info: Any = None,
        *,
        encryption_master_key_base64: str | None = None,
        app_id: str | None = None,
    ) -> Json:
        """The JSON pusher-js expects from ``channelAuthorization.endpoint``: ``{"auth"}``,
        plus ``channel_data`` on presence channels (``user_id`` required) and
        ``shared_secret`` on ``private-encrypted-`` channels (the master key required)."""
        app = self.app(app_id)
        _check_socket_id(socket_id)
        kind = channel_type(_checked_channel(channel_name, app))
        if not kind.needs_auth:
            raise ApiError(400, f"{channel_name!r} is a public channel: it needs no authorization")
        channel_data = None
        if kind.is_presence:
            if not user_id:
                raise ApiError(400, "presence channels need a user_id")
            member: Json = {"user_id": user_id}
            if user_info is not None:
                member["user_info"] = user_info
            channel_data = orjson.dumps(member).decode()
        token = signatures.sign_channel(
            app_key=app.key,
            app_secret=app.secret,
            socket_id=socket_id,
            channel=channel_name,
            channel_data=channel_data,
        )
        answer: Json = {"auth": token}
        if channel_data is not None:
            answer["channel_data"] = channel_data
        if kind.is_encrypted:
            answer["shared_secret"] = _shared_secret(channel_name, encryption_master_key_base64)
        return answer

    def authenticate_user(
        self, socket_id: str, user_data: Mapping[str, Any] | str, *, app_id: str | None = None
    ) -> Json:
        """The JSON pusher-js expects from ``userAuthentication.endpoint``: ``{"auth",
        "user_data"}``; ``user_data`` must carry a string ``id`` (users.md §2)."""
        app = self.app(app_id)
        _check_socket_id(socket_id)
        text = user_data if isinstance(user_data, str) else orjson.dumps(user_data).decode()
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ApiError(400, "user_data must be a JSON object") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str):
            raise ApiError(400, "user_data must be a JSON object with a string id")
        token = signatures.sign_signin(
            app_key=app.key, app_secret=app.secret, socket_id=socket_id, user_data=text
        )
        return {"auth": token, "user_data": text}


def _check_socket_id(socket_id: str) -> None:
    if not _SOCKET_ID.fullmatch(socket_id):
        raise ApiError(400, "Invalid socket_id: must match ^\\d+\\.\\d+$")


def _checked_channel(channel_name: str, app: App) -> str:
    if not is_valid_channel_name(channel_name, app.max_channel_name_length):
        raise ApiError(400, f"Invalid channel name: {channel_name[:80]!r}")
    return channel_name


def _shared_secret(channel_name: str, master_key_base64: str | None) -> str:
    """encryption.md §2: base64(SHA-256(channel name + master key)), what the SDKs return."""
    if not master_key_base64:
        raise ApiError(400, "private-encrypted channels need encryption_master_key_base64")
    try:
        key = base64.b64decode(master_key_base64, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "encryption_master_key_base64 is not valid base64") from None
    if len(key) != 32:
        raise ApiError(400, "the encryption master key must be 32 bytes")
    digest = hashlib.sha256(channel_name.encode() + key).digest()
    return base64.b64encode(digest).decode()


def _batch_event(event: Mapping[str, Any]) -> dict[str, Any]:
    fields = dict(event)
    if "data" in fields and fields["data"] is not None:
        fields["data"] = encode_data(fields["data"])
    if "info" in fields and fields["info"] is not None and not isinstance(fields["info"], str):
        fields["info"] = _info(fields["info"])
    return fields


class SyncRealtime:
    """:class:`Realtime` for threads other than the node's event loop: each call runs on that
    loop and blocks the calling thread until it is done (or ``timeout`` seconds pass)."""

    def __init__(self, realtime: Realtime, timeout: float = 10.0) -> None:
        self._realtime = realtime
        self._timeout = timeout

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        loop = self._realtime.loop
        if loop is None or loop.is_closed():
            _close(call)
            raise RuntimeError("kanal is not running: start the app (its lifespan) first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _close(call)
            raise RuntimeError("on kanal's event loop: await the Realtime method instead")
        return asyncio.run_coroutine_threadsafe(call, loop).result(self._timeout)

    def trigger(
        self,
        channels: str | Sequence[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | Iterable[str] | None = None,
        *,
        app_id: str | None = None,
    ) -> Json:
        return self._run(
            self._realtime.trigger(channels, event, data, socket_id, info, app_id=app_id)
        )

    def trigger_batch(
        self, events: Sequence[Mapping[str, Any]], *, app_id: str | None = None
    ) -> Json:
        return self._run(self._realtime.trigger_batch(events, app_id=app_id))

    def send_to_user(
        self, user_id: str, event: str, data: Any, *, app_id: str | None = None
    ) -> None:
        self._run(self._realtime.send_to_user(user_id, event, data, app_id=app_id))

    def terminate_user_connections(self, user_id: str, *, app_id: str | None = None) -> None:
        self._run(self._realtime.terminate_user_connections(user_id, app_id=app_id))

    def channels(
        self,
        prefix: str | None = None,
        info: str | Iterable[str] | None = None,
        *,
        app_id: str | None = None,
    ) -> Json:
        return self._run(self._realtime.channels(prefix, info, app_id=app_id))

    def channel_info(
        self, channel: str, info: str | Iterable[str] | None = None, *, app_id: str | None = None
    ) -> Json:
        return self._run(self._realtime.channel_info(channel, info, app_id=app_id))

    def users(self, channel: str, *, app_id: str | None = None) -> Json:
        return self._run(self._realtime.users(channel, app_id=app_id))


def _close(call: Coroutine[Any, Any, Any]) -> None:
    """A coroutine that will never run is closed, so Python does not warn it was never
    awaited."""
    call.close()
