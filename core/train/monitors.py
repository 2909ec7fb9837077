"""The monitors a run registers: those its recipe names, then the built-in ones every run has.

``memory_use`` (the carry gain at every evaluation, and its floor) is on unless
``train.memory_use = false``, with the ``train.memory_use_*`` keys as its options, so a
recipe need not name it; a recipe that names it in ``[[monitors]]`` gets its own.  Monitors
are reached through the registry like any plugin, built before the run directory is written
(a missing package is one line), and registered on the plugin manager for the run only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..components import build_component
from ..params import Component, make_component
from ..recipe.schema import Recipe
from ..registry import Registry, get_registry
from .spec import TrainSpec


def standing_monitors(train: TrainSpec, registry: Registry) -> list[Component]:
    """The built-in monitors a recipe's ``[train]`` keys switch on and configure."""
    if not train.memory_use:
        return []
    options = {
        "min_share": train.memory_use_min_share,
        "patience": train.memory_use_patience,
        "action": train.memory_use_action,
    }
    return [make_component("monitor", "memory_use", options, registry)]


def build_monitors(recipe: Recipe) -> list[tuple[str, Any]]:
    """(name, monitor) of every monitor the run registers, built."""
    named = list(recipe.monitors)
    standing = [
        component
        for component in standing_monitors(recipe.train, get_registry())
        if component.name not in {monitor.name for monitor in named}
    ]
    return [(component.name, build_component(component)) for component in (*named, *standing)]


@contextlib.contextmanager
def registered(registry: Registry, built: list[tuple[str, Any]]) -> Iterator[None]:
    """The monitors registered for the block (their end hook included), unregistered after."""
    names = []
    try:
        for index, (component, monitor) in enumerate(built):
            name = f"monitor-{index}-{component}"
            registry.pm.register(monitor, name=name)
            names.append(name)
        yield
    finally:
        for name in names:
            registry.pm.unregister(name=name)
