"""Tests for the ``allowed_origins`` rules of kanal.protocol.handshake: exact entries, ``*``,
and wildcard entries ``scheme://*.host[:port]`` (a ``*`` is one or more DNS labels)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.config import App
from kanal.protocol.errors import CloseCode
from kanal.protocol.handshake import check_handshake, origin_allowed, origin_pattern_error

WILD = ("https://*.example.com",)

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize(
    "origin",
    [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://xn--bcher-kva.example.com",
        "HTTPS://A.Example.COM",  # schemes and host names are case-insensitive
    ],
)
def test_a_wildcard_allows_one_or_more_labels(origin: str) -> None:
    assert origin_allowed(origin, WILD)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",  # the * is at least one label: list the apex as well
        "http://a.example.com",  # another scheme
        "https://a.example.com:8443",  # another port
        "https://aexample.com",
        "https://a-example.com",
        "https://a.example.com.evil.com",
        "https://evil.com/.example.com",
        "https://evil.com?.example.com",
        "https://user@a.example.com",
        "https://.example.com",
        "https://a..example.com",
        "null",
        "",
    ],
)
def test_a_wildcard_allows_nothing_else(origin: str) -> None:
    assert not origin_allowed(origin, WILD)


def test_ports_must_match() -> None:
    allowed = ("https://*.example.com:8443",)
    assert origin_allowed("https://a.example.com:8443", allowed)
    assert not origin_allowed("https://a.example.com", allowed)
    assert not origin_allowed("https://a.example.com:8444", allowed)


def test_exact_entries_and_star_keep_their_meaning() -> None:
    assert origin_allowed("https://good.example", ("https://good.example",))
    assert not origin_allowed("https://evil.example", ("https://good.example",))
    assert origin_allowed("https://anything", ("https://good.example", "*"))
    # No Origin header (not a browser): only "*" lets it in, as before wildcards.
    assert not origin_allowed(None, WILD)
    assert origin_allowed(None, ("*",))


def test_check_handshake_refuses_with_4009() -> None:
    app = App(id="1", key="k", secret="s", allowed_origins=WILD)
    allowed = check_handshake(app, protocol="7", secure=False, origin="https://a.example.com")
    assert allowed is None
    refused = check_handshake(app, protocol="7", secure=False, origin="https://example.org")
    assert refused is not None and refused.close_code == CloseCode.UNAUTHORIZED


@pytest.mark.parametrize(
    "pattern",
    [
        "*",
        "https://example.com",
        "https://*.example.com",
        "http://*.a.b:8080",
        "https://*.localhost",
    ],
)
def test_valid_patterns(pattern: str) -> None:
    assert origin_pattern_error(pattern) is None


@pytest.mark.parametrize(
    "pattern",
    [
        "*.example.com",  # no scheme
        "https://a.*.example.com",  # not the first label
        "https://*example.com",  # not a whole label
        "https://*.example.*",
        "https://*.example.com/",  # an origin has no path
        "https://*.",
        "https://**.example.com",
        "ht tp://*.example.com",
    ],
)
def test_invalid_patterns_are_explained(pattern: str) -> None:
    problem = origin_pattern_error(pattern)
    assert problem is not None and "https://*.example.com" in problem


@given(st.sampled_from(["http", "https"]), hosts, hosts, st.none() | st.integers(1, 65535))
def test_matches_are_exactly_the_subdomains(
    scheme: str, sub: str, base: str, port: int | None
) -> None:
    suffix = f":{port}" if port is not None else ""
    pattern = f"{scheme}://*.{base}{suffix}"
    assert origin_pattern_error(pattern) is None
    assert origin_allowed(f"{scheme}://{sub}.{base}{suffix}", (pattern,))
    assert not origin_allowed(f"{scheme}://{base}{suffix}", (pattern,))
    other = "http" if scheme == "https" else "https"
    assert not origin_allowed(f"{other}://{sub}.{base}{suffix}", (pattern,))


@given(st.text(max_size=60), hosts)
def test_anything_allowed_is_under_the_base_host(origin: str, base: str) -> None:
    pattern = f"https://*.{base}"
    if origin_allowed(origin, (pattern,)):
        parts = urlsplit(origin.lower())
        assert parts.scheme == "https"
        assert parts.port is None and not parts.path and not parts.username
        assert parts.hostname is not None and parts.hostname.endswith("." + base)
