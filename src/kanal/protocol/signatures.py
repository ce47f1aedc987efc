"""Every HMAC kanal computes or checks, in one place.

Ownership: this module owns the three signature schemes of the Pusher protocol and nothing else:

* channel authorization and user sign-in tokens ``"<key>:<hex>"`` (auth.md §1-3);
* HTTP API request signatures (http-api.md §2);
* the ``X-Pusher-Signature`` of webhook bodies (webhooks.md §2, §7);

and which secrets a signature may be made with while a secret is rotated
(:func:`accepted_secrets`, docs/apps.md "Secret rotation"): the current one, and until its
expiry the previous one. Incoming signatures are checked against every accepted secret, all of
them every time, so neither the answer's timing nor its text tells which secret matched;
webhooks are signed with the current secret only.

All signatures are ``lowercase_hex(HMAC-SHA256(app_secret, message))`` over UTF-8 bytes, and all
comparisons of secret-derived values use :func:`hmac.compare_digest` on bytes (a ``str``
argument with non-ASCII characters would make it raise ``TypeError``).

The module is pure: the current time is a parameter of :func:`verify_request`, and failures
are raised as the project's error types (:mod:`kanal.protocol.errors`) for the session and
transport layers to put on the wire.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote

from kanal.config import App
from kanal.protocol.errors import ApiError, PusherError, SubscriptionError

__all__ = [
    "AUTH_VERSION",
    "EMPTY_BODY_MD5",
    "TIMESTAMP_WINDOW",
    "accepted_secrets",
    "canonical_query",
    "channel_string_to_sign",
    "hmac_sha256_hex",
    "md5_hex",
    "request_string_to_sign",
    "sign_channel",
    "sign_request",
    "sign_signin",
    "signin_string_to_sign",
    "verify_channel_auth",
    "verify_request",
    "verify_signin",
    "webhook_signature",
]

AUTH_VERSION = "1.0"
#: Seconds of clock skew tolerated on ``auth_timestamp`` (http-api.md §2.1, limits.md §1).
TIMESTAMP_WINDOW = 600
#: MD5 of the empty body, which pusher-http-python signs on every GET (http-api.md §2.3).
EMPTY_BODY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"

_REQUIRED_PARAMS = ("auth_key", "auth_timestamp", "auth_version", "auth_signature")
_MAX_ECHO = 128  # longest client-supplied value echoed back in an error message


def _utf8(text: str) -> bytes:
    # ``surrogatepass`` so junk input (lone surrogates) can never raise here; valid text
    # encodes exactly as the SDKs encode it.
    return text.encode("utf-8", "surrogatepass")


def hmac_sha256_hex(secret: str, message: str | bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``message`` keyed with ``secret`` (auth.md §1)."""
    data = message if isinstance(message, bytes) else _utf8(message)
    inner_pad, outer_pad = _keyed(secret)
    inner = inner_pad.copy()
    inner.update(data)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


# RFC 2104 §2: H(K xor opad, H(K xor ipad, text)), K padded to SHA-256's 64-byte block (a
# longer key hashed first). The two keyed states are made once per secret and copied per
# message, which takes about half the instructions of ``hmac.new`` or ``hmac.digest`` (each
# builds them again); tests/protocol/test_signatures.py checks it against ``hmac.new``.
_BLOCK = 64
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    key = _utf8(secret)
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def md5_hex(body: bytes) -> str:
    """Lowercase hex MD5 of a request body, the ``body_md5`` parameter (http-api.md §2.1)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def _equal(given: str, expected: str) -> bool:
    """Constant-time string equality that accepts any text."""
    if given.isascii() and expected.isascii():  # hex digests: compared as they are
        return hmac.compare_digest(given, expected)
    return hmac.compare_digest(_utf8(given), _utf8(expected))


def _signed_by_any(given: str, secrets: Sequence[str], strings_to_sign: Sequence[str]) -> bool:
    """Whether ``given`` is the HMAC of one of ``strings_to_sign`` under one of ``secrets``.

    Every combination is computed and compared, without stopping at a match, so the time taken
    depends only on how many secrets are accepted, never on which one matched.
    """
    found = False
    for secret in secrets:
        for string_to_sign in strings_to_sign:
            found |= _equal(given, hmac_sha256_hex(secret, string_to_sign))
    return found


def accepted_secrets(app: App, now: float | None) -> tuple[str, ...]:
    """The secrets an incoming signature of ``app`` may be made with at Unix time ``now``.

    ``app.secret`` always; ``app.previous_secret`` too while a rotation runs, that is until
    ``app.previous_secret_expires_at`` (at that second and after it, it is refused). With
    ``now`` unknown (``None``) only the current secret.
    """
    if app.previous_secret and now is not None and now < app.previous_secret_expires_at:
        return (app.secret, app.previous_secret)
    return (app.secret,)


def _split_token(auth: str) -> tuple[str, str] | None:
    """``"<key>:<sig>"`` split at the first colon, or ``None`` without a colon."""
    key, colon, sig = auth.partition(":")
    return (key, sig) if colon else None


# --------------------------------------------------------------------------------------------
# Channel authorization and user sign-in (auth.md)


def channel_string_to_sign(socket_id: str, channel: str, channel_data: str | None) -> str:
    """``<socket_id>:<channel>[:<channel_data>]`` (auth.md §2).

    ``channel_data`` is appended only when it is a non-empty string, exactly as received: its
    bytes are part of the signature and must never be re-serialised.
    """
    base = f"{socket_id}:{channel}"
    return f"{base}:{channel_data}" if channel_data else base


def signin_string_to_sign(socket_id: str, user_data: str) -> str:
    """``<socket_id>::user::<user_data>`` (auth.md §2)."""
    return f"{socket_id}::user::{user_data}"


def sign_channel(
    *, app_key: str, app_secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The ``auth`` token an app server returns for a channel subscription (auth.md §4.1)."""
    signature = hmac_sha256_hex(
        app_secret, channel_string_to_sign(socket_id, channel, channel_data)
    )
    return f"{app_key}:{signature}"


def sign_signin(*, app_key: str, app_secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` token an app server returns for ``pusher:signin`` (auth.md §4.2)."""
    signature = hmac_sha256_hex(app_secret, signin_string_to_sign(socket_id, user_data))
    return f"{app_key}:{signature}"


def _signature_mismatch(string_to_sign: str, got: str) -> str:
    # Hosted text (auth.md §3.1, limits.md §3).
    return f"Invalid signature: Expected HMAC SHA256 hex digest of {string_to_sign}, but got {got}"


def verify_channel_auth(
    *,
    app_key: str,
    app_secrets: tuple[str, ...],
    socket_id: str,
    channel: str,
    auth: str,
    channel_data: str | None,
) -> None:
    """Check a ``pusher:subscribe`` ``auth`` value for a private/presence channel (auth.md §3.1).

    ``app_secrets``: the secrets any of which may have signed (:func:`accepted_secrets`).

    Raises:
        SubscriptionError: ``AuthError``/401 with the hosted message texts.
    """
    key, sig = _split_token(auth) or (auth, "")
    if key != app_key:
        message = f"Invalid key in subscription auth data: '{key}'"
        raise SubscriptionError(channel, "AuthError", 401, message)
    string_to_sign = channel_string_to_sign(socket_id, channel, channel_data)
    if not _signed_by_any(sig, app_secrets, [string_to_sign]):
        raise SubscriptionError(channel, "AuthError", 401, _signature_mismatch(string_to_sign, sig))


def verify_signin(
    *, app_key: str, app_secrets: tuple[str, ...], socket_id: str, auth: str, user_data: str
) -> None:
    """Check a ``pusher:signin`` ``auth`` value (auth.md §3.2); ``user_data`` is not parsed here.

    ``app_secrets``: the secrets any of which may have signed (:func:`accepted_secrets`).

    Raises:
        PusherError: code ``None`` with the hosted texts of limits.md §3.
    """
    parts = _split_token(auth)
    if parts is None:
        raise PusherError(None, "Invalid format: auth must have the format key:signature")
    key, sig = parts
    if key != app_key:
        # No hosted text is known for sign-in; this mirrors the subscription wording.
        raise PusherError(None, f"Invalid key in signin auth data: '{key}'")
    string_to_sign = signin_string_to_sign(socket_id, user_data)
    if not _signed_by_any(sig, app_secrets, [string_to_sign]):
        raise PusherError(None, _signature_mismatch(string_to_sign, sig))


# --------------------------------------------------------------------------------------------
# Webhooks (webhooks.md §2)


def webhook_signature(app_secret: str, body: bytes) -> str:
    """``X-Pusher-Signature``: HMAC of the exact body bytes sent (webhooks.md §2, §7).

    ``app_secret`` is the app's current secret: during a rotation the backend may already have
    dropped the previous one, so it never signs a webhook.
    """
    return hmac_sha256_hex(app_secret, body)


# --------------------------------------------------------------------------------------------
# HTTP API requests (http-api.md §2)


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """http-api.md §2.2: ``key=value`` pairs, keys lower-cased and sorted, values unescaped.

    ``params`` must already exclude ``auth_signature`` and hold each (lower-cased) key once.
    """
    pairs = sorted([(key.lower(), value) for key, value in params])
    return "&".join([f"{key}={value}" for key, value in pairs])


def request_string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """``METHOD\\npath\\ncanonical_query`` (http-api.md §2.2)."""
    return f"{method.upper()}\n{path}\n{canonical_query(params)}"


def sign_request(
    *,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes,
    app_key: str,
    app_secret: str,
    timestamp: int,
) -> dict[str, str]:
    """Sign a request the way the SDKs do; returns every query parameter to send.

    ``body_md5`` is added only for a non-empty body (Node/PHP/Ruby behaviour, http-api.md §2.5);
    ``auth_signature`` comes last; any ``auth_*`` values in ``params`` are replaced.
    """
    query = {key: value for key, value in params.items() if key != "auth_signature"}
    query.update(auth_key=app_key, auth_timestamp=str(timestamp), auth_version=AUTH_VERSION)
    if body:
        query["body_md5"] = md5_hex(body)
    string_to_sign = request_string_to_sign(method, path, query.items())
    query["auth_signature"] = hmac_sha256_hex(app_secret, string_to_sign)
    return query


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message)


def _echo(value: str) -> str:
    """A client-supplied value as a one-line, double-quoted, escaped literal."""
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "..."
    return json.dumps(value)


def _collect_params(query: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Query pairs keyed by lower-cased name.

    Duplicate names (compared after lower-casing, since the canonical string lower-cases them)
    are rejected rather than resolved: no SDK sends them, and any "first wins"/"last wins" rule
    here could disagree with the rule the HTTP layer later uses to read parameters, letting a
    replayed request carry an unsigned value.
    """
    params: dict[str, str] = {}
    for key, value in query:
        lowered = key.lower()
        if lowered in params:
            raise _unauthorized(f"Duplicate parameter: {_echo(lowered)}")
        params[lowered] = value
    return params


def _check_timestamp(given: str, now: float, max_skew: int) -> None:
    """http-api.md §2.3 step 6, with the boundary of the reference Ruby gem.

    The spec's pseudo-code accepts ``|now - ts| <= 600`` while noting that the reference Ruby
    gem (``mloughran/signature``, whose messages the hosted service returns) rejects when the
    difference is ``>= 600``. kanal follows the gem: a difference of exactly ``max_skew``
    (default 600 s, ``App.max_timestamp_skew``) is rejected.
    ``now`` is truncated to whole seconds, as the gem does with ``Time.now.to_i``.
    """
    server_now = int(now)
    if not (given.isascii() and given.isdigit() and len(given) <= 18):
        raise _unauthorized(f"Invalid auth_timestamp: {_echo(given)} is not an integer")
    if abs(server_now - int(given)) >= max_skew:
        raise _unauthorized(
            f"Timestamp expired: Given timestamp ({given}) not within {max_skew}s "
            f"of server time ({server_now})"
        )


def _check_body_md5(params: Mapping[str, str], body: bytes) -> None:
    """http-api.md §2.3 step 7: required for a body, optional (but then exact) without."""
    given = params.get("body_md5")
    if given is None:
        if body:
            raise _unauthorized("Missing parameter: body_md5")
        return
    if not _equal(given, md5_hex(body)):
        raise _unauthorized(f"Invalid body_md5: {_echo(given)} is not the MD5 of the body")


def _check_signature(
    method: str,
    path: str,
    params: Mapping[str, str],
    secrets: tuple[str, ...],
    expose_hint: bool,
) -> None:
    """http-api.md §2.3 steps 8-10, including the one retry with the percent-decoded path."""
    given = params["auth_signature"]
    signed = [(key, value) for key, value in params.items() if key != "auth_signature"]
    string_to_sign = request_string_to_sign(method, path, signed)
    candidates = [string_to_sign]
    decoded_path = unquote(path)
    if decoded_path != path:
        candidates.append(request_string_to_sign(method, decoded_path, signed))
    if _signed_by_any(given, secrets, candidates):
        return
    if not expose_hint:
        raise _unauthorized("Invalid signature")
    # http-api.md §2.4: the Ruby gem's text, string literals escaped so the body stays one line.
    raise _unauthorized(
        f"Invalid signature: you should have sent HmacSHA256Hex({json.dumps(string_to_sign)}, "
        f"your_secret_key), but you sent {_echo(given)}"
    )


def verify_request(
    *,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    body: bytes,
    app_key: str,
    app_secrets: tuple[str, ...],
    now: float,
    expose_hint: bool = True,
    max_skew: int = TIMESTAMP_WINDOW,
) -> None:
    """Authenticate an HTTP API request (http-api.md §2.3, steps 3-10 in order).

    Args:
        method: the HTTP method; upper-cased before signing.
        path: the request path as sent, without query string or mount prefix (step 1).
        query: percent-decoded ``(key, value)`` pairs in received order (step 2).
        body: the raw body bytes (step 7).
        app_key: the key of the app named in the path; ``auth_key`` must equal it.
        app_secrets: the secrets any of which may have signed (:func:`accepted_secrets`).
        now: the server's Unix time in seconds (finite).
        expose_hint: echo the expected string to sign on a signature mismatch (§2.4).
        max_skew: seconds of clock skew at which ``auth_timestamp`` is refused (step 6).

    Raises:
        ApiError: status 401 with a one-line explanation; never any other exception.
    """
    params = _collect_params(query)
    for name in _REQUIRED_PARAMS:  # step 3
        if name not in params:
            raise _unauthorized(f"Missing parameter: {name}")
    if params["auth_version"] != AUTH_VERSION:  # step 4
        raise _unauthorized("Version not supported")
    if params["auth_key"] != app_key:  # step 5
        raise _unauthorized("Unknown auth_key")
    _check_timestamp(params["auth_timestamp"], now, max_skew)  # step 6
    _check_body_md5(params, body)  # step 7
    _check_signature(method, path, params, app_secrets, expose_hint)  # steps 8-10
