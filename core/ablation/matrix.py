"""An ablation matrix: a base recipe, shared overrides, and axes that expand into cells.

::

    base = "../quickstart.toml"         # relative to this file
    seeds = 2                           # every cell twice, with seed = 0 and 1
    [set]                               # every cell: dotted keys, values as in --set
    "train.steps" = 200
    max_steps = 100                     # optional: stop each cell there (as --max-steps)
    [axes]                              # the product of these
    "model.memory.memory" = ["linear", "mlp"]
    "model.memory.algorithm" = { plain = "gd", momentum = { name = "momentum" } }  # named values
    [zip.chunk]                         # keys that vary together: one axis named "chunk"
    "model.memory.chunk_size" = [2, 8]
    "train.lr" = [3e-3, 1e-3]
    [[exclude]]                         # drop every cell that matches all of these
    "model.memory.memory" = "mlp"
    "model.memory.algorithm" = "momentum"
    [cells.titans]                      # a named cell besides the product
    "model.memory.memory" = "mlp"
    [launch]
    nproc = 1                           # processes per cell, under torchrun when > 1

A cell is a list of ``--set`` assignments over the base recipe, so running it by hand is
``miraslab train BASE --set ...`` and it validates exactly as that command would.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import MiraslabError
from ..limits import MAX_CELLS, check_count
from ..output_paths import name_problem
from ..recipe.loading import RecipeError, display_path, read_toml
from ..recipe.toml_writer import value_to_toml

TOP_KEYS = frozenset({"base", "name", "seeds", "set", "axes", "zip", "exclude", "cells", "launch"})
# what a path component of a cell id may hold; anything else becomes "-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@attrs.frozen
class Cell:
    id: str
    overrides: dict[str, Any]  # dotted key -> value, the [set] keys first
    seed_group: str  # the id without its seed: the cells a report averages over

    @property
    def sets(self) -> list[str]:
        """The overrides as ``--set`` assignments."""
        return [f"{key}={value_to_toml(value)}" for key, value in self.overrides.items()]


@attrs.frozen
class Matrix:
    path: Path
    name: str
    base: Path
    cells: list[Cell]
    max_steps: int | None = None
    nproc: int = 1

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        known = ", ".join(cell.id for cell in self.cells[:8]) + (" ..." if len(self.cells) > 8 else "")
        raise MiraslabError(f"{display_path(self.path)}: no cell {cell_id!r}; its cells are {known}")


@attrs.define
class _Axis:
    name: str  # the label in cell ids
    options: list[tuple[str, dict[str, Any]]]  # (value label, dotted key -> value)


def load_matrix(path: str | Path) -> Matrix:
    """Read and expand a matrix file; a malformed one is a one-line error naming file and key."""
    path = Path(path)
    shown = display_path(path)
    try:
        data = read_toml(path)
    except RecipeError as exc:
        raise MiraslabError(str(exc).replace("recipe file", "matrix file")) from None

    def fail(key: str, message: str) -> MiraslabError:
        return MiraslabError(f"{shown}: {key}: {message}")

    if unknown := sorted(set(data) - TOP_KEYS):
        raise fail(unknown[0], f"not a matrix key; a matrix has {', '.join(sorted(TOP_KEYS))}")
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise fail("base", "expected the path of the base recipe, relative to this file")
    base_path = Path(os.path.normpath(path.parent / base))
    if not base_path.is_file():
        raise fail("base", f"no such recipe file {display_path(base_path)}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or _UNSAFE.sub("-", name) != name or name_problem(name):
        raise fail("name", f"expected a name usable as a directory, got {name!r}")

    shared = _table(data, "set", fail)
    max_steps = shared.pop("max_steps", None)
    if max_steps is not None and (
        not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1
    ):
        raise fail("set.max_steps", f"expected an integer >= 1, got {max_steps!r}")
    launch = _table(data, "launch", fail)
    nproc = launch.pop("nproc", 1)
    if launch:
        raise fail(f"launch.{next(iter(launch))}", "not a launch key; [launch] has nproc")
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise fail("launch.nproc", f"expected an integer >= 1, got {nproc!r}")

    axes = [_axis(key, values, fail) for key, values in _table(data, "axes", fail).items()]
    axes += [_zip_axis(group, keys, fail) for group, keys in _table(data, "zip", fail).items()]
    _check_disjoint(axes, shared, fail)
    _short_names(axes)
    excludes = _excludes(data.get("exclude", []), fail)
    named = _table(data, "cells", fail)
    for cell_name, keys in named.items():
        if not isinstance(keys, Mapping):
            raise fail(f"cells.{cell_name}", "expected a table of dotted keys and values")
    seeds = _seeds(data.get("seeds"), fail)
    _check_cell_count(axes, named, seeds, fail)

    variants: list[tuple[str, dict[str, Any]]] = []
    if axes or not named:  # with only named cells the product is not a cell of its own
        for combination in itertools.product(*(axis.options for axis in axes)):
            overrides = {key: value for _, keys in combination for key, value in keys.items()}
            if any(_matches(overrides, rule) for rule in excludes):
                continue
            label = ",".join(
                f"{axis.name}={value}" for axis, (value, _) in zip(axes, combination, strict=True)
            )
            variants.append((label, overrides))
    variants += [(cell_name, dict(keys)) for cell_name, keys in named.items()]
    if not variants:
        raise fail("exclude", "excludes every cell of the matrix")

    cells = []
    for label, overrides in variants:
        for seed in seeds or [None]:
            parts = [label] if label else []
            extra = {}
            if seed is not None:
                parts.append(f"seed={seed}")
                extra["seed"] = seed
            cell_id = _UNSAFE.sub("-", ",".join(parts)) or "base"
            # a cell named "." or ".." would train outside its own directory
            if problem := name_problem(cell_id):
                raise fail(f'cells."{label}"', f"the cell id {problem}; name the cell as one directory")
            cells.append(Cell(cell_id, {**shared, **overrides, **extra}, _UNSAFE.sub("-", label) or "base"))
    ids: set[str] = set()  # a set, not a scan per cell: a 300 x 300 matrix is 90,000 cells
    for cell in cells:
        if cell.id in ids:
            raise fail("axes", f"two cells share the id {cell.id!r}; name the values ({{label = value}})")
        ids.add(cell.id)
    return Matrix(path, name, base_path, cells, max_steps, nproc)


def _table(data: Mapping[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise fail(key, f"expected a table, got {value!r}")
    return dict(value)


def _axis(key: str, values: Any, fail: Any) -> _Axis:
    where = f"axes.{key}"
    if isinstance(values, Mapping):  # named values: {label = value}
        options = [(str(label), {key: value}) for label, value in values.items()]
    elif isinstance(values, list):
        options = [(_label(value), {key: value}) for value in values]
    else:
        raise fail(where, f"expected a list of values or a table of named values, got {values!r}")
    if not options:
        raise fail(where, "has no values")
    return _Axis(key, options)


def _zip_axis(group: str, keys: Any, fail: Any) -> _Axis:
    where = f"zip.{group}"
    if not isinstance(keys, Mapping) or not keys:
        raise fail(where, "expected a table of dotted keys, each with a list of values")
    keys = dict(keys)
    labels = keys.pop("labels", None)
    lengths = {len(values) if isinstance(values, list) else -1 for values in keys.values()}
    if -1 in lengths or len(lengths) != 1 or 0 in lengths:
        raise fail(where, "expected lists of values of one length, one per key")
    (length,) = lengths
    if labels is None:  # the first key's values name the options
        labels = [_label(value) for value in next(iter(keys.values()))]
    if not isinstance(labels, list) or len(labels) != length:
        raise fail(f"{where}.labels", f"expected {length} labels, one per value")
    options = [(str(labels[i]), {key: values[i] for key, values in keys.items()}) for i in range(length)]
    return _Axis(group, options)


def _label(value: Any) -> str:
    """A value as a cell id shows it: a component table by its name."""
    if isinstance(value, Mapping):
        return str(value.get("name", "table"))
    if isinstance(value, list):
        return "-".join(_label(item) for item in value) or "empty"
    if isinstance(value, str):
        return value
    return value_to_toml(value)


def _check_disjoint(axes: list[_Axis], shared: Mapping[str, Any], fail: Any) -> None:
    seen: dict[str, str] = {}
    for axis in axes:
        for key in {key for _, keys in axis.options for key in keys}:
            if key in seen:
                raise fail(axis.name, f"{key} is varied by {seen[key]} too; vary a key in one place")
            if key in shared:
                raise fail(axis.name, f"{key} is also in [set]; a key is shared or varied, not both")
            seen[key] = axis.name


def _short_names(axes: list[_Axis]) -> None:
    """Axis labels as the shortest dotted suffix that tells them apart (``algorithm``)."""
    keyed = [axis for axis in axes if len(axis.options[0][1]) == 1 and axis.name in axis.options[0][1]]
    short = {}
    for axis in keyed:
        parts = axis.name.split(".")
        others = [other.name.split(".") for other in axes if other is not axis]
        for depth in range(1, len(parts) + 1):
            if all(other[-depth:] != parts[-depth:] for other in others):
                break
        short[axis.name] = ".".join(parts[-depth:])
    for axis in keyed:
        axis.name = short[axis.name]


def _excludes(rules: Any, fail: Any) -> list[dict[str, Any]]:
    if not isinstance(rules, list) or not all(isinstance(rule, Mapping) and rule for rule in rules):
        raise fail("exclude", "expected [[exclude]] tables of dotted keys and the values to leave out")
    return [dict(rule) for rule in rules]


def _matches(overrides: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    """A value matches its own label too: ``algorithm = "momentum"`` excludes a momentum table."""
    return all(
        key in overrides and (overrides[key] == value or _label(overrides[key]) == value)
        for key, value in rule.items()
    )


def _seeds(seeds: Any, fail: Any) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        try:  # bounded before the list is built: seeds = 1000000000 is a line, not 8 GB
            check_count(seeds, "seeds", maximum=MAX_CELLS, advice="a matrix holds at most that many cells")
        except MiraslabError as exc:
            raise fail("seeds", str(exc).removeprefix("seeds: ")) from None
        return list(range(seeds))
    if (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        return list(seeds)
    raise fail("seeds", f"expected a count >= 1 or a list of integer seeds, got {seeds!r}")


def _check_cell_count(axes: list[_Axis], named: Mapping[str, Any], seeds: list[int], fail: Any) -> None:
    """The matrix's size (before [[exclude]]) from its axes' lengths, before any cell is built."""
    product = math.prod(len(axis.options) for axis in axes)
    total = ((product if axes or not named else 0) + len(named)) * max(1, len(seeds))
    try:
        check_count(total, "cells", maximum=MAX_CELLS)
    except MiraslabError:
        raise fail(
            "axes",
            f"the matrix has {total:,} cells (before [[exclude]], seeds included), more than the limit "
            f"of {MAX_CELLS:,}; split it or vary fewer values",
        ) from None


def cell_problems(matrix: Matrix, cells: Iterable[Cell]) -> dict[str, list[str]]:
    """Each invalid cell's problems, as ``miraslab train BASE --set ...`` would report them."""
    from ..recipe.resolve import load_recipe

    problems = {}
    for cell in cells:
        try:
            load_recipe(matrix.base, cell.sets)
        except RecipeError as exc:
            problems[cell.id] = exc.problems
    return problems
