"""kanal.logs: the text and JSON formats, redaction, the refusal throttle and frame tracing;
then what a node logs, in this process, at DEBUG and with ``verbose`` (issue 17 item 3).

The whole-process view (``kanal serve`` with its start-up summary, shutdown phases and the
search of its output for secrets) is tests/test_logs_serve.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kanal import logs
from kanal.protocol.signatures import hmac_sha256_hex
from tests.conftest import APP_SECRET, RunningServer, StartServer, make_app
from tests.wsclient import Clients, api_request, trigger

DIGEST = hmac_sha256_hex("secret", "1234.5678:private-x")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """kanal's handler writing into a string; removed again afterwards."""
    out = io.StringIO()
    handler = logs.configure("debug", "text", stream=out)
    yield out
    logging.getLogger().removeHandler(handler)
    logs.FRAMES.setLevel(logging.NOTSET)


def test_redact_cuts_every_digest_to_its_first_digits() -> None:
    text = f'{{"auth":"app-key:{DIGEST}"}} and {DIGEST.upper()}'
    redacted = logs.redact(text)
    assert DIGEST not in redacted and DIGEST.upper() not in redacted
    assert f"app-key:{DIGEST[: logs.SHOWN_HEX]}..." in redacted
    assert logs.redact("md5 d41d8cd98f00b204e9800998ecf8427e") == (
        "md5 d41d8cd98f00b204e9800998ecf8427e"  # 32 digits: not a signature
    )


def test_reason_drops_the_quoted_signature_and_bounds_the_rest() -> None:
    hosted = f"Invalid signature: Expected HMAC SHA256 hex digest of 1.2:x, but got {DIGEST}"
    assert logs.reason(hosted) == "Invalid signature"
    long = "Invalid channel name: " + "x" * 1000
    assert len(logs.reason(long)) == logs.REASON_CHARS + 3
    assert logs.reason("Invalid channel name: a\n2024 INFO kanal: fake") == (
        "Invalid channel name: a\\n2024 INFO kanal: fake"  # cannot forge a line of its own
    )
    assert logs.reason("Origin not allowed") == "Origin not allowed"


def test_text_lines_are_redacted(stream: io.StringIO) -> None:
    logging.getLogger("kanal.test").info("got %s", DIGEST)
    line = stream.getvalue()
    assert " INFO kanal.test[" in line and DIGEST not in line and DIGEST[:8] in line


def test_json_lines_parse_one_object_per_line() -> None:
    out = io.StringIO()
    handler = logs.configure("debug", "json", stream=out)
    try:
        log = logging.getLogger("kanal.test")
        log.info("opened %s", "1.2", extra={"socket_id": "1.2", "app_id": "7"})
        log.debug("sig %s", DIGEST)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = out.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 3
    first = entries[0]
    assert first["level"] == "INFO" and first["logger"] == "kanal.test"
    assert first["message"] == "opened 1.2"
    assert first["socket_id"] == "1.2" and first["app_id"] == "7"
    assert {"ts", "pid"} <= set(first)
    assert DIGEST not in lines[1] and entries[1]["message"].startswith("sig " + DIGEST[:8])
    assert entries[2]["level"] == "ERROR" and "ValueError: boom" in entries[2]["exc"]


def test_configure_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    first = logs.configure("info", "text", stream=io.StringIO())
    second = logs.configure("warning", "json", stream=io.StringIO(), verbose=True)
    try:
        assert first not in root.handlers and second in root.handlers
        assert [h for h in root.handlers if h is not second] == before
        assert root.level == logging.WARNING
        assert logs.FRAMES.isEnabledFor(logging.DEBUG)  # verbose traces whatever the level
    finally:
        root.removeHandler(second)
        logs.FRAMES.setLevel(logging.NOTSET)


def test_trace_cuts_long_frames_and_escapes_control_characters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kanal.frames")
    logs.trace("in", "1.2", "x" * (logs.TRACE_CHARS + 50))
    logs.trace("in", "1.2", '{"event":\n"x"}\r\x1b')  # raw text a client may send
    first, second = caplog.records
    assert first.getMessage().endswith("... (50 more characters)")
    assert first.__dict__["socket_id"] == "1.2" and first.__dict__["direction"] == "in"
    assert second.getMessage().endswith('{"event":\\n"x"}\\r\\x1b')


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_writes_a_few_lines_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    throttle = logs.Throttle(lines=3, interval=10.0, clock=clock)
    log = logging.getLogger("kanal.test")
    written = [throttle.log(log, "flood", logging.INFO, "refused %d", n) for n in range(100)]
    assert written == [True] * 3 + [False] * 97
    assert throttle.log(log, "other", logging.INFO, "another kind")  # its own budget
    clock.now = 9.9
    throttle.flush()  # the window has not ended
    assert len(caplog.records) == 4
    clock.now = 10.0
    throttle.flush()
    assert caplog.records[-1].getMessage() == "suppressed 97 similar lines (flood) in 10 s"
    assert throttle.log(log, "flood", logging.INFO, "refused again")  # a fresh window
    clock.now = 25.0
    for _ in range(5):
        throttle.log(log, "flood", logging.INFO, "refused")
    clock.now = 36.0  # the next line after the window says what it left out
    throttle.log(log, "flood", logging.INFO, "refused later")
    messages = [r.getMessage() for r in caplog.records[-3:]]
    assert messages[1:] == ["suppressed 2 similar lines (flood) in 10 s", "refused later"]


def test_the_throttle_does_not_count_what_is_not_logged() -> None:
    throttle = logs.Throttle(lines=1, clock=Clock())
    quiet = logging.getLogger("kanal.test.quiet")
    quiet.setLevel(logging.WARNING)
    try:
        assert not throttle.log(quiet, "k", logging.INFO, "not shown")
        assert throttle.log(quiet, "k", logging.WARNING, "shown")
    finally:
        quiet.setLevel(logging.NOTSET)


# --- what a node logs (in this process) ------------------------------------------------------


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_debug_shows_connections_refusals_and_api_calls(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kanal")
    server: RunningServer = await start_server(apps=[make_app(allowed_origins=("https://*.a.b",))])
    async with Clients() as clients:
        client = await clients.connect(server, headers={"Origin": "https://x.a.b"})
        await client.send_subscribe("private-x", auth=f"app-key:{DIGEST}")
        await client.expect("pusher:subscription_error", "private-x")
        await client.send("pusher:subscribe", {"channel": "bad name!"})
        await client.expect("pusher:subscription_error")
        refused = await clients.open(server, headers={"Origin": "https://evil.example"})
        await refused.expect_closed()
        await trigger(server, "news", "ev", "{}")
        bad = await api_request(server, "GET", "/apps/1/channels", secret="wrong-secret")
        assert bad.status == 401
        await client.close()
        await refused.close()
    hub = messages(caplog, "kanal.hub")
    socket_id = client.socket_id
    assert f"connection {socket_id} opened: app 1, from 127.0.0.1" in hub
    assert any(m.startswith(f"connection {socket_id} closed: app 1, code ") for m in hub)
    signature = f"signature refused: connection {socket_id}, app 1, channel private-x: "
    assert signature + "Invalid signature (401)" in hub
    assert any(m.startswith("frame refused: ") and "Invalid channel name" in m for m in hub)
    [origin] = [m for m in messages(caplog, "kanal.websocket") if "Origin not allowed" in m]
    assert origin.startswith("refused connection from 127.0.0.1 to /app/app-key")
    assert origin.endswith("(origin https://evil.example): Origin not allowed (4009)")
    http = messages(caplog, "kanal.http")
    assert "API POST /apps/1/events from 127.0.0.1: 200 (2 bytes)" in http
    assert "refused API call GET /apps/1/channels from 127.0.0.1: Invalid signature (401)" in http
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels[signature + "Invalid signature (401)"] == logging.INFO
    assert levels[origin] == logging.INFO
    for record in caplog.records:
        text = logs.TextFormatter().format(record)
        assert DIGEST not in text and APP_SECRET not in text


async def test_verbose_traces_every_frame_with_its_socket_id(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kanal.frames")
    quiet = await start_server()
    async with Clients() as clients:
        await (await clients.connect(quiet)).ping()
    assert not caplog.records  # verbose off: nothing traced even at DEBUG

    server = await start_server(verbose=True)
    async with Clients() as clients:
        client = await clients.connect(server)
        await client.subscribe("private-x")
        auth = client.channel_auth("private-x")
        await client.close()
    # "<socket_id> <direction> <frame>"
    traced = [(r.__dict__["direction"], r.getMessage().split(None, 2)[2]) for r in caplog.records]
    assert all(r.__dict__["socket_id"] == client.socket_id for r in caplog.records)
    outs = [text for direction, text in traced if direction == "out"]
    ins = [text for direction, text in traced if direction == "in"]
    assert '"event":"pusher:connection_established"' in outs[0]
    assert any("pusher_internal:subscription_succeeded" in text for text in outs)
    [subscribe] = [text for text in ins if "pusher:subscribe" in text]
    signature = auth.split(":", 1)[1]
    formatted = [logs.TextFormatter().format(r) for r in caplog.records]
    assert not any(signature in line for line in formatted)
    assert any(f"app-key:{signature[: logs.SHOWN_HEX]}..." in line for line in formatted)
    assert signature not in subscribe  # redacted in the record too (an embedding app's logs)
    assert ins[-1].startswith("[close ")
