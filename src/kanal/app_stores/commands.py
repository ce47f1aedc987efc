"""``kanal apps create|list|show|update|disable|enable|delete|rotate-secret`` (docs/apps.md).

Ownership rule: these commands change apps only through :class:`SqlAppStore`; their options
are generated from the ``[apps]`` rows of :mod:`kanal.settings.table` (``--enable-client-
messages``, ``--max-connections N``, ...: the TOML names, ``_`` spelled ``-``), and their values
are parsed and checked as the file's are. The store is found as ``kanal serve`` finds it:
``--config FILE`` (else ``$KANAL_CONFIG``), the ``KANAL_APPS_STORE_*`` variables and the
``--apps-store-*`` flags. With the TOML file as the store, ``list`` and ``show`` work and the
commands that write say to edit the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from kanal.app_stores.sql import AppConflict, AppNotFound, SqlAppStore, StoreUnavailable
from kanal.config import App, Config
from kanal.settings.loaders import ConfigError, app_from_table, load_config, parse_setting
from kanal.settings.render import app_table
from kanal.settings.table import BY_SECTION, WEBHOOK_EVENT_TYPES

__all__ = ["DEFAULT_GRACE", "add_apps_parser"]

#: ``rotate-secret --grace``: a day for every backend to deploy the new secret (docs/apps.md).
DEFAULT_GRACE = 86400.0
# Set by rotate-secret only; ``id`` names the app (an argument); ``secret`` only on create.
_NOT_OPTIONS = ("id", "previous_secret", "previous_secret_expires_at")
_WRITES = ("create", "update", "disable", "enable", "delete", "rotate-secret")
_LIST_COLUMNS = ("id", "key", "enabled", "enable_client_messages", "webhooks")


def add_apps_parser(commands: Any, config_help: str) -> None:
    """``kanal apps ...`` as a subcommand of ``commands`` (the top-level subparsers)."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--config", metavar="FILE", help=config_help)
    for row in BY_SECTION["apps_store"].values():
        store.add_argument(
            row.flag or "", dest=row.dest, default=argparse.SUPPRESS, help=f"{row.help} [{row.env}]"
        )
    store.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apps = commands.add_parser("apps", help="create, list and change apps in the apps store")
    verbs = apps.add_subparsers(dest="verb", required=True)
    for verb, help_text in (
        ("create", "add an app; prints its credentials (the secret only this once)"),
        ("list", "every app: id, key, enabled"),
        ("show", "one app's settings (secret masked)"),
        ("update", "change settings of an app"),
        ("disable", "refuse the app's connections and API calls (open ones close, 4003)"),
        ("enable", "accept the app again"),
        ("delete", "remove the app (open connections close, 4003)"),
        ("rotate-secret", "new secret; the old one is accepted for --grace seconds"),
    ):
        parser = verbs.add_parser(verb, help=help_text, parents=[store])
        if verb == "create":
            parser.add_argument("--id", help="app id (default: 7 random digits)")
        elif verb != "list":
            parser.add_argument("app_id", metavar="APP_ID")
        if verb in ("create", "update"):
            _add_setting_options(parser, with_secret=verb == "create")
        if verb == "rotate-secret":
            parser.add_argument(
                "--grace",
                type=float,
                default=DEFAULT_GRACE,
                metavar="SECONDS",
                help=f"seconds the old secret stays valid (default {DEFAULT_GRACE:g})",
            )
        parser.set_defaults(handler=_run)


def _add_setting_options(parser: argparse.ArgumentParser, *, with_secret: bool) -> None:
    group = parser.add_argument_group("[[apps]] settings (as in the TOML file)")
    for row in BY_SECTION["apps"].values():
        if row.name in _NOT_OPTIONS or (row.name == "secret" and not with_secret):
            continue
        flag, dest = "--" + row.name.replace("_", "-"), f"setting_{row.name}"
        help_text = row.help.replace("%", "%%")
        if row.name == "secret":
            help_text = "an existing app's secret (default: generated); visible in `ps`"
        if row.kind == "bool":
            group.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help_text)
    group.add_argument(
        "--webhooks",
        metavar="JSON",
        dest="setting_webhooks",
        default=argparse.SUPPRESS,
        help='[[apps.webhooks]] as a JSON array: [{"url": ..., "event_types": [...]}]',
    )


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = _config(args, environ)
    if not config.apps_store.url:
        return _toml_store(args, config)
    store = SqlAppStore.from_url(config.apps_store.url)
    try:
        return _VERBS[args.verb](store, args)
    except (AppNotFound, AppConflict, StoreUnavailable) as exc:
        what = f"no app with id {exc}" if isinstance(exc, AppNotFound) else str(exc)
        print(f"kanal: error: {what}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    path = args.config or environ.get("KANAL_CONFIG") or None
    given = vars(args)
    overrides = {
        row.dest: given[row.dest] for row in BY_SECTION["apps_store"].values() if row.dest in given
    }
    return load_config(path, environ, overrides)


def _toml_store(args: argparse.Namespace, config: Config) -> int:
    if args.verb in _WRITES:
        raise ConfigError(
            f"apps {args.verb}: the apps are the [[apps]] of the config file: edit it, or set "
            "[apps_store] url to keep them in a database (docs/apps.md)"
        )
    apps = {app.id: app for app in config.apps}
    if args.verb == "list":
        return _print_list(tuple(apps.values()), args.json)
    if args.app_id not in apps:
        print(f"kanal: error: no app with id {args.app_id}", file=sys.stderr)
        return 1
    return _print_app(apps[args.app_id], args.json)


# -- the verbs ----------------------------------------------------------------------------


def _create(store: SqlAppStore, args: argparse.Namespace) -> int:
    table: dict[str, Any] = {
        "key": secrets.token_hex(10),  # 20 hex digits, as Pusher's keys
        "secret": secrets.token_hex(16),
        **_given_settings(args),
    }
    for attempt in range(3):  # a random id may be taken: draw again
        table["id"] = args.id or str(1_000_000 + secrets.randbelow(9_000_000))
        app = app_from_table(table, "kanal apps create")
        try:
            store.create(app)
            break
        except AppConflict:
            if args.id or attempt == 2:
                raise
    return _print_credentials(
        {"id": app.id, "key": app.key, "secret": app.secret}, args.json, "app created"
    )


def _list(store: SqlAppStore, args: argparse.Namespace) -> int:
    return _print_list(store.load()[1], args.json)


def _show(store: SqlAppStore, args: argparse.Namespace) -> int:
    return _print_app(store.get(args.app_id), args.json)


def _update(store: SqlAppStore, args: argparse.Namespace) -> int:
    app = store.get(args.app_id)
    given = _given_settings(args)
    table = {**app_table(app), **given}
    if "webhook_url" in given and "webhooks" not in given and app.webhook_url:
        # The loader added the old webhook_url to the endpoints: it goes with it.
        folded = {"url": app.webhook_url, "event_types": list(WEBHOOK_EVENT_TYPES)}
        table["webhooks"] = [target for target in table["webhooks"] if target != folded]
    store.replace(app_from_table(table, "kanal apps update"))
    return _print_app(store.get(args.app_id), args.json)


def _switch(enabled: bool) -> Callable[[SqlAppStore, argparse.Namespace], int]:
    def switch(store: SqlAppStore, args: argparse.Namespace) -> int:
        store.replace(dataclasses.replace(store.get(args.app_id), enabled=enabled))
        return _print_app(store.get(args.app_id), args.json)

    return switch


def _delete(store: SqlAppStore, args: argparse.Namespace) -> int:
    store.delete(args.app_id)
    if args.json:
        print(json.dumps({"id": args.app_id, "deleted": True}))
    else:
        print(f"app {args.app_id} deleted")
    return 0


def _rotate_secret(store: SqlAppStore, args: argparse.Namespace) -> int:
    if args.grace < 0:
        raise ConfigError("apps rotate-secret: --grace: must be 0 or greater")
    app = store.get(args.app_id)
    expires = time.time() + args.grace
    rotated = dataclasses.replace(
        app,
        secret=secrets.token_hex(16),
        previous_secret=app.secret if args.grace else "",
        previous_secret_expires_at=expires if args.grace else 0.0,
    )
    store.replace(rotated)
    shown = {
        "id": rotated.id,
        "key": rotated.key,
        "secret": rotated.secret,
        "previous_secret_expires_at": rotated.previous_secret_expires_at,
    }
    return _print_credentials(shown, args.json, "secret rotated")


_VERBS: dict[str, Callable[[SqlAppStore, argparse.Namespace], int]] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "disable": _switch(False),
    "enable": _switch(True),
    "delete": _delete,
    "rotate-secret": _rotate_secret,
}


# -- options and output -------------------------------------------------------------------


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[[apps]]`` settings given as options, parsed and checked like flags."""
    table: dict[str, Any] = {}
    for dest, raw in vars(args).items():
        if not dest.startswith("setting_"):
            continue
        name = dest.removeprefix("setting_")
        flag = "--" + name.replace("_", "-")
        if name == "webhooks":
            table[name] = _json_option(flag, raw)
        elif isinstance(raw, bool):
            table[name] = raw
        else:
            table[name] = parse_setting(BY_SECTION["apps"][name], raw, flag)
    return table


def _json_option(flag: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not JSON: {exc}") from None


def _masked_table(app: App) -> dict[str, Any]:
    table = app_table(app)
    for name in ("secret", "previous_secret"):
        if table.get(name):
            table[name] = "***"
    for target in table.get("webhooks", ()):
        if "headers" in target:  # headers often carry tokens (Authorization)
            target["headers"] = {header: "***" for header in target["headers"]}
    return table


def _print_list(apps: tuple[App, ...], as_json: bool) -> int:
    rows = [
        {
            "id": a.id,
            "key": a.key,
            "enabled": a.enabled,
            "enable_client_messages": a.enable_client_messages,
            "webhooks": len(a.webhooks),
        }
        for a in apps
    ]
    if as_json:
        print(json.dumps(rows))
        return 0
    cells = [list(_LIST_COLUMNS)] + [[_text(row[c]) for c in _LIST_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_LIST_COLUMNS))]
    for line in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return 0


def _print_app(app: App, as_json: bool) -> int:
    table = _masked_table(app)
    if as_json:
        print(json.dumps(table))
        return 0
    width = max(len(name) for name in table)
    for name, value in table.items():
        print(f"{name.ljust(width)}  {_text(value)}")
    return 0


def _print_credentials(shown: dict[str, Any], as_json: bool, what: str) -> int:
    if as_json:
        print(json.dumps(shown))
        return 0
    print(f"{what}; the secret is shown only now: keep it in your backend's secret store")
    for name, value in shown.items():
        if name == "previous_secret_expires_at":
            value = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "now"
            name = "old secret until"
        print(f"{name:<16}  {value}")
    return 0


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
