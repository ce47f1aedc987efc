"""Loading settings: the TOML file, environment variables and command-line flags.

Ownership rule: this module turns outside values into a :class:`~kanal.config.Config`; what
the settings are (names, kinds, defaults, checks, env vars, flags) is
:mod:`kanal.settings.table`'s. Every value is type-converted and checked by its table row, and
every failure is a :class:`ConfigError` naming the source and the dotted key.

Precedence, lowest first: dataclass defaults < TOML file < environment < command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import Any

from kanal.config import (
    App,
    AppsStoreSettings,
    Config,
    ScalingSettings,
    ServerSettings,
    WebhookSettings,
    WebhookTarget,
)
from kanal.settings.table import (
    BY_DEST,
    BY_ENV,
    BY_SECTION,
    DEV_APP,
    KIND_TEXT,
    WEBHOOK_EVENT_TYPES,
    Kind,
    Setting,
)

__all__ = [
    "ConfigError",
    "app_from_table",
    "is_default_credentials",
    "load_config",
    "parse_setting",
    "resolve_config",
]

Layer = dict[str, tuple[Any, str]]  # field name -> (value, where it came from)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class ConfigError(ValueError):
    """An unknown or invalid setting; the message names the source and the dotted key."""


class _NaiveTime(ValueError):
    """A date-time without a UTC offset: which moment it means depends on the host's zone."""


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
    if kind in ("float", "time") and isinstance(raw, int | float):
        return float(raw)
    if kind == "time" and isinstance(raw, datetime):  # a TOML offset date-time
        return _unix_time(raw)
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
    if kind in ("float", "time"):
        try:
            return float(text)
        except ValueError:
            pass
    if kind == "time":
        try:
            moment = datetime.fromisoformat(text.strip())  # RFC 3339, as in TOML
        except ValueError:
            return None
        return _unix_time(moment)
    if kind == "bool":
        return words.get(text.strip().lower())
    if kind == "strs":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return None


def _unix_time(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise _NaiveTime(f"{moment.isoformat()} has no UTC offset (add Z or +01:00)")
    return moment.timestamp()


_TOML_TYPES = {bool: "boolean", str: "string", int: "integer", float: "float", list: "array"}


def _describe(raw: object) -> str:
    return f"{_TOML_TYPES.get(type(raw), type(raw).__name__)} {raw!r}"


def _value(setting: Setting, raw: object, where: tuple[str, str], text: bool) -> Any:
    """Type-convert and check one value; ``where`` is (source, dotted key) for the message."""
    source, key = where
    try:
        if text and isinstance(raw, str):
            value = _parse_text(setting.kind, raw)
        else:
            value = _coerce(setting.kind, raw)
    except _NaiveTime as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None
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
    file_apps = _file_apps(document, source)
    apps = file_apps or [_dev_app()]
    for setting, value, origin in _outside_values(environ, overrides):
        layer = apps[0] if setting.section == "apps" else sections[setting.section]
        layer[setting.name] = (value, origin)
    store_url, store_origin = sections["apps_store"].get("url", ("", source))
    if file_apps and store_url:
        raise ConfigError(
            f"{store_origin}: apps_store.url: the file has [[apps]]: apps live either in the "
            "file or in the store (docs/apps.md)"
        )
    config = Config(
        server=ServerSettings(**_values(sections["server"])),
        apps=tuple(_with_webhook_url(App(**_values(layer))) for layer in apps),
        webhooks=WebhookSettings(**_values(sections["webhooks"])),
        scaling=ScalingSettings(**_values(sections["scaling"])),
        apps_store=AppsStoreSettings(**_values(sections["apps_store"])),
    )
    _cross_check(config, sections, apps)
    return config


# Keyword arguments of resolve_config that are [scaling] settings rather than the app's.
_SCALING_KEYWORDS = ("redis_url", "redis_prefix", "redis_fanout")


def resolve_config(
    config: Config | str | os.PathLike[str] | None,
    settings: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Config:
    """The settings of a process that embeds kanal (``kanal.asgi.create_app``) or publishes
    into it (``kanal.publisher.Publisher``), read as ``kanal serve`` reads them:

    * a :class:`Config`, as it is;
    * the path of a TOML file, with the ``KANAL_*`` variables of ``environ`` on top;
    * keyword ``settings`` for one app (``id``, ``key``, ``secret`` and any ``[[apps]]``
      setting), plus ``redis_url`` (and ``redis_prefix``, ``redis_fanout``) for the Redis
      adapter;
    * none of these: ``$KANAL_CONFIG``, else the environment alone.
    """
    if isinstance(config, Config):
        if settings:
            raise TypeError("pass either a Config or keyword arguments for one app, not both")
        return config
    if config is not None:
        if settings:
            raise TypeError("pass either a TOML path or keyword arguments for one app, not both")
        return load_config(os.fspath(config), environ, {})
    if settings:
        app = {k: v for k, v in settings.items() if k not in _SCALING_KEYWORDS}
        scaling = ScalingSettings()
        if settings.get("redis_url"):
            scaling = ScalingSettings(
                adapter="redis",
                redis_url=settings["redis_url"],
                redis_prefix=settings.get("redis_prefix", scaling.redis_prefix),
                redis_fanout=settings.get("redis_fanout", scaling.redis_fanout),
            )
        return Config(
            server=ServerSettings(), apps=(_with_webhook_url(App(**app)),), scaling=scaling
        )
    return load_config(environ.get("KANAL_CONFIG") or None, environ, {})


def _with_webhook_url(app: App) -> App:
    """``webhook_url`` (``--webhook-url``) as one more ``[[apps.webhooks]]`` endpoint that gets
    every event type. Not added again when the app already has exactly that endpoint, so the
    config ``kanal check-config`` prints (which shows both) loads back unchanged."""
    if not app.webhook_url:
        return app
    target = WebhookTarget(url=app.webhook_url, event_types=WEBHOOK_EVENT_TYPES)
    if target in app.webhooks:
        return app
    return dataclasses.replace(app, webhooks=(*app.webhooks, target))


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
    top_level = ("server", "webhooks", "scaling", "apps_store", "apps")
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


def app_from_table(table: Mapping[str, Any], source: str) -> App:
    """One app from an ``[[apps]]`` table (webhooks included), checked exactly as the file's
    apps are: what a SQL store keeps per row (:mod:`kanal.app_stores.sql`).

    Raises:
        ConfigError: an unknown, missing or invalid setting, named with ``source``.
    """
    return _with_webhook_url(App(**_values(_file_app(table, "apps", source))))


def parse_setting(setting: Setting, text: str, source: str) -> Any:
    """A setting's value from a command-line string, type-converted and checked as a flag's.

    Raises:
        ConfigError: the text is not a valid value (the message names ``source``).
    """
    return _value(setting, text, (source, f"{setting.section}.{setting.name}"), text=True)


def _dev_app() -> Layer:
    return {name: (value, "development app") for name, value in DEV_APP.items()}


def _key(setting: Setting) -> str:
    section = "apps[0]" if setting.section == "apps" else setting.section
    return f"{section}.{setting.name}"


def _outside_values(
    environ: Mapping[str, str], overrides: Mapping[str, object]
) -> Iterator[tuple[Setting, Any, str]]:
    """Environment values first, then flags, so that flags win."""
    for env, setting in BY_ENV.items():
        if env in environ:
            yield setting, _value(setting, environ[env], (env, _key(setting)), text=True), env
    for dest, raw in overrides.items():
        row = BY_DEST.get(dest)
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
    cluster_url = config.scaling.redis_url.partition("://")[0].endswith("+cluster")
    if config.scaling.redis_fanout == "channel" and cluster_url:
        raise ConfigError(
            f"{origin('scaling', 'redis_fanout')}: scaling.redis_fanout: 'channel' is not "
            "supported with a Redis Cluster URL yet (docs/scaling.md); use 'node'"
        )
    if config.server.workers > 1 and config.scaling.adapter != "redis":
        raise ConfigError(
            f"{origin('server', 'workers')}: server.workers: more than 1 worker "
            "needs scaling.adapter = 'redis'"
        )
    _check_listeners(config.server, partial(origin, "server"))
    if bool(config.server.tls_cert_file) != bool(config.server.tls_key_file):
        raise ConfigError(
            f"{origin('server', 'tls_cert_file')}: server.tls_cert_file: tls_cert_file and "
            "tls_key_file must be set together"
        )
    _check_apps(config.apps, apps)


def _check_apps(configured: tuple[App, ...], apps: list[Layer]) -> None:
    """Per app: a rotation has an end; ids and keys are unique."""
    for index, app in enumerate(configured):
        if app.previous_secret and not app.previous_secret_expires_at:
            raise ConfigError(
                f"{apps[index]['previous_secret'][1]}: apps[{index}].previous_secret: needs "
                "previous_secret_expires_at (a rotation must end; docs/apps.md)"
            )
    for name in ("id", "key"):
        seen: dict[str, int] = {}
        for index, app in enumerate(configured):
            value = getattr(app, name)
            if value in seen:
                raise ConfigError(
                    f"{apps[index][name][1]}: apps[{index}].{name}: duplicate of "
                    f"apps[{seen[value]}].{name} ({value!r})"
                )
            seen[value] = index


def _check_listeners(server: ServerSettings, origin: Callable[[str], str]) -> None:
    """The separate API and WebSocket listeners (docs/deployment.md, "Separate listeners"):
    a host needs its port, and no two listeners share an address. Two sockets on one address
    would both bind with SO_REUSEPORT (``workers``) and split its connections at random."""
    addresses = {"port": (server.host, server.port)}
    for kind in ("api", "websocket"):
        host, port = getattr(server, f"{kind}_host"), getattr(server, f"{kind}_port")
        if host and not port:
            raise ConfigError(
                f"{origin(f'{kind}_host')}: server.{kind}_host: needs server.{kind}_port "
                f"(0 serves the {kind} part on server.port)"
            )
        if not port:
            continue
        address = (host or server.host, port)
        for other, taken in addresses.items():
            if address == taken and taken[1] != 0:
                raise ConfigError(
                    f"{origin(f'{kind}_port')}: server.{kind}_port: same address as "
                    f"server.{other} ({address[0]}:{port})"
                )
        addresses[f"{kind}_port"] = address
    metrics = (server.host, server.metrics_port)  # docs/metrics.md: on server.host
    for other, taken in addresses.items():
        if server.metrics_port and metrics == taken:
            raise ConfigError(
                f"{origin('metrics_port')}: server.metrics_port: same address as "
                f"server.{other} ({metrics[0]}:{server.metrics_port}; 0 serves /metrics "
                "with the HTTP API)"
            )
