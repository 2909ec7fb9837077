"""``miraslab plugins``: every registered component, where it came from, and its params;
then the third-party plugins that failed to load, each with its error."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..params import params_doc
from ..recipe.toml_writer import value_to_toml
from ..registry import KINDS, get_registry


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("plugins", help="list every registered component")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--kind", choices=KINDS, help="only this kind of component")
    parser.set_defaults(run=run)


def describe_components(kind: str | None = None) -> list[dict[str, Any]]:
    out = []
    for info in get_registry().components(kind):
        out.append(
            {
                "kind": info.kind,
                "name": info.name,
                "source": info.source.distribution,
                "version": info.source.version,
                "plugin": info.source.plugin,
                "doc": info.doc,
                "params": params_doc(info.params),
            }
        )
    return out


def describe_broken() -> list[dict[str, Any]]:
    """The skipped plugins, as entries of the JSON list: no kind or name, an ``error``."""
    return [
        {
            "kind": None,
            "name": None,
            "source": broken.source.distribution,
            "version": broken.source.version,
            "plugin": broken.source.plugin,
            "doc": "",
            "params": [],
            "error": broken.error,
            "provides": [f"{kind} {name}" if kind else name for kind, name in broken.provides],
        }
        for broken in get_registry().broken
    ]


def run(args: argparse.Namespace) -> int:
    components = describe_components(args.kind)
    broken = describe_broken()
    if args.json:
        print(json.dumps(components + broken, indent=2, default=str))
        return 0
    kind = None
    for item in components:
        if item["kind"] != kind:
            if kind is not None:
                print()
            kind = item["kind"]
            print(kind)
        source = f"{item['source']} {item['version']}".strip()
        print(f"  {item['name']:<14} {source:<22} {item['doc']}")
        for p in item["params"]:
            default = "(required)" if p["required"] else _show(p["default"])
            doc = f"  # {p['doc']}" if p["doc"] else ""
            print(f"      {p['name']} = {default}  [{p['type']}]{doc}")
    if broken:
        if components:
            print()
        print("broken (skipped; MIRASLAB_DISABLE_PLUGINS=NAME silences one)")
        for item in broken:  # the error names the plugin, its distribution and version
            print(f"  {item['error']}")
    return 0


def _show(value: Any) -> str:
    try:
        return value_to_toml(value)
    except TypeError:
        return repr(value)
