"""TLS served directly, and TLS terminated by a trusted proxy (protocol.md §1.2 step 5)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import APP_KEY, StartServer, make_app

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


async def first_frame(
    url: str, *, tls: ssl.SSLContext | bool = True, headers: dict[str, str] | None = None
) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=tls, headers=headers) as ws,
    ):
        frame: dict[str, object] = orjson.loads(await ws.receive_str())
        return frame


async def test_wss_served_directly_satisfies_require_tls(
    start_server: StartServer, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    server = await start_server(
        apps=[make_app(require_tls=True)], tls_cert_file=cert, tls_key_file=key
    )
    client_tls = ssl.create_default_context(cafile=cert)
    client_tls.check_hostname = False
    url = f"https://127.0.0.1:{server.port}/app/{APP_KEY}?protocol=7"
    frame = await first_frame(url, tls=client_tls)
    assert frame["event"] == "pusher:connection_established"


async def test_plain_ws_refused_with_4000_unless_a_trusted_proxy_says_https(
    start_server: StartServer,
) -> None:
    server = await start_server(apps=[make_app(require_tls=True)], trust_proxy_headers=True)
    url = server.ws_url()
    refused = await first_frame(url)
    assert refused == {
        "event": "pusher:error",
        "data": {
            "code": 4000,
            "message": "Application only accepts SSL connections, reconnect using wss://",
        },
    }
    proxied = await first_frame(url, headers={"X-Forwarded-Proto": "https"})
    assert proxied["event"] == "pusher:connection_established"


async def test_forwarded_proto_is_ignored_unless_trusted(start_server: StartServer) -> None:
    server = await start_server(apps=[make_app(require_tls=True)])
    frame = await first_frame(server.ws_url(), headers={"X-Forwarded-Proto": "https"})
    assert frame["event"] == "pusher:error"
