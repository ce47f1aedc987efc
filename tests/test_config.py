"""kanal.settings: one table, three sources, strict validation and docs that cannot drift.

The table is generated from the dataclasses in kanal.config, so most tests here check the
rules that generation must follow (names, defaults, precedence) rather than single settings.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.config import App, Config, ScalingSettings, ServerSettings, WebhookSettings
from kanal.settings import (
    DEV_APP,
    DOCS_END,
    DOCS_START,
    SETTINGS,
    ConfigError,
    is_default_credentials,
    load_config,
)
from kanal.settings.render import dump_config, render_settings_markdown, splice_settings_markdown

__all__: list[str] = []

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
PUBLIC_SCHEMA = """
[server]
host = "0.0.0.0"
port = 6001

[[apps]]
id = "123456"
key = "my-key"
secret = "my-secret-value"
enable_client_messages = true
enable_user_authentication = true

[[apps.webhooks]]
url = "https://example.com/hook"
event_types = ["channel_occupied", "channel_vacated", "member_added"]
"""
MINIMAL_APP = '[[apps]]\nid = "7"\nkey = "k7"\nsecret = "s7-secret"\n'
ROTATION_END = "apps[0].previous_secret_expires_at"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kanal.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text), {}, {})


# -- the table -----------------------------------------------------------------------------


def test_table_covers_every_dataclass_field_with_its_default() -> None:
    sections = {
        "server": ServerSettings,
        "webhooks": WebhookSettings,
        "scaling": ScalingSettings,
        "apps": App,
    }
    for section, cls in sections.items():
        rows = {row.name: row for row in SETTINGS if row.section == section}
        names = {f.name for f in dataclasses.fields(cls) if (cls, f.name) != (App, "webhooks")}
        assert set(rows) == names
        for f in dataclasses.fields(cls):
            if f.name in rows:
                assert rows[f.name].default is f.default or rows[f.name].default == f.default


@pytest.mark.parametrize(
    ("section", "name", "env", "flag"),
    [
        ("server", "host", "KANAL_HOST", "--host"),
        ("server", "port", "KANAL_PORT", "--port"),
        ("server", "workers", "KANAL_WORKERS", "--workers"),
        ("webhooks", "grace_period", "KANAL_WEBHOOKS_GRACE_PERIOD", "--webhooks-grace-period"),
        ("scaling", "adapter", "KANAL_ADAPTER", "--adapter"),
        ("scaling", "redis_url", "KANAL_REDIS_URL", "--redis-url"),
        ("apps", "id", "KANAL_APP_ID", "--app-id"),
        ("apps", "secret", "KANAL_APP_SECRET", "--app-secret"),
        ("apps", "max_connections", "KANAL_APP_MAX_CONNECTIONS", "--app-max-connections"),
        (
            "apps",
            "enable_client_messages",
            "KANAL_APP_ENABLE_CLIENT_MESSAGES",
            "--app-enable-client-messages",
        ),
        ("apps.webhooks", "url", None, None),
    ],
)
def test_env_and_flag_names_follow_the_rule(
    section: str, name: str, env: str | None, flag: str | None
) -> None:
    (row,) = [r for r in SETTINGS if (r.section, r.name) == (section, name)]
    assert (row.env, row.flag) == (env, flag)


def test_env_vars_and_flags_are_unique_and_every_row_has_help() -> None:
    envs = [row.env for row in SETTINGS if row.env]
    flags = [row.flag for row in SETTINGS if row.flag]
    assert len(envs) == len(set(envs)) and len(flags) == len(set(flags))
    assert all(row.help.endswith(".") for row in SETTINGS)


# -- defaults and the development app ------------------------------------------------------


def test_defaults_equal_the_dataclass_defaults() -> None:
    config = load_config(None, {}, {})
    assert config.server == ServerSettings()
    assert config.webhooks == WebhookSettings()
    assert config.scaling == ScalingSettings()
    assert config.apps == (
        App(id="1", key="app-key", secret="app-secret", enable_client_messages=True),
    )
    assert is_default_credentials(config.apps[0])


def test_is_default_credentials_flags_either_public_value() -> None:
    assert is_default_credentials(App(id="9", key="app-key", secret="s-private"))
    assert is_default_credentials(App(id="9", key="k", secret="app-secret"))
    assert not is_default_credentials(App(id="1", key="k", secret="s-private"))


def test_env_modifies_the_development_app() -> None:
    environ = {"KANAL_APP_ID": "42", "KANAL_APP_MAX_CONNECTIONS": "5"}
    (app,) = load_config(None, environ, {}).apps
    assert (app.id, app.key, app.max_connections) == ("42", DEV_APP["key"], 5)
    assert app.enable_client_messages is True


def test_file_apps_replace_the_development_app_and_env_edits_the_first(tmp_path: Path) -> None:
    text = MINIMAL_APP + '[[apps]]\nid = "8"\nkey = "k8"\nsecret = "s8-secret"\n'
    config = load_config(write(tmp_path, text), {"KANAL_APP_MAX_CONNECTIONS": "3"}, {})
    assert [app.id for app in config.apps] == ["7", "8"]
    assert config.apps[0].enable_client_messages is False
    assert [app.max_connections for app in config.apps] == [3, 0]


# -- precedence ----------------------------------------------------------------------------


def test_precedence_file_then_env_then_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7000\n" + MINIMAL_APP + "max_connections = 1\n")
    env = {"KANAL_PORT": "7001", "KANAL_APP_MAX_CONNECTIONS": "2"}
    assert load_config(path, {}, {}).server.port == 7000
    assert load_config(path, env, {}).server.port == 7001
    flagged = load_config(path, env, {"port": "7002", "app_max_connections": 4})
    assert (flagged.server.port, flagged.apps[0].max_connections) == (7002, 4)
    assert load_config(path, env, {}).apps[0].max_connections == 2


def test_flags_accept_typed_values_and_strings() -> None:
    config = load_config(None, {}, {"app_enable_client_messages": False, "workers": 1})
    assert config.apps[0].enable_client_messages is False
    assert load_config(None, {}, {"webhooks_grace_period": "1.5"}).webhooks.grace_period == 1.5


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="nope"):
        load_config(None, {}, {"nope": 1})


# -- parsing -------------------------------------------------------------------------------


def test_public_schema_parses(tmp_path: Path) -> None:
    config = load_text(tmp_path, PUBLIC_SCHEMA)
    (app,) = config.apps
    assert (config.server.host, config.server.port) == ("0.0.0.0", 6001)
    assert (app.id, app.key, app.secret) == ("123456", "my-key", "my-secret-value")
    assert app.enable_client_messages and app.enable_user_authentication
    (hook,) = app.webhooks
    assert hook.url == "https://example.com/hook"
    assert hook.event_types == ("channel_occupied", "channel_vacated", "member_added")
    assert not is_default_credentials(app)


def test_value_conversions(tmp_path: Path) -> None:
    text = (
        "[webhooks]\ngrace_period = 1\n"
        '[[apps]]\nid = 123\nkey = "k"\nsecret = "s-secret"\n'
        'allowed_origins = ["https://a.example", "https://b.example"]\n'
        '[[apps.webhooks]]\nurl = "http://h.example/x"\nevent_types = ["client_event"]\n'
        'headers = { Authorization = "Bearer t", "X-Team" = "rt" }\n'
    )
    config = load_text(tmp_path, text)
    assert config.webhooks.grace_period == 1.0 and isinstance(config.webhooks.grace_period, float)
    app = config.apps[0]
    assert app.id == "123"
    assert app.allowed_origins == ("https://a.example", "https://b.example")
    assert app.webhooks[0].headers == (("Authorization", "Bearer t"), ("X-Team", "rt"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", True),
        ("1", True),
        ("TRUE", True),
        ("no", False),
        ("0", False),
        ("false", False),
    ],
)
def test_env_booleans(text: str, expected: bool) -> None:
    environ = {"KANAL_APP_REQUIRE_TLS": text}
    assert load_config(None, environ, {}).apps[0].require_tls is expected


def test_env_tuples_are_comma_separated() -> None:
    environ = {"KANAL_APP_ALLOWED_ORIGINS": "https://a.example, https://b.example,"}
    origins = load_config(None, environ, {}).apps[0].allowed_origins
    assert origins == ("https://a.example", "https://b.example")


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sever]\nport = 1\n", "sever"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("[webhooks]\ngrace = 1\n", "webhooks.grace"),
        (MINIMAL_APP + "max_conections = 1\n", "apps[0].max_conections"),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x.example"\n'
            'event_types = ["cache_miss"]\nmethod = "PUT"\n',
            "apps[0].webhooks[0].method",
        ),
    ],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: unknown setting")


def test_unknown_key_suggests_the_close_match(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        load_text(tmp_path, "[server]\nprot = 1\n")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = 1.5\n", "server.port"),
        ("[server]\nhost = 1\n", "server.host"),
        ('[server]\nlog_level = "verbose"\n', "server.log_level"),
        ('[server]\npath_prefix = "ws/"\n', "server.path_prefix"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[server]\nmax_frame_bytes = -1\n", "server.max_frame_bytes"),
        ("[webhooks]\nretry_window = -1.0\n", "webhooks.retry_window"),
        ("[webhooks]\ngrace_period = inf\n", "webhooks.grace_period"),
        ('[scaling]\nadapter = "nats"\n', "scaling.adapter"),
        ('[scaling]\nredis_url = "http://x"\n', "scaling.redis_url"),
        ('[scaling]\nadapter = "redis"\n', "scaling.redis_url"),
        ("[server]\nworkers = 2\n", "server.workers"),
        ("server = 1\n", "server"),
        ("[apps]\nid = 1\n", "apps"),
        ('[[apps]]\nid = "1"\nkey = "k"\n', "apps[0].secret"),
        ('[[apps]]\nid = ""\nkey = "k"\nsecret = "s"\n', "apps[0].id"),
        ('[[apps]]\nid = "1"\nkey = "a b"\nsecret = "s"\n', "apps[0].key"),
        ('[[apps]]\nid = 1.5\nkey = "k"\nsecret = "s"\n', "apps[0].id"),
        (MINIMAL_APP + "max_connections = -1\n", "apps[0].max_connections"),
        (MINIMAL_APP + "enable_client_messages = 1\n", "apps[0].enable_client_messages"),
        (MINIMAL_APP + 'allowed_origins = "https://a"\n', "apps[0].allowed_origins"),
        (MINIMAL_APP + "pong_timeout = 0\n", "apps[0].pong_timeout"),
        (MINIMAL_APP + MINIMAL_APP.replace('"k7"', '"other"'), "apps[1].id"),
        (MINIMAL_APP + MINIMAL_APP.replace('"7"', '"8"'), "apps[1].key"),
        (MINIMAL_APP + "webhooks = 1\n", "apps[0].webhooks"),
        (MINIMAL_APP + 'previous_secret = "old"\n', "apps[0].previous_secret"),
        (MINIMAL_APP + "previous_secret_expires_at = 2026-12-08T12:00:00\n", ROTATION_END),
        (MINIMAL_APP + "previous_secret_expires_at = 2026-12-08\n", ROTATION_END),
        (MINIMAL_APP + "previous_secret_expires_at = -1\n", ROTATION_END),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "ftp://x"\nevent_types = ["cache_miss"]\n',
            "apps[0].webhooks[0].url",
        ),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x"\nevent_types = ["vacated"]\n',
            "apps[0].webhooks[0].event_types",
        ),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x"\nevent_types = []\n',
            "apps[0].webhooks[0].event_types",
        ),
        (MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x"\n', "apps[0].webhooks[0].event_types"),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x"\nevent_types = ["cache_miss"]\n'
            'headers = { "x-pusher-signature" = "forged" }\n',
            "apps[0].webhooks[0].headers",
        ),
        (
            MINIMAL_APP + '[[apps.webhooks]]\nurl = "http://x"\nevent_types = ["cache_miss"]\n'
            "headers = { X-Count = 1 }\n",
            "apps[0].webhooks[0].headers",
        ),
    ],
)
def test_bad_file_values_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    assert str(info.value).startswith(f"{path}: {key}: "), str(info.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KANAL_PORT": "http"}, "KANAL_PORT: server.port: expected an integer, got 'http'"),
        ({"KANAL_PORT": "99999"}, "KANAL_PORT: server.port: must be between 0 and 65535"),
        ({"KANAL_APP_ENABLED": "maybe"}, "KANAL_APP_ENABLED: apps[0].enabled: expected a bool"),
        ({"KANAL_WEBHOOKS_GRACE_PERIOD": "nan"}, "KANAL_WEBHOOKS_GRACE_PERIOD: webhooks."),
        ({"KANAL_APP_SECRET": ""}, "KANAL_APP_SECRET: apps[0].secret: must be non-empty"),
        ({"KANAL_ADAPTER": "redis"}, "KANAL_ADAPTER: scaling.redis_url: required"),
        ({"KANAL_WORKERS": "4"}, "KANAL_WORKERS: server.workers: more than 1 worker"),
        (
            {"KANAL_APP_ALLOWED_ORIGINS": "https://example.com,https://a.*.example.com"},
            "KANAL_APP_ALLOWED_ORIGINS: apps[0].allowed_origins: 'https://a.*.example.com': a "
            "'*' may only stand for the first labels of the host",
        ),
        ({"KANAL_LOG_FORMAT": "xml"}, "KANAL_LOG_FORMAT: server.log_format: must be one of"),
        (
            {"KANAL_APP_PREVIOUS_SECRET_EXPIRES_AT": "2026-12-08T12:00:00"},
            f"KANAL_APP_PREVIOUS_SECRET_EXPIRES_AT: {ROTATION_END}: 2026-12-08T12:00:00 has no "
            "UTC offset",
        ),
        (
            {"KANAL_APP_PREVIOUS_SECRET_EXPIRES_AT": "tomorrow"},
            f"KANAL_APP_PREVIOUS_SECRET_EXPIRES_AT: {ROTATION_END}: expected a time",
        ),
        (
            {"KANAL_APP_PREVIOUS_SECRET": "old-secret"},
            "KANAL_APP_PREVIOUS_SECRET: apps[0].previous_secret: needs previous_secret_expires_at",
        ),
        (
            {"KANAL_MAX_CONNECTIONS_PER_IP_PER_SECOND": "-1"},
            "KANAL_MAX_CONNECTIONS_PER_IP_PER_SECOND: server.max_connections_per_ip_per_second: "
            "must be 0 or greater",
        ),
    ],
)
def test_bad_env_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ, {})
    assert str(info.value).startswith(message), str(info.value)


def test_bad_flag_values_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--app-max-connections: apps\[0\]\.max_connections"):
        load_config(None, {}, {"app_max_connections": "lots"})
    with pytest.raises(ConfigError, match=r"^--port: server\.port: expected an integer"):
        load_config(None, {}, {"port": True})


@pytest.mark.parametrize(
    "written",
    ["2026-12-08T12:00:00Z", "2026-12-08T13:00:00+01:00", "1796731200", "1796731200.0"],
)
def test_rotation_end_is_a_unix_time_or_an_offset_date_time(tmp_path: Path, written: str) -> None:
    # 1796731200 is 2026-12-08T12:00:00Z; TOML takes the date-time bare, env and flags quoted.
    text = MINIMAL_APP + f'previous_secret = "s6-secret"\nprevious_secret_expires_at = {written}\n'
    [app] = load_text(tmp_path, text).apps
    assert (app.previous_secret, app.previous_secret_expires_at) == ("s6-secret", 1796731200.0)
    environ = {"KANAL_APP_PREVIOUS_SECRET": "s6", "KANAL_APP_PREVIOUS_SECRET_EXPIRES_AT": written}
    assert load_config(None, environ, {}).apps[0].previous_secret_expires_at == 1796731200.0
    flags = {"app_previous_secret": "s6", "app_previous_secret_expires_at": written}
    assert load_config(None, {}, flags).apps[0].previous_secret_expires_at == 1796731200.0


def test_redis_with_url_and_workers_is_valid() -> None:
    environ = {
        "KANAL_ADAPTER": "redis",
        "KANAL_REDIS_URL": "redis://h:6379/0",
        "KANAL_WORKERS": "4",
    }
    config = load_config(None, environ, {})
    assert (config.scaling.adapter, config.server.workers) == ("redis", 4)


def test_interest_fanout_is_refused_with_a_cluster_url() -> None:
    environ = {
        "KANAL_ADAPTER": "redis",
        "KANAL_REDIS_URL": "redis+cluster://h1:7000,h2:7001",
        "KANAL_REDIS_FANOUT": "channel",
    }
    with pytest.raises(ConfigError, match=r"^KANAL_REDIS_FANOUT: scaling\.redis_fanout: 'channel'"):
        load_config(None, environ, {})
    environ["KANAL_REDIS_FANOUT"] = "node"
    assert load_config(None, environ, {}).scaling.redis_fanout == "node"


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.toml"), {}, {})
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_text(tmp_path, "[server\n")


# -- dump ----------------------------------------------------------------------------------


def test_dump_masks_secrets_and_passwords_and_stays_valid_toml(tmp_path: Path) -> None:
    text = (
        '[scaling]\nadapter = "redis"\nredis_url = "redis://user:hunter22@db:6379/0"\n'
        + PUBLIC_SCHEMA.replace(
            "[[apps.webhooks]]", "[[apps.webhooks]]\nheaders = {A = 'tok'}"
        ).replace("[server]", '[server]\nadmin_token = "console-password-1234"')
    ).replace(
        "enable_client_messages",
        'previous_secret = "old-secret-value"\n'
        "previous_secret_expires_at = 2026-12-08T12:00:00Z\nenable_client_messages",
    )
    dumped = dump_config(load_text(tmp_path, text))
    assert 'previous_secret = "ol***"' in dumped and "old-secret-value" not in dumped
    assert "my-secret-value" not in dumped and "hunter22" not in dumped and "'tok'" not in dumped
    assert '"tok"' not in dumped and "console-password" not in dumped
    assert 'admin_token = "***"' in dumped
    assert 'secret = "my***"' in dumped
    assert 'redis_url = "redis://user:***@db:6379/0"' in dumped
    document = tomllib.loads(dumped)
    assert document["apps"][0]["webhooks"][0]["headers"] == {"A": "***"}


def test_dump_reloads_to_the_same_config_apart_from_secrets(tmp_path: Path) -> None:
    config = load_text(tmp_path, PUBLIC_SCHEMA.replace("my-secret-value", "***"))
    reloaded = load_text(tmp_path, dump_config(config))
    assert reloaded == config


@given(text=st.text(st.characters(exclude_categories=["Cs"]), min_size=1))
def test_dump_escapes_any_string(text: str) -> None:
    config = Config(server=ServerSettings(host=text, path_prefix=""))
    assert tomllib.loads(dump_config(config))["server"]["host"] == text


# -- docs ----------------------------------------------------------------------------------


def test_docs_settings_block_is_in_sync() -> None:
    document = DOCS.read_text(encoding="utf-8")
    block = document.split(DOCS_START, 1)[1].split(DOCS_END, 1)[0]
    assert block == "\n" + render_settings_markdown()
    assert splice_settings_markdown(document) == document


def test_docs_list_every_setting() -> None:
    rendered = render_settings_markdown()
    for row in SETTINGS:
        assert f"| `{row.name}` |" in rendered
        assert row.env is None or f"`{row.env}`" in rendered


def test_docs_toml_examples_load(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for block in blocks:
        assert load_text(tmp_path, block).apps


def test_splice_needs_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        splice_settings_markdown("no markers here")


def test_the_admin_token_is_long_or_empty() -> None:
    assert load_config(None, {}, {}).server.admin_token == ""  # the console is off
    token = "a" * 16
    assert load_config(None, {"KANAL_ADMIN_TOKEN": token}, {}).server.admin_token == token
    with pytest.raises(ConfigError, match="admin_token: must be empty"):
        load_config(None, {"KANAL_ADMIN_TOKEN": "short"}, {})
    assert token not in repr(load_config(None, {"KANAL_ADMIN_TOKEN": token}, {}))
