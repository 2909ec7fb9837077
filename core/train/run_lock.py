"""One process trains in a run directory at a time: an OS file lock on ``RUN/.lock``.

The lock is ``flock`` on an open file, so the kernel releases it when the holder exits,
however it exits (a SIGKILL leaves no stale lock to clean up). The file holds the holder's
pid and host, for the message a second process gets. Where ``fcntl`` is missing (Windows)
there is no lock: training works as before, unguarded.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import MiraslabError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


class RunLockedError(MiraslabError):
    """Another process holds the run directory's lock."""


class RunLock:
    """Held from ``acquire`` until ``release`` (or the process ends)."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        run_dir = Path(run_dir)
        make_run_dir(run_dir)
        path = run_dir / LOCK_FILE
        if fcntl is None:
            return cls(path, None)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{run_dir}: another process ({holder}) is training in this run directory; "
                "wait for it to end, or stop it, before training here"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (a file there, a full disk)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MiraslabError(
            f"{run_dir}: is a file (or lies under one), not a run directory; choose another --out"
        ) from None
    except OSError as exc:
        raise MiraslabError(f"{run_dir}: cannot create the run directory: {exc.strerror or exc}") from None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def lock_holder(run_dir: Path, wait: bool = False) -> str | None:
    """Who holds ``run_dir``'s lock (``pid N on HOST``), or None when no live process does.

    ``wait``: block until the holder ends, then return None.  The probe takes and drops a
    shared lock, never creating the file, so it cannot disturb a run.
    """
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            if not wait:
                return _read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)  # the kernel wakes us when the trainer exits
        return None
    finally:
        os.close(fd)  # drops the shared lock
