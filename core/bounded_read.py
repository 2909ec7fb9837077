"""Reading a small file the user handed us: a regular file, of a bounded size, or one line why not.

A recipe's ``extends`` (or any path the CLI reads) may name ``/dev/zero``, a FIFO or a 100 GB
file; ``Path.read_text`` would then eat memory without end or block forever. Every such read
goes through :func:`read_bounded_bytes`: the path is checked with ``stat`` before it is opened
(opening a FIFO blocks), opened without blocking, checked again on the open descriptor (the
path may have been swapped in between), and read no further than the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import MiraslabError

# documented in docs/recipes.md: far beyond any hand-written recipe or matrix (the largest
# shipped is a few KB); a generated one past this is refused rather than parsed for minutes
MAX_TOML_BYTES = 16 << 20
MAX_JSON_BYTES = 64 << 20  # a run's tokenizer.json, config.json, provenance.json
MAX_POINTER_BYTES = 4096  # checkpoints/latest holds one directory name


class FileRefused(MiraslabError):
    """A file that is not a regular file, too large, or unreadable; the message names it."""


def read_bounded_bytes(path: Path | str, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused in one line unless it is a regular file of at most ``limit`` bytes."""
    path = Path(path)
    check_regular_file(path, limit, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise FileRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        _check(path, os.fstat(fd), limit, what)  # the path may have been replaced since the stat
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise FileRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew while we read it
        raise FileRefused(_too_large(path, len(data), limit, what))
    return data


def read_bounded_text(path: Path | str, limit: int, what: str = "file") -> str:
    """The UTF-8 text of ``path``, bounded as :func:`read_bounded_bytes`; bad UTF-8 is one line too."""
    data = read_bounded_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(f"{path}: is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None


def check_regular_file(path: Path | str, limit: int, what: str = "file") -> None:
    """Refuse ``path`` unless it is a regular file of at most ``limit`` bytes (for a library to read)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such {what}") from None
    except OSError as exc:
        raise FileRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    _check(path, info, limit, what)


def _check(path: Path, info: os.stat_result, limit: int, what: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise FileRefused(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"{path}: is not a regular file (a device, FIFO or socket), expected a {what}")
    if info.st_size > limit:
        raise FileRefused(_too_large(path, info.st_size, limit, what))


def _too_large(path: Path, size: int, limit: int, what: str) -> str:
    return (
        f"{path}: {size:,} bytes, more than the {limit:,} a {what} may have; "
        "is this the file you meant? (docs/recipes.md lists the limits)"
    )
