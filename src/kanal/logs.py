"""kanal's log output: format, redaction, rate-limited refusal lines and frame tracing.

Ownership rule: this module decides what a log line looks like and how many of a kind are
written; each module still owns its own logger (``kanal.<part>``) and says what happened.
``kanal serve`` calls :func:`configure` once; an embedding app keeps its own logging set-up
and gets the same records (docs/deployment.md, "Logs").

Three promises, each kept here so that no call site has to remember them:

* **No secret, no full signature.** Secrets are never passed to a logger. Signatures could
  be (a traced frame's ``auth``, an error message quoting it): a traced frame has each run of
  64 or more hex digits (an HMAC-SHA256 digest) cut to its first :data:`SHOWN_HEX` digits
  (:func:`redact`) before it is logged, refusal reasons that quote what the client sent are
  shortened by :func:`reason`, and kanal's formatters redact every line once more.
* **A flood cannot fill a disk.** Refusals go through :func:`refused`: at most
  :data:`LINES_PER_INTERVAL` lines per kind of refusal per :data:`INTERVAL` seconds, then one
  line saying how many similar lines were left out.
* **Nothing costs anything while off.** Frame tracing (``verbose``) is one boolean test per
  frame in the transports; debug lines are guarded by ``isEnabledFor`` or use lazy ``%``
  arguments.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "FRAMES",
    "INTERVAL",
    "LINES_PER_INTERVAL",
    "REASON_CHARS",
    "SHOWN_HEX",
    "TRACE_CHARS",
    "JsonFormatter",
    "TextFormatter",
    "Throttle",
    "configure",
    "flush_suppressed",
    "printable",
    "reason",
    "redact",
    "refused",
    "trace",
]

#: The logger of ``verbose`` frame tracing; ``kanal serve --verbose`` sets it to DEBUG.
FRAMES = logging.getLogger("kanal.frames")
#: Characters of a frame shown in a trace line; the rest is counted, not shown.
TRACE_CHARS = 1000
#: Hex digits of a signature kept in a log line: enough to tell two apart, useless to forge.
SHOWN_HEX = 8
#: Characters of a refusal reason kept (it may quote a client's input).
REASON_CHARS = 200
LINES_PER_INTERVAL = 10
INTERVAL = 10.0

_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# The attributes every LogRecord has; whatever else a record carries came from ``extra=``
# and is written as a field of its own in JSON lines.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    """Cut every run of 64+ hex digits (an HMAC-SHA256 digest) to its first few."""
    return _HEX_RUN.sub(lambda match: match[0][:SHOWN_HEX] + "...", text)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): a client's words in a
    log line must not start a line of their own that looks like kanal's."""
    return text.translate(_ESCAPES) if _CONTROL.search(text) else text


def reason(message: str) -> str:
    """A refusal message fit for a log line: the hosted "Invalid signature" texts quote the
    signature the client sent and the string it should have signed, so only their first
    words are kept; the others name no secret but may quote what a client sent (an invalid
    channel name, a key), so they are cut to :data:`REASON_CHARS`."""
    if message.startswith("Invalid signature"):
        return "Invalid signature"
    if len(message) > REASON_CHARS:
        message = message[:REASON_CHARS] + "..."
    return printable(message)


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,000 INFO kanal.hub[4242]: message``, redacted."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``pid``, the record's ``extra`` fields (``socket_id``, ``app_id``, ...) and ``exc`` for a
    traceback; redacted like the text format."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class _KanalHandler(logging.StreamHandler[IO[str]]):
    """The handler :func:`configure` installs (and replaces when called again)."""


def configure(
    level: str = "info",
    log_format: str = "text",
    verbose: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send log records to ``stream`` (stderr) as text or JSON lines, from ``level`` up; with
    ``verbose`` also every frame (:data:`FRAMES`, whatever ``level`` is). Returns the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _KanalHandler):
            root.removeHandler(handler)
    handler = _KanalHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    FRAMES.setLevel(logging.DEBUG if verbose else logging.NOTSET)
    return handler


def trace(direction: str, socket_id: str, text: str) -> None:
    """One frame in (``"in"``) or out (``"out"``, ``"close"``) of a connection; the transports
    call it only when tracing is on."""
    if len(text) > TRACE_CHARS:
        text = f"{text[:TRACE_CHARS]}... ({len(text) - TRACE_CHARS} more characters)"
    # Redacted here, not only by kanal's formatters: an embedding app's handlers see this
    # record too, and a frame may carry an auth signature.
    text = printable(redact(text))
    FRAMES.debug(
        "%s %-5s %s",
        socket_id,
        direction,
        text,
        extra={"socket_id": socket_id, "direction": direction},
    )


@dataclass(slots=True)
class _Window:
    logger: logging.Logger
    level: int
    started: float
    lines: int = 0
    suppressed: int = 0


class Throttle:
    """At most ``lines`` log lines per kind per ``interval`` seconds, then one line with the
    count of those left out. Kinds are a few fixed strings chosen by the call sites (never a
    client's input), so the table stays small."""

    def __init__(
        self,
        lines: int = LINES_PER_INTERVAL,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(
        self, logger: logging.Logger, kind: str, level: int, msg: str, *args: object, **fields: Any
    ) -> bool:
        """Log ``msg % args`` (``fields`` as ``extra``) unless ``kind`` used up its lines;
        True when written."""
        if not logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self.interval:
            if window is not None:
                self._summarise(kind, window)
            window = self._windows[kind] = _Window(logger, level, now)
        if window.lines >= self.lines:
            window.suppressed += 1
            return False
        window.lines += 1
        logger.log(level, msg, *args, extra=fields or None)
        return True

    def flush(self) -> None:
        """Say what ended windows left out (the server's 1 s tick calls this), so a flood
        that stopped is still counted."""
        now = self._clock()
        for kind, window in list(self._windows.items()):
            if now - window.started >= self.interval:
                self._summarise(kind, window)
                del self._windows[kind]

    def _summarise(self, kind: str, window: _Window) -> None:
        if window.suppressed:
            window.logger.log(
                window.level,
                "suppressed %d similar lines (%s) in %g s",
                window.suppressed,
                kind,
                self.interval,
                extra={"kind": kind, "suppressed": window.suppressed},
            )


_THROTTLE = Throttle()


def refused(
    logger: logging.Logger,
    kind: str,
    msg: str,
    *args: object,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """A refusal (a connection, a signature, an API call), rate-limited per ``kind``."""
    _THROTTLE.log(logger, kind, level, msg, *args, **fields)


def flush_suppressed() -> None:
    """See :meth:`Throttle.flush`."""
    _THROTTLE.flush()
