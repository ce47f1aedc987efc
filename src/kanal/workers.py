"""Worker processes: ``kanal serve --workers N``, and telling whether an ASGI server runs
several.

Ownership rule: the parent process owns only its children's pids. It forks N workers (each
a full cluster member with its own node id, so N > 1 needs the Redis adapter, which config
validation enforces), forwards the first SIGINT/SIGTERM to them (each drains, kanal.drain)
and every SIGHUP (each reloads its apps, kanal.reload),
restarts a worker that dies unexpectedly, and exits when all have stopped after a stop
signal. A second stop signal kills the workers (SIGKILL) and ends the parent with status
128 + the signal's number: the workers ignore every signal after their first, since they may
get each one twice.

An embedded kanal cannot refuse the memory adapter that way: the ASGI server (uvicorn,
gunicorn, hypercorn, granian) starts the worker processes, not kanal. :func:`several_workers`
reads what can be read from inside one of them, so that ``kanal.asgi`` can warn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from types import FrameType

__all__ = ["several_workers", "supervise"]

log = logging.getLogger("kanal.workers")

RESTART_DELAY = 1.0


def _spawn(worker: Callable[[int], None], index: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: default signal handling, then run the node and never return
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Until the node's loop takes SIGHUP over (kanal.reload), one must not end the worker
        # (the default action); one that arrives in that moment is missed by this worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        code = 0
        try:
            worker(index)
        except BaseException:
            log.exception("worker %d crashed", index)
            code = 1
        finally:
            os._exit(code)
    log.info("started worker %d (pid %d)", index, pid)
    return pid


def supervise(
    workers: int, worker: Callable[[int], None], on_hangup: Callable[[], None] = lambda: None
) -> int:
    """Run ``worker(index)`` in ``workers`` forked processes until a stop signal; on SIGHUP,
    call ``on_hangup`` and send SIGHUP to every worker."""
    children: dict[int, int] = {}
    stopping = False
    killed_by = 0  # the second stop signal, once it came

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping, killed_by
        if stopping:
            killed_by = signum
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if killed_by else signum)

    def hangup(signum: int, frame: FrameType | None) -> None:
        on_hangup()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, hangup)
    for index in range(workers):
        children[_spawn(worker, index)] = index
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, -1)
        exit_code = os.waitstatus_to_exitcode(code)
        if not stopping and index >= 0:
            log.error("worker %d (pid %d) exited with %d; restarting", index, pid, exit_code)
            time.sleep(RESTART_DELAY)  # avoid a hot crash loop; the parent does nothing else
            children[_spawn(worker, index)] = index
        elif exit_code != 0:
            status = exit_code
    if killed_by:
        # The shell's code for "ended by that signal"; returning (rather than dying by it)
        # lets the caller still remove the pid file and the workers' metrics sockets.
        return 128 + killed_by
    return status


# The ASGI servers that start worker processes, and their flags for how many.
_WORKER_FLAGS = {
    "uvicorn": ("--workers",),
    "gunicorn": ("--workers", "-w"),
    "hypercorn": ("--workers", "-w"),
    "granian": ("--workers",),
}


def _count(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError:
        return 0


def _server(program: str) -> str | None:
    """``uvicorn`` for ``/venv/bin/uvicorn`` and for ``.../uvicorn/__main__.py`` (``-m``)."""
    path = PurePath(program)
    name = path.parent.name if path.name == "__main__.py" else path.stem
    return name if name in _WORKER_FLAGS else None


def _flag_value(args: Sequence[str], flags: Sequence[str]) -> int:
    """The last ``--workers N`` / ``--workers=N`` / ``-w N`` / ``-wN`` in ``args``, else 0."""
    found = 0
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in flags:
            found = _count(value if equals else (args[i + 1] if i + 1 < len(args) else ""))
        elif "-w" in flags and arg.startswith("-w") and arg[2:].isdigit():
            found = int(arg[2:])
    return found


def several_workers(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Why this process looks like one of several workers of an ASGI server, or ``None``.

    Evidence, in order: ``WEB_CONCURRENCY`` above 1 (uvicorn and gunicorn take their worker
    count from it); the worker flag of the server's command line. ``argv`` is the worker's
    ``sys.argv``: a forked worker (gunicorn) inherits the server's, and a spawned one
    (uvicorn) is given it by :mod:`multiprocessing`. A count set only in a gunicorn config
    file, or workers started by a process manager, cannot be seen.
    """
    concurrency = environ.get("WEB_CONCURRENCY")
    if _count(concurrency) > 1:
        return f"WEB_CONCURRENCY={concurrency}"
    server = _server(argv[0]) if argv else None
    if server is None:
        return None
    args = list(argv[1:])
    if server == "gunicorn":
        args += shlex.split(environ.get("GUNICORN_CMD_ARGS", ""))
    workers = _flag_value(args, _WORKER_FLAGS[server])
    return f"{server} --workers {workers}" if workers > 1 else None
