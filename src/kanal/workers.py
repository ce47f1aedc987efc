"""``kanal serve --workers N``: N processes sharing one port through SO_REUSEPORT.

Ownership rule: the parent process owns only its children's pids. It forks N workers (each
a full cluster member with its own node id, so N > 1 needs the Redis adapter, which config
validation enforces), forwards SIGINT/SIGTERM to them, restarts a worker that dies
unexpectedly, and exits when all have stopped after a stop signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["supervise"]

log = logging.getLogger("kanal.workers")

RESTART_DELAY = 1.0


def _spawn(worker: Callable[[int], None], index: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: default signal handling, then run the node and never return
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
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


def supervise(workers: int, worker: Callable[[int], None]) -> int:
    """Run ``worker(index)`` in ``workers`` forked processes until a stop signal."""
    children: dict[int, int] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
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
    return status
