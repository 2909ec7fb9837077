"""Building a component named in a recipe (the only way core reaches plugin code)."""

from __future__ import annotations

from typing import Any

from .params import Component
from .registry import get_registry


def build_component(component: Component, **context: Any) -> Any:
    """Look ``component`` up by kind and name and call its factory with its params."""
    info = get_registry().get(component.kind, component.name)
    return info.build(component.params, **context)
