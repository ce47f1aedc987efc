"""What ``kanal serve`` does to its own process besides serving: the open-files limit, and the
pid file (``[server] pid_file``, ``--pid-file``), which ``kanal reload`` reads to signal it.

Ownership rule: this module owns the pid file. It is claimed before anything starts (refused
when it names a kanal that still runs), written once the node listens (with ``--workers``, by
the supervising parent once the addresses are checked: that is the process to signal), and
removed when the process that wrote it exits through Python (a clean stop, or an error;
SIGKILL leaves it, and the next start replaces it).
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path
from types import TracebackType

__all__ = ["FEW_OPEN_FILES", "PidFile", "PidFileError", "raise_open_files_limit", "signal_pid_file"]

log = logging.getLogger("kanal")

#: Below this many open files per process, say so at start-up: every connection is one.
FEW_OPEN_FILES = 65536


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each connection holds
    one file descriptor; the soft limit is often 1024) and return the limit in force. Says at
    start-up when the hard limit itself is low, since root may raise it but kanal cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %s to %s: %s", soft, hard, exc)
        else:
            log.info("open-files limit raised from %s to %s", soft, hard)
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < FEW_OPEN_FILES:
        log.warning(
            "at most %s open files per process: about that many connections per node "
            "(raise the hard limit: ulimit -Hn, systemd LimitNOFILE; docs/deployment.md)",
            soft,
        )
    return soft


class PidFileError(Exception):
    """The pid file names a running kanal, or cannot be written; one line for the operator."""


def _running_kanal(pid: int) -> bool:
    """Whether ``pid`` is a live process that may be another kanal. Not this process: in a
    container kanal is pid 1 (or another small number) at every start, so a file left by the
    previous run on a volume holds this very pid. A live process whose command line (Linux
    /proc) does not mention kanal is a reused pid, not a kanal: its file is stale too."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell: assume the worst, the operator can delete the file
    return b"kanal" in command


class PidFile:
    """``with PidFile(path) as pid_file: ... pid_file.write()``; no-op for an empty path."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._stale: str | None = None
        self._written = False

    def __enter__(self) -> PidFile:
        """Claim the path: refuse it when it names a running kanal.

        Raises:
            PidFileError: it does, or the file cannot be read.
        """
        if self.path is None:
            return self
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            return self
        except OSError as exc:
            raise PidFileError(f"cannot read the pid file {self.path}: {exc.strerror}") from None
        if text.isdigit() and _running_kanal(int(text)):
            raise PidFileError(
                f"the pid file {self.path} names a running kanal (pid {text}); stop it first, "
                "or delete the file if that process is not kanal"
            )
        self._stale = text
        return self

    def write(self) -> None:
        """Write this process's id (once the node listens), replacing a stale file.

        Raises:
            PidFileError: the file cannot be written.
        """
        if self.path is None:
            return
        if self._stale is not None:
            log.info("replacing the stale pid file %s (it named %r)", self.path, self._stale)
        # Written beside the target and renamed over it, so that a reader never sees a
        # half-written pid.
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            partial.write_text(f"{os.getpid()}\n", encoding="ascii")
            partial.replace(self.path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PidFileError(f"cannot write the pid file {self.path}: {exc.strerror}") from None
        self._written = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the file if it still names this process (not a file another kanal wrote
        since, nor a stale one that this process never replaced)."""
        if self.path is None or not self._written:
            return
        try:
            if self.path.read_text(encoding="ascii", errors="replace").strip() == str(os.getpid()):
                self.path.unlink()
        except OSError as exc:
            log.warning("could not remove the pid file %s: %s", self.path, exc.strerror)


def signal_pid_file(path: str, signum: int) -> int:
    """Send ``signum`` to the kanal named by the pid file at ``path``; returns its pid.

    Raises:
        PidFileError: no such file, no pid in it, or a pid that is not a running kanal.
    """
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise PidFileError(
            f"no pid file at {path}: is kanal serve running with --pid-file {path}?"
        ) from None
    except OSError as exc:
        raise PidFileError(f"cannot read the pid file {path}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f"the pid file {path} holds no process id ({text[:20]!r})")
    pid = int(text)
    if pid == os.getpid() or not _running_kanal(pid):
        raise PidFileError(
            f"the pid file {path} names pid {pid}, which is not a running kanal (a stale file "
            "left by a kanal that was killed?)"
        )
    try:
        os.kill(pid, signum)
    except OSError as exc:
        raise PidFileError(f"cannot signal pid {pid} from {path}: {exc.strerror}") from None
    return pid
