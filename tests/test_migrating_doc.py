"""docs/migrating.md cannot drift from kanal or from what it describes.

* Every ``KANAL_*`` variable it names is one of kanal's, every kanal flag parses.
* Its soketi tables name exactly the variables soketi 1.6 reads (:data:`SOKETI`, the keys of
  the environment map of soketi's command line in its 1.6 releases), each once.
* Its Slanger table names every flag of Slanger's command line (:data:`SLANGER`, from its
  ``bin/slanger``), and the kanal column of each row parses as ``kanal serve`` flags.
* Its TOML examples load, and its example ``kanal serve`` command parses.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from kanal.cli import build_parser
from kanal.settings import load_config
from kanal.settings.table import BY_DEST, BY_ENV

DOC = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"

SOKETI = frozenset(
    "SOKETI_" + name
    for name in (
        "ADAPTER_CLUSTER_REQUESTS_TIMEOUT",
        "ADAPTER_DRIVER",
        "ADAPTER_NATS_NODES_NUMBER",
        "ADAPTER_NATS_PASSWORD",
        "ADAPTER_NATS_PREFIX",
        "ADAPTER_NATS_REQUESTS_TIMEOUT",
        "ADAPTER_NATS_SERVERS",
        "ADAPTER_NATS_TIMEOUT",
        "ADAPTER_NATS_TOKEN",
        "ADAPTER_NATS_USER",
        "ADAPTER_REDIS_CLUSTER_MODE",
        "ADAPTER_REDIS_PREFIX",
        "ADAPTER_REDIS_PUB_OPTIONS",
        "ADAPTER_REDIS_REQUESTS_TIMEOUT",
        "ADAPTER_REDIS_SUB_OPTIONS",
        "APP_MANAGER_CACHE_ENABLED",
        "APP_MANAGER_CACHE_TTL",
        "APP_MANAGER_DRIVER",
        "APP_MANAGER_DYNAMODB_ENDPOINT",
        "APP_MANAGER_DYNAMODB_REGION",
        "APP_MANAGER_DYNAMODB_TABLE",
        "APP_MANAGER_MYSQL_TABLE",
        "APP_MANAGER_MYSQL_USE_V2",
        "APP_MANAGER_MYSQL_VERSION",
        "APP_MANAGER_POSTGRES_TABLE",
        "APP_MANAGER_POSTGRES_VERSION",
        "CACHE_DRIVER",
        "CACHE_REDIS_CLUSTER_MODE",
        "CACHE_REDIS_OPTIONS",
        "CHANNEL_CACHE_TTL",
        "CHANNEL_LIMITS_MAX_NAME_LENGTH",
        "CLUSTER_BROADCAST_ADDRESS",
        "CLUSTER_CHECK_INTERVAL",
        "CLUSTER_HOST",
        "CLUSTER_IGNORE_PROCESS",
        "CLUSTER_KEEPALIVE_INTERVAL",
        "CLUSTER_MASTER_TIMEOUT",
        "CLUSTER_MULTICAST_ADDRESS",
        "CLUSTER_NODE_TIMEOUT",
        "CLUSTER_PORT",
        "CLUSTER_PREFIX",
        "CLUSTER_UNICAST_ADDRESSES",
        "DB_MYSQL_DATABASE",
        "DB_MYSQL_HOST",
        "DB_MYSQL_PASSWORD",
        "DB_MYSQL_PORT",
        "DB_MYSQL_USERNAME",
        "DB_POOLING_ENABLED",
        "DB_POOLING_MAX",
        "DB_POOLING_MIN",
        "DB_POSTGRES_DATABASE",
        "DB_POSTGRES_HOST",
        "DB_POSTGRES_PASSWORD",
        "DB_POSTGRES_PORT",
        "DB_POSTGRES_USERNAME",
        "DB_REDIS_CLUSTER_NODES",
        "DB_REDIS_DB",
        "DB_REDIS_HOST",
        "DB_REDIS_INSTANCE_NAME",
        "DB_REDIS_KEY_PREFIX",
        "DB_REDIS_PASSWORD",
        "DB_REDIS_PORT",
        "DB_REDIS_SENTINELS",
        "DB_REDIS_SENTINEL_PASSWORD",
        "DB_REDIS_USERNAME",
        "DEBUG",
        "DEFAULT_APP_ENABLED",
        "DEFAULT_APP_ENABLE_CLIENT_MESSAGES",
        "DEFAULT_APP_ID",
        "DEFAULT_APP_KEY",
        "DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC",
        "DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC",
        "DEFAULT_APP_MAX_CONNS",
        "DEFAULT_APP_MAX_READ_REQ_PER_SEC",
        "DEFAULT_APP_SECRET",
        "DEFAULT_APP_USER_AUTHENTICATION",
        "DEFAULT_APP_WEBHOOKS",
        "EVENT_MAX_BATCH_SIZE",
        "EVENT_MAX_CHANNELS_AT_ONCE",
        "EVENT_MAX_NAME_LENGTH",
        "EVENT_MAX_SIZE_IN_KB",
        "HOST",
        "HTTP_ACCEPT_TRAFFIC_MEMORY_THRESHOLD",
        "METRICS_DRIVER",
        "METRICS_ENABLED",
        "METRICS_HOST",
        "METRICS_PROMETHEUS_PREFIX",
        "METRICS_SERVER_PORT",
        "MODE",
        "PATH_PREFIX",
        "PORT",
        "PRESENCE_MAX_MEMBERS",
        "PRESENCE_MAX_MEMBER_SIZE",
        "QUEUE_DRIVER",
        "QUEUE_REDIS_CLUSTER_MODE",
        "QUEUE_REDIS_CONCURRENCY",
        "QUEUE_REDIS_OPTIONS",
        "QUEUE_SQS_BATCH_SIZE",
        "QUEUE_SQS_CLIENT_OPTIONS",
        "QUEUE_SQS_ENDPOINT",
        "QUEUE_SQS_POLLING_WAIT_TIME_MS",
        "QUEUE_SQS_PROCESS_BATCH",
        "QUEUE_SQS_REGION",
        "QUEUE_SQS_URL",
        "RATE_LIMITER_DRIVER",
        "RATE_LIMITER_REDIS_CLUSTER_MODE",
        "RATE_LIMITER_REDIS_OPTIONS",
        "SHUTDOWN_GRACE_PERIOD",
        "SSL_CA",
        "SSL_CERT",
        "SSL_KEY",
        "SSL_PASS",
        "USER_AUTHENTICATION_TIMEOUT",
        "WEBHOOKS_BATCHING",
        "WEBHOOKS_BATCHING_DURATION",
    )
)
#: Slanger's flags (its current bin/slanger), short and long.
SLANGER = {
    "-k": "--app_key",
    "-s": "--secret",
    "-C": "--config_file",
    "-r": "--redis_address",
    "-a": "--api_host",
    "-w": "--websocket_host",
    "-i": "--require",
    "-p": "--private_key_file",
    "-b": "--webhook_url",
    "-c": "--cert_file",
    "-v": "--[no-]verbose",
    "-t": "--activity_timeout",
    "": "--pid_file",
}


def text() -> str:
    return DOC.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the ``## title`` section."""
    found = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text())
    assert found is not None, title
    return found[1]


def table_rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def serve_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {option for action in serve._actions for option in action.option_strings}


def test_every_kanal_variable_exists() -> None:
    named = set(re.findall(r"\bKANAL_[A-Z_]+", text()))
    assert named, "no KANAL_ variable at all: is the scan broken?"
    assert named - set(BY_ENV) == set()


def test_the_soketi_tables_cover_every_variable_once() -> None:
    mentioned = re.findall(r"\bSOKETI_[A-Z0-9_]+", section("From soketi"))
    assert set(mentioned) == SOKETI
    assert len(mentioned) == len(SOKETI), "a variable appears in two rows"


def test_the_slanger_table_covers_every_flag_and_its_kanal_flags_parse() -> None:
    rows = table_rows(section("From Slanger"))
    first_cells = " ".join(row[0] for row in rows)
    for short, long in SLANGER.items():
        assert f"`{long}" in first_cells and (not short or f"`{short}`" in first_cells)
    flags = serve_flags()
    for row in rows[1:]:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", row[1]):
            assert flag in flags, (flag, row)


def test_the_examples_load_and_parse(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", text(), re.DOTALL)
    assert len(blocks) >= 3
    for number, block in enumerate(blocks):
        path = tmp_path / f"example-{number}.toml"
        path.write_text(block, encoding="utf-8")
        assert load_config(str(path), {}, {}).apps
    [shell] = re.findall(r"```sh\n(.*?)```", section("From Slanger"), re.DOTALL)
    [command] = [
        line for line in shell.replace("\\\n", " ").splitlines() if line.startswith("kanal ")
    ]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.port, args.api_port, args.host) == ("8080", "4567", "0.0.0.0")
    config = load_config(None, {}, {k: v for k, v in vars(args).items() if k in BY_DEST})
    assert [target.url for target in config.apps[0].webhooks] == ["https://example.com/hooks"]
    assert config.server.api_port == 4567 and config.apps[0].id == "123456"
