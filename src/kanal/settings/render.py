"""Writing settings out: the effective config as TOML, and the Markdown reference.

Ownership rule: the table itself lives in :mod:`kanal.settings.table`; this module only
renders it (``kanal check-config`` and ``docs/configuration.md``, kept in sync by a test).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kanal import __version__
from kanal.config import App, Config, ServerSettings
from kanal.settings.table import (
    BY_SECTION,
    DEV_APP,
    DOCS_END,
    DOCS_START,
    KIND_TEXT,
    Kind,
    Setting,
)

__all__ = [
    "app_table",
    "dump_config",
    "render_settings_markdown",
    "splice_settings_markdown",
    "startup_summary",
]

#: Apps named one by one in the start-up summary; the rest are counted.
SUMMARY_APPS = 20


def dump_config(config: Config) -> str:
    """The effective configuration as TOML; secrets, header values and URL passwords masked."""
    out = ["# kanal effective configuration (secrets masked)"]
    for section in ("server", "webhooks", "scaling", "apps_store"):
        out += ["", f"[{section}]", *_dump_rows(section, getattr(config, section))]
    for app in config.apps:
        out += ["", "[[apps]]", *_dump_rows("apps", app)]
        for target in app.webhooks:
            out += ["", "[[apps.webhooks]]", *_dump_rows("apps.webhooks", target)]
    return "\n".join(out) + "\n"


def app_table(app: App) -> dict[str, Any]:
    """The app as its ``[[apps]]`` table in TOML types: every setting that differs from its
    default (``id`` and ``key`` always), webhooks as a list of tables. Loaded back with
    :func:`kanal.settings.loaders.app_from_table`, it gives the same app."""
    table = _non_defaults("apps", app)
    table["id"], table["key"] = app.id, app.key
    if app.webhooks:
        table["webhooks"] = [_non_defaults("apps.webhooks", target) for target in app.webhooks]
    return table


def _non_defaults(section: str, obj: object) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for row in BY_SECTION[section].values():
        value = getattr(obj, row.name)
        if value == row.default:
            continue
        if row.kind == "headers":
            value = dict(value)
        elif row.kind == "strs":
            value = list(value)
        table[row.name] = value
    return table


#: A listening address as the summary describes it: host, port, serves WebSocket connections,
#: serves the HTTP API (with /metrics and the console).
Listening = tuple[str, int, bool, bool]


def startup_summary(config: Config, node_id: str, listening: list[Listening]) -> list[str]:
    """The lines ``kanal serve`` logs once it listens: version, node, adapter, apps by id,
    listeners. No secret: apps are named by id and key, a Redis password is masked."""
    server, scaling = config.server, config.scaling
    adapter = scaling.adapter
    if adapter == "redis":
        url = _masked("redis_url", scaling.redis_url)
        adapter += f" ({url}, prefix {scaling.redis_prefix!r}, node_lease {scaling.node_lease:g} s)"
    tracing = ", every frame traced (verbose)" if server.verbose else ""
    lines = [
        f"kanal {__version__}: node {node_id}, adapter {adapter}, "
        f"log level {server.log_level}, format {server.log_format}{tracing}"
    ]
    if config.apps_store.url:
        store = config.apps_store
        lines.append(f"apps from {_masked('url', store.url)}, cached for {store.ttl:g} s")
    for app in () if config.apps_store.url else config.apps[:SUMMARY_APPS]:
        origins = ", ".join(app.allowed_origins) if app.allowed_origins else "any"
        lines.append(
            f"app {app.id}: key {app.key}{'' if app.enabled else ' (disabled)'}, client events "
            f"{'on' if app.enable_client_messages else 'off'}, "
            f"{len(app.webhooks)} webhook endpoint(s), origins {origins}"
        )
    if len(config.apps) > SUMMARY_APPS and not config.apps_store.url:
        lines.append(f"... and {len(config.apps) - SUMMARY_APPS} more apps")
    listeners = "; ".join(_listener(server, *address) for address in listening)
    if server.workers > 1:
        listeners += f" (one of {server.workers} workers sharing the ports)"
    per_ip = server.max_connections_per_ip_per_second
    limits = f"{per_ip} new connections per second per IP" if per_ip else "no per-IP limit"
    lines.append(f"{listeners}; {limits}")
    return lines


def _listener(server: ServerSettings, host: str, port: int, websocket: bool, api: bool) -> str:
    tls = bool(server.tls_cert_file)
    base = f"{host}:{port}{server.path_prefix}"
    served = []
    if websocket:
        served.append(f"WebSocket {'wss' if tls else 'ws'}://{base}/app/<key>")
    if api:
        served.append(f"HTTP API {'https' if tls else 'http'}://{base}/apps/<id>")
        if server.admin_token:
            served.append(f"console {'https' if tls else 'http'}://{base}/console/")
    return ", ".join(served) or f"health checks only on {base}"


def _dump_rows(section: str, obj: object) -> list[str]:
    return [
        f"{row.name} = {_toml(row.kind, _masked(row.name, getattr(obj, row.name)))}"
        for row in BY_SECTION[section].values()
    ]


def _masked(name: str, value: Any) -> Any:
    if name == "secret" or (name == "previous_secret" and value):  # empty: no rotation
        return _mask(value)
    if name == "admin_token":
        return "***" if value else value
    if name in ("redis_url", "url"):
        parts = urlsplit(value)
        if parts.password is None:
            return value
        user_info, _, host = parts.netloc.rpartition("@")
        return parts._replace(netloc=f"{user_info.partition(':')[0]}:***@{host}").geturl()
    if name == "headers":  # headers often carry tokens (Authorization)
        return tuple((header, _mask(text)) for header, text in value)
    return value


def _mask(secret: str) -> str:
    return secret[:2] + "***" if len(secret) >= 8 else "***"


def _toml(kind: Kind, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("int", "float", "time"):
        return repr(value)
    if kind == "strs":
        return "[" + ", ".join(_toml_str(item) for item in value) + "]"
    if kind == "headers":
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in value) + "}"
    return _toml_str(value)


def _toml_str(text: str) -> str:
    def escape(char: str) -> str:
        if char in '"\\':
            return "\\" + char
        return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char

    return '"' + "".join(map(escape, text)) + '"'


def render_settings_markdown() -> str:
    """The settings reference that ``docs/configuration.md`` holds between the markers."""
    lines: list[str] = []
    for section, rows in BY_SECTION.items():
        lines += [
            f"### `[[{section}]]`"
            if section in ("apps", "apps.webhooks")
            else f"### `[{section}]`",
            "",
            "| Key | Type | Default | Env var | Flag | Meaning |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [_markdown_row(row) for row in rows.values()]
        lines.append("")
    return "\n".join(lines)


def _markdown_row(row: Setting) -> str:
    flag = f"`{row.flag}`" if row.flag else "—"
    if row.flag and row.kind == "bool":
        flag += f", `--no-{row.flag[2:]}`"
    flag += "".join(f", `{alias}`" for alias in row.aliases)
    if row.required:
        dev = DEV_APP.get(row.name) if row.section == "apps" else None
        default = "required" if dev is None else f"required (dev app `{_toml(row.kind, dev)}`)"
    else:
        default = f"`{_toml(row.kind, row.default)}`"
    kind = KIND_TEXT[row.kind].split(" ", 1)[1]
    env = f"`{row.env}`" if row.env else "—"
    meaning = row.help.replace("|", "\\|")
    return f"| `{row.name}` | {kind} | {default} | {env} | {flag} | {meaning} |"


def splice_settings_markdown(document: str) -> str:
    """``document`` with the block between the settings markers replaced by the fresh table."""
    head, start, rest = document.partition(DOCS_START)
    _, end, tail = rest.partition(DOCS_END)
    if not start or not end:
        raise ValueError(f"document lacks the {DOCS_START} ... {DOCS_END} markers")
    return f"{head}{DOCS_START}\n{render_settings_markdown()}{DOCS_END}{tail}"
