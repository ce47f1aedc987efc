"""Fuzz target: the RFC 6455 frame parser (kanal.transport.frames.FrameReader).

Byte streams (arbitrary bytes, and frame sequences built to be valid, fragmented, interleaved
with control frames or broken in one frame) are fed in arbitrary pieces and compared with
:func:`reference`, a whole-stream reading of RFC 6455 §5 written here independently of
kanal's parser. The invariants:

* only :class:`FrameError` escapes ``feed``, with code 1002 or 1009, and it is raised by the
  very piece that completes the offending frame's header (§5.2: the payload of a frame that
  is already known to be bad is never waited for or buffered; limits.md §2);
* the messages before the failure are exactly the reference's: fragments joined, control
  frames returned where they come (§5.4);
* the reader never holds a complete frame nor more than one partial frame, and a fragmented
  message never more than ``max_message`` bytes;
* after a failure ``after_failure`` never raises, keeps at most a partial header or a
  partial Close frame, and finds the reference's Close frame.
"""

from __future__ import annotations

import itertools
import struct
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kanal.transport import frames
from kanal.transport.frames import FrameError, FrameReader
from tests.fuzzing import fuzz_target
from tests.wsclient import client_frame

CONTROL = (frames.CLOSE, frames.PING, frames.PONG)
RESERVED = (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)


# --- the reference: RFC 6455 §5.2-§5.5 over a whole stream ------------------------------------


@dataclass
class Header:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    size: int  # header bytes before the masking key: 2, 4 or 10

    @property
    def total(self) -> int:
        """The whole frame: header, masking key and payload."""
        return self.size + (4 if self.masked else 0) + self.length


def read_header(stream: bytes, at: int) -> Header | None:
    """The frame header at ``at``, or None while it is incomplete."""
    if len(stream) - at < 2:
        return None
    first, second = stream[at], stream[at + 1]
    length, size = second & 0x7F, 2
    if length == 126:
        size = 4
    elif length == 127:
        size = 10
    if len(stream) - at < size:
        return None
    if size == 4:
        length = struct.unpack_from("!H", stream, at + 2)[0]
    elif size == 10:
        length = struct.unpack_from("!Q", stream, at + 2)[0]
    return Header(
        fin=bool(first & 0x80),
        rsv=first & 0x70,
        opcode=first & 0x0F,
        masked=bool(second & 0x80),
        length=length,
        size=size,
    )


@dataclass
class Expected:
    messages: list[tuple[int, bytes]] = field(default_factory=list)
    codes: frozenset[int] = frozenset()  # the acceptable close codes; empty: no failure
    fail_by: int = 0  # the stream offset at which the failure is certain (header complete)
    close: bytes | None = None  # what after_failure finds in the rest of the stream


def payload_of(stream: bytes, at: int, header: Header) -> bytes:
    start = at + header.size + (4 if header.masked else 0)
    payload = stream[start : start + header.length]
    if not header.masked:
        return payload
    key = stream[start - 4 : start]
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def early_errors(first: int, second: int, in_message: bool) -> set[int]:
    """What the first two bytes of a frame already show."""
    codes = set()
    opcode, fin = first & 0x0F, first & 0x80
    if first & 0x70:
        codes.add(1002)  # §5.2: no extension was negotiated
    if not second & 0x80:
        codes.add(1002)  # §5.1
    if opcode in RESERVED:
        codes.add(1002)  # §5.2
    if opcode in CONTROL and not fin:
        codes.add(1002)  # §5.5
    if opcode == frames.CONTINUATION and not in_message:
        codes.add(1002)  # §5.4
    if opcode in (frames.TEXT, frames.BINARY) and in_message:
        codes.add(1002)  # §5.4
    return codes


def length_errors(header: Header, pending: int, max_message: int) -> set[int]:
    """What the complete header shows (before the masking key and the payload)."""
    codes = set()
    if header.length >> 63:
        codes.add(1002)  # §5.2
    if header.opcode in CONTROL and header.length > 125:
        codes.add(1002)  # §5.5
    if max_message and header.opcode not in CONTROL and header.length + pending > max_message:
        codes.add(1009)  # §7.4.1; limits.md §2
    return codes


def reference(stream: bytes, max_message: int) -> Expected:
    """What a client's stream means, read as a whole."""
    expected = Expected()
    fragments: list[bytes] | None = None
    opcode = 0
    at = 0
    while len(stream) - at >= 2:
        codes, fail_by = early_errors(stream[at], stream[at + 1], fragments is not None), at + 2
        header = read_header(stream, at)
        if not codes and header is not None:
            pending = sum(map(len, fragments)) if fragments else 0
            codes, fail_by = length_errors(header, pending, max_message), at + header.size
        if codes:
            expected.codes, expected.fail_by = frozenset(codes), fail_by
            expected.close = close_after(stream, at)
            return expected
        if header is None or len(stream) - at < header.total:
            return expected  # the rest of the frame is still to come
        payload = payload_of(stream, at, header)
        at += header.total
        if header.opcode in CONTROL:
            expected.messages.append((header.opcode, payload))
        elif header.opcode == frames.CONTINUATION:
            assert fragments is not None
            fragments.append(payload)
            if header.fin:
                expected.messages.append((opcode, b"".join(fragments)))
                fragments = None
        elif header.fin:
            expected.messages.append((header.opcode, payload))
        else:
            fragments, opcode = [payload], header.opcode
    return expected


def close_after(stream: bytes, at: int) -> bytes | None:
    """After failing the connection at ``at``, frames are passed over by their lengths alone
    until a Close frame (opcode 8, at most 125 bytes) has arrived whole (§7.1.1)."""
    while (header := read_header(stream, at)) is not None:
        if header.opcode == frames.CLOSE and header.length <= 125:
            complete = len(stream) - at >= header.total
            return payload_of(stream, at, header) if complete else None
        at += header.total
    return None


# --- feeding kanal's reader --------------------------------------------------------------------


def pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def frame_in_buffer(buffer: bytes) -> int:
    """How long the frame that starts the buffer is (an upper bound while its header is
    incomplete: the longest header with its masking key)."""
    header = read_header(buffer, 0)
    return 14 if header is None else header.total


def check(stream: bytes, cuts: list[int], max_message: int) -> None:
    expected = reference(stream, max_message)
    reader = FrameReader(max_message)
    messages: list[tuple[int, bytes]] = []
    failed: FrameError | None = None
    close: bytes | None = None
    fed = 0
    for piece in pieces(stream, cuts):
        start, fed = fed, fed + len(piece)
        if failed is None:
            try:
                messages += reader.feed(piece)
            except FrameError as error:
                failed = error
                messages += error.messages
                assert error.code in expected.codes, (error.code, error.reason, expected)
                assert start < expected.fail_by <= fed, (start, fed, expected.fail_by)
                close = reader.after_failure(b"")
            else:
                buffered = reader._buffer
                assert len(buffered) < frame_in_buffer(buffered), "a whole frame was kept"
                if max_message:
                    assert len(buffered) <= 14 + max(125, max_message)
                    assert reader._pending_size() <= max_message
                continue
        elif close is None:
            close = reader.after_failure(piece)
        assert len(reader._buffer) <= 14 + 125, "after a failure only a Close is kept"
    assert messages == expected.messages
    if failed is None:
        assert not expected.codes, expected
    else:
        assert close == expected.close


# --- strategies --------------------------------------------------------------------------------

MASKS = st.binary(min_size=4, max_size=4)


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes = b"mask",
) -> bytes:
    """A client frame built by the test helper, with reserved bits ``rsv`` (0-7) set."""
    built = client_frame(opcode, payload, fin=fin, masked=masked, mask=mask)
    return bytes((built[0] | rsv << 4,)) + built[1:]


control_frames = st.builds(
    frame, st.sampled_from(CONTROL), st.binary(max_size=125), mask=MASKS
) | st.builds(frame, st.just(frames.CLOSE), st.binary(min_size=2, max_size=20), mask=MASKS)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """One message, maybe fragmented, with control frames between its fragments."""
    opcode = draw(st.sampled_from((frames.TEXT, frames.BINARY)))
    payload = draw(st.binary(max_size=300) | st.text(max_size=60).map(str.encode))
    cuts = draw(st.lists(st.integers(0, len(payload)), max_size=4))
    parts = pieces(payload, cuts)
    out = b""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        kind = opcode if index == 0 else frames.CONTINUATION
        out += frame(kind, part, fin=last, mask=draw(MASKS))
        if not last:
            out += b"".join(draw(st.lists(control_frames, max_size=2)))
    return out


@st.composite
def bad_frames(draw: st.DrawFn) -> bytes:
    """One frame that fails the connection wherever it comes, or a frame-shaped oddity."""
    payload = draw(st.binary(max_size=130))
    opcode = draw(st.sampled_from(range(16)))
    mask = draw(MASKS)
    return draw(
        st.sampled_from(
            [
                frame(opcode, payload, rsv=draw(st.integers(1, 7)), mask=mask),
                frame(opcode, payload, masked=False),
                frame(draw(st.sampled_from(RESERVED)), payload, fin=draw(st.booleans())),
                frame(draw(st.sampled_from(CONTROL)), payload[:125], fin=False, mask=mask),
                frame(draw(st.sampled_from(CONTROL)), payload.ljust(126, b"x"), mask=mask),
                frame(frames.CONTINUATION, payload, fin=draw(st.booleans()), mask=mask),
                frame(frames.TEXT, payload, fin=False) + frame(frames.BINARY, payload),
                # a declared length and no payload (yet): 64-bit, with the top bit, 16-bit
                bytes((0x82, 0xFF)) + struct.pack("!Q", draw(st.integers(0, 2**64 - 1))),
                bytes((0x81, 0xFE)) + struct.pack("!H", draw(st.integers(126, 65535))),
            ]
        )
    )


streams = st.lists(messages() | control_frames, max_size=6).map(b"".join)
failing_streams = st.tuples(
    streams, bad_frames(), streams, control_frames, st.binary(max_size=20)
).map(b"".join)
limits = st.sampled_from([0, 0, 1, 125, 126, 300, 65536])


@dataclass(frozen=True)
class Fed:
    """A stream, where it is cut into reads, and the reader's message limit."""

    stream: bytes
    cuts: tuple[int, ...] = ()
    max_message: int = 0


@st.composite
def fed(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> Fed:
    stream = draw(streams)
    if len(stream) < 400 and draw(st.integers(0, 20)) == 0:
        cuts = tuple(range(len(stream)))  # every byte in its own read
    else:
        cuts = tuple(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return Fed(stream, cuts, draw(limits))


# --- the targets -------------------------------------------------------------------------------


def run(case: Fed) -> None:
    check(case.stream, list(case.cuts), case.max_message)


@fuzz_target(examples=400)
@given(case=fed(st.binary(max_size=400)))
@example(Fed(bytes((0x81, 0x80)) + b"mask"))  # an empty text frame
def test_arbitrary_bytes(case: Fed) -> None:
    run(case)


@fuzz_target(examples=400)
@given(case=fed(streams))
# A frame over the limit after a complete message in the same read: the message was lost
# with the FrameError (now in FrameError.messages; a Close among them is answered as such).
@example(Fed(frame(frames.TEXT, b"") + frame(frames.TEXT, b"ab"), max_message=1))
def test_valid_streams(case: Fed) -> None:
    run(case)


@fuzz_target(examples=400)
@given(case=fed(failing_streams))
# A continuation without a message, or a new message inside one, was only refused once its
# payload had arrived (now from the first two bytes, like every error in a header).
@example(Fed(bytes((0x00, 0x80)) + b"mask" + frame(frames.CLOSE, b"\x03\xe8"), cuts=(2, 3)))
@example(Fed(frame(frames.TEXT, b"", fin=False) + frame(frames.TEXT, b"a"), cuts=tuple(range(20))))
def test_failing_streams(case: Fed) -> None:
    run(case)


def test_many_small_fragments_cost_linear_time() -> None:
    """A message of 100,000 one-byte fragments, and 100,000 empty ones after it: each
    fragment used to cost a pass over all those before it (about 20 s for 40,000 of them on
    a 2-core VM) and an object of its own; now it is appended to one bytearray."""
    fragment = frame(frames.CONTINUATION, b"x", fin=False)
    empty = frame(frames.CONTINUATION, b"", fin=False)
    stream = frame(frames.TEXT, b"", fin=False) + fragment * 100_000 + empty * 100_000
    reader = FrameReader(max_message=100_000)
    start = time.perf_counter()
    assert reader.feed(stream) == []
    assert reader.feed(frame(frames.CONTINUATION, b"")) == [(frames.TEXT, b"x" * 100_000)]
    assert time.perf_counter() - start < 5.0
    with pytest.raises(FrameError) as raised:
        reader.feed(frame(frames.TEXT, b"", fin=False) + fragment * 100_001)
    assert raised.value.code == 1009
