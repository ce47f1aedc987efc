"""kanal.protocol.xhr: the session paths, frames and send bodies of pusher-js's HTTP
transports, fed bytes (the shapes pusher-js's core/http/http_socket.ts reads and writes)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.protocol import xhr
from tests.conftest import make_app


@pytest.mark.parametrize("kind", ["xhr_streaming", "xhr", "xhr_send"])
def test_a_pusher_js_session_path_is_parsed(kind: str) -> None:
    where = xhr.parse_session_path(["app-key", "417", "a0v3k9rq", kind])
    assert where == xhr.SessionPath("app-key", "417/a0v3k9rq", kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "segments",
    [
        ["app-key", "417", "a0v3k9rq"],  # no kind
        ["app-key", "417", "a0v3k9rq", "xhr_streaming", "x"],
        ["app-key", "1000", "a0v3k9rq", "xhr"],  # server is below 1000
        ["app-key", "", "a0v3k9rq", "xhr"],
        ["app-key", "4a", "a0v3k9rq", "xhr"],
        ["app-key", "417", "..", "xhr"],
        ["app-key", "417", "", "xhr"],
        ["app-key", "417", "a" * 65, "xhr"],
        ["app-key", "417", "a0v3k9rq", "jsonp"],  # a transport pusher-js no longer has
        ["", "417", "a0v3k9rq", "xhr"],
        ["app%2Fkey", "417", "a0v3k9rq", "xhr"],  # keys are never percent-encoded
    ],
)
def test_anything_else_is_not_a_session_path(segments: list[str]) -> None:
    assert xhr.parse_session_path(segments) is None


@given(st.lists(st.text(max_size=20), max_size=6))
def test_parse_session_path_only_accepts_its_shape(segments: list[str]) -> None:
    where = xhr.parse_session_path(segments)
    if where is not None:
        assert f"{where.key}/{where.session}/{where.kind}" == "/".join(segments)


def test_frames_are_lines_pusher_js_reads() -> None:
    assert xhr.OPEN == b"o\n"
    assert xhr.HEARTBEAT == b"h\n"
    assert xhr.close_frame(4200, "Server shutting down") == b'c[4200,"Server shutting down"]\n'


def test_a_message_frame_lists_each_message_as_a_json_string() -> None:
    first, second = b'{"event":"a","data":"{\\"x\\":1}"}', b'{"event":"b"}'
    frame = xhr.message_frame([xhr.quote(first), xhr.quote(second)])
    assert frame.startswith(b"a[") and frame.endswith(b"]\n")
    assert frame.count(b"\n") == 1
    assert json.loads(frame[1:]) == [first.decode(), second.decode()]


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_any_message_text_survives_the_frame(texts: list[str]) -> None:
    frame = xhr.message_frame([xhr.quote(text.encode()) for text in texts])
    assert frame.count(b"\n") == 1  # a newline in a message is escaped: one line per frame
    assert orjson.loads(frame[1:]) == texts


@given(st.integers(min_value=1000, max_value=4999), st.text())
def test_a_close_frame_is_one_line_with_code_and_reason(code: int, reason: str) -> None:
    frame = xhr.close_frame(code, reason)
    assert frame.startswith(b"c") and frame.count(b"\n") == 1
    assert orjson.loads(frame[1:]) == [code, reason]


def test_a_send_body_is_a_json_array_of_messages() -> None:
    body = b'["{\\"event\\":\\"pusher:subscribe\\",\\"data\\":{\\"channel\\":\\"c\\"}}"]'
    assert xhr.parse_send(body, 1000) == ['{"event":"pusher:subscribe","data":{"channel":"c"}}']
    assert xhr.parse_send(b"[]", 1000) == []  # pusher-js's heartbeat


@pytest.mark.parametrize("body", [b"", b"{", b"{}", b'"x"', b"[1]", b'["a", null]', b"\xff"])
def test_a_malformed_send_body_is_refused_with_400(body: bytes) -> None:
    with pytest.raises(xhr.SendRefused) as refused:
        xhr.parse_send(body, 1000)
    assert refused.value.status == 400
    assert refused.value.close_code is None


def test_a_message_over_the_limit_closes_the_session_with_1009() -> None:
    assert xhr.parse_send(orjson.dumps(["é" * 50]), 100) == ["é" * 50]  # 100 bytes: at the cap
    with pytest.raises(xhr.SendRefused) as refused:
        xhr.parse_send(orjson.dumps(["é" * 50 + "x"]), 100)
    assert refused.value.close_code == 1009


@given(st.binary(max_size=64))
def test_parse_send_takes_arrays_of_strings_or_refuses(body: bytes) -> None:
    try:
        messages = xhr.parse_send(body, 1 << 20)
    except xhr.SendRefused as refused:
        assert refused.status == 400
    else:
        assert all(isinstance(message, str) for message in messages)


def test_cors_allows_every_origin_when_the_app_lists_none() -> None:
    headers = dict(xhr.cors_headers("https://page.example", make_app()))
    assert headers["Access-Control-Allow-Origin"] == "https://page.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "Content-Type"  # pusher-js sets it
    assert headers["Vary"] == "Origin"


def test_cors_honours_allowed_origins() -> None:
    app = make_app(allowed_origins=("https://*.example.com",))
    assert dict(xhr.cors_headers("https://a.example.com", app))
    assert xhr.cors_headers("https://evil.test", app) == ()


def test_no_cors_without_an_origin_or_an_app() -> None:
    assert xhr.cors_headers(None, make_app()) == ()
    assert xhr.cors_headers("https://page.example", None) == ()
