"""Fuzz target: kanal's HTTP/1.1 connection (kanal.transport.http11.HttpConnection).

Byte streams (arbitrary bytes, and requests built from the grammar of RFC 9112 with
mistakes: bad versions, no or two Hosts, conflicting lengths, chunked bodies with
extensions and trailers, 100-continue, upgrades, heads and trailers around the 64 KiB limit)
are cut at arbitrary points and fed, piece by piece, on the real event loop (uvloop), to an
``HttpConnection`` of a real ``HttpServer`` over :class:`MemoryTransport`. Its ``dispatch``
answers every request at once or after a few loop iterations, with the request's number in a
header; its ``upgrade`` answers 101 and takes the socket over, as the WebSocket endpoint does.

The invariants:

* nothing escapes ``data_received`` and nothing reaches the loop's exception handler (no
  task dies with an exception), and nothing is written after a write_eof or a close;
* what is written parses as HTTP/1.1 responses (status line, headers, a Content-Length that
  matches the body; none for a HEAD request), answering the dispatched requests in order,
  each once; a ``100 Continue`` only ever precedes the answer to a request that expects it;
  a refusal (400, 413, 431), a ``Connection: close`` answer or the 101 is the last thing
  written, after the answers to every request before it;
* after a hand-over, the upgrade's handler gets exactly the rest of the stream;
* what the connection holds stays bounded: the head being read counts at most
  ``MAX_HEAD_BYTES`` (more is refused, with httptools holding at most one read more), a
  body at most ``max_body``, and reading is paused only while answers are pending.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from hypothesis import example, given
from hypothesis import strategies as st

from kanal.transport import http11
from kanal.transport.http11 import MAX_HEAD_BYTES, HttpConnection, HttpServer, Request, Response
from tests.fuzzing import fuzz_target

REFUSALS = (400, 413, 431)
SETTLE = 200  # loop iterations within which the connection must be done with its input


class MemoryTransport(asyncio.Transport):
    """The part of a TCP transport that ``HttpConnection`` uses, kept in memory.

    It behaves as uvloop's does: ``close`` stops reading and calls ``connection_lost`` on the
    next loop iteration (there is never unsent output); a write after ``write_eof`` raises;
    writes after ``close`` are dropped (counted in :attr:`dropped`).
    """

    def __init__(self, protocol: asyncio.Protocol, *, can_eof: bool = True) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.dropped = 0
        self.can_eof = can_eof
        self.eof = False
        self.closing = False
        self.lost = False
        self.reading = True
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.lost:
            raise RuntimeError("unable to perform operation: the handler is closed")
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            self.dropped += len(data)
        else:
            self.written += data

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self.lost:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.eof = True

    def can_write_eof(self) -> bool:
        return self.can_eof

    def close(self) -> None:
        if self.closing:
            return
        self.closing, self.reading = True, False
        asyncio.get_running_loop().call_soon(self._lose)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        if not self.closing:
            self.reading = False

    def resume_reading(self) -> None:
        if not self.closing:
            self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return 0


class Taken(asyncio.Protocol):
    """What the upgrade handler installs: it keeps every byte it is given."""

    def __init__(self, rest: bytes) -> None:
        self.data = bytearray(rest)

    def data_received(self, data: bytes) -> None:
        self.data += data


@dataclass(repr=False)
class Scenario:
    """One connection's input and timing."""

    stream: bytes
    cuts: list[int] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)  # loop iterations after each piece
    dispatch_yields: int = 0  # loop iterations each dispatch takes
    max_body: int = 100
    can_eof: bool = True
    shutdown_after: int | None = None  # the server shuts down after this piece
    eager: bool = False  # answers written in data_received when dispatch need not wait

    def __repr__(self) -> str:
        """Valid Python for an ``@example``, with long runs of one byte written as ``b"x" * n``
        (heads and trailers near the 64 KiB limit)."""
        fields = ", ".join(
            f"{name}={value!r}" for name, value in vars(self).items() if name != "stream"
        )
        return f"Scenario(stream={compact(self.stream)}, {fields})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a failing example with this."""
        printer.text(repr(self))

    def pieces(self) -> list[bytes]:
        bounds = [0, *sorted({min(c, len(self.stream)) for c in self.cuts}), len(self.stream)]
        return [self.stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def compact(data: bytes) -> str:
    parts: list[str] = []
    plain = bytearray()
    for byte, group in itertools.groupby(data):
        count = len(list(group))
        if count <= 32:
            plain += bytes((byte,)) * count
            continue
        if plain:
            parts.append(repr(bytes(plain)))
            plain.clear()
        parts.append(f"{bytes((byte,))!r} * {count}")
    if plain or not parts:
        parts.append(repr(bytes(plain)))
    return " + ".join(parts)


@dataclass
class Outcome:
    transport: MemoryTransport
    requests: list[Request]
    fed: bytes
    taken: Taken | None
    upgraded_at: int | None  # bytes written when the upgrade handler was called
    loop_errors: list[dict[str, Any]]
    open_at_end: bool  # neither refused nor closed when the input ran out


async def settle(done: Callable[[], bool]) -> bool:
    """Let the loop run until ``done()`` holds; False if it never does."""
    for _ in range(SETTLE):
        if done():
            return True
        await asyncio.sleep(0)
    return done()


def others_pending() -> bool:
    current = asyncio.current_task()
    return any(task is not current for task in asyncio.all_tasks())


def check_bounds(connection: HttpConnection, piece: bytes, max_body: int) -> None:
    """What the connection holds after it has been given ``piece``."""
    state: Any = connection  # its private state, read only
    if state._rejected:
        return  # it holds nothing more from now on (the lists are not added to)
    if state._in_head:
        assert state._head_bytes <= MAX_HEAD_BYTES, state._head_bytes
    kept = len(state._url) + sum(len(name) + len(value) for name, value in state._headers)
    assert kept <= MAX_HEAD_BYTES, kept
    assert sum(map(len, state._body)) <= max_body
    assert len(state._queue) <= http11._MAX_PIPELINED + len(piece) // 16


async def run(scenario: Scenario) -> Outcome:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    requests: list[Request] = []
    upgraded: list[tuple[int, Taken]] = []

    async def dispatch(request: Request) -> Response:
        number = len(requests)
        requests.append(request)
        for _ in range(scenario.dispatch_yields):
            await asyncio.sleep(0)
        return Response(200, b"#%d" % number, headers=(("X-Request", str(number)),))

    def upgrade(request: Request, transport: asyncio.Transport, rest: bytes) -> None:
        assert isinstance(transport, MemoryTransport)
        taken = Taken(rest)
        upgraded.append((len(transport.written), taken))
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        transport.set_protocol(taken)

    server = HttpServer(
        dispatch, upgrade, max_body=scenario.max_body, idle_timeout=0, eager=scenario.eager
    )
    connection = server.protocol()
    transport = MemoryTransport(connection, can_eof=scenario.can_eof)
    connection.connection_made(transport)
    fed = bytearray()
    for index, piece in enumerate(scenario.pieces()):
        resumed = await settle(lambda: transport.reading or transport.closing)
        assert resumed, "reading stays paused"
        if transport.closing:
            break
        fed += piece
        transport.protocol.data_received(piece)
        if transport.protocol is connection:
            check_bounds(connection, piece, scenario.max_body)
        for _ in range(scenario.waits[index] if index < len(scenario.waits) else 0):
            await asyncio.sleep(0)
        if scenario.shutdown_after == index:
            server.close_idle()
    assert await settle(lambda: not others_pending()), "the answers never came"
    if transport.eof and not transport.closing:  # refused: closed after the linger time
        linger = connection._idle
        assert linger is not None and not linger.cancelled(), "a refused connection stays open"
    if not transport.closing and transport.protocol is connection:
        assert transport.reading, "reading is paused with nothing left to answer"
    open_at_end = not transport.eof and not transport.closing
    transport.close()  # the client goes away
    await settle(lambda: transport.lost and not others_pending())
    assert server.is_idle
    upgraded_at, taken = upgraded[0] if upgraded else (None, None)
    assert len(upgraded) <= 1
    return Outcome(transport, requests, bytes(fed), taken, upgraded_at, loop_errors, open_at_end)


# --- reading what was written ------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    start: int  # where the answer begins in the output


def parse_answers(out: bytes, requests: list[Request]) -> list[Answer]:
    """Split the output into responses; assert each is well formed."""
    answers: list[Answer] = []
    at = 0
    while at < len(out):
        line = STATUS_LINE.match(out, at)
        assert line, f"not a status line at {at}: {out[at : at + 60]!r}"
        head_end = out.find(b"\r\n\r\n", line.start())
        assert head_end >= 0, f"unfinished response head: {out[at : at + 200]!r}"
        status = int(line[1])
        headers: dict[str, str] = {}
        for raw in out[line.end() : head_end + 2].split(b"\r\n")[:-1]:
            name, colon, value = raw.decode("latin-1").partition(": ")
            assert colon and name, raw
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value
        at = head_end + 4
        if status in (100, 101):
            assert not headers, headers
        else:
            length = headers.get("content-length", "")
            assert length.isdigit(), headers
            number = headers.get("x-request")
            head = number is not None and requests[int(number)].method == "HEAD"
            if not head:
                at += int(length)
            assert at <= len(out), "the body is cut short"
        answers.append(Answer(status, headers, line.start()))
    return answers


def check(scenario: Scenario, outcome: Outcome) -> None:
    transport, requests = outcome.transport, outcome.requests
    assert not outcome.loop_errors, outcome.loop_errors
    assert transport.dropped == 0, "written after close"
    out = bytes(transport.written)
    answers = parse_answers(out, requests)
    numbered = [int(a.headers["x-request"]) for a in answers if "x-request" in a.headers]
    assert numbered == list(range(len(requests))), "answered out of order, twice or never"
    for index, answer in enumerate(answers):
        last = index == len(answers) - 1
        if answer.status == 100:
            following = answers[index + 1] if not last else None
            assert following is None or following.status != 100, "two 100 Continue"
            if following is not None and "x-request" in following.headers:
                request = requests[int(following.headers["x-request"])]
                expects = request.headers.get("expect", "").lower()
                assert expects == "100-continue", "100 Continue for another request"
        elif answer.status == 101:
            assert last, "an answer after the 101"
            assert outcome.upgraded_at == answer.start
        elif "x-request" not in answer.headers:
            assert answer.status in REFUSALS, answer
            assert last, "an answer after a refusal"
            assert transport.eof or transport.closing
            if answer.status == 431:  # only for a head (or trailer section) over the limit
                assert longest_head(outcome.fed) > MAX_HEAD_BYTES - 100, "431 for a short head"
        if answer.headers.get("connection") == "close":
            assert last, "an answer after Connection: close"
            assert transport.closing
    if outcome.open_at_end and outcome.taken is None:
        # What follows the last empty line is an unfinished head, body or trailer section
        # (with the chunk size lines), and none is taken without bound.
        piece = max(map(len, scenario.pieces()), default=0)
        bound = MAX_HEAD_BYTES + 2 * piece + 8 * scenario.max_body + 1024
        assert len(re.split(rb"\r?\n\r?\n", outcome.fed)[-1]) <= bound, "read without bound"
    if outcome.taken is not None:
        assert answers and answers[-1].status == 101
        assert outcome.fed.endswith(outcome.taken.data), "bytes lost at the hand-over"
    else:
        assert outcome.upgraded_at is None


def longest_head(stream: bytes) -> int:
    """An upper bound of the longest head or trailer section in the stream: the longest
    stretch without an empty line."""
    return max(map(len, re.split(rb"\r?\n\r?\n", stream)))


def exchange(scenario: Scenario) -> None:
    check(scenario, uvloop.run(run(scenario)))


# --- strategies --------------------------------------------------------------------------------

EOL = st.sampled_from([b"\r\n"] * 6 + [b"\n"])
TOKENS = st.binary(min_size=1, max_size=12)
LONG = st.sampled_from([MAX_HEAD_BYTES - 200, MAX_HEAD_BYTES - 1, MAX_HEAD_BYTES + 1, 250_000])


# Coherent header sets (so that many requests are valid), then odd lines added to them.
KINDS = {
    "plain": [b"Host: a"],
    "length": [b"Host: a", b"Content-Length: %d"],
    "chunked": [b"Host: a", b"Transfer-Encoding: chunked"],
    "continue": [b"Host: a", b"Content-Length: %d", b"Expect: 100-continue"],
    "continue-chunked": [b"Host: a", b"Transfer-Encoding: chunked", b"Expect: 100-continue"],
    "close": [b"Host: a", b"Connection: close"],
    "upgrade": [b"Host: a", b"Connection: Upgrade", b"Upgrade: websocket"],
}
ODD_LINES = [
    b"Host: a",
    b"host:b",
    b"Content-Length: %d",
    b"Content-Length: 0",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999",
    b"Content-Length: \xb2",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Expect: 100-continue",
    b"Expect: 100-Continue",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"X-Folded: a\r\n b",
    b"X-Empty:",
    b": no-name",
]


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    bounds = [0, *cuts, len(body)]
    out = b""
    for a, b in itertools.pairwise(bounds):
        if b > a:
            size = rarely(
                draw, st.just(b"%x"), st.sampled_from([b"%X", b"00%x", b"%x;e=1", b"%x "])
            )
            size %= b - a
            out += size + b"\r\n" + body[a:b] + b"\r\n"
    out += draw(st.sampled_from([b"0", b"0;last", b"000"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-Trailer: t", b"Expires: 0", b"bad trailer"])) + b"\r\n"
    if draw(st.integers(0, 9)) == 0:
        out += b"X-Long-Trailer: " + b"t" * draw(LONG) + b"\r\n"
    return out + b"\r\n"


def rarely(
    draw: st.DrawFn, usual: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes]
) -> bytes:
    return draw(odd if draw(st.integers(0, 5)) == 0 else usual)


METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT"]
TARGETS = [b"/", b"/apps/1/events?auth_key=k&x", b"/app/key?protocol=7", b"http://a/b?c"]
ODDITIES = [
    *("method", "target", "version", "no-host", "line", "lines", "long", "junk", "length", "eol")
]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request, valid about half of the time; else with one or two oddities."""
    odd = draw(st.integers(0, 2)) == 0
    oddities = (
        set(draw(st.lists(st.sampled_from(ODDITIES), min_size=1, max_size=2))) if odd else set()
    )
    method = draw(TOKENS if "method" in oddities else st.sampled_from(METHODS))
    target = draw(TOKENS | st.just(b"*") if "target" in oddities else st.sampled_from(TARGETS))
    version = b"HTTP/1.1"
    if "version" in oddities:
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b""]))
    kind = draw(st.sampled_from(sorted(KINDS)))
    framed = "length" in kind or "continue" in kind or "chunked" in kind
    body = draw(st.binary(max_size=150)) if framed else b""
    lines = list(KINDS[kind][1:] if "no-host" in oddities else KINDS[kind])
    for _ in range(("line" in oddities) + 3 * ("lines" in oddities)):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(ODD_LINES)))
    if "long" in oddities:
        lines.append(b"X-Long: " + b"v" * draw(LONG))
    if "junk" in oddities:
        lines.append(draw(TOKENS) + b": " + draw(st.binary(max_size=20)))
    wrong = draw(st.sampled_from([-1, 1, 1000])) if "length" in oddities else 0
    lines = [line.replace(b"%d", b"%d" % max(0, len(body) + wrong)) for line in lines]
    eol = draw(EOL) if "eol" in oddities else b"\r\n"
    head = method + b" " + target + b" " + version + eol + b"".join(line + eol for line in lines)
    chunks = b"chunked" in b"".join(lines) and not ({"length", "lines"} & oddities)
    return head + eol + (draw(chunked(body)) if chunks else body)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = [
        rarely(draw, requests(), st.binary(max_size=40)) for _ in range(draw(st.integers(1, 5)))
    ]
    stream = b"".join(parts)
    if stream and draw(st.integers(0, 9)) == 0:  # one byte changed, dropped or doubled
        at = draw(st.integers(0, len(stream) - 1))
        stream = stream[:at] + draw(st.binary(max_size=2)) + stream[at + 1 :]
    if draw(st.integers(0, 5)) == 0:  # the client stops in the middle
        stream = stream[: draw(st.integers(0, len(stream)))]
    return stream


@st.composite
def scenarios(draw: st.DrawFn, stream: st.SearchStrategy[bytes]) -> Scenario:
    data = draw(stream)
    every_byte = len(data) < 300 and draw(st.integers(0, 15)) == 0
    cuts = list(range(len(data))) if every_byte else draw(st.lists(st.integers(0, len(data))))
    pieces = len(set(cuts)) + 1
    return Scenario(
        stream=data,
        cuts=cuts,
        waits=draw(st.lists(st.integers(0, 3), min_size=pieces, max_size=pieces)),
        dispatch_yields=draw(st.integers(0, 3)),
        max_body=draw(st.sampled_from([0, 10, 100, 1000])),
        can_eof=draw(st.booleans()),
        shutdown_after=draw(st.none() | st.integers(0, pieces)),
        eager=draw(st.booleans()),
    )


# --- the targets -------------------------------------------------------------------------------


@fuzz_target(examples=300)
@given(scenario=scenarios(st.binary(max_size=300)))
def test_arbitrary_bytes(scenario: Scenario) -> None:
    exchange(scenario)


# Inputs that failed once (docs/development.md, "Fuzzing"): the fix is named beside each.
UPGRADE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
LARGE_BODY = b"x" * 100 + b"\r\n\r\n"  # no stretch of it looks like a long head


@fuzz_target(examples=600)
@given(scenario=scenarios(streams()))
# A second error in the read that was refused (431, then a malformed line) refused again and
# wrote after write_eof: the RuntimeError escaped data_received. Now _fail acts once.
@example(Scenario(stream=b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 65536 + b"\r\n\r\n\x00"))
@example(
    Scenario(
        stream=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"b\r\n0123456789a\r\nb\r\n0123456789a\r\n0\r\n\r\n",
        max_body=10,
    )
)
# A refusal pipelined behind a request being answered was written first (write_eof, then the
# worker's write raised; over TLS the close dropped the answer). Now it waits its turn.
@example(Scenario(stream=b"GET / HTTP/1.0\r\n\r\n\x00", can_eof=False))
@example(Scenario(stream=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00", dispatch_yields=2))
# A 100 Continue for a pipelined request went out before the answers to the ones before it.
@example(
    Scenario(
        stream=b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
)
# An upgrade pipelined behind a request being answered was handed over at once: the answer
# was then written into the WebSocket stream, after the 101.
@example(Scenario(stream=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE + b"rest"))
@example(Scenario(stream=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE, cuts=[27, 40]))
# An upgrade refused for HTTP/1.0 was still handed over (with the request before it, or none,
# which cancelled the lingering close and left the refused connection open).
@example(Scenario(stream=UPGRADE.replace(b"1.1", b"1.0")))
@example(Scenario(stream=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE.replace(b"1.1", b"1.0")))
# A long request head and a long trailer section were added up against the head limit: 431
# although each was under it. Now each section has its own limit (found by scripts/fuzz).
@example(
    Scenario(
        stream=b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Long: "
        + b"v" * 65336
        + b"\r\n\r\n0\r\nX-Long-Trailer: "
        + b"t" * 65336
        + b"\r\n\r\n",
        max_body=0,
        can_eof=False,
    )
)
# A read that ended a large body and began the next head counted the body against the head
# limit: 431 for a short head.
@example(
    Scenario(
        stream=b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (700 * 104)
        + LARGE_BODY * 700
        + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        cuts=[700 * 104 + 60],
        max_body=100_000,
    )
)
# A trailer section was not counted against the head limit (httptools kept an endless
# trailer line to itself), and trailers were counted together with the body.
@example(
    Scenario(
        stream=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nX-Trailer: " + b"t" * 250_000,
        cuts=list(range(70, 250_000, 25_000)),
    )
)
@example(
    Scenario(
        stream=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1;ext=" + b"e" * 250_000,
        cuts=list(range(70, 250_000, 25_000)),
    )
)
def test_request_streams(scenario: Scenario) -> None:
    exchange(scenario)
