"""The built-in plugins use miraslab only through its public face (``miraslab``, ``miraslab.api``).

Internal modules may move; a plugin that imports one breaks when they do.  The built-ins
are examples for third-party authors, so they are held to the rule a third party relies on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import miraslab
import miraslab.api

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PUBLIC_MODULES = ("miraslab", "miraslab.api")


def _public_module(module: str) -> bool:
    return module in PUBLIC_MODULES or module == "miraslab.plugins" or module.startswith("miraslab.plugins.")


def _public_attribute(name: str) -> bool:
    """``miraslab.<name>`` is public: a name ``miraslab`` exports, or a public module."""
    return name in miraslab.__all__ or name in ("api", "plugins")


def internal_uses(source: str) -> list[str]:
    """Every way ``source`` reaches a miraslab module other than the public face, as
    ``"line N: what"``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "miraslab" and not _public_module(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "miraslab":
                continue
            if not _public_module(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "miraslab":
                found += [
                    f"line {node.lineno}: from miraslab import {alias.name}"
                    for alias in node.names
                    if not _public_attribute(alias.name)
                ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "miraslab"
            and not _public_attribute(node.attr)
        ):
            found.append(f"line {node.lineno}: miraslab.{node.attr}")
    return found


@pytest.mark.parametrize(
    "path", sorted(PLUGINS.rglob("*.py")), ids=lambda p: str(p.relative_to(PLUGINS.parent))
)
def test_a_builtin_plugin_imports_only_the_public_face(path: Path) -> None:
    uses = internal_uses(path.read_text())
    assert not uses, (
        f"{path.relative_to(PLUGINS.parent)} reaches into miraslab's internals: {'; '.join(uses)}. "
        "Import the name from miraslab.api (add it there if a plugin needs it)."
    )


@pytest.mark.parametrize(
    "source",
    [
        "from miraslab.memory.rule.axes import Retention",
        "import miraslab.model.attention",
        "from miraslab import memory",
        "import miraslab\nraise miraslab.params.ParamValueError('x')",
    ],
)
def test_the_check_catches_each_way_of_reaching_an_internal_module(source: str) -> None:
    assert internal_uses(source)


def test_the_check_lets_the_public_face_and_sibling_plugins_through() -> None:
    source = (
        "import miraslab\nfrom miraslab import param\nfrom miraslab.api import Retention\n"
        "from miraslab.plugins.task._mad_common import MadTask\nfrom . import _mad_common\n"
        "miraslab.hookimpl\nmiraslab.api.GateDef\n"
    )
    assert internal_uses(source) == []


def test_every_name_of_the_api_resolves() -> None:
    missing = [name for name in miraslab.api.__all__ if not hasattr(miraslab.api, name)]
    assert not missing


def test_the_top_level_spellings_are_the_api_objects() -> None:
    """``miraslab.Retention`` and ``miraslab.api.Retention`` are one class, not a copy."""
    for name in miraslab._API:
        assert name in miraslab.api.__all__, name
        assert getattr(miraslab, name) is getattr(miraslab.api, name), name


ENGINE_FLAGS = ("record", "keep_graph")


def flag_writes(source: str) -> list[str]:
    """Assignments to the engine's observation flags (``x.record = ...``), as ``"line N: what"``:
    plugins switch observation on through ``miraslab.api.observe`` instead."""
    return [
        f"line {node.lineno}: .{target.attr} = ..."
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign | ast.AugAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and target.attr in ENGINE_FLAGS
    ]


@pytest.mark.parametrize(
    "path", sorted(PLUGINS.rglob("*.py")), ids=lambda p: str(p.relative_to(PLUGINS.parent))
)
def test_a_builtin_plugin_observes_through_the_api_not_engine_flags(path: Path) -> None:
    assert flag_writes(path.read_text()) == [], f"{path}: use miraslab.api.observe"


def test_the_flag_check_catches_a_flag_write() -> None:
    assert flag_writes("gate.keep_graph = True\nfor m in ms:\n    m.record = True\n") == [
        "line 1: .keep_graph = ...",
        "line 3: .record = ...",
    ]
