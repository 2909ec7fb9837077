"""The miraslab cache: ``$MIRASLAB_CACHE``, default ``~/.cache/miraslab``.

Entries are directories named by a hash of everything that determines their content, so
a changed input is a new entry rather than a stale hit.  Several processes (torchrun) may
ask for the same entry at once: one builds it under a file lock while the others wait,
and the result is moved into place atomically, so a crash never leaves a half-written
entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock  # a dependency of `datasets` and `huggingface_hub`


def cache_root() -> Path:
    """``$MIRASLAB_CACHE``, or ``~/.cache/miraslab``."""
    configured = os.environ.get("MIRASLAB_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "miraslab"


def cache_key(material: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``material`` (key order does not matter)."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


def cached_entry(kind: str, material: Mapping[str, Any]) -> Path:
    """The directory of the entry for ``material`` under ``kind`` (it may not exist yet)."""
    return cache_root() / kind / cache_key(material)


def build_once(entry: Path, build: Callable[[Path], None], material: Mapping[str, Any]) -> bool:
    """Make ``entry`` exist, calling ``build(tmp_dir)`` only if no process made it before.

    Returns True when this call built it.  ``material`` is written beside the content as
    ``source.json`` so a person can see what an entry was made from.
    """
    if entry.is_dir():
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if entry.is_dir():  # another process built it while we waited
            return False
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", suffix=".tmp", dir=entry.parent))
        try:
            build(tmp)
            (tmp / "source.json").write_text(json.dumps(material, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True
