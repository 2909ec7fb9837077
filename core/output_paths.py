"""Where a command may write: a name is one path component, and every path lies under its root.

A matrix cell named ``".."`` would otherwise train into the parent of ``--out``, and one
named ``"."`` into the matrix root itself (where the report then finds a "trained" cell).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MiraslabError

MAX_NAME_BYTES = 255  # one path component on every common file system


def name_problem(name: str) -> str:
    """Why ``name`` cannot be one directory name, or "" when it can."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"{name!r} names a directory that already exists (this one or its parent)"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return f"{name!r} holds a path separator"
    if "\0" in name:
        return f"{name!r} holds a NUL character"
    if len(name.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
        return f"is longer than the {MAX_NAME_BYTES} bytes a directory name may have"
    return ""


def check_name(name: str, where: str) -> str:
    """``name`` if it is one path component (no ``.``, ``..``, separator or NUL); else one line."""
    if problem := name_problem(name):
        raise MiraslabError(f"{where}: {problem}; expected a name usable as one directory")
    return name


def path_under(root: Path, name: str, where: str) -> Path:
    """``root / name``, checked to lie inside ``root`` once symlinks are resolved."""
    check_name(name, where)
    target = Path(root) / name
    resolved_root = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(target))
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise MiraslabError(
            f"{where}: {target} resolves to {resolved}, outside {root}; remove the link or choose another --out"
        )
    return target
