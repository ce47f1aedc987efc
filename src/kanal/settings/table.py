"""The one settings table: every setting with its type, default, environment variable and flag.

Every setting is declared once, here, next to a one-line help text and an optional check. Its
TOML name, type and default come from the frozen dataclasses in :mod:`kanal.config`; its
environment variable and command-line flag are derived from the section by fixed rules. The
loader (:mod:`kanal.settings.loaders`), the ``kanal`` flags and ``docs/configuration.md``
(:mod:`kanal.settings.render`) are all generated from this table, so a setting cannot exist in
one place and be missing (or spelled differently) in another. This module imports neither the
loader nor the renderer.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from kanal.adapters.redis_connect import redis_url_problem
from kanal.app_stores.url import store_url_error
from kanal.config import (
    App,
    AppsStoreSettings,
    ScalingSettings,
    ServerSettings,
    WebhookSettings,
    WebhookTarget,
)
from kanal.protocol.handshake import origin_pattern_error
from kanal.protocol.webhooks import EVENT_TYPES

__all__ = [
    "BY_DEST",
    "BY_ENV",
    "BY_SECTION",
    "DEV_APP",
    "DOCS_END",
    "DOCS_START",
    "KIND_TEXT",
    "SETTINGS",
    "WEBHOOK_EVENT_TYPES",
    "Kind",
    "Setting",
]

Kind = Literal["str", "id", "int", "float", "time", "bool", "strs", "headers"]
Check = Callable[[Any], str | None]

WEBHOOK_EVENT_TYPES = EVENT_TYPES  # the seven names of webhooks.md §3
#: The development app used when the file defines no ``[[apps]]``; its credentials are public.
DEV_APP: Mapping[str, object] = MappingProxyType(
    {"id": "1", "key": "app-key", "secret": "app-secret", "enable_client_messages": True}
)
DOCS_START = "<!-- settings:start -->"
DOCS_END = "<!-- settings:end -->"
_RESERVED_HEADERS = frozenset({"content-type", "x-pusher-key", "x-pusher-signature"})


# -- checks: each returns why a (well-typed) value is unacceptable, or None -----------------


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be between 0 and 65535"


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def _credential(value: str) -> str | None:
    # ids and keys end up in URL paths (/apps/<id>, /app/<key>), so no '/' or blanks.
    if not value or re.search(r"[\s/]", value):
        return "must be non-empty without spaces or '/'"
    return None


def _admin_token(value: str) -> str | None:
    # A console token can trigger events on every app: short ones are guessable.
    ok = value == "" or (len(value) >= 16 and not re.search(r"\s", value))
    return None if ok else "must be empty (console off) or 16+ characters without blanks"


def _path_prefix(value: str) -> str | None:
    ok = value == "" or (value.startswith("/") and not value.endswith("/"))
    return None if ok else "must be empty or start with '/' and not end with '/'"


def _redis_url(value: str) -> str | None:
    return None if value == "" else redis_url_problem(value)


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    return None if ok else "must be an http:// or https:// URL"


def _origins(value: tuple[str, ...]) -> str | None:
    for pattern in value:
        problem = origin_pattern_error(pattern)
        if problem is not None:
            return f"{pattern!r}: {problem}"
    return None


def _optional_http_url(value: str) -> str | None:
    return None if value == "" else _http_url(value)


def _event_types(value: tuple[str, ...]) -> str | None:
    if value and set(value) <= set(WEBHOOK_EVENT_TYPES):
        return None
    return "must list one or more of " + ", ".join(WEBHOOK_EVENT_TYPES)


def _headers(value: tuple[tuple[str, str], ...]) -> str | None:
    # The signature headers must be exactly what kanal computes (webhooks.md §2).
    if any(name.lower() in _RESERVED_HEADERS for name, _ in value):
        return "cannot set Content-Type, X-Pusher-Key or X-Pusher-Signature"
    return None


# -- the table ----------------------------------------------------------------------------
# A section line names the section, its environment variable prefix and its flag prefix ("-":
# file only). Each setting line: field name, check (see _CHECKS), one-line help. The section's
# dataclass supplies type and default; _build_table fails on any drift.
_TABLE = """
[server]             KANAL_     --
host                 -          Interface to listen on; 0.0.0.0 listens on all interfaces.
port                 port       TCP port for WebSocket and HTTP API; 0 lets the OS pick one.
api_host             -          Interface of the separate HTTP API listener; empty = host.
api_port             port       Serve the HTTP API, /metrics and /console here only; 0 = on port.
websocket_host       -          Interface of the separate WebSocket listener; empty = host.
websocket_port       port       Accept WebSocket connections only on this port; 0 = on port.
path_prefix          prefix     URL prefix before /app and /apps, e.g. /ws; empty for none.
max_connections      nonneg     Server-wide connection cap, then close 4100; 0 = unlimited.
max_connections_per_ip_per_second nonneg New connections per second per IP, over it 4100; 0 = off.
max_frame_bytes      pos        Largest inbound WebSocket frame; above it close 1009.
max_request_bytes    pos        Largest HTTP API request body; above it 413.
max_output_buffer_bytes pos     Unsent bytes per connection before the connection is dropped.
drain_grace          nonneg     Seconds after SIGTERM that /ready says 503 before upgrades get 503.
drain_seconds        nonneg     Seconds over which connections are closed (4200) in even batches.
shutdown_timeout     nonneg     After the drain, seconds to wait for open requests and closes.
expose_signature_hint -         Put the expected string-to-sign in signature error messages.
strict_protocol_version -       Refuse connections without ?protocol= (close 4008).
log_level            log_level  Log verbosity: debug, info, warning or error.
log_format           log_format "text" (readable lines) or "json" (one JSON object per line).
verbose              -          Log every WebSocket frame in and out with its socket_id (debug aid).
workers              pos        Worker processes; more than 1 needs adapter = "redis".
pid_file             -          Pid file written once listening (refused if in use); empty = none.
tls_cert_file        -          PEM certificate chain: serve wss:// and https:// directly.
tls_key_file         -          PEM private key for tls_cert_file.
trust_proxy_headers  -          Trust X-Forwarded-Proto and X-Forwarded-For from your proxy.
coalesce_writes      -          Write each connection's frames once per loop iteration (faster).
admin_token          admin_token Turns on /console; its password (16+ characters). Empty: off.
metrics_port         port       Serve /metrics here only, not with the HTTP API; 0 = with the API.
http_transports      -          Serve pusher-js's HTTP transports (xhr_streaming, xhr_polling).
http_session_timeout pos        Seconds an HTTP session may go unread; then it is closed (1006).
http_heartbeat       pos        Seconds of silence before an HTTP stream or poll gets a heartbeat.
[webhooks]           KANAL_WEBHOOKS_ --webhooks-
grace_period         nonneg     Seconds to hold channel_vacated/member_removed (dropped if undone).
batch_window         nonneg     Seconds to gather events into one request for batching apps.
max_batch_size       pos        Most events in one batched webhook request.
request_timeout      pos        Seconds to wait for a webhook endpoint to answer.
retry_window         nonneg     Seconds after creation that failed webhooks are retried; 0 = never.
max_queue            pos        Most undelivered webhook events held; the oldest are dropped.
shutdown_timeout     nonneg     Seconds to keep delivering queued webhooks when stopping.
hook_timeout         pos        Seconds an in-process hook may run before it counts as failed.
hook_max_queue       pos        Events queued per in-process hook; the oldest are dropped.
[scaling]            KANAL_     --
adapter              adapter    "memory" (one process) or "redis" (several processes or hosts).
redis_url            redis_url  Redis, Sentinel or Cluster URL; required with adapter = "redis".
redis_prefix         -          Prefix of every Redis key and channel, so apps can share a Redis.
node_lease           pos        Seconds a node's state survives in Redis without a heartbeat.
redis_fanout         fanout     "node": all nodes get every event; "channel": only subscribed ones.
[apps_store]         KANAL_APPS_STORE_ --apps-store-
url                  store_url  Empty: this file's [[apps]]. Else sqlite:///PATH, postgresql://...
ttl                  pos        Seconds a SQL store's apps are cached; changes apply within it.
[apps]               KANAL_APP_ --app-
id                   credential App id used in HTTP API paths; string or integer, keep it numeric.
key                  credential Public key that clients connect with.
secret               credential Signing secret shared with your backend; never sent to clients.
enabled              -          A disabled app refuses connections (4003) and API calls (403).
previous_secret      -          The secret being rotated out: still accepted until it expires.
previous_secret_expires_at nonneg When previous_secret stops working; required with it.
enable_client_messages -        Allow client-* events on private and presence channels.
enable_encrypted_client_messages - Also allow client events on private-encrypted- channels.
enable_user_authentication -    Require pusher:signin in time (user_authentication_timeout).
user_authentication_timeout pos Seconds before an unsigned connection is closed (4009).
enable_subscription_count -     Send pusher_internal:subscription_count events and webhooks.
enable_encrypted_subscription_count - Also count subscriptions of private-encrypted- channels.
enable_watchlist_events -       Send watchlist online/offline events to signed-in users.
require_tls          -          Refuse plain ws:// connections (close 4000).
allowed_origins      origins    Origins allowed to connect (https://*.example.com); empty = any.
activity_timeout     pos        Seconds of silence before clients ping; sent to clients.
pong_timeout         pos        Seconds to wait for pusher:pong before closing with 4201.
max_connections      nonneg     Connections for this app, then close 4004; 0 = unlimited.
max_client_events_per_second pos Client events per connection per second, then error 4301.
max_presence_members pos        Distinct users per presence channel.
max_presence_user_info_bytes pos Largest presence user_info, in bytes of JSON.
max_presence_user_id_length pos Longest presence user_id, in characters.
max_channel_name_length pos     Longest channel name, prefix included.
max_event_name_length pos       Longest event name.
max_event_payload_bytes pos     Largest event data in UTF-8 bytes (HTTP API answers 413).
max_event_batch_size pos        Most events in one batch_events request.
max_channels_per_trigger pos    Most channels in one trigger request.
max_watchlist_size   pos        Most watchlist user ids; the rest are dropped (error 4302).
max_backend_requests_per_second nonneg HTTP API writes per second, then 429; 0 = unlimited.
max_read_requests_per_second nonneg HTTP API reads per second, then 429; 0 = unlimited.
cache_ttl            pos        Seconds a cache- channel keeps its last event.
max_timestamp_skew   pos        Seconds auth_timestamp may differ from server time, else 401.
batch_webhooks       -          Send several events per webhook request (see batch_window).
webhook_url          opt_http_url One more webhook endpoint, sent every event type; empty = none.
[apps.webhooks]      -          -
url                  http_url   Endpoint that receives the webhook POSTs (http or https).
event_types          events     Events to send to this endpoint (list below).
headers              headers    Extra request headers, as a TOML table of strings.
filter_channel_prefix -         Only events of channels starting with this; empty = all.
filter_channel_suffix -         Only events of channels ending with this; empty = all.
"""
_CLASSES: dict[str, type] = {
    "server": ServerSettings,
    "webhooks": WebhookSettings,
    "scaling": ScalingSettings,
    "apps_store": AppsStoreSettings,
    "apps": App,
    "apps.webhooks": WebhookTarget,
}
_CHECKS: dict[str, Check | None] = {
    "-": None,
    "pos": _positive,
    "nonneg": _non_negative,
    "port": _port,
    "prefix": _path_prefix,
    "log_level": _one_of("debug", "info", "warning", "error"),
    "log_format": _one_of("text", "json"),
    "origins": _origins,
    "adapter": _one_of("memory", "redis"),
    "fanout": _one_of("node", "channel"),
    "redis_url": _redis_url,
    "store_url": store_url_error,
    "credential": _credential,
    "admin_token": _admin_token,
    "http_url": _http_url,
    "opt_http_url": _optional_http_url,
    "events": _event_types,
    "headers": _headers,
}
# Flags that also answer to a second spelling: Slanger's --webhook_url (one webhook endpoint for
# its one app) reads as --webhook-url for those who move from it (docs/migrating.md); the
# rule's own spelling, --app-webhook-url, stays the primary one.
_FLAG_ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "webhook_url"): ("--webhook-url",),
}
_KINDS: dict[object, Kind] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    tuple[str, ...]: "strs",
    tuple[tuple[str, str], ...]: "headers",
}
# Fields whose kind is not their Python type's: an app id may be written as a TOML integer, a
# time as a TOML date-time (or an RFC 3339 string in the environment and flags).
_SPECIAL_KINDS: dict[tuple[type, str], Kind] = {
    (App, "id"): "id",
    (App, "previous_secret_expires_at"): "time",
}
KIND_TEXT: dict[Kind, str] = {
    "str": "a string",
    "id": "a string or integer",
    "int": "an integer",
    "float": "a number",
    "time": "a time (Unix seconds or RFC 3339 date-time)",
    "bool": "a boolean",
    "strs": "an array of strings",
    "headers": "a table of strings",
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the table; ``env``/``flag`` are None for settings only a file can hold."""

    section: str
    name: str
    kind: Kind
    default: Any  # dataclasses.MISSING when the field is required
    help: str
    check: Check | None
    env: str | None
    flag: str | None
    aliases: tuple[str, ...] = ()  # more spellings of ``flag`` (_FLAG_ALIASES)

    @property
    def dest(self) -> str:
        """The argparse destination, which is also the key in ``load_config(overrides=...)``."""
        return (self.flag or "").removeprefix("--").replace("-", "_")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def _declared() -> dict[tuple[str, str, str], dict[str, tuple[str, str]]]:
    """Parse _TABLE into {(section, env prefix, flag prefix): {name: (check, help)}}."""
    sections: dict[tuple[str, str, str], dict[str, tuple[str, str]]] = {}
    rows: dict[str, tuple[str, str]] = {}
    for line in _TABLE.strip().splitlines():
        first, second, rest = line.split(None, 2)
        if first.startswith("["):
            rows = sections.setdefault((first.strip("[]"), second, rest), {})
        else:
            rows[first] = (second, rest)
    return sections


def _build_table() -> tuple[Setting, ...]:
    rows = []
    for (section, env_prefix, flag_prefix), declared in _declared().items():
        cls = _CLASSES[section]
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if (cls, f.name) != (App, "webhooks")]
        if [f.name for f in fields] != list(declared):  # same fields, same order
            raise AssertionError(f"settings table out of sync with {cls.__name__}")
        for f in fields:
            check, help_text = declared[f.name]
            kind: Kind = _SPECIAL_KINDS.get((cls, f.name)) or _KINDS[hints[f.name]]
            env = flag = None
            if env_prefix != "-":
                env, flag = env_prefix + f.name.upper(), flag_prefix + f.name.replace("_", "-")
            aliases = _FLAG_ALIASES.get((section, f.name), ())
            row = Setting(
                section, f.name, kind, f.default, help_text, _CHECKS[check], env, flag, aliases
            )
            rows.append(row)
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _build_table()
BY_SECTION = {s: {row.name: row for row in SETTINGS if row.section == s} for s in _CLASSES}
#: Lookups for the loader: by argparse destination (flags) and by environment variable.
BY_DEST = {row.dest: row for row in SETTINGS if row.flag}
BY_ENV = {row.env: row for row in SETTINGS if row.env}
if len(BY_DEST) != len(BY_ENV) or len(BY_ENV) != sum(1 for r in SETTINGS if r.env):
    raise AssertionError("two settings derive the same env var or flag")
_SPELLINGS = [spelling for row in SETTINGS if row.flag for spelling in (row.flag, *row.aliases)]
if len(_SPELLINGS) != len(set(_SPELLINGS)):
    raise AssertionError("a flag alias repeats another flag")
