"""Several worker processes with the memory adapter cannot share events (issue 13, item 7):
kanal.workers.several_workers reads the evidence, and the embedded app warns at start-up.

The same warning from a real ``uvicorn --workers 2``, and none with the Redis adapter, are
tested in tests/test_cluster_embedded.py.
"""

from __future__ import annotations

import logging

import pytest

from kanal.asgi import create_app
from kanal.config import Config, ServerSettings
from kanal.workers import several_workers
from tests.conftest import make_app


@pytest.mark.parametrize(
    ("argv", "environ", "evidence"),
    [
        (["/venv/bin/uvicorn", "app:app", "--workers", "4"], {}, "uvicorn --workers 4"),
        (["/venv/lib/uvicorn/__main__.py", "app:app", "--workers=2"], {}, "uvicorn --workers 2"),
        (
            ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "3"],
            {},
            "gunicorn --workers 3",
        ),
        (["gunicorn", "-w4", "app:app"], {}, "gunicorn --workers 4"),
        (["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--workers 2"}, "gunicorn --workers 2"),
        (["hypercorn", "app:app", "-w", "2"], {}, "hypercorn --workers 2"),
        (["granian", "--interface", "asgi", "--workers", "2"], {}, "granian --workers 2"),
        (["python", "manage.py"], {"WEB_CONCURRENCY": "3"}, "WEB_CONCURRENCY=3"),
        (["uvicorn", "app:app", "--workers", "1"], {}, None),
        (["uvicorn", "app:app"], {"WEB_CONCURRENCY": "1"}, None),
        (["python", "worker.py", "--workers", "8"], {}, None),  # not an ASGI server
        ([], {}, None),
    ],
)
def test_several_workers_reads_the_servers_flags(
    argv: list[str], environ: dict[str, str], evidence: str | None
) -> None:
    assert several_workers(argv, environ) == evidence


async def test_the_embedded_app_warns_at_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    app = create_app(Config(ServerSettings(), (make_app(),)))
    with caplog.at_level(logging.WARNING, logger="kanal"):
        await app.startup()
        await app.shutdown()
    [record] = [r for r in caplog.records if "memory adapter" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "WEB_CONCURRENCY=2" in record.getMessage()
    assert "adapter = 'redis'" in record.getMessage()


async def test_no_warning_for_one_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    app = create_app(Config(ServerSettings(), (make_app(),)))
    with caplog.at_level(logging.WARNING, logger="kanal"):
        await app.startup()
        await app.shutdown()
    assert not [r for r in caplog.records if "memory adapter" in r.getMessage()]
