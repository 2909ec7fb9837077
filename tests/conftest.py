"""Shared fixtures: a registry with an in-process test plugin, the repo root, recipe writers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from miraslab.registry import Registry, Source, get_registry

pytest_plugins = ["miraslab.testing.pytest_plugin"]  # the conformance kit, as a plugin author enables it

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry() -> Registry:
    """A fresh registry loaded from entry points, separate from the process-wide one."""
    fresh = Registry()
    fresh.load_entry_points()
    return fresh


@pytest.fixture
def register_plugin():
    """Register a plugin object on the process-wide registry for one test, then remove it."""
    added: list[str] = []

    def register(plugin: object, name: str = "test-plugin", distribution: str = "test-dist") -> Source:
        source = Source(name, distribution, "0.0")
        get_registry().register_plugin(plugin, source)
        added.append(name)
        return source

    yield register
    for name in added:
        get_registry().unregister_plugin(name)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """write_recipe("name.toml", text) -> path, with the text dedented."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write
