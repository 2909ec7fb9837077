"""One entry point for any registered component: the checks that fit its kind."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..registry import KINDS, Registry, get_registry
from .memory_axes import AxisReport, check_axis, check_features
from .model_checks import check_attention_backend, check_layout, check_mixer
from .monitor_checks import check_monitor
from .task_checks import check_task


def check_component(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    out_dir: Path | None = None,
) -> AxisReport | str | None:
    """Run the kit on component ``name`` of ``kind`` at ``options``; raises ``KitFailure``.

    Returns, for a memory, bias, retention or algorithm, the ``AxisReport`` of what it ran (the
    rules and options, and whether the component's own reference was checked or it is
    "consistency only"); for the other kinds None, or a string saying why nothing could be
    checked here (an attention backend that cannot run on this machine says so itself; a
    monitor whose optional package is missing).
    """
    registry = registry or get_registry()
    registry.get(kind, name)  # an unknown name is the registry's one-line error
    if kind in ("memory", "bias", "retention", "algorithm"):
        return check_axis(kind, name, options, registry)
    elif kind == "features":
        check_features(name, options, registry)
    elif kind == "layout":
        check_layout(name, options, registry)
    elif kind == "attention":
        return check_attention_backend(name, options, registry)
    elif kind == "mixer":
        check_mixer(name, options, registry)
    elif kind == "task":
        check_task(name, options, registry)
    elif kind == "monitor":
        if out_dir is None:
            with tempfile.TemporaryDirectory() as scratch:
                return check_monitor(name, Path(scratch), options, registry)
        return check_monitor(name, out_dir, options, registry)
    else:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
    return None


def registered(
    kinds: tuple[str, ...] = KINDS, distribution: str | None = None, registry: Registry | None = None
):
    """``(kind, name)`` of every registered component of ``kinds``, optionally only those one
    distribution supplied: what a plugin's own test suite parametrises over."""
    registry = registry or get_registry()
    return [
        (info.kind, info.name)
        for kind in kinds
        for info in registry.components(kind)
        if distribution is None or _normalise(info.source.distribution) == _normalise(distribution)
    ]


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")
