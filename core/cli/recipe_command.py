"""``miraslab recipe show|validate FILE [--set ...]``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..recipe.loading import display_path
from ..recipe.resolve import load_recipe, recipe_to_dict
from ..recipe.toml_writer import dumps


def add_parser(sub: Any) -> None:
    from . import add_set_option

    parser = sub.add_parser("recipe", help="show or validate a recipe")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    show = actions.add_parser("show", help="print the fully resolved recipe")
    show.add_argument("file", help="recipe .toml file")
    add_set_option(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.add_argument("--params", action="store_true", help="build the model and print its parameter count")
    show.set_defaults(run=run_show)

    validate = actions.add_parser("validate", help="check a recipe; exit 0 and one line if it is valid")
    validate.add_argument("file", help="recipe .toml file")
    add_set_option(validate)
    validate.set_defaults(run=run_validate)


def run_show(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.file, args.sets)
    if args.params:
        from ..model.counting import parameter_report

        report = parameter_report(recipe)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for line in report["lines"]:
                print(line)
        return 0
    data = recipe_to_dict(recipe)
    print(json.dumps(data, indent=2) if args.json else dumps(data), end="\n" if args.json else "")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.file, args.sets)
    line = f"ok: {display_path(args.file)}: {summary(recipe)}"
    if recipe.model.init is not None:  # the checkpoint must fit too: read it now, not at step 0
        from ..hf.llama_init import seed_tensors_for

        _, report = seed_tensors_for(recipe.model, recipe.model.init)
        line += f"; {report.summary()}"
    print(line)
    return 0


def summary(recipe: Any) -> str:
    model = recipe.model
    memory = model.memory
    axes = "/".join(c.name for c in (memory.memory, memory.bias, memory.retention, memory.algorithm))
    parts = [
        f"{recipe.name or 'unnamed'}",
        f"layout {model.layout.name}",
        f"{model.n_layers} layers",
        f"d_model {model.d_model}",
        f"memory {axes}" if _layout_uses_memory(model.layout.name) else "no memory",
        f"{recipe.train.total_steps} steps",
    ]
    return ", ".join(parts)


def _layout_uses_memory(layout: str) -> bool:
    from ..registry import get_registry

    return bool(getattr(get_registry().get("layout", layout).factory, "uses_memory", False))
