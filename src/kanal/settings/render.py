"""Writing settings out: the effective config as TOML, and the Markdown reference.

Ownership rule: the table itself lives in :mod:`kanal.settings.table`; this module only
renders it (``kanal check-config`` and ``docs/configuration.md``, kept in sync by a test).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kanal.config import Config
from kanal.settings.table import (
    BY_SECTION,
    DEV_APP,
    DOCS_END,
    DOCS_START,
    KIND_TEXT,
    Kind,
    Setting,
)

__all__ = ["dump_config", "render_settings_markdown", "splice_settings_markdown"]


def dump_config(config: Config) -> str:
    """The effective configuration as TOML; secrets, header values and URL passwords masked."""
    out = ["# kanal effective configuration (secrets masked)"]
    for section in ("server", "webhooks", "scaling"):
        out += ["", f"[{section}]", *_dump_rows(section, getattr(config, section))]
    for app in config.apps:
        out += ["", "[[apps]]", *_dump_rows("apps", app)]
        for target in app.webhooks:
            out += ["", "[[apps.webhooks]]", *_dump_rows("apps.webhooks", target)]
    return "\n".join(out) + "\n"


def _dump_rows(section: str, obj: object) -> list[str]:
    return [
        f"{row.name} = {_toml(row.kind, _masked(row.name, getattr(obj, row.name)))}"
        for row in BY_SECTION[section].values()
    ]


def _masked(name: str, value: Any) -> Any:
    if name == "secret":
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
    if kind in ("int", "float"):
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
            f"### `[[{section}]]`" if section.startswith("apps") else f"### `[{section}]`",
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
