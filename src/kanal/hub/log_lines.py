"""What the hub writes to the log about connections (logger ``kanal.hub``).

Ownership rule: these functions only turn the hub's values into log lines (docs/deployment.md,
"Logs"): a connection opened or closed at DEBUG, refused by a quota at INFO, a frame refused
at INFO when it failed a signature check, else at DEBUG. Refusals go through
:func:`kanal.logs.refused`, so a flood of them cannot fill a disk. The hub calls them once per
connection or per refusal, never per delivered message.
"""

from __future__ import annotations

import logging

from kanal import logs
from kanal.protocol.session import Refusal

__all__ = ["closed", "opened", "refused_connection", "refused_frame"]

log = logging.getLogger("kanal.hub")

# The refusals that mean "a signature did not check out", whatever the frame: a subscription's
# AuthError is status 401; pusher:signin's errors carry no code, only these texts.
_AUTH_TEXTS = ("Invalid signature", "Invalid key in", "Invalid format: auth")


def opened(app_id: str, socket_id: str, peer: str | None) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "connection %s opened: app %s, from %s",
            socket_id,
            app_id,
            peer or "?",
            extra={"socket_id": socket_id, "app_id": app_id, "client": peer},
        )


def closed(app_id: str, socket_id: str, code: int | None) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "connection %s closed: app %s, code %s",
            socket_id,
            app_id,
            code,
            extra={"socket_id": socket_id, "app_id": app_id, "code": code},
        )


def refused_connection(
    app_id: str, socket_id: str, peer: str | None, code: int, message: str
) -> None:
    """Refused by the server's or the app's connection cap (4100, 4004)."""
    logs.refused(
        log,
        f"connection refused {code}",
        "refused connection %s: app %s, from %s: %s (%d)",
        socket_id,
        app_id,
        peer or "?",
        message,
        code,
        socket_id=socket_id,
        app_id=app_id,
        client=peer,
        code=code,
    )


def refused_frame(app_id: str, socket_id: str, refusal: Refusal) -> None:
    """A subscription or another frame answered with an error."""
    auth = refusal.code == 401 or refusal.message.startswith(_AUTH_TEXTS)
    why = logs.reason(refusal.message)
    # The channel may be the invalid name a client sent: bounded and escaped like a reason.
    channel = None if refusal.channel is None else logs.reason(refusal.channel)
    kind = "signature refused" if auth else "frame refused"
    logs.refused(
        log,
        kind,
        "%s: connection %s, app %s%s: %s%s",
        kind,
        socket_id,
        app_id,
        "" if channel is None else f", channel {channel}",
        why,
        "" if refusal.code is None else f" ({refusal.code})",
        level=logging.INFO if auth else logging.DEBUG,
        socket_id=socket_id,
        app_id=app_id,
        channel=channel,
        code=refusal.code,
        reason=why,
    )
