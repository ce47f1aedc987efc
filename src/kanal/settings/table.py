"""The one settings table, and the loaders that read TOML, environment variables and flags.

Every setting is declared once, here, next to a one-line help text and an optional check. Its
TOML name, type and default come from the frozen dataclasses in :mod:`kanal.config`; its
environment variable and command-line flag are derived from the section by fixed rules. The
loader, the ``kanal`` flags and ``docs/configuration.md`` are all generated from this table, so
a setting cannot exist in one place and be missing (or spelled differently) in another.

Precedence, lowest first: dataclass defaults < TOML file < environment < command-line flags.
Run ``python -m kanal.settings`` to print the Markdown settings reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from kanal.config import (
    App,
    Config,
    ScalingSettings,
    ServerSettings,
    WebhookSettings,
    WebhookTarget,
)
from kanal.protocol.webhooks import EVENT_TYPES

__all__ = [
    "BY_SECTION",
    "DEV_APP",
    "DOCS_END",
    "DOCS_START",
    "KIND_TEXT",
    "SETTINGS",
    "WEBHOOK_EVENT_TYPES",
    "ConfigError",
    "Kind",
    "Setting",
    "is_default_credentials",
    "load_config",
]

Kind = Literal["str", "id", "int", "float", "bool", "strs", "headers"]
Check = Callable[[Any], str | None]
Layer = dict[str, tuple[Any, str]]  # field name -> (value, where it came from)

WEBHOOK_EVENT_TYPES = EVENT_TYPES  # the seven names of WEBHOOKS.md §3
#: The development app used when the file defines no ``[[apps]]``; its credentials are public.
DEV_APP: Mapping[str, object] = MappingProxyType(
    {"id": "1", "key": "app-key", "secret": "app-secret", "enable_client_messages": True}
)
DOCS_START = "<!-- settings:start -->"
DOCS_END = "<!-- settings:end -->"
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_RESERVED_HEADERS = frozenset({"content-type", "x-pusher-key", "x-pusher-signature"})


class ConfigError(ValueError):
    """An unknown or invalid setting; the message names the source and the dotted key."""


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


def _path_prefix(value: str) -> str | None:
    ok = value == "" or (value.startswith("/") and not value.endswith("/"))
    return None if ok else "must be empty or start with '/' and not end with '/'"


def _redis_url(value: str) -> str | None:
    ok = value == "" or urlsplit(value).scheme in ("redis", "rediss", "unix")
    return None if ok else "must be a redis://, rediss:// or unix:// URL"


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    return None if ok else "must be an http:// or https:// URL"


def _event_types(value: tuple[str, ...]) -> str | None:
    if value and set(value) <= set(WEBHOOK_EVENT_TYPES):
        return None
    return "must list one or more of " + ", ".join(WEBHOOK_EVENT_TYPES)


def _headers(value: tuple[tuple[str, str], ...]) -> str | None:
    # The signature headers must be exactly what kanal computes (WEBHOOKS.md §2).
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
path_prefix          prefix     URL prefix before /app and /apps, e.g. /ws; empty for none.
max_connections      nonneg     Server-wide connection cap, then close 4100; 0 = unlimited.
max_frame_bytes      pos        Largest inbound WebSocket frame; above it close 1009.
max_request_bytes    pos        Largest HTTP API request body; above it 413.
max_output_buffer_bytes pos     Unsent bytes per connection before the connection is dropped.
shutdown_timeout     nonneg     Seconds to drain connections (close 4200) when stopping.
expose_signature_hint -         Put the expected string-to-sign in signature error messages.
strict_protocol_version -       Refuse connections without ?protocol= (close 4008).
log_level            log_level  Log verbosity: debug, info, warning or error.
workers              pos        Worker processes; more than 1 needs adapter = "redis".
tls_cert_file        -          PEM certificate chain: serve wss:// and https:// directly.
tls_key_file         -          PEM private key for tls_cert_file.
trust_proxy_headers  -          Trust X-Forwarded-Proto from a TLS-terminating proxy (require_tls).
coalesce_writes      -          Write each connection's frames once per loop iteration (faster).
[webhooks]           KANAL_WEBHOOKS_ --webhooks-
grace_period         nonneg     Seconds to hold channel_vacated/member_removed (dropped if undone).
batch_window         nonneg     Seconds to gather events into one request for batching apps.
max_batch_size       pos        Most events in one batched webhook request.
request_timeout      pos        Seconds to wait for a webhook endpoint to answer.
retry_window         nonneg     Seconds after creation that failed webhooks are retried; 0 = never.
max_queue            pos        Most undelivered webhook events held; the oldest are dropped.
shutdown_timeout     nonneg     Seconds to keep delivering queued webhooks when stopping.
[scaling]            KANAL_     --
adapter              adapter    "memory" (one process) or "redis" (several processes or hosts).
redis_url            redis_url  redis://, rediss:// or unix:// URL; required with adapter = "redis".
redis_prefix         -          Prefix of every Redis key and channel, so apps can share a Redis.
node_lease           pos        Seconds a node's state survives in Redis without a heartbeat.
[apps]               KANAL_APP_ --app-
id                   credential App id used in HTTP API paths; string or integer, keep it numeric.
key                  credential Public key that clients connect with.
secret               credential Signing secret shared with your backend; never sent to clients.
enabled              -          A disabled app refuses connections (4003) and API calls (403).
enable_client_messages -        Allow client-* events on private and presence channels.
enable_encrypted_client_messages - Also allow client events on private-encrypted- channels.
enable_user_authentication -    Require pusher:signin in time (user_authentication_timeout).
user_authentication_timeout pos Seconds before an unsigned connection is closed (4009).
enable_subscription_count -     Send pusher_internal:subscription_count events and webhooks.
enable_encrypted_subscription_count - Also count subscriptions of private-encrypted- channels.
enable_watchlist_events -       Send watchlist online/offline events to signed-in users.
require_tls          -          Refuse plain ws:// connections (close 4000).
allowed_origins      -          Origins allowed to connect (https://example.com); empty = any.
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
    "adapter": _one_of("memory", "redis"),
    "redis_url": _redis_url,
    "credential": _credential,
    "http_url": _http_url,
    "events": _event_types,
    "headers": _headers,
}
_KINDS: dict[object, Kind] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    tuple[str, ...]: "strs",
    tuple[tuple[str, str], ...]: "headers",
}
KIND_TEXT: dict[Kind, str] = {
    "str": "a string",
    "id": "a string or integer",
    "int": "an integer",
    "float": "a number",
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
            kind: Kind = "id" if (cls, f.name) == (App, "id") else _KINDS[hints[f.name]]
            env = flag = None
            if env_prefix != "-":
                env, flag = env_prefix + f.name.upper(), flag_prefix + f.name.replace("_", "-")
            row = Setting(section, f.name, kind, f.default, help_text, _CHECKS[check], env, flag)
            rows.append(row)
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _build_table()
BY_SECTION = {s: {row.name: row for row in SETTINGS if row.section == s} for s in _CLASSES}
_BY_DEST = {row.dest: row for row in SETTINGS if row.flag}
_BY_ENV = {row.env: row for row in SETTINGS if row.env}
if len(_BY_DEST) != len(_BY_ENV) or len(_BY_ENV) != sum(1 for r in SETTINGS if r.env):
    raise AssertionError("two settings derive the same env var or flag")


# -- values --------------------------------------------------------------------------------


def _coerce(kind: Kind, raw: object) -> object:
    """Convert a TOML (or programmatic) value; None means "wrong type"."""
    if isinstance(raw, bool):
        return raw if kind == "bool" else None
    if kind == "str":
        return raw if isinstance(raw, str) else None
    if kind == "id":
        return str(raw) if isinstance(raw, str | int) else None
    if kind == "int":
        return raw if isinstance(raw, int) else None
    if kind == "float":
        return float(raw) if isinstance(raw, int | float) else None
    if kind == "strs" and isinstance(raw, list | tuple):
        return tuple(raw) if all(isinstance(item, str) for item in raw) else None
    if kind == "headers" and isinstance(raw, dict):
        return tuple(raw.items()) if all(isinstance(v, str) for v in raw.values()) else None
    return None


def _parse_text(kind: Kind, text: str) -> object:
    """Convert an environment variable or flag string; None means "unparsable"."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if kind in ("str", "id"):
        return text
    if kind == "int":
        return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text) else None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return None
    if kind == "bool":
        return words.get(text.strip().lower())
    if kind == "strs":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return None


_TOML_TYPES = {bool: "boolean", str: "string", int: "integer", float: "float", list: "array"}


def _describe(raw: object) -> str:
    return f"{_TOML_TYPES.get(type(raw), type(raw).__name__)} {raw!r}"


def _value(setting: Setting, raw: object, where: tuple[str, str], text: bool) -> Any:
    """Type-convert and check one value; ``where`` is (source, dotted key) for the message."""
    source, key = where
    if text and isinstance(raw, str):
        value = _parse_text(setting.kind, raw)
    else:
        value = _coerce(setting.kind, raw)
    if value is None:
        got = repr(raw) if text else _describe(raw)
        raise ConfigError(f"{source}: {key}: expected {KIND_TEXT[setting.kind]}, got {got}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key}: must be a finite number, got {raw!r}")
    reason = setting.check(value) if setting.check else None
    if reason:
        raise ConfigError(f"{source}: {key}: {reason}, got {raw!r}")
    return value


# -- loading -------------------------------------------------------------------------------


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] = _EMPTY,
    overrides: Mapping[str, object] = _EMPTY,
) -> Config:
    """Build the effective config: defaults < the file at ``path`` < ``environ`` < ``overrides``.

    ``overrides`` maps a setting's :attr:`Setting.dest` (``port``, ``app_id``,
    ``webhooks_grace_period``) to a typed value or to the flag's raw string. Environment
    variables and overrides change [server], [webhooks], [scaling] and the first app, which is
    the development app :data:`DEV_APP` when the file defines no ``[[apps]]``.
    """
    source = path or "defaults"
    document = _read_toml(path) if path is not None else {}
    sections = {
        name: _file_table(document, name, source)
        for name in BY_SECTION
        if name not in ("apps", "apps.webhooks")
    }
    apps = _file_apps(document, source) or [_dev_app()]
    for setting, value, origin in _outside_values(environ, overrides):
        layer = apps[0] if setting.section == "apps" else sections[setting.section]
        layer[setting.name] = (value, origin)
    config = Config(
        server=ServerSettings(**_values(sections["server"])),
        apps=tuple(App(**_values(layer)) for layer in apps),
        webhooks=WebhookSettings(**_values(sections["webhooks"])),
        scaling=ScalingSettings(**_values(sections["scaling"])),
    )
    _cross_check(config, sections, apps)
    return config


def is_default_credentials(app: App) -> bool:
    """True when the app uses the published development key or secret (never for production)."""
    return app.key == DEV_APP["key"] or app.secret == DEV_APP["secret"]


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    top_level = ("server", "webhooks", "scaling", "apps")
    for name in document:
        if name not in top_level:
            raise ConfigError(_unknown(path, name, name, top_level))
    return document


def _unknown(source: str, key: str, name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{source}: {key}: unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")


def _file_table(document: Mapping[str, Any], section: str, source: str) -> Layer:
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {section}: must be a table ([{section}])")
    return _table_layer(table, section, section, source)


def _table_layer(table: Mapping[str, Any], section: str, prefix: str, source: str) -> Layer:
    known = BY_SECTION[section]
    layer: Layer = {}
    for name, raw in table.items():
        key = f"{prefix}.{name}"
        if name not in known:
            raise ConfigError(_unknown(source, key, name, known))
        layer[name] = (_value(known[name], raw, (source, key), text=False), source)
    for row in known.values():
        if row.required and row.name not in layer:
            raise ConfigError(f"{source}: {prefix}.{row.name}: required setting is missing")
    return layer


def _tables(raw: object, where: str, syntax: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{where}: must be an array of tables ({syntax})")
    return raw


def _file_apps(document: Mapping[str, Any], source: str) -> list[Layer]:
    tables = _tables(document.get("apps", []), f"{source}: apps", "[[apps]]")
    return [_file_app(table, f"apps[{i}]", source) for i, table in enumerate(tables)]


def _file_app(table: Mapping[str, Any], prefix: str, source: str) -> Layer:
    body = dict(table)
    hooks = _tables(body.pop("webhooks", []), f"{source}: {prefix}.webhooks", "[[apps.webhooks]]")
    layer = _table_layer(body, "apps", prefix, source)
    targets = tuple(
        WebhookTarget(
            **_values(_table_layer(hook, "apps.webhooks", f"{prefix}.webhooks[{i}]", source))
        )
        for i, hook in enumerate(hooks)
    )
    layer["webhooks"] = (targets, source)
    return layer


def _dev_app() -> Layer:
    return {name: (value, "development app") for name, value in DEV_APP.items()}


def _key(setting: Setting) -> str:
    section = "apps[0]" if setting.section == "apps" else setting.section
    return f"{section}.{setting.name}"


def _outside_values(
    environ: Mapping[str, str], overrides: Mapping[str, object]
) -> Iterator[tuple[Setting, Any, str]]:
    """Environment values first, then flags, so that flags win."""
    for env, setting in _BY_ENV.items():
        if env in environ:
            yield setting, _value(setting, environ[env], (env, _key(setting)), text=True), env
    for dest, raw in overrides.items():
        row = _BY_DEST.get(dest)
        if row is None or row.flag is None:
            raise ConfigError(f"overrides: {dest}: unknown setting")
        yield row, _value(row, raw, (row.flag, _key(row)), text=True), row.flag


def _values(layer: Layer) -> dict[str, Any]:
    return {name: value for name, (value, _) in layer.items()}


def _cross_check(config: Config, sections: Mapping[str, Layer], apps: list[Layer]) -> None:
    """Rules spanning several settings; blame the source of the setting that enables them."""

    def origin(section: str, name: str) -> str:
        return sections[section].get(name, (None, "defaults"))[1]

    if config.scaling.adapter == "redis" and not config.scaling.redis_url:
        raise ConfigError(
            f"{origin('scaling', 'adapter')}: scaling.redis_url: required when "
            "scaling.adapter is 'redis'"
        )
    if config.server.workers > 1 and config.scaling.adapter != "redis":
        raise ConfigError(
            f"{origin('server', 'workers')}: server.workers: more than 1 worker "
            "needs scaling.adapter = 'redis'"
        )
    if bool(config.server.tls_cert_file) != bool(config.server.tls_key_file):
        raise ConfigError(
            f"{origin('server', 'tls_cert_file')}: server.tls_cert_file: tls_cert_file and "
            "tls_key_file must be set together"
        )
    for name in ("id", "key"):
        seen: dict[str, int] = {}
        for index, app in enumerate(config.apps):
            value = getattr(app, name)
            if value in seen:
                raise ConfigError(
                    f"{apps[index][name][1]}: apps[{index}].{name}: duplicate of "
                    f"apps[{seen[value]}].{name} ({value!r})"
                )
            seen[value] = index
