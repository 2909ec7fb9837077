"""The offline default corpus: the running Python's own standard-library ``.py`` sources.

Every machine that runs miraslab has them, so a recipe trains with no download and no
data preparation.  Each file is one document (and one shard).  Files are sorted by their
path inside the standard library, so the corpus is the same on every run; test suites,
installed packages and caches are left out (they are not the standard library's prose,
and site-packages differs between environments).
"""

from __future__ import annotations

import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .sources import DocumentSource

EXCLUDED_DIRECTORIES = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """The ``.py`` files of the standard library, sorted by their path relative to ``root``."""
    root = root or stdlib_root()
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(root):
        # pruned in place, so os.walk never descends into site-packages
        subdirectories[:] = [d for d in subdirectories if d not in EXCLUDED_DIRECTORIES]
        found.extend(Path(directory) / name for name in files if name.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


class StdlibCorpus(DocumentSource):
    """This Python's standard-library sources, one file per document."""

    def __init__(self, root: Path | None = None):
        self.root = root or stdlib_root()
        self.files = stdlib_sources(self.root)

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def documents(self, shard: int) -> Iterator[str]:
        yield self.files[shard].read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return f"the Python {platform.python_version()} standard library ({len(self.files)} files in {self.root})"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "corpus": "python-stdlib",
            "python": platform.python_version(),
            "root": str(self.root),
            "files": len(self.files),
        }
