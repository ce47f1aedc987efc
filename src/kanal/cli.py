"""The ``kanal`` command line: ``serve``, ``reload``, ``check-config``, ``sign``, ``apps``
(and hidden ``docs-settings``).

The setting flags are generated from :data:`kanal.settings.SETTINGS`, so every setting that has
an environment variable also has a flag spelled by the same rule, and none is hand-written
here. They default to ``argparse.SUPPRESS`` so only flags actually given reach
:func:`kanal.settings.load_config`, where they override the file and the environment. Flag
values stay strings until then, so a bad value is reported like a bad environment variable
(``kanal: error: --port: server.port: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kanal import __version__
from kanal.app_stores.commands import add_apps_parser
from kanal.settings import SETTINGS, ConfigError, load_config
from kanal.settings.render import dump_config, render_settings_markdown, splice_settings_markdown

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]
_METAVARS = {
    "str": "TEXT",
    "id": "ID",
    "int": "N",
    "float": "NUMBER",
    "time": "TIME",
    "strs": "A,B,...",
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command and return its exit status; configuration errors exit with 2.

    ``environ`` defaults to :data:`os.environ`; tests pass their own to stay hermetic.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors; argparse already printed
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    handler: Handler = args.handler
    try:
        return handler(args, os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"kanal: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The full parser; exposed so tests (and shell completion tools) can inspect it."""
    parser = argparse.ArgumentParser(
        prog="kanal", description="A self-hosted server for the Pusher Channels protocol."
    )
    parser.add_argument("--version", action="version", version=f"kanal {__version__}")
    # The metavar lists the public commands only, which keeps docs-settings out of --help.
    commands = parser.add_subparsers(
        dest="command", metavar="{serve,reload,check-config,sign,apps}", required=True
    )
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (default: $KANAL_CONFIG)")
    _add_setting_flags(serve)
    serve.set_defaults(handler=_serve)

    reload = commands.add_parser(
        "reload", help="make a running kanal serve re-read its config file (sends SIGHUP)"
    )
    reload.add_argument(
        "--pid-file",
        metavar="FILE",
        help="the running server's pid file (default: $KANAL_PID_FILE)",
    )
    reload.set_defaults(handler=_reload)

    check = commands.add_parser(
        "check-config", help="validate the configuration and print the effective config"
    )
    check.add_argument(
        "config",
        metavar="FILE",
        nargs="?",
        help="TOML config file (default: $KANAL_CONFIG, else the environment and flags alone)",
    )
    _add_setting_flags(check)
    check.set_defaults(handler=_check_config)

    sign = commands.add_parser("sign", help="print the HMAC-SHA256 hex digest of a string")
    sign.add_argument("--secret", required=True, help="app secret (visible in `ps`: debug only)")
    sign.add_argument("--string-to-sign", required=True, metavar="STR")
    sign.set_defaults(handler=_sign)

    add_apps_parser(commands, "TOML config file (default: $KANAL_CONFIG)")

    docs = commands.add_parser("docs-settings")
    docs.add_argument("--write", metavar="FILE", help="update the settings block of FILE")
    docs.set_defaults(handler=_docs_settings)
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One argument group per config section, one flag per settable setting."""
    sections = dict.fromkeys(row.section for row in SETTINGS if row.flag)
    for section in sections:
        title = f"[[{section}]] (first app)" if section == "apps" else f"[{section}]"
        group = parser.add_argument_group(f"{title} settings")
        for row in SETTINGS:
            if row.section != section or row.flag is None:
                continue
            help_text = f"{row.help} [{row.env}]".replace("%", "%%")
            if row.kind == "bool":
                group.add_argument(
                    row.flag,
                    *row.aliases,
                    dest=row.dest,
                    action=argparse.BooleanOptionalAction,
                    help=help_text,
                    default=argparse.SUPPRESS,
                )
            else:
                metavar = _METAVARS[row.kind]
                group.add_argument(
                    row.flag,
                    *row.aliases,
                    dest=row.dest,
                    metavar=metavar,
                    help=help_text,
                    default=argparse.SUPPRESS,
                )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    given = vars(args)
    return {row.dest: given[row.dest] for row in SETTINGS if row.flag and row.dest in given}


def _config_file(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The file given on the command line, else ``$KANAL_CONFIG``, else none (env only)."""
    path: str | None = args.config or environ.get("KANAL_CONFIG") or None
    return path


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path, overrides = _config_file(args, environ), _overrides(args)
    config = load_config(path, environ, overrides)
    from kanal import server  # late: the CLI must work (check-config, sign) without it

    try:
        # SIGHUP reads the same file, environment and flags again (kanal.reload).
        server.run(config, lambda: load_config(path, environ, overrides))
    except server.StartupError as exc:
        print(f"kanal: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _reload(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from kanal.process import PidFileError, signal_pid_file

    path = args.pid_file or environ.get("KANAL_PID_FILE")
    if not path:
        print("kanal: error: reload needs --pid-file FILE (or $KANAL_PID_FILE)", file=sys.stderr)
        return 2
    try:
        pid = signal_pid_file(path, signal.SIGHUP)
    except PidFileError as exc:
        print(f"kanal: error: {exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to kanal (pid {pid}); its log says whether the reload was applied")
    return 0


def _check_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = load_config(_config_file(args, environ), environ, _overrides(args))
    sys.stdout.write(dump_config(config))
    return 0


def _sign(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    secret, message = args.secret.encode(), args.string_to_sign.encode()
    print(hmac.new(secret, message, hashlib.sha256).hexdigest())
    return 0


def _docs_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.write is None:
        sys.stdout.write(render_settings_markdown())
        return 0
    path = Path(args.write)
    path.write_text(splice_settings_markdown(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0
