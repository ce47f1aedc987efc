"""RFC 6455 framing fed bytes directly (kanal.transport.frames): round trips under Hypothesis,
fragmentation, and every malformed frame a client can send."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.transport import frames
from kanal.transport.frames import FrameError, FrameReader
from tests.wsclient import client_frame


def test_accept_key_matches_rfc_6455_example() -> None:
    # RFC 6455 §1.3
    assert frames.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    frame = frames.text_frame(b"x" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size


@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    mask=st.binary(min_size=4, max_size=4),
    cut=st.integers(min_value=1, max_value=50),
)
def test_any_split_of_the_stream_yields_the_same_messages(
    messages: list[bytes], mask: bytes, cut: int
) -> None:
    stream = b"".join(client_frame(frames.TEXT, m, mask=mask) for m in messages)
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    for start in range(0, len(stream), cut):
        got += reader.feed(stream[start : start + cut])
    assert got == [(frames.TEXT, m) for m in messages]


@given(parts=st.lists(st.binary(max_size=40), min_size=2, max_size=5))
def test_fragments_are_joined_and_control_frames_pass_between_them(parts: list[bytes]) -> None:
    stream = client_frame(frames.TEXT, parts[0], fin=False)
    for part in parts[1:-1]:
        stream += client_frame(frames.PING, b"p") + client_frame(
            frames.CONTINUATION, part, fin=False
        )
    stream += client_frame(frames.CONTINUATION, parts[-1])
    got = FrameReader().feed(stream)
    assert got[-1] == (frames.TEXT, b"".join(parts))
    assert got[:-1] == [(frames.PING, b"p")] * (len(parts) - 2)


def test_large_lengths_are_read() -> None:
    payload = bytes(range(256)) * 300  # 76,800 bytes: the 64-bit length form
    assert FrameReader().feed(client_frame(frames.BINARY, payload)) == [(frames.BINARY, payload)]


def test_message_at_the_limit_is_accepted_one_byte_more_is_1009() -> None:
    assert FrameReader(100).feed(client_frame(frames.TEXT, b"a" * 100)) == [
        (frames.TEXT, b"a" * 100)
    ]
    with pytest.raises(FrameError) as raised:
        FrameReader(100).feed(client_frame(frames.TEXT, b"a" * 101)[:10])  # header alone is enough
    assert raised.value.code == 1009


def test_fragmented_message_over_the_limit_is_1009() -> None:
    reader = FrameReader(100)
    reader.feed(client_frame(frames.TEXT, b"a" * 60, fin=False))
    with pytest.raises(FrameError) as raised:
        reader.feed(client_frame(frames.CONTINUATION, b"a" * 60))
    assert raised.value.code == 1009


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(bytes((0x81, 0x01)) + b"a", id="unmasked"),
        pytest.param(bytes((0xC1,)) + client_frame(1, b"a")[1:], id="rsv1 set"),
        pytest.param(client_frame(0x3, b"a"), id="reserved opcode"),
        pytest.param(client_frame(frames.CONTINUATION, b"a"), id="continuation first"),
        pytest.param(client_frame(1, b"a", fin=False) + client_frame(1, b"b"), id="interleaved"),
        pytest.param(client_frame(frames.PING, b"a" * 126), id="long control"),
        pytest.param(client_frame(frames.PING, b"a", fin=False), id="fragmented control"),
    ],
)
def test_protocol_errors_are_1002(stream: bytes) -> None:
    with pytest.raises(FrameError) as raised:
        FrameReader().feed(stream)
    assert raised.value.code == 1002


def test_close_frames() -> None:
    assert frames.parse_close(b"") == 1005
    assert frames.parse_close(struct.pack("!H", 4001) + b"bye") == 4001
    frame = frames.close_frame(4100, "é" * 100)  # 200 bytes of reason: cut, never mid-character
    assert frame[0] == 0x88 and frame[1] <= 125
    assert struct.unpack("!H", frame[2:4])[0] == 4100
    frame[4:].decode()
