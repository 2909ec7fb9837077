"""Reading recipe files: TOML, ``extends`` chains, merging, and ``--set`` overrides.

The result is a plain nested dict plus the origin (file or ``--set``) of every key, so
that an error found later can name the file the mistake is in.

Merging rules: tables merge key by key, the later file wins, lists replace.  A component
may be a bare string (``retention = "decay"``) or a table with ``name``; a table laid over
a string keeps that name, and a table naming a *different* component replaces the old one
instead of inheriting its (now meaningless) options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..bounded_read import MAX_TOML_BYTES, FileRefused, read_bounded_text
from ..errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SET_ORIGIN = "--set"
Origins = dict[tuple[str, ...], str]


def display_path(path: Path | str) -> str:
    """A path as short as we can say it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def read_toml(path: Path) -> dict[str, Any]:
    shown = display_path(path)
    if not path.exists():
        raise RecipeError([f"{shown}: no such recipe file"])
    if path.is_dir():
        raise RecipeError([f"{shown}: is a directory, expected a .toml recipe file"])
    try:  # a regular file of bounded size: `extends = "/dev/zero"` or a FIFO is one line, not a hang
        text = read_bounded_text(path, MAX_TOML_BYTES, ".toml recipe file")
    except FileRefused as exc:
        raise RecipeError([str(exc).replace(str(path), shown, 1)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"{shown}: invalid TOML: {exc}"]) from None
    except RecursionError:  # tomllib parses nested inline tables recursively
        raise RecipeError([f"{shown}: tables are nested too deeply (more than {MAX_DEPTH} levels)"]) from None
    if (deep := _too_deep(data)) is not None:
        raise RecipeError(
            [f"{shown}: {'.'.join(deep[:4])}...: tables are nested too deeply (more than {MAX_DEPTH} levels)"]
        )
    return data


# no recipe needs more than a handful of levels; merging and structuring recurse per level
MAX_DEPTH = 32


def _too_deep(data: dict[str, Any]) -> tuple[str, ...] | None:
    """The key path of a table nested deeper than MAX_DEPTH, found without recursing."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend(((*path, str(key)), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, f"[{index}]"), item) for index, item in enumerate(value))
    return None


def load_layers(path: Path, _chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The file and every file it extends, base first."""
    path = path.resolve() if path.exists() else path
    if path in _chain:
        cycle = " -> ".join(display_path(p) for p in (*_chain, path))
        raise RecipeError([f"{display_path(_chain[0])}: extends cycle: {cycle}"])
    data = read_toml(path)
    base = data.pop("extends", None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str) or not base:
        raise RecipeError([f"{display_path(path)}: extends: expected a relative path string, got {base!r}"])
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.exists():
        raise RecipeError(
            [f"{display_path(path)}: extends: no such file {base!r} (looked for {display_path(base_path)})"]
        )
    return [*load_layers(base_path, (*_chain, path)), (path, data)]


def merge(
    base: dict[str, Any], top: Mapping[str, Any], origin: str, origins: Origins, prefix: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Lay ``top`` over ``base`` (in place) and record where each value came from."""
    for key, value in top.items():
        path = (*prefix, key)
        old = base.get(key)
        if isinstance(value, Mapping):
            if isinstance(old, str) and "name" not in value:
                old = {"name": old}
            if isinstance(old, dict) and not _names_differ(old, value):
                base[key] = merge(old, value, origin, origins, path)
                origins.setdefault(path, origin)
                continue
            _forget(origins, path, base.get(key))
            base[key] = merge({}, value, origin, origins, path)
            origins[path] = origin
        else:
            _forget(origins, path, old)
            base[key] = value
            origins[path] = origin
    return base


def _names_differ(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "name" in old and "name" in new and old["name"] != new["name"]


def _forget(origins: Origins, path: tuple[str, ...], old: Any) -> None:
    """Drop the origins of ``path`` and of everything the replaced value ``old`` held.

    Walks ``old`` rather than every recorded origin: loading stays linear in the recipe's size
    (a scan per key made 40k keys take two minutes).  Origins are only recorded for keys that
    exist, so the keys under ``old`` are all there is to forget.
    """
    stack = [(path, old)]
    while stack:
        at, value = stack.pop()
        origins.pop(at, None)
        if isinstance(value, Mapping):
            stack.extend(((*at, key), item) for key, item in value.items())


def parse_set(assignment: str) -> tuple[tuple[str, ...], Any]:
    """``model.d_model=256`` -> (("model", "d_model"), 256); the value is TOML.

    A bare word that is not valid TOML is taken as a string, because the shell has
    already removed the quotes from ``--set model.memory.bias.name="omega"``.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError([f"--set {assignment}: expected dotted.key=value, e.g. --set train.lr=3e-4"])
    parts = tuple(part.strip() for part in key.split("."))
    if any(not part for part in parts):
        raise RecipeError([f"--set {assignment}: the key {key!r} has an empty part"])
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        if raw and not any(ch in raw for ch in "[]{}\"'=,"):
            value = raw
        else:
            raise RecipeError(
                [
                    f"--set {assignment}: the value {raw!r} is not valid TOML "
                    "(strings containing brackets or commas need quotes)"
                ]
            ) from None
    return parts, value


def apply_set(
    data: dict[str, Any],
    path: tuple[str, ...],
    value: Any,
    origin: str,
    origins: Origins,
    shown: str | None = None,
) -> None:
    """Set ``path`` to ``value`` inside ``data``, creating tables on the way."""
    shown = shown or f"--set {'.'.join(path)}"
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str):  # a component given by name gains options
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise RecipeError([f"{shown}: {where} is {_kind_of(child)}, not a table"])
        node = child
    last = path[-1]
    if last == "name" and node.get("name") not in (None, value):
        # a different component: its old options no longer apply
        _forget(origins, path[:-1], node)
        node.clear()
    merge(node, {last: value}, origin, origins, path[:-1])


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def load_raw(path: str | Path, sets: Iterable[str] = ()) -> tuple[dict[str, Any], Origins]:
    """The merged recipe dict (``extends`` resolved, ``--set`` applied) and key origins."""
    data: dict[str, Any] = {}
    origins: Origins = {}
    for file, layer in load_layers(Path(path)):
        merge(data, layer, display_path(file), origins)
    for assignment in sets:
        keys, value = parse_set(assignment)
        apply_set(data, keys, value, SET_ORIGIN, origins, shown=f"--set {assignment}")
    return data, origins


def origin_of(path: tuple[str, ...], origins: Origins, default: str) -> str:
    """The file (or --set) that wrote ``path`` or its nearest ancestor."""
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return default
