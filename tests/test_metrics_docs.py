"""docs/metrics.md lists every metric family kanal exposes, with its type and labels, and
only those: real servers of each kind (``kanal serve``, an embedded app, a cluster member)
are scraped after some activity and their families, read with prometheus-client's parser,
are compared with the table's rows that apply to that kind of server."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kanal.config import ScalingSettings, WebhookTarget
from tests.conftest import RunningServer, StartServer, make_app
from tests.test_metrics import scrape_text
from tests.test_webhooks_server import FAST, Receiver, receiver
from tests.wsclient import Clients, trigger

__all__ = ["receiver"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(kanal_\w+)` \| (\w+) \|([^|]*)\| ([\w ]+) \| ")


@dataclass(frozen=True)
class Documented:
    kind: str
    labels: frozenset[str]
    present: str


def documented() -> dict[str, Documented]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels, present = match.groups()
            rows[name] = Documented(kind, frozenset(re.findall(r"`(\w+)`", labels)), present)
    return rows


def exposed(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name as documented (counters with ``_total``) -> (type, label names)."""
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        found[name] = (family.type, frozenset(labels))
    return found


async def exercise(server: RunningServer, receiver: Receiver) -> str:
    """Connections, subscriptions, a trigger and a delivered webhook; then a scrape."""
    async with Clients() as clients:
        for _ in range(2):
            client = await clients.connect(server)
            await client.subscribe("news")
        await trigger(server, "news", "headline", "{}")
        await receiver.wait_for("channel_occupied", "news")
        return await scrape_text(server.base_url)


def check(text: str, present: set[str]) -> None:
    rows = {name: row for name, row in documented().items() if row.present in present}
    found = exposed(text)
    assert set(found) == set(rows), (
        f"exposed, not documented: {sorted(set(found) - set(rows))}; "
        f"documented, not exposed: {sorted(set(rows) - set(found))}"
    )
    for name, (kind, labels) in found.items():
        assert (kind, labels) == (rows[name].kind, rows[name].labels), name


def test_the_table_has_every_kind_of_row() -> None:
    rows = documented()
    assert len(rows) > 20
    assert {row.present for row in rows.values()} == {
        "always",
        "webhooks",
        "cluster webhooks",
        "hooks",
    }


def webhook_app(receiver: Receiver) -> list[object]:
    target = WebhookTarget(url=receiver.url, event_types=("channel_occupied",))
    return [make_app(webhooks=(target,))]


@pytest.mark.parametrize("transport", ["serve", "asgi"])
async def test_a_node_exposes_what_the_table_lists(
    start_server: StartServer, receiver: Receiver, transport: str
) -> None:
    server = await start_server(apps=webhook_app(receiver), webhooks=FAST)
    text = await exercise(server, receiver)
    check(text, {"always", "webhooks"} | ({"hooks"} if transport == "asgi" else set()))


async def test_a_node_without_webhooks_exposes_the_always_rows(
    kanal_server: RunningServer,
) -> None:
    async with Clients() as clients:
        await (await clients.connect(kanal_server)).subscribe("news")
        await trigger(kanal_server, "news", "headline", "{}")
        check(await scrape_text(kanal_server.base_url), {"always"})


@pytest.mark.redis
async def test_a_cluster_member_exposes_what_the_table_lists(
    start_server: StartServer, receiver: Receiver, redis_url: str, prefix: str
) -> None:
    scaling = ScalingSettings(adapter="redis", redis_url=redis_url, redis_prefix=prefix)
    server = await start_server(apps=webhook_app(receiver), webhooks=FAST, scaling=scaling)
    text = await exercise(server, receiver)
    check(text, {"always", "webhooks", "cluster webhooks"})
