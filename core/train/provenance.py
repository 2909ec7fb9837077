"""Which distribution (and version) supplied each component a run uses.

RUN/provenance.json, written when the run is created::

    {"miraslab": "0.1.0", "plugin_api": "1.0",
     "components": [{"kind": "retention", "name": "acme_forget", "plugin": "acme_forget",
                     "distribution": "acme-forget", "version": "1.2.3"}, ...]}

Loading the run back (``--resume``, ``generate``, ``eval``, ``load_run``, ``export``, and
``from_pretrained`` of an export, whose config carries it) checks it against the registry first: a component nobody registers any more is an error saying which package
to install, and one supplied by another version than the run's is a warning naming both.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ..bounded_read import MAX_JSON_BYTES, read_bounded_text
from ..errors import MiraslabError, ProvenanceWarning
from ..params import Component
from ..plugin_api import PLUGIN_API_VERSION
from ..registry import Registry, get_registry

PROVENANCE_FILE = "provenance.json"


def components_used(recipe: Any) -> list[tuple[str, str]]:
    """Every ``(kind, name)`` in the recipe and in its stages' overrides, in first-seen order."""
    found = dict.fromkeys(_walk(recipe))
    for stage in getattr(getattr(recipe, "train", None), "stages", ()):
        # only a string or a table can name a component; numeric overrides cannot change one
        if any(isinstance(value, (str, dict)) for value in stage.overrides.values()):
            from ..recipe.resolve import with_overrides

            found.update(dict.fromkeys(_walk(with_overrides(recipe, stage.overrides))))
    return list(found)


def _walk(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Component):
        yield (value.kind, value.name)
        yield from _walk(value.params)  # e.g. omega's inner bias
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _walk(getattr(value, field.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def provenance(recipe: Any, registry: Registry | None = None) -> dict[str, Any]:
    from .. import __version__

    registry = registry or get_registry()
    components = []
    for kind, name in components_used(recipe):
        source = registry.provider(kind, name)
        if source is not None:
            components.append(
                {
                    "kind": kind,
                    "name": name,
                    "plugin": source.plugin,
                    "distribution": source.distribution,
                    "version": source.version,
                }
            )
    return {"miraslab": __version__, "plugin_api": PLUGIN_API_VERSION, "components": components}


def write_provenance(run: Path, recipe: Any) -> None:
    (Path(run) / PROVENANCE_FILE).write_text(json.dumps(provenance(recipe), indent=2) + "\n")


def read_provenance(run: Path) -> dict[str, Any] | None:
    """The run's recorded provenance; None for a run written before provenance existed."""
    path = Path(run) / PROVENANCE_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(read_bounded_text(path, MAX_JSON_BYTES, "provenance.json"))
        _entries(recorded)
    except (ValueError, KeyError, TypeError) as exc:
        raise MiraslabError(
            f"{path}: not the provenance miraslab writes ({type(exc).__name__}: {exc}); "
            "repair it, or remove it to skip the check"
        ) from None
    return recorded


def _entries(recorded: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(e["kind"], e["name"], e["distribution"], e.get("version", "")) for e in recorded["components"]]


def check_provenance(run: Path, registry: Registry | None = None) -> None:
    """Raise naming the packages to install for components nobody registers; warn on other versions.

    A run written before provenance was recorded has no file, and is not checked.
    """
    recorded = read_provenance(run)
    if recorded is not None:
        check_recorded(recorded, str(run), registry)


def check_recorded(recorded: dict[str, Any], where: str, registry: Registry | None = None) -> None:
    """:func:`check_provenance` of a provenance already read (an export carries it in its config)."""
    registry = registry or get_registry()
    missing: dict[tuple[str, str], list[str]] = {}
    other_version: dict[tuple[str, str, str], list[str]] = {}
    for kind, name, distribution, version in _entries(recorded):
        source = registry.provider(kind, name)
        if source is None:
            missing.setdefault((distribution, version), []).append(f"{kind} {name!r}")
        elif _same(source.distribution, distribution) and source.version != version:
            other_version.setdefault((distribution, version, source.version), []).append(f"{kind} {name!r}")
        elif not _same(source.distribution, distribution):
            warnings.warn(
                f"{where}: {kind} {name!r} was supplied by {distribution} {version} when the run was "
                f"trained; here it comes from {source.distribution} {source.version}",
                ProvenanceWarning,
                stacklevel=2,
            )
    for (distribution, was, now), used in other_version.items():
        warnings.warn(
            f"{where}: trained with {distribution} {was}, but {distribution} {now} is installed "
            f"(it supplies {', '.join(used)}); results may differ: pip install '{distribution}=={was}'",
            ProvenanceWarning,
            stacklevel=2,
        )
    if missing:
        raise MiraslabError(
            "\n".join(_missing_line(where, registry, d, v, used) for (d, v), used in missing.items())
        )


def _missing_line(where: str, registry: Registry, distribution: str, version: str, used: list[str]) -> str:
    pin = f"{distribution}=={version}" if version else distribution
    what = f"{where}: the run uses {', '.join(used)} from {distribution} {version}".rstrip()
    broken = [b for b in registry.broken if _same(b.source.distribution, distribution)]
    if broken:
        return f"{what}, which is installed but failed to load: {broken[0].error}"
    installed = [s for s in registry.sources if _same(s.distribution, distribution)]
    if installed:
        return f"{what}; {distribution} {installed[0].version} is installed but no longer supplies it: pip install '{pin}'"
    return f"{what}, which is not installed: pip install '{pin}'"


def _same(a: str, b: str) -> bool:
    return a.lower().replace("_", "-") == b.lower().replace("_", "-")
