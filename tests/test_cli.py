"""kanal.cli: generated flags, exit statuses and messages, without starting a server."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import runpy
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import kanal
from kanal.cli import build_parser, main
from kanal.config import Config
from kanal.settings import SETTINGS
from kanal.settings.render import render_settings_markdown

__all__: list[str] = []

VECTORS = Path(__file__).resolve().parent / "vectors" / "test_vectors.json"
CONFIG = """
[server]
port = 7100

[[apps]]
id = "123456"
key = "my-key"
secret = "my-long-secret"
enable_client_messages = true
enable_user_authentication = true

[[apps.webhooks]]
url = "https://hooks.example/x"
event_types = ["channel_occupied"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "kanal.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return str(path)


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Replace kanal.server with a recorder so that `serve` returns at once."""
    calls: list[Config] = []

    def run(config: Config, load: Callable[[], Config]) -> None:
        assert load() == config  # SIGHUP reads the same file, environment and flags again
        calls.append(config)

    module = types.ModuleType("kanal.server")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kanal.server", module)
    monkeypatch.setattr(kanal, "server", module, raising=False)
    return calls


def test_every_settable_setting_has_a_generated_flag() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    serve = subparsers.choices["serve"]
    options = {option for action in serve._actions for option in action.option_strings}
    for row in SETTINGS:
        if row.flag is None:
            continue
        assert row.flag in options
        if row.kind == "bool":
            assert "--no-" + row.flag[2:] in options


def test_serve_passes_flags_over_env_over_file(config_file: str, fake_server: list[Config]) -> None:
    environ = {"KANAL_PORT": "7200", "KANAL_HOST": "0.0.0.0", "KANAL_APP_MAX_CONNECTIONS": "9"}
    argv = ["serve", "--config", config_file, "--port", "7300", "--no-app-enable-client-messages"]
    assert main(argv, environ) == 0
    (config,) = fake_server
    assert (config.server.host, config.server.port) == ("0.0.0.0", 7300)
    app = config.apps[0]
    assert (app.id, app.max_connections, app.enable_client_messages) == ("123456", 9, False)
    assert app.enable_user_authentication is True


def test_serve_reads_kanal_config_and_defaults(config_file: str, fake_server: list[Config]) -> None:
    assert main(["serve"], {"KANAL_CONFIG": config_file}) == 0
    assert main(["serve"], {}) == 0
    assert fake_server[0].server.port == 7100
    assert fake_server[1].apps[0].key == "app-key"


def test_serve_config_error_exits_2(
    capsys: pytest.CaptureFixture[str], fake_server: list[Config]
) -> None:
    assert main(["serve", "--port", "http"], {}) == 2
    err = capsys.readouterr().err
    assert err == "kanal: error: --port: server.port: expected an integer, got 'http'\n"
    assert fake_server == []


def test_reload_needs_a_pid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reload"], {}) == 2
    assert capsys.readouterr().err == (
        "kanal: error: reload needs --pid-file FILE (or $KANAL_PID_FILE)\n"
    )


def test_check_config_prints_masked_config(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", config_file], {}) == 0
    out = capsys.readouterr().out
    assert "my-long-secret" not in out
    assert 'secret = "my***"' in out
    assert "port = 7100" in out
    assert 'url = "https://hooks.example/x"' in out


def test_check_config_applies_env_and_flags(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", config_file, "--port", "7400"], {"KANAL_HOST": "::"}) == 0
    out = capsys.readouterr().out
    assert 'host = "::"' in out and "port = 7400" in out


def test_check_config_without_a_file_reads_kanal_config_or_the_environment(
    config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config"], {"KANAL_CONFIG": config_file}) == 0
    assert "port = 7100" in capsys.readouterr().out
    assert main(["check-config"], {"KANAL_PORT": "7300", "KANAL_APP_KEY": "env-key"}) == 0
    out = capsys.readouterr().out
    assert "port = 7300" in out and 'key = "env-key"' in out


def test_check_config_error_names_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\nmax_conections = 1\n')
    assert main(["check-config", str(path)], {}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"kanal: error: {path}: apps[0].max_conections: unknown")


def test_sign_matches_the_documented_vector(capsys: pytest.CaptureFixture[str]) -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    secret = vectors["credentials"]["secret"]
    first = vectors["auth"][0]
    string_to_sign = first["string_to_sign"]
    assert main(["sign", "--secret", secret, "--string-to-sign", string_to_sign]) == 0
    out = capsys.readouterr().out
    assert out == first["signature"] + "\n"
    expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert out.strip() == expected


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"kanal {kanal.__version__}\n"
    assert main([]) == 2
    assert main(["serve", "--no-such-flag"]) == 2
    assert "docs-settings" not in capsys.readouterr().err


def test_docs_settings_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["docs-settings"]) == 0
    assert capsys.readouterr().out == render_settings_markdown()
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n<!-- settings:start -->\nold\n<!-- settings:end -->\ntail\n")
    assert main(["docs-settings", "--write", str(doc)]) == 0
    assert doc.read_text() == (
        "# T\n<!-- settings:start -->\n"
        + render_settings_markdown()
        + "<!-- settings:end -->\ntail\n"
    )


def test_python_dash_m_kanal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["kanal", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("kanal", run_name="__main__")
    assert info.value.code == 0
