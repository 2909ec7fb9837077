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


def pytest_collection_modifyitems(config, items):
    """``cuda``-marked tests need a CUDA GPU: elsewhere they are skipped, saying so (CI is CPU-only;
    ``python benchmarks/gpu_check.py`` runs them on one GPU)."""
    import os

    import torch

    if torch.cuda.is_available() or os.environ.get("MIRASLAB_CUDA_TESTS_ON") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run python benchmarks/gpu_check.py on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
