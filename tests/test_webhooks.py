"""Tests for kanal.webhooks against a real aiohttp receiver on 127.0.0.1 (webhooks.md).

The receiver records every request (raw header bytes included) and answers from a per-path
script: a status code, or ``"hang"`` (wait until the test, or teardown, opens that path's gate).
Waiting is always on conditions with timeouts; "nothing else was sent" is asserted after
:meth:`WebhookDispatcher.wait_idle`, which returns once every queue is empty and nothing is in
flight, so negative assertions need no sleeps either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pusher
import pytest
from aiohttp import web

from kanal.config import App, WebhookSettings, WebhookTarget
from kanal.protocol import webhooks as hooks
from kanal.protocol.signatures import webhook_signature
from kanal.protocol.webhooks import EVENT_TYPES, WebhookEvent, webhook_body
from kanal.webhooks.delivery import Backoff, display_url, request_headers
from kanal.webhooks.dispatch import State, WebhookDispatcher, wants
from tests.webapp import port_of, served

if TYPE_CHECKING:  # checked by mypy; importing the hub at run time is not this file's business
    from kanal.hub import WebhookSink

# webhooks.md §7 credentials and vectors.
KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
VECTOR_TIME = 1327078148.132
VECTOR_MS = 1327078148132
ROOT = Path(__file__).resolve().parents[1]
WAIT = 5.0  # upper bound on any positive wait; the happy path takes milliseconds

FAST = WebhookSettings(
    grace_period=0.2,
    batch_window=0.02,
    max_batch_size=100,
    request_timeout=2.0,
    retry_window=2.0,
    max_queue=1000,
    shutdown_timeout=2.0,
)


# --- the receiver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    at: float  # loop time of arrival

    def header(self, name: str) -> list[str]:
        """Every value of a header, matched case-insensitively."""
        wanted = name.lower().encode()
        return [v.decode() for k, v in self.raw_headers if k.lower() == wanted]

    def names(self) -> set[bytes]:
        return {k for k, _ in self.raw_headers}

    @property
    def signature(self) -> str:
        (value,) = self.header("X-Pusher-Signature")
        return value

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.json()["events"]
        return events


@dataclass
class Receiver:
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    scripts: dict[str, list[int | str]] = field(default_factory=dict)
    defaults: dict[str, int | str] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def gate(self, path: str) -> asyncio.Event:
        return self.gates.setdefault(path, asyncio.Event())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Request(
            request.path, tuple(request.raw_headers), body, asyncio.get_running_loop().time()
        )
        async with self.arrived:
            self.requests.append(record)
            self.arrived.notify_all()
        script = self.scripts.get(request.path, [])
        action = script.pop(0) if script else self.defaults.get(request.path, 200)
        if action == "hang":
            await self.gate(request.path).wait()
            action = 200
        assert isinstance(action, int)
        if 300 <= action < 400:
            raise web.HTTPFound("/landing")
        return web.Response(status=action)

    async def wait_for(self, count: int, path: str | None = None) -> list[Request]:
        """The first ``count`` requests (to ``path``), waiting up to WAIT seconds for them."""

        def matching() -> list[Request]:
            return self.requests if path is None else self.at(path)

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(matching()) >= count), WAIT)
        return matching()[:count]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", rec.handle)
    async with served(server, access_log=None) as base:
        rec.port = port_of(base)
        yield rec
        for gate in rec.gates.values():
            gate.set()


Make = Callable[..., WebhookDispatcher]


@pytest.fixture
async def make(receiver: Receiver) -> AsyncIterator[Make]:
    """Build dispatchers (fast settings, seeded jitter); all closed at teardown."""
    made: list[WebhookDispatcher] = []

    def build(**overrides: Any) -> WebhookDispatcher:
        options: dict[str, Any] = {"backoff_base": 0.02, "backoff_cap": 0.2}
        options.update({k: overrides.pop(k) for k in ("wall", "backoff_base") if k in overrides})
        dispatcher = WebhookDispatcher(replace(FAST, **overrides), rng=random.Random(7), **options)
        made.append(dispatcher)
        return dispatcher

    yield build
    for dispatcher in made:
        await dispatcher.close()


def target(url: str, events: Iterable[str] = EVENT_TYPES, **kw: Any) -> WebhookTarget:
    return WebhookTarget(url=url, event_types=tuple(events), **kw)


def make_app(*targets: WebhookTarget, batch: bool = False, app_id: str = "1") -> App:
    return App(id=app_id, key=KEY, secret=SECRET, batch_webhooks=batch, webhooks=targets)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def state_of(dispatcher: WebhookDispatcher) -> State:
    return dispatcher.state  # a call, so mypy does not carry narrowing across awaits


async def idle(dispatcher: WebhookDispatcher) -> None:
    await asyncio.wait_for(dispatcher.wait_idle(), WAIT)


# --- request format (§2, §3, §7) -------------------------------------------------------------

ALL_EVENTS = [
    hooks.channel_occupied("my-channel"),
    hooks.channel_vacated("my-channel"),
    hooks.member_added("presence-your_channel_name", "a_user_id"),
    hooks.member_removed("presence-your_channel_name", "a_user_id"),
    hooks.client_event("presence-foobar", "client-typing", '{"typing":true}', "1234.1234", "10"),
    hooks.cache_miss("cache-prices"),
    hooks.subscription_count("my-channel", 3),
]

# webhooks.md §3 examples, in the order they arrive: removals wait out the grace period.
EXPECTED = [
    {"name": "channel_occupied", "channel": "my-channel"},
    {"name": "member_added", "channel": "presence-your_channel_name", "user_id": "a_user_id"},
    {
        "name": "client_event",
        "channel": "presence-foobar",
        "event": "client-typing",
        "data": '{"typing":true}',
        "socket_id": "1234.1234",
        "user_id": "10",
    },
    {"name": "cache_miss", "channel": "cache-prices"},
    {"name": "subscription_count", "channel": "my-channel", "subscription_count": 3},
    {"name": "channel_vacated", "channel": "my-channel"},
    {"name": "member_removed", "channel": "presence-your_channel_name", "user_id": "a_user_id"},
]


async def test_every_event_type_has_exactly_the_documented_fields(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make(wall=lambda: VECTOR_TIME)
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    for event in ALL_EVENTS:
        dispatcher.emit(app, event)

    got = await receiver.wait_for(len(ALL_EVENTS))
    assert [r.events() for r in got] == [[e] for e in EXPECTED]  # one event per request
    arrival_order = [ALL_EVENTS[i] for i in (0, 2, 4, 5, 6, 1, 3)]
    for request, event in zip(got, arrival_order, strict=True):
        assert request.body == webhook_body(VECTOR_MS, [event])
        assert request.signature == webhook_signature(SECRET, request.body)
    # §7 vectors: the exact bytes and signatures the SDKs were checked against.
    assert got[0].body == (
        b'{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}'
    )
    assert got[0].signature == "c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf"
    assert got[2].signature == "e13749c3516823fd74bfc34f645d1bff77f74a7c022de005d7a90ef2765c826a"


async def test_headers_are_exact_and_custom_headers_cannot_override_them(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make()
    await dispatcher.start()
    custom = (
        ("X-Custom", "yes"),
        ("content-type", "text/plain"),
        ("X-PUSHER-KEY", "forged"),
        ("x-pusher-signature", "forged"),
    )
    dispatcher.emit(make_app(target(receiver.url("/hook"), headers=custom)), ALL_EVENTS[0])

    (request,) = await receiver.wait_for(1)
    # §2: exactly "application/json" (no charset), once; names capitalised as documented.
    assert request.header("Content-Type") == ["application/json"]
    assert request.header("X-Pusher-Key") == [KEY]
    assert request.header("X-Pusher-Signature") == [webhook_signature(SECRET, request.body)]
    assert {b"Content-Type", b"X-Pusher-Key", b"X-Pusher-Signature"} <= request.names()
    assert request.header("X-Custom") == ["yes"]
    assert request.header("Content-Length") == [str(len(request.body))]


def test_request_headers_and_routing_helpers() -> None:
    app = make_app()
    hook = target("http://x/", ["channel_occupied"], headers=(("A", "1"), ("Content-Type", "x")))
    assert request_headers(app, hook, "sig") == {
        "A": "1",
        "Content-Type": "application/json",
        "X-Pusher-Key": KEY,
        "X-Pusher-Signature": "sig",
    }
    assert display_url("https://user:pw@host:8443/path?token=s#f") == "https://host:8443/path"
    assert wants(hook, hooks.channel_occupied("c"))
    assert not wants(hook, hooks.channel_vacated("c"))
    fenced = target("http://x/", filter_channel_prefix="presence-", filter_channel_suffix="-room")
    assert wants(fenced, hooks.cache_miss("presence-chat-room"))
    assert not wants(fenced, hooks.cache_miss("presence-chat"))
    assert not wants(fenced, hooks.cache_miss("private-chat-room"))


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    exact = Backoff(base=1.0, cap=60.0, jitter=0.0)
    rng = random.Random(3)
    assert [exact.delay(n, rng) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    jittered = Backoff()
    for n in range(10):
        nominal = min(60.0, 2.0**n)
        assert 0.8 * nominal <= jittered.delay(n, rng) <= min(60.0, 1.2 * nominal)
    assert jittered.delay(10_000, rng) <= 60.0


def test_the_dispatcher_is_the_hubs_webhook_sink() -> None:
    sink: WebhookSink = WebhookDispatcher(FAST)
    assert callable(sink.emit)


async def test_official_python_sdk_accepts_every_event_type(receiver: Receiver, make: Make) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    for event in ALL_EVENTS:  # one request per event type (no batching)
        dispatcher.emit(app, event)
    dispatcher.emit(make_app(target(receiver.url("/hook")), batch=True), ALL_EVENTS[4])

    requests = await receiver.wait_for(len(ALL_EVENTS) + 1)
    client = pusher.Pusher(app_id="1", key=KEY, secret=SECRET)
    wrong = pusher.Pusher(app_id="1", key=KEY, secret="not-the-secret")
    validated = []
    for request in requests:
        key, signature = request.header("X-Pusher-Key")[0], request.signature
        data = client.validate_webhook(key=key, signature=signature, body=request.body)
        assert data is not None, request.body
        assert abs(data["time_ms"] - time.time() * 1000) < 5000
        assert wrong.validate_webhook(key=key, signature=signature, body=request.body) is None
        validated += data["events"]
    assert sorted(map(json.dumps, validated)) == sorted(map(json.dumps, [*EXPECTED, EXPECTED[2]]))


NODE_VALIDATE = """
const Pusher = require('pusher');
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const { key, secret, cases } = JSON.parse(input);
  const pusher = new Pusher({ appId: '1', key, secret });
  const out = cases.map((c) => {
    const hook = pusher.webhook({ headers: c.headers, rawBody: c.body });
    const ok = hook.isValid();
    return { ok, events: ok ? hook.getEvents() : null, time: ok ? hook.getTime().getTime() : null };
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def node_headers(request: Request) -> dict[str, str]:
    """Headers as Node's http module hands them over: lower-case names, first value wins."""
    out: dict[str, str] = {}
    for name, value in request.raw_headers:
        out.setdefault(name.decode().lower(), value.decode())
    return out


async def test_official_node_sdk_accepts_every_event_type(receiver: Receiver, make: Make) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "pusher").is_dir():
        pytest.skip("needs node and `npm install` (package.json lists pusher)")
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    for event in ALL_EVENTS:  # one request per event type
        dispatcher.emit(app, event)

    requests = await receiver.wait_for(len(ALL_EVENTS))
    cases = [{"headers": node_headers(r), "body": r.body.decode()} for r in requests]
    charset = {**node_headers(requests[0]), "content-type": "application/json; charset=utf-8"}
    cases.append({"headers": charset, "body": requests[0].body.decode()})
    stdin = json.dumps({"key": KEY, "secret": SECRET, "cases": cases}).encode()
    result = await asyncio.to_thread(
        subprocess.run,
        [node, "-e", NODE_VALIDATE],
        input=stdin,
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=True,
    )
    *sent, with_charset = json.loads(result.stdout)
    assert sent == [
        {"ok": True, "events": r.events(), "time": r.json()["time_ms"]} for r in requests
    ]
    assert [event for case in sent for event in case["events"]] == EXPECTED
    assert with_charset["ok"] is False  # the validator really is that strict (§2)


# --- routing (§1) ----------------------------------------------------------------------------


async def test_routing_by_event_type_channel_filters_and_app(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make(grace_period=0.0)
    await dispatcher.start()
    app = make_app(
        target(receiver.url("/all")),
        target(receiver.url("/occupied"), ["channel_occupied"]),
        target(receiver.url("/presence"), filter_channel_prefix="presence-"),
        target(receiver.url("/rooms"), filter_channel_suffix="-room"),
    )
    other = make_app(target(receiver.url("/other")), app_id="2")
    events = [
        hooks.channel_occupied("presence-a-room"),
        hooks.channel_occupied("b"),
        hooks.cache_miss("cache-x-room"),
        hooks.client_event("presence-z", "client-e", "{}", "1.2", "u"),
    ]
    for event in events:
        dispatcher.emit(app, event)
    dispatcher.emit(other, hooks.channel_vacated("elsewhere"))
    await receiver.wait_for(1, "/other")
    await idle(dispatcher)

    def channels(path: str) -> list[str]:
        return [e["channel"] for r in receiver.at(path) for e in r.events()]

    assert channels("/all") == ["presence-a-room", "b", "cache-x-room", "presence-z"]
    assert channels("/occupied") == ["presence-a-room", "b"]
    assert channels("/presence") == ["presence-a-room", "presence-z"]
    assert channels("/rooms") == ["presence-a-room", "cache-x-room"]
    assert channels("/other") == ["elsewhere"]


async def test_apps_without_webhooks_cost_nothing(make: Make) -> None:
    dispatcher = make()
    await dispatcher.start()
    dispatcher.emit(make_app(), hooks.channel_vacated("c"))
    assert dispatcher.pending == 0


# --- grace period (§4) -----------------------------------------------------------------------


async def test_vacate_then_reoccupy_within_the_grace_period_sends_nothing(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    dispatcher.emit(app, hooks.channel_occupied("c"))
    await receiver.wait_for(1)

    dispatcher.emit(app, hooks.channel_vacated("c"))
    assert dispatcher.pending == 1  # held
    dispatcher.emit(app, hooks.channel_occupied("c"))
    assert dispatcher.pending == 0  # both cancelled: nothing can still be sent
    await idle(dispatcher)
    assert [r.events()[0]["name"] for r in receiver.requests] == ["channel_occupied"]


async def test_presence_page_reload_sends_nothing(receiver: Receiver, make: Make) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    channel = "presence-room"
    for event in (
        hooks.member_removed(channel, "u1"),
        hooks.channel_vacated(channel),
        hooks.channel_occupied(channel),
        hooks.member_added(channel, "u1"),
    ):
        dispatcher.emit(app, event)
    assert dispatcher.pending == 0
    await idle(dispatcher)
    assert receiver.requests == []


async def test_vacated_is_sent_once_the_grace_period_is_over(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    loop = asyncio.get_running_loop()
    dispatcher.emit(app, hooks.channel_occupied("c"))
    (first,) = await receiver.wait_for(1)
    emitted = loop.time()
    dispatcher.emit(app, hooks.channel_vacated("c"))
    dispatcher.emit(app, hooks.member_removed("presence-p", "u"))

    _, vacated, removed = await receiver.wait_for(3)
    assert vacated.events() == [{"name": "channel_vacated", "channel": "c"}]
    assert removed.events()[0]["name"] == "member_removed"
    assert vacated.at - emitted >= FAST.grace_period

    dispatcher.emit(app, hooks.channel_occupied("c"))  # after the window: a real re-occupation
    fourth = (await receiver.wait_for(4))[3]
    assert fourth.events() == first.events()


async def test_rapid_toggling_strictly_alternates(receiver: Receiver, make: Make) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    rng = random.Random(1)
    keys = [("c0", None), ("c1", None), ("c2", None), ("presence-p", "u0"), ("presence-p", "u1")]
    is_open = dict.fromkeys(keys, False)
    for _ in range(500):  # the hub's stream alternates per key; ours must too
        key = rng.choice(keys)
        is_open[key] = not is_open[key]
        dispatcher.emit(app, toggle_event(key, is_open[key]))

    # All of it happened within one grace period: each key reports its first opening and,
    # if it ends closed, one closing after the delay; nothing is left held.
    expected = {key: [True] if is_open[key] else [True, False] for key in keys}
    got = await receiver.wait_for(sum(len(v) for v in expected.values()))
    await idle(dispatcher)
    assert dispatcher.pending == 0
    assert len(receiver.requests) == len(got)
    seen: dict[tuple[str, str | None], list[bool]] = {}
    for request in got:
        (event,) = request.events()
        opening = event["name"] in ("channel_occupied", "member_added")
        seen.setdefault((event["channel"], event.get("user_id")), []).append(opening)
    assert seen == expected


def toggle_event(key: tuple[str, str | None], opening: bool) -> WebhookEvent:
    channel, user = key
    if user is None:
        return hooks.channel_occupied(channel) if opening else hooks.channel_vacated(channel)
    return hooks.member_added(channel, user) if opening else hooks.member_removed(channel, user)


# --- batching (§2) ---------------------------------------------------------------------------


async def test_batching_apps_get_events_together_in_order(receiver: Receiver, make: Make) -> None:
    dispatcher = make(max_batch_size=3)
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")), batch=True)
    channels = [f"c{i}" for i in range(7)]
    for channel in channels:
        dispatcher.emit(app, hooks.channel_occupied(channel))

    got = await receiver.wait_for(3)
    assert [len(r.events()) for r in got] == [3, 3, 1]
    assert [e["channel"] for r in got for e in r.events()] == channels
    for request in got:
        assert request.signature == webhook_signature(SECRET, request.body)

    dispatcher.emit(app, hooks.cache_miss("later"))  # after the flush: its own request
    assert (await receiver.wait_for(4))[3].events() == [{"name": "cache_miss", "channel": "later"}]


async def test_non_batching_apps_get_one_event_per_request(receiver: Receiver, make: Make) -> None:
    dispatcher = make()
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")))
    for i in range(3):
        dispatcher.emit(app, hooks.cache_miss(f"c{i}"))
    got = await receiver.wait_for(3)
    assert [r.events() for r in got] == [
        [{"name": "cache_miss", "channel": f"c{i}"}] for i in (0, 1, 2)
    ]


# --- delivery and retries (§5) ---------------------------------------------------------------


async def test_retries_after_errors_with_identical_bytes(receiver: Receiver, make: Make) -> None:
    receiver.scripts["/flaky"] = [500, 500, 503]
    dispatcher = make(backoff_base=0.05)
    await dispatcher.start()
    dispatcher.emit(make_app(target(receiver.url("/flaky"))), ALL_EVENTS[0])

    got = await receiver.wait_for(4)
    await idle(dispatcher)
    assert len(receiver.requests) == 4  # delivered exactly once, after three failures
    assert {r.body for r in got} == {got[0].body}
    assert {r.signature for r in got} == {got[0].signature}
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(gap >= 0.05 * 2**n * 0.8 for n, gap in enumerate(gaps))  # back-off, with jitter
    assert dispatcher.stats.sent == 1
    assert dispatcher.stats.failed_attempts == 3
    assert dispatcher.stats.dropped_expired == 0


async def test_redirects_are_not_followed(receiver: Receiver, make: Make) -> None:
    receiver.scripts["/moved"] = [302]
    dispatcher = make()
    await dispatcher.start()
    dispatcher.emit(make_app(target(receiver.url("/moved"))), ALL_EVENTS[0])
    await receiver.wait_for(2, "/moved")
    await idle(dispatcher)
    assert receiver.at("/landing") == []
    assert (dispatcher.stats.failed_attempts, dispatcher.stats.sent) == (1, 1)


async def test_time_ms_is_the_events_time_even_behind_a_failing_delivery(
    receiver: Receiver, make: Make
) -> None:
    """The second event waits while the first is retried; its ``time_ms`` is still the time
    it happened, not the time it was finally sent."""
    receiver.scripts["/busy"] = [500] * 6  # about 1.2 s of retries (0.2 s cap, seeded jitter)
    dispatcher = make(backoff_base=0.2)
    await dispatcher.start()
    app = make_app(target(receiver.url("/busy")))
    emitted_ms = [time.time() * 1000]
    dispatcher.emit(app, ALL_EVENTS[0])
    emitted_ms.append(time.time() * 1000)
    emitted_at = asyncio.get_running_loop().time()
    dispatcher.emit(app, ALL_EVENTS[2])  # not held by the grace period either
    got = await receiver.wait_for(8)
    await idle(dispatcher)
    delivered = [json.loads(r.body) for r in got[6:]]
    assert [d["events"][0]["name"] for d in delivered] == ["channel_occupied", "member_added"]
    assert got[-1].at - emitted_at >= 1.0  # six failed attempts with back-off went first
    for body, emitted in zip(delivered, emitted_ms, strict=True):
        assert abs(body["time_ms"] - emitted) < 250


async def test_timeouts_are_retried(receiver: Receiver, make: Make) -> None:
    receiver.scripts["/slow"] = ["hang"]
    dispatcher = make(request_timeout=0.2)
    await dispatcher.start()
    emitted = asyncio.get_running_loop().time()
    dispatcher.emit(make_app(target(receiver.url("/slow"))), ALL_EVENTS[0])
    first, second = await receiver.wait_for(2)
    await idle(dispatcher)
    assert second.at - emitted >= 0.2  # the first attempt was given its full timeout
    assert first.body == second.body
    assert (dispatcher.stats.failed_attempts, dispatcher.stats.sent) == (1, 1)


async def test_a_target_down_for_longer_than_the_retry_window_is_dropped_and_logged(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make(retry_window=0.5)
    await dispatcher.start()
    caplog.set_level(logging.INFO, logger="kanal")
    dispatcher.emit(make_app(target(f"http://127.0.0.1:{free_port()}/down")), ALL_EVENTS[0])
    await idle(dispatcher)
    assert dispatcher.stats.dropped_expired == 1
    assert dispatcher.stats.sent == 0
    assert dispatcher.stats.failed_attempts >= 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "dropped" in errors[0].getMessage()
    assert "/down" in errors[0].getMessage()


async def test_zero_retry_window_means_a_single_attempt(receiver: Receiver, make: Make) -> None:
    receiver.scripts["/once"] = [500]
    dispatcher = make(retry_window=0.0)
    await dispatcher.start()
    dispatcher.emit(make_app(target(receiver.url("/once"))), ALL_EVENTS[0])
    await receiver.wait_for(1)
    await idle(dispatcher)
    assert len(receiver.requests) == 1
    assert dispatcher.stats.dropped_expired == 1


async def test_a_slow_target_does_not_delay_others(
    receiver: Receiver, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.defaults["/slow"] = "hang"
    dispatcher = make(request_timeout=30.0, shutdown_timeout=0.1)
    await dispatcher.start()
    slow_app = make_app(target(receiver.url("/slow")), app_id="1")
    both = make_app(target(receiver.url("/slow")), target(receiver.url("/fast")), app_id="2")
    for i in range(5):
        dispatcher.emit(slow_app, hooks.cache_miss(f"s{i}"))
        dispatcher.emit(both, hooks.cache_miss(f"b{i}"))

    fast = await receiver.wait_for(5, "/fast")
    assert [r.events()[0]["channel"] for r in fast] == [f"b{i}" for i in range(5)]
    assert len(receiver.at("/slow")) == 2  # one request per app endpoint, both still hanging

    caplog.set_level(logging.ERROR, logger="kanal")
    await dispatcher.close()  # gives up after shutdown_timeout, counting what it drops
    assert dispatcher.stats.dropped_shutdown == 10
    assert any("gave up on 10" in r.getMessage() for r in caplog.records)


async def test_queue_overflow_drops_the_oldest_and_says_so(
    receiver: Receiver, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.scripts["/hook"] = ["hang"]
    dispatcher = make(max_queue=3)
    await dispatcher.start()
    caplog.set_level(logging.WARNING, logger="kanal")
    app = make_app(target(receiver.url("/hook")))
    dispatcher.emit(app, hooks.cache_miss("c0"))
    await receiver.wait_for(1)  # c0 is in flight, the queue is empty
    for i in range(1, 11):
        dispatcher.emit(app, hooks.cache_miss(f"c{i}"))
    assert dispatcher.stats.dropped_overflow == 7
    assert any("full" in r.getMessage() for r in caplog.records)

    receiver.gate("/hook").set()
    got = await receiver.wait_for(4)
    await idle(dispatcher)
    assert [r.events()[0]["channel"] for r in got] == ["c0", "c8", "c9", "c10"]
    assert dispatcher.stats.sent == 4


# --- lifecycle -------------------------------------------------------------------------------


async def test_close_flushes_queued_and_held_webhooks(receiver: Receiver, make: Make) -> None:
    dispatcher = make(grace_period=60.0)
    await dispatcher.start()
    app = make_app(target(receiver.url("/hook")), batch=True)
    dispatcher.emit(app, hooks.channel_occupied("a"))
    dispatcher.emit(app, hooks.cache_miss("b"))
    dispatcher.emit(app, hooks.channel_vacated("a"))  # held for a minute
    await dispatcher.close()

    names = [e["name"] for r in receiver.requests for e in r.events()]
    assert names == ["channel_occupied", "cache_miss", "channel_vacated"]
    assert dispatcher.stats.sent == 3
    assert dispatcher.stats.dropped_shutdown == 0
    assert dispatcher.pending == 0


async def test_events_before_start_are_kept_and_after_close_counted(
    receiver: Receiver, make: Make
) -> None:
    dispatcher = make()
    app = make_app(target(receiver.url("/hook")))
    dispatcher.emit(app, hooks.cache_miss("early"))
    assert (dispatcher.state, dispatcher.pending) == (State.NEW, 1)
    await dispatcher.start()
    assert state_of(dispatcher) is State.RUNNING
    (request,) = await receiver.wait_for(1)
    assert request.events()[0]["channel"] == "early"

    await dispatcher.close()
    assert state_of(dispatcher) is State.CLOSED
    dispatcher.emit(app, hooks.cache_miss("late"))  # never raises
    assert dispatcher.stats.dropped_shutdown == 1


async def test_emit_never_raises(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = make()
    broken: Any = object()  # not an App: routing fails inside emit
    dispatcher.emit(broken, hooks.cache_miss("c"))
    assert any(r.levelno == logging.ERROR for r in caplog.records)
