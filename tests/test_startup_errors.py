"""`kanal serve` that cannot start says why in one line and exits 1, without a traceback:
the port is taken, the address is not this machine's, a TLS file is missing or not PEM."""

from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 30  # a wrong behaviour here is a server that starts (and serves until killed)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket for the test's duration."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kanal", "serve", "--host", "127.0.0.1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kanal: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_port_in_use(taken_port: int) -> None:
    line = error_line(serve("--port", str(taken_port)))
    assert line == f"kanal: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"


def test_port_in_use_with_workers_fails_once_in_the_parent(taken_port: int) -> None:
    # The check runs before any worker (or Redis connection): the Redis URL is never used.
    redis = ("--adapter", "redis", "--redis-url", "redis://127.0.0.1:1/0")
    result = serve("--port", str(taken_port), "--workers", "2", *redis)
    assert "Address already in use" in error_line(result)
    assert "started worker" not in result.stderr


def test_address_that_is_not_local() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never assigned to this machine.
    command = [sys.executable, "-m", "kanal", "serve", "--host", "192.0.2.1", "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    line = error_line(result)
    assert line == "kanal: error: cannot listen on 192.0.2.1:0: Cannot assign requested address"


def test_missing_tls_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    args = ("--port", "0", "--tls-cert-file", str(missing), "--tls-key-file", str(missing))
    line = error_line(serve(*args))
    assert line == (
        f"kanal: error: cannot load the TLS certificate/key ({missing}, {missing}): "
        "No such file or directory"
    )


def test_tls_file_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    line = error_line(
        serve("--port", "0", "--tls-cert-file", str(junk), "--tls-key-file", str(junk))
    )
    assert line.startswith(f"kanal: error: cannot load the TLS certificate/key ({junk}, {junk}): ")


def test_the_default_credentials_warning_never_shows_a_secret_of_your_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kanal.config import App, Config, ServerSettings
    from kanal.server import _warn_default_credentials

    dev = App(id="1", key="app-key", secret="app-secret")
    own_secret = App(id="2", key="app-key", secret="s3cret-of-my-own")
    with caplog.at_level(logging.WARNING, "kanal"):
        _warn_default_credentials(Config(server=ServerSettings(), apps=(dev, own_secret)))
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "secret=app-secret" in warnings[0]  # the published one: nothing to hide
    assert "s3cret-of-my-own" not in warnings[1]
    assert "key=app-key" in warnings[1]


def test_serve_raises_its_open_files_limit_and_says_when_it_is_low(tmp_path: Path) -> None:
    """Started with a soft limit of 1024 under a hard limit: raised to the hard limit, and
    (the hard limit here being 20,000) a warning that it is low."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"needs a finite hard limit above 1024, this machine has {hard}")

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    command = [sys.executable, "-m", "kanal", "serve", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=lower_soft_limit
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        for line in process.stderr:  # up to the listening line: start-up is logged by then
            lines.append(line)
            if "kanal listening on " in line:
                break
        limits = Path(f"/proc/{process.pid}/limits").read_text()
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.stderr.close()
    (open_files,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    assert open_files.split()[3] == str(hard)  # the soft limit now equals the hard one
    if hard < 65536:
        assert any(f"at most {hard} open files per process" in line for line in lines), lines
