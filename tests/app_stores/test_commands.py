"""``kanal apps``: round trips through ``python -m kanal apps ...`` processes, the store found as
``kanal serve`` finds it (``--config``, ``KANAL_APPS_STORE_URL``, ``--apps-store-url``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kanal.app_stores.commands import DEFAULT_GRACE
from kanal.app_stores.sql import SqlAppStore
from kanal.settings.table import BY_SECTION


def kanal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KANAL_")}
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(*args: str, url: str) -> Any:
    """``kanal apps <args> --json --apps-store-url URL``: its JSON output (exit 0)."""
    done = kanal("apps", *args, "--json", "--apps-store-url", url)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_create_list_show_update_and_delete(store_url: str) -> None:
    created = ok("create", "--enable-client-messages", "--allowed-origins", "https://a.example",
                 url=store_url)  # fmt: skip
    assert set(created) == {"id", "key", "secret"} and created["id"].isdigit()
    assert len(created["secret"]) == 32 and len(created["key"]) == 20
    app_id = created["id"]
    listed = ok("list", url=store_url)
    assert listed == [{"id": app_id, "key": created["key"], "enabled": True,
                       "enable_client_messages": True, "webhooks": 0}]  # fmt: skip
    shown = ok("show", app_id, url=store_url)
    assert shown["secret"] == "***" and shown["allowed_origins"] == ["https://a.example"]
    hooks = '[{"url": "https://hooks.example/x", "event_types": ["channel_occupied"]}]'
    updated = ok("update", app_id, "--max-connections", "10", "--no-enable-client-messages",
                 "--webhooks", hooks, url=store_url)  # fmt: skip
    assert updated["max_connections"] == 10 and "enable_client_messages" not in updated
    assert updated["webhooks"] == [json.loads(hooks)[0]]
    store = SqlAppStore.from_url(store_url)
    try:
        app = store.get(app_id)
        assert app.secret == created["secret"] and app.max_connections == 10
    finally:
        store.close()
    assert ok("disable", app_id, url=store_url)["enabled"] is False
    assert "enabled" not in ok("enable", app_id, url=store_url)  # the default again
    assert ok("delete", app_id, url=store_url) == {"id": app_id, "deleted": True}
    gone = kanal("apps", "show", app_id, "--apps-store-url", store_url)
    assert gone.returncode == 1 and f"no app with id {app_id}" in gone.stderr
    assert ok("list", url=store_url) == []


def test_rotate_secret_keeps_the_old_one_for_the_grace_period(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'apps.db'}"
    created = ok("create", "--id", "7", url=url)
    before = time.time()
    rotated = ok("rotate-secret", "7", "--grace", "600", url=url)
    assert rotated["secret"] != created["secret"] and len(rotated["secret"]) == 32
    assert before + 600 <= rotated["previous_secret_expires_at"] <= time.time() + 600
    store = SqlAppStore.from_url(url)
    try:
        app = store.get("7")
        assert (app.secret, app.previous_secret) == (rotated["secret"], created["secret"])
        assert app.previous_secret_expires_at == rotated["previous_secret_expires_at"]
        ok("rotate-secret", "7", url=url)  # the default grace
        assert store.get("7").previous_secret_expires_at >= before + DEFAULT_GRACE
        ok("rotate-secret", "7", "--grace", "0", url=url)  # compromised: the old one dies now
        app = store.get("7")
        assert (app.previous_secret, app.previous_secret_expires_at) == ("", 0.0)
    finally:
        store.close()


def test_a_new_webhook_url_replaces_the_old_one(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'apps.db'}"
    ok("create", "--id", "3", "--webhook-url", "https://old.example/hook", url=url)
    shown = ok("update", "3", "--webhook-url", "https://new.example/hook", url=url)
    assert [target["url"] for target in shown["webhooks"]] == ["https://new.example/hook"]
    shown = ok("update", "3", "--webhook-url", "", url=url)
    assert "webhooks" not in shown and "webhook_url" not in shown


def test_the_store_is_found_as_kanal_serve_finds_it(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'apps.db'}"
    config = tmp_path / "kanal.toml"
    config.write_text(f'[apps_store]\nurl = "{url}"\n')
    created = kanal("apps", "create", "--id", "1", "--json", "--config", str(config))
    assert created.returncode == 0, created.stderr
    by_env = kanal("apps", "list", "--json", env={"KANAL_CONFIG": str(config)})
    assert [app["id"] for app in json.loads(by_env.stdout)] == ["1"]
    by_var = kanal("apps", "show", "1", "--json", env={"KANAL_APPS_STORE_URL": url})
    assert json.loads(by_var.stdout)["id"] == "1"
    other = f"sqlite://{tmp_path / 'other.db'}"  # a flag wins over the file
    flagged = kanal("apps", "list", "--json", "--config", str(config), "--apps-store-url", other)
    assert json.loads(flagged.stdout) == []


def test_table_output_and_credentials_printed_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'apps.db'}"
    created = kanal("apps", "create", "--id", "55", "--key", "my-key", "--apps-store-url", url)
    assert created.returncode == 0, created.stderr
    assert "the secret is shown only now" in created.stdout
    secret = created.stdout.split("secret", 2)[2].split()[0]
    listed = kanal("apps", "list", "--apps-store-url", url).stdout.splitlines()
    assert listed[0].split() == ["id", "key", "enabled", "enable_client_messages", "webhooks"]
    assert listed[1].split() == ["55", "my-key", "yes", "no", "0"]
    shown = kanal("apps", "show", "55", "--apps-store-url", url).stdout
    assert "secret  ***" in shown and secret not in shown


def test_options_are_the_toml_settings_checked_as_the_file_is(tmp_path: Path) -> None:
    help_text = kanal("apps", "update", "--help").stdout
    for row in BY_SECTION["apps"].values():
        flag = "--" + row.name.replace("_", "-")
        settable = row.name not in ("id", "secret", "previous_secret", "previous_secret_expires_at")
        assert (flag + " " in help_text or flag + "\n" in help_text) == settable, flag
    url = f"sqlite://{tmp_path / 'apps.db'}"
    bad = kanal("apps", "create", "--max-connections", "-1", "--apps-store-url", url)
    assert bad.returncode == 2
    assert "--max-connections: apps.max_connections: must be 0 or greater" in bad.stderr
    bad = kanal("apps", "create", "--webhooks", '[{"url": "ftp://x"}]', "--apps-store-url", url)
    assert bad.returncode == 2 and "apps.webhooks[0]" in bad.stderr
    assert kanal("apps", "list", "--json", "--apps-store-url", url).stdout.strip() == "[]"


def test_a_toml_store_lists_and_refuses_writes(tmp_path: Path) -> None:
    config = tmp_path / "kanal.toml"
    config.write_text('[[apps]]\nid = "9"\nkey = "k9"\nsecret = "s9"\n')
    listed = kanal("apps", "list", "--json", "--config", str(config))
    assert [app["key"] for app in json.loads(listed.stdout)] == ["k9"]
    refused = kanal("apps", "disable", "9", "--config", str(config))
    assert refused.returncode == 2 and "edit it, or set [apps_store] url" in refused.stderr


@pytest.mark.parametrize("verb", ["show", "update", "disable", "enable", "delete"])
def test_unknown_app_ids_fail(verb: str, tmp_path: Path) -> None:
    done = kanal("apps", verb, "404", "--apps-store-url", f"sqlite://{tmp_path / 'a.db'}")
    assert done.returncode == 1 and "no app with id 404" in done.stderr


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["apps", "list"]])
def test_a_missing_driver_names_the_extra(command: list[str]) -> None:
    # None in sys.modules makes `import psycopg` fail, as where kanal[postgresql] is missing.
    code = (
        "import sys; sys.modules['psycopg'] = None; from kanal.cli import main; "
        f"sys.exit(main({[*command, '--apps-store-url', 'postgresql://k@127.0.0.1/k']!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "postgresql needs the psycopg package: pip install 'kanal[postgresql]'" in done.stderr
