"""``--webhook-url`` / ``KANAL_APP_WEBHOOK_URL`` / ``[[apps]] webhook_url``: one webhook endpoint
for the first app without an ``[[apps.webhooks]]`` table (Slanger's ``--webhook_url``).

The delivery itself, to a real receiver from a ``kanal serve`` process, is in
tests/test_operator_process.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kanal.cli import build_parser
from kanal.config import WebhookTarget
from kanal.protocol.webhooks import EVENT_TYPES
from kanal.settings import ConfigError, load_config, resolve_config
from kanal.settings.render import dump_config

URL = "http://127.0.0.1:3000/pusher/webhooks"
EVERYTHING = WebhookTarget(url=URL, event_types=EVENT_TYPES)


def test_the_flag_gives_the_development_app_an_endpoint_for_every_event_type() -> None:
    for dest in ("app_webhook_url", "webhook_url"):
        args = build_parser().parse_args(["serve", f"--{dest.replace('_', '-')}", URL])
        overrides = {"app_webhook_url": vars(args)["app_webhook_url"]}
        (app,) = load_config(None, {}, overrides).apps
        assert (app.id, app.webhook_url, app.webhooks) == ("1", URL, (EVERYTHING,))
    (app,) = load_config(None, {"KANAL_APP_WEBHOOK_URL": URL}, {}).apps
    assert app.webhooks == (EVERYTHING,)
    assert load_config(None, {}, {}).apps[0].webhooks == ()


def test_a_file_app_keeps_its_endpoints_and_gets_one_more(tmp_path: Path) -> None:
    path = tmp_path / "kanal.toml"
    path.write_text(
        '[[apps]]\nid = "7"\nkey = "k7"\nsecret = "s7-secret"\n\n'
        '[[apps.webhooks]]\nurl = "https://example.com/hook"\nevent_types = ["member_added"]\n\n'
        '[[apps]]\nid = "8"\nkey = "k8"\nsecret = "s8-secret"\n',
        encoding="utf-8",
    )
    first, second = load_config(str(path), {}, {"app_webhook_url": URL}).apps
    assert [t.url for t in first.webhooks] == ["https://example.com/hook", URL]
    assert first.webhooks[1] == EVERYTHING
    assert second.webhooks == ()  # only the first app, as with every --app-* flag


def test_the_printed_config_loads_back_without_a_second_endpoint(tmp_path: Path) -> None:
    config = load_config(None, {}, {"app_webhook_url": URL})
    dumped = dump_config(config)
    assert f'webhook_url = "{URL}"' in dumped and "[[apps.webhooks]]" in dumped
    path = tmp_path / "dumped.toml"
    path.write_text(dumped.replace('"ap***"', '"app-secret"'), encoding="utf-8")
    assert load_config(str(path), {}, {}).apps[0].webhooks == (EVERYTHING,)


def test_an_embedding_app_gets_the_same_shorthand() -> None:
    config = resolve_config(None, {"id": "1", "key": "k", "secret": "s", "webhook_url": URL}, {})
    assert config.apps[0].webhooks == (EVERYTHING,)


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--app-webhook-url: apps\[0\]\.webhook_url: must"):
        load_config(None, {}, {"app_webhook_url": "ftp://example.com"})
