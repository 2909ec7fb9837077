"""docs/memory.md's map names files and functions that exist, so it cannot drift from the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = (
    (ROOT / "docs" / "memory.md")
    .read_text()
    .split("## Map: where each equation lives", 1)[1]
    .split("\n## ", 1)[0]
)


def _defined(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef))
    return names


def _rows() -> list[tuple[list[Path], list[str]]]:
    rows = []
    for line in MAP.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        files = [Path(f) for f in re.findall(r"`([\w/]+\.py)`", cells[1] + " " + cells[2])]
        paths = [ROOT / "core" / "memory" / f if f.parts[0] != "plugins" else ROOT / f for f in files]
        rows.append((paths, re.findall(r"`([A-Za-z_][\w.]*)`", cells[2])))
    return rows


def test_the_map_has_its_rows():
    assert len(_rows()) >= 10


def test_every_file_and_function_in_the_map_exists():
    for paths, names in _rows():
        for path in paths:
            assert path.is_file(), (
                f"docs/memory.md's map names {path.relative_to(ROOT)}, which does not exist"
            )
        defined = set().union(*(_defined(p) for p in paths))
        for name in names:
            if name.endswith(".py"):
                continue
            assert name in defined, (
                f"docs/memory.md's map names {name}, not defined in {[str(p) for p in paths]}"
            )


def test_the_call_flow_names_files_that_exist():
    flow = MAP.split("```", 2)[1]
    for name in re.findall(r"([\w/]+\.py)", flow):
        assert (ROOT / "core" / "memory" / name).is_file() or (
            ROOT / "core" / "memory" / "kernels" / name
        ).is_file(), name
